"""LayerNorm -> LayerNormalization: one test per exporter spelling, one per near miss that must not fire.

Spellings the exporters emit (torch, HF; benchmarks/patterns.py counts them independently):
`ReduceMean -> Sub -> Pow(2) | Mul(d, d) -> ReduceMean -> Add(eps) -> Sqrt -> Div | Mul(Reciprocal) | Mul(Div(1, .))
-> Mul(γ) -> Add(β)`, ReduceMean axes as attribute (opset <= 17) and input (>= 18); no γ, no β, neither; γ = 1 /
β = 0; fp32, fp16, bf16; mixed precision with the cast back before the affine (HF) or after it (autocast), one or two
Cast nodes in front; several trailing axes (negative or positive); eps/exponent as Constant nodes or initializers,
rank 0 or [1]; ConvNeXt's channels-first LN between Transposes. Numerics: onnxruntime with its optimizer off
(builders.run).
"""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper

import fuser
from builders import const, make_model, ops, optimize_and_compare, random_feeds, run

F, H, BF, D = T.FLOAT, T.FLOAT16, T.BFLOAT16, T.DOUBLE
NP = {F: np.float32, H: np.float16, BF: ml_dtypes.bfloat16, D: np.float64}
SHAPE = [2, 5, 16]
RNG = np.random.default_rng(7)
GAMMA = RNG.uniform(0.5, 1.5, 16).astype(np.float32)
BETA = RNG.uniform(-0.5, 0.5, 16).astype(np.float32)


def n(op_type, inputs, output, **attrs):
    return helper.make_node(op_type, inputs, [output], **attrs)


def ln_model(*, opset=13, elem=F, shape=SHAPE, axes=(-1,), square="pow", inverse="div", gamma=GAMMA,
             beta=BETA, eps=1e-5, constant_nodes=True, rank1=False, mixed=None, two_casts=False,
             mean_of="x", eps_input=False, extra_output=None, wrap_bf16=False):
    """A decomposed LayerNorm x -> y as exporters write it.

    mixed: None | "before" (Cast(x, float) ... Cast(n, T) -> Mul(γ) -> Add(β)) | "after" (affine in fp32,
    then Cast(T)) | "torch_half" (TorchScript's LayerNorm of a .half() model: mean and Sub in T, then
    Cast(d, double) ... Cast(n, T) -> Mul(γ) -> Add(β)). gamma/beta: an array, or None for "absent". extra_output: an interior value also made
    a graph output (through a Neg, so it is used outside the match).
    """
    stat = {None: elem, "torch_half": D}.get(mixed, F)
    sdt, edt = NP[stat], NP[elem]
    affine_dt = NP[F] if mixed == "after" else edt
    nodes, inits = [], []
    scalars = {"eps": eps, **({"two": 2.0} if square == "pow" else {}),
               **({"one": 1.0} if inverse == "div_one" else {})}
    values = {k: np.asarray([v] if rank1 else v, dtype=sdt) for k, v in scalars.items()}
    if eps_input:
        values.pop("eps")
    if constant_nodes:
        nodes += [const(k, v, sdt) for k, v in values.items()]
    else:
        inits += list(values.items())
    xs = xm = "x"
    if mixed in ("before", "after"):
        nodes.append(n("Cast", ["x"], "xf", to=F))
        xs = xm = "xf"
        if two_casts:
            nodes.append(n("Cast", ["x"], "xf2", to=F))
            xm = "xf2"
    if mean_of != "x":
        xm = mean_of

    def reduce(src, out):
        if opset >= 18:
            inits.append((f"{out}_axes", np.asarray(axes, dtype=np.int64)))
            return n("ReduceMean", [src, f"{out}_axes"], out, keepdims=1)
        return n("ReduceMean", [src], out, axes=list(axes), keepdims=1)

    nodes += [reduce(xm, "mean"), n("Sub", [xs, "mean"], "d")]
    if mixed == "torch_half":
        nodes[-1].output[0] = "d_half"
        nodes.append(n("Cast", ["d_half"], "d", to=D))
    nodes.append(n("Pow", ["d", "two"], "sq") if square == "pow" else n("Mul", ["d", "d"], "sq"))
    nodes += [reduce("sq", "var"), n("Add", ["var", "eps"], "ve"), n("Sqrt", ["ve"], "std")]
    if inverse == "div":
        nodes.append(n("Div", ["d", "std"], "norm"))
    elif inverse == "reciprocal":
        nodes += [n("Reciprocal", ["std"], "inv"), n("Mul", ["d", "inv"], "norm")]
    else:  # Div(1, std)
        nodes += [n("Div", ["one", "std"], "inv"), n("Mul", ["inv", "d"], "norm")]
    cur = "norm"
    if mixed in ("before", "torch_half"):
        nodes.append(n("Cast", [cur], "normc", to=elem))
        cur = "normc"
    if gamma is not None:
        inits.append(("gamma", np.asarray(gamma, dtype=affine_dt)))
        nodes.append(n("Mul", [cur, "gamma"], "scaled"))
        cur = "scaled"
    if beta is not None:
        inits.append(("beta", np.asarray(beta, dtype=affine_dt)))
        nodes.append(n("Add", ["beta", cur], "shifted"))  # β first: the engine commutes
        cur = "shifted"
    if mixed == "after":
        nodes.append(n("Cast", [cur], "back", to=elem))
        cur = "back"
    nodes[-1].output[0] = "y"  # a stable output name for every form
    inputs = [("x", elem, shape)]
    if eps_input:
        inputs.append(("eps", stat, [1]))
    if mean_of != "x":
        inputs.append((mean_of, elem, shape))
    outputs = [("y", elem, shape)]
    if extra_output:
        nodes.append(n("Neg", [extra_output], "extra"))
        outputs.append(("extra", None, [None] * len(shape)))
    if wrap_bf16:  # onnxruntime cannot feed bf16 from numpy: fp32 in and out, bf16 inside
        nodes = [n("Cast", ["x_in"], "x", to=elem)] + nodes + [n("Cast", ["y"], "y_out", to=F)]
        inputs[0] = ("x_in", F, shape)
        outputs[0] = ("y_out", F, shape)
    outputs = [(name, t if t is not None else elem, s) for name, t, s in outputs]
    return make_model(nodes, inputs, outputs, inits, opset=opset)


def fused(model, **options):
    """Optimize with the numerics check, and return (optimized, report, the LayerNormalization node)."""
    optimized, report = optimize_and_compare(model, **options)
    lns = [node for node in optimized.graph.node if node.op_type == "LayerNormalization"]
    assert len(lns) == 1, ops(optimized)
    return optimized, report, lns[0]


def attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def init(model, name):
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def reasons(report, rule_prefix="layernorm"):
    return [m.reason for m in report.near_misses if m.rule.startswith(rule_prefix)]


# ------------------------------------------------------------------------------------------ fuse
@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("inverse", ["div", "reciprocal", "div_one"])
@pytest.mark.parametrize("opset", [13, 18])
def test_spellings_fuse(square, inverse, opset):
    """Pow or Mul(d, d); Div, Mul·Reciprocal or Mul·Div(1, ·); axes as attribute (13) or input (18)."""
    model = ln_model(opset=opset, square=square, inverse=inverse)
    optimized, report, ln = fused(model)
    assert ops(optimized) == ["LayerNormalization"]
    a = attrs(ln)
    assert a["axis"] == -1 and a["stash_type"] == 1 and a["epsilon"] == pytest.approx(1e-5)
    np.testing.assert_array_equal(init(optimized, ln.input[1]), GAMMA)
    np.testing.assert_array_equal(init(optimized, ln.input[2]), BETA)
    assert [f.family for f in report.fusions] == ["layernorm"]
    assert optimized.opset_import[0].version == max(opset, 17)


def test_opset13_is_upgraded_and_reported():
    _, report, _ = fused(ln_model(opset=13))
    assert any("upgraded opset 13 -> 17" in note for note in report.notes)
    assert [f.rule for f in report.fusions] == ["layernorm"]


@pytest.mark.parametrize("constant_nodes", [True, False])
@pytest.mark.parametrize("rank1", [False, True])
def test_constants_as_nodes_or_initializers_rank0_or_1(constant_nodes, rank1):
    optimized, _, ln = fused(ln_model(constant_nodes=constant_nodes, rank1=rank1, eps=1e-12))
    assert ops(optimized) == ["LayerNormalization"]
    assert attrs(ln)["epsilon"] == pytest.approx(1e-12)


@pytest.mark.parametrize("gamma,beta", [(GAMMA, None), (None, BETA), (None, None), (np.ones(16), np.zeros(16))],
                         ids=["gamma_only", "beta_only", "neither", "gamma1_beta0"])
def test_affine_missing_or_trivial(gamma, beta):
    """No γ, no β, or neither: ones/zeros in x's dtype; γ = 1 / β = 0 are fused, not dropped."""
    optimized, _, ln = fused(ln_model(gamma=gamma, beta=beta))
    assert ops(optimized) == ["LayerNormalization"]
    scale, bias = init(optimized, ln.input[1]), init(optimized, ln.input[2])
    assert scale.dtype == bias.dtype == np.float32 and scale.shape == bias.shape == (16,)
    np.testing.assert_array_equal(scale, GAMMA if gamma is GAMMA else np.ones(16))
    np.testing.assert_array_equal(bias, BETA if beta is BETA else np.zeros(16))


def test_fp16():
    optimized, _, ln = fused(ln_model(elem=H, opset=13))
    assert ops(optimized) == ["LayerNormalization"]
    assert init(optimized, ln.input[1]).dtype == init(optimized, ln.input[2]).dtype == np.float16
    assert attrs(ln)["stash_type"] == 1


def rounded(v):
    return None if v is None else np.asarray(v, ml_dtypes.bfloat16).astype(np.float32)


def assert_matches_fp32_reference(optimized, **reference_args):
    """A fused bf16 model (fp32 I/O) against the same LayerNorm built in fp32 with bf16-rounded γ/β/x."""
    reference = ln_model(elem=F, **reference_args)
    x = random_feeds(reference)["x"].astype(ml_dtypes.bfloat16).astype(np.float32)
    expected, actual = run(reference, {"x": x})[0], run(optimized, {"x_in": x})[0]
    np.testing.assert_allclose(actual, expected, atol=2e-2 * np.abs(expected).max(), rtol=0)


@pytest.mark.parametrize("gamma,beta", [(GAMMA, BETA), (None, None)], ids=["affine", "bare"])
def test_bf16(gamma, beta):
    """onnxruntime's CPU provider has no bf16 Sub/Div..., so the decomposed bf16 model cannot run there;
    the fused one can: compare it with the same LayerNorm computed in fp32."""
    model = ln_model(elem=BF, opset=18, gamma=gamma, beta=beta, wrap_bf16=True)
    optimized, report = fuser.optimize(model)
    onnx.checker.check_model(optimized, full_check=True)
    assert ops(optimized) == ["Cast", "LayerNormalization", "Cast"]
    ln = optimized.graph.node[1]
    assert init(optimized, ln.input[1]).dtype == init(optimized, ln.input[2]).dtype == ml_dtypes.bfloat16
    assert_matches_fp32_reference(optimized, opset=18, gamma=rounded(gamma), beta=rounded(beta))


AFFINES = {"affine": (GAMMA, BETA), "bare": (None, None), "gamma_only": (GAMMA, None), "beta_only": (None, BETA)}


@pytest.mark.parametrize("elem", [H, BF], ids=["fp16", "bf16"])
@pytest.mark.parametrize("affine", list(AFFINES))
def test_mixed_precision_cast_back_before_affine(elem, affine):
    """x -> Cast(float) -> fp32 statistics -> Cast(T) -> Mul(γ) -> Add(β) (HF-style): exactly
    LayerNormalization(x, γ, β, stash_type=1) in T, on x itself."""
    gamma, beta = AFFINES[affine]
    model = ln_model(elem=elem, mixed="before", gamma=gamma, beta=beta, wrap_bf16=elem == BF)
    if elem == H:
        optimized, report, ln = fused(model)
        assert ops(optimized) == ["LayerNormalization"]
    else:  # the decomposed bf16 affine cannot run on ORT's CPU provider: compare with fp32
        optimized, report = fuser.optimize(model)
        onnx.checker.check_model(optimized, full_check=True)
        assert ops(optimized) == ["Cast", "LayerNormalization", "Cast"]
        ln = optimized.graph.node[1]
        assert_matches_fp32_reference(optimized, gamma=rounded(gamma), beta=rounded(beta))
    assert ln.input[0] == "x" and attrs(ln)["stash_type"] == 1
    assert init(optimized, ln.input[1]).dtype == init(optimized, ln.input[2]).dtype == NP[elem]
    assert [f.family for f in report.fusions] == ["layernorm"]


@pytest.mark.parametrize("elem", [H, BF], ids=["fp16", "bf16"])
@pytest.mark.parametrize("affine", ["affine", "beta_only"])
def test_mixed_precision_affine_in_fp32_then_cast_back(elem, affine):
    """torch.autocast: the affine runs in fp32 and the cast back follows it. Moving γ/β to T would add
    roundings, so the LN fuses in fp32 between the Casts, which is exact."""
    gamma, beta = AFFINES[affine]
    model = ln_model(elem=elem, mixed="after", gamma=gamma, beta=beta, wrap_bf16=elem == BF)
    optimized, report = optimize_and_compare(model)
    wrap = ["Cast"] if elem == BF else []
    assert ops(optimized) == wrap + ["Cast", "LayerNormalization", "Cast"] + wrap
    ln = next(nd for nd in optimized.graph.node if nd.op_type == "LayerNormalization")
    assert ln.input[0] == "xf" and init(optimized, ln.input[1]).dtype == np.float32


@pytest.mark.parametrize("affine", ["affine", "bare"])
def test_torchscript_half_layernorm(affine):
    """`model.half()` exported at opset <= 16: mean and Sub in fp16, Cast(d, double), variance and Div in
    double, Cast(fp16), then Mul(γ) and Add(β) in fp16 (seen in benchmarks/cache/bert_base_op12_fp16)."""
    gamma, beta = AFFINES[affine]
    optimized, report, ln = fused(ln_model(elem=H, mixed="torch_half", gamma=gamma, beta=beta, eps=1e-12))
    assert ops(optimized) == ["LayerNormalization"]
    assert ln.input[0] == "x" and attrs(ln)["stash_type"] == 1 and attrs(ln)["epsilon"] == pytest.approx(1e-12)
    assert init(optimized, ln.input[1]).dtype == np.float16


def test_double_statistics_of_an_fp32_input_are_not_narrowed():
    """fp32 x with Cast(d, double) statistics: fused statistics would be fp32, less precise than the graph."""
    unchanged(ln_model(elem=F, mixed="torch_half"), "computed in double")


def test_mixed_precision_two_cast_nodes():
    """The mean and the difference each read their own Cast(x, float) (a second cast from type promotion)."""
    optimized, _, ln = fused(ln_model(elem=H, mixed="before", two_casts=True))
    assert ops(optimized) == ["LayerNormalization"] and ln.input[0] == "x"


def test_fp32_statistics_of_a_cast_without_cast_back():
    """Cast(x16, float) -> LN in fp32 whose output stays fp32: the LN fuses on the Cast's output."""
    nodes = [n("Cast", ["x16"], "x", to=F)]
    base = ln_model()
    model = make_model(nodes + list(base.graph.node), [("x16", H, SHAPE)], [("y", F, SHAPE)],
                       [(t.name, onnx.numpy_helper.to_array(t)) for t in base.graph.initializer], opset=13)
    optimized, _, ln = fused(model)
    assert ops(optimized) == ["Cast", "LayerNormalization"] and ln.input[0] == "x"


@pytest.mark.parametrize("axes,shape,gamma_shape", [
    ((-2, -1), [2, 5, 16], [5, 16]),
    ((1, 2), [2, 5, 16], [5, 16]),
    ((2, 3), [2, 3, 5, 16], [1, 5, 16]),
    ((-1, -2), [2, 5, 16], [16]),  # γ broadcast over axis -2: expanded to [5, 16]
], ids=["neg", "positive", "rank4_leading_one", "gamma_broadcast"])
def test_several_trailing_axes(axes, shape, gamma_shape):
    gamma = RNG.uniform(0.5, 1.5, gamma_shape).astype(np.float32)
    beta = RNG.uniform(-0.5, 0.5, gamma_shape).astype(np.float32)
    optimized, _, ln = fused(ln_model(axes=axes, shape=shape, gamma=gamma, beta=beta))
    assert ops(optimized) == ["LayerNormalization"]
    assert attrs(ln)["axis"] == -2
    assert init(optimized, ln.input[1]).shape == tuple(shape[-2:])


def unknown_rank(**kwargs):
    """x = Reshape(x_in, s) with s of unknown length: shape inference cannot tell x's rank."""
    base = ln_model(**kwargs)
    nodes = [n("Reshape", ["x_in", "s"], "x"), *base.graph.node]
    return make_model(nodes, [("x_in", F, SHAPE), ("s", T.INT64, ["k"])], [("y", F, ["a", "b", "c"])],
                      [(t.name, onnx.numpy_helper.to_array(t)) for t in base.graph.initializer], opset=13)


def test_unknown_rank_negative_axes_fuse():
    model = unknown_rank()
    optimized, _ = fuser.optimize(model)
    assert ops(optimized) == ["Reshape", "LayerNormalization"]
    feeds = {"x_in": random_feeds(model)["x_in"], "s": np.asarray(SHAPE, dtype=np.int64)}
    np.testing.assert_allclose(run(optimized, feeds)[0], run(model, feeds)[0], atol=1e-5 * 4, rtol=0)


@pytest.mark.parametrize("kwargs,reason", [
    ({"axes": (2,)}, "the rank of 'x' is unknown"),
    ({"gamma": None, "beta": None}, "is not static"),
], ids=["positive_axes", "no_affine_unknown_size"])
def test_unknown_rank_refusals(kwargs, reason):
    optimized, report = fuser.optimize(unknown_rank(**kwargs))
    assert "LayerNormalization" not in ops(optimized)
    assert any(reason in r for r in reasons(report)), reasons(report)


def test_gamma_with_leading_ones():
    gamma = GAMMA.reshape(1, 1, 16)
    optimized, _, ln = fused(ln_model(gamma=gamma, beta=BETA.reshape(1, 16)))
    assert ops(optimized) == ["LayerNormalization"]
    assert init(optimized, ln.input[1]).shape == (16,) and init(optimized, ln.input[2]).shape == (16,)


def test_convnext_channels_first_between_transposes():
    """ConvNeXt: Transpose(NCHW -> NHWC) -> LN over C (last axis) -> Transpose back; the LN fuses, the
    Transposes stay."""
    base = ln_model(shape=[2, 3, 4, 16], eps=1e-6)
    nodes = [n("Transpose", ["x_nchw"], "x", perm=[0, 2, 3, 1]), *base.graph.node,
             n("Transpose", ["y"], "y_nchw", perm=[0, 3, 1, 2])]
    model = make_model(nodes, [("x_nchw", F, [2, 16, 3, 4])], [("y_nchw", F, [2, 16, 3, 4])],
                       [(t.name, onnx.numpy_helper.to_array(t)) for t in base.graph.initializer], opset=13)
    optimized, _, ln = fused(model)
    assert ops(optimized) == ["Transpose", "LayerNormalization", "Transpose"]
    assert attrs(ln)["axis"] == -1 and attrs(ln)["epsilon"] == pytest.approx(1e-6)


def test_two_stacked_layernorms():
    base = ln_model()
    nodes = list(base.graph.node)
    renamed = [helper.make_node(nd.op_type, [("x2" if i == "x" else i + "_2") if i not in ("gamma", "beta") else i
                                             for i in nd.input], [o + "_2" for o in nd.output],
                                **{a.name: helper.get_attribute_value(a) for a in nd.attribute}) for nd in nodes]
    renamed.insert(0, n("Relu", ["y"], "x2"))
    model = make_model(nodes + renamed, [("x", F, SHAPE)], [("y_2", F, SHAPE)],
                       [(t.name, onnx.numpy_helper.to_array(t)) for t in base.graph.initializer], opset=13)
    optimized, report = optimize_and_compare(model)
    assert ops(optimized) == ["LayerNormalization", "Relu", "LayerNormalization"]
    assert len(report.fusions) == 2


def test_tail_value_used_elsewhere_fuses_up_to_it():
    """γ·n is also a graph output: the LN fuses with γ (β = 0) and the Add(β) stays."""
    optimized, report = optimize_and_compare(ln_model(extra_output="scaled"))
    assert ops(optimized) == ["LayerNormalization", "Add", "Neg"]
    assert any("used outside the match" in r for r in reasons(report))


# --------------------------------------------------------------------------------- must not fire
def unchanged(model, report_reason, rule_prefix="layernorm", **options):
    optimized, report = optimize_and_compare(model, **options)
    assert ops(optimized) == ops(model), ops(optimized)
    assert any(report_reason in r for r in reasons(report, rule_prefix)), reasons(report)
    assert not report.fusions
    return report


@pytest.mark.parametrize("opset", [13, 18])
def test_non_trailing_axes(opset):
    unchanged(ln_model(axes=(1,), opset=opset), "not the trailing axes")


def test_non_trailing_axes_several():
    unchanged(ln_model(axes=(0, 1), gamma=None, beta=None), "not the trailing axes")


def test_different_axes_in_mean_and_variance():
    model = ln_model(opset=13, gamma=None, beta=None)
    for node in model.graph.node:
        if node.output[0] == "var":
            node.attribute[0].CopyFrom(helper.make_attribute("axes", [-2, -1]))
    unchanged(model, "different axes")


def test_non_constant_eps():
    unchanged(ln_model(eps_input=True), "eps is not a constant")


@pytest.mark.parametrize("which", ["gamma", "beta"])
def test_affine_varying_along_a_non_normalized_axis(which):
    """γ (or β) of shape [5, 16] with only the last axis normalized is not a LayerNorm scale: it stays a
    Mul (Add) after the fused normalization, and the report says why it was not absorbed."""
    wide = RNG.uniform(0.5, 1.5, (5, 16)).astype(np.float32)
    model = ln_model(gamma=wide if which == "gamma" else GAMMA, beta=wide if which == "beta" else BETA)
    optimized, report = optimize_and_compare(model)
    expected = ["LayerNormalization", "Mul", "Add"] if which == "gamma" else ["LayerNormalization", "Add"]
    assert ops(optimized) == expected
    assert any("does not broadcast over the normalized axes only" in r for r in reasons(report))


@pytest.mark.parametrize("value", ["d", "mean", "std"])
def test_interior_value_used_elsewhere(value):
    unchanged(ln_model(extra_output=value), "used outside the match")


def test_mean_of_a_different_tensor():
    unchanged(ln_model(mean_of="other"), "the mean is taken of 'other'")


def test_upgrade_disabled():
    unchanged(ln_model(opset=13), "upgrades are disabled", allow_upgrade=False)


def test_target_opset_too_low():
    unchanged(ln_model(opset=13), "raise it: --target-opset 17 / target_opset=17", target_opset=16)


def test_double_is_not_fused():
    """LayerNormalization's statistics are at most fp32: fusing a double LN would lose precision."""
    unchanged(ln_model(elem=D), "only fp32/fp16/bf16")


def test_rule_listing():
    from fuser.rules import ALL_RULES

    names = [r.name for r in ALL_RULES]
    ln = [i for i, r in enumerate(ALL_RULES) if r.family == "layernorm"]
    rms = [i for i, r in enumerate(ALL_RULES) if r.family == "rmsnorm"]
    assert max(ln) < min(rms) < names.index("hardswish")
    assert all(ALL_RULES[i].emits == "LayerNormalization" and ALL_RULES[i].min_opset == 17 for i in ln)


# ------------------------------------------------------------------------------------- TensorRT
TRT_CASES = {
    "fp32": lambda: ln_model(),
    "fp16": lambda: ln_model(elem=H),
    "bf16": lambda: ln_model(elem=BF, opset=18, wrap_bf16=True),
    "mixed_fp16": lambda: ln_model(elem=H, mixed="before"),
    "torch_half": lambda: ln_model(elem=H, mixed="torch_half"),
    "two_axes_bare": lambda: ln_model(axes=(-2, -1), gamma=None, beta=None),
}


@pytest.mark.parametrize("case", list(TRT_CASES))
def test_fused_model_builds_with_tensorrt_rtx(case, monkeypatch):
    """The fused models parse and build with TensorRT-RTX (which builds on a CPU-only machine)."""
    pytest.importorskip("tensorrt_rtx")
    from fuser.trt import BuildOptions, build_engine
    from fuser.trt.backend import ENV_VAR

    monkeypatch.setenv(ENV_VAR, "tensorrt_rtx")
    optimized, _ = fuser.optimize(TRT_CASES[case](), validate=False)
    assert ops(optimized).count("LayerNormalization") == 1
    result = build_engine(optimized, BuildOptions(opt_level=0))
    assert result.engine and "layernorm-fp16" not in [w.id for w in result.warnings]  # decomposed fp16 warns
