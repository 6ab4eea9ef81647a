"""Fold sub-graphs whose inputs are all constant into initializers, within a size budget.

    Transpose(W) -> W^T      Cast(Constant(0.5)) -> 0.5      Concat(Unsqueeze(3), [-1]) -> [3, -1]

One topological sweep finds the constant region (nodes whose inputs are all initializers, Constant
outputs or outputs of nodes already in the region); the whole region is evaluated in one onnxruntime
session (its optimizer off), or node by node with onnx's reference evaluator where onnxruntime cannot.
Only the region's frontier (values read by nodes outside it) becomes initializers, under the same
names, so downstream references, value_info and validation keys stay valid.

Never folded: ops of non-default domains (custom kernels), random ops, ops with subgraphs, sequence
and optional ops, Quantize/DequantizeLinear (explicit quantization must reach the runtime), and nodes
producing graph outputs. A node whose result would grow the model past the budget
(`fold_budget_bytes`: output larger than the budget and larger than its inputs — a big `Expand`,
`Tile`, `ConstantOfShape`, `Range`) stays an op, and is never computed: where inference on the region
cannot tell a result's size, the region runs node by node and each such node's size is told first
from its actual inputs (`result_bytes`); a size that cannot be told is not computed. Every skipped
fold is reported with its reason in the report's folding section (`FoldingSection.skipped`); a fold that
fails never fails the run.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import helper

from fuser.errors import first_line
from fuser.facts import GraphFacts, infer_model, type_shape
from fuser.graph import Graph
from fuser.pass_manager import PassResult

from .sections import FoldingSection, FoldSkipped

NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                              "Multinomial", "Bernoulli", "Dropout"})
# Q/DQ pairs mark explicit quantization for TensorRT and onnxruntime: DequantizeLinear(int8 W) folded to
# float W would lose it (and quadruple the weight)
QUANTIZATION = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
DEFAULT_BUDGET = 1 << 20
MAX_SKIPPED = 200  # report entries kept


def unfoldable(node: onnx.NodeProto) -> str | None:
    """Why a node can never be folded (None when it may be)."""
    if node.domain not in ("", "ai.onnx"):
        return f"op of domain '{node.domain}'"
    if node.op_type in NONDETERMINISTIC:
        return "non-deterministic op"
    if node.op_type == "Constant":
        return "already a constant"
    if node.op_type in QUANTIZATION:
        return "quantization marker"
    if "Sequence" in node.op_type or "Optional" in node.op_type:
        return "sequence/optional op"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return "op with subgraphs"
    return None


class ConstantFolding:
    name = "constant-folding"
    requires = ("acyclic",)

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes
        self._graph = None
        self._given_up: dict[int, tuple[str, ...]] = {}  # node id -> its inputs when it could not be folded

    def run(self, graph: Graph, ctx) -> PassResult:
        budget = self.budget_bytes
        if budget is None:
            budget = getattr(ctx.options, "fold_budget_bytes", DEFAULT_BUDGET)
        if graph is not self._graph:  # a new graph (first run, or after an opset upgrade)
            self._graph, self._given_up = graph, {}
        section = ctx.report.section(FoldingSection)
        skipped: dict[int, str] = {}
        # nodes that failed before, unchanged since, are not tried again (nor what depends on them)
        region = _prune(graph, constant_region(graph),
                        lambda nid: self._given_up.get(nid) == tuple(graph.node(nid).input), skipped, None)
        if not region:
            return PassResult(False)
        refs = graph.subgraph_refs()
        produced = {o for nid in region for o in graph.node(nid).output if o}
        leaves = sorted({v for nid in region for v in graph.node(nid).input if v and v not in produced})
        unreadable = {v for v in leaves if v not in graph.initializers and _read(graph, v) is None}
        region = _prune(graph, region, lambda nid: any(v in unreadable for v in graph.node(nid).input), skipped,
                        "a constant input cannot be read (a sparse or malformed Constant)")
        leaves = [v for v in leaves if v not in unreadable]
        leaf_set = set(leaves)
        facts = graph.facts.snapshot()  # sizes of the region's results, told before computing them

        def nbytes(value: str, arrays: dict | None = None) -> int | None:
            if arrays is not None and value in arrays:
                return int(arrays[value].nbytes)
            if value in leaf_set:
                return graph.constant_nbytes(value)
            shape, elem = facts.shape(value), facts.elem_type(value)
            if shape is None or not elem or not all(isinstance(d, int) for d in shape):
                return None
            return int(np.prod(shape, dtype=np.int64)) * _itemsize(elem)

        def over_budget(arrays: dict | None):
            def test(nid: int) -> bool:
                node = graph.node(nid)
                out = [nbytes(v, arrays) for v in node.output if v]
                ins = [nbytes(v, arrays) for v in node.input if v]
                return None not in out and sum(out) > budget and sum(out) > sum(b or 0 for b in ins)
            return test

        reason = f"its result exceeds the fold budget of {budget} bytes (raise it: --fold-budget / fold_budget_bytes=)"
        region = _prune(graph, region, over_budget(None), skipped, reason)  # estimated: never compute it

        def bound(node: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> str | None:
            """Why a node whose size inference left unknown must not run, told from its actual inputs."""
            if all(nbytes(o) is not None for o in node.output if o):
                return None  # already within the budget
            size = result_bytes(graph, node, feeds)
            if size is None:
                return "its result size cannot be known before computing it, so it is not computed"
            if size > budget and size > sum(int(a.nbytes) for a in feeds.values()):
                return reason.replace("its result", f"its result ({size} bytes)")
            return None

        bounded = all(nbytes(o) is not None for nid in region for o in graph.node(nid).output if o)
        arrays = evaluate(graph, region, skipped, facts, None if bounded else bound) if region else {}
        region = _prune(graph, region, lambda nid: nid in skipped or not all(
            o in arrays for o in graph.node(nid).output if o), skipped, None)
        region = _prune(graph, region, over_budget(arrays), skipped, reason)  # actual sizes

        for nid, why in skipped.items():
            node = graph.node(nid)
            self._given_up[nid] = tuple(node.input)
            size = next((nbytes(o, arrays) for o in node.output if o), None)
            entry = FoldSkipped(node.name or node.output[0], node.op_type,
                                why.replace("its result", f"its result ({size} bytes)") if size else why)
            if all(e.node != entry.node for e in section.skipped) and len(section.skipped) < MAX_SKIPPED:
                section.skipped.append(entry)
        if not region:
            return PassResult(False)

        members = set(region)
        frontier = [o for nid in region for o in graph.node(nid).output
                    if o and (o in refs or any(u not in members for u, _ in graph.uses(o)))]
        for nid in region:
            graph.remove_node(nid)
        added = 0
        for value in frontier:
            graph.set_initializer(value, arrays[value])
            added += int(arrays[value].nbytes)
        freed = sum(graph.constant_nbytes(v) for v in leaves
                    if not graph.uses(v) and not graph.is_graph_output(v) and v not in refs
                    and v not in graph.input_names)
        section.folded += len(region)
        section.bytes_added += added - freed
        return PassResult(True)


def _prune(graph: Graph, region: list[int], bad, skipped: dict[int, str], reason: str | None) -> list[int]:
    """The region less the nodes `bad(nid)` refuses and every node downstream of them (in order).

    A refused node is recorded in `skipped` with `reason` (None: already recorded, or not worth saying).
    """
    kept, lost = [], set()
    for nid in region:
        node = graph.node(nid)
        if any(v in lost for v in node.input):
            lost.update(node.output)
        elif bad(nid):
            if reason is not None:
                skipped.setdefault(nid, reason)
            lost.update(node.output)
        else:
            kept.append(nid)
    return kept


def _read(graph: Graph, value: str) -> np.ndarray | None:
    try:
        return graph.constant(value)
    except Exception:  # missing external data, unsupported Constant form: not foldable
        return None


def constant_region(graph: Graph) -> list[int]:
    """Ids, in topological order, of the nodes computable from constants alone."""
    region: list[int] = []
    produced: set[str] = set()
    for nid in graph.topological_order():
        node = graph.node(nid)
        ins = [v for v in node.input if v]
        if not ins or not all(v in produced or graph.is_constant(v) for v in ins):
            continue  # the cheap test first: most nodes of a graph read a non-constant
        if unfoldable(node) is not None or any(graph.is_graph_output(o) for o in node.output):
            continue
        region.append(nid)
        produced.update(o for o in node.output if o)
    return region


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 8


def tiny_model(graph: Graph, nodes: list[onnx.NodeProto], leaves: dict[str, np.ndarray | onnx.TensorProto],
                outputs: list[str], typed_only: bool = False) -> onnx.ModelProto:
    """A model computing `outputs` from `nodes`; leaves are initializers (or typed inputs when `typed_only`)."""
    inits, inputs = [], []
    for name, value in leaves.items():
        if isinstance(value, onnx.TensorProto):  # sizes only: a typed input
            inputs.append(helper.make_tensor_value_info(name, value.data_type, list(value.dims)))
        elif typed_only and value.nbytes > 4096:
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                        list(value.shape)))
        else:
            inits.append(onnx.numpy_helper.from_array(value, name))
    g = helper.make_graph(list(nodes), "fold", inputs, [onnx.ValueInfoProto(name=o) for o in outputs], inits)
    opsets = [helper.make_opsetid("", graph.opset())]
    model = helper.make_model(g, opset_imports=opsets)
    model.ir_version = max(graph.model.ir_version, 7) if graph.model.ir_version else 8
    return model


def evaluate(graph: Graph, region: list[int], skipped: dict[int, str], facts: GraphFacts,
             bound=None) -> dict[str, np.ndarray]:
    """Values of every output of `region`: one onnxruntime session, else node by node with fallbacks.

    `bound(node, feeds)`: given when some result's size was not known beforehand; then the region runs
    node by node and a node runs only when `bound` finds no reason against it, from its actual inputs.
    Nodes that cannot be evaluated are recorded in `skipped` with the reason.
    """
    produced = {o for nid in region for o in graph.node(nid).output if o}
    leaves = {v: _read(graph, v) for nid in region for v in graph.node(nid).input if v and v not in produced}
    if any(a is None for a in leaves.values()):
        for nid in region:
            skipped[nid] = "a constant input could not be read"
        return {}
    nodes = [graph.node(nid) for nid in region]
    outputs = [o for n in nodes for o in n.output if o]
    if bound is None:
        try:
            values = dict(zip(outputs, run_ort(tiny_model(graph, nodes, leaves, outputs), outputs)))
            if _types_ok(values, facts):
                return values
        except Exception:
            pass
    values = dict(leaves)
    for nid, node in zip(region, nodes):
        if any(v and v not in values for v in node.input):
            continue  # an input failed: a consequence, reported at its cause
        feeds = {v: values[v] for v in node.input if v}
        refusal = bound(node, feeds) if bound is not None else None
        if refusal:
            skipped[nid] = refusal
            continue
        outs = [o for o in node.output if o]
        errors = []
        for engine in (run_ort, run_reference):
            try:
                got = dict(zip(outs, engine(tiny_model(graph, [node], feeds, outs), outs)))
            except Exception as exc:  # any failure of an evaluator means: try the next one
                errors.append(f"{engine.__doc__.split(':')[0]}: {first_line(exc, 200)}")
                continue
            if not _types_ok(got, facts):
                errors.append(f"{engine.__doc__.split(':')[0]}: returned an unexpected element type")
                continue
            values.update(got)
            break
        else:
            skipped[nid] = "cannot be evaluated (" + "; ".join(errors) + ")"
    return {k: v for k, v in values.items() if k in produced}


def result_bytes(graph: Graph, node: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> int | None:
    """Bytes of a node's outputs before it runs: onnx inference on the node alone with its actual inputs
    (data propagation reads the shape-like ones: ConstantOfShape, Expand, Tile, Range, Pad, Resize,
    OneHot...), or a bound for ops whose output size depends on the data. None: it cannot be told."""
    if node.op_type in _DATA_DEPENDENT:
        arrays = [feeds.get(v) for v in node.input]
        return None if arrays[0] is None else _DATA_DEPENDENT[node.op_type](arrays[0])
    outputs = [o for o in node.output if o]
    try:
        model = tiny_model(graph, [node], feeds, outputs, typed_only=True)
        inferred = infer_model(model)
    except Exception:
        return None
    types = {vi.name: vi.type for vi in inferred.graph.output}
    total = 0
    for o in outputs:
        shape = type_shape(types[o]) if o in types else None
        elem = types[o].tensor_type.elem_type if o in types and types[o].HasField("tensor_type") else 0
        if shape is None or not elem or not all(isinstance(d, int) for d in shape):
            return None
        total += int(np.prod(shape, dtype=np.int64)) * _itemsize(elem)
    return total


# ops whose output size depends on the data, bounded by their first input x
_DATA_DEPENDENT = {
    "NonZero": lambda x: max(x.ndim, 1) * x.size * 8,  # int64 [rank, count of nonzeros]
    "Compress": lambda x: int(x.nbytes),
    "Unique": lambda x: int(x.nbytes) + 3 * x.size * 8,  # values, and three int64 index outputs
}


def _types_ok(values: dict[str, np.ndarray], facts: GraphFacts) -> bool:
    """Are the computed arrays of the element types inference told (an evaluator may widen or narrow)?"""
    for name, arr in values.items():
        elem = facts.elem_type(name)
        if not isinstance(arr, np.ndarray):
            return False
        if elem and arr.dtype != object:
            try:
                if helper.np_dtype_to_tensor_dtype(arr.dtype) != elem:
                    return False
            except Exception:
                return False
    return True


def run_ort(model: onnx.ModelProto, outputs: list[str]) -> list[np.ndarray]:
    """onnxruntime: run a constant model with the optimizer off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [np.asarray(a) for a in sess.run(outputs, {})]


def run_reference(model: onnx.ModelProto, outputs: list[str]) -> list[np.ndarray]:
    """onnx reference evaluator: run a constant model."""
    from onnx.reference import ReferenceEvaluator

    return [np.asarray(a) for a in ReferenceEvaluator(model).run(outputs, {})]
