"""Flatten(x, axis=1) -> Reshape(x, [0, K]) (or [0, -1]): one TensorRT shuffle instead of a shape computation.

    Flatten(x[N, C, H, W], axis=1)  ->  Reshape(x, [0, C*H*W])      (non-batch dims static)
    Flatten(x[N, C, ?, ?], axis=1)  ->  Reshape(x, [0, -1])

Exact: both give [N, product of the other dims]. With a dynamic batch, TensorRT's ONNX parser builds
Flatten from SHAPE, GATHER, CONCATENATION and CAST layers (measured: 6 extra layers on torchvision's
resnet50 and mobilenet_v3 heads); a Reshape to a constant with a 0 copy is one SHUFFLE. Only axis 1,
and only when x's rank is known.
"""

from __future__ import annotations

import numpy as np

from fuser.pattern import Var, op
from fuser.rule import Refusal, Rule

x = Var("x")


def _check(m) -> list | Refusal:
    """The flattened tensor's shape (as inference proves it), or why the rewrite cannot be sized."""
    shape = m.facts.shape(m["x"])
    if shape is None:
        return Refusal("the rank of the flattened tensor is unknown")
    if len(shape) < 2:
        return Refusal("Flatten of a tensor of rank < 2 is not a batch flatten")
    return shape


def _rewrite(m, b, shape: list):
    rest = shape[1:]
    static = all(isinstance(d, int) and d > 0 for d in rest)
    target = [0, int(np.prod(rest))] if static else [0, -1]
    return b.op("Reshape", m["x"], b.const(np.array(target, np.int64), "shape"))


FLATTEN = Rule(
    name="flatten-reshape",
    family="flatten",
    emits="Reshape",
    min_opset=5,
    pattern=op.Flatten(x, axis=1),
    check=_check,
    rewrite=_rewrite,
    targets=("tensorrt",),
    spellings=("Flatten(x, axis=1) with x of known rank >= 2",),
    doc="Flatten(x, axis=1) -> Reshape(x, [0, K]) (tensorrt target: one shuffle layer, no shape layers)",
)
