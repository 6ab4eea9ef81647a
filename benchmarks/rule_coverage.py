"""Instances found vs instances fused, per fusion family, on real exports (issue 3).

    benchmarks/.venv/bin/python benchmarks/rule_coverage.py              # the four models issue 3 names
    benchmarks/.venv/bin/python benchmarks/rule_coverage.py --all        # and every other corpus model
    benchmarks/.venv/bin/python benchmarks/rule_coverage.py --only 'mobilenet_*'

Models (benchmarks/cache, from corpus.py): torchvision mobilenet_v3_large at opsets 12 and 13, resnet50 with
BatchNormalization kept, BERT-base at opset 12 (with --all: the rest of the corpus, the > 2 GB model excepted).

FOUND is counted from the input model's structure by patterns.py, which is independent of fuser's matcher:
    layernorm         Sqrt anchors of decomposed LayerNorms (ReduceMean -> Sub -> Pow|Mul -> ReduceMean -> Add(eps)
                      -> Sqrt -> Div|Reciprocal); cross-checked against the LayerNormalization ops of the opset-17
                      export of the same model where the corpus has one (bert_base_op17)
    hswish            HardSigmoid(1/6, 0.5) -> Mul(x) pairs and Add(3) -> relu6 -> /6 -> Mul(x) chains; cross-checked
                      against the HardSwish ops of the opset-14 export (mobilenet_v3_*_op14)
    hsigmoid          Add(3) -> relu6 -> /6 chains not multiplied by x
    conv-bn           BatchNormalization nodes fed by a Conv
    conv-elementwise  Conv whose only consumer is Mul/Add/Sub/Div with a per-channel constant (frozen BN as
                      Conv -> Mul -> Add counts once: one Conv)
FUSED is FOUND minus what patterns.py still finds in fuser's output (independent), next to what fuser's report
claims (`fusion_counts`; conv-elementwise counts each folded Mul/Add, so Conv -> Mul -> Add is 2 there).
fuser runs as `fuser optimize --target tensorrt` with default options (validation on). Outputs: max abs error of
fuser's output against the input model, onnxruntime CPU with graph optimizations off, same seeded inputs.

Writes benchmarks/results/rule_coverage.md and .json.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peerlib
from patterns import left_decomposed
from peerlib import CACHE, RESULTS

CORE = ("mobilenet_v3_large_op12", "mobilenet_v3_large_op13", "resnet50_bn", "bert_base_op12")
FAMILIES = ("layernorm", "hswish", "hsigmoid", "conv-bn", "conv-elementwise")
CANONICAL = {"layernorm": "LayerNormalization", "hswish": "HardSwish", "hsigmoid": "hsigmoid_native",
             "conv-bn": None, "conv-elementwise": None}
CROSS_CHECK = {  # model -> (the same model exported at a newer opset, the canonical op it has, family)
    "bert_base_op12": ("bert_base_op17", "LayerNormalization", "layernorm"),
    "bert_base_op12_fp16": ("bert_base_op17", "LayerNormalization", "layernorm"),
    "mobilenet_v3_large_op12": ("mobilenet_v3_large_op14", "HardSwish", "hswish"),
    "mobilenet_v3_large_op13": ("mobilenet_v3_large_op14", "HardSwish", "hswish"),
    "mobilenet_v3_small_op12": ("mobilenet_v3_small_op14", "HardSwish", "hswish"),
}


def tolerance(dtype: str | None, scale: float | None) -> float:
    return (1e-2 if dtype == "float16" else 1e-4) * max(1.0, scale or 0.0)


def cover(name: str, entry: dict, manifest: dict, work: Path, args) -> dict:
    import onnx
    from patterns import count_patterns

    src = CACHE / entry["file"]
    mdir = work / name
    mdir.mkdir(parents=True, exist_ok=True)
    found_counts = count_patterns(onnx.load(str(src), load_external_data=False))
    found = left_decomposed(found_counts)
    cross = None
    if name in CROSS_CHECK and CROSS_CHECK[name][0] in manifest:
        other, op, family = CROSS_CHECK[name]
        path = CACHE / manifest[other]["file"]
        if path.exists():
            cross = {"model": other, "op": op, "family": family,
                     "count": count_patterns(onnx.load(str(path), load_external_data=False))[op]}
    dst = mdir / "fuser.onnx"
    run = peerlib.run_tool("fuser", src, dst, timeout=args.timeout, mem_cap_gib=args.mem_cap_gib)
    out = {"model": name, "opset": entry.get("opset"), "found": found, "found_counts": found_counts,
           "cross_check": cross, "fuser": {k: run.get(k) for k in ("ok", "error", "tool_s", "peak_rss_mib")}}
    info = run.get("info") or {}
    out["fuser"].update({"fusion_counts": info.get("fusion_counts") or {}, "validation": info.get("validation"),
                         "near_misses": info.get("near_misses"), "near_miss_reasons": info.get("near_miss_reasons"),
                         "notes": info.get("notes")})
    if run["ok"]:
        left_counts = count_patterns(onnx.load(str(dst), load_external_data=False))
        left = left_decomposed(left_counts)
        out["left"], out["left_counts"] = left, left_counts
        out["fused"] = {f: found[f] - left[f] for f in FAMILIES}
        feeds = peerlib.make_inputs(src, (entry.get("checks") or [{}])[0].get("inputs"))
        inputs = mdir / "inputs.npz"
        np.savez(inputs, **feeds)
        ort = peerlib.ort_compare({"input": src, "fuser": dst}, inputs, latency=False, timeout=args.timeout)
        res = ort.get("fuser") or {}
        out["max_abs_err"] = res.get("max_abs_err")
        out["ref_scale"] = res.get("ref_scale")
        out["tol"] = tolerance(res.get("out_dtype"), res.get("ref_scale"))
        out["outputs_match"] = (res.get("max_abs_err") is not None and res["max_abs_err"] <= out["tol"]
                                and not res.get("outputs_mismatch"))
        out["ort_errors"] = {k: v for k, v in (res.get("errors") or {}).items() if v}
    shutil.rmtree(mdir, ignore_errors=True)
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# Rule coverage: instances found vs fused", "",
             (f"Run {meta['time']}. Command: `{meta['command']}`. FOUND: patterns.py on the input (independent of "
             "fuser's matcher); FUSED: FOUND minus what patterns.py still finds in fuser's output; (report: "
             "fuser's own count). `xcheck`: the canonical op count in the newer-opset export of the same model."), "",
             ("`canonical in input`: instances already in the fused form before fuser ran (e.g. mobilenet's "
             "squeeze-excitation gates are HardSigmoid already); they are not counted as found."), "",
             "| model | family | found | fused | left | fuser report | canonical in input | xcheck | all fused |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        first = True
        fc = r.get("found_counts") or {}
        fams = [f for f in FAMILIES if r["found"].get(f) or (r.get("fuser") or {}).get("fusion_counts", {}).get(f)
                or (CANONICAL[f] and fc.get(CANONICAL[f]))]
        if not fams:
            fams = ["(none)"]
        for fam in fams:
            found = r["found"].get(fam, 0)
            fused = (r.get("fused") or {}).get(fam)
            left = (r.get("left") or {}).get(fam)
            rep = r["fuser"].get("fusion_counts", {}).get(fam, 0)
            x = r.get("cross_check")
            xc = f"{x['count']} {x['op']} in {x['model']}" if x and x["family"] == fam else ""
            ok = "–" if fam == "(none)" or left is None else ("✓" if left == 0 else "✗")
            canon = fc.get(CANONICAL.get(fam) or "", None) if fam != "(none)" else None
            lines.append(f"| {r['model'] if first else ''} | {fam} | {found if fam != '(none)' else '–'} | "
                         f"{'–' if fused is None else fused} | {'–' if left is None else left} | "
                         f"{rep if fam != '(none)' else '–'} | {'–' if canon is None else canon} | {xc} | {ok} |")
            first = False
    lines += ["", "| model | fuser | compile s | max abs err | tol | outputs match | validation | near misses |",
              "|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        f = r["fuser"]
        status = "ok" if f.get("ok") else f"**failed**: {f.get('error')}"
        err = r.get("max_abs_err")
        lines.append(f"| {r['model']} | {status} | {f.get('tool_s') or '–'} | "
                     f"{'–' if err is None else f'{err:.2g}'} | {r.get('tol', 0):.2g} | "
                     f"{'–' if 'outputs_match' not in r else ('✓' if r['outputs_match'] else '✗')} | "
                     f"{(f.get('validation') or '–')[:200].replace('|', '/')} | "
                     f"{f.get('near_misses') or 0}{': ' + '; '.join(f.get('near_miss_reasons') or []) if f.get('near_misses') else ''} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="model name or glob (repeatable)")
    ap.add_argument("--all", action="store_true", help="every corpus model (except the > 2 GB one)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--mem-cap-gib", type=float, default=16)
    args = ap.parse_args()
    manifest = json.loads((CACHE / "manifest.json").read_text())["models"]
    available = [n for n, m in manifest.items() if m.get("status") == "ok" and (CACHE / m["file"]).exists()
                 and n != "big_transformer"]
    if args.only:
        names = [n for n in available if any(fnmatch.fnmatch(n, p) for p in args.only)]
    elif args.all:
        names = list(CORE) + sorted((n for n in available if n not in CORE), key=lambda n: manifest[n]["nodes"])
    else:
        names = [n for n in CORE if n in available]
    missing = [n for n in CORE if n not in available and not args.only]
    if missing:
        print(f"missing from the corpus (run benchmarks/corpus.py): {', '.join(missing)}", flush=True)
    meta = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(["rule_coverage.py", *sys.argv[1:]])}
    work = Path(tempfile.mkdtemp(prefix="rule_coverage-"))
    rows = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        for name in names:
            print(f"[{name}] ...", flush=True)
            try:
                row = cover(name, manifest[name], manifest, work, args)
            except Exception as exc:  # noqa: BLE001
                row = {"model": name, "found": {}, "fuser": {"ok": False, "error": f"{type(exc).__name__}: {exc}"}}
            rows.append(row)
            print(f"[{name}] found {row['found']} left {row.get('left')} err {row.get('max_abs_err')}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    md = markdown(rows, meta)
    (RESULTS / "rule_coverage.md").write_text(md)
    (RESULTS / "rule_coverage.json").write_text(json.dumps({"meta": meta, "models": rows}, indent=1, default=str))
    print()
    print(md)
    print(f"wrote {RESULTS / 'rule_coverage.md'} and .json")


if __name__ == "__main__":
    main()
