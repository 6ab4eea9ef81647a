"""Keep shape tensors 1-D and Reshape targets free of Shape arithmetic, with dynamic dims kept dynamic.

ND shape tensors -> one Gather. torch's `F.pad` export orders the pads with a 2-D detour:

    p (1-D, 2k) -> Reshape(-1, 2) -> Slice(starts=-1, ends=-huge, steps=-1) -> Transpose(1, 0) -> Reshape(-1)
        ->  Gather(p, perm)      perm[j*k + i] = 2*(k-1-i) + j

Any chain of data-movement ops (Reshape, Slice, Transpose, Flatten, Squeeze, Unsqueeze, Identity) with
constant parameters that takes an integer 1-D tensor of static length through rank >= 2 and back to 1-D
is a fixed permutation/selection of its elements; evaluating the chain on `arange(n)` gives exactly
that selection, so the rewrite is exact whatever the (dynamic) values are. TensorRT <= 8.4 rejected the
2-D shape tensor ("IShuffleLayer applied to shape tensor must have 0 or 1 reshape dimensions").

Reshape placeholders. `Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), [-1]))`
    -> `Reshape(x, [0, 0, -1])`
An element that is dim i of the Reshape's own input at position i becomes 0 (copy; only with
allowzero=0); at most one other dynamic element becomes -1 (exact: the element count is the same, so -1
resolves to that element — for non-empty tensors, where the original reshape itself is defined).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from fuser.facts import GraphFacts
from fuser.graph import Graph, attribute
from fuser.pass_manager import PassResult

from .constant_folding import constant_region, run_ort, run_reference, tiny_model
from .sections import FoldingSection
from .shape_inference import MAX_TRACKED, ShapeValue, propagate

INT_ELEMS = (TensorProto.INT64, TensorProto.INT32)
START_OPS = ("Reshape", "Unsqueeze")
CHAIN_OPS = frozenset({"Slice", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
MAX_CHAIN = 16
MAX_ELEMS = 4096


def _params_constant(graph: Graph, node: onnx.NodeProto) -> bool:
    return all(not v or graph.is_constant(v) for v in node.input[1:])


def _movement(graph: Graph, nid: int) -> bool:
    node = graph.node(nid)
    return node.domain in ("", "ai.onnx") and node.op_type in CHAIN_OPS and _params_constant(graph, node)


class ShapeTensorRewrite:
    name = "shape-tensors"
    requires = ("acyclic",)

    def __init__(self):
        self._graph = None
        self._failed: set[tuple] = set()  # candidates that could not be rewritten, as they were then
        self._pending: set[str] = set()

    def run(self, graph: Graph, ctx) -> PassResult:
        if graph is not self._graph:  # a new graph (first run, or after an opset upgrade)
            self._graph, self._failed = graph, set()
        starts = [nid for op in START_OPS for nid in graph.nodes_of_type(op)
                  if self._may_start(graph, nid) and _key(graph, nid) not in self._failed]
        reshapes = [nid for nid in graph.nodes_of_type("Reshape")
                    if self._may_placehold(graph, nid) and _key(graph, nid) not in self._failed]
        if not starts and not reshapes:
            return PassResult(False)  # nothing new since the last run: skip shape inference
        facts = graph.facts.snapshot()  # shapes as before this run's rewrites, which keep every name's shape
        # values constant folding will compute: wait for them rather than call them dynamic
        self._pending = {o for nid in constant_region(graph) for o in graph.node(nid).output}
        refs = graph.subgraph_refs()
        section = ctx.report.section(FoldingSection)
        chains = targets = 0
        for nid in starts:
            if nid in graph:
                key = _key(graph, nid)
                if self._chain_to_gather(graph, nid, facts, refs):
                    chains += 1
                else:
                    self._failed.add(key)
        reshapes = [nid for nid in reshapes if nid in graph]
        tokens = _dim_tokens(graph, facts) if reshapes else {}
        for nid in reshapes:
            key = _key(graph, nid)
            if self._placeholders(graph, nid, facts, tokens):
                targets += 1
            else:
                self._failed.add(key)
        section.nd_shape_chains_rewritten += chains
        section.reshape_targets_rewritten += targets
        return PassResult(bool(chains or targets))

    # ------------------------------------------------------------ ND chains
    @staticmethod
    def _may_start(graph: Graph, nid: int) -> bool:
        node = graph.node(nid)
        p = node.input[0]
        if graph.is_constant(p) or not _params_constant(graph, node) or node.domain not in ("", "ai.onnx"):
            return False
        uses = graph.uses(node.output[0])
        return len(uses) == 1 and uses[0][1] == 0 and _movement(graph, uses[0][0])

    def _chain_to_gather(self, graph: Graph, nid: int, facts: GraphFacts, refs: set[str]) -> bool:
        start = graph.node(nid)
        p = start.input[0]
        if p in self._pending:
            return False
        p_shape = facts.shape(p)
        elem = facts.elem_type(p)
        if elem not in INT_ELEMS or p_shape is None or len(p_shape) != 1 \
                or not isinstance(p_shape[0], int) or not 0 < p_shape[0] <= MAX_ELEMS:
            return False
        n = p_shape[0]
        chain, value = [nid], start.output[0]
        while len(chain) < MAX_CHAIN:
            uses = graph.uses(value)
            if len(uses) != 1 or uses[0][1] != 0 or graph.is_graph_output(value) or value in refs \
                    or not _movement(graph, uses[0][0]):
                break
            chain.append(uses[0][0])
            value = graph.node(uses[0][0]).output[0]
        nodes = [graph.node(c) for c in chain]
        leaves = {v: graph.constant(v) for node in nodes for v in node.input[1:] if v}
        leaves[p] = np.arange(n, dtype=np.int64)
        outs = [node.output[0] for node in nodes]
        results = None
        for engine in (run_ort, run_reference):
            try:
                results = engine(tiny_model(graph, nodes, leaves, outs), outs)
                break
            except Exception:  # an evaluator that cannot run the chain: try the next, else leave it
                continue
        if results is None or results[0].ndim < 2:
            return False
        end = next((k for k, r in enumerate(results) if r.ndim == 1), None)
        if end is None:
            return False
        perm = results[end].astype(np.int64)
        out = outs[end]
        if np.array_equal(perm, np.arange(n)) and not graph.is_graph_output(out) and out not in refs:
            for c in chain[:end + 1]:
                graph.remove_node(c)
            graph.replace_all_uses(out, p)  # the chain gives p back unchanged
            return True
        index = graph.add_initializer(f"{out}/perm", perm)
        graph.add_node("Gather", [p, index], [out], name=f"{start.name or out}/perm_gather", before=nid,
                       axis=0, doc="fuser:shape-tensors (ND shape chain as a 1-D gather)")
        for c in chain[:end + 1]:
            graph.remove_node(c)
        return True

    # --------------------------------------------------- reshape placeholders
    @staticmethod
    def _may_placehold(graph: Graph, nid: int) -> bool:
        node = graph.node(nid)
        if len(node.input) < 2 or graph.is_constant(node.input[1]) or attribute(node, "allowzero", 0):
            return False
        producer = graph.producer_node(node.input[1])
        return producer is not None and producer.op_type == "Concat" and not producer.domain

    def _placeholders(self, graph: Graph, nid: int, facts: GraphFacts, values: dict[str, ShapeValue]) -> bool:
        node = graph.node(nid)
        data, target = node.input[0], node.input[1]
        concat = graph.producer_node(target)
        if concat is None or attribute(concat, "axis", 0) not in (0, -1):
            return False
        data_shape = facts.shape(data)
        elems: list = []
        for piece in concat.input:
            if not piece:
                continue
            sv = values.get(piece)
            if sv is None:
                arr = graph.constant(piece) if graph.is_constant(piece) else None
                if arr is not None and arr.ndim == 1:
                    sv = ShapeValue([int(x) for x in arr], False, TensorProto.INT64)
            if sv is not None and not sv.scalar:
                elems.extend(sv.elems)
                continue
            shape = facts.shape(piece)
            if piece in self._pending or shape is None or len(shape) != 1 or not isinstance(shape[0], int):
                return False
            elems.extend([None] * shape[0])  # dynamic elements of unknown origin
        if len(elems) > MAX_TRACKED:
            return False
        new: list[int | None] = []
        for i, e in enumerate(elems):
            if isinstance(e, (int, np.integer)):
                new.append(int(e))
            elif isinstance(e, tuple) and _same_dim(e, data, i, data_shape):
                new.append(0)
            else:
                new.append(None)
        dynamic = [i for i, e in enumerate(new) if e is None]
        if len(dynamic) > 1 or (dynamic and -1 in new):
            return False
        if dynamic:
            new[dynamic[0]] = -1
        const = graph.add_initializer(f"{target}/static", np.array(new, dtype=np.int64))
        graph.set_input(nid, 1, const)
        return True


def _key(graph: Graph, nid: int) -> tuple:
    """A candidate as it is now: its inputs and, one level up, what produces them and what is constant."""
    node = graph.node(nid)
    around = []
    for v in node.input:
        producer = graph.producer_node(v)
        around.append((v, graph.is_constant(v), producer.op_type if producer is not None else None,
                       tuple((u, graph.is_constant(u)) for u in producer.input) if producer is not None else ()))
    return nid, tuple(around)


def _dim_tokens(graph: Graph, facts: GraphFacts) -> dict[str, ShapeValue]:
    """Shape values whose dynamic elements are tokens ('dim', x, k, name) naming their source dim."""
    tokens: dict = {}
    for nid in graph.by_op.get("Shape", ()):
        x = graph.node(nid).input[0]
        shape = facts.shape(x)
        if shape is not None:
            tokens[x] = [d if isinstance(d, int) else ("dim", x, k, d) for k, d in enumerate(shape)]
    return propagate(graph, tokens.get)


def _same_dim(token: tuple, data: str, i: int, data_shape) -> bool:
    """Is the token's dim provably dim i of `data`? (the same tensor and axis, or one symbolic name)"""
    _, x, k, name = token
    if x == data:
        return k == i
    if k != i or data_shape is None or i >= len(data_shape):
        return False
    other = data_shape[i]
    return isinstance(name, str) and isinstance(other, str) and name == other
