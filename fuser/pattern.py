"""The pattern language rules are written in: the computation they match, in ONNX op names.

    x = Var("x")
    gate = op.Div(op.Clip(op.Add(x, 3.0), 0.0, 6.0), 6.0) | op.Mul(op.Clip(op.Add(x, 3.0), 0.0, 6.0), 1 / 6)

- `Var("x")`: any value; every use of the same name must be the same value.
- a Python number or `Const(v)`: a constant (initializer, Constant node, or an attribute that later
  opsets made an input) that is `v` in the constant's own dtype, as a scalar or any shape with one
  element: exactly `v` where the dtype holds it (3, 6, 0.5 in fp16 or bf16), else only the dtype's
  rounding of `v` (1/6: see `dtype_roundings`). Integers are exact. `Const(name="eps")` is any
  constant, bound for the check and rewrite.
- `op.Add(a, b)`: a node of that type whose operands match `a` and `b`. Commutative ops (Add, Mul, Min,
  Max...) also try the swapped order; pass `_commute=False` to forbid it. Keyword arguments constrain
  attributes (`keepdims=1`, a predicate `axis=lambda v: v in (-1, 3)`, or `float_attr(1 / 6)` for a
  float attribute, which ONNX stores as float32); the schema's default is used
  when the node leaves the attribute out. `_name="mean"` names the node for the check and rewrite;
  `_out=1` matches the node's second output.
- `a | b`: either pattern (tried in order). Reusing one Python pattern object twice means the same node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import ml_dtypes
import numpy as np

COMMUTATIVE = frozenset({"Add", "Mul", "Min", "Max", "Sum", "Mean", "Equal", "And", "Or", "Xor",
                         "BitwiseAnd", "BitwiseOr", "BitwiseXor"})


class Pattern:
    """Base of all pattern nodes; `|` builds alternatives."""

    def __or__(self, other) -> OneOf:
        return OneOf(self, as_pattern(other))

    def __ror__(self, other) -> OneOf:
        return OneOf(as_pattern(other), self)

    def root_ops(self) -> frozenset[str]:
        """Op types a value matched by this pattern can be produced by (empty: any)."""
        return frozenset()

    def describe(self) -> str:
        raise NotImplementedError


class Var(Pattern):
    def __init__(self, name: str):
        self.name = name

    def describe(self) -> str:
        return self.name


class Const(Pattern):
    """A constant operand; `value=None` accepts any constant and binds it under `name`."""

    def __init__(self, value: float | None = None, name: str | None = None):
        self.value = value
        self.name = name

    def describe(self) -> str:
        if self.value is None:
            return self.name or "const"
        return f"{self.value:g}"


class Op(Pattern):
    def __init__(self, op_type: str, inputs: list[Pattern], attrs: dict[str, Any] | None = None,
                 domain: str = "", name: str | None = None, out: int = 0, commute: bool | None = None):
        self.op_type = op_type
        self.inputs = inputs
        self.attrs = attrs or {}
        self.domain = domain
        self.name = name
        self.out = out
        self.commute = (op_type in COMMUTATIVE and len(inputs) == 2) if commute is None else commute
        self._root_ops = frozenset({op_type})

    def root_ops(self) -> frozenset[str]:
        return self._root_ops

    def describe(self) -> str:
        return f"{self.op_type}({', '.join(p.describe() for p in self.inputs)})"


class OneOf(Pattern):
    def __init__(self, *alternatives: Pattern):
        flat: list[Pattern] = []
        for alt in alternatives:
            flat.extend(alt.alternatives if isinstance(alt, OneOf) else [alt])
        self.alternatives = flat

        ops: set[str] = set()
        for alt in flat:
            if not alt.root_ops():
                ops = set()
                break
            ops |= alt.root_ops()
        self._root_ops = frozenset(ops)

    def root_ops(self) -> frozenset[str]:
        return self._root_ops

    def describe(self) -> str:
        return " | ".join(alt.describe() for alt in self.alternatives)


@lru_cache(maxsize=1024)
def dtype_roundings(expected: float, dtype: np.dtype) -> frozenset[float]:
    """The values a constant of float `dtype` may hold and still mean `expected`: its round-to-nearest
    in `dtype` and, for types narrower than float32, its rounding through float32 first (fp64 -> fp32
    -> fp16, what real converters produce). Where `dtype` holds `expected` exactly, that is `expected`
    alone: a constant 6.0234 in fp16 is not 6, however close."""
    info = ml_dtypes.finfo(dtype)  # numpy's floats and ml_dtypes' (bfloat16, float8...) alike
    roundings = {_round_to_nearest(expected, info.nmant, info.minexp)}
    if np.dtype(dtype).itemsize < 4:
        f32 = np.finfo(np.float32)
        roundings.add(_round_to_nearest(_round_to_nearest(expected, f32.nmant, f32.minexp), info.nmant, info.minexp))
    return frozenset(roundings)


def _round_to_nearest(value: float, mantissa_bits: int, min_exponent: int) -> float:
    """`value` rounded to nearest (ties to even) with `mantissa_bits` after the point, subnormals below
    2**min_exponent. Computed here because library casts to bfloat16 round through float32 first."""
    if value == 0 or not math.isfinite(value):
        return value
    _, exponent = math.frexp(value)  # value = m * 2**exponent, 0.5 <= |m| < 1
    ulp_exponent = max(exponent - 1, min_exponent) - mantissa_bits
    return math.ldexp(round(math.ldexp(value, -ulp_exponent)), ulp_exponent)


def float_attr(expected: float) -> Callable[[Any], bool]:
    """Attribute predicate: a float attribute (float32 in ONNX) that is `expected`: 0.5 exactly, 1/6 as
    its float32 rounding 0.16666667, nothing one ulp further."""
    accepted = dtype_roundings(expected, np.dtype(np.float32))

    def equal(actual) -> bool:
        return isinstance(actual, (int, float)) and float(actual) in accepted

    equal.__name__ = f"float_attr({expected:g})"
    return equal


def as_pattern(x) -> Pattern:
    if isinstance(x, Pattern):
        return x
    if isinstance(x, (int, float)):
        return Const(float(x))
    raise TypeError(f"cannot use {x!r} in a pattern")


class _OpNamespace:
    """`op.Relu(x)` is `Op("Relu", [x])`; underscore keywords are pattern options, the rest attributes."""

    def __getattr__(self, op_type: str) -> Callable[..., Op]:
        if op_type.startswith("__"):
            raise AttributeError(op_type)

        def make(*inputs, _name=None, _out=0, _commute=None, _domain="", **attrs) -> Op:
            return Op(op_type, [as_pattern(i) for i in inputs], attrs, domain=_domain, name=_name,
                      out=_out, commute=_commute)

        return make


op = _OpNamespace()
