"""HardSigmoid: relu6(x + 3) / 6 -> HardSigmoid(x, alpha=1/6, beta=0.5) (opset 6).

    Div(relu6(Add(x, 3)), 6)      -> HardSigmoid(x, 1/6, 0.5)
    Mul(relu6(Add(x, 3)), 1/6)    -> HardSigmoid(x, 1/6, 0.5)

Exact: clamp(x + 3, 0, 6) / 6 == clamp(x / 6 + 0.5, 0, 1). Runs after the HardSwish rule so a gate that
multiplies its own input becomes one HardSwish instead. A HardSigmoid with other alpha/beta is left alone.
"""

from __future__ import annotations

from fuser.pattern import Var, op
from fuser.rule import Rule

from .common import shifted_relu6

x = Var("x")
_r6 = shifted_relu6(x)

HARDSIGMOID = Rule(
    name="hardsigmoid",
    family="hsigmoid",
    emits="HardSigmoid",
    min_opset=6,
    pattern=op.Div(_r6, 6.0) | op.Mul(_r6, 1 / 6),
    rewrite=lambda m, b, _: b.op("HardSigmoid", m["x"], alpha=1 / 6, beta=0.5),
    spellings=("relu6(x + 3) / 6", "relu6(x + 3) * (1/6)",
               "relu6 = Clip(0, 6) | Min(Relu, 6) | Min(Max(0), 6)"),
    doc="relu6(x + 3) / 6 -> HardSigmoid(x, alpha=1/6, beta=0.5)",
)
