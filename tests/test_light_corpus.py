"""Regression corpus: onnx's bundled light models (real network structures, small constant weights),
optimized by fuser, must still compute their stored expected outputs; and what fuser does to each is
pinned in tests/golden/light_histograms.json so a change in what fires is seen in review.

Inputs are made exactly as onnx's backend test runner makes them for these models
(`onnx.backend.test.runner.Runner.generate_dummy_data(random=False)`): for each graph input that is not
an initializer, `arange(n).reshape(shape) / n` in float32, a missing dim taken as 1. Tolerances are the
ones onnx's own backend test declares for each model (`onnx.backend.test.case.model`): rtol 1e-3
(densenet121 2e-3), atol 1e-7.

onnxruntime on the *original* model is checked against the stored output first: where onnxruntime
itself disagrees with onnx's reference, fuser is judged against onnxruntime's result instead, and the
test says so, so a backend difference is never blamed on fuser.
"""

from __future__ import annotations

import difflib
import functools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from golden.regenerate import GOLDEN, LIGHT_DIR, light_models, optimize_light, summary

MODELS = light_models()
RTOL = {"light_densenet121": 2e-3}  # as onnx/backend/test/case/model/__init__.py declares
ATOL = 1e-7
REGENERATE = "run `python tests/golden/regenerate.py` if the change is intended, and review the diff"


@functools.lru_cache(maxsize=None)
def optimized(name: str):
    return optimize_light(name)


def stored_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, "light models take float inputs"
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # or onnxruntime fuses for us
    so.log_severity_level = 3  # the light models carry unused initializers; onnxruntime warns about them
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_the_corpus_is_there():
    assert len(MODELS) >= 9, f"expected onnx's 9 light models in {LIGHT_DIR}, found {MODELS}"


@pytest.mark.parametrize("name", MODELS)
def test_optimized_light_model_computes_the_stored_output(name):
    original = onnx.load(LIGHT_DIR / f"{name}.onnx")
    expected = [numpy_helper.to_array(onnx.load_tensor(LIGHT_DIR / f"{name}_output_{k}.pb"))
                for k in range(len(original.graph.output))]
    feeds = stored_inputs(original)
    rtol = RTOL.get(name, 1e-3)

    model, report = optimized(name)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == [o.name for o in original.graph.output]

    baseline = run(original, feeds)
    reference, against = expected, "the stored expected output"
    if not all(np.allclose(b, e, rtol=rtol, atol=ATOL) for b, e in zip(baseline, expected, strict=True)):
        # onnxruntime and onnx's reference disagree on the original model: judge fuser against onnxruntime
        reference, against = baseline, "onnxruntime's result on the original model (it differs from the stored one)"
    actual = run(model, feeds)
    for k, (a, e) in enumerate(zip(actual, reference, strict=True)):
        assert a.shape == e.shape, f"{name} output {k}: shape {a.shape}, expected {e.shape}"
        err = float(np.abs(a.astype(np.float64) - e).max())
        assert np.allclose(a, e, rtol=rtol, atol=ATOL), (
            f"{name} output {k} differs from {against} by up to {err:.3g} after fuser "
            f"(fusions: {report.fusion_counts})")


# ----------------------------------------------------------------------------------- golden
def _golden() -> dict:
    assert GOLDEN.exists(), f"{GOLDEN} is missing: {REGENERATE}"
    return json.loads(GOLDEN.read_text())


def _diff(name: str, old: dict, new: dict) -> str:
    lines = [f"{name}: what fuser makes of it changed"]
    if old.get("opset") != new["opset"]:
        lines.append(f"  opset {old.get('opset')} -> {new['opset']}")
    for key, label in (("ops", "op"), ("fusions", "fusions")):
        a, b = old.get(key, {}), new[key]
        for k in sorted(a.keys() | b.keys()):
            if a.get(k, 0) != b.get(k, 0):
                note = " (new)" if k not in a else " (gone)" if k not in b else ""
                lines.append(f"  {label} {k}: {a.get(k, 0)} -> {b.get(k, 0)}{note}")
    text = difflib.unified_diff(json.dumps(old, indent=1).splitlines(), json.dumps(new, indent=1).splitlines(),
                                "golden", "now", lineterm="", n=1)
    return "\n".join(lines + ["", *text, "", REGENERATE])


def test_golden_lists_every_bundled_model():
    golden = _golden()["models"]
    missing, stale = sorted(set(MODELS) - set(golden)), sorted(set(golden) - set(MODELS))
    assert not missing and not stale, (f"light models without a golden entry: {missing}; golden entries for "
                                       f"models onnx no longer ships: {stale}. {REGENERATE}")


@pytest.mark.parametrize("name", MODELS)
def test_op_histogram_matches_golden(name):
    golden = _golden()["models"]
    if name not in golden:
        pytest.fail(f"{name} has no golden entry: {REGENERATE}")
    now = summary(*optimized(name))
    assert now == golden[name], _diff(name, golden[name], now)
