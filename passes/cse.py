"""Common-subexpression elimination: one node per (op, inputs, attributes).

    Shape(x) ... Shape(x)               -> one Shape(x)
    Add(a, b) ... Add(b, a)             -> one Add  (commutative ops compare their inputs as a set)
    Constant(v) ... Constant(v)         -> one Constant

One topological sweep: a node's inputs are already canonical when it is visited, so whole duplicated
chains (the `Shape -> Gather -> Unsqueeze` an exporter writes once per use) collapse in one run.
Never merged: random ops, Dropout, ops of custom domains (they may have effects), ops with subgraphs,
and a duplicate whose output is a graph output or is read by a subgraph.
"""

from __future__ import annotations

import onnx

from fuser.graph import Graph
from fuser.pass_manager import PassResult

from .constant_folding import NONDETERMINISTIC
from .sections import CleanupSection

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal",
                         "BitwiseAnd", "BitwiseOr", "BitwiseXor"})


def node_key(node: onnx.NodeProto) -> tuple | None:
    """What makes two nodes compute the same values, or None when a node must stay unique."""
    if node.domain not in ("", "ai.onnx") or node.op_type in NONDETERMINISTIC or not node.output:
        return None
    attrs = []
    for a in sorted(node.attribute, key=lambda a: a.name):
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            return None
        attrs.append((a.name, a.SerializeToString(deterministic=True)))
    inputs = tuple(sorted(node.input)) if node.op_type in COMMUTATIVE else tuple(node.input)
    return node.op_type, inputs, tuple(bool(o) for o in node.output), tuple(attrs)


class CommonSubexpressionElimination:
    name = "cse"
    requires = ("acyclic",)

    def run(self, graph: Graph, ctx) -> PassResult:
        protected = graph.subgraph_refs()
        seen: dict[tuple, int] = {}
        merged = 0
        for nid in graph.topological_order():
            node = graph.node(nid)
            key = node_key(node)
            if key is None:
                continue
            first = seen.setdefault(key, nid)
            if first == nid:
                continue
            if any(o and (graph.is_graph_output(o) or o in protected) for o in node.output):
                continue
            kept = graph.node(first)
            outputs = list(zip(node.output, kept.output))
            graph.remove_node(nid)
            for dup, canonical in outputs:
                if dup:
                    graph.replace_all_uses(dup, canonical)
            merged += 1
        if merged:
            ctx.report.section(CleanupSection).cse_merged += merged
        return PassResult(merged > 0)
