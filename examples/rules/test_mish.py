"""The tests of the example rule mish.py, as docs/writing-rules.md writes them: one per spelling it must fuse,
one per near miss it must refuse, and the numerics checked with onnxruntime's own optimizer off.

Run with `python -m pytest examples/rules/test_mish.py` (fuser's suite runs it too). Only public API: a rule's
tests need nothing from fuser's test folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import fuser

RULE_FILE = Path(__file__).with_name("mish.py")


def model(nodes, opset=13, extra_outputs=()) -> onnx.ModelProto:
    """x: float32 [2, 8] -> y, with a constant `one` (1.0) for the spellings that need it."""
    graph = helper.make_graph(
        nodes, "mish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 8]) for name in ("y", *extra_outputs)],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def softplus(x="x"):
    return [helper.make_node("Softplus", [x], ["sp"])]


def log_one_plus_exp(x="x"):  # softplus spelled out, with the 1 on the left: Add commutes
    return [helper.make_node("Exp", [x], ["e"]), helper.make_node("Add", ["one", "e"], ["e1"]),
            helper.make_node("Log", ["e1"], ["sp"])]


def tanh_times(x="x", tanh_first=False):
    mul = ["t", x] if tanh_first else [x, "t"]
    return [helper.make_node("Tanh", ["sp"], ["t"]), helper.make_node("Mul", mul, ["y"])]


def run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime with its graph optimizations OFF: otherwise it fuses by itself and the test proves nothing."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("nodes", [
    softplus() + tanh_times(),                     # PyTorch nn.Mish below opset 18
    softplus() + tanh_times(tanh_first=True),      # tanh(softplus(x)) * x
    log_one_plus_exp() + tanh_times(),             # tf2onnx, Darknet converters
])
@pytest.mark.parametrize("opset", [13, 18])
def test_every_spelling_fuses_and_computes_the_same(nodes, opset):
    original = model(nodes, opset)
    optimized, report = fuser.optimize(original, rules_from=[RULE_FILE])
    assert [n.op_type for n in optimized.graph.node] == ["Mish"]
    assert report.fusion_counts == {"mish": 1} and optimized.opset_import[0].version == 18
    onnx.checker.check_model(optimized, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32) * 4
    np.testing.assert_allclose(run(optimized, x), run(original, x), rtol=1e-5, atol=1e-5)


def near_misses(m, **options) -> list[str]:
    optimized, report = fuser.optimize(m, rules_from=[RULE_FILE], **options)
    assert "Mish" not in [n.op_type for n in optimized.graph.node]
    return [miss.reason for miss in report.near_misses if miss.rule == "mish"]


def test_a_softplus_also_used_elsewhere_is_kept():
    m = model(softplus() + tanh_times() + [helper.make_node("Identity", ["sp"], ["sp_out"])],
              extra_outputs=["sp_out"])
    assert near_misses(m) == ["value 'sp' (from 'Softplus') is also used outside the match by 'Identity'"]


def test_the_gate_of_another_tensor_is_not_mish():
    m = model([helper.make_node("Neg", ["x"], ["z"])] + softplus("z") + tanh_times("x"))  # x * tanh(softplus(-x))
    assert near_misses(m) == []  # no match at all: x must be the same tensor in both places


def test_without_an_upgrade_the_opset_gate_says_why():
    assert near_misses(model(softplus() + tanh_times()), allow_upgrade=False) == [
        "emits Mish, which needs opset 18; the model has opset 13 and upgrades are disabled "
        "(--no-upgrade / allow_upgrade=False)"]
