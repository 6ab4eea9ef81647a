"""Time `fuser optimize` against the floor of `onnx.load` + `onnx.save` of the same file, with peak memory.

    python benchmarks/core_speed.py                  # 1k and 50k nodes
    python benchmarks/core_speed.py --big            # also the > 2 GB external-data model (writes ~4.3 GB to /tmp)

Each measurement runs in its own process (peak RSS is the process's ru_maxrss). fuser runs without
numerics validation here: this measures the compiler; validation's cost is onnxruntime's, measured in
benchmarks/compare_peers.py. Prints a Markdown table and writes benchmarks/results/core_speed.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

FLOOR = """
import onnx, sys
m = onnx.load(sys.argv[1], load_external_data=False)
onnx.save(m, sys.argv[2])
"""
FLOOR_EXTERNAL = """
import onnx, sys
m = onnx.load(sys.argv[1])
onnx.save(m, sys.argv[2], save_as_external_data=True, location="floor.onnx.data")
"""


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    script = ("import resource, subprocess, sys, time, json\n"
              "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
              "dt = time.perf_counter() - t\n"
              "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
              "print(json.dumps([dt, rss, p.returncode, p.stderr[-2000:]]))")
    out = subprocess.run([sys.executable, "-c", script, *cmd], capture_output=True, text=True, check=True)
    dt, rss, rc, err = json.loads(out.stdout)
    if rc != 0:
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}\n{err}")
    return dt, rss, err


def fuser_cmd(src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-m", "fuser", "optimize", str(src), "-o", str(dst), "--no-validate", "--no-progress"]


def run_case(name: str, model: Path, work: Path, floor_script: str, repeats: int) -> dict:
    floor = min(measure([sys.executable, "-c", floor_script, str(model), str(work / "floor.onnx")])[0]
                for _ in range(repeats))
    runs = [measure(fuser_cmd(model, work / "fused.onnx")) for _ in range(repeats)]
    best = min(runs, key=lambda r: r[0])
    import onnx
    nodes = len(onnx.load(model, load_external_data=False).graph.node)
    fused_nodes = len(onnx.load(work / "fused.onnx", load_external_data=False).graph.node)
    return {"model": name, "nodes": nodes, "nodes_out": fused_nodes, "floor_s": round(floor, 3),
            "fuser_s": round(best[0], 3), "ratio": round(best[0] / floor, 2), "peak_rss_mib": round(best[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for nodes in (1000, 10000, 50000):
            model = work / f"g{nodes}.onnx"
            subprocess.run([sys.executable, str(HERE / "synthetic.py"), "--nodes", str(nodes), "-o", str(model)],
                           check=True, capture_output=True)
            rows.append(run_case(f"synthetic-{nodes // 1000}k", model, work, FLOOR, args.repeats))
        if args.big:
            big = work / "big" / "model.onnx"
            subprocess.run([sys.executable, str(HERE / "synthetic.py"), "--big", "-o", str(big)], check=True,
                           capture_output=True)
            weights = (big.parent / "model.onnx.data").stat().st_size
            row = run_case("synthetic-2.1GB", big, work, FLOOR_EXTERNAL, 1)
            row["weights_mib"] = round(weights / 2**20)
            row["rss_over_weights"] = round(row["peak_rss_mib"] / (weights / 2**20), 3)
            rows.append(row)
    header = "| model | nodes in | nodes out | load+save s | fuser s | ratio | peak RSS MiB |"
    print(header)
    print("|" + "---|" * 7)
    for r in rows:
        extra = f" ({r['rss_over_weights']}x weights)" if "rss_over_weights" in r else ""
        print(f"| {r['model']} | {r['nodes']} | {r['nodes_out']} | {r['floor_s']} | {r['fuser_s']} | {r['ratio']}x "
              f"| {r['peak_rss_mib']}{extra} |")
    out = HERE / "results" / "core_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
