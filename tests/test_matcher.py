"""One small test per matcher feature: commutation, alternatives, constants, opset forms, safety, dtypes."""

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto as T, helper, numpy_helper

import fuser
from fuser.graph import Graph
from fuser.matcher import Match, const_equals, match_value
from fuser.model_io import from_proto
from fuser.pattern import Const, Var, op
from fuser.rule import Rule, RuleFailed

from builders import const, make_model, ops, optimize_and_compare

F, H = T.FLOAT, T.FLOAT16
x = Var("x")


def graph_of(model):
    return Graph(from_proto(model))


def first_match(model, pattern, value):
    g = graph_of(model)
    nid = g.producer(value)[0]
    return next(match_value(pattern, value, Match(g, nid)), None)


def add_model(a, b, opset=13):
    return make_model([const("three", 3.0), helper.make_node("Add", [a, b], ["y"])],
                      [("x", F, [2])], [("y", F, [2])], opset=opset)


@pytest.mark.parametrize("a,b", [("x", "three"), ("three", "x")])
def test_commutative_operands_match_in_either_order(a, b):
    m = first_match(add_model(a, b), op.Add(x, 3.0), "y")
    assert m is not None and m["x"] == "x"


def test_non_commutative_op_is_not_swapped():
    model = make_model([const("three", 3.0), helper.make_node("Sub", ["three", "x"], ["y"])],
                       [("x", F, [2])], [("y", F, [2])])
    assert first_match(model, op.Sub(x, 3.0), "y") is None


def test_commutation_can_be_turned_off():
    assert first_match(add_model("three", "x"), op.Add(x, 3.0, _commute=False), "y") is None


def square_model(spelling):
    nodes = [const("two", 2.0)]
    nodes.append(helper.make_node("Pow", ["x", "two"], ["y"]) if spelling == "pow"
                 else helper.make_node("Mul", ["x", "x"], ["y"]))
    return make_model(nodes, [("x", F, [2])], [("y", F, [2])])


@pytest.mark.parametrize("spelling", ["pow", "mul"])
def test_alternatives_inside_one_pattern(spelling):
    square = op.Pow(x, 2.0) | op.Mul(x, x)
    m = first_match(square_model(spelling), square, "y")
    assert m is not None and m["x"] == "x"


def test_same_variable_must_bind_same_value():
    model = make_model([helper.make_node("Mul", ["x", "z"], ["y"])],
                       [("x", F, [2]), ("z", F, [2])], [("y", F, [2])])
    assert first_match(model, op.Mul(x, x), "y") is None


@pytest.mark.parametrize("value,dtype,expected,ok", [
    (6, np.int64, 6.0, True), (6.0, np.float32, 6, True), (0.16666667, np.float32, 1 / 6, True),
    (1 / 6, np.float16, 1 / 6, True), ([6.0], np.float32, 6.0, True), ([[6.0]], np.float16, 6.0, True),
    (0.17, np.float32, 1 / 6, False), (5.999, np.float32, 6.0, False), ([6.0, 6.0], np.float32, 6.0, False),
    (7, np.int32, 6.0, False), (0, np.int64, 1 / 6, False), (True, np.bool_, 1.0, False),
])
def test_constants_match_by_value_at_their_dtype_precision(value, dtype, expected, ok):
    assert const_equals(np.asarray(value, dtype=dtype), expected) is ok


FLOAT_DTYPES = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16]


def ulp_neighbours(value: np.ndarray) -> list[np.ndarray]:
    """The next representable values below and above a one-element float array, in its own dtype."""
    bits = np.dtype(f"u{value.dtype.itemsize}")
    raw = int(value.reshape(-1).view(bits)[0])
    if raw == 0:  # +0: the smallest subnormals of either sign
        sign = 1 << (8 * value.dtype.itemsize - 1)
        return [np.array([v], bits).view(value.dtype) for v in (1, sign | 1)]
    return [np.array([raw - 1], bits).view(value.dtype), np.array([raw + 1], bits).view(value.dtype)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("expected", [0.0, 0.5, 1.0, 2.0, 3.0, 6.0])
def test_a_value_the_dtype_holds_must_be_exact(expected, dtype):
    """6 in fp16 is 6: 6.0234375 (6 fp16 ulps off, 0.4%) once became HardSwish's divisor."""
    exact = np.asarray(expected, dtype=dtype)
    assert float(exact) == expected and const_equals(exact, expected)
    for off in ulp_neighbours(exact):
        assert not const_equals(off, expected), (np.dtype(dtype).name, float(off[0]))


INEXACT = [1 / 6, 1 / np.sqrt(2), 0.044715, float(np.sqrt(2 / np.pi))]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("expected", INEXACT, ids=lambda v: f"{v:.6g}")
def test_a_value_the_dtype_cannot_hold_matches_only_its_roundings(expected, dtype):
    """Round-to-nearest in the dtype, or (below fp32) through fp32 first as converters do; nothing wider."""
    nearest = exact_rounding(expected, dtype)
    accepted = {float(nearest[0])}
    if np.dtype(dtype).itemsize < 4:
        accepted.add(float(exact_rounding(float(np.float32(expected)), dtype)[0]))
    for value in accepted:
        assert const_equals(np.asarray(value, dtype=dtype), expected)
    for value in [nearest] + [np.asarray(v, dtype=dtype) for v in accepted]:
        for off in ulp_neighbours(np.asarray(value, dtype=dtype)):
            if float(off[0]) not in accepted:
                assert not const_equals(off, expected), (np.dtype(dtype).name, float(off[0]))


def exact_rounding(value: float, dtype) -> np.ndarray:
    """Round-to-nearest-even of `value` in `dtype`, decided with exact fractions (not the library's cast,
    which for bfloat16 goes through float32)."""
    start = np.asarray(value, dtype=dtype).reshape(1)
    candidates = [start, *ulp_neighbours(start)]
    best = min(candidates, key=lambda c: (abs(Fraction(float(c[0])) - Fraction(value)),
                                          int(c.view(f"u{c.dtype.itemsize}")[0]) & 1))
    return best


@pytest.mark.parametrize("source", ["constant-node", "initializer"])
def test_constants_from_constant_nodes_and_initializers(source):
    if source == "constant-node":
        model = add_model("x", "three")
    else:
        model = make_model([helper.make_node("Add", ["x", "three"], ["y"])], [("x", F, [2])], [("y", F, [2])],
                           initializers=[("three", np.array([3.0], np.float32))])
    assert first_match(model, op.Add(x, 3.0), "y") is not None
    assert first_match(model, op.Add(x, 2.0), "y") is None


def test_named_constant_binds_any_value():
    m = first_match(add_model("x", "three"), op.Add(x, Const(name="c")), "y")
    assert float(m.const("c")) == 3.0


def test_overridable_initializer_is_not_a_constant():
    graph = helper.make_graph([helper.make_node("Add", ["x", "three"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", F, [2]), helper.make_tensor_value_info("three", F, [])],
                              [helper.make_tensor_value_info("y", F, [2])],
                              [numpy_helper.from_array(np.array(3.0, np.float32), "three")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    assert first_match(model, op.Add(x, 3.0), "y") is None


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_axes_as_attribute_and_as_input(opset):
    if opset < 18:
        nodes = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1])]
        inits = []
    else:
        nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"])]
        inits = [("axes", np.array([-1], np.int64))]
    model = make_model(nodes, [("x", F, [2, 3])], [("y", F, [2, 1])], inits, opset=opset)
    m = first_match(model, op.ReduceMean(x, Const(name="axes"), keepdims=1), "y")
    assert m is not None and m.const("axes").tolist() == [-1]


@pytest.mark.parametrize("opset", [7, 11])
def test_clip_bounds_as_attributes_and_as_inputs(opset):
    if opset < 11:
        nodes = [helper.make_node("Clip", ["x"], ["y"], min=0.0, max=6.0)]
    else:
        nodes = [const("lo", 0.0), const("hi", 6.0), helper.make_node("Clip", ["x", "lo", "hi"], ["y"])]
    model = make_model(nodes, [("x", F, [2])], [("y", F, [2])], opset=opset)
    assert first_match(model, op.Clip(x, 0.0, 6.0), "y") is not None
    assert first_match(model, op.Clip(x, 0.0, 5.0), "y") is None


def test_attribute_constraint_uses_schema_default():
    model = make_model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1])],
                       [("x", F, [2, 3])], [("y", F, [2, 1])])
    assert first_match(model, op.ReduceMean(x, Const(name="a"), keepdims=1), "y") is not None
    assert first_match(model, op.ReduceMean(x, Const(name="a"), keepdims=0), "y") is None


def test_output_slot_is_part_of_the_pattern():
    model = make_model([helper.make_node("Split", ["x"], ["a", "b"], axis=0),
                        helper.make_node("Relu", ["b"], ["y"])],
                       [("x", F, [4])], [("y", F, [2])], opset=13)
    assert first_match(model, op.Relu(op.Split(x, _out=1)), "y") is not None
    assert first_match(model, op.Relu(op.Split(x, _out=0)), "y") is None


def test_fp16_graph_matches_the_same_pattern():
    nodes = [const("three", 3.0, np.float16), const("zero", 0.0, np.float16), const("six", 6.0, np.float16),
             helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
             helper.make_node("Div", ["c", "six"], ["y"])]
    model = make_model(nodes, [("x", H, [2, 4])], [("y", H, [2, 4])])
    optimized, report = optimize_and_compare(model)
    assert ops(optimized) == ["HardSigmoid"]


# ---- the engine around the matcher: safety, opsets, indexing

def hsigmoid_nodes(out="y"):
    return [const("three", 3.0), const("zero", 0.0), const("six", 6.0),
            helper.make_node("Add", ["x", "three"], ["a"], name="add"),
            helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
            helper.make_node("Div", ["c", "six"], [out], name="div")]


def test_value_used_outside_the_match_blocks_the_rewrite_with_a_reason():
    nodes = hsigmoid_nodes() + [helper.make_node("Relu", ["c"], ["z"], name="other")]
    model = make_model(nodes, [("x", F, [2])], [("y", F, [2]), ("z", F, [2])])
    optimized, report = optimize_and_compare(model)
    assert "HardSigmoid" not in ops(optimized)
    reasons = [m.reason for m in report.near_misses if m.rule == "hardsigmoid"]
    assert reasons and "used outside the match by 'other'" in reasons[0]


def test_interior_graph_output_blocks_the_rewrite():
    model = make_model(hsigmoid_nodes(), [("x", F, [2])], [("y", F, [2]), ("c", F, [2])])
    optimized, report = optimize_and_compare(model)
    assert "HardSigmoid" not in ops(optimized)
    assert any("graph output" in m.reason for m in report.near_misses)


def test_root_graph_output_keeps_its_name():
    model = make_model(hsigmoid_nodes(), [("x", F, [2])], [("y", F, [2])])
    optimized, _ = optimize_and_compare(model)
    assert [o.name for o in optimized.graph.output] == ["y"]
    assert optimized.graph.node[-1].output[0] == "y"


def test_opset_gate_without_upgrade_records_why():
    nodes = [const("three", 3.0), const("zero", 0.0), const("six", 6.0),
             helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
             helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    model = make_model(nodes, [("x", F, [2])], [("y", F, [2])], opset=13)
    optimized, report = optimize_and_compare(model, allow_upgrade=False)
    assert "HardSwish" not in ops(optimized) and optimized.opset_import[0].version == 13
    assert any(m.rule == "hardswish" and "upgrades are disabled" in m.reason for m in report.near_misses)
    upgraded, report = optimize_and_compare(model)
    assert ops(upgraded) == ["HardSwish"] and upgraded.opset_import[0].version >= 14


def test_target_opset_ceiling_blocks_the_upgrade():
    nodes = [const("three", 3.0), const("zero", 0.0), const("six", 6.0),
             helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
             helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    model = make_model(nodes, [("x", F, [2])], [("y", F, [2])], opset=13)
    optimized, report = optimize_and_compare(model, target_opset=13)
    assert "HardSwish" not in ops(optimized)
    assert any("--target-opset 14" in m.reason for m in report.near_misses)


def test_candidates_come_from_the_root_op_index():
    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"]) for i in range(50)]
    nodes += hsigmoid_nodes()
    nodes[50 + 3].input[0] = "v50"
    model = make_model(nodes, [("v0", F, [2])], [("y", F, [2])])
    _, report = fuser.optimize(model)
    # one Div: the only candidate root of the hsigmoid rule; 50 Relus are never visited
    assert report.rules["hardsigmoid"].attempts == 1 and report.rules["hardsigmoid"].hits == 1


def test_non_standard_domain_is_refused_for_tensorrt():
    rule = Rule(name="to-contrib", family="test", pattern=op.Relu(x), emits="com.microsoft.Gelu",
                rewrite=lambda m, b, _: b.op("Gelu", m["x"], domain="com.microsoft"))
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [2])], [("y", F, [2])])
    from fuser.passes import FusionPass
    optimized, report = fuser.optimize(model, passes=[FusionPass([rule])], target="tensorrt")
    assert ops(optimized) == ["Relu"]
    assert "non-standard op" in report.near_misses[0].reason


def test_a_check_hands_its_analysis_to_the_rewrite_and_refuses_with_a_refusal():
    """check(m) runs once per match: what it returns reaches rewrite(m, b, analysis); a Refusal is a near
    miss with its reason; a bare string (the old spelling of a refusal) is a bug in the rule, never a fusion."""
    from fuser.passes import FusionPass
    from fuser.rule import Refusal

    seen = []

    def check(m):
        seen.append(m["x"])
        return Refusal("x is the graph input") if m["x"] == "x" else {"negate": m["x"]}

    rule = Rule(name="relu-to-neg", family="test", pattern=op.Relu(x), emits="Neg", check=check,
                rewrite=lambda m, b, found: b.op("Neg", found["negate"]))
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Abs", ["r"], ["a"]),
                        helper.make_node("Relu", ["a"], ["y"])], [("x", F, [2])], [("y", F, [2])])
    optimized, report = fuser.optimize(model, passes=[FusionPass([rule])], validate=False)
    assert ops(optimized) == ["Relu", "Abs", "Neg"] and seen.count("a") == 1
    assert [m.reason for m in report.near_misses] == ["x is the graph input"]
    legacy = Rule(name="legacy", family="test", pattern=op.Relu(x), emits="Neg", check=lambda m: "a reason",
                  rewrite=lambda m, b, _: b.op("Neg", m["x"]))
    with pytest.raises(RuleFailed, match="Refusal"):
        fuser.optimize(model, passes=[FusionPass([legacy])], validate=False)
