"""Shared machinery of compare_peers.py, rule_coverage.py and detr_shapes.py: run fuser and its peers each in its own
process, measure them, and evaluate what they wrote.

Parent side (imported by the benchmark scripts):

    run_tool(tool, src, dst, timeout=..., mem_cap_gib=16)  -> dict   optimize src -> dst with one tool, in a child
    evaluate(model, trt_profile)                            -> dict   node/pattern counts, TensorRT-RTX layers
    ort_compare({label: path}, inputs_npz, latency=True)    -> dict   max abs error vs the first model, ORT CPU
                                                                      latency off/on, all models timed round-robin
    make_inputs(model_path, shapes)                         -> dict   seeded inputs (floats N(0,1), ids < 1000, masks 1)

Child side (`python benchmarks/peerlib.py optimize|evaluate ...`): what actually runs the tool or the model. The child
caps its address space (RLIMIT_AS, --mem-cap-gib) before importing anything heavy, and writes its result as JSON after
each stage, so a crash or a timeout later on still leaves the figures already taken. The parent waits with os.wait4,
which gives that child's own peak RSS (ru_maxrss), and kills it on timeout or when the machine's available memory
drops under a floor (MEM_FLOOR_MIB), so that no peer can take the machine down.

Tools (TOOLS): floor (onnx.load + onnx.save, the I/O floor), fuser (the CLI's `optimize`, in-process through click,
default options and --target tensorrt), fuser-novalidate (the same with --no-validate), onnxsim, onnxslim,
polygraphy (fold_constants), ort-basic / ort-extended (onnxruntime's offline optimizer, CPU provider), onnxscript
(optimizer.optimize + rewriter.rewrite with the default rules plus the opt-in hardswish / LayerNorm / conv-affine
rules). Each child times only load -> tool -> save, after its imports (tool_s); the whole process is wall_s.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / "cache"
RESULTS = HERE / "results"
PROTOBUF_LIMIT = 2**31 - 1
MEM_FLOOR_MIB = 1536  # kill a child when the machine's available memory falls below this

TOOLS = ("floor", "fuser", "fuser-novalidate", "onnxsim", "onnxslim", "polygraphy", "ort-basic", "ort-extended",
         "onnxscript")
PEERS = ("onnxsim", "onnxslim", "polygraphy", "ort-basic", "ort-extended", "onnxscript")


def child_env() -> dict:
    env = dict(os.environ)
    # The benchmark venv's editable install of fuser resolves `fuser` as a namespace package when the working
    # directory is not the repository root; putting the root first on the path makes `import fuser` work anywhere.
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("POLYGRAPHY_AUTOINSTALL_DEPS", "0")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def first_line(text: str) -> str:
    for line in (text or "").strip().splitlines()[::-1]:
        line = line.strip()
        if re.match(r"^(\w+\.)*\w*(Error|Exception|Killed|error|Fail\w*)\b|^fuser: (error|internal)", line):
            return line[:300]
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _available_mib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _status_mib(pid: int | str, key: str) -> float:
    """A memory line of /proc/PID/status (VmRSS, VmHWM) in MiB; 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _rss_mib(pid: int) -> float:
    return _status_mib(pid, "VmRSS")


def run_child(argv: list[str], timeout: float, result_path: Path | None = None) -> dict:
    """Run one child; its wall time, peak RSS (MiB), exit status, stderr tail and the JSON it wrote."""
    if result_path is not None and result_path.exists():
        result_path.unlink()
    if result_path is not None:
        err_path = Path(str(result_path) + ".stderr")
    else:
        handle, name = tempfile.mkstemp(prefix="peerlib-", suffix=".stderr")
        os.close(handle)
        err_path = Path(name)
    started = time.perf_counter()
    with open(err_path, "w") as err:
        proc = subprocess.Popen(argv, stdout=err, stderr=subprocess.STDOUT, cwd=REPO, env=child_env(),
                                start_new_session=True)
        status, killed, rusage, hwm = None, None, None, 0.0
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            hwm = max(hwm, _status_mib(proc.pid, "VmHWM"))
            elapsed = time.perf_counter() - started
            available = _available_mib()
            if elapsed > timeout:
                killed = f"timeout after {timeout:.0f} s"
            elif available is not None and available < MEM_FLOOR_MIB and _rss_mib(proc.pid) > 1024:
                killed = (f"killed: machine memory available fell to {available:.0f} MiB "
                          f"(the tool's RSS {_rss_mib(proc.pid):.0f} MiB)")
            if killed:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05 if elapsed < 2 else 0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    stderr = err_path.read_text(errors="replace")[-20000:]
    if result_path is None:
        err_path.unlink(missing_ok=True)
    result = {}
    if result_path is not None and result_path.exists():
        try:
            result = json.loads(result_path.read_text())
        except ValueError:
            result = {}
    rc = proc.returncode
    # Peak RSS: the child's own VmHWM (reported by the child at exit, else the last value polled here). Not
    # ru_maxrss: Linux carries the high-water mark of the forking parent's memory across exec into it.
    peak = result.get("vmhwm_mib") or hwm or rusage.ru_maxrss / 1024
    out = {"rc": rc, "wall_s": round(wall, 3), "peak_rss_mib": round(peak, 1),
           "ru_maxrss_mib": round(rusage.ru_maxrss / 1024, 1),
           "stderr_tail": stderr[-3000:], "result": result}
    if killed:
        out["error"] = killed
        out["timed_out"] = killed.startswith("timeout")
    elif rc != 0:
        signame = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
        out["error"] = result.get("error") or first_line(stderr) or signame
        if rc < 0:
            out["error"] = f"{signame}: {out['error']}"
    return out


# ---------------------------------------------------------------------------------------------------- parent API
def run_tool(tool: str, src: Path, dst: Path, timeout: float = 600, mem_cap_gib: float = 16,
             extra: list[str] | None = None) -> dict:
    """Optimize src into dst with `tool`, in its own process. Returns the measurement dict (ok, error, ...)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    result_path = dst.with_name(dst.name + ".result.json")
    argv = [sys.executable, str(Path(__file__).resolve()), "optimize", tool, str(src), str(dst),
            "--result", str(result_path), "--mem-cap-gib", str(mem_cap_gib)]
    for item in extra or []:
        argv.append(f"--extra={item}")
    retries = []
    for attempt in range(3):
        run = run_child(argv, timeout, result_path)
        if not str(run.get("error", "")).startswith("killed: machine memory") or attempt == 2:
            break
        # the machine is shared: another process may have taken the memory; wait for it to come back and retry
        retries.append(run["error"])
        deadline = time.time() + 300
        while time.time() < deadline and (_available_mib() or 0) < 4 * MEM_FLOOR_MIB:
            time.sleep(5)
        remove_model(dst)
    res = run.pop("result")
    ok = run["rc"] == 0 and res.get("ok", False) and dst.exists()
    out = {"tool": tool, "ok": ok, "wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"],
           "tool_s": res.get("tool_s"), "info": res.get("info", {})}
    if retries:
        out["retried_after"] = retries
    if not ok:
        out["error"] = run.get("error") or res.get("error") or ("no output written" if not dst.exists() else "?")
        out["timed_out"] = run.get("timed_out", False)
    out["stderr_tail"] = run["stderr_tail"][-1500:]
    return out


def evaluate(model: Path, trt_profile: str | None = None, timeout: float = 600, shape_stats: bool = False,
             work: Path | None = None) -> dict:
    """Node / pattern counts and (with a profile) TensorRT-RTX network layers and build time, in a child.
    `trt_profile`: parse_profile text; several optimization profiles separated by '|'. The child's result file goes
    to `work` (default: beside the model)."""
    result_path = (work or model.parent) / (model.name + ".eval.json")
    argv = [sys.executable, str(Path(__file__).resolve()), "evaluate", str(model), "--result", str(result_path)]
    if shape_stats:
        argv.append("--shape-stats")
    if trt_profile is not None:
        argv += ["--trt-profile", trt_profile]
    run = run_child(argv, timeout, result_path)
    res = run["result"]
    if run["rc"] != 0:
        res.setdefault("errors", {})["child"] = run.get("error")
    res["eval_wall_s"] = run["wall_s"]
    return res


def ort_compare(models: dict[str, Path], inputs: Path, *, latency: bool = True, budget_s: float = 4.0,
                max_runs: int = 9, timeout: float = 900, group_mib: float = 4000) -> dict:
    """Run every model on the same inputs with onnxruntime CPU, interleaved, in one child per group of models.

    The first model is the reference (its outputs with graph optimizations off). Per label: max_abs_err, ref_scale,
    out_dtype, and with `latency` the median ms with ORT optimizations off and on. Models are timed round-robin (one
    run of each per round), so a load change on the machine hits all of them alike. Groups keep the summed model size
    under `group_mib`; every group carries the reference model so its ratios stay comparable.
    """
    labels = list(models)
    ref_label = labels[0]
    sizes = {k: (models[k].stat().st_size + external_bytes(models[k])) / 2**20 for k in labels}
    groups, current, total = [], [ref_label], sizes[ref_label]
    for label in labels[1:]:
        if len(current) > 1 and total + sizes[label] > group_mib:
            groups.append(current)
            current, total = [ref_label], sizes[ref_label]
        current.append(label)
        total += sizes[label]
    groups.append(current)
    out: dict[str, dict] = {}
    for number, group in enumerate(groups):
        result_path = inputs.with_name(f"ort_compare.{number}.json")
        argv = [sys.executable, str(Path(__file__).resolve()), "ort", "--inputs", str(inputs), "--result",
                str(result_path), "--budget-s", str(budget_s), "--max-runs", str(max_runs)]
        if not latency:
            argv.append("--no-latency")
        for label in group:
            argv += ["--model", f"{label}={models[label]}"]
        run = run_child(argv, timeout, result_path)
        res = run["result"].get("models", {})
        for label in group:
            if label == ref_label and label in out:
                out[label].setdefault("groups", []).append(res.get(label, {}))
                continue
            entry = res.get(label, {"errors": {}})
            if run["rc"] != 0:
                entry.setdefault("errors", {})["ort"] = entry.get("errors", {}).get("ort") or run.get("error")
            out[label] = entry
        out.setdefault("_meta", {}).setdefault("groups", []).append(
            {"models": group, "wall_s": run["wall_s"], "rounds": run["result"].get("rounds")})
    return out


def make_inputs(model_path: Path, shapes: dict[str, list[int]] | None = None, seed: int = 0) -> dict:
    """Seeded inputs: floats N(0, 1); ints named *mask* all 1, *token_type*/*segment* 0, other ints (ids) in
    [0, 1000) (inside every corpus vocabulary); bools True. Dynamic dims: from `shapes`, else 1 (axis 0) / 16."""
    import numpy as np
    import onnx
    from onnx import helper

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if shapes and vi.name in shapes:
            dims = list(shapes[vi.name])
        else:
            dims = [d.dim_value if d.HasField("dim_value") else (1 if i == 0 else 16)
                    for i, d in enumerate(tt.shape.dim)]
        name = vi.name.lower()
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype.kind in "iu":
            if "mask" in name:
                feeds[vi.name] = np.ones(dims, dtype)
            elif "token_type" in name or "segment" in name:
                feeds[vi.name] = np.zeros(dims, dtype)
            else:
                feeds[vi.name] = rng.integers(0, 1000, dims).astype(dtype)
        elif dtype.kind == "b":
            feeds[vi.name] = np.ones(dims, dtype)
        else:
            raise ValueError(f"input {vi.name}: cannot generate dtype {dtype}")
    return feeds


def trt_profile_text(feeds: dict) -> str:
    """min = opt = max = the shapes of these inputs, in fuser.trt.parse_profile's syntax."""
    return ";".join(f"{name}:{'x'.join(str(d) for d in array.shape)}" for name, array in feeds.items())


def file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def remove_model(path: Path) -> None:
    """Delete a written model and whatever external data and side files lie beside it."""
    for p in list(path.parent.glob(path.name + "*")) + list(path.parent.glob(path.stem + ".data")):
        try:
            p.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------------- child side
def _write(result_path: Path, result: dict) -> None:
    result["vmhwm_mib"] = round(_status_mib("self", "VmHWM"), 1)  # this process's peak RSS so far
    tmp = result_path.with_name(result_path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, result_path)


def _save(model, dst: Path) -> None:
    import onnx

    # ByteSize() itself fails (EncodeError) past 2 GB, so the initializers are measured first
    if _has_big_initializers(model) or model.ByteSize() > PROTOBUF_LIMIT:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))


def _has_big_initializers(model) -> bool:
    total = sum(t.ByteSize() if not t.raw_data else len(t.raw_data) for t in model.graph.initializer)
    return total > PROTOBUF_LIMIT - (64 << 20)


def external_bytes(path: Path) -> int:
    """Bytes of the external data files the model at `path` references (0 when it has none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    files = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in tensor.external_data if e.key == "location")
    return sum((path.parent / f).stat().st_size for f in files if (path.parent / f).exists())


def _too_big(path: Path) -> bool:
    return external_bytes(path) + path.stat().st_size > PROTOBUF_LIMIT - (64 << 20)


def _child_optimize(tool: str, src: Path, dst: Path, result_path: Path, extra: list[str]) -> None:
    result = {"tool": tool, "ok": False, "info": {}}
    _write(result_path, result)
    import onnx

    if tool in ("fuser", "fuser-novalidate"):

        from fuser.cli import main as fuser_main
        report = dst.with_name(dst.name + ".report.json")
        args = ["optimize", str(src), "-o", str(dst), "--target", "tensorrt", "--report", str(report),
                "--no-progress"]
        if tool == "fuser-novalidate":
            args.append("--no-validate")
        args += extra
        result["info"]["argv"] = args
        started = time.perf_counter()
        try:
            fuser_main(args, standalone_mode=False)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        result["tool_s"] = round(time.perf_counter() - started, 3)
        if report.exists():
            rep = json.loads(report.read_text())
            result["info"].update({
                "fusion_counts": rep.get("fusion_counts"), "near_misses": len(rep.get("near_misses") or []),
                "near_miss_reasons": sorted({m.get("reason", "")[:120] for m in rep.get("near_misses") or []})[:8],
                "validation": (rep.get("validation") or {}).get("summary"),
                "validation_status": (rep.get("validation") or {}).get("status"),
                "notes": rep.get("notes"), "warnings": rep.get("warnings"), "passes": rep.get("passes"),
                "time_s": rep.get("time_s"), "opset_out": (rep.get("output") or {}).get("opset"),
                "output_files": rep.get("output_files"), "folding": rep.get("folding")})
        if code != 0:
            result["error"] = f"fuser exited {code}"
            _write(result_path, result)
            sys.exit(code)
        result["ok"] = True
        _write(result_path, result)
        return

    if tool == "floor":
        started = time.perf_counter()
        model = onnx.load(str(src))
        _save(model, dst)
    elif tool == "onnxsim":
        import onnxsim
        started = time.perf_counter()
        model = onnx.load(str(src))
        model, check = onnxsim.simplify(model)
        result["info"]["check"] = bool(check)
        _save(model, dst)
    elif tool == "onnxslim":
        import onnxslim
        started = time.perf_counter()
        model = onnxslim.slim(onnx.load(str(src)))
        _save(model, dst)
    elif tool == "polygraphy":
        from polygraphy.backend.onnx import fold_constants
        started = time.perf_counter()
        model = fold_constants(onnx.load(str(src)))
        _save(model, dst)
    elif tool in ("ort-basic", "ort-extended"):
        import onnxruntime as ort
        started = time.perf_counter()
        so = ort.SessionOptions()
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if tool == "ort-basic"
                                       else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        so.optimized_model_filepath = str(dst)
        if _too_big(src):
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                        dst.name + ".data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    elif tool == "onnxscript":
        import onnxscript.optimizer
        import onnxscript.rewriter
        from onnxscript.rewriter import _DEFAULT_REWRITE_RULES
        from onnxscript.rewriter.rules import common
        rules = list(_DEFAULT_REWRITE_RULES)
        optin = []
        try:  # opt-in, public: HardSwish/HardSigmoid and Conv+affine
            rules += list(common.fuse_hardswish_rules().rules)
            optin.append("fuse_hardswish_rules")
            rules += [common.conv_affine_fusion_rule, common.affine_conv_fusion_rule]
            optin.append("conv_affine_fusion_rule, affine_conv_fusion_rule")
        except AttributeError as exc:
            result["info"]["optin_error"] = str(exc)
        try:  # opt-in, documented in onnxscript's fusion rules (module private): LayerNormalization
            from onnxscript.rewriter.rules.fusion import _layer_norm
            rules += list(_layer_norm.layer_normalization_rules)
            optin.append("layer_normalization_rules")
        except (ImportError, AttributeError) as exc:
            result["info"]["optin_error"] = str(exc)
        result["info"]["optin_rules"] = optin
        started = time.perf_counter()
        model = onnx.load(str(src))
        model = onnxscript.optimizer.optimize(model)
        model = onnxscript.rewriter.rewrite(model, pattern_rewrite_rules=rules)
        _save(model, dst)
    else:
        raise SystemExit(f"unknown tool {tool}")
    result["tool_s"] = round(time.perf_counter() - started, 3)
    result["ok"] = True
    _write(result_path, result)


def _ort_session(path: Path, level: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.log_severity_level = 3
    # Several sessions live side by side (timed round-robin): their idle intra-op threads must not spin and steal
    # the cores from the session being timed (with spinning on, the 8th session ran ~1.4x slower than the 1st).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _compare(outs, names, ref_outs, ref_names) -> dict:
    import numpy as np

    by_name = dict(zip(ref_names, ref_outs))
    errs, scale, mismatch = [], 0.0, []
    for i, (name, out) in enumerate(zip(names, outs)):
        expected = by_name.get(name, ref_outs[i] if i < len(ref_outs) else None)
        if expected is None or np.shape(expected) != np.shape(out):
            mismatch.append(name)
            continue
        a, b = np.asarray(out, np.float64), np.asarray(expected, np.float64)
        finite = np.isfinite(b)
        if not np.array_equal(np.isfinite(a), finite):
            errs.append(float("inf"))
        if finite.any():
            errs.append(float(np.max(np.abs(a[finite] - b[finite]))))
            scale = max(scale, float(np.max(np.abs(b[finite]))))
    res = {"max_abs_err": max(errs) if errs else None, "ref_scale": scale,
           "out_dtype": str(np.asarray(outs[0]).dtype) if outs else None}
    if mismatch or len(outs) != len(ref_outs):
        res["outputs_mismatch"] = mismatch or f"{len(outs)} outputs, reference has {len(ref_outs)}"
    return res


def _child_ort(args) -> None:
    """Reference run, error of each model, then (optionally) round-robin latency with ORT off and on."""
    import statistics

    import numpy as np

    models = dict(item.split("=", 1) for item in args.model)
    labels = list(models)
    feeds = dict(np.load(args.inputs))
    result: dict = {"models": {label: {"errors": {}} for label in labels}}
    _write(args.result, result)
    levels = ("off", "all") if args.latency else ("off",)
    ref = None
    for level in levels:
        sessions, first = {}, {}
        for label in labels:
            entry = result["models"][label]
            if entry["errors"].get("ort"):
                continue
            try:
                session = _ort_session(Path(models[label]), level)
                names = [i.name for i in session.get_inputs()]
                run_feeds = {k: v for k, v in feeds.items() if k in names}
                out_names = [o.name for o in session.get_outputs()]
                t = time.perf_counter()
                outs = session.run(None, run_feeds)
                first[label] = time.perf_counter() - t
                if level == "off":
                    if label == labels[0]:
                        ref = (outs, out_names)
                        entry.update({"max_abs_err": 0.0, "ref_scale": _compare(outs, out_names, *ref)["ref_scale"],
                                      "out_dtype": str(np.asarray(outs[0]).dtype)})
                    elif ref is not None:
                        entry.update(_compare(outs, out_names, *ref))
                    else:
                        entry["errors"]["reference"] = f"the reference '{labels[0]}' did not run"
                sessions[label] = (session, run_feeds)
            except Exception as exc:  # noqa: BLE001
                entry["errors"]["ort" if level == "off" else "ort_on"] = first_line(f"{type(exc).__name__}: {exc}")
            _write(args.result, result)
        if not args.latency or not sessions:
            continue
        round_s = sum(first.get(label, 0) for label in sessions)
        rounds = max(min(3, args.max_runs), min(args.max_runs, int(args.budget_s * len(sessions) / max(round_s, 1e-4))))
        # the first run of each session above was its warm-up
        times = {label: [] for label in sessions}
        for _ in range(rounds):
            for label, (session, run_feeds) in sessions.items():
                t = time.perf_counter()
                session.run(None, run_feeds)
                times[label].append((time.perf_counter() - t) * 1000)
        key = "ort_off_ms" if level == "off" else "ort_on_ms"
        for label, values in times.items():
            result["models"][label][key] = round(statistics.median(values), 3)
            result["models"][label][key.replace("_ms", "_runs")] = len(values)
        result.setdefault("rounds", {})[level] = rounds
        sessions.clear()
        _write(args.result, result)


def _child_evaluate(args) -> None:
    import onnx

    sys.path.insert(0, str(HERE))
    from patterns import count_patterns

    path = Path(args.model)
    result: dict = {"errors": {}}
    _write(args.result, result)
    try:
        proto = onnx.load(str(path), load_external_data=False)
        result["counts"] = count_patterns(proto)
        result["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        result["domains"] = sorted({n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
        if args.shape_stats:
            from patterns import op_counts, shape_tensor_stats
            result["shape_ops"] = op_counts(proto)
            result["shape_tensors"] = shape_tensor_stats(proto)
        del proto
    except Exception as exc:  # noqa: BLE001
        result["errors"]["load"] = first_line(f"{type(exc).__name__}: {exc}")
        _write(args.result, result)
        return
    _write(args.result, result)
    if args.trt_profile:
        try:
            os.environ.setdefault("FUSER_TRT_BACKEND", "tensorrt_rtx")
            from fuser.trt import BuildOptions, build_engine, parse_profile
            options = BuildOptions(profiles=tuple(parse_profile(p) for p in args.trt_profile.split("|")),
                                   opt_level=0, backend="tensorrt_rtx")
            started = time.perf_counter()
            built = build_engine(str(path), options)
            result["trt_total_s"] = round(time.perf_counter() - started, 3)
            result["trt_layers"] = len(built.network_layers)
            result["trt_build_s"] = round(built.build_seconds, 3)
            result["trt_engine_mib"] = round(built.engine_size / 2**20, 2)
            result["trt_warnings"] = sorted({w.id for w in built.warnings})
            result["trt_layer_types"] = dict(sorted(_count(l["type"] for l in built.network_layers).items()))
        except Exception as exc:  # noqa: BLE001
            result["errors"]["trt"] = first_line(f"{type(exc).__name__}: {exc}")
        _write(args.result, result)


def _count(items) -> dict:
    from collections import Counter

    return dict(Counter(items))


def _cap_memory(gib: float) -> None:
    if gib and gib > 0:
        limit = int(gib * 2**30)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("optimize")
    o.add_argument("tool")
    o.add_argument("src", type=Path)
    o.add_argument("dst", type=Path)
    o.add_argument("--result", type=Path, required=True)
    o.add_argument("--mem-cap-gib", type=float, default=16)
    o.add_argument("--extra", action="append", default=[])
    e = sub.add_parser("evaluate")
    e.add_argument("model")
    e.add_argument("--result", type=Path, required=True)
    e.add_argument("--trt-profile")
    e.add_argument("--shape-stats", action="store_true")
    r = sub.add_parser("ort")
    r.add_argument("--model", action="append", required=True, help="LABEL=PATH; the first is the reference")
    r.add_argument("--inputs", required=True)
    r.add_argument("--result", type=Path, required=True)
    r.add_argument("--no-latency", dest="latency", action="store_false")
    r.add_argument("--budget-s", type=float, default=4.0)
    r.add_argument("--max-runs", type=int, default=9)
    args = ap.parse_args()
    if args.cmd == "optimize":
        _cap_memory(args.mem_cap_gib)
        try:
            _child_optimize(args.tool, args.src, args.dst, args.result, args.extra)
        except MemoryError:
            _write(args.result, {"tool": args.tool, "ok": False, "error": "MemoryError (address-space cap "
                                 f"{args.mem_cap_gib:g} GiB)"})
            raise
        except SystemExit:
            raise
        except BaseException as exc:
            prev = {}
            try:
                prev = json.loads(args.result.read_text())
            except (OSError, ValueError):
                pass
            prev.update({"ok": False, "error": first_line(f"{type(exc).__name__}: {exc}")})
            _write(args.result, prev)
            raise
    elif args.cmd == "evaluate":
        _child_evaluate(args)
    else:
        _child_ort(args)


if __name__ == "__main__":
    _main()
