"""RMSNorm -> RMSNormalization (opset 23): only with a target opset >= 23, else a near miss and no change.

Spellings: `Pow(x, 2) | Mul(x, x) -> ReduceMean -> Add(eps) -> Sqrt -> Div(x, .) | Mul(x, Reciprocal(.))
| Mul(x, Div(1, .)) -> Mul(γ)`, and without γ; axes as attribute (opset 13) or input (18); fp32, fp16,
bf16; mixed precision as LLaMA (one Cast(x, float), cast back, then γ) and T5 (two Casts) write it, and
the scale in fp32 before the cast back (autocast). onnxruntime 1.31's CPU provider runs RMSNormalization
at opset 23 in fp32 and fp16 (numerics below); in bf16 it does not (it expands the function into bf16
Muls it has no kernel for), so bf16 is checked for structure only.
"""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper

import fuser
from builders import const, make_model, ops, optimize_and_compare

F, H, BF = T.FLOAT, T.FLOAT16, T.BFLOAT16
NP = {F: np.float32, H: np.float16, BF: ml_dtypes.bfloat16}
SHAPE = [2, 5, 16]
RNG = np.random.default_rng(11)
GAMMA = RNG.uniform(0.5, 1.5, 16).astype(np.float32)
OPSET23 = {"target_opset": 23}


def n(op_type, inputs, output, **attrs):
    return helper.make_node(op_type, inputs, [output], **attrs)


def rms_model(*, opset=13, elem=F, shape=SHAPE, axes=(-1,), square="pow", inverse="div", gamma=GAMMA,
              eps=1e-6, constant_nodes=True, rank1=False, mixed=None, square_of="x", eps_input=False,
              extra_output=None, wrap_bf16=False):
    """A decomposed RMSNorm x -> y. mixed: None | "llama" (one Cast(x, float), cast back, then γ) | "t5" (two
    Casts of x) | "after" (γ in fp32, then the cast back)."""
    stat = F if mixed else elem
    sdt = NP[stat]
    nodes, inits = [], []
    scalars = {"eps": eps, **({"two": 2.0} if square == "pow" else {}),
               **({"one": 1.0} if inverse == "div_one" else {})}
    if eps_input:
        scalars.pop("eps")
    values = {k: np.asarray([v] if rank1 else v, dtype=sdt) for k, v in scalars.items()}
    if constant_nodes:
        nodes += [const(k, v, sdt) for k, v in values.items()]
    else:
        inits += list(values.items())
    xs = xd = "x"
    if mixed:
        nodes.append(n("Cast", ["x"], "xf", to=F))
        xs = xd = "xf"
        if mixed == "t5":
            nodes.append(n("Cast", ["x"], "xf2", to=F))
            xd = "xf2"
    if square_of != "x":
        xs = square_of
    nodes.append(n("Pow", [xs, "two"], "sq") if square == "pow" else n("Mul", [xs, xs], "sq"))
    if opset >= 18:
        inits.append(("axes", np.asarray(axes, dtype=np.int64)))
        nodes.append(n("ReduceMean", ["sq", "axes"], "ms", keepdims=1))
    else:
        nodes.append(n("ReduceMean", ["sq"], "ms", axes=list(axes), keepdims=1))
    nodes += [n("Add", ["ms", "eps"], "mse"), n("Sqrt", ["mse"], "rms")]
    if inverse == "div":
        nodes.append(n("Div", [xd, "rms"], "norm"))
    elif inverse == "reciprocal":  # torch.rsqrt
        nodes += [n("Reciprocal", ["rms"], "inv"), n("Mul", [xd, "inv"], "norm")]
    else:
        nodes += [n("Div", ["one", "rms"], "inv"), n("Mul", ["inv", xd], "norm")]
    cur = "norm"
    if mixed in ("llama", "t5"):
        nodes.append(n("Cast", [cur], "normc", to=elem))
        cur = "normc"
    if gamma is not None:
        inits.append(("gamma", np.asarray(gamma, dtype=NP[F if mixed == "after" else elem])))
        nodes.append(n("Mul", ["gamma", cur], "scaled"))  # LLaMA: weight * hidden_states
        cur = "scaled"
    if mixed == "after":
        nodes.append(n("Cast", [cur], "back", to=elem))
    nodes[-1].output[0] = "y"
    inputs, outputs = [("x", elem, shape)], [("y", elem, shape)]
    if eps_input:
        inputs.append(("eps", stat, [1]))
    if square_of != "x":
        inputs.append((square_of, elem, shape))
    if extra_output:
        nodes.append(n("Neg", [extra_output], "extra"))
        outputs.append(("extra", stat, [None] * len(shape)))
    if wrap_bf16:  # onnxruntime cannot feed bf16 from numpy: fp32 in and out
        nodes = [n("Cast", ["x_in"], "x", to=elem)] + nodes + [n("Cast", ["y"], "y_out", to=F)]
        inputs[0], outputs[0] = ("x_in", F, shape), ("y_out", F, shape)
    return make_model(nodes, inputs, outputs, inits, opset=opset)


def attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def init(model, name):
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def reasons(report, prefix="rmsnorm"):
    return [m.reason for m in report.near_misses if m.rule.startswith(prefix)]


def fused(model, **options):
    optimized, report = optimize_and_compare(model, **OPSET23, **options)
    rms = [node for node in optimized.graph.node if node.op_type == "RMSNormalization"]
    assert len(rms) == 1, ops(optimized)
    return optimized, report, rms[0]


# ----------------------------------------------------------------------------- the opset gate
def test_default_target_opset_leaves_it_and_says_so():
    model = rms_model()
    optimized, report = optimize_and_compare(model)
    assert ops(optimized) == ops(model)
    assert not report.fusions
    assert any("needs opset 23" in r and "--target-opset 23" in r for r in reasons(report)), report.near_misses
    assert optimized.opset_import[0].version == 13


def test_upgrades_disabled():
    model = rms_model(opset=18)
    optimized, report = optimize_and_compare(model, allow_upgrade=False, **OPSET23)
    assert ops(optimized) == ops(model)
    assert any("upgrades are disabled" in r for r in reasons(report))


# ------------------------------------------------------------------------------------------ fuse
@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("inverse", ["div", "reciprocal", "div_one"])
@pytest.mark.parametrize("opset", [13, 18])
def test_spellings_fuse(square, inverse, opset):
    optimized, report, rms = fused(rms_model(opset=opset, square=square, inverse=inverse))
    assert ops(optimized) == ["RMSNormalization"]
    assert attrs(rms) == {"axis": -1, "epsilon": pytest.approx(1e-6), "stash_type": 1}
    np.testing.assert_array_equal(init(optimized, rms.input[1]), GAMMA)
    assert optimized.opset_import[0].version == 23
    assert [f.family for f in report.fusions] == ["rmsnorm"]


@pytest.mark.parametrize("constant_nodes", [True, False])
@pytest.mark.parametrize("rank1", [False, True])
def test_constants_as_nodes_or_initializers(constant_nodes, rank1):
    optimized, _, _ = fused(rms_model(constant_nodes=constant_nodes, rank1=rank1))
    assert ops(optimized) == ["RMSNormalization"]


@pytest.mark.parametrize("gamma", [None, np.ones(16)], ids=["no_gamma", "gamma_one"])
def test_without_or_trivial_gamma(gamma):
    optimized, _, rms = fused(rms_model(gamma=gamma))
    assert ops(optimized) == ["RMSNormalization"]
    scale = init(optimized, rms.input[1])
    assert scale.dtype == np.float32 and scale.shape == (16,)
    np.testing.assert_array_equal(scale, np.ones(16))


def test_two_trailing_axes():
    gamma = RNG.uniform(0.5, 1.5, (5, 16)).astype(np.float32)
    optimized, _, rms = fused(rms_model(axes=(1, 2), gamma=gamma))
    assert attrs(rms)["axis"] == -2 and init(optimized, rms.input[1]).shape == (5, 16)


def test_fp16():
    optimized, _, rms = fused(rms_model(elem=H))
    assert ops(optimized) == ["RMSNormalization"] and init(optimized, rms.input[1]).dtype == np.float16


@pytest.mark.parametrize("mixed", ["llama", "t5"])
@pytest.mark.parametrize("gamma", [GAMMA, None], ids=["gamma", "no_gamma"])
def test_mixed_precision_fp16(mixed, gamma):
    """LLaMA: x.to(float32) -> pow/mean/rsqrt -> x * . -> .to(fp16) -> weight * .; T5 casts x twice."""
    optimized, report, rms = fused(rms_model(elem=H, mixed=mixed, gamma=gamma, inverse="reciprocal"))
    assert ops(optimized) == ["RMSNormalization"]
    assert rms.input[0] == "x" and attrs(rms)["stash_type"] == 1
    assert init(optimized, rms.input[1]).dtype == np.float16


def test_mixed_precision_bf16_structure():
    """bf16 RMSNormalization does not run on onnxruntime's CPU provider: structure only."""
    model = rms_model(elem=BF, mixed="llama", inverse="reciprocal", wrap_bf16=True)
    optimized, report = fuser.optimize(model, **OPSET23)
    onnx.checker.check_model(optimized, full_check=True)
    assert ops(optimized) == ["Cast", "RMSNormalization", "Cast"]
    rms = optimized.graph.node[1]
    assert rms.input[0] == "x" and init(optimized, rms.input[1]).dtype == ml_dtypes.bfloat16


def test_scale_in_fp32_then_cast_back():
    """The scale applied in fp32 before the cast back: fused in fp32 between the Casts (exact)."""
    optimized, _, rms = fused(rms_model(elem=H, mixed="after"))
    assert ops(optimized) == ["Cast", "RMSNormalization", "Cast"]
    assert rms.input[0] == "xf" and init(optimized, rms.input[1]).dtype == np.float32


def test_layernorm_is_not_taken_for_an_rmsnorm():
    """A LayerNorm's (x - mean) / sqrt(var + eps) is an RMSNorm of x - mean: the LayerNorm rules run first."""
    import test_rule_layernorm as ln

    optimized, report = optimize_and_compare(ln.ln_model(), **OPSET23)
    assert ops(optimized) == ["LayerNormalization"]
    assert [f.family for f in report.fusions] == ["layernorm"]


# --------------------------------------------------------------------------------- must not fire
def unchanged(model, reason, **options):
    optimized, report = optimize_and_compare(model, **{**OPSET23, **options})
    assert ops(optimized) == ops(model), ops(optimized)
    assert any(reason in r for r in reasons(report)), reasons(report)
    assert not report.fusions
    return report


def test_non_trailing_axes():
    unchanged(rms_model(axes=(1,)), "not the trailing axes")


def test_non_constant_eps():
    unchanged(rms_model(eps_input=True), "eps is not a constant")


def test_square_of_a_different_tensor():
    unchanged(rms_model(square_of="other"), "the mean square is taken of 'other'")


@pytest.mark.parametrize("value", ["ms", "rms"])
def test_interior_value_used_elsewhere(value):
    unchanged(rms_model(extra_output=value), "used outside the match")


def test_gamma_varying_along_a_non_normalized_axis():
    """γ [5, 16] with only the last axis normalized: the normalization fuses, the Mul stays."""
    model = rms_model(gamma=RNG.uniform(0.5, 1.5, (5, 16)).astype(np.float32))
    optimized, report = optimize_and_compare(model, **OPSET23)
    assert ops(optimized) == ["RMSNormalization", "Mul"]
    assert any("does not broadcast over the normalized axes only" in r for r in reasons(report))


@pytest.mark.parametrize("case", ["fp32", "llama_fp16"])
def test_fused_model_builds_with_tensorrt_rtx(case, monkeypatch):
    """TensorRT-RTX's parser takes opset-23 RMSNormalization and builds it on a CPU-only machine."""
    pytest.importorskip("tensorrt_rtx")
    from fuser.trt import BuildOptions, build_engine
    from fuser.trt.backend import ENV_VAR

    monkeypatch.setenv(ENV_VAR, "tensorrt_rtx")
    model = rms_model() if case == "fp32" else rms_model(elem=H, mixed="llama", inverse="reciprocal")
    optimized, _ = fuser.optimize(model, validate=False, **OPSET23)
    assert ops(optimized) == ["RMSNormalization"]
    assert build_engine(optimized, BuildOptions(opt_level=0)).engine
