"""Conv + BatchNormalization: fold an inference-mode BatchNormalization into the Conv before it.

    BatchNormalization(Conv(x, W, b?), scale, bias, mean, var)           -> Conv(x, W', b')
    BatchNormalization(ConvTranspose(x, W, b?), scale, bias, mean, var)  -> ConvTranspose(x, W', b')

with, per output channel o,  s[o] = scale[o] / sqrt(var[o] + epsilon):

    W'[o] = W[o] * s[o]        b'[o] = (b[o] - mean[o]) * s[o] + bias[o]     (b = 0 when absent)

Conv weights are [Cout, Cin/group, k...] (output channel on axis 0); ConvTranspose weights are
[Cin, Cout/group, k...], so output channel `g * Cout/group + j` is axis 1 index `j` of the rows of
group `g`. The arithmetic runs in float64 and is cast back to the weights' dtype (fp16 and bf16
models too). W', b' are new initializers: the old weight may be shared with another Conv, so it is
never edited in place (dead-code elimination drops it when nothing else reads it).

Refused, with a reason: a BatchNormalization in training mode (training_mode=1; its running-stat
outputs used; before opset 14, any output beyond Y, which the spec and onnxruntime read as training
mode), spatial=0 (opset < 9), non-constant weights or statistics, statistics whose size is not
the Conv's output channels. An activation after the BatchNormalization stays a standard op: TensorRT
fuses Conv+Relu itself. Only for `--target onnxruntime`, `FUSED_CONV` below then folds
Conv + activation into `com.microsoft.FusedConv`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from fuser.graph import attribute
from fuser.matcher import Match
from fuser.pattern import Var, op
from fuser.rule import Refusal, Rule

x, w, b = Var("x"), Var("w"), Var("b")

#: Conv or ConvTranspose, with or without a bias; the node is named "conv".
CONV = (op.Conv(x, w, b, _name="conv") | op.Conv(x, w, _name="conv")
        | op.ConvTranspose(x, w, b, _name="conv") | op.ConvTranspose(x, w, _name="conv"))


# ------------------------------------------------------------------ helpers shared with conv_elementwise
def is_float(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" or array.dtype.name == "bfloat16"


def conv_weights(m: Match) -> tuple[np.ndarray, np.ndarray | None] | Refusal:
    """(W, b or None) of the matched conv, or why they cannot be folded into."""
    conv = m.node("conv")
    W = m.const("w")
    if W is None:
        return Refusal(f"{conv.op_type} weight '{m['w']}' is not a constant")
    if not is_float(W) or W.ndim < 3:
        return Refusal(f"{conv.op_type} weight '{m['w']}' is not a float tensor of rank >= 3")
    B = None
    if m.has("b"):
        B = m.const("b")
        if B is None:
            return Refusal(f"{conv.op_type} bias '{m['b']}' is not a constant")
    group = int(attribute(conv, "group", 1))
    if conv.op_type == "ConvTranspose" and (group < 1 or W.shape[0] % group):
        return Refusal(f"ConvTranspose weight rows {W.shape[0]} do not divide into group={group}")
    cout = out_channels(conv, W)
    if B is not None and B.size != cout:
        return Refusal(f"{conv.op_type} bias has {B.size} values for {cout} output channels")
    return W, B


def out_channels(conv: onnx.NodeProto, W: np.ndarray) -> int:
    if conv.op_type == "ConvTranspose":
        return W.shape[1] * int(attribute(conv, "group", 1))
    return W.shape[0]


def scale_output_channels(conv: onnx.NodeProto, W: np.ndarray, s: np.ndarray) -> np.ndarray:
    """W * s along the output channels (float64 in, float64 out); `s` has one value per output channel."""
    W = W.astype(np.float64)
    k = W.ndim - 2
    if conv.op_type != "ConvTranspose":
        return W * s.reshape((-1,) + (1,) * (k + 1))
    group = int(attribute(conv, "group", 1))
    cin, cout_g = W.shape[0], W.shape[1]
    grouped = W.reshape((group, cin // group, cout_g) + W.shape[2:])
    return (grouped * s.reshape((group, 1, cout_g) + (1,) * k)).reshape(W.shape)


def emit_conv(m: Match, b, W: np.ndarray, B: np.ndarray, dtype) -> str:
    """A copy of the matched conv (same attributes) reading new initializers W', b'."""
    conv = m.node("conv")
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    w_name = b.const(W.astype(dtype), "weight")
    b_name = b.const(B.astype(dtype), "bias")
    return b.op(conv.op_type, m["x"], w_name, b_name, **attrs)


# --------------------------------------------------------------------------------------- the rule
_bn = op.BatchNormalization(CONV, Var("scale"), Var("bn_bias"), Var("mean"), Var("var"), _name="bn")


def _bn_attr(m: Match, name: str):
    bn = m.node("bn")
    value = attribute(bn, name)
    return m.facts.attribute_default(bn, name) if value is None else value


def _check(m: Match) -> tuple[np.ndarray, np.ndarray | None] | Refusal:
    """(W, b) of the conv when the BatchNormalization folds into it, else why not."""
    bn = m.node("bn")
    if _bn_attr(m, "training_mode") == 1:
        return Refusal("BatchNormalization has training_mode=1 (batch statistics): only inference mode folds")
    if _bn_attr(m, "spatial") == 0:
        return Refusal("BatchNormalization has spatial=0 (per-activation statistics): not a per-channel affine")
    extra = [(k, v) for k, v in enumerate(bn.output[1:], start=1) if v]
    if extra and m.graph.opset() < 14:  # before training_mode existed, extra outputs meant training mode
        return Refusal(f"BatchNormalization lists {len(extra) + 1} outputs: at opset {m.graph.opset()} that is "
                       "training mode (batch statistics); only the 1-output inference form folds")
    for k, value in extra:
        if m.graph.uses(value) or m.graph.is_graph_output(value):
            return Refusal(f"BatchNormalization output {k} '{value}' (training statistics) is used")
    weights = conv_weights(m)
    if isinstance(weights, Refusal):
        return weights
    cout = out_channels(m.node("conv"), weights[0])
    for name in ("scale", "bn_bias", "mean", "var"):
        value = m.const(name)
        if value is None:
            return Refusal(f"BatchNormalization {name} '{m[name]}' is not a constant")
        if not is_float(value):
            return Refusal(f"BatchNormalization {name} is not a float tensor")
        if value.size != cout:
            return Refusal(f"BatchNormalization {name} has {value.size} values for {cout} output channels")
    var = m.const("var").astype(np.float64).reshape(-1) + float(_bn_attr(m, "epsilon"))
    if np.any(var <= 0):
        return Refusal("BatchNormalization var + epsilon is not positive")
    return weights


def _rewrite(m: Match, b, weights: tuple[np.ndarray, np.ndarray | None]) -> str:
    conv = m.node("conv")
    W, B = weights
    f64 = {n: m.const(n).astype(np.float64).reshape(-1) for n in ("scale", "bn_bias", "mean", "var")}
    s = f64["scale"] / np.sqrt(f64["var"] + float(_bn_attr(m, "epsilon")))
    bias = np.zeros_like(s) if B is None else B.astype(np.float64).reshape(-1)
    return emit_conv(m, b, scale_output_channels(conv, W, s), (bias - f64["mean"]) * s + f64["bn_bias"],
                     W.dtype)


CONV_BN = Rule(
    name="conv-bn",
    family="conv-bn",
    emits="Conv",
    min_opset=1,
    pattern=_bn,
    check=_check,
    rewrite=_rewrite,
    spellings=("BatchNormalization(Conv(x, W, b?))", "BatchNormalization(ConvTranspose(x, W, b?))",
               "inference mode only: training_mode=0 (before opset 14: a single output)"),
    doc="BatchNormalization(Conv(x, W, b)) -> Conv(x, W * s, (b - mean) * s + beta), s = gamma / sqrt(var + eps)",
)


# ------------------------------------------------------------- onnxruntime only: Conv + activation
_plain_conv = op.Conv(x, w, b, _name="conv") | op.Conv(x, w, _name="conv")
lo, hi = Var("lo"), Var("hi")
_activation = (op.Relu(_plain_conv, _name="act") | op.Sigmoid(_plain_conv, _name="act")
               | op.Tanh(_plain_conv, _name="act") | op.LeakyRelu(_plain_conv, _name="act")
               | op.HardSigmoid(_plain_conv, _name="act") | op.Clip(_plain_conv, lo, hi, _name="act")
               | op.Clip(_plain_conv, lo, _name="act") | op.Clip(_plain_conv, _name="act"))
MS_DOMAIN = "com.microsoft"


def _activation_params(m: Match) -> list[float] | None:
    act = m.node("act")
    if act.op_type == "LeakyRelu":
        return [float(attribute(act, "alpha", 0.01))]
    if act.op_type == "HardSigmoid":
        return [float(attribute(act, "alpha", 0.2)), float(attribute(act, "beta", 0.5))]
    if act.op_type == "Clip":
        bounds = [m.const(n) if m.has(n) else None for n in ("lo", "hi")]
        big = float(np.finfo(np.float32).max)  # an absent bound is unbounded
        return [-big if bounds[0] is None else float(bounds[0].reshape(-1)[0]),
                big if bounds[1] is None else float(bounds[1].reshape(-1)[0])]
    return None


def _fused_check(m: Match) -> Refusal | None:
    elem = m.facts.elem_type(m["w"]) if m["w"] else None
    if elem != onnx.TensorProto.FLOAT:
        return Refusal("com.microsoft.FusedConv has float32 kernels only; this Conv is not float32")
    for n in ("lo", "hi"):
        if m.has(n):
            value = m.const(n)
            if value is None or value.size != 1:
                return Refusal(f"Clip {('min', 'max')[n == 'hi']} is not a one-element constant")
    if MS_DOMAIN in m.graph.opsets and m.graph.opset(MS_DOMAIN) != 1:
        return Refusal(f"the model imports {MS_DOMAIN} at version {m.graph.opset(MS_DOMAIN)}; FusedConv is "
                       "version 1")
    return None


def _fused_rewrite(m: Match, b, _) -> str:
    conv, act = m.node("conv"), m.node("act")
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    out = b.op("FusedConv", m["x"], m["w"], m["b"] if m.has("b") else None, domain=MS_DOMAIN,
               activation=act.op_type, activation_params=_activation_params(m), **attrs)
    if MS_DOMAIN not in b.graph.opsets:
        b.graph.set_opset(1, MS_DOMAIN)
    return out


FUSED_CONV = Rule(
    name="fused-conv",
    family="conv-activation",
    emits="com.microsoft.FusedConv",
    min_opset=1,
    pattern=_activation,
    check=_fused_check,
    rewrite=_fused_rewrite,
    targets=("onnxruntime",),
    spellings=("Relu|Sigmoid|Tanh|LeakyRelu|HardSigmoid|Clip(Conv(x, W, b?))",),
    doc="Act(Conv(x, W, b)) -> com.microsoft.FusedConv(x, W, b, activation=Act) (onnxruntime only, fp32)",
)
