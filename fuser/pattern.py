"""The pattern language rules are written in: the computation they match, in ONNX op names.

    x = Var("x")
    gate = op.Div(op.Clip(op.Add(x, 3.0), 0.0, 6.0), 6.0) | op.Mul(op.Clip(op.Add(x, 3.0), 0.0, 6.0), 1 / 6)

- `Var("x")`: any value; every use of the same name must be the same value.
- a Python number or `Const(v)`: a constant (initializer, Constant node, or an attribute that later
  opsets made an input) equal to `v` within the precision of the constant's own dtype, as a scalar or
  any shape with one element. `Const(name="eps")` is any constant, bound for the check and rewrite.
- `op.Add(a, b)`: a node of that type whose operands match `a` and `b`. Commutative ops (Add, Mul, Min,
  Max...) also try the swapped order; pass `_commute=False` to forbid it. Keyword arguments constrain
  attributes (`keepdims=1`, or a predicate `axis=lambda v: v in (-1, 3)`); the schema's default is used
  when the node leaves the attribute out. `_name="mean"` names the node for the check and rewrite;
  `_out=1` matches the node's second output.
- `a | b`: either pattern (tried in order). Reusing one Python pattern object twice means the same node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def approx(expected: float, rel: float = 1e-5) -> Callable[[Any], bool]:
    """Attribute predicate: a float attribute equal to `expected` within `rel` (1/6 vs 0.16666667)."""

    def close(actual) -> bool:
        return isinstance(actual, (int, float)) and abs(actual - expected) <= rel * max(abs(expected), 1e-12)

    close.__name__ = f"approx({expected:g})"
    return close


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
