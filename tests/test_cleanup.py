"""Clean-up passes: CSE, no-op elimination, duplicate initializers — each with the near misses that must stay."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import const, make_model, ops, optimize_and_compare, run
from click.testing import CliRunner
from onnx import TensorProto as TP
from onnx import helper

import fuser
from fuser.cli import main
from fuser.cli.options import parse_bytes
from fuser.errors import UsageError
from fuser.options import Options
from fuser.assembly import default_passes
from fuser.passes import (CommonSubexpressionElimination, DeadCodeElimination, FusionPass, InitializerDedup,
                          NoOpElimination)

CLEANUP = [CommonSubexpressionElimination(), NoOpElimination(), InitializerDedup(), DeadCodeElimination()]


def clean(model, passes=CLEANUP):
    optimized, report = optimize_and_compare(model, passes=passes, validate=False)
    return optimized, report


def unary(x_shape, nodes, inits=(), out_shape=None, dtype=TP.FLOAT, opset=13, outputs=None):
    return make_model(nodes, [("x", dtype, x_shape)], outputs or [("y", dtype, out_shape or x_shape)], inits,
                      opset=opset)


# --------------------------------------------------------------------- CSE
def test_cse_merges_duplicate_chains_in_one_sweep():
    nodes = []
    for k in (1, 2):  # the exporter writes Shape -> Gather -> Unsqueeze once per use
        nodes += [helper.make_node("Shape", ["x"], [f"s{k}"]),
                  helper.make_node("Gather", [f"s{k}", "i0"], [f"d{k}"], axis=0),
                  helper.make_node("Unsqueeze", [f"d{k}", "axes"], [f"u{k}"])]
    nodes += [helper.make_node("Concat", ["u1", "u2"], ["shape"], axis=0),
              helper.make_node("Expand", ["x", "shape"], ["e"]),
              helper.make_node("Add", ["e", "x"], ["a1"]), helper.make_node("Add", ["x", "e"], ["a2"]),  # commuted
              helper.make_node("Mul", ["a1", "a2"], ["y"])]
    model = make_model(nodes, [("x", TP.FLOAT, ["N", 1])], [("y", TP.FLOAT, ["N", "N"])],
                       [("i0", np.array(0)), ("axes", np.array([0]))])
    optimized, report = clean(model, [CommonSubexpressionElimination(), DeadCodeElimination()])
    assert ops(optimized) == ["Shape", "Gather", "Unsqueeze", "Concat", "Expand", "Add", "Mul"]
    assert report.passes["cse"].modified == 1 and report.sections["cleanup"].cse_merged == 4


def test_cse_keeps_random_ops_and_different_attributes_apart():
    nodes = [helper.make_node("RandomUniformLike", ["x"], ["r1"], seed=3.0),
             helper.make_node("RandomUniformLike", ["x"], ["r2"], seed=3.0),
             helper.make_node("Softmax", ["x"], ["s1"], axis=0), helper.make_node("Softmax", ["x"], ["s2"], axis=1),
             helper.make_node("Sub", ["x", "s1"], ["d1"]),
             helper.make_node("Sub", ["s1", "x"], ["d2"]),  # Sub is not commutative
             helper.make_node("Sum", ["r1", "r2", "s2", "d1", "d2"], ["y"])]
    model = unary([2, 2], nodes)
    optimized, _ = fuser.optimize(model, passes=CLEANUP, validate=False)
    assert ops(optimized) == ops(model)


def test_cse_duplicate_graph_outputs_keep_their_names():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["x"], ["b"])]
    model = unary([2], nodes, outputs=[("a", TP.FLOAT, [2]), ("b", TP.FLOAT, [2])])
    optimized, _ = clean(model)
    assert [o.name for o in optimized.graph.output] == ["a", "b"]


def test_cse_merges_identical_constants():
    nodes = [const("c1", [1.0, 2.0]), const("c2", [1.0, 2.0]), const("c3", [1.0, 2.5]),
             helper.make_node("Add", ["x", "c1"], ["a"]), helper.make_node("Add", ["x", "c2"], ["b"]),
             helper.make_node("Add", ["x", "c3"], ["c"]),
             helper.make_node("Sum", ["a", "b", "c"], ["y"])]
    optimized, _ = clean(unary([2], nodes))
    assert ops(optimized) == ["Constant", "Constant", "Add", "Add", "Sum"]


# ------------------------------------------------------------------ no-ops
def test_identity_dropout_cast_chain_is_removed():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Identity", ["r"], ["i"]),
             helper.make_node("Dropout", ["i"], ["d"]),
             helper.make_node("Cast", ["d"], ["c"], to=TP.FLOAT),
             helper.make_node("Exp", ["c"], ["y"])]
    optimized, report = clean(unary(["N", 4], nodes))
    assert ops(optimized) == ["Relu", "Exp"]
    assert report.sections["cleanup"].noop_removed == {"Identity": 1, "Dropout": 1, "Cast": 1}


def test_identity_feeding_a_graph_output_keeps_the_output_name():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"]),
             helper.make_node("Neg", ["r"], ["z"])]
    model = unary([3], nodes, outputs=[("y", TP.FLOAT, [3]), ("z", TP.FLOAT, [3])])
    optimized, _ = clean(model)
    assert ops(optimized) == ["Relu", "Neg"]
    assert [o.name for o in optimized.graph.output] == ["y", "z"]
    assert optimized.graph.node[0].output[0] == "y" and optimized.graph.node[1].input[0] == "y"


def test_identity_between_graph_input_and_output_stays():
    model = unary([3], [helper.make_node("Identity", ["x"], ["y"])])
    optimized, _ = clean(model)
    assert ops(optimized) == ["Identity"]


def test_dropout_near_misses():
    nodes = [helper.make_node("Dropout", ["x", "ratio", "train"], ["y", "mask"])]
    inits = [("ratio", np.array(0.5, np.float32)), ("train", np.array(True))]
    model = unary([4], nodes, inits, outputs=[("y", TP.FLOAT, [4]), ("mask", TP.BOOL, [4])])
    optimized, _ = fuser.optimize(model, passes=CLEANUP, validate=False)
    assert ops(optimized) == ["Dropout"]  # training mode and a used mask


@pytest.mark.parametrize("op, c, x_shape, removed", [
    ("Mul", 1.0, ["N", 3], True),                      # scalar 1
    ("Mul", np.ones((1, 3)), ["N", 3], True),          # broadcasts within x
    ("Add", np.zeros(3), [2, 3], True),
    ("Sub", np.zeros((1, 1)), [2, 3], True),
    ("Div", np.ones(3), ["N", 3], True),
    ("Mul", np.ones((2, 3)), [3], False),              # near miss: x * ones(2, 3) is [2, 3], not [3]
    ("Mul", np.ones((2, 3)), ["N", 3], False),         # near miss: N may be 1
    ("Add", np.zeros((1, 1, 3)), ["N", 3], False),     # near miss: adds a dim
    ("Mul", np.full(3, 1.0001), [2, 3], False),        # near miss: not 1
    ("Add", np.array([0.0, 1.0, 0.0]), [2, 3], False),
])
def test_neutral_arithmetic(op, c, x_shape, removed):
    c = np.asarray(c, np.float32)
    out_shape = list(np.broadcast_shapes(tuple(2 if isinstance(d, str) else d for d in x_shape), c.shape))
    nodes = [helper.make_node(op, ["x", "c"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    model = unary(x_shape, nodes, [("c", c)], out_shape=[None] * len(out_shape))
    optimized, _ = clean(model)
    assert (op not in ops(optimized)) == removed


def test_neutral_constant_on_the_left_and_sub_from_zero():
    nodes = [helper.make_node("Mul", ["one", "x"], ["a"]),    # 1 * x -> x
             helper.make_node("Sub", ["zero", "a"], ["y"])]   # 0 - x is -x: stays
    optimized, _ = clean(unary([3], nodes, [("one", np.float32(1.0)), ("zero", np.float32(0.0))]))
    assert ops(optimized) == ["Sub"]


def test_integer_add_zero_is_removed():
    nodes = [helper.make_node("Add", ["x", "z"], ["t"]), helper.make_node("Neg", ["t"], ["y"])]
    model = make_model(nodes, [("x", TP.INT64, [4])], [("y", TP.INT64, [4])], [("z", np.array(0, np.int64))])
    optimized, _ = fuser.optimize(model, passes=CLEANUP, validate=False)
    assert ops(optimized) == ["Neg"]
    x = np.arange(4, dtype=np.int64)
    np.testing.assert_array_equal(run(optimized, {"x": x})[0], run(model, {"x": x})[0])


def test_cast_to_another_type_stays():
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TP.FLOAT16), helper.make_node("Cast", ["h"], ["y"], to=TP.FLOAT)]
    optimized, _ = clean(unary([3], nodes))
    assert ops(optimized) == ["Cast", "Cast"]  # fp32 -> fp16 -> fp32 rounds: not a no-op


@pytest.mark.parametrize("target, x_shape, removed", [
    ([0, 3, 4], ["N", 3, 4], True),
    ([0, 0, -1], ["N", "S", 4], True),
    ([2, 3, 4], [2, 3, 4], True),
    ([-1, 4], ["N", 4], True),
    ([0, 4, 3], ["N", 3, 4], False),       # near miss: a real reshape
    ([2, -1], ["N", 4], False),            # near miss: N is not known to be 2
])
def test_reshape_to_the_same_shape(target, x_shape, removed):
    nodes = [helper.make_node("Reshape", ["x", "t"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    model = unary(x_shape, nodes, [("t", np.array(target, np.int64))], out_shape=[None] * len(target))
    optimized, _ = fuser.optimize(model, passes=CLEANUP, validate=False)
    assert ("Reshape" not in ops(optimized)) == removed


def test_transpose_expand_tile_pad_concat_identities():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1]),
             helper.make_node("Expand", ["t", "one_three"], ["e"]),
             helper.make_node("Tile", ["e", "ones"], ["ti"]),
             helper.make_node("Pad", ["ti", "zeros"], ["p"]),
             helper.make_node("Concat", ["p"], ["c"], axis=0),
             helper.make_node("Transpose", ["c"], ["y"], perm=[1, 0])]  # a real transpose: stays
    inits = [("one_three", np.array([1, 3])), ("ones", np.array([1, 1])), ("zeros", np.zeros(4, np.int64))]
    optimized, report = clean(unary(["N", 3], nodes, inits, out_shape=[3, "N"]))
    assert ops(optimized) == ["Transpose"]
    assert sum(report.sections["cleanup"].noop_removed.values()) == 5


def test_expand_that_broadcasts_stays():
    nodes = [helper.make_node("Expand", ["x", "shape"], ["e"]), helper.make_node("Relu", ["e"], ["y"])]
    optimized, _ = clean(unary(["N", 1], nodes, [("shape", np.array([1, 3]))], out_shape=["N", 3]))
    assert "Expand" in ops(optimized)


def test_noop_elimination_runs_after_fusion():
    """Removing x * 1 first would hide patterns (a LayerNorm's gamma = 1) from the fusion rules."""
    names = [p.name for p in default_passes(Options())]
    assert names[0] == "fusion" and names.index("noop") > names.index("fusion")
    assert names[-1] == "dead-code"
    assert isinstance(default_passes(Options())[0], FusionPass)


# --------------------------------------------------- duplicate initializers
def test_duplicate_initializers_merge_by_content():
    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
             helper.make_node("MatMul", ["x", "w3"], ["c"]),  # same bytes, other shape: stays
             helper.make_node("MatMul", ["x", "w4"], ["d"]),  # other values: stays
             helper.make_node("Sum", ["a", "b", "c", "d"], ["y"])]
    inits = [("w1", w), ("w2", w.copy()), ("w3", w.reshape(1, 4, 4)), ("w4", w + 1)]
    model = unary(["N", 4], nodes, inits, out_shape=[1, "N", 4])
    optimized, report = clean(model, [InitializerDedup(), DeadCodeElimination()])
    assert sorted(t.name for t in optimized.graph.initializer) == ["w1", "w3", "w4"]
    assert report.sections["cleanup"].initializers_merged == 1
    assert report.sections["cleanup"].initializer_bytes_saved == 64


def test_duplicate_initializer_near_misses():
    """Same values with another dtype or shape stay; an initializer that is also a graph input is never merged."""
    nodes = [helper.make_node("Add", ["x", "a"], ["t1"]), helper.make_node("Add", ["t1", "b"], ["t2"]),
             helper.make_node("Add", ["t2", "c"], ["t3"]),
             helper.make_node("Cast", ["d"], ["d32"], to=TP.FLOAT), helper.make_node("Add", ["t3", "d32"], ["y"])]
    inits = [("a", np.ones(2, np.float32)), ("b", np.ones(2, np.float32)), ("c", np.ones((1, 2), np.float32)),
             ("d", np.ones(2, np.float64))]
    model = unary([2, 2], nodes, inits)
    model.graph.input.append(helper.make_tensor_value_info("b", TP.FLOAT, [2]))  # overridable by the caller
    optimized, _ = fuser.optimize(model, passes=[InitializerDedup(), DeadCodeElimination()], validate=False)
    assert sorted(t.name for t in optimized.graph.initializer) == ["a", "b", "c", "d"]


# ---------------------------------------------------------------------- CLI
def test_parse_bytes():
    assert parse_bytes("1048576") == 1 << 20
    assert parse_bytes("4MiB") == 4 << 20 and parse_bytes("512k") == 512 << 10 and parse_bytes("1GB") == 10**9
    with pytest.raises(UsageError):
        parse_bytes("lots")


def test_cli_shape_flags(tmp_path):
    import onnx

    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Cast", ["s"], ["y"], to=TP.FLOAT)]
    model = make_model(nodes, [("x", TP.FLOAT, ["N", 3])], [("y", TP.FLOAT, [2])])
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    runner = CliRunner()
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = runner.invoke(main, ["optimize", str(src), "-o", str(out), "--input-shape", "x:5x3",
                                  "--fold-budget", "2MiB", "--no-validate", "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["options"]["fold_budget_bytes"] == 2 << 20 and data["options"]["input_shapes"] == {"x": [5, 3]}
    assert data["folding"]["pinned_dims"] == {"N": 5}
    # Shape -> [5, 3]; the Cast producing a graph output is not folded (outputs stay computed)
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Cast"]
    result = runner.invoke(main, ["optimize", str(src), "-o", str(out), "--input-shape", "x:5x3", "--keep-dynamic",
                                  "--no-validate"])
    assert result.exit_code == 0, result.output
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Shape", "Cast"]
    result = runner.invoke(main, ["optimize", str(src), "-o", str(out), "--fold-budget", "much"])
    assert result.exit_code == 2 and "bad size" in result.output
