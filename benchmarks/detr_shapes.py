"""Shape-tensor cleanup on dynamic-shape exports: fuser vs onnxsim vs Polygraphy's fold (issue 4).

    benchmarks/.venv/bin/python benchmarks/detr_shapes.py                  # DAB-DETR + the F.pad models
    benchmarks/.venv/bin/python benchmarks/detr_shapes.py --only pad       # only the F.pad models (fast)
    benchmarks/.venv/bin/python benchmarks/detr_shapes.py --tools fuser,onnxsim,polygraphy,onnxslim,onnxscript

Cases:
- dab_detr: the corpus export (benchmarks/cache/dab_detr.onnx: transformers DabDetrForObjectDetection, random init,
  ResNet backbone from ResNetConfig, eager attention, opset 12, dynamic batch, 800x800).
- pad_op12 / pad_op13: a small torch model exported here (TorchScript exporter, dynamic batch/H/W) with the classic
  "pad to a multiple of 32" idiom, `F.pad(x, (0, pad_w, 0, pad_h))` with pads computed from x.shape, then a Conv.
  The exporter builds the pads through `Reshape(., [-1, 2]) -> Slice(reverse) -> Transpose -> Reshape(-1)`: a 2-D
  shape tensor (TensorRT <= 8.4 rejected it: "IShuffleLayer applied to shape tensor must have 0 or 1 reshape
  dimensions").

For the input and each tool's output: nodes; Shape/Gather/Concat/Reshape/Unsqueeze/Slice counts; shape tensors left
(patterns.shape_tensor_stats: non-constant integer values feeding a shape input, and how many of them have rank >= 2);
TensorRT-RTX network layers (opt level 0) with a dynamic profile (DAB-DETR batch 1..2; pad H/W 64..512); max abs error
against the input (onnxruntime CPU, optimizations off) at several input shapes. Tools run with default options
(fuser: `optimize --target tensorrt`; dynamic dims stay dynamic).

Writes benchmarks/results/detr_shapes.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peerlib
from peerlib import CACHE, RESULTS

DEFAULT_TOOLS = ("fuser", "onnxsim", "polygraphy")
OPS = ("Shape", "Gather", "Concat", "Reshape", "Unsqueeze", "Slice")

PAD_EXPORT = r'''
import sys, torch, torch.nn as nn, torch.nn.functional as F
class PadTo32(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
    def forward(self, x):
        h, w = x.shape[-2], x.shape[-1]
        pad_h = (32 - h % 32) % 32
        pad_w = (32 - w % 32) % 32
        return self.conv(F.pad(x, (0, pad_w, 0, pad_h)))
torch.manual_seed(0)
model = PadTo32().eval()
opset, out = int(sys.argv[1]), sys.argv[2]
torch.onnx.export(model, (torch.randn(1, 3, 224, 240),), out, opset_version=opset, input_names=["x"],
                  output_names=["y"], dynamo=False,
                  dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}, "y": {0: "batch", 2: "h32", 3: "w32"}})
'''


def cases(work: Path, only: list[str]) -> list[dict]:
    out = []
    detr = CACHE / "dab_detr.onnx"
    if not only or any(o in "dab_detr" for o in only):
        if detr.exists():
            out.append({"name": "dab_detr", "path": detr,
                        "profile": "pixel_values:1x3x800x800,1x3x800x800,2x3x800x800",
                        "shapes": [{"pixel_values": [1, 3, 800, 800]}, {"pixel_values": [2, 3, 800, 800]}]})
        else:
            print(f"{detr} is missing (run benchmarks/corpus.py --only dab_detr)", flush=True)
    for opset in (12, 13):
        name = f"pad_op{opset}"
        if only and not any(o in name for o in only):
            continue
        path = work / f"{name}.onnx"
        run = peerlib.run_child([sys.executable, "-c", PAD_EXPORT, str(opset), str(path)], 600)
        if run["rc"] != 0 or not path.exists():
            print(f"[{name}] export failed: {run.get('error')}", flush=True)
            continue
        out.append({"name": name, "path": path, "profile": "x:1x3x64x64,1x3x224x240,2x3x512x512",
                    "shapes": [{"x": [1, 3, 224, 240]}, {"x": [1, 3, 100, 130]}, {"x": [2, 3, 64, 97]}],
                    "exported_here": True})
    return out


def bench_case(case: dict, tools: list[str], work: Path, args) -> dict:
    name, src = case["name"], case["path"]
    cdir = work / name
    cdir.mkdir(parents=True, exist_ok=True)
    profile = None if args.no_trt else case["profile"]
    print(f"[{name}] input", flush=True)
    rows = {"input": {"tool": "input", "ok": True, "eval": peerlib.evaluate(src, profile, args.timeout, True, work=cdir)}}
    outputs = {"input": src}
    for tool in tools:
        dst = cdir / f"{tool}.onnx"
        run = peerlib.run_tool(tool, src, dst, timeout=args.timeout, mem_cap_gib=args.mem_cap_gib)
        print(f"[{name}] {tool}: {'ok' if run['ok'] else 'FAILED: ' + str(run.get('error'))} "
              f"({run.get('tool_s')} s)", flush=True)
        row = {k: run.get(k) for k in ("tool", "ok", "error", "tool_s", "wall_s", "peak_rss_mib")}
        info = run.get("info") or {}
        if tool.startswith("fuser"):
            folding = info.get("folding") or {}
            row["fuser"] = {"fusion_counts": info.get("fusion_counts"), "validation": info.get("validation"),
                            "nd_shape_chains_rewritten": folding.get("nd_shape_chains_rewritten"),
                            "reshape_targets_rewritten": folding.get("reshape_targets_rewritten"),
                            "folded": folding.get("folded"), "not_folded": len(folding.get("not_folded") or []),
                            "not_folded_examples": [f"{x.get('node')}: {x.get('reason')}"
                                                    for x in (folding.get("not_folded") or [])[:3]]}
        if run["ok"]:
            row["eval"] = peerlib.evaluate(dst, profile, args.timeout, True)
            outputs[tool] = dst
        rows[tool] = row
    # outputs against the input, at each input shape
    errors: dict[str, list] = {label: [] for label in outputs}
    for number, shapes in enumerate(case["shapes"]):
        feeds = peerlib.make_inputs(src, shapes, seed=number)
        inputs = cdir / f"inputs{number}.npz"
        np.savez(inputs, **feeds)
        res = peerlib.ort_compare(outputs, inputs, latency=False, timeout=max(args.timeout, 900))
        for label in outputs:
            r = res.get(label) or {}
            errors[label].append({"shape": shapes, "max_abs_err": r.get("max_abs_err"),
                                  "ref_scale": r.get("ref_scale"),
                                  "error": "; ".join(str(v) for v in (r.get("errors") or {}).values() if v) or None})
    for label, errs in errors.items():
        rows[label]["errors_by_shape"] = errs
        vals = [e["max_abs_err"] for e in errs]
        rows[label]["max_abs_err"] = None if any(v is None for v in vals) else max(vals)
        rows[label]["exact"] = all(v is not None and v <= 1e-4 * max(1.0, e["ref_scale"] or 0)
                                   for v, e in zip(vals, errs))
    if not args.keep:
        shutil.rmtree(cdir, ignore_errors=True)
    return {"case": name, "profile": case["profile"], "shapes": case["shapes"], "rows": rows}


def _cell(v, fmt="{}"):
    return "–" if v is None else fmt.format(v)


def markdown(results: list[dict], meta: dict) -> str:
    lines = ["# Shape tensors left by fuser and its peers", "",
             (f"Run {meta['time']}. Command: `{meta['command']}`. `shape values`: non-constant integer values "
             "feeding a shape input (directly or through integer arithmetic); `2-D+`: those of rank ≥ 2. TRT: "
             "TensorRT-RTX network layers (opt level 0) with a dynamic profile. `max err`: against the input, "
             "onnxruntime CPU, over every input shape listed."), ""]
    for res in results:
        shapes = "; ".join(",".join(f"{k}:{'x'.join(map(str, v))}" for k, v in s.items()) for s in res["shapes"])
        lines += [f"## {res['case']}", "", f"TensorRT profile `{res['profile']}`; checked at {shapes}.", "",
                  "| tool | nodes | " + " | ".join(OPS) + " | shape values | 2-D+ | TRT layers | TRT build s | "
                  "max err | compile s | note |", "|---|" + "---:|" * (len(OPS) + 7) + "---|"]
        for tool, row in res["rows"].items():
            ev = row.get("eval") or {}
            ops = ev.get("shape_ops") or {}
            st = ev.get("shape_tensors") or {}
            note = ""
            if not row.get("ok"):
                note = f"**failed**: {str(row.get('error'))[:160]}"
            errs = {k: v for k, v in (ev.get("errors") or {}).items() if v}
            if errs:
                note += "; ".join(f"{k}: {str(v)[:160]}" for k, v in errs.items())
            if row.get("exact") is False:
                note += "; **outputs differ** " + ", ".join(
                    f"{e['max_abs_err']}" + (f" ({e['error']})" if e.get("error") else "")
                    for e in row.get("errors_by_shape", []))
            f = row.get("fuser")
            if f:
                note += (f"; nd chains rewritten {f.get('nd_shape_chains_rewritten')}, reshape targets rewritten "
                         f"{f.get('reshape_targets_rewritten')}, not folded {f.get('not_folded')}")
            err = row.get("max_abs_err")
            lines.append("| " + " | ".join([
                tool, _cell((ev.get("counts") or {}).get("nodes")), *[_cell(ops.get(op)) for op in OPS],
                _cell(st.get("shape_values")), _cell(st.get("nd")), _cell(ev.get("trt_layers")),
                _cell(ev.get("trt_build_s")), "–" if err is None else f"{err:.2g}", _cell(row.get("tool_s")),
                note.strip("; ").replace("|", "/")]) + " |")
        lines.append("")
        fuser = res["rows"].get("fuser")
        peers = [r for t, r in res["rows"].items() if t not in ("input", "fuser") and r.get("ok")]
        if fuser and fuser.get("ok") and peers:
            def total(r):
                ops = (r.get("eval") or {}).get("shape_ops") or {}
                return sum(ops.get(op, 0) for op in ("Shape", "Gather", "Concat", "Reshape"))
            best_ops = min(total(r) for r in peers)
            layers = [(r.get("eval") or {}).get("trt_layers") for r in peers]
            layers = [x for x in layers if x is not None]
            fl = (fuser.get("eval") or {}).get("trt_layers")
            lines.append(f"Goal (issue 4): fuser leaves fewer Shape/Gather/Concat/Reshape nodes than every peer: "
                         f"{'✓' if total(fuser) < best_ops else '✗'} ({total(fuser)} vs {best_ops}); TensorRT-RTX "
                         f"builds fuser's output with fewer layers: "
                         f"{'✓' if fl is not None and layers and fl < min(layers) else '✗'} "
                         f"({fl} vs {min(layers) if layers else '–'}); no 2-D shape tensor left: "
                         f"{'✓' if ((fuser.get('eval') or {}).get('shape_tensors') or {}).get('nd') == 0 else '✗'}.")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="dab_detr, pad, pad_op12, pad_op13")
    ap.add_argument("--tools", default=",".join(DEFAULT_TOOLS))
    ap.add_argument("--no-trt", action="store_true")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--mem-cap-gib", type=float, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = ap.parse_args()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(peerlib.TOOLS)
    if unknown:
        raise SystemExit(f"unknown tools: {', '.join(sorted(unknown))}")
    meta = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(["detr_shapes.py", *sys.argv[1:]]),
            "tools": tools}
    work = Path(tempfile.mkdtemp(prefix="detr_shapes-"))
    results = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        for case in cases(work, args.only):
            try:
                results.append(bench_case(case, tools, work, args))
            except Exception as exc:  # noqa: BLE001
                print(f"[{case['name']}] benchmark error: {type(exc).__name__}: {exc}", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    meta["total_s"] = round(time.perf_counter() - started, 1)
    md = markdown(results, meta) + f"\nTotal {meta['total_s']:.0f} s.\n"
    (RESULTS / "detr_shapes.md").write_text(md)
    (RESULTS / "detr_shapes.json").write_text(json.dumps({"meta": meta, "cases": results}, indent=1, default=str))
    print()
    print(md)
    print(f"wrote {RESULTS / 'detr_shapes.md'} and .json")


if __name__ == "__main__":
    main()
