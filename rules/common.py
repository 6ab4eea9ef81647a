"""Sub-patterns several rules share: the spellings of relu6 and of the hard-sigmoid gate.

    relu6(t)  = Clip(t, 0, 6) | Min(Relu(t), 6) | Min(Max(t, 0), 6) | Max(Min(t, 6), 0)
    gate(x)   = relu6(x + 3) / 6 | relu6(x + 3) * (1/6) | HardSigmoid(x, alpha=1/6, beta=0.5)
"""

from __future__ import annotations

from fuser.pattern import Pattern, float_attr, op


def relu6(t: Pattern) -> Pattern:
    return (op.Clip(t, 0.0, 6.0) | op.Min(op.Relu(t), 6.0) | op.Min(op.Max(t, 0.0), 6.0)
            | op.Max(op.Min(t, 6.0), 0.0))


def shifted_relu6(x: Pattern) -> Pattern:
    """relu6(x + 3): the numerator of the hard-sigmoid gate."""
    return relu6(op.Add(x, 3.0))


def hard_sigmoid_gate(x: Pattern) -> Pattern:
    r6 = shifted_relu6(x)
    return (op.Div(r6, 6.0) | op.Mul(r6, 1 / 6)
            | op.HardSigmoid(x, alpha=float_attr(1 / 6), beta=float_attr(0.5)))
