"""Conv/ConvTranspose + BatchNormalization folding: one test per form, one per near miss that must not fire."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper, numpy_helper

import fuser
from builders import assert_trt_builds, const, make_model, ops, optimize_and_compare

F, H = T.FLOAT, T.FLOAT16
NP = {F: np.float32, H: np.float16}


def bn_params(c, rng, dtype=np.float32):
    """scale, bias, mean, var: var well away from 0 and the scale far from 1, so a wrong fold shows."""
    return [("scale", rng.uniform(0.5, 2.0, c).astype(dtype)), ("bn_b", rng.standard_normal(c).astype(dtype)),
            ("mean", rng.standard_normal(c).astype(dtype)), ("var", rng.uniform(0.2, 3.0, c).astype(dtype))]


def conv_bn_model(*, op_type="Conv", spatial=(6, 6), cin=4, cout=6, group=1, bias=True, elem=F, opset=13,
                  bn_attrs=None, bn_outputs=("y",), after=(), extra_nodes=(), extra_outputs=(),
                  extra_inits=(), param_dtype=None, seed=0):
    """x -> Conv|ConvTranspose(W, b?) -> BatchNormalization [-> `after` ops] -> y."""
    rng = np.random.default_rng(seed)
    dtype = NP[elem]
    k = (3,) * len(spatial)
    if op_type == "Conv":
        w_shape = (cout, cin // group) + k
        attrs = {"pads": [1] * (2 * len(spatial)), "group": group}
        out_spatial = spatial
    else:
        w_shape = (cin, cout // group) + k
        attrs = {"strides": [2] * len(spatial), "group": group}
        out_spatial = tuple(2 * (s - 1) + 3 for s in spatial)
    inits = [("W", (rng.standard_normal(w_shape) * 0.3).astype(dtype))]
    conv_inputs = ["x", "W"]
    if bias:
        inits.append(("B", rng.standard_normal(cout).astype(dtype)))
        conv_inputs.append("B")
    inits += bn_params(cout, rng, param_dtype or dtype) + list(extra_inits)
    bn_out = "bn" if after else bn_outputs[0]
    nodes = [helper.make_node(op_type, conv_inputs, ["c"], name="conv", **attrs),
             helper.make_node("BatchNormalization", ["c", "scale", "bn_b", "mean", "var"],
                              [bn_out, *bn_outputs[1:]], name="bn", **(bn_attrs or {}))]
    prev = bn_out
    for i, node in enumerate(after):
        out = "y" if i == len(after) - 1 else f"a{i}"
        nodes.append(helper.make_node(node[0], [prev, *node[1]], [out], **(node[2] if len(node) > 2 else {})))
        prev = out
    nodes += list(extra_nodes)
    out_shape = ["N", cout, *out_spatial]
    outputs = [("y", elem, out_shape), *extra_outputs]
    return make_model(nodes, [("x", elem, ["N", cin, *spatial])], outputs, inits, opset=opset)


def near_misses(report, rule="conv-bn"):
    return [m.reason for m in report.near_misses if m.rule == rule]


# ------------------------------------------------------------------------------------------- folds
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_conv_bn_folds(bias):
    model = conv_bn_model(bias=bias)
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Conv"]
    assert [f.rule for f in report.fusions] == ["conv-bn"]
    assert len(out.graph.node[0].input) == 3  # a bias is created when the conv had none
    assert {i.name for i in out.graph.initializer} == set(out.graph.node[0].input[1:])  # old W, BN params swept


def test_conv_bn_keeps_conv_attributes_and_output_name():
    model = conv_bn_model(spatial=(7, 7))
    model.graph.node[0].attribute.extend([helper.make_attribute("strides", [2, 2]),
                                          helper.make_attribute("dilations", [1, 1])])
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 4
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 4
    out, _ = optimize_and_compare(model)
    conv = out.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["strides"] == [2, 2] and attrs["pads"] == [1, 1, 1, 1] and attrs["dilations"] == [1, 1]
    assert conv.output[0] == "y"
    assert "conv-bn" in conv.doc_string


def test_conv_bn_string_attribute_auto_pad():
    model = conv_bn_model()
    conv = model.graph.node[0]
    del conv.attribute[:]
    conv.attribute.extend([helper.make_attribute("auto_pad", "SAME_UPPER"),
                           helper.make_attribute("kernel_shape", [3, 3])])
    out, _ = optimize_and_compare(model)
    attrs = {a.name: helper.get_attribute_value(a) for a in out.graph.node[0].attribute}
    assert ops(out) == ["Conv"] and attrs["auto_pad"] == b"SAME_UPPER" and attrs["kernel_shape"] == [3, 3]


def test_conv_bn_relu_keeps_relu():
    """conv + bn + relu: the BN folds, the Relu stays a standard op (TensorRT fuses Conv+Relu itself)."""
    model = conv_bn_model(after=[("Relu", [])])
    for target in ("generic", "tensorrt"):
        out, _ = optimize_and_compare(model, target=target)
        assert ops(out) == ["Conv", "Relu"]
        assert all(n.domain in ("", "ai.onnx") for n in out.graph.node)


def test_conv_bn_clip_keeps_clip():
    model = conv_bn_model(after=[("Clip", ["lo", "hi"])], extra_inits=[("lo", np.float32(0)), ("hi", np.float32(6))])
    out, _ = optimize_and_compare(model, target="tensorrt")
    assert ops(out) == ["Conv", "Clip"]


def test_conv_bn_fp16():
    model = conv_bn_model(elem=H)
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv"]
    assert all(i.data_type == H for i in out.graph.initializer)


def test_conv_bn_fp16_input_fp32_statistics_opset15():
    """Opset 15 lets the BN statistics have their own type: fp16 activations, fp32 scale/mean/var."""
    model = conv_bn_model(elem=H, param_dtype=np.float32, opset=15)
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv"]
    assert all(i.data_type == H for i in out.graph.initializer)


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
def test_conv_bn_opsets(opset):
    out, _ = optimize_and_compare(conv_bn_model(opset=opset))
    assert ops(out) == ["Conv"]


def test_conv_bn_epsilon_from_attribute():
    model = conv_bn_model(bn_attrs={"epsilon": 0.1})
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.full(6, 1e-3, np.float32), "var"))
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv"]


def test_conv_bn_params_as_constant_nodes():
    rng = np.random.default_rng(1)
    model = conv_bn_model()
    keep = [t for t in model.graph.initializer if t.name in ("W", "B")]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    model.graph.node.extend([])
    consts = [const(name, value) for name, value in bn_params(6, rng)]
    nodes = consts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv"]


@pytest.mark.parametrize("group,cin,cout", [(2, 4, 6), (4, 4, 4)], ids=["group2", "depthwise"])
def test_grouped_conv_bn(group, cin, cout):
    out, _ = optimize_and_compare(conv_bn_model(group=group, cin=cin, cout=cout))
    assert ops(out) == ["Conv"]


@pytest.mark.parametrize("spatial", [(9,), (4, 5, 3)], ids=["1d", "3d"])
def test_conv_bn_1d_3d(spatial):
    out, _ = optimize_and_compare(conv_bn_model(spatial=spatial))
    assert ops(out) == ["Conv"]


@pytest.mark.parametrize("group,bias", [(1, True), (1, False), (2, True)], ids=["g1", "g1-no-bias", "g2"])
def test_conv_transpose_bn(group, bias):
    """ConvTranspose weights are [Cin, Cout/group, k...]: the scale runs along axis 1, group by group."""
    out, _ = optimize_and_compare(conv_bn_model(op_type="ConvTranspose", group=group, bias=bias, cin=4, cout=6))
    assert ops(out) == ["ConvTranspose"]


def test_conv_transpose_bn_fp16():
    out, _ = optimize_and_compare(conv_bn_model(op_type="ConvTranspose", group=2, elem=H))
    assert ops(out) == ["ConvTranspose"]


def test_shared_weight_is_not_modified():
    """W feeds a second Conv without BN: the fold makes new initializers, the shared W keeps its values."""
    model = conv_bn_model(extra_nodes=[helper.make_node("Conv", ["x", "W", "B"], ["y2"], pads=[1, 1, 1, 1])],
                          extra_outputs=[("y2", F, ["N", 6, 6, 6])])
    w_before = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W")).copy()
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["Conv", "Conv"]
    w_after = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "W"))
    np.testing.assert_array_equal(w_before, w_after)
    assert len(out.graph.initializer) == 4  # W, B for the plain conv; W', b' for the folded one


def test_two_conv_bn_in_a_row():
    rng = np.random.default_rng(3)
    base = conv_bn_model()
    nodes = list(base.graph.node)
    nodes[1].output[0] = "mid"
    inits = [(t.name, numpy_helper.to_array(t)) for t in base.graph.initializer]
    inits += [("W2", (rng.standard_normal((6, 6, 1, 1)) * 0.3).astype(np.float32))]
    inits += [(f"{n}2", v) for n, v in bn_params(6, rng)]
    nodes += [helper.make_node("Conv", ["mid", "W2"], ["c2"]),
              helper.make_node("BatchNormalization", ["c2", "scale2", "bn_b2", "mean2", "var2"], ["y"])]
    model = make_model(nodes, [("x", F, ["N", 4, 6, 6])], [("y", F, ["N", 6, 6, 6])], inits)
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Conv", "Conv"]
    assert len(report.fusions) == 2


# ------------------------------------------------------------------------------- must not fire
def test_training_mode_is_a_near_miss():
    model = conv_bn_model(opset=15, bn_attrs={"training_mode": 1},
                          bn_outputs=("y", "rm", "rv"), extra_outputs=[("rm", F, [6])])
    out, report = fuser.optimize(model)
    assert ops(out) == ["Conv", "BatchNormalization"]
    assert any("training_mode=1" in r for r in near_misses(report))


def test_used_running_statistics_is_a_near_miss():
    """Opset 9: BN outputs 1.. are the running statistics of training; one read as a graph output."""
    model = conv_bn_model(opset=9, bn_outputs=("y", "running_mean", "rv", "sm", "sv"),
                          extra_outputs=[("running_mean", F, [6])])
    out, report = fuser.optimize(model)
    assert ops(out) == ["Conv", "BatchNormalization"]
    assert any("training mode" in r for r in near_misses(report))


def test_five_outputs_before_opset_14_is_training_mode():
    """Opset 9: a BN listing its 5 outputs is in training mode (onnxruntime computes batch statistics),
    even when the extra outputs are unused: folding would change the result."""
    model = conv_bn_model(opset=9, bn_outputs=("y", "rm", "rv", "sm", "sv"))
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Conv", "BatchNormalization"]
    assert any("training mode" in r for r in near_misses(report))


def test_spatial_0_is_a_near_miss():
    model = conv_bn_model(opset=7, bn_attrs={"spatial": 0})
    out, report = fuser.optimize(model)
    assert ops(out) == ["Conv", "BatchNormalization"]
    assert any("spatial=0" in r for r in near_misses(report))


def test_non_constant_weight_is_a_near_miss():
    model = conv_bn_model()
    w = next(t for t in model.graph.initializer if t.name == "W")
    model.graph.input.append(helper.make_tensor_value_info("W", F, list(w.dims)))  # overridable at run time
    out, report = fuser.optimize(model)
    assert ops(out) == ["Conv", "BatchNormalization"]
    assert any("weight 'W' is not a constant" in r for r in near_misses(report))


def test_non_constant_statistics_is_a_near_miss():
    model = conv_bn_model()
    keep = [t for t in model.graph.initializer if t.name != "var"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    model.graph.input.append(helper.make_tensor_value_info("var", F, [6]))
    out, report = fuser.optimize(model)
    assert ops(out) == ["Conv", "BatchNormalization"]
    assert any("var 'var' is not a constant" in r for r in near_misses(report))


def test_conv_output_used_elsewhere_is_a_near_miss():
    """The Conv's output also feeds a Relu: removing the Conv would lose it."""
    model = conv_bn_model(extra_nodes=[helper.make_node("Relu", ["c"], ["r"])],
                          extra_outputs=[("r", F, ["N", 6, 6, 6])])
    out, report = optimize_and_compare(model)
    assert sorted(ops(out)) == ["BatchNormalization", "Conv", "Relu"]
    assert any("also used outside the match" in r for r in near_misses(report))


def test_conv_output_is_graph_output_is_a_near_miss():
    model = conv_bn_model(extra_outputs=[("c", F, ["N", 6, 6, 6])])
    out, report = fuser.optimize(model)
    assert ops(out) == ["Conv", "BatchNormalization"]
    assert any("graph output" in r for r in near_misses(report))


def test_bn_on_non_conv_does_not_fire():
    rng = np.random.default_rng(0)
    model = make_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("BatchNormalization", ["r", "scale", "bn_b", "mean", "var"], ["y"])],
                       [("x", F, [1, 6, 4, 4])], [("y", F, [1, 6, 4, 4])], bn_params(6, rng))
    out, report = optimize_and_compare(model)
    assert ops(out) == ["Relu", "BatchNormalization"]
    assert not report.fusions


# ------------------------------------------------------------ onnxruntime target: com.microsoft.FusedConv
ACTIVATIONS = {
    "Relu": [("Relu", [])], "Sigmoid": [("Sigmoid", [])], "Tanh": [("Tanh", [])],
    "LeakyRelu": [("LeakyRelu", [], {"alpha": 0.1})],
    "HardSigmoid": [("HardSigmoid", [], {"alpha": 0.3, "beta": 0.4})],
    "Clip": [("Clip", ["lo", "hi"])], "Clip-min-only": [("Clip", ["lo"])],
}


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_onnxruntime_target_emits_fused_conv(act):
    model = conv_bn_model(after=ACTIVATIONS[act], extra_inits=[("lo", np.float32(-0.5)), ("hi", np.float32(1.5))])
    out, report = optimize_and_compare(model, target="onnxruntime")
    assert ops(out) == ["FusedConv"]
    node = out.graph.node[0]
    assert node.domain == "com.microsoft"
    assert {i.domain: i.version for i in out.opset_import}["com.microsoft"] == 1
    assert [f.rule for f in report.fusions] == ["conv-bn", "fused-conv"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["activation"] == act.split("-")[0].encode()


def test_onnxruntime_target_clip_attributes_opset9():
    model = conv_bn_model(opset=9, after=[("Clip", [], {"min": 0.0, "max": 6.0})])
    out, _ = optimize_and_compare(model, target="onnxruntime")
    assert ops(out) == ["FusedConv"]
    attrs = {a.name: helper.get_attribute_value(a) for a in out.graph.node[0].attribute}
    assert attrs["activation_params"] == [0.0, 6.0]


def test_fused_conv_refuses_fp16():
    model = conv_bn_model(elem=H, after=[("Relu", [])])
    out, report = optimize_and_compare(model, target="onnxruntime")
    assert ops(out) == ["Conv", "Relu"]
    assert any("float32" in r for r in near_misses(report, "fused-conv"))


def test_fused_conv_not_selected_for_tensorrt_or_generic():
    """The tensorrt/generic targets never get a non-standard op: the rule is not even selected..."""
    model = conv_bn_model(after=[("Relu", [])])
    for target in ("generic", "tensorrt"):
        out, report = optimize_and_compare(model, target=target)
        assert ops(out) == ["Conv", "Relu"]
        assert {i.domain for i in out.opset_import} <= {"", "ai.onnx"}
        assert "fused-conv" not in report.rules


@pytest.mark.parametrize("target", ["generic", "tensorrt"])
def test_engine_refuses_fused_conv_for_tensorrt(target):
    """...and were it run anyway, the engine refuses to emit com.microsoft ops for them."""
    from fuser.passes import DeadCodeElimination, FusionPass
    from fuser.rules import FUSED_CONV

    rng = np.random.default_rng(0)
    model = make_model([helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
                       [("x", F, [1, 4, 5, 5])], [("y", F, [1, 6, 3, 3])],
                       [("W", rng.standard_normal((6, 4, 3, 3)).astype(np.float32))])
    out, report = fuser.optimize(model, target=target, passes=[FusionPass([FUSED_CONV]), DeadCodeElimination()])
    assert ops(out) == ["Conv", "Relu"]
    assert {i.domain for i in out.opset_import} <= {"", "ai.onnx"}
    assert any("non-standard op" in r and target in r for r in near_misses(report, "fused-conv"))


# ------------------------------------------------------------------- TensorRT-RTX parses and builds it


@pytest.mark.parametrize("case", ["relu", "fp16", "transpose-g2", "1d", "3d"])
def test_fused_models_build_with_tensorrt(case, monkeypatch):
    model = {"relu": lambda: conv_bn_model(after=[("Relu", [])]),
             "fp16": lambda: conv_bn_model(elem=H, after=[("Relu", [])]),
             "transpose-g2": lambda: conv_bn_model(op_type="ConvTranspose", group=2),
             "1d": lambda: conv_bn_model(spatial=(9,)),
             "3d": lambda: conv_bn_model(spatial=(4, 5, 3))}[case]()
    out, _ = fuser.optimize(model, target="tensorrt")
    assert "BatchNormalization" not in ops(out)
    assert_trt_builds(out, monkeypatch)
