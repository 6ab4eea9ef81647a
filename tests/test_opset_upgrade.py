"""Opset upgrades: in place where every node keeps its meaning, through onnx.version_converter otherwise."""

import numpy as np
from onnx import TensorProto as T, helper

from builders import const, make_model, ops, optimize_and_compare

F, H = T.FLOAT, T.FLOAT16


def layernorm_nodes(x, out):
    return [helper.make_node("ReduceMean", [x], ["mean"], axes=[-1]), helper.make_node("Sub", [x, "mean"], ["d"]),
            const("two", 2.0), helper.make_node("Pow", ["d", "two"], ["sq"]),
            helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]), const("eps", 1e-5),
            helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["std"]),
            helper.make_node("Div", ["d", "std"], [out])]


def test_attribute_operands_move_to_inputs_in_place():
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]), helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
             *layernorm_nodes("s", "y")]
    model = make_model(nodes, [("x", F, [3, 8])], [("y", F, [3, 8])], opset=12)
    optimized, report = optimize_and_compare(model)
    assert optimized.opset_import[0].version == 17 and "LayerNormalization" in ops(optimized)
    assert any("every node kept its meaning" in n for n in report.notes)


def test_softmax_over_the_last_axis_stays_one_softmax():
    """Before opset 13 Softmax flattened at `axis`; over the last axis that is the same op, so no Flatten."""
    shape = helper.make_node("Constant", [], ["target"], value=helper.make_tensor("t", T.INT64, [3], [2, 4, 8]))
    nodes = [shape, helper.make_node("Reshape", ["x", "target"], ["r"]),
             helper.make_node("Softmax", ["r"], ["p"], axis=2), *layernorm_nodes("p", "y")]
    model = make_model(nodes, [("x", F, [8, 8])], [("y", F, [2, 4, 8])], opset=12)
    optimized, report = optimize_and_compare(model)
    assert "Flatten" not in ops(optimized) and ops(optimized).count("Softmax") == 1
    assert "LayerNormalization" in ops(optimized)


def test_softmax_over_an_inner_axis_goes_through_the_converter():
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=1), *layernorm_nodes("p", "y")]
    model = make_model(nodes, [("x", F, [2, 4, 8])], [("y", F, [2, 4, 8])], opset=12)
    optimized, report = optimize_and_compare(model)
    assert "LayerNormalization" in ops(optimized)
    assert any("version_converter" in n for n in report.notes)


def test_clip_bounds_become_inputs_of_the_data_type():
    nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a"], ["c"], min=0.0, max=6.0),
             helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    model = make_model(nodes, [("x", H, [2, 8])], [("y", H, [2, 8])],
                       [("three", np.array(3.0, np.float16)), ("six", np.array(6.0, np.float16))], opset=10)
    optimized, report = optimize_and_compare(model)
    assert ops(optimized) == ["HardSwish"] and optimized.opset_import[0].version >= 14


def test_onnxruntime_target_keeps_the_opset_unless_asked():
    nodes = layernorm_nodes("x", "y")
    model = make_model(nodes, [("x", F, [3, 8])], [("y", F, [3, 8])], opset=12)
    kept, report = optimize_and_compare(model, target="onnxruntime")
    assert kept.opset_import[0].version == 12 and "LayerNormalization" not in ops(kept)
    assert any("--target-opset 17" in m.reason for m in report.near_misses)
    raised, _ = optimize_and_compare(model, target="onnxruntime", target_opset=17)
    assert "LayerNormalization" in ops(raised)
