"""Conv + per-channel Mul/Div/Add/Sub by a constant: folds, and the shapes and orders that must not fold."""

import numpy as np
import pytest
from onnx import TensorProto as T, helper

import fuser
from builders import assert_trt_builds, const, make_model, ops, optimize_and_compare

F, H = T.FLOAT, T.FLOAT16
NP = {F: np.float32, H: np.float16}
C = 6  # output channels


def conv_model(tail, consts, *, op_type="Conv", spatial=(5, 5), cin=4, cout=C, group=1, bias=True, elem=F,
               opset=13, constant_nodes=False, extra_nodes=(), extra_outputs=(), extra_inputs=(), y_shape=None,
               seed=0):
    """x -> Conv|ConvTranspose(W, b?) -> `tail` -> y.

    `tail`: [(op, inputs)] where "$" is the previous value; `consts`: {name: array} for the tail's constants
    (initializers, or Constant nodes with `constant_nodes`).
    """
    rng = np.random.default_rng(seed)
    dtype = NP[elem]
    k = (3,) * len(spatial)
    if op_type == "Conv":
        w_shape, attrs, out_spatial = (cout, cin // group) + k, {"pads": [1] * (2 * len(spatial))}, spatial
    else:
        w_shape, attrs = (cin, cout // group) + k, {"strides": [2] * len(spatial)}
        out_spatial = tuple(2 * (s - 1) + 3 for s in spatial)
    inits = [("W", (rng.standard_normal(w_shape) * 0.3).astype(dtype))]
    conv_inputs = ["x", "W"]
    if bias:
        inits.append(("B", rng.standard_normal(cout).astype(dtype)))
        conv_inputs.append("B")
    nodes = []
    for name, value in consts.items():
        if constant_nodes:
            nodes.append(const(name, value, dtype))
        else:
            inits.append((name, np.asarray(value, dtype=dtype)))
    nodes.append(helper.make_node(op_type, conv_inputs, ["c"], name="conv", group=group, **attrs))
    prev = "c"
    for i, (op_type_, inputs) in enumerate(tail):
        out = "y" if i == len(tail) - 1 else f"t{i}"
        nodes.append(helper.make_node(op_type_, [prev if v == "$" else v for v in inputs], [out], name=f"ew{i}"))
        prev = out
    nodes += list(extra_nodes)
    return make_model(nodes, [("x", elem, ["N", cin, *spatial]), *extra_inputs],
                      [("y", elem, y_shape or ["N", cout, *out_spatial]), *extra_outputs], inits, opset=opset)


def channel_values(shape, seed=1, low=0.5, high=2.0):
    """Per-channel values with random signs, away from 0 (so a wrong fold or a lost sign shows)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


def near_misses(report):
    return [m.reason for m in report.near_misses if m.rule == "conv-elementwise"]


# ----------------------------------------------------------------------------------------- folds
@pytest.mark.parametrize("shape", [[1, C, 1, 1], [C, 1, 1], [], [1], [1, 1, 1, 1]],
                         ids=["1C11", "C11", "scalar", "one", "1111"])
@pytest.mark.parametrize("op_type", ["Mul", "Div", "Add", "Sub"])
def test_conv_op_const_folds(op_type, shape):
    model = conv_model([(op_type, ["$", "k"])], {"k": channel_values(shape)})
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Conv"]
    assert [f.rule for f in report.fusions] == ["conv-elementwise"]
    assert out.graph.node[0].output[0] == "y"


@pytest.mark.parametrize("op_type", ["Mul", "Add"])
def test_const_on_the_left_folds(op_type):
    """Mul and Add commute: c * conv and c + conv fold too."""
    model = conv_model([(op_type, ["k", "$"])], {"k": channel_values([1, C, 1, 1])})
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv"]


def test_const_minus_conv_folds_with_negated_weights():
    """Sub(c, conv) = -conv + c: the weights are negated, the bias becomes c - b."""
    model = conv_model([("Sub", ["k", "$"])], {"k": channel_values([C, 1, 1])})
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv"]


@pytest.mark.parametrize("op_type", ["Mul", "Div", "Add", "Sub"])
def test_conv_without_bias_gets_one(op_type):
    model = conv_model([(op_type, ["$", "k"])], {"k": channel_values([1, C, 1, 1])}, bias=False)
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv"] and len(out.graph.node[0].input) == 3


def test_frozen_batchnorm_detr_mul_add():
    """DETR-family backbones: Conv -> Mul([1,C,1,1]) -> Add([1,C,1,1]) -> Relu; Mul and Add both fold."""
    model = conv_model([("Mul", ["$", "scale"]), ("Add", ["$", "shift"]), ("Relu", ["$"])],
                       {"scale": channel_values([1, C, 1, 1], 1), "shift": channel_values([1, C, 1, 1], 2)},
                       bias=False)
    out, report = optimize_and_compare(model, target="tensorrt")
    assert ops(out) == ["Conv", "Relu"]
    assert len(report.fusions) == 2
    assert {i.name for i in out.graph.initializer} == set(out.graph.node[0].input[1:])


def test_chain_of_four_folds_to_fixed_point():
    model = conv_model([("Sub", ["$", "a"]), ("Div", ["$", "b"]), ("Mul", ["c2", "$"]), ("Add", ["$", "d"])],
                       {n: channel_values([C, 1, 1], s) for s, n in enumerate(["a", "b", "c2", "d"])})
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Conv"]
    assert len(report.fusions) == 4


def test_constant_nodes():
    model = conv_model([("Mul", ["$", "scale"]), ("Add", ["$", "shift"])],
                       {"scale": channel_values([1, C, 1, 1], 1), "shift": 0.5}, constant_nodes=True)
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv"]


def test_fp16():
    model = conv_model([("Mul", ["$", "scale"]), ("Add", ["$", "shift"])],
                       {"scale": channel_values([1, C, 1, 1], 1), "shift": channel_values([1, C, 1, 1], 2)},
                       elem=H)
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv"]
    assert all(i.data_type == H for i in out.graph.initializer)


@pytest.mark.parametrize("group,cin", [(2, 4), (6, 6)], ids=["group2", "depthwise"])
def test_grouped_conv(group, cin):
    model = conv_model([("Mul", ["$", "k"]), ("Sub", ["k2", "$"])],
                       {"k": channel_values([C, 1, 1], 1), "k2": channel_values([C, 1, 1], 2)},
                       group=group, cin=cin)
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv"]


@pytest.mark.parametrize("spatial,shape", [((9,), [1, C, 1]), ((9,), [C, 1]), ((3, 4, 5), [1, C, 1, 1, 1]),
                                           ((3, 4, 5), [C, 1, 1, 1])], ids=["1d", "1d-C1", "3d", "3d-C111"])
def test_1d_and_3d_convs(spatial, shape):
    model = conv_model([("Mul", ["$", "k"]), ("Add", ["$", "k2"])],
                       {"k": channel_values(shape, 1), "k2": channel_values(shape, 2)}, spatial=spatial)
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Conv"] and len(report.fusions) == 2


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose(group):
    model = conv_model([("Div", ["$", "k"]), ("Sub", ["$", "k2"])],
                       {"k": channel_values([1, C, 1, 1], 1), "k2": channel_values([1, C, 1, 1], 2)},
                       op_type="ConvTranspose", group=group)
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["ConvTranspose"]


def test_shared_weight_is_not_modified():
    model = conv_model([("Mul", ["$", "k"])], {"k": channel_values([C, 1, 1])},
                       extra_nodes=[helper.make_node("Conv", ["x", "W", "B"], ["y2"], pads=[1, 1, 1, 1])],
                       extra_outputs=[("y2", F, ["N", C, 5, 5])])
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv", "Conv"]
    assert {"W", "B"} <= {i.name for i in out.graph.initializer}


# ------------------------------------------------------------------------------- must not fire
@pytest.mark.parametrize("shape", [[1, 1, 5, C], [1, 1, 1, C], [C], [1, C, 5, C], [2, 1, 1, 1], [1, 1, C, 1, 1]],
                         ids=["11HW", "111W", "C-rank1-is-W", "CHW", "batch", "rank5"])
@pytest.mark.parametrize("op_type", ["Mul", "Add"])
def test_non_channel_constant_is_a_near_miss(op_type, shape):
    """Constants that broadcast over spatial or batch dims, or that would raise the output's rank.

    The conv output is [2, C, 5, C], so a rank-1 [C] constant is valid ONNX but runs along the last
    (spatial) axis, not the channels."""
    y_shape = [2, C, 5, C] if len(shape) < 5 else [1, 2, C, 5, C]
    model = conv_model([(op_type, ["$", "k"])], {"k": channel_values(shape)}, spatial=(5, C), y_shape=y_shape)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # a static batch: [2,1,1,1] is valid
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Conv", op_type]
    assert any("broadcast" in r for r in near_misses(report))


def test_const_over_conv_does_not_fold():
    """Div(c, conv) is c / conv, not an affine map of the conv."""
    model = conv_model([("Div", ["k", "$"])], {"k": channel_values([1, C, 1, 1])})
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Conv", "Div"]
    assert not report.fusions


def test_non_constant_operand_does_not_fold():
    """Mul(conv, y) with a runtime tensor (an SE gate): no fusion, and no near-miss noise."""
    model = conv_model([("Mul", ["$", "g"])], {}, extra_inputs=[("g", F, ["N", C, 1, 1])])
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Conv", "Mul"]
    assert not report.fusions and not near_misses(report)


def test_division_by_zero_is_a_near_miss():
    k = channel_values([1, C, 1, 1])
    k[0, 2] = 0.0
    model = conv_model([("Div", ["$", "k"])], {"k": k})
    out, report = fuser.optimize(model)
    assert ops(out) == ["Conv", "Div"]
    assert any("zeros" in r for r in near_misses(report))


def test_conv_output_used_elsewhere_is_a_near_miss():
    model = conv_model([("Mul", ["$", "k"])], {"k": channel_values([1, C, 1, 1])},
                       extra_nodes=[helper.make_node("Relu", ["c"], ["r"])], extra_outputs=[("r", F, ["N", C, 5, 5])])
    out, report = optimize_and_compare(model)
    assert sorted(ops(out)) == ["Conv", "Mul", "Relu"]
    assert any("also used outside the match" in r for r in near_misses(report))


def test_non_constant_weight_is_a_near_miss():
    model = conv_model([("Mul", ["$", "k"])], {"k": channel_values([1, C, 1, 1])})
    model.graph.input.append(helper.make_tensor_value_info("W", F, [C, 4, 3, 3]))
    out, report = fuser.optimize(model)
    assert ops(out) == ["Conv", "Mul"]
    assert any("weight 'W' is not a constant" in r for r in near_misses(report))


def test_mul_on_non_conv_does_not_fire():
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "k"], ["y"])],
                       [("x", F, [1, C, 4, 4])], [("y", F, [1, C, 4, 4])],
                       [("k", channel_values([1, C, 1, 1]).astype(np.float32))])
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Relu", "Mul"] and not report.fusions


# ------------------------------------------------------------------------ next to other rules
def test_hard_sigmoid_after_conv_is_not_claimed():
    """Conv -> Add(3) -> Clip(0, 6) -> Div(6) is a HardSigmoid of the conv, not a bias of +3 with a Clip/Div
    left over: the activation rules run before this one (a general rule must not claim part of a larger
    pattern)."""
    model = conv_model([("Add", ["$", "three"]), ("Clip", ["$", "zero", "six"]), ("Div", ["$", "six"])],
                       {"three": 3.0, "zero": 0.0, "six": 6.0})
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Conv", "HardSigmoid"]
    assert not near_misses(report)


def test_hard_swish_after_conv_leaves_no_near_miss():
    model = conv_model([("Add", ["$", "three"]), ("Clip", ["$", "zero", "six"]), ("Mul", ["c", "$"]),
                        ("Div", ["$", "six"])], {"three": 3.0, "zero": 0.0, "six": 6.0}, opset=14)
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Conv", "HardSwish"]
    assert not near_misses(report)


# ------------------------------------------------------------------- TensorRT-RTX parses and builds it


@pytest.mark.parametrize("case", ["detr", "fp16", "transpose", "sub-from-const"])
def test_fused_models_build_with_tensorrt(case, monkeypatch):
    k1, k2 = channel_values([1, C, 1, 1], 1), channel_values([1, C, 1, 1], 2)
    model = {"detr": lambda: conv_model([("Mul", ["$", "a"]), ("Add", ["$", "b"]), ("Relu", ["$"])],
                                        {"a": k1, "b": k2}, bias=False),
             "fp16": lambda: conv_model([("Mul", ["$", "a"]), ("Add", ["$", "b"])], {"a": k1, "b": k2}, elem=H),
             "transpose": lambda: conv_model([("Div", ["$", "a"])], {"a": k1}, op_type="ConvTranspose", group=2),
             "sub-from-const": lambda: conv_model([("Sub", ["a", "$"])], {"a": k1})}[case]()
    out, report = fuser.optimize(model, target="tensorrt")
    assert report.fusions
    assert_trt_builds(out, monkeypatch)
