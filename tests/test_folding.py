"""Constant folding within a budget, and folding of the static parts of shape chains with dynamic dims."""

from __future__ import annotations

import numpy as np
import pytest
from builders import const, make_model, ops, run
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import fuser
from fuser.errors import UsageError
from fuser.graph import Graph
from fuser.model_io import from_proto
from fuser.passes import ConstantFolding, DeadCodeElimination, ShapeFolding
from fuser.passes import constant_folding as cf
from fuser.facts import _merge


def i64(name, value):
    return const(name, value, np.int64)


def initializers(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def assert_same(model, optimized, feeds_list, rtol=0.0):
    """Identical outputs (or within `rtol` where onnxruntime picks another kernel for a constant weight)."""
    for feeds in feeds_list:
        for expected, actual in zip(run(model, feeds), run(optimized, feeds)):
            assert expected.shape == actual.shape
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)


def feeds_at(shapes, name="x", seed=0):
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(s).astype(np.float32)} for s in shapes]


# --------------------------------------------------------------- constants
def test_constant_subgraph_folds_and_keeps_its_name():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
             const("half", 0.5, np.float64),
             helper.make_node("Cast", ["half"], ["half32"], to=TP.FLOAT),
             helper.make_node("Mul", ["wt", "half32"], ["w_scaled"]),
             helper.make_node("MatMul", ["x", "w_scaled"], ["y"])]
    model = make_model(nodes, [("x", TP.FLOAT, ["N", 3])], [("y", TP.FLOAT, ["N", 2])], [("w", w)])
    optimized, report = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["MatMul"]
    assert optimized.graph.node[0].input[1] == "w_scaled"  # the folded value keeps its name
    np.testing.assert_array_equal(initializers(optimized)["w_scaled"], w.T * 0.5)
    assert "w" not in initializers(optimized)  # the unfolded weight is gone
    folding = report.sections["folding"]
    assert folding.folded == 3 and folding.skipped == []
    assert folding.bytes_added == -8  # 24 bytes of w_scaled replace the 24 of w and the 8 of a double 0.5
    assert_same(model, optimized, feeds_at([(1, 3), (4, 3)]), rtol=1e-6)  # MatMul prepacks a constant B


def test_large_constant_of_shape_stays_an_op_and_is_reported():
    nodes = [i64("shape", [1024, 1024]),
             helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=numpy_helper.from_array(np.array([1.5], np.float32))),
             helper.make_node("Add", ["x", "big"], ["y"])]
    model = make_model(nodes, [("x", TP.FLOAT, ["N", 1024, 1024])], [("y", TP.FLOAT, ["N", 1024, 1024])])
    optimized, report = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["Constant", "ConstantOfShape", "Add"]
    [skipped] = report.sections["folding"].skipped
    assert skipped.op == "ConstantOfShape"
    assert "(4194304 bytes) exceeds the fold budget of 1048576 bytes" in skipped.reason
    assert report.sections["folding"].bytes_added == 0
    # asked for: a bigger budget folds it
    folded, report = fuser.optimize(model, validate=False, fold_budget_bytes=8 << 20)
    # net: 4 MiB added, the 16-byte shape constant freed
    assert ops(folded) == ["Add"] and report.sections["folding"].bytes_added == (4 << 20) - 16


def test_large_expand_stays_but_its_small_inputs_fold():
    nodes = [i64("rows", [512]), i64("cols", [1024]),
             helper.make_node("Concat", ["rows", "cols"], ["shape"], axis=0),  # foldable: 16 bytes
             const("row", np.ones(1024), np.float32),
             helper.make_node("Expand", ["row", "shape"], ["big"]),  # 2 MiB: over the budget
             helper.make_node("Add", ["x", "big"], ["y"])]
    model = make_model(nodes, [("x", TP.FLOAT, [512, 1024])], [("y", TP.FLOAT, [512, 1024])])
    optimized, report = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["Constant", "Expand", "Add"]
    assert initializers(optimized)["shape"].tolist() == [512, 1024]
    assert [s.op for s in report.sections["folding"].skipped] == ["Expand"]
    assert_same(model, optimized, feeds_at([(512, 1024)]))


def test_unevaluable_node_is_skipped_and_reported_never_fatal(monkeypatch):
    real_ort, real_ref = cf.run_ort, cf.run_reference

    def refuse_neg(engine):
        def run_(model, outputs):
            if any(n.op_type == "Neg" for n in model.graph.node):
                raise RuntimeError("NOT_IMPLEMENTED: Neg")
            return engine(model, outputs)
        run_.__doc__ = engine.__doc__
        return run_

    monkeypatch.setattr(cf, "run_ort", refuse_neg(real_ort))
    monkeypatch.setattr(cf, "run_reference", refuse_neg(real_ref))
    nodes = [const("a", [1.0, 2.0]), helper.make_node("Neg", ["a"], ["na"]),
             helper.make_node("Exp", ["na"], ["ena"]),  # depends on the failed node: not folded either
             const("b", [3.0, 4.0]), helper.make_node("Sqrt", ["b"], ["sb"]),  # independent: folded
             helper.make_node("Add", ["x", "ena"], ["t"]), helper.make_node("Add", ["t", "sb"], ["y"])]
    model = make_model(nodes, [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2])])
    optimized, report = fuser.optimize(model, validate=False)
    assert "Neg" in ops(optimized) and "Exp" in ops(optimized) and "Sqrt" not in ops(optimized)
    [skipped] = report.sections["folding"].skipped
    assert skipped.op == "Neg"
    assert "cannot be evaluated" in skipped.reason and "NOT_IMPLEMENTED" in skipped.reason
    assert_same(model, optimized, [{"x": np.array([1.0, -1.0], np.float32)}])


def test_random_ops_and_graph_outputs_are_not_folded():
    nodes = [helper.make_node("RandomUniformLike", ["c"], ["r"], seed=1.0),
             helper.make_node("Add", ["x", "r"], ["y"]),
             helper.make_node("Neg", ["c"], ["c_out"])]  # a graph output computed from a constant
    model = make_model(nodes, [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2]), ("c_out", TP.FLOAT, [2])],
                       [("c", np.ones(2, np.float32))])
    optimized, _ = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["RandomUniformLike", "Add", "Neg"]


def test_dequantize_linear_of_a_constant_weight_stays():
    """Explicit quantization (Q/DQ) must reach TensorRT: DequantizeLinear(int8 W) is not folded to float W."""
    w = np.arange(-4, 4, dtype=np.int8).reshape(2, 4)
    nodes = [helper.make_node("DequantizeLinear", ["w", "scale", "zp"], ["w_f"]),
             helper.make_node("MatMul", ["x", "w_f"], ["y"])]
    model = make_model(nodes, [("x", TP.FLOAT, ["N", 2])], [("y", TP.FLOAT, ["N", 4])],
                       [("w", w), ("scale", np.float32(0.5)), ("zp", np.int8(0))])
    optimized, _ = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["DequantizeLinear", "MatMul"]


def test_folding_is_one_sweep_over_a_long_chain():
    nodes, prev = [], "c"
    for k in range(300):
        nodes.append(helper.make_node("Neg", [prev], [f"n{k}"]))
        prev = f"n{k}"
    nodes.append(helper.make_node("Add", ["x", prev], ["y"]))
    model = make_model(nodes, [("x", TP.FLOAT, [2])], [("y", TP.FLOAT, [2])], [("c", np.ones(2, np.float32))])
    optimized, report = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["Add"]
    assert report.passes["constant-folding"].modified == 1


# ------------------------------------------------------------ shape chains
def spatial_flatten_model(opset=13):
    """x.flatten(2) as `Reshape(x, [size(0), size(1), size(2) * size(3)])` with dynamic batch only."""
    nodes = [helper.make_node("Shape", ["x"], ["s"])]
    for k in range(4):
        nodes += [i64(f"i{k}", k), helper.make_node("Gather", ["s", f"i{k}"], [f"d{k}"], axis=0)]
    nodes += [helper.make_node("Mul", ["d2", "d3"], ["hw"]), i64("axes", [0])]
    for src in ("d0", "d1", "hw"):
        nodes.append(helper.make_node("Unsqueeze", [src, "axes"], [f"u_{src}"]))
    nodes += [helper.make_node("Concat", ["u_d0", "u_d1", "u_hw"], ["target"], axis=0),
              helper.make_node("Reshape", ["x", "target"], ["y"])]
    return make_model(nodes, [("x", TP.FLOAT, ["batch", 3, 8, 8])], [("y", TP.FLOAT, ["batch", 3, 64])],
                      opset=opset)


def test_static_dims_fold_with_a_dynamic_batch():
    model = spatial_flatten_model()
    optimized, report = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["Reshape"]
    assert initializers(optimized)[optimized.graph.node[0].input[1]].tolist() == [0, 3, 64]
    assert report.sections["folding"].not_folded == []
    assert_same(model, optimized, feeds_at([(1, 3, 8, 8), (2, 3, 8, 8), (5, 3, 8, 8)]))


def dynamic_hw_model():
    """Channels are static, H/W are not: `x.new_zeros(x.size(1))` beside `interpolate(size=(2h, 2w))`."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), i64("i1", [1]), i64("start", [2]), i64("end", [4]),
             helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),
             helper.make_node("ConstantOfShape", ["c"], ["zeros"],
                              value=numpy_helper.from_array(np.array([0.25], np.float32))),
             helper.make_node("Slice", ["s", "start", "end"], ["hw"]),
             i64("two", [2]), helper.make_node("Mul", ["hw", "two"], ["hw2"]),
             helper.make_node("Slice", ["s", "i0", "start"], ["nc"]), i64("i0", [0]),
             helper.make_node("Concat", ["nc", "hw2"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["up"], mode="nearest"),
             i64("ax", [0, 2, 3]),
             helper.make_node("ReduceMean", ["up"], ["m"], axes=[0, 2, 3], keepdims=0),
             helper.make_node("Add", ["m", "zeros"], ["y"])]
    # Slice reads i0 before it is defined above: put the Constant first
    nodes.insert(0, nodes.pop(next(k for k, n in enumerate(nodes) if n.output[0] == "i0")))
    return make_model(nodes, [("x", TP.FLOAT, ["N", 3, "H", "W"])], [("y", TP.FLOAT, [3])], opset=13)


def test_dynamic_height_width_keep_their_chain_and_say_why():
    model = dynamic_hw_model()
    optimized, report = fuser.optimize(model, validate=False)
    # Gather(Shape(x), 1) = 3 is static: ConstantOfShape([3]) of 12 bytes folds away
    assert "ConstantOfShape" not in ops(optimized) and "Gather" not in ops(optimized)
    assert ops(optimized).count("Shape") == 1 and "Resize" in ops(optimized)
    [entry] = report.sections["folding"].not_folded
    assert entry.reason == "Shape of 'x' depends on dynamic dims 'H', 'N', 'W'"
    assert_same(model, optimized, feeds_at([(1, 3, 4, 5), (2, 3, 8, 8), (1, 3, 1, 13)]))


def test_shape_start_end_attributes_opset_15():
    nodes = [helper.make_node("Shape", ["x"], ["c"], start=1, end=2),
             helper.make_node("ConstantOfShape", ["c"], ["zeros"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("Shape", ["x"], ["tail"], start=-2),  # H, W: dynamic
             helper.make_node("Cast", ["tail"], ["tail_f"], to=TP.FLOAT),
             helper.make_node("Concat", ["zeros", "tail_f"], ["y"], axis=0)]
    model = make_model(nodes, [("x", TP.FLOAT, ["N", 3, "H", "W"])], [("y", TP.FLOAT, [None])], opset=15)
    optimized, report = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["Shape", "Cast", "Concat"]
    assert report.sections["folding"].not_folded[0].reason == "Shape of 'x' depends on dynamic dims 'H', 'W'"
    assert_same(model, optimized, feeds_at([(1, 3, 4, 5), (2, 3, 6, 1), (4, 3, 2, 2)]))


def test_input_shape_pins_make_every_chain_static():
    model = dynamic_hw_model()
    optimized, report = fuser.optimize(model, validate=False, input_shapes={"x": (1, 3, 16, 16)})
    dims = [d.dim_value for d in optimized.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 16, 16]
    assert "Shape" not in ops(optimized) and report.sections["folding"].not_folded == []
    assert report.sections["folding"].pinned_dims == {"N": 1, "H": 16, "W": 16}
    assert_same(model, optimized, feeds_at([(1, 3, 16, 16)]))


def test_keep_dynamic_ignores_pins_for_the_graph():
    model = dynamic_hw_model()
    optimized, report = fuser.optimize(model, validate=False, input_shapes={"x": (1, 3, 16, 16)},
                                       keep_dynamic=True)
    assert [d.dim_param for d in optimized.graph.input[0].type.tensor_type.shape.dim] == ["N", "", "H", "W"]
    assert "Shape" in ops(optimized)
    assert any("--keep-dynamic" in n for n in report.notes)


@pytest.mark.parametrize("pins, message", [
    ({"nope": (1, 3, 4, 4)}, "'nope' is not a graph input"),
    ({"x": (1, 3, 4)}, "has rank 4"),
    ({"x": (1, 4, 8, 8)}, "dim 1 of input 'x' is 3, not 4"),
])
def test_bad_pins_are_usage_errors(pins, message):
    with pytest.raises(UsageError, match=message):
        fuser.optimize(dynamic_hw_model(), validate=False, input_shapes=pins)


def test_shape_folding_only_trusts_inference_not_stale_value_info():
    """An exporter's value_info claiming a static batch (the traced one) must not make a dim constant."""
    nodes = [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Shape", ["t"], ["s"]), i64("i0", [0]),
             helper.make_node("Gather", ["s", "i0"], ["b"], axis=0), i64("rest", [-1]),
             helper.make_node("Concat", ["b", "rest"], ["target"], axis=0),
             helper.make_node("Reshape", ["t", "target"], ["y"])]
    model = make_model(nodes, [("x", TP.FLOAT, ["batch", 3, 8, 8])], [("y", TP.FLOAT, ["batch", 192])])
    model.graph.value_info.append(helper.make_tensor_value_info("t", TP.FLOAT, [1, 3, 8, 8]))
    optimized, _ = fuser.optimize(model, validate=False, passes=[ShapeFolding(), ConstantFolding()])
    assert "Shape" in ops(optimized)  # not folded to [1, -1]


def test_symbolic_engine_fills_dims_onnx_leaves_unknown():
    assert _merge(["unk__0", 3, None], ["N*2", 3, 7]) == ["N*2", 3, 7]
    assert _merge(["batch", 3], [5, 3]) == ["batch", 3]  # a declared name is never replaced by a guess
    assert _merge([4, None], [5, 6]) == [4, 6]  # onnx's ints win


def test_folding_passes_alone_on_a_graph():
    """The passes run outside the default pipeline too; without the placeholder rewrite batch stays dynamic."""
    model = spatial_flatten_model()
    optimized, report = fuser.optimize(model, validate=False,
                                       passes=[ShapeFolding(), ConstantFolding(), DeadCodeElimination()])
    assert [op for op in ops(optimized) if op != "Constant"] == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    assert report.sections["folding"].not_folded[0].reason == "Shape of 'x' depends on dynamic dim 'batch'"
    assert Graph(from_proto(optimized)).facts.shape("y") == ["batch", 3, 64]
    assert_same(model, optimized, feeds_at([(1, 3, 8, 8), (3, 3, 8, 8)]))
