"""Conv + per-channel elementwise: fold a constant scale into the weights, a constant shift into the bias.

    Mul(Conv(x, W, b?), c)  -> Conv(x, W * c, b * c)
    Div(Conv(x, W, b?), c)  -> Conv(x, W / c, b / c)
    Add(Conv(x, W, b?), c)  -> Conv(x, W, b + c)
    Sub(Conv(x, W, b?), c)  -> Conv(x, W, b - c)
    Sub(c, Conv(x, W, b?))  -> Conv(x, -W, c - b)

(and the same for ConvTranspose; a missing bias counts as 0 and is created). Frozen BatchNorm in
DETR-family backbones exports as `Conv -> Mul([1,C,1,1]) -> Add([1,C,1,1])`: the Mul folds, then the Add
folds into the new Conv.

`c` must be a constant that broadcasts over the output channels only: a scalar, [1], [C,1,1],
[1,C,1,1] (for a conv of output rank r: rank <= r, and once left-padded to rank r every dim is 1 except
dim 1, which is 1 or C). Anything else would broadcast over the batch or spatial dims or change the
output's shape — refused with the reason. `Div(c, Conv)` is 1/conv, not affine: the pattern does not
match it. Arithmetic in float64, cast back to the weights' dtype; new initializers, never in place.
"""

from __future__ import annotations

import numpy as np

from fuser.matcher import Match
from fuser.pattern import Const, op
from fuser.rule import Refusal, Rule

from .conv_bn import CONV, conv_weights, emit_conv, is_float, out_channels, scale_output_channels

c = Const(name="c")
_pattern = (op.Mul(CONV, c, _name="ew") | op.Div(CONV, c, _name="ew") | op.Add(CONV, c, _name="ew")
            | op.Sub(CONV, c, _name="ew") | op.Sub(c, CONV, _name="ew"))


def _per_channel(m: Match, W: np.ndarray) -> np.ndarray | Refusal:
    """The constant as one float64 value per output channel, or why it is not per-channel."""
    conv, value = m.node("conv"), m.const("c")
    rank, cout = W.ndim, out_channels(conv, W)
    if not is_float(value):
        return Refusal(f"the constant of {m.node('ew').op_type} is not a float tensor")
    if value.ndim > rank:
        return Refusal(f"constant of shape {list(value.shape)} has a higher rank than the {conv.op_type} "
                       f"output (rank {rank}): broadcasting would change the output shape")
    padded = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for k, d in enumerate(padded) if k != 1) or padded[1] not in (1, cout):
        return Refusal(f"constant of shape {list(value.shape)} does not broadcast over the {cout} output "
                       f"channels only (rank-{rank} {conv.op_type} output)")
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (cout,))


def _check(m: Match) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | Refusal:
    """(W, b, c per output channel) when the constant folds into the conv, else why not."""
    weights = conv_weights(m)
    if isinstance(weights, Refusal):
        return weights
    cvec = _per_channel(m, weights[0])
    if isinstance(cvec, Refusal):
        return cvec
    if m.node("ew").op_type == "Div" and np.any(cvec == 0):
        return Refusal("division by a constant with zeros")
    return (*weights, cvec)


def _rewrite(m: Match, b, found: tuple[np.ndarray, np.ndarray | None, np.ndarray]) -> str:
    conv, ew = m.node("conv"), m.node("ew")
    W, B, cvec = found
    cout = cvec.shape[0]
    bias = np.zeros(cout) if B is None else B.astype(np.float64).reshape(-1)
    weights = W.astype(np.float64)
    if ew.op_type in ("Mul", "Div"):
        s = cvec if ew.op_type == "Mul" else 1.0 / cvec
        weights, bias = scale_output_channels(conv, W, s), bias * s
    elif ew.op_type == "Add":
        bias = bias + cvec
    elif ew.input[0] == m["c"]:  # Sub(c, conv) = -conv + c
        weights, bias = -weights, cvec - bias
    else:
        bias = bias - cvec
    return emit_conv(m, b, weights, bias, W.dtype)


CONV_ELEMENTWISE = Rule(
    name="conv-elementwise",
    family="conv-elementwise",
    emits="Conv",
    min_opset=1,
    pattern=_pattern,
    check=_check,
    rewrite=_rewrite,
    spellings=("Conv * c", "Conv / c", "Conv + c", "Conv - c", "c - Conv",
               "c: scalar, [1], [C,1,1], [1,C,1,1] (per output channel)", "Conv or ConvTranspose"),
    doc="Mul/Div/Add/Sub(Conv(x, W, b), per-channel constant c) -> Conv(x, W', b')",
)
