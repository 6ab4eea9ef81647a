"""Matching a pattern at one value of the graph: a backtracking walk from the pattern's root.

The walk is anchored (it starts at a candidate node of the root op and follows producers upwards), so
the cost of a rule is the number of candidates times the pattern's size, not the graph's size. It
handles once for all rules what rules should never hand-write: commutative operand order,
alternatives, constants compared by value in their own dtype (exactly where it holds the value),
attribute-vs-input forms across opsets (via `op_forms`), and schema defaults for absent attributes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper

from .facts import GraphFacts, attribute_default
from .graph import Graph
from .op_forms import Literal, Operand, logical_attribute_names, logical_inputs
from .pattern import Const, OneOf, Op, Pattern, Var, dtype_roundings


class Match:
    """What a pattern bound: values by variable name, constants by name, nodes by name, all nodes; and
    `facts`, what a check asks about shapes and types (the rule engine's snapshot of `graph.facts`).

    Bindings live in one dict keyed by (kind, name) so that branching (alternatives, commutation)
    copies one dict and one list.
    """

    __slots__ = ("graph", "root", "bound", "nodes", "facts")

    def __init__(self, graph: Graph, root: int, bound: dict | None = None, nodes: list[int] | None = None,
                 facts: GraphFacts | None = None):
        self.graph = graph
        self.root = root
        self.bound = bound if bound is not None else {}
        self.nodes = nodes if nodes is not None else []
        self.facts = facts if facts is not None else graph.facts

    def __getitem__(self, name: str) -> Operand:
        """The graph value bound to variable `name` (a Literal is materialized by the rewrite builder)."""
        return self.bound[("v", name)]

    def const(self, name: str) -> np.ndarray | None:
        """The constant value bound to `name` (a `Const(name=...)` or a `Var` that is constant)."""
        if ("c", name) in self.bound:
            return self.bound[("c", name)]
        value = self.bound.get(("v", name))
        if isinstance(value, Literal):
            return value.value
        return self.graph.constant(value) if value else None

    def node(self, name: str) -> onnx.NodeProto:
        return self.graph.node(self.bound[("n", name)])

    def has(self, name: str) -> bool:
        return any((kind, name) in self.bound for kind in ("v", "c", "n"))

    def node_names(self) -> list[str]:
        return [self.graph.node(n).name or self.graph.node(n).op_type for n in self.nodes]

    def copy(self) -> Match:
        return Match(self.graph, self.root, dict(self.bound), list(self.nodes), self.facts)


def match_value(pattern: Pattern, operand: Operand, m: Match) -> Iterator[Match]:
    """Every way `pattern` matches `operand`, each as an extended copy of `m`."""
    if isinstance(pattern, OneOf):
        producer_op = _producer_op(operand, m.graph)
        for alt in pattern.alternatives:
            ops = alt.root_ops()
            if not ops or producer_op in ops:  # skip alternatives that cannot match before descending
                yield from match_value(alt, operand, m)
    elif isinstance(pattern, Var):
        bound = m.bound.get(("v", pattern.name), _UNBOUND)
        if bound is _UNBOUND:
            if operand is None:
                return
            m2 = m.copy()
            m2.bound[("v", pattern.name)] = operand
            yield m2
        elif bound == operand:
            yield m
    elif isinstance(pattern, Const):
        value = _constant_of(operand, m.graph)
        if value is None or (pattern.value is not None and not const_equals(value, pattern.value)):
            return
        key = ("c", pattern.name)
        if pattern.name is None:
            yield m
        elif key in m.bound:
            if np.array_equal(m.bound[key], value):
                yield m
        else:
            m2 = m.copy()
            m2.bound[key] = value
            if isinstance(operand, str):
                m2.bound[("v", pattern.name)] = operand
            yield m2
    elif isinstance(pattern, Op):
        yield from _match_op(pattern, operand, m)
    else:
        raise TypeError(f"unknown pattern {pattern!r}")


_UNBOUND = object()


def _producer_op(operand: Operand, graph: Graph) -> str | None:
    if not isinstance(operand, str):
        return None
    use = graph.producers.get(operand)
    return graph.nodes[use[0]].op_type if use else None


def _match_op(pattern: Op, operand: Operand, m: Match) -> Iterator[Match]:
    if not isinstance(operand, str):
        return
    bound = m.bound.get(("o", id(pattern)))
    if bound is not None:  # the same pattern object used twice: must be the same node
        if bound == operand:
            yield m
        return
    use = m.graph.producer(operand)
    if use is None:
        return
    nid, slot = use
    node = m.graph.node(nid)
    if node.op_type != pattern.op_type or slot != pattern.out or (node.domain or "") != pattern.domain:
        return
    opset = m.graph.opset(pattern.domain)
    if not _attributes_match(node, pattern, opset):
        return
    operands = logical_inputs(node, opset)
    n = len(pattern.inputs)
    if any(o is not None for o in operands[n:]):
        return  # the node has operands the pattern does not account for
    operands = (operands + [None] * n)[:n]
    orders = [operands]
    if pattern.commute and n == 2 and operands[0] != operands[1]:
        orders.append([operands[1], operands[0]])
    orders = [o for o in orders if _plausible(pattern.inputs, o, m.graph)]
    if not orders:
        return
    m2 = m.copy()
    m2.bound[("o", id(pattern))] = operand
    if nid not in m2.nodes:
        m2.nodes.append(nid)
    if pattern.name:
        m2.bound[("n", pattern.name)] = nid
    for ordered in orders:
        yield from _match_operands(pattern.inputs, ordered, m2)


def may_match_at(pattern: Pattern, node: onnx.NodeProto, graph: Graph) -> bool:
    """Could `pattern` match at `node`? A look one level up, with no Match built: False rules it out.

    Most candidates of a rule fail here (every Add of a 100,000-node Relu/Add chain for the LayerNorm
    rules), at a fraction of the cost of a full match attempt."""
    for alt in (pattern.alternatives if isinstance(pattern, OneOf) else [pattern]):
        if not isinstance(alt, Op):
            return True
        if alt.op_type != node.op_type:
            continue
        operands = [v or None for v in node.input[:len(alt.inputs)]]
        operands += [None] * (len(alt.inputs) - len(operands))
        if _plausible(alt.inputs, operands, graph) or (
                alt.commute and len(operands) == 2 and _plausible(alt.inputs, operands[::-1], graph)):
            return True
    return False


def _plausible(patterns: list[Pattern], operands: list[Operand], graph: Graph) -> bool:
    """A cheap look one level up before any copy: every operand a pattern of ops expects is produced by
    one of those ops (most candidates of a rule fail here, e.g. every Add of a long Relu/Add chain)."""
    for p, operand in zip(patterns, operands):
        ops = p.root_ops()
        if ops and _producer_op(operand, graph) not in ops:
            return False
    return True


def _match_operands(patterns: list[Pattern], operands: list[Operand], m: Match) -> Iterator[Match]:
    if not patterns:
        yield m
        return
    for m2 in match_value(patterns[0], operands[0], m):
        yield from _match_operands(patterns[1:], operands[1:], m2)


def _attributes_match(node: onnx.NodeProto, pattern: Op, opset: int) -> bool:
    if not pattern.attrs:
        return True
    present = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    skip = logical_attribute_names(node.op_type, opset)
    for name, expected in pattern.attrs.items():
        if name in skip:
            continue
        actual = present[name] if name in present else attribute_default(node.op_type, node.domain, opset, name)
        if isinstance(actual, bytes):
            actual = actual.decode()
        if callable(expected):
            if not expected(actual):
                return False
        elif actual != expected:
            return False
    return True


def _constant_of(operand: Operand, graph: Graph) -> np.ndarray | None:
    if isinstance(operand, Literal):
        return operand.value
    if isinstance(operand, str):
        return graph.constant(operand)
    return None


def const_equals(value: np.ndarray, expected: float) -> bool:
    """One-element constant that is `expected` in its own dtype (6 == 6.0; 1/6 as fp32 0.16666667 or fp16
    0.1666; 6.0234 in fp16 is not 6): integers exactly, floats as `pattern.dtype_roundings` says."""
    if value.size != 1 or value.dtype == np.bool_:
        return False
    actual = value.reshape(-1)[0]
    if value.dtype.kind in "iu":
        return float(expected).is_integer() and int(actual) == int(expected)
    try:
        accepted = dtype_roundings(float(expected), value.dtype)
    except (TypeError, ValueError):  # not a float type either (strings, objects, ml_dtypes' int4...)
        return False
    return float(actual) in accepted
