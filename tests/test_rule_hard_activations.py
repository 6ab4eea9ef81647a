"""HardSwish and HardSigmoid: one test per exporter spelling, one per near miss that must not fire.

Spellings the exporters emit (torch, HF; benchmarks/patterns.py counts them independently): `x * relu6(x + 3) / 6`
with the Mul on either side and the Div before or after it, `* (1/6)` instead of `/ 6`, relu6 as Clip / Min(Relu, 6) /
Min(Max(0), 6) / Max(Min(6), 0), `x * HardSigmoid(x, 1/6, 0.5)` (PyTorch at opset <= 13); Clip bounds as attributes
(opset 7-10) or inputs (>= 11); constants as initializers or Constant nodes, rank 0 or [1]; fp32 and fp16.
"""

import numpy as np
import pytest
from onnx import TensorProto as T, helper

import fuser
from builders import assert_trt_builds, const, make_model, ops, optimize_and_compare

F, H = T.FLOAT, T.FLOAT16
NP = {F: np.float32, H: np.float16}
SHAPE = [2, 3, 4, 5]
CONSTS = {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1 / 6}


def n(op_type, inputs, output, **attrs):
    return helper.make_node(op_type, inputs, [output], **attrs)


def relu6(src, out, style="clip", opset=13, lo="zero", hi="six", lo_value=0.0, hi_value=6.0):
    """relu6(src) -> out in one of the spellings exporters write."""
    if style == "clip":
        if opset < 11:  # Clip-6: bounds are attributes
            return [n("Clip", [src], out, min=lo_value, max=hi_value)]
        return [n("Clip", [src, lo, hi], out)]
    if style == "min_relu":  # tf2onnx
        return [n("Relu", [src], f"{out}_r"), n("Min", [f"{out}_r", hi], out)]
    if style == "min_max":  # tf2onnx
        return [n("Max", [src, lo], f"{out}_m"), n("Min", [f"{out}_m", hi], out)]
    if style == "max_min":
        return [n("Min", [src, hi], f"{out}_m"), n("Max", [f"{out}_m", lo], out)]
    raise ValueError(style)


def gate_nodes(x, form, style, opset, add_order="x3"):
    """The hard-sigmoid gate of `x` -> 'g' (forms: div, mul, mul_left); its relu6 numerator -> 'r'."""
    a_in = [x, "three"] if add_order == "x3" else ["three", x]
    nodes = [n("Add", a_in, "a"), *relu6("a", "r", style, opset)]
    if form == "div":
        nodes.append(n("Div", ["r", "six"], "g"))
    elif form == "mul":
        nodes.append(n("Mul", ["r", "sixth"], "g"))
    elif form == "mul_left":
        nodes.append(n("Mul", ["sixth", "r"], "g"))
    else:
        raise ValueError(form)
    return nodes


HSWISH_FORMS = {
    # name: nodes computing y from x
    "x*(r/6)": lambda s, o: gate_nodes("x", "div", s, o) + [n("Mul", ["x", "g"], "y")],
    "(r/6)*x": lambda s, o: gate_nodes("x", "div", s, o) + [n("Mul", ["g", "x"], "y")],
    "(x*r)/6": lambda s, o: gate_nodes("x", "div", s, o)[:-1] + [n("Mul", ["x", "r"], "m"),
                                                                 n("Div", ["m", "six"], "y")],
    "(r*x)/6": lambda s, o: gate_nodes("x", "div", s, o)[:-1] + [n("Mul", ["r", "x"], "m"),
                                                                 n("Div", ["m", "six"], "y")],
    "x*(r*(1/6))": lambda s, o: gate_nodes("x", "mul", s, o) + [n("Mul", ["x", "g"], "y")],
    "((1/6)*r)*x": lambda s, o: gate_nodes("x", "mul_left", s, o) + [n("Mul", ["g", "x"], "y")],
    "(x*r)*(1/6)": lambda s, o: gate_nodes("x", "div", s, o)[:-1] + [n("Mul", ["x", "r"], "m"),
                                                                     n("Mul", ["m", "sixth"], "y")],
    "(1/6)*(r*x)": lambda s, o: gate_nodes("x", "div", s, o)[:-1] + [n("Mul", ["r", "x"], "m"),
                                                                     n("Mul", ["sixth", "m"], "y")],
    "x*((3+x)...)/6": lambda s, o: gate_nodes("x", "div", s, o, add_order="3x") + [n("Mul", ["x", "g"], "y")],
}


def model_of(nodes, *, opset=13, elem=F, constant_nodes=False, rank1=False, consts=None, inputs=("x",)):
    """A model on x[2,3,4,5] -> y; the constants the nodes read become initializers or Constant nodes."""
    used = {i for node in nodes for i in node.input}
    consts = {k: v for k, v in (consts or CONSTS).items() if k in used}
    dtype = NP[elem]
    values = {k: np.asarray([v] if rank1 else v, dtype=dtype) for k, v in consts.items()}
    if constant_nodes:
        nodes = [const(k, v, dtype) for k, v in values.items()] + list(nodes)
        inits = []
    else:
        inits = list(values.items())
    return make_model(nodes, [(i, elem, SHAPE) for i in inputs], [("y", elem, SHAPE)], inits, opset=opset)


def hsigmoid_attrs(model):
    node = next(nd for nd in model.graph.node if nd.op_type == "HardSigmoid")
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def reasons(report, rule):
    return [m.reason for m in report.near_misses if m.rule == rule]


# ==================================================================================== HardSwish
@pytest.mark.parametrize("form", list(HSWISH_FORMS))
def test_hardswish_forms(form):
    out, report = optimize_and_compare(model_of(HSWISH_FORMS[form]("clip", 13)))
    assert ops(out) == ["HardSwish"]
    assert [f.rule for f in report.fusions] == ["hardswish"]
    assert out.opset_import[0].version >= 14  # upgraded: HardSwish is opset 14 (the engine may go higher at once)


@pytest.mark.parametrize("style", ["min_relu", "min_max", "max_min"])
@pytest.mark.parametrize("form", ["x*(r/6)", "(x*r)/6", "x*(r*(1/6))"])
def test_hardswish_relu6_spellings(style, form):
    out, _ = optimize_and_compare(model_of(HSWISH_FORMS[form](style, 13)))
    assert ops(out) == ["HardSwish"]


@pytest.mark.parametrize("opset", [7, 9, 10], ids=lambda o: f"opset{o}")
@pytest.mark.parametrize("form", ["x*(r/6)", "(x*r)/6", "(x*r)*(1/6)"])
def test_hardswish_clip_attributes(form, opset):
    """Clip-6 (opsets 7-10) carries min/max as attributes."""
    model = model_of(HSWISH_FORMS[form]("clip", opset), opset=opset)
    assert not any(len(nd.input) > 1 for nd in model.graph.node if nd.op_type == "Clip")
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["HardSwish"]


@pytest.mark.parametrize("opset", [11, 12, 13, 14, 17])
def test_hardswish_clip_inputs(opset):
    out, _ = optimize_and_compare(model_of(HSWISH_FORMS["(x*r)/6"]("clip", opset), opset=opset))
    assert ops(out) == ["HardSwish"]
    assert out.opset_import[0].version >= max(opset, 14)


@pytest.mark.parametrize("rank1", [False, True], ids=["scalar", "shape1"])
@pytest.mark.parametrize("constant_nodes", [False, True], ids=["initializers", "constant-nodes"])
@pytest.mark.parametrize("form", ["x*(r/6)", "(x*r)*(1/6)"])
def test_hardswish_constant_forms(form, constant_nodes, rank1):
    model = model_of(HSWISH_FORMS[form]("clip", 13), constant_nodes=constant_nodes, rank1=rank1)
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["HardSwish"]


@pytest.mark.parametrize("form", ["x*(r/6)", "(x*r)/6", "x*(r*(1/6))", "(1/6)*(r*x)"])
@pytest.mark.parametrize("style", ["clip", "min_max"])
def test_hardswish_fp16(form, style):
    """fp16: 1/6 is 0.1666 in fp16 and still matches; 3 and 6 are exact."""
    out, _ = optimize_and_compare(model_of(HSWISH_FORMS[form](style, 13), elem=H))
    assert ops(out) == ["HardSwish"]


def test_hardswish_decimal_sixth():
    """Some code writes 0.16666667 (or 0.1666667) rather than 1/6."""
    consts = dict(CONSTS, sixth=0.16666667)
    out, _ = optimize_and_compare(model_of(HSWISH_FORMS["(x*r)*(1/6)"]("clip", 13), consts=consts))
    assert ops(out) == ["HardSwish"]


@pytest.mark.parametrize("order", ["x*hs", "hs*x"])
@pytest.mark.parametrize("opset", [9, 13])
def test_hardswish_from_pytorch_hardsigmoid(order, opset):
    """PyTorch nn.Hardswish at opset <= 13: HardSigmoid(x, alpha=1/6, beta=0.5) -> Mul(x, .)."""
    mul = ["x", "g"] if order == "x*hs" else ["g", "x"]
    model = model_of([n("HardSigmoid", ["x"], "g", alpha=1 / 6, beta=0.5), n("Mul", mul, "y")], opset=opset)
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["HardSwish"]


def test_hardswish_from_pytorch_hardsigmoid_fp16():
    model = model_of([n("HardSigmoid", ["x"], "g", alpha=0.16666667, beta=0.5), n("Mul", ["x", "g"], "y")],
                     elem=H)
    out, _ = optimize_and_compare(model)
    assert ops(out) == ["HardSwish"]


def test_hardswish_at_opset_14_needs_no_upgrade():
    out, report = optimize_and_compare(model_of(HSWISH_FORMS["(x*r)/6"]("clip", 14), opset=14))
    assert ops(out) == ["HardSwish"] and out.opset_import[0].version == 14
    assert not any("upgraded" in note for note in report.notes)


def block(nodes, x, y, tag):
    """Copy of a spelling's nodes reading `x` and writing `y`, with its interior values renamed by `tag`."""
    def rename(v):
        return x if v == "x" else y if v == "y" else v if v in CONSTS else f"{v}_{tag}"
    copies = []
    for nd in nodes:
        c = helper.make_node(nd.op_type, [rename(i) for i in nd.input], [rename(o) for o in nd.output])
        c.attribute.extend(nd.attribute)
        copies.append(c)
    return copies


def test_two_hardswish_in_a_chain():
    nodes = (block(HSWISH_FORMS["(x*r)/6"]("clip", 13), "x", "h", "1") + [n("Sigmoid", ["h"], "s")]
             + block(HSWISH_FORMS["x*(r*(1/6))"]("min_relu", 13), "s", "y", "2"))
    out, report = optimize_and_compare(model_of(nodes))
    assert ops(out) == ["HardSwish", "Sigmoid", "HardSwish"]
    assert len(report.fusions) == 2


def test_hardswish_without_upgrade_falls_back_to_hardsigmoid():
    """Upgrades off and an opset-13 model: no HardSwish (near miss with the reason); the gate still
    becomes a HardSigmoid (opset 6), so x * HardSigmoid(x) is what is left."""
    model = model_of(HSWISH_FORMS["x*(r/6)"]("clip", 13))
    out, report = optimize_and_compare(model, allow_upgrade=False)
    assert ops(out) == ["HardSigmoid", "Mul"]
    assert out.opset_import[0].version == 13
    assert any("opset 14" in r and "upgrades are disabled" in r for r in reasons(report, "hardswish"))


def test_hardswish_target_opset_too_low_is_a_near_miss():
    model = model_of(HSWISH_FORMS["(x*r)/6"]("clip", 13))
    out, report = optimize_and_compare(model, target_opset=13)
    assert ops(out) == ops(model)
    assert any("--target-opset 14" in r for r in reasons(report, "hardswish"))


# ============================================================================== HardSwish: must not
def _assert_unchanged(model, **options):
    out, report = optimize_and_compare(model, **options)
    assert ops(out) == ops(model)
    assert not report.fusions
    return out, report


@pytest.mark.parametrize("consts", [dict(CONSTS, three=2.0), dict(CONSTS, six=5.0), dict(CONSTS, zero=1.0),
                                    dict(CONSTS, three=-3.0)], ids=["x+2", "Clip(0,5)", "Clip(1,6)", "x-3"])
def test_hardswish_other_constants_do_not_fire(consts):
    """x + 2, Clip(0, 5), Clip(1, 6): other offsets or bounds are other functions. (With six=5, also /5.)"""
    _assert_unchanged(model_of(HSWISH_FORMS["x*(r/6)"]("clip", 13), consts=consts))


def test_hardswish_divisor_5_does_not_fire():
    nodes = HSWISH_FORMS["(x*r)/6"]("clip", 13)
    nodes[-1].input[1] = "five"
    _assert_unchanged(model_of(nodes, consts=dict(CONSTS, five=5.0)))


def test_clip_0_5_with_attributes_does_not_fire():
    nodes = gate_nodes("x", "div", "clip", 9)
    nodes[1] = n("Clip", ["a"], "r", min=0.0, max=5.0)
    _assert_unchanged(model_of(nodes + [n("Mul", ["x", "g"], "y")], opset=9))


def test_gate_on_another_tensor_is_only_a_hardsigmoid():
    """y = z * hsigmoid(x): the gate applies to a different tensor; only the gate fuses (HardSigmoid)."""
    model = model_of(gate_nodes("x", "div", "clip", 13) + [n("Mul", ["z", "g"], "y")], inputs=("x", "z"))
    out, report = optimize_and_compare(model)
    assert ops(out) == ["HardSigmoid", "Mul"]
    assert [f.rule for f in report.fusions] == ["hardsigmoid"]


def test_pytorch_hardsigmoid_on_another_tensor_stays():
    model = model_of([n("HardSigmoid", ["x"], "g", alpha=1 / 6, beta=0.5), n("Mul", ["z", "g"], "y")],
                     inputs=("x", "z"))
    _assert_unchanged(model)


@pytest.mark.parametrize("alpha,beta", [(0.2, 0.5), (1 / 6, 0.4)], ids=["onnx-default-alpha", "beta0.4"])
def test_other_hardsigmoid_times_x_stays(alpha, beta):
    """x * HardSigmoid(x) with other alpha/beta is not a HardSwish: it stays as it is."""
    _assert_unchanged(model_of([n("HardSigmoid", ["x"], "g", alpha=alpha, beta=beta), n("Mul", ["x", "g"], "y")]))


def test_hardsigmoid_with_default_attributes_times_x_stays():
    """No attributes: ONNX defaults alpha=0.2, beta=0.5."""
    _assert_unchanged(model_of([n("HardSigmoid", ["x"], "g"), n("Mul", ["x", "g"], "y")]))


def test_interior_value_used_elsewhere_is_a_near_miss():
    """The relu6 value also feeds a graph output: the HardSwish would remove it."""
    nodes = HSWISH_FORMS["(x*r)/6"]("clip", 13)
    model = make_model(nodes, [("x", F, SHAPE)], [("y", F, SHAPE), ("r", F, SHAPE)],
                       [(k, np.float32(v)) for k, v in CONSTS.items() if k != "sixth"], opset=13)
    out, report = _assert_unchanged(model)
    assert any("'r'" in r and "graph output" in r for r in reasons(report, "hardswish"))


def test_non_constant_offset_does_not_fire():
    nodes = HSWISH_FORMS["x*(r/6)"]("clip", 13)
    model = make_model(nodes, [("x", F, SHAPE), ("three", F, [1])], [("y", F, SHAPE)],
                       [(k, np.float32(v)) for k, v in CONSTS.items() if k in ("zero", "six")], opset=13)
    _assert_unchanged(model)


# ================================================================================== HardSigmoid
HSIGMOID_FORMS = {
    "r/6": ("div", "x3"),
    "r*(1/6)": ("mul", "x3"),
    "(1/6)*r": ("mul_left", "x3"),
    "(3+x)...": ("div", "3x"),
}


@pytest.mark.parametrize("form", list(HSIGMOID_FORMS))
@pytest.mark.parametrize("style", ["clip", "min_relu", "min_max", "max_min"])
def test_hardsigmoid_spellings(style, form):
    gate, order = HSIGMOID_FORMS[form]
    nodes = gate_nodes("x", gate, style, 13, add_order=order)
    nodes[-1].output[0] = "y"
    out, report = optimize_and_compare(model_of(nodes))
    assert ops(out) == ["HardSigmoid"]
    assert [f.rule for f in report.fusions] == ["hardsigmoid"]
    attrs = hsigmoid_attrs(out)
    assert attrs["alpha"] == pytest.approx(1 / 6) and attrs["beta"] == pytest.approx(0.5)
    assert out.opset_import[0].version == 13  # HardSigmoid needs no upgrade


@pytest.mark.parametrize("opset", [7, 9, 10, 11, 12])
@pytest.mark.parametrize("form", ["r/6", "r*(1/6)"])
def test_hardsigmoid_opsets(form, opset):
    """Opsets 7-10: Clip bounds are attributes; 11+: inputs. The model keeps its opset."""
    nodes = gate_nodes("x", HSIGMOID_FORMS[form][0], "clip", opset)
    nodes[-1].output[0] = "y"
    out, _ = optimize_and_compare(model_of(nodes, opset=opset))
    assert ops(out) == ["HardSigmoid"]
    assert out.opset_import[0].version == opset


@pytest.mark.parametrize("rank1", [False, True], ids=["scalar", "shape1"])
@pytest.mark.parametrize("constant_nodes", [False, True], ids=["initializers", "constant-nodes"])
@pytest.mark.parametrize("form", ["r/6", "r*(1/6)"])
def test_hardsigmoid_constant_forms(form, constant_nodes, rank1):
    nodes = gate_nodes("x", HSIGMOID_FORMS[form][0], "min_max", 13)
    nodes[-1].output[0] = "y"
    out, _ = optimize_and_compare(model_of(nodes, constant_nodes=constant_nodes, rank1=rank1))
    assert ops(out) == ["HardSigmoid"]


@pytest.mark.parametrize("form", list(HSIGMOID_FORMS))
def test_hardsigmoid_fp16(form):
    gate, order = HSIGMOID_FORMS[form]
    nodes = gate_nodes("x", gate, "clip", 13, add_order=order)
    nodes[-1].output[0] = "y"
    out, _ = optimize_and_compare(model_of(nodes, elem=H))
    assert ops(out) == ["HardSigmoid"]


def test_hardsigmoid_gating_another_tensor_se_block():
    """The MobileNetV3 squeeze-excite shape: z * hsigmoid(x), x a different tensor (see also above)."""
    nodes = gate_nodes("x", "mul", "min_relu", 13) + [n("Mul", ["g", "z"], "y")]
    out, _ = optimize_and_compare(model_of(nodes, inputs=("x", "z")))
    assert ops(out) == ["HardSigmoid", "Mul"]


@pytest.mark.parametrize("form,consts", [
    ("r/6", dict(CONSTS, three=2.0)), ("r/6", dict(CONSTS, six=5.0)), ("r/6", dict(CONSTS, zero=1.0)),
    ("r*(1/6)", dict(CONSTS, three=2.0)), ("r*(1/6)", dict(CONSTS, six=5.0)), ("r*(1/6)", dict(CONSTS, sixth=0.2)),
], ids=["x+2", "Clip(0,5)/5", "Clip(1,6)", "mul-x+2", "mul-Clip(0,5)", "*0.2"])
def test_hardsigmoid_other_constants_do_not_fire(form, consts):
    nodes = gate_nodes("x", HSIGMOID_FORMS[form][0], "clip", 13)
    nodes[-1].output[0] = "y"
    _assert_unchanged(model_of(nodes, consts=consts))


@pytest.mark.parametrize("alpha,beta", [(0.2, 0.5), (1 / 6, 0.5)], ids=["onnx-default", "pytorch"])
def test_existing_hardsigmoid_stays(alpha, beta):
    """A HardSigmoid already in the graph is left as it is, whatever its alpha/beta."""
    _assert_unchanged(model_of([n("HardSigmoid", ["x"], "y", alpha=alpha, beta=beta)]))


def test_relu6_alone_does_not_fire():
    _assert_unchanged(model_of(relu6("x", "y", "clip", 13)))


def test_hardsigmoid_interior_value_used_elsewhere_is_a_near_miss():
    nodes = gate_nodes("x", "div", "clip", 13)
    nodes[-1].output[0] = "y"
    model = make_model(nodes, [("x", F, SHAPE)], [("y", F, SHAPE), ("a", F, SHAPE)],
                       [(k, np.float32(v)) for k, v in CONSTS.items() if k != "sixth"], opset=13)
    _, report = _assert_unchanged(model)
    assert any("'a'" in r and "graph output" in r for r in reasons(report, "hardsigmoid"))


# ================================================================================= targets
@pytest.mark.parametrize("target", ["generic", "tensorrt", "onnxruntime"])
def test_targets_all_get_the_standard_ops(target):
    """HardSwish and HardSigmoid are standard ONNX ops: every target gets them."""
    model = model_of(gate_nodes("x", "div", "clip", 13) + [n("Mul", ["z", "g"], "m"), n("Mul", ["x", "m"], "y")],
                     inputs=("x", "z"))
    out, _ = optimize_and_compare(model, target=target)
    assert ops(out) == ["HardSigmoid", "Mul", "Mul"]
    assert all(nd.domain in ("", "ai.onnx") for nd in out.graph.node)


def test_fused_nodes_carry_the_rule_name():
    out, _ = fuser.optimize(model_of(HSWISH_FORMS["x*(r/6)"]("clip", 13)))
    assert out.graph.node[0].doc_string == "fuser:hardswish"


# ------------------------------------------------------------------- TensorRT-RTX parses and builds it


@pytest.mark.parametrize("case", ["hardswish", "hardswish-fp16", "hardsigmoid-gate", "hardsigmoid-fp16"])
def test_fused_models_build_with_tensorrt(case, monkeypatch):
    gate = gate_nodes("x", "div", "clip", 13) + [n("Mul", ["z", "g"], "y")]
    model = {"hardswish": lambda: model_of(HSWISH_FORMS["(x*r)/6"]("clip", 13)),
             "hardswish-fp16": lambda: model_of(HSWISH_FORMS["x*(r*(1/6))"]("min_max", 13), elem=H),
             "hardsigmoid-gate": lambda: model_of(gate, inputs=("x", "z")),
             "hardsigmoid-fp16": lambda: model_of(gate, inputs=("x", "z"), elem=H)}[case]()
    out, report = fuser.optimize(model, target="tensorrt")
    assert report.fusions
    assert_trt_builds(out, monkeypatch)
