"""Does validation run, and is fuser right, on the ONNX project's own conformance models? (issue 11)

    .venv/bin/python benchmarks/conformance.py --node-tgz ../shared/data/onnx-node-tests.tgz
    .venv/bin/python benchmarks/conformance.py --node-dir /tmp/onnx-node --only 'test_gather*' --no-write

Models: the backend node tests (`onnx/backend/test/data/node/*`: 1,802 single-op models with
`test_data_set_0/{input,output}_N.pb`, unpacked from the tgz to a temporary folder, or `--node-dir`) and
the 149 models the installed onnx wheel bundles (`simple`, `pytorch-converted`, `pytorch-operator`, and
`light`, whose inputs are made as onnx's runner makes them: `arange(n).reshape(shape) / n`).

Each model is optimized with `fuser.optimize` (default options, validation on) twice: `test` feeds the
test's own inputs (`--inputs` with the test-data folder), `random` lets fuser make its inputs (the hard
case). Per mode it counts:

    optimized    fuser returned a model            refused   the loader refused the model
    validated    validation ran (by engine)         skipped   validation could not run (reasons grouped)
    wrong        fuser's output model, run on the test inputs, differs from the expected outputs
                 (rtol 1e-3, atol 1e-7 as onnx's backend test; densenet121 2e-3) where the original model
                 run by the same engine matches them (else "backend differs": not fuser's doing)
    model-error / usage-error   fuser stopped with exit 1 / exit 2     crash   exit 3 or a dead worker
    timeout      past --timeout seconds

"refused but onnxruntime runs it" counts refusals of models onnxruntime loads and runs on the test inputs.
Two worker processes by default, each model with a wall-clock limit. Writes
benchmarks/results/conformance.json (every model) and conformance.md (the tables).
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import json
import multiprocessing as mp
import re
import sys
import tarfile
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RTOL, ATOL = 1e-3, 1e-7
RTOL_BY_MODEL = {"light_densenet121": 2e-3}  # as onnx/backend/test/case/model/__init__.py declares
MODES = ("test", "random")


# ---------------------------------------------------------------- the cases


def node_cases(node_root: Path) -> list[dict]:
    return [{"suite": "node", "name": d.name, "model": str(d / "model.onnx"), "data": str(d / "test_data_set_0")}
            for d in sorted(node_root.iterdir()) if (d / "model.onnx").is_file() and (d / "test_data_set_0").is_dir()]


def wheel_cases() -> list[dict]:
    import onnx

    data = Path(onnx.__file__).parent / "backend" / "test" / "data"
    cases = []
    for suite in ("simple", "pytorch-converted", "pytorch-operator"):
        for d in sorted((data / suite).iterdir()):
            if (d / "model.onnx").is_file() and (d / "test_data_set_0").is_dir():
                cases.append({"suite": suite, "name": d.name, "model": str(d / "model.onnx"),
                              "data": str(d / "test_data_set_0")})
    for p in sorted((data / "light").glob("light_*.onnx")):
        expected = p.with_name(p.stem + "_output_0.pb")
        if expected.exists():
            cases.append({"suite": "light", "name": p.stem, "model": str(p), "data": None, "expected": str(expected)})
    return cases


def unpack_node_tests(tgz: Path, into: Path) -> Path:
    with tarfile.open(tgz) as tar:
        tar.extractall(into, filter="data")
    found = next(into.rglob("node"), None)
    if found is None:
        raise SystemExit(f"{tgz} holds no node/ folder")
    return found


# ---------------------------------------------------------------- one model (runs in a worker)


def light_inputs(model) -> dict:
    import numpy as np

    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def test_data(case: dict, model, work: Path) -> tuple[dict, dict, str]:
    """(inputs by name, expected outputs by name, the path fuser's --inputs gets)."""
    import numpy as np

    from fuser.validation.inputs import read_test_value

    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if case["data"] is None:  # light: inputs as onnx's runner makes them, one stored output
        feeds = light_inputs(model)
        npz = work / "inputs.npz"
        np.savez(npz, **feeds)
        _, value = read_test_value(case["expected"], model.graph.output[0].type)
        return feeds, {model.graph.output[0].name: value}, str(npz)
    data = Path(case["data"])
    feeds, expected = {}, {}
    for k, vi in enumerate(graph_inputs):
        f = data / f"input_{k}.pb"
        if f.exists():
            feeds[vi.name] = read_test_value(f, vi.type)[1]
    for k, vi in enumerate(model.graph.output):
        f = data / f"output_{k}.pb"
        if f.exists():
            expected[vi.name] = read_test_value(f, vi.type)[1]
    return feeds, expected, str(data)


def run_model(model, feeds: dict, engine: str) -> dict:
    """Outputs by name, on fuser's own engines (onnxruntime with its optimizations off, or onnx.reference)."""
    from fuser.validation.engines import open_session

    session = open_session(engine, model, None)
    try:
        return session.run(feeds)
    finally:
        session.close()


def close(actual, expected, rtol: float) -> bool:
    """onnx's backend test comparison (assert_allclose; NaN equal; sequences element by element)."""
    import numpy as np

    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(
            close(a, e, rtol) for a, e in zip(actual, expected))
    if expected is None or actual is None:
        return expected is None and actual is None
    e, a = np.asarray(expected), np.asarray(actual)
    if e.shape != a.shape:
        return False
    if e.dtype.kind in "OSU" or a.dtype.kind in "OSU":
        return bool(np.array_equal(e.astype(str), a.astype(str)))
    try:
        e64, a64 = e.astype(np.float64), a.astype(np.float64)
    except (TypeError, ValueError):
        return bool(np.array_equal(e, a))
    if e.dtype.kind in "biu":
        return bool(np.array_equal(e64, a64))
    return bool(np.allclose(a64, e64, rtol=rtol, atol=ATOL, equal_nan=True))


def outputs_close(actual: dict, expected: dict, rtol: float) -> bool:
    return all(name in actual and close(actual[name], value, rtol) for name, value in expected.items())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return next((line.strip()[:300] for line in text.splitlines() if line.strip()), type(exc).__name__)


def engine_of(model, feeds: dict) -> tuple[str | None, dict | None, str]:
    """The first engine that runs `model` on `feeds`: (engine, outputs, why the others could not)."""
    why = []
    for engine in ("onnxruntime", "reference"):
        try:
            return engine, run_model(model, feeds, engine), "; ".join(why)
        except Exception as exc:  # noqa: BLE001 - any failure means this engine cannot run it
            why.append(f"{engine}: {first_line(exc)}")
    return None, None, "; ".join(why)


def model_tags(model) -> list[str]:
    """What makes a model hard to validate: its opset and domains, its input and output kinds."""
    import numpy as np
    from onnx import TensorProto, helper

    tags = set()
    imports = {i.domain or "": i.version for i in model.opset_import}
    default = imports.get("", imports.get("ai.onnx"))
    if default is None:
        tags.add("no default-domain import")
    elif not 7 <= default <= 26:
        tags.add(f"opset {default}")
    tags |= {f"domain {d}" for d in imports if d not in ("", "ai.onnx")}
    inits = {t.name for t in model.graph.initializer}
    for where, values in (("input", [v for v in model.graph.input if v.name not in inits]),
                          ("output", model.graph.output)):
        for vi in values:
            kind = vi.type.WhichOneof("value")
            if kind != "tensor_type":
                tags.add(f"{where} {kind.replace('_type', '')}")
                continue
            tt = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            try:
                dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
                if dtype.kind in "VO":
                    tags.add(f"{where} {TensorProto.DataType.Name(tt.elem_type).lower()}")
            except Exception:  # noqa: BLE001
                tags.add(f"{where} type {tt.elem_type}")
            if where == "input" and tt.HasField("shape") and not dims:
                tags.add(f"input 0-d {'bool' if tt.elem_type == TensorProto.BOOL else 'tensor'}")
            if where == "input" and 0 in dims:
                tags.add("input with a declared 0 dim")
            if where == "input" and None in dims:
                tags.add("input with a dynamic dim")
    return sorted(tags)


def evaluate(case: dict, modes: tuple[str, ...]) -> dict:
    import onnx

    import fuser
    from fuser.errors import ModelError, UsageError
    from fuser.model_io import load_model
    from fuser.options import Options

    model = onnx.load(case["model"], load_external_data=False)
    opsets = {i.domain or "": i.version for i in model.opset_import}
    rec = {"suite": case["suite"], "name": case["name"], "opsets": opsets,
           "ops": sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                          for n in model.graph.node}), "tags": model_tags(model)}
    rtol = RTOL_BY_MODEL.get(case["name"], RTOL)
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        try:
            feeds, expected, inputs_path = test_data(case, model, Path(tmp))
        except Exception as exc:  # noqa: BLE001
            rec["error"] = f"cannot read the test data: {first_line(exc)}"
            return rec
        try:
            run_model(model, feeds, "onnxruntime")
            rec["onnxruntime_runs_original"] = True
        except Exception as exc:  # noqa: BLE001
            rec["onnxruntime_runs_original"] = False
            rec["onnxruntime_error"] = first_line(exc)
        try:
            load_model(case["model"])
        except ModelError as exc:
            rec["refused"] = str(exc)
            return rec
        for mode in modes:
            rec[mode] = optimize_once(case, model, feeds, expected, inputs_path if mode == "test" else None, rtol,
                                      fuser, Options, ModelError, UsageError)
    return rec


def optimize_once(case, model, feeds, expected, inputs_path, rtol, fuser, Options, ModelError, UsageError) -> dict:
    from fuser.report import to_json
    from fuser.validation.validate import unseeded_random_op

    start = time.perf_counter()
    out: dict = {}
    try:
        optimized, report = fuser.optimize(case["model"], Options(inputs_path=inputs_path))
    except UsageError as exc:
        return {"outcome": "usage-error", "error": str(exc)}
    except ModelError as exc:
        return {"outcome": "model-error", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - exit 3 in the CLI
        return {"outcome": "crash", "error": f"{type(exc).__name__}: {first_line(exc)}"}
    out["time_s"] = round(time.perf_counter() - start, 3)
    v = to_json(report.validation) or {}  # the section as the JSON report has it
    out.update(outcome="optimized", nodes=[len(model.graph.node), len(optimized.graph.node)],
               fusions=report.fusion_counts, validation=v.get("status"),
               engine=v.get("engine", "onnxruntime") if v.get("status") in ("passed", "rolled-back") else None,
               shapes=v.get("shapes"))
    if v.get("status") == "skipped":
        out["skip_reason"] = v.get("reason")
    if v.get("notes"):
        out["notes"] = v["notes"]
    if not expected:
        out["correct"] = "not checked: no expected outputs"
        return out
    random_op = unseeded_random_op(model)
    if random_op:
        out["correct"] = f"not checked: the model draws random numbers ({random_op} without a seed)"
        return out
    engine, actual, why = engine_of(optimized, feeds)
    if engine is None:
        out["correct"] = f"not checked: no engine runs the optimized model ({why})"
        return out
    if outputs_close(actual, expected, rtol):
        out["correct"] = "yes"
        return out
    try:
        original = run_model(model, feeds, engine)
    except Exception as exc:  # noqa: BLE001 - the optimized model runs where the original does not
        out["correct"] = f"WRONG: differs from the expected outputs; {engine} cannot run the original ({first_line(exc)})"
        return out
    if not outputs_close(original, expected, rtol) and outputs_close(actual, original, rtol):
        out["correct"] = f"backend differs: {engine} disagrees with the expected outputs on the original too"
    else:
        out["correct"] = f"WRONG: {engine} on fuser's output differs from the expected outputs"
    return out


# ---------------------------------------------------------------- workers with a per-model limit


def _worker(conn, modes):
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)  # the models that fail to run say so in the results, not on stderr
    while True:
        case = conn.recv()
        if case is None:
            return
        try:
            result = evaluate(case, modes)
        except BaseException as exc:  # noqa: BLE001 - report, keep the worker alive
            result = {"suite": case["suite"], "name": case["name"],
                      "error": f"benchmark failure: {type(exc).__name__}: {first_line(exc)}"}
        conn.send(result)


class Pool:
    """N worker processes, one model each at a time; a model past `timeout` s has its worker replaced."""

    def __init__(self, n: int, modes: tuple[str, ...], timeout: float):
        self.ctx = mp.get_context("spawn")
        self.modes, self.timeout = modes, timeout
        self.slots = [self._start() for _ in range(n)]

    def _start(self):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child, self.modes), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "case": None, "deadline": None}

    def run(self, cases: list[dict], on_result) -> None:
        todo = list(reversed(cases))
        while todo or any(s["case"] for s in self.slots):
            for s in self.slots:
                if s["case"] is None and todo:
                    s["case"] = todo.pop()
                    s["deadline"] = time.monotonic() + self.timeout
                    s["conn"].send(s["case"])
            busy = [s for s in self.slots if s["case"]]
            left = max(0.05, min(s["deadline"] for s in busy) - time.monotonic())
            ready = wait([s["conn"] for s in busy], timeout=left)
            for k, s in enumerate(self.slots):
                if s["case"] is None:
                    continue
                if s["conn"] in ready:
                    try:
                        on_result(s["conn"].recv())
                    except EOFError:  # the worker died (a crash inside a native library)
                        on_result({**_ident(s["case"]), "died": f"worker exit code {s['proc'].exitcode}"})
                        self.slots[k] = self._start()
                        continue
                    s["case"] = None
                elif time.monotonic() > s["deadline"]:
                    s["proc"].kill()
                    s["proc"].join()
                    on_result({**_ident(s["case"]), "timeout": self.timeout})
                    self.slots[k] = self._start()

    def close(self):
        for s in self.slots:
            try:
                s["conn"].send(None)
            except OSError:
                pass
            s["proc"].join(5)


def _ident(case):
    return {"suite": case["suite"], "name": case["name"]}


# ---------------------------------------------------------------- the tables


def reason_group(text: str) -> str:
    """A skip or error message without its names and numbers, so alike reasons group together."""
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\[[^\]]*\]", "[…]", text)
    text = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", text)
    text = re.sub(r" on inputs .*? \(", " on the inputs (", text)
    return text[:160]


GROUPS = {"node tests": lambda r: r["suite"] == "node", "onnx wheel": lambda r: r["suite"] != "node",
          "all": lambda r: True}


def mode_summary(records: list[dict], mode: str) -> dict:
    entries = [(r, r[mode]) for r in records if mode in r]
    optimized = [(r, e) for r, e in entries if e["outcome"] == "optimized"]
    validated = [(r, e) for r, e in optimized if e["validation"] in ("passed", "rolled-back")]
    skipped = [(r, e) for r, e in optimized if e["validation"] == "skipped"]

    def correct(prefix):
        return sorted(r["name"] for r, e in optimized if str(e.get("correct", "")).startswith(prefix))

    return {
        "models": len(records),
        "optimized": len(optimized),
        "validated": len(validated),
        "validated_pct": round(100 * len(validated) / len(optimized), 2) if optimized else None,
        "by_engine": dict(sorted(collections.Counter(e["engine"] for _, e in validated).items())),
        "rolled_back": sum(e["validation"] == "rolled-back" for _, e in validated),
        "skipped": len(skipped),
        "skip_reasons": dict(collections.Counter(reason_group(e.get("skip_reason") or "?")
                                                 for _, e in skipped).most_common()),
        "skipped_models": sorted(r["name"] for r, _ in skipped),
        "correct": sum(e.get("correct") == "yes" for _, e in optimized),
        "backend_differs": correct("backend differs"),
        "not_checked": correct("not checked"),
        "wrong": sorted(f"{r['name']}: {e['correct']}" for r, e in optimized
                        if str(e.get("correct", "")).startswith("WRONG")),
        "model_errors": sorted(f"{r['name']}: {e['error']}" for r, e in entries if e["outcome"] == "model-error"),
        "usage_errors": sorted(f"{r['name']}: {e['error']}" for r, e in entries if e["outcome"] == "usage-error"),
        "crashes": sorted(f"{r['name']}: {e['error']}" for r, e in entries if e["outcome"] == "crash")
        + sorted(f"{r['name']}: {r['died']}" for r in records if "died" in r),
        "timeouts": sorted(r["name"] for r in records if "timeout" in r),
    }


def summarize(records: list[dict], modes: tuple[str, ...]) -> dict:
    refused = [r for r in records if "refused" in r]
    return {"models": len(records),
            "onnxruntime_runs_original": sum(bool(r.get("onnxruntime_runs_original")) for r in records),
            "refused": sorted(f"{r['name']}: {r['refused']}" for r in refused),
            "refused_but_onnxruntime_runs": sorted(r["name"] for r in refused if r.get("onnxruntime_runs_original")),
            "benchmark_errors": sorted(f"{r['name']}: {r['error']}" for r in records if "error" in r),
            "modes": {mode: {group: mode_summary([r for r in records if keep(r)], mode)
                             for group, keep in GROUPS.items()} for mode in modes}}


def markdown(summary: dict, command: str, env: str) -> str:
    lines = ["# Conformance: the ONNX backend node tests and the onnx wheel's models", "",
             f"`{command}`", "",
             f"{summary['models']} models ({env}); onnxruntime runs {summary['onnxruntime_runs_original']} of them "
             f"on their test inputs. Refused by fuser: {len(summary['refused'])} "
             f"({len(summary['refused_but_onnxruntime_runs'])} of them run by onnxruntime).", "",
             "| inputs | models | optimized | validation ran | by engine | rolled back | skipped | correct | "
             "backend differs | wrong | crashes | model / usage errors | timeouts |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, groups in summary["modes"].items():
        for group, m in groups.items():
            engines = ", ".join(f"{k} {v}" for k, v in m["by_engine"].items()) or "–"
            lines.append(f"| {mode} | {group} ({m['models']}) | {m['optimized']} | {m['validated']} "
                         f"({m['validated_pct']}%) | {engines} | {m['rolled_back']} | {m['skipped']} | {m['correct']} | "
                         f"{len(m['backend_differs'])} | {len(m['wrong'])} | {len(m['crashes'])} | "
                         f"{len(m['model_errors'])} / {len(m['usage_errors'])} | {len(m['timeouts'])} |")
    for mode, groups in summary["modes"].items():
        m = groups["all"]
        lines += ["", f"## `{mode}` inputs: why validation was skipped ({m['skipped']})", ""]
        lines += [f"- {n} × {reason}" for reason, n in m["skip_reasons"].items()] or ["- never"]
        for key, title in (("wrong", "wrong results"), ("crashes", "crashes"), ("model_errors", "model errors"),
                           ("usage_errors", "usage errors"), ("backend_differs", "backend differs from expected"),
                           ("not_checked", "result not checked")):
            if m[key]:
                lines += ["", f"### `{mode}`: {title} ({len(m[key])})", ""] + [f"- {x}" for x in m[key][:60]]
    if summary["refused"]:
        lines += ["", "## refused", ""] + [f"- {x}" for x in summary["refused"][:60]]
    return "\n".join(lines) + "\n"


VENDOR_BUDGET = 4_500_000  # bytes: the vendored subset stays under ~5 MB
SUBSET_README = """# A subset of the ONNX backend node tests (tests/test_conformance.py)

{count} of the 1,802 models under `onnx/backend/test/data/node/` of the ONNX project (each a `model.onnx` and
`test_data_set_0/{{input,output}}_N.pb`), copied unchanged from the onnx source tree at commit 6be0677f
(onnx 1.23.0; `../shared/data/onnx-node-tests.tgz`), so a clone of fuser without that archive still tests
validation on them. {size_kib} KiB in all.

Licence: Apache License 2.0, Copyright (c) ONNX Project Contributors
(https://github.com/onnx/onnx/blob/main/LICENSE). The files are redistributed unmodified under that licence.

Chosen by `python benchmarks/conformance.py --vendor tests/data/onnx_node_subset` from the models on which fuser
validates with both the test's inputs and random ones and computes the expected outputs: the smallest model for
every op type present, for every kind of input, output, opset and domain that made validation hard (tags in
`subset.json`), and for every reason validation was skipped before issue 11 (`--baseline`). `subset.json` also
names {wheel} models the installed onnx wheel bundles (opset 6 among them), read from the wheel by the test.
"""


def baseline_class(reason: str) -> str:
    """A skip reason from before, as a class: the op that failed at run time, or the reason without names."""
    ran = re.search(r"running (\w+) node", reason)
    return f"skipped before: {ran.group(1)} failed on the inputs" if ran else "skipped before: " + reason_group(reason)[:90]


def cover(candidates: list[dict], features, want) -> dict[str, list[str]]:
    """Smallest-first greedy choice: for every feature, up to `want(feature)` candidates that have it."""
    chosen: dict[str, list[str]] = {}
    covered: collections.Counter = collections.Counter()
    for feature in sorted(set().union(*(features(r) for r in candidates))):
        for r in candidates:
            if covered[feature] >= want(feature):
                break
            if feature in features(r) and r["name"] not in chosen:
                chosen[r["name"]] = sorted(features(r))
                covered.update(features(r))
    return chosen


def vendor_subset(records: list[dict], node_root: Path, dest: Path, baseline: Path | None) -> None:
    """Copy a covering subset of the node tests to `dest` (see SUBSET_README) and write subset.json."""
    import shutil

    def good(r):
        return "refused" not in r and all(r.get(m, {}).get("correct") == "yes" and
                                          r[m].get("validation") in ("passed", "rolled-back") for m in MODES)

    sizes = {r["name"]: sum(p.stat().st_size for p in (node_root / r["name"]).rglob("*") if p.is_file())
             for r in records if r["suite"] == "node"}
    before = {}
    if baseline is not None:
        for r in json.loads(baseline.read_text())["models"]:
            reason = r.get("skip_reason") or r.get("random", {}).get("skip_reason")
            if reason:
                before[r["name"]] = baseline_class(reason)
            elif "refused" in r:
                before[r["name"]] = "refused before"

    def features(r):
        notes, engine = r["random"].get("notes", ()), r["random"]["engine"]
        return ({f"op {op}" for op in r["ops"]} | set(r["tags"]) | {f"validated with {engine}"}
                | {f"{t}, validated with {engine}" for t in r["tags"] if t.startswith(("opset", "no default"))}
                | ({before[r["name"]]} if r["name"] in before else set())
                | ({"dynamic dims guessed again"} if any("validation used" in n for n in notes) else set()))

    def want(feature):
        return 1 if feature.startswith("op ") else 3

    node = sorted((r for r in records if r["suite"] == "node" and good(r)), key=lambda r: (sizes[r["name"]], r["name"]))
    chosen = cover(node, features, want)
    total = 0
    for name in sorted(chosen, key=sizes.get):
        if total + sizes[name] > VENDOR_BUDGET:
            del chosen[name]
        else:
            total += sizes[name]
    wheel_records = [r for r in records if r["suite"] in ("pytorch-converted", "pytorch-operator", "simple") and good(r)]
    wheel = cover(sorted(wheel_records, key=lambda r: r["name"]), lambda r: features(r) - set(
        f for n in chosen for f in chosen[n] if f.startswith("op ")), want)
    suites = {r["name"]: r["suite"] for r in records}
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in chosen:
        shutil.copytree(node_root / name, dest / name)
    (dest / "subset.json").write_text(json.dumps(
        {"source": "onnx/backend/test/data/node @ onnx 6be0677f (1.23.0), Apache-2.0",
         "node": dict(sorted(chosen.items())), "wheel": {n: [suites[n], *wheel[n]] for n in sorted(wheel)}},
        indent=1) + "\n")
    (dest / "README.md").write_text(SUBSET_README.format(count=len(chosen), size_kib=total // 1024, wheel=len(wheel)))
    print(f"vendored {len(chosen)} node tests ({total / 1e6:.2f} MB) and named {len(wheel)} wheel models in {dest}",
          file=sys.stderr)


def compact(record: dict) -> dict:
    """What the JSON keeps of a model: "passed (engine)" per mode where all went well, details elsewhere."""
    out = {k: record[k] for k in ("suite", "name", "tags", "refused", "error", "died", "timeout") if record.get(k)}
    if record.get("onnxruntime_runs_original") is False:
        out["onnxruntime_runs_original"] = False
    for mode in MODES:
        if mode not in record:
            continue
        e = record[mode]
        retried = any("validation used" in n for n in e.get("notes", ()))
        if e["outcome"] == "optimized" and e.get("correct") == "yes" and e.get("engine") and not retried:
            out[mode] = f"{e['validation']} ({e['engine']})"
            continue
        out[mode] = {k: e[k] for k in ("outcome", "validation", "engine", "skip_reason", "error", "correct")
                     if e.get(k) is not None}
        if retried:
            out[mode]["shapes"] = e.get("shapes")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--node-tgz", type=Path, default=ROOT.parent / "shared" / "data" / "onnx-node-tests.tgz")
    ap.add_argument("--node-dir", type=Path, help="an unpacked copy (holding onnx/backend/test/data/node)")
    ap.add_argument("--no-wheel", action="store_true", help="leave out the onnx wheel's 149 models")
    ap.add_argument("--only", action="append", default=[], help="glob on the test name (repeatable)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per model (both modes)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where conformance.json/.md go")
    ap.add_argument("--vendor", type=Path, help="also copy a covering subset of the node tests here (for CI)")
    ap.add_argument("--baseline", type=Path, help="a conformance.json from before, whose skip reasons the subset covers")
    args = ap.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    with tempfile.TemporaryDirectory(prefix="onnx-node-") as tmp:
        if args.node_dir:
            node_root = next((p for p in [args.node_dir, *args.node_dir.rglob("node")] if p.name == "node"), None)
            if node_root is None:
                raise SystemExit(f"{args.node_dir} holds no node/ folder")
        else:
            if not args.node_tgz.exists():
                raise SystemExit(f"{args.node_tgz} not found: give --node-tgz or --node-dir")
            node_root = unpack_node_tests(args.node_tgz, Path(tmp))
        cases = node_cases(node_root) + ([] if args.no_wheel else wheel_cases())
        if args.only:
            cases = [c for c in cases if any(fnmatch.fnmatch(c["name"], g) for g in args.only)]
        records: list[dict] = []
        start = time.perf_counter()

        def on_result(rec):
            records.append(rec)
            if len(records) % 100 == 0 or len(records) == len(cases):
                print(f"  {len(records)}/{len(cases)} models, {time.perf_counter() - start:.0f} s", file=sys.stderr)

        pool = Pool(args.workers, modes, args.timeout)
        try:
            pool.run(cases, on_result)
        finally:
            pool.close()
        if args.vendor:
            vendor_subset(records, node_root, args.vendor, args.baseline)
    records.sort(key=lambda r: (r["suite"], r["name"]))
    import numpy
    import onnx
    import onnxruntime

    env = f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}, " \
          f"{args.workers} workers, {time.perf_counter() - start:.0f} s"
    summary = summarize(records, modes)
    command = "python benchmarks/conformance.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(summary, command, env)
    print(text)
    if not args.no_write:
        args.results.mkdir(parents=True, exist_ok=True)
        head = json.dumps({"command": command, "environment": env, "summary": summary}, indent=1)
        models = ",\n".join("  " + json.dumps(compact(r)) for r in records)  # one model a line
        (args.results / "conformance.json").write_text(f"{head[:-2]},\n \"models\": [\n{models}\n ]\n}}\n")
        (args.results / "conformance.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
