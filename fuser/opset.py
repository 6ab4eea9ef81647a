"""Raising a model's default-domain opset when a rewrite needs it — in place where that is exact.

A rule declares the opset its emitted ops need (LayerNormalization 17, HardSwish 14). When the model is
older and upgrades are allowed, fuser raises the opset itself where every node keeps its meaning:

- ops whose newer versions only widened types or added attributes whose defaults keep the old meaning
  (Add, MatMul, Reshape's allowzero, Shape's start/end...) stay as they are;
- operands that moved from attribute to input (Unsqueeze/Squeeze axes, Split sizes, Reduce* axes, Clip
  bounds, Pad, Slice) move into an int64/float initializer, as `op_forms` describes;
- Softmax/LogSoftmax/Hardmax before 13 flattened to 2-D at `axis`; at 13 they normalize along `axis`
  only. Over the last axis the two agree, so only that case is kept as is.

Anything else (an op whose meaning changed, a subgraph whose ops would need upgrading too) falls back to
`onnx.version_converter` on the whole model, which is exact but inserts Flatten/Reshape around every
Softmax and costs seconds on large graphs (both measured: BERT-base's converted attention was 16%
slower in onnxruntime and added TensorRT layers). When both fail, the rule is skipped and the reason noted.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.version_converter
from onnx import defs

from .graph import Graph
from .model_io import LoadedModel, MAX_OPSET
from .op_forms import ATTRIBUTE_INPUTS

# Newer versions of these changed meaning, not just types: never bumped in place.
_MEANING_CHANGED = frozenset({"Resize", "Upsample", "Scan", "Loop", "If", "BatchNormalization", "Dropout",
                              "TopK", "Pad", "ScatterND", "ScatterElements", "GridSample"})
_SOFTMAX_LIKE = frozenset({"Softmax", "LogSoftmax", "Hardmax"})


def upgrade(graph: Graph, opset: int, ctx) -> Graph | None:
    """The graph at `opset` (edited in place when exact, else converted), or None with a note."""
    have = graph.opset()
    report = ctx.report
    if opset in ctx.upgrades_failed or opset > MAX_OPSET:
        ctx.allow_upgrade = False
        return None
    if upgrade_in_place(graph, have, opset):
        report.note(f"upgraded opset {have} -> {opset} (needed by a fusion; every node kept its meaning)")
        return graph
    try:
        converted = onnx.version_converter.convert_version(graph.to_model(), opset)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises many types; any failure means: do not upgrade
        ctx.upgrades_failed.add(opset)
        ctx.allow_upgrade = False
        report.note(f"could not upgrade opset {have} -> {opset} ({str(exc).splitlines()[0][:200]}); "
                    "rules that need it were skipped")
        return None
    report.note(f"upgraded opset {have} -> {opset} with onnx.version_converter (needed by a fusion)")
    return Graph(LoadedModel(converted, graph.loaded.path, graph.loaded.base_dir))


def upgrade_in_place(graph: Graph, have: int, want: int) -> bool:
    """Bump the opset without the converter when every node keeps its meaning; False changes nothing."""
    plan = []
    for nid, node in graph.nodes.items():
        if node.domain not in ("", "ai.onnx"):
            continue
        step = _plan_node(graph, node, have, want)
        if step is False:
            return False
        if step is not None:
            plan.append((nid, step))
    for nid, moves in plan:
        _move_attributes_to_inputs(graph, nid, moves)
    graph.set_opset(want)
    graph.invalidate_types()
    return True


def _plan_node(graph: Graph, node: onnx.NodeProto, have: int, want: int):
    """None: unchanged; a list of attribute moves; False: needs the converter."""
    try:
        old, new = defs.get_schema(node.op_type, have), defs.get_schema(node.op_type, want)
    except Exception:
        return False
    if old.since_version == new.since_version:
        return None
    if node.op_type in _MEANING_CHANGED or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                               for a in node.attribute):
        return False
    if node.op_type in _SOFTMAX_LIKE and old.since_version < 13 <= new.since_version:
        return None if _over_last_axis(graph, node, old) else False
    moves = []
    form = ATTRIBUTE_INPUTS.get(node.op_type)
    if form is not None and have < form[0] <= want:
        for name, slot, dtype in form[1]:
            if not any(a.name == name for a in node.attribute):
                continue
            if dtype is np.float32:  # a bound of Clip: must take the data's own float type
                elem = graph.elem_type(node.input[0])
                if elem is None:
                    return False
                dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
            moves.append((name, slot, dtype))
    moved = {name for name, _, _ in moves}
    for attr in node.attribute:  # every other attribute must still exist with the same meaning
        if attr.name not in moved and attr.name not in new.attributes:
            return False
    if [i.name for i in old.inputs] != [i.name for i in new.inputs][: len(old.inputs)] and not moves:
        return False
    for name, attr in new.attributes.items():  # new required attributes cannot be defaulted
        if attr.required and name not in old.attributes:
            return False
    return moves


def _over_last_axis(graph: Graph, node: onnx.NodeProto, schema) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if axis == -1:
        return True
    rank = _rank(graph, node.input[0], {})
    return rank is not None and axis == rank - 1


_SAME_RANK = frozenset({"Cast", "Relu", "Softmax", "LogSoftmax", "Erf", "Tanh", "Sqrt", "Neg", "Not", "Identity",
                        "Dropout", "Transpose", "Sigmoid", "Exp", "Log", "Abs", "Reciprocal", "CastLike",
                        "LayerNormalization", "Clip", "HardSigmoid", "HardSwish"})
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Where", "And", "Or", "Xor", "Equal", "Less",
                        "Greater", "LessOrEqual", "GreaterOrEqual", "Max", "Min", "Sum", "Mean", "MatMul"})


def _rank(graph: Graph, value: str, memo: dict) -> int | None:
    """A value's rank where onnx's inference lost its dims: through Reshape targets of known length,
    broadcasting (the largest input rank) and rank-preserving ops. None when it cannot be told."""
    if value in memo:
        return memo[value]
    memo[value] = None  # guards against revisiting while computing
    shape = graph.shape(value)
    rank = len(shape) if shape is not None else None
    node = graph.producer_node(value)
    if rank is None and node is not None:
        ranks = [_rank(graph, v, memo) if v else None for v in node.input]
        if node.op_type in _SAME_RANK and ranks:
            rank = ranks[0]
        elif node.op_type in _BROADCAST and ranks and None not in ranks:
            rank = max(ranks)
        elif node.op_type in ("Reshape", "Expand") and len(node.input) > 1:
            target = graph.shape(node.input[1])
            if target is not None and isinstance(target[0], int):
                rank = target[0] if node.op_type == "Reshape" else (
                    max(target[0], ranks[0]) if ranks[0] is not None else None)
    memo[value] = rank
    return rank


def _move_attributes_to_inputs(graph: Graph, nid: int, moves) -> None:
    node = graph.node(nid)
    inputs = list(node.input)
    for name, slot, dtype in moves:
        attr = next(a for a in node.attribute if a.name == name)
        value = np.asarray(onnx.helper.get_attribute_value(attr), dtype=dtype)
        while len(inputs) <= slot:
            inputs.append("")
        inputs[slot] = graph.add_initializer(f"{node.name or node.op_type}/{name}", value)
        node.attribute.remove(attr)
    for slot, value in enumerate(inputs):
        if slot < len(node.input):
            if node.input[slot] != value:
                graph.set_input(nid, slot, value)
        else:
            node.input.append("")
            graph.set_input(nid, slot, value)
