"""The benchmark's results as text: a fixed-width table (one row per result) and a one-line pipeline summary."""

from __future__ import annotations

import os

COLUMNS = ("model", "provider", "ort_opt", "cuda_graph", "pipelined", "batch", "median_ms", "p90_ms",
           "throughput_per_s", "e2e_median_ms")


def best_pipeline(p: dict) -> dict:
    """The faster of the two two-lane loops (one host thread, or one per lane)."""
    return max((p["two_lanes"], p["two_lanes_two_threads"], p["one_lane"]),
               key=lambda x: x.get("throughput_per_s") or 0.0)


def row(result: dict) -> dict:
    """One flat table row of a result (or of an error record {"error": ...})."""
    r = {k: result.get(k) for k in COLUMNS}
    r["model"] = os.path.basename(str(result.get("model", "")))
    r["e2e_median_ms"] = (result.get("e2e") or {}).get("median_ms")
    if result.get("pipeline"):
        p = result["pipeline"]
        best = best_pipeline(p)
        r["pipelined"] = (f"{best['lanes']}L{best['host_threads']}T"
                          + ("/ort" if p.get("copies") == "onnxruntime" else ""))
        r["throughput_per_s"] = best.get("throughput_per_s")
        r["median_ms"] = best.get("batch_ms")
        r["p90_ms"] = None
        r["e2e_median_ms"] = p["one_lane"].get("batch_ms")
    if result.get("error"):
        r["error"] = result["error"]
    return r


def format_table(results: list[dict]) -> str:
    """A fixed-width table. Pipelined rows: 'pipe' names the fastest loop, 2L1T = two lanes from one host thread,
    2L2T = one host thread per lane ('/ort' when onnxruntime made the streams, pinned buffers and copies),
    'median ms' is wall time per batch of that loop, 'thru/s' its throughput, 'e2e ms' the one-lane loop's
    wall time per batch (the same work with nothing overlapped)."""
    head = ["model", "provider", "ort-opt", "graph", "pipe", "batch", "median ms", "p90 ms", "thru/s", "e2e ms"]
    rows = []
    for res in results:
        r = row(res)

        def num(v, fmt="{:.3f}"):
            return "-" if v is None else fmt.format(v)
        pipe = r["pipelined"] if isinstance(r["pipelined"], str) else ("on" if r["pipelined"] else "off")
        cells = [r["model"], str(r["provider"]), str(r["ort_opt"]), "on" if r["cuda_graph"] else "off",
                 pipe, str(r["batch"])]
        if r.get("error"):
            cells += ["error: " + r["error"][:70], "", "", ""]
        else:
            cells += [num(r["median_ms"]), num(r["p90_ms"]), num(r["throughput_per_s"], "{:.1f}"),
                      num(r["e2e_median_ms"])]
        rows.append(cells)
    widths = [max(len(h), *(len(c) for c in col)) if rows else len(h)
              for h, col in zip(head, zip(*rows) if rows else [[]] * len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in rows]
    return "\n".join(lines)


def pipeline_summary(result: dict) -> str:
    """One line: the three pipeline loops' throughput and whether every output matched a plain run."""
    p = result["pipeline"]
    parts = []
    loops = (("one_lane", "1 lane"), ("two_lanes", "2 lanes"), ("two_lanes_two_threads", "2 lanes/2 threads"))
    for key, label in loops:
        x = p[key]
        if "error" in x:
            parts.append(f"{label} failed: {x['error'][:120]}")
            continue
        parts.append(f"{label} {x['throughput_per_s']:.1f}/s ({x['batch_ms']:.3f} ms/batch, run() returns after "
                     f"{x['enqueue_median_ms']:.3f} ms)")
    diff = max((p[k].get("outputs_max_rel_diff", 0.0) for k in ("one_lane", "two_lanes", "two_lanes_two_threads")),
               default=0.0)
    return (f"pipelined {os.path.basename(str(result['model']))} batch {result['batch']} graph "
            f"{'on' if result['cuda_graph'] else 'off'} [{p['copies']}]: " + "; ".join(parts)
            + f"; outputs vs plain run: max rel diff {diff:.2g}")
