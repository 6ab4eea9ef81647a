"""The GPU numbers in benchmarks/results/gpu_bench.md: fuser bench over unfused and fused models on the CUDA EP.

Three steps, the first here, the others on the GPU machine (see benchmarks/results/gpu_bench.md for the exact
device calls):

    python benchmarks/gpu_bench.py prepare            # here: writes .gpubench/ (git-ignored, carried to the GPU)
    python3 benchmarks/gpu_bench.py run --out DIR     # there: regenerates weights, runs the matrix, writes
                                                      #   DIR/gpu_bench.json, DIR/gpu_bench.md, DIR/gpu_bench.jsonl

`prepare` takes models/demo.onnx, its fused version (`fuser optimize models/demo.onnx`), the BERT-base export
benchmarks/cache/bert_base_op12.onnx (transformers BertModel, random init, opset 12, decomposed LayerNorm) and
its fused version (`fuser optimize ... --input-shape input_ids:1x128 --keep-dynamic`; 25 LayerNorms fused,
opset 17). The BERT files are 440 MB each, too big to carry, so they travel as *skeletons*: the graph with
every float initializer of more than 4096 elements emptied and marked; `run` refills those with seeded
random values (N(0, 0.02), seed = crc32 of the initializer's name), so the unfused and the fused model get
the same weights (fuser keeps initializer names) and their outputs can be compared on the GPU. Everything
small (shape constants, LayerNorm gammas/betas, biases under 4097 elements) is kept exact.

`run` imports fuser.bench without fuser/__init__ (the GPU machine has onnx, numpy and onnxruntime-gpu but not
the installed fuser package), runs each model in its own subprocess (a crash costs one model, not the run),
and streams results to DIR/gpu_bench.jsonl as they come.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import types
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / ".gpubench"
MARK = "fuser-gpu-bench:random"
KEEP_ELEMENTS = 4096

MODELS = {  # name -> (skeleton or plain file in STAGE, input shapes)
    "demo": ("demo.onnx", {}),
    "demo.fused": ("demo.opt.onnx", {}),
    "bert": ("bert_base_op12.skel.onnx", {"input_ids": (1, 128)}),
    "bert.fused": ("bert_base_op12.opt.skel.onnx", {"input_ids": (1, 128)}),
}
PAIRS = [("demo", "demo.fused"), ("bert", "bert.fused")]


# ------------------------------------------------------------------------------------------------ prepare (here)

def skeleton(src: Path, dst: Path) -> dict:
    import numpy as np
    import onnx

    model = onnx.load(str(src))
    emptied = kept = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims, dtype=np.int64))
        if n > KEEP_ELEMENTS and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            for f in ("raw_data", "float_data", "int32_data"):
                t.ClearField(f)
            t.doc_string = MARK
            emptied += n
        else:
            kept += n
    onnx.save(model, str(dst))
    return {"src": str(src), "dst": dst.name, "emptied_elements": emptied, "kept_elements": kept,
            "bytes": dst.stat().st_size}


def prepare(args) -> None:
    STAGE.mkdir(exist_ok=True)
    fuser = [sys.executable, "-m", "fuser", "optimize"]
    shutil.copy(ROOT / "models" / "demo.onnx", STAGE / "demo.onnx")
    subprocess.run(fuser + ["models/demo.onnx", "-o", str(STAGE / "demo.opt.onnx"),
                            "--report", str(STAGE / "demo.opt.report.json")], cwd=ROOT, check=True)
    bert = Path(args.bert)
    bert_opt = Path(args.bert_fused) if args.bert_fused else Path("/tmp") / (bert.stem + ".opt.onnx")
    if not args.bert_fused:
        subprocess.run(fuser + [str(bert), "-o", str(bert_opt), "--input-shape", "input_ids:1x128", "--keep-dynamic",
                                "--report", str(STAGE / "bert.opt.report.json")], cwd=ROOT, check=True)
    manifest = {"bert": skeleton(bert, STAGE / "bert_base_op12.skel.onnx"),
                "bert.fused": skeleton(bert_opt, STAGE / "bert_base_op12.opt.skel.onnx")}
    (STAGE / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(json.dumps(manifest, indent=2))


# ------------------------------------------------------------------------------------------------ run (GPU machine)

def fill(skel: Path, dst: Path) -> None:
    import numpy as np
    import onnx

    model = onnx.load(str(skel))
    for t in model.graph.initializer:
        if t.doc_string == MARK:
            n = int(np.prod(t.dims, dtype=np.int64))
            rng = np.random.default_rng(zlib.crc32(t.name.encode()))
            a = (rng.standard_normal(n, dtype=np.float32) * 0.02)
            if t.data_type == onnx.TensorProto.FLOAT16:
                a = a.astype(np.float16)
            t.raw_data = a.tobytes()
            t.doc_string = ""
    onnx.save(model, str(dst))


def import_bench():
    """fuser.bench without running fuser/__init__.py (which needs the installed passes/rules packages)."""
    if "fuser" not in sys.modules:
        pkg = types.ModuleType("fuser")
        pkg.__path__ = [str(ROOT / "fuser")]
        sys.modules["fuser"] = pkg
    from fuser import bench
    return bench


def configs(name: str, provider: str, pipelined_only: bool = False):
    """ORT optimizer off/all x CUDA graph off/on x batch 1/8, then the pipeline at batch 8 (and 32 for BERT)."""
    cuda = provider == "cuda"
    out = [{"ort_opt": ort_opt, "cuda_graph": graph, "pipelined": False, "batch": batch}
           for ort_opt in ("off", "all") for graph in ((False, True) if cuda else (False,)) for batch in (1, 8)]
    if cuda:
        out += [{"ort_opt": "all", "cuda_graph": graph, "pipelined": True, "batch": 8} for graph in (False, True)]
        if name.startswith("bert"):  # bigger copies: 12.6 MB of output per batch
            out.append({"ort_opt": "all", "cuda_graph": False, "pipelined": True, "batch": 32})
    return [c for c in out if c["pipelined"] or not pipelined_only]


def one(args) -> None:
    """Subprocess: every config of one model; one JSON line per result (or error) to args.jsonl."""
    bench = import_bench()
    name = args.model
    path = Path(args.models_dir) / (name + ".onnx")
    shapes = MODELS[name][1]
    with open(args.jsonl, "a") as out:
        for cfg in configs(name, args.provider, args.pipelined_only):
            t0 = time.time()
            try:
                res = bench.benchmark(path, provider=args.provider, warmup=args.warmup, iters=args.iters,
                                      input_shapes=shapes, pipeline_copies=args.copies, **cfg)
            except Exception as exc:  # noqa: BLE001 - recorded, the next config still runs
                res = {"model": str(path), "provider": args.provider, **cfg,
                       "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
            res["name"] = name
            res["wall_s"] = time.time() - t0
            out.write(json.dumps(res) + "\n")
            out.flush()
            print(bench.format_table([res]).splitlines()[-1], flush=True)


def crosscheck(args) -> None:
    """Subprocess: unfused vs fused outputs on the GPU (CUDA EP, ORT optimizer off, same random inputs)."""
    import numpy as np
    import onnxruntime as ort

    bench = import_bench()
    ep = "CUDAExecutionProvider" if args.provider == "cuda" else "CPUExecutionProvider"
    if args.provider == "cuda":
        ort.preload_dlls()
    out = []
    for a, b in PAIRS:
        pa, pb = (Path(args.models_dir) / (n + ".onnx") for n in (a, b))
        if not (pa.exists() and pb.exists()):
            continue
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sa = ort.InferenceSession(str(pa), so, providers=[ep])
        sb = ort.InferenceSession(str(pb), so, providers=[ep])
        specs = bench.input_specs_of(sa)
        feeds = bench.make_feeds(specs, bench.bench_shapes(specs, MODELS[a][1], 8), 0, 100)
        ra, rb = sa.run(None, feeds), sb.run(None, feeds)
        for arg, x, y in zip(sa.get_outputs(), ra, rb):
            d = np.abs(x.astype(np.float64) - y.astype(np.float64))
            out.append({"pair": f"{a} vs {b}", "output": arg.name, "shape": list(x.shape),
                        "max_abs": float(d.max()), "ref_max_abs": float(np.abs(x).max()),
                        "max_rel_to_scale": float(d.max() / max(float(np.abs(x).max()), 1e-12))})
    with open(args.jsonl, "a") as f:
        f.writelines(json.dumps({"crosscheck": r}) + "\n" for r in out)
    for r in out:
        print(f"crosscheck {r['pair']} {r['output']}: max abs {r['max_abs']:.3g} (output scale {r['ref_max_abs']:.3g})")


def probe(args) -> None:
    """Subprocess: does onnxruntime's own API give streams, pinned memory and async copies for the CUDA EP?

    (register the CUDA EP library as a plugin EP -> OrtEpDevice.create_sync_stream, memory_info(HOST_ACCESSIBLE),
    onnxruntime.copy_tensors(src, dst, stream)). Recorded for the report; the pipeline itself uses libcudart.
    """
    import contextlib
    import io

    import numpy as np
    import onnxruntime as ort

    info = {}
    with contextlib.redirect_stdout(io.StringIO()):
        ort.preload_dlls()
    lib = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
    try:
        ort.register_execution_provider_library("CUDA", lib)
        info["register_cuda_ep_library"] = "ok"
    except Exception as exc:  # noqa: BLE001
        info["register_cuda_ep_library"] = repr(exc)[:300]
    devs = [d for d in ort.get_ep_devices() if d.ep_name == "CUDAExecutionProvider"]
    info["cuda_ep_devices"] = len(devs)
    if devs:
        d = devs[0]
        stream = None
        try:
            stream = d.create_sync_stream()
            info["sync_stream_handle"] = hex(stream.get_handle())
        except Exception as exc:  # noqa: BLE001
            info["sync_stream"] = repr(exc)[:300]
        try:
            mi = d.memory_info(ort.OrtDeviceMemoryType.HOST_ACCESSIBLE)
            host = ort.OrtValue.ortvalue_from_shape_and_type([1 << 20], np.float32, memory_info=mi)
            info["host_accessible_value"] = host.device_name()
            dev = ort.OrtValue.ortvalue_from_shape_and_type([1 << 20], np.float32, "cuda", 0)
            back = ort.OrtValue.ortvalue_from_shape_and_type([1 << 20], np.float32, memory_info=mi)
            src = ort.OrtValue.ortvalue_from_numpy(np.arange(1 << 20, dtype=np.float32))
            ort.copy_tensors([src], [host], None)
            ort.copy_tensors([host], [dev], stream)
            ort.copy_tensors([dev], [back], stream)
            if stream is not None:
                rt = import_bench().CudaRuntime()
                rt.sync(stream.get_handle())
            info["copy_tensors_roundtrip_ok"] = bool(np.array_equal(back.numpy(), np.arange(1 << 20, dtype=np.float32)))
        except Exception as exc:  # noqa: BLE001
            info["pinned_or_copy"] = repr(exc)[:300]
    with open(args.jsonl, "a") as f:
        f.write(json.dumps({"probe": info}) + "\n")
    print("probe", json.dumps(info), flush=True)


def environment() -> dict:
    env = {"python": sys.version.split()[0]}
    for mod in ("onnx", "numpy", "onnxruntime"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001
            env[mod] = f"missing ({exc})"
    try:
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"]
        env["gpu"] = subprocess.run(query, check=False, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        env["gpu"] = f"nvidia-smi failed: {exc}"
    return env


def run(args) -> None:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    models_dir = Path(args.models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "gpu_bench.jsonl"
    jsonl.unlink(missing_ok=True)
    env = environment()
    print(json.dumps(env), flush=True)
    t0 = time.time()
    names = args.models or list(MODELS)
    for name in names:
        src = STAGE / MODELS[name][0]
        dst = models_dir / (name + ".onnx")
        if src.name.endswith(".skel.onnx"):
            fill(src, dst)
        else:
            shutil.copy(src, dst)
    print(f"models ready in {time.time() - t0:.1f} s", flush=True)
    base = [sys.executable, __file__]
    common = ["--models-dir", str(models_dir), "--jsonl", str(jsonl)]
    deadline = t0 + args.budget_s
    if not args.no_crosscheck:
        subprocess.run(base + ["crosscheck", "--provider", args.provider] + common, timeout=120, check=False)
    for name in names:
        left = deadline - time.time()
        if left < 20:
            print(f"skipping {name}: out of time budget", flush=True)
            continue
        try:
            subprocess.run(base + ["one", "--model", name, "--warmup", str(args.warmup), "--iters", str(args.iters),
                                   "--provider", args.provider] + (["--pipelined-only"] if args.pipelined_only else [])
                           + common, timeout=left, check=False)
        except subprocess.TimeoutExpired:
            print(f"{name}: timed out", flush=True)
    if args.provider == "cuda" and not args.no_ort_copies:  # the pipeline again, streams/pinned/copies from ORT
        for name in names:
            left = deadline - time.time()
            if left < 20:
                print(f"skipping {name} (onnxruntime copies): out of time budget", flush=True)
                continue
            try:
                subprocess.run(base + ["one", "--model", name, "--warmup", str(args.warmup), "--iters",
                                       str(args.iters), "--copies", "onnxruntime", "--pipelined-only"] + common,
                               timeout=left, check=False)
            except subprocess.TimeoutExpired:
                print(f"{name} (onnxruntime copies): timed out", flush=True)
    if args.provider == "cuda" and not args.no_probe:
        try:
            subprocess.run(base + ["probe"] + common, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            print("probe: timed out", flush=True)
    results, checks, probes = [], [], []
    for line in jsonl.read_text().splitlines() if jsonl.exists() else []:
        rec = json.loads(line)
        if "crosscheck" in rec:
            checks.append(rec["crosscheck"])
        elif "probe" in rec:
            probes.append(rec["probe"])
        else:
            results.append(rec)
    doc = {"environment": env, "command": " ".join(sys.argv), "results": results, "crosscheck": checks,
           "ort_stream_api_probe": probes, "total_s": time.time() - t0}
    (out_dir / "gpu_bench.json").write_text(json.dumps(doc, indent=2))
    bench = import_bench()
    table = bench.format_table(results)
    (out_dir / "gpu_bench.md").write_text(table + "\n")
    print(table)
    for r in results:
        if r.get("pipeline"):
            print(bench.pipeline_summary(r))
    print(f"total {time.time() - t0:.1f} s")


def report(args) -> None:
    """Combine the JSON of several `run`s (rounds) into one file and print the markdown tables of gpu_bench.md."""
    rounds = [json.loads(Path(f).read_text()) for f in args.rounds]
    doc = {"rounds": [{"file": str(f), "label": lbl, **r} for f, lbl, r in
                      zip(args.rounds, args.labels or [None] * len(rounds), rounds)]}
    Path(args.out).write_text(json.dumps(doc, indent=1))

    def fmt(v, spec="{:.3f}"):
        return "-" if v is None else spec.format(v)

    serial = {}  # (name, opt, graph, batch) -> [result per round]
    for r in rounds:
        for x in r["results"]:
            if not x.get("pipelined"):
                serial.setdefault((x["name"], x["ort_opt"], x["cuda_graph"], x["batch"]), []).append(x)
    print("| model | ORT opt | CUDA graph | batch | unfused median ms | fused median ms | fused speed-up | "
          "fused p90 ms | fused e2e ms | fused throughput /s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for base in ("demo", "bert"):
        for opt in ("off", "all"):
            for graph in (False, True):
                for batch in (1, 8):
                    a = serial.get((base, opt, graph, batch), [])
                    b = serial.get((base + ".fused", opt, graph, batch), [])
                    if not a and not b:
                        continue
                    if any(x.get("error") for x in a + b):
                        err = next(x["error"] for x in a + b if x.get("error"))
                        why = "refused: not every compute node on CUDA" if "graph capture" in err else err[:80]
                        print(f"| {base} | {opt} | {'on' if graph else 'off'} | {batch} | {why} | | | | | |")
                        continue
                    am = " / ".join(fmt(x["median_ms"]) for x in a)
                    bm = " / ".join(fmt(x["median_ms"]) for x in b)
                    sp = " / ".join(f"{x['median_ms'] / y['median_ms']:.2f}x" for x, y in zip(a, b))
                    last = b[-1]
                    print(f"| {base} | {opt} | {'on' if graph else 'off'} | {batch} | {am} | {bm} | {sp} | "
                          f"{fmt(last['p90_ms'])} | {fmt(last['e2e']['median_ms'])} | "
                          f"{fmt(last['throughput_per_s'], '{:.0f}')} |")
    print()
    print("| model | CUDA graph | batch | copies by | serial run /s | 1 lane /s | 2 lanes, 1 thread /s | "
          "2 lanes, 2 threads /s | best / 1 lane | run() returns after ms (2 lanes) | outputs = plain run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rounds[-1]["results"]:
        p = x.get("pipeline")
        if not p:
            continue
        one, two, two_t = p["one_lane"], p["two_lanes"], p["two_lanes_two_threads"]
        best = max((v.get("throughput_per_s") or 0) for v in (two, two_t))
        ok = all(v.get("outputs_max_rel_diff", 1) == 0 for v in (one, two, two_t))
        print(f"| {x['name']} | {'on' if x['cuda_graph'] else 'off'} | {x['batch']} | {p['copies']} | "
              f"{fmt(x['throughput_per_s'], '{:.0f}')} | {fmt(one.get('throughput_per_s'), '{:.0f}')} | "
              f"{fmt(two.get('throughput_per_s'), '{:.0f}')} | {fmt(two_t.get('throughput_per_s'), '{:.0f}')} | "
              f"{best / one['throughput_per_s']:.2f}x | {fmt(two.get('enqueue_median_ms'))} | "
              f"{'yes (bit-identical)' if ok else 'NO'} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--bert", default=str(ROOT / "benchmarks" / "cache" / "bert_base_op12.onnx"))
    pp.add_argument("--bert-fused", default=None, help="an already fused BERT (else fuser optimize runs)")
    pr = sub.add_parser("run")
    pr.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_bench_out"))
    pr.add_argument("--models-dir", default="/tmp/gpubench_models")
    pr.add_argument("--models", nargs="*", choices=list(MODELS))
    pr.add_argument("--warmup", type=int, default=20)
    pr.add_argument("--iters", type=int, default=200)
    pr.add_argument("--budget-s", type=float, default=420)
    pr.add_argument("--no-crosscheck", action="store_true")
    pr.add_argument("--no-probe", action="store_true")
    pr.add_argument("--no-ort-copies", action="store_true")
    pr.add_argument("--pipelined-only", action="store_true", help="only the pipeline configurations")
    pr.add_argument("--provider", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of this script")
    for name, fn in (("one", one), ("crosscheck", crosscheck), ("probe", probe)):
        q = sub.add_parser(name)
        q.add_argument("--models-dir", required=True)
        q.add_argument("--jsonl", required=True)
        q.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
        if name == "one":
            q.add_argument("--model", required=True, choices=list(MODELS))
            q.add_argument("--warmup", type=int, default=20)
            q.add_argument("--iters", type=int, default=200)
            q.add_argument("--copies", choices=("cudart", "onnxruntime"), default="cudart")
            q.add_argument("--pipelined-only", action="store_true")
    rp = sub.add_parser("report")
    rp.add_argument("rounds", nargs="+", help="gpu_bench.json files of several runs, oldest first")
    rp.add_argument("--labels", nargs="*")
    rp.add_argument("-o", "--out", required=True)
    args = p.parse_args()
    {"prepare": prepare, "run": run, "one": one, "crosscheck": crosscheck, "probe": probe,
     "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
