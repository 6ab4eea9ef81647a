"""Why is fused BERT not faster than the unfused export once onnxruntime's optimizer runs (CUDA EP)?

Re-measures BERT-base (benchmarks/cache/bert_base_op12.onnx) on the CUDA provider with ORT_ENABLE_ALL, batch 1 and 8,
CUDA graph off/on, for these variants:

    bert             the unfused export (opset 12, decomposed LayerNorm)
    bert.fused       today's `fuser optimize ... --input-shape input_ids:1x128 --keep-dynamic` (in-place opset upgrade)
    bert.fusiononly  fuser.optimize(passes=[FusionPass(select_rules()), DeadCodeElimination()]): the LayerNorm fusions
                     alone, no constant/shape folding, CSE, no-op removal or initializer dedup
    bert.fused.old   the fused model of the first gpu_bench.md table (version_converter upgrade, 13 Flatten nodes),
                     the skeleton `gpu_bench.py prepare` staged earlier (.gpubench/bert_base_op12.opt.skel.onnx)

and, per variant, dumps what onnxruntime's optimizer made of it with the CUDA EP (ORT_ENABLE_EXTENDED,
optimized_model_filepath, the same free-dimension overrides as the benchmark: batch 8, sequence 128), counts its op
types, profiles one ORT_ENABLE_ALL session (per-node kernel times: the CPU time each node's kernel takes to launch)
and compares every variant's outputs with the unfused model's.

    python benchmarks/gpu_fused_bert.py prepare          # here: writes the two new skeletons into .gpubench/
    python3 benchmarks/gpu_fused_bert.py run --out DIR   # GPU machine (device calls as in gpu_bench.md)
    python benchmarks/gpu_fused_bert.py report R1/fused_bert.json R2/fused_bert.json -o OUT.json   # here: tables

Models travel as skeletons (see gpu_bench.py): every float initializer over 4096 elements is refilled on the GPU side
with N(0, 0.02) seeded by its name, so all variants share the weights.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench  # skeleton/fill/import_bench; importing it runs nothing

ROOT = gpu_bench.ROOT
STAGE = gpu_bench.STAGE
BERT = ROOT / "benchmarks" / "cache" / "bert_base_op12.onnx"
SHAPES = {"input_ids": (1, 128)}
VARIANTS = {  # name -> skeleton in .gpubench/
    "bert": "bert_base_op12.skel.onnx",
    "bert.fused": "bert_base_op12.new.skel.onnx",
    "bert.fusiononly": "bert_base_op12.fusiononly.skel.onnx",
    "bert.fused.old": "bert_base_op12.opt.skel.onnx",
    "bert.op17": "bert_base_op12.op17.skel.onnx",
}
# "<variant>+nomaf": the same file, with onnxruntime's MatMulAddFusion disabled (disabled_optimizers)
NOMAF = "+nomaf"
DISABLED = ["MatMulAddFusion"]


def split_name(name: str) -> tuple[str, list[str]]:
    """'bert.fused+nomaf' -> ('bert.fused', ['MatMulAddFusion'])."""
    return (name[: -len(NOMAF)], DISABLED) if name.endswith(NOMAF) else (name, [])


def patch_disabled(ort, disabled: list[str]) -> None:
    """Make every InferenceSession of this process (fuser.bench's too) pass disabled_optimizers."""
    if not disabled:
        return
    base = ort.InferenceSession

    class Session(base):
        def __init__(self, *a, **k):
            k.setdefault("disabled_optimizers", disabled)
            super().__init__(*a, **k)

    ort.InferenceSession = Session


def all_names() -> list[str]:
    return list(VARIANTS) + [n + NOMAF for n in VARIANTS]
KEY_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization",
           "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "MatMul", "FusedMatMul", "Gemm", "FusedGemm",
           "Softmax", "Add", "Reshape", "Transpose", "Flatten")


# ------------------------------------------------------------------------------------------------ prepare (here)

def prepare(args) -> None:
    import onnx

    STAGE.mkdir(exist_ok=True)
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    fused = tmp / "bert.new.opt.onnx"
    cmd = [sys.executable, "-m", "fuser", "optimize", str(BERT), "-o", str(fused), "--input-shape",
           "input_ids:1x128", "--keep-dynamic", "--report", str(STAGE / "bert.new.opt.report.json")]
    subprocess.run(cmd, cwd=ROOT, check=True)

    from fuser.passes import DeadCodeElimination, FusionPass
    from fuser.assembly import select_rules

    import fuser

    model, report = fuser.optimize(str(BERT), passes=[FusionPass(select_rules()), DeadCodeElimination()])
    fonly = tmp / "bert.fusiononly.onnx"
    onnx.save(model, str(fonly))
    from fuser.graph import Graph
    from fuser.model_io import load_model
    from fuser.opset import upgrade_in_place

    g = Graph(load_model(str(BERT)))
    assert upgrade_in_place(g, 12, 17)
    op17 = tmp / "bert.op17.onnx"
    onnx.save(g.to_model(), str(op17))
    manifest = {
        "bert.op17": {**gpu_bench.skeleton(op17, STAGE / VARIANTS["bert.op17"]),
                      "how": "fuser.opset.upgrade_in_place(Graph(load_model(bert)), 12, 17): no fusion, opset only"},
        "bert": gpu_bench.skeleton(BERT, STAGE / VARIANTS["bert"]),
        "bert.fused": {**gpu_bench.skeleton(fused, STAGE / VARIANTS["bert.fused"]), "command": " ".join(cmd[1:])},
        "bert.fusiononly": {**gpu_bench.skeleton(fonly, STAGE / VARIANTS["bert.fusiononly"]),
                            "how": "fuser.optimize(path, passes=[FusionPass(select_rules()), DeadCodeElimination()])",
                            "validation": report.validation.summary if report.validation else None},
    }
    for info in manifest.values():
        m = onnx.load(str(STAGE / info["dst"]))
        info["nodes"] = len(m.graph.node)
        info["ops"] = dict(collections.Counter(n.op_type for n in m.graph.node).most_common())
        info["opset"] = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    (STAGE / "fused_bert_manifest.json").write_text(json.dumps(manifest, indent=2))
    print(json.dumps({k: {x: v[x] for x in ("dst", "nodes", "opset", "bytes")} for k, v in manifest.items()},
                     indent=2))


# ------------------------------------------------------------------------------------------------ run (GPU machine)

def _feeds(bench, sess, batch):
    specs = bench.input_specs_of(sess)
    shapes = {"input_ids": (batch, SHAPES["input_ids"][1])}  # the session's dims are pinned (overrides)
    return bench.make_feeds(specs, bench.bench_shapes(specs, shapes, batch), 0, 100)


def dump(args) -> None:
    """Subprocess: ORT_ENABLE_EXTENDED + CUDA EP (+ overrides batch/sequence) -> optimized graph, op counts, outputs;
    then an ORT_ENABLE_ALL session with profiling: per-node kernel (launch) times."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    bench = gpu_bench.import_bench()
    if args.provider == "cuda":
        bench.check_cuda_available(ort)
    ort.set_default_logger_severity(3)
    name, batch = args.model, args.batch
    base, disabled = split_name(name)
    patch_disabled(ort, disabled)
    src = Path(args.models_dir) / (base + ".onnx")
    out_dir = Path(args.work)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec: dict = {"model": name, "batch": batch}

    def options(level):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.log_severity_level = 3
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        so.add_free_dimension_override_by_name("batch", batch)
        so.add_free_dimension_override_by_name("sequence", SHAPES["input_ids"][1])
        return so

    providers = ([("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"] if args.provider == "cuda"
                 else ["CPUExecutionProvider"])
    so = options(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    opt_path = out_dir / f"{name}.ortopt.onnx"
    so.optimized_model_filepath = str(opt_path)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                f"{name}.ortopt.weights")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    t0 = time.time()
    sess = ort.InferenceSession(str(src), so, providers=providers)
    rec["session_s"] = time.time() - t0
    rec["placement"] = bench.placement(sess)
    feeds = _feeds(bench, sess, batch)
    outs = sess.run(None, feeds)
    np.savez(out_dir / f"{name}.outputs.npz", **{o.name: v for o, v in zip(sess.get_outputs(), outs)})
    del sess
    m = onnx.load(str(opt_path), load_external_data=False)
    ops = collections.Counter(((n.domain or "ai.onnx") + ":" + n.op_type) for n in m.graph.node)
    rec["optimized_nodes"] = len(m.graph.node)
    rec["optimized_ops"] = dict(ops.most_common())
    rec["key_ops"] = {k: sum(v for o, v in ops.items() if o.split(":")[1] == k) for k in KEY_OPS}
    rec["skip_layernorm_with_bias"] = sum(1 for n in m.graph.node if n.op_type == "SkipLayerNormalization"
                                          and len(n.input) > 4 and n.input[4])
    for t in m.graph.initializer:  # graph only: keep the file small (weights are external and stay here)
        t.ClearField("external_data")
        t.data_location = onnx.TensorProto.DEFAULT
    onnx.save(m, str(out_dir / f"{name}.ortopt.graph.onnx"))
    opt_path.unlink()
    (out_dir / f"{name}.ortopt.weights").unlink(missing_ok=True)

    # profile: ORT_ENABLE_ALL, no CUDA graph, the benchmark's configuration; kernel times per node (host side)
    so = options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.enable_profiling = True
    so.profile_file_prefix = str(out_dir / f"{name}.prof")
    sess = ort.InferenceSession(str(src), so, providers=providers)
    for _ in range(args.profile_runs):
        sess.run(None, feeds)
    prof = sess.end_profiling()
    events = json.loads(Path(prof).read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    skip = runs[min(5, len(runs) - 1)] if runs else 0  # leave out the first runs (cuBLAS/cuDNN set-up)
    counted = sum(1 for t in runs if t >= skip)
    per_op: dict = collections.defaultdict(lambda: [0, 0.0])
    per_node: dict = collections.defaultdict(float)
    run_us = [e["dur"] for e in events if e.get("name") == "model_run" and e["ts"] >= skip]
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= skip:
            a = e.get("args", {})
            key = f"{a.get('op_name')}@{a.get('provider', '?').replace('ExecutionProvider', '')}"
            per_op[key][0] += 1
            per_op[key][1] += e["dur"]
            per_node[e["name"][:-len("_kernel_time")]] += e["dur"]
    rec["profile"] = {
        "runs": counted,
        "model_run_median_us": sorted(run_us)[len(run_us) // 2] if run_us else None,
        "kernels_per_run": sum(c for c, _ in per_op.values()) / max(counted, 1),
        "per_op": {k: {"nodes_per_run": c / max(counted, 1), "us_per_run": d / max(counted, 1)}
                   for k, (c, d) in sorted(per_op.items(), key=lambda kv: -kv[1][1])},
        "top_nodes_us_per_run": dict(sorted(((k, v / max(counted, 1)) for k, v in per_node.items()),
                                            key=lambda kv: -kv[1])[:25]),
    }
    Path(prof).unlink()
    with open(args.jsonl, "a") as f:
        f.write(json.dumps({"dump": rec}) + "\n")
    print(f"dump {name}: {rec['optimized_nodes']} nodes after ORT; "
          + ", ".join(f"{k} {v}" for k, v in rec["key_ops"].items() if v)
          + f"; profile: {rec['profile']['kernels_per_run']:.0f} kernels/run, "
          f"run {rec['profile']['model_run_median_us']} us", flush=True)


def one(args) -> None:
    """Subprocess: ORT_ENABLE_ALL x CUDA graph off/on x batch 1/8 for one model (one round)."""
    import onnxruntime as ort

    bench = gpu_bench.import_bench()
    base, disabled = split_name(args.model)
    patch_disabled(ort, disabled)
    path = Path(args.models_dir) / (base + ".onnx")
    with open(args.jsonl, "a") as out:
        for graph in (False, True):
            for batch in (1, 8):
                t0 = time.time()
                cfg = {"ort_opt": "all", "cuda_graph": graph, "pipelined": False, "batch": batch}
                try:
                    res = bench.benchmark(path, provider=args.provider, warmup=args.warmup, iters=args.iters,
                                          input_shapes=SHAPES, e2e=False, **cfg)
                except Exception as exc:  # noqa: BLE001 - recorded, the next config still runs
                    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    res = {"model": str(path), "provider": args.provider, **cfg,
                           "error": f"{type(exc).__name__}: {msg}"}
                res.update(name=args.model, round=args.round, wall_s=time.time() - t0)
                out.write(json.dumps(res) + "\n")
                out.flush()
                print(f"r{args.round} " + bench.format_table([res]).splitlines()[-1], flush=True)


def run(args) -> None:
    import numpy as np

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    models_dir = Path(args.models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    work = models_dir / "work"
    jsonl = out_dir / "fused_bert.jsonl"
    jsonl.unlink(missing_ok=True)
    env = gpu_bench.environment()
    print(json.dumps(env), flush=True)
    t0 = time.time()
    names = args.models or list(VARIANTS)
    for base in dict.fromkeys(split_name(n)[0] for n in names):
        gpu_bench.fill(STAGE / VARIANTS[base], models_dir / (base + ".onnx"))
    print(f"models ready in {time.time() - t0:.1f} s", flush=True)
    deadline = t0 + args.budget_s
    base = [sys.executable, __file__]
    common = ["--models-dir", str(models_dir), "--jsonl", str(jsonl)]

    def sub(cmd, label):
        left = deadline - time.time()
        if left < 20:
            print(f"skipping {label}: out of time budget", flush=True)
            return
        try:
            subprocess.run(base + cmd + common, timeout=left, check=False)
        except subprocess.TimeoutExpired:
            print(f"{label}: timed out", flush=True)

    for rnd in range(1, args.rounds + 1):  # rounds alternate the model order (A B C D, then D C B A)
        order = names if rnd % 2 else names[::-1]
        for name in order:
            sub(["one", "--model", name, "--round", str(rnd), "--warmup", str(args.warmup), "--iters",
                 str(args.iters), "--provider", args.provider], f"round {rnd} {name}")
    if not args.no_dump:
        for name in args.dump or names:
            sub(["dump", "--model", name, "--work", str(work), "--batch", "8", "--provider", args.provider,
                 "--profile-runs", str(args.profile_runs)], f"dump {name}")
    # outputs of every variant vs the unfused model (CUDA EP, ORT_ENABLE_EXTENDED, batch 8, same inputs)
    checks = []
    ref_path = work / "bert.outputs.npz"
    if ref_path.exists():
        ref = np.load(ref_path)
        for name in names:
            p = work / f"{name}.outputs.npz"
            if name == "bert" or not p.exists():
                continue
            got = np.load(p)
            for k in ref.files:
                d = np.abs(ref[k].astype(np.float64) - got[k].astype(np.float64))
                checks.append({"pair": f"bert vs {name}", "output": k, "max_abs": float(d.max()),
                               "ref_max_abs": float(np.abs(ref[k]).max())})
    with tarfile.open(out_dir / "ortopt_graphs.tar.gz", "w:gz") as tar:
        for p in sorted(work.glob("*.ortopt.graph.onnx")) if work.exists() else []:
            tar.add(p, arcname=p.name)
    results, dumps = [], []
    for line in jsonl.read_text().splitlines() if jsonl.exists() else []:
        rec = json.loads(line)
        (dumps.append(rec["dump"]) if "dump" in rec else results.append(rec))
    doc = {"environment": env, "command": " ".join(sys.argv), "results": results, "dumps": dumps,
           "crosscheck": checks, "total_s": time.time() - t0}
    (out_dir / "fused_bert.json").write_text(json.dumps(doc, indent=2))
    report_tables(doc)
    print(f"total {time.time() - t0:.1f} s")


# ------------------------------------------------------------------------------------------------ report (here)

def report_tables(doc: dict) -> None:
    """Markdown tables; `doc` is one run's JSON or {"runs": [...]} (several device calls, oldest first)."""
    runs = doc.get("runs", [doc])
    serial: dict = {}  # (name, graph, batch) -> {(call, round): result}
    for call, r in enumerate(runs, 1):
        for x in r["results"]:
            serial.setdefault((x["name"], x["cuda_graph"], x["batch"]), {})[(call, x.get("round", 1))] = x
    names = [n for n in all_names() if any(k[0] == n for k in serial)]
    print("Median ms per (device call, round), in that order; speed-up = unfused median / variant median of the same "
          "call and round.")
    print()
    print("| variant | CUDA graph | batch | median ms | speed-up vs unfused |")
    print("|---|---|---|---|---|")
    for n in names:
        for graph in (False, True):
            for batch in (1, 8):
                xs = serial.get((n, graph, batch), {})
                if not xs:
                    continue
                errs = [x["error"] for x in xs.values() if x.get("error")]
                if errs:
                    print(f"| {n} | {'on' if graph else 'off'} | {batch} | "
                          f"{'refused' if 'graph capture' in errs[0] else 'error: ' + errs[0][:60]} | |")
                    continue
                ref = serial.get(("bert", graph, batch), {})
                med = " / ".join(f"{xs[k]['median_ms']:.3f}" for k in sorted(xs))
                sp = " / ".join(f"{ref[k]['median_ms'] / xs[k]['median_ms']:.2f}x" for k in sorted(xs)
                                if k in ref and not ref[k].get("error")) if n != "bert" else ""
                print(f"| {n} | {'on' if graph else 'off'} | {batch} | {med} | {sp} |")
    dumps = {}
    for r in runs:
        dumps.update({d["model"]: d for d in r.get("dumps", [])})
    if dumps:
        dumps = {n: dumps[n] for n in all_names() if n in dumps}
        print()
        print("| op (after ORT, CUDA EP) | " + " | ".join(dumps) + " |")
        print("|---|" + "---|" * len(dumps))
        print("| nodes | " + " | ".join(str(d["optimized_nodes"]) for d in dumps.values()) + " |")
        for k in KEY_OPS:
            vals = [d["key_ops"].get(k, 0) for d in dumps.values()]
            if any(vals) or k in ("Attention", "MultiHeadAttention", "FastGelu", "BiasGelu"):
                print(f"| {k} | " + " | ".join(str(v) for v in vals) + " |")
        print("| nodes executed per run (profile) | "
              + " | ".join(f"{d['profile']['kernels_per_run']:.0f}" for d in dumps.values()) + " |")
        print("| nodes placed on CPU | " + " | ".join(str(d["placement"].get("nodes", {}).get("CPUExecutionProvider", 0))
                                                       for d in dumps.values()) + " |")
    for r in runs:
        for c in r.get("crosscheck", []):
            print(f"crosscheck {c['pair']} {c['output']}: max abs {c['max_abs']:.3g} (scale {c['ref_max_abs']:.3g})")


def report(args) -> None:
    """Several runs' fused_bert.json (oldest first) -> one JSON (-o) and the markdown tables."""
    runs = [json.loads(Path(f).read_text()) for f in args.json]
    doc = {"runs": [{"file": str(f), **r} for f, r in zip(args.json, runs)]}
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1))
    report_tables(doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--tmp", default="/tmp/fused_bert")
    pr = sub.add_parser("run")
    pr.add_argument("--out", default=os.environ.get("OUT", "/tmp/fused_bert_out"))
    pr.add_argument("--models-dir", default="/tmp/fused_bert_models")
    pr.add_argument("--models", nargs="*", choices=all_names())
    pr.add_argument("--dump", nargs="*", choices=all_names(), help="models to dump (default: --models)")
    pr.add_argument("--rounds", type=int, default=2)
    pr.add_argument("--warmup", type=int, default=20)
    pr.add_argument("--iters", type=int, default=200)
    pr.add_argument("--profile-runs", type=int, default=30)
    pr.add_argument("--budget-s", type=float, default=480)
    pr.add_argument("--no-dump", action="store_true")
    pr.add_argument("--provider", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of this script")
    for name, fn in (("one", one), ("dump", dump)):
        q = sub.add_parser(name)
        q.add_argument("--models-dir", required=True)
        q.add_argument("--jsonl", required=True)
        q.add_argument("--model", required=True, choices=all_names())
        q.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
        if name == "one":
            q.add_argument("--round", type=int, default=1)
            q.add_argument("--warmup", type=int, default=20)
            q.add_argument("--iters", type=int, default=200)
        else:
            q.add_argument("--work", required=True)
            q.add_argument("--batch", type=int, default=8)
            q.add_argument("--profile-runs", type=int, default=30)
    rp = sub.add_parser("report")
    rp.add_argument("json", nargs="+")
    rp.add_argument("-o", "--out")
    args = p.parse_args()
    {"prepare": prepare, "run": run, "one": one, "dump": dump, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
