"""Remove nodes whose output provably equals one of their inputs (same values, shape and type).

    Identity(x) -> x                       Dropout(x) -> x          (inference: training_mode absent/false)
    Add(x, 0), Sub(x, 0) -> x              Mul(x, 1), Div(x, 1) -> x
    Cast(x, to=type(x)), CastLike(x, y) -> x   when the element types are equal
    Reshape(x, s) -> x                      when s gives back x's shape (0 copies, one -1, equal static dims)
    Transpose(x, perm=identity) -> x        Expand(x, s) -> x        when broadcasting keeps x's shape
    Tile(x, 1...) / Pad(x, 0...) -> x       Concat/Sum/Max/Min/Mean(x) -> x   (a single input)

The constant operand of Add/Mul/Sub/Div must not broadcast x to a bigger shape: `x * ones([2, 3])` with
x of shape [3] or [N, 3] (N may be 1) stays. Runs after the fusion rules, never before: an `x * 1`
removed first would hide a LayerNorm's γ = 1 from the LayerNorm rule. A node whose output is a graph
output is removed only when its input can take the output's name (it is produced by a node).
Shapes and element types are `graph.facts`: inference of the graph as edited, never an exporter's
value_info, whose stale static dims would make a Reshape look like a no-op.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx

from fuser.facts import GraphFacts
from fuser.graph import Graph, attribute

from fuser.pass_manager import PassResult

from .sections import CleanupSection

MAX_CONST_BYTES = 1 << 16  # constant operands larger than this are not read to test for 0 / 1


def _small_const(graph: Graph, value: str) -> np.ndarray | None:
    if not value or not graph.is_constant(value) or graph.constant_nbytes(value) > MAX_CONST_BYTES:
        return None
    return graph.constant(value)


def broadcast_keeps_shape(facts: GraphFacts, x: str, other_shape: tuple[int, ...]) -> bool:
    """Is broadcast(shape(x), other_shape) provably shape(x)?"""
    if len(other_shape) == 0:
        return True
    xs = facts.shape(x)
    if xs is None or len(other_shape) > len(xs):
        return False
    for od, xd in zip(reversed(other_shape), reversed(xs)):
        if od == 1 or (isinstance(xd, int) and xd == od):
            continue
        return False
    return True


def _neutral(graph: Graph, node: onnx.NodeProto, facts: GraphFacts, slots: tuple[int, ...], unit: int) -> str | None:
    """x when the operand at one of `slots` is a constant filled with `unit` that broadcasts within x."""
    for slot in slots:
        c = _small_const(graph, node.input[slot])
        if c is None or c.dtype == object or not np.all(c == unit):
            continue
        x = node.input[1 - slot]
        if broadcast_keeps_shape(facts, x, c.shape):
            return x
    return None


def _identity(graph, node, facts):
    return node.input[0]


def _dropout(graph, node, facts):
    mask = node.output[1] if len(node.output) > 1 else ""
    if mask and (graph.uses(mask) or graph.is_graph_output(mask)):
        return None  # the mask is used
    if len(node.input) > 2 and node.input[2]:
        mode = _small_const(graph, node.input[2])
        if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
            return None  # training mode, or unknown
    return node.input[0]


def _cast(graph, node, facts):
    have = facts.elem_type(node.input[0])
    return node.input[0] if have is not None and have == attribute(node, "to") else None


def _cast_like(graph, node, facts):
    a, b = facts.elem_type(node.input[0]), facts.elem_type(node.input[1])
    return node.input[0] if a is not None and a == b else None


def _reshape(graph, node, facts):
    if len(node.input) < 2:
        return None
    target = _small_const(graph, node.input[1])
    shape = facts.shape(node.input[0]) if target is not None else None
    if target is None or shape is None or target.ndim != 1 or len(target) != len(shape):
        return None
    allowzero = attribute(node, "allowzero", 0)
    minus = 0
    for t, d in zip(target.tolist(), shape):
        if t == 0 and not allowzero:
            continue  # copies the dim at the same position
        if t == -1:
            minus += 1  # with every other dim equal, -1 can only be this dim
            continue
        if not (isinstance(d, int) and d == t):
            return None
    return node.input[0] if minus <= 1 else None


def _transpose(graph, node, facts):
    perm = attribute(node, "perm")
    if perm is None:
        shape = facts.shape(node.input[0])
        return node.input[0] if shape is not None and len(shape) <= 1 else None
    return node.input[0] if list(perm) == list(range(len(perm))) else None


def _expand(graph, node, facts):
    target = _small_const(graph, node.input[1])
    if target is None or target.ndim != 1:
        return None
    return node.input[0] if broadcast_keeps_shape(facts, node.input[0], tuple(int(d) for d in target)) else None


def _tile(graph, node, facts):
    repeats = _small_const(graph, node.input[1]) if len(node.input) > 1 else None
    return node.input[0] if repeats is not None and np.all(repeats == 1) else None


def _pad(graph, node, facts):
    if graph.opset() < 11:
        pads = attribute(node, "pads", attribute(node, "paddings"))
        pads = None if pads is None else np.asarray(pads)
    else:
        pads = _small_const(graph, node.input[1]) if len(node.input) > 1 and node.input[1] else None
    return node.input[0] if pads is not None and pads.size and np.all(pads == 0) else None


def _single(graph, node, facts):
    ins = [v for v in node.input if v]
    return ins[0] if len(ins) == 1 else None


CHECKS: dict[str, Callable[[Graph, onnx.NodeProto, GraphFacts], str | None]] = {
    "Identity": _identity,
    "Dropout": _dropout,
    "Add": lambda g, n, f: _neutral(g, n, f, (1, 0), 0),
    "Sub": lambda g, n, f: _neutral(g, n, f, (1,), 0),
    "Mul": lambda g, n, f: _neutral(g, n, f, (1, 0), 1),
    "Div": lambda g, n, f: _neutral(g, n, f, (1,), 1),
    "Cast": _cast,
    "CastLike": _cast_like,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Expand": _expand,
    "Tile": _tile,
    "Pad": _pad,
    "Concat": _single,
    "Sum": _single,
    "Max": _single,
    "Min": _single,
    "Mean": _single,
}


def bypass(graph: Graph, nid: int, src: str, protected: set[str]) -> bool:
    """Remove node `nid` whose first output equals `src`; a graph output keeps its name."""
    node = graph.node(nid)
    out = node.output[0]
    if not out or out in protected or src == out:
        return False
    if any(o and (graph.uses(o) or graph.is_graph_output(o)) for o in node.output[1:]):
        return False
    if graph.is_graph_output(out):
        # `src` must be renamed to `out`: only a node's output that is neither a graph input nor output can be
        if graph.producer(src) is None or graph.is_graph_output(src) or src in protected:
            return False
        graph.remove_node(nid)
        graph.substitute(out, src)
        return True
    graph.remove_node(nid)
    graph.replace_all_uses(out, src)
    return True


class NoOpElimination:
    name = "noop"
    requires = ()

    def run(self, graph: Graph, ctx) -> PassResult:
        protected = graph.subgraph_refs()
        facts = graph.facts.snapshot()  # one inference per run at most; removals keep the names of what remains
        removed: Counter[str] = Counter()
        candidates = [nid for op in CHECKS for nid in graph.by_op.get(op, ())]
        for nid in sorted(candidates, key=graph.order.__getitem__):
            if nid not in graph:
                continue
            node = graph.node(nid)
            if node.domain not in ("", "ai.onnx") or not node.input:
                continue
            src = CHECKS[node.op_type](graph, node, facts)
            if src and bypass(graph, nid, src, protected):
                removed[node.op_type] += 1
        if removed:
            counts = ctx.report.section(CleanupSection).noop_removed
            for op, n in removed.items():
                counts[op] = counts.get(op, 0) + n
        return PassResult(bool(removed))
