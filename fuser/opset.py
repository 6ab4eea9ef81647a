"""Raising a model's default-domain opset when a rewrite needs it — in place where that is exact.

A rule declares the opset its emitted ops need (LayerNormalization 17, HardSwish 14). When the model is
older and upgrades are allowed, fuser raises the opset itself where every node keeps its meaning:

- ops whose newer versions only widened types or added attributes whose defaults keep the old meaning
  (Add, MatMul, Reshape's allowzero, Shape's start/end...) stay as they are;
- operands that moved from attribute to input (Unsqueeze/Squeeze axes, Split sizes, Reduce* axes, Clip
  bounds, Pad, Slice) move into an int64/float initializer, as `op_forms` describes;
- Softmax/LogSoftmax/Hardmax before 13 flattened to 2-D at `axis`; at 13 they normalize along `axis`
  only. Over the last axis the two agree, so only that case is kept as is.

Local functions are upgraded with the graph by the same rules (their attributes move into Constant
nodes of the body). Anything else (an op whose meaning changed, a subgraph whose ops would need
upgrading too) falls back to `onnx.version_converter` on the whole model, which is exact but inserts
Flatten/Reshape around every Softmax and costs seconds on large graphs (both measured: BERT-base's
converted attention was 16% slower in onnxruntime and added TensorRT layers); never on a model with
local functions, which it drops or fails on. When both fail, the rule is skipped and the reason noted.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.version_converter

from .errors import first_line
from .facts import op_schema
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
        if graph.model.functions:  # measured: it drops them, or fails with an IndexError
            raise ValueError("a node needs onnx.version_converter, which does not convert the model's local "
                             f"functions ({', '.join(f.name for f in graph.model.functions)})")
        converted = onnx.version_converter.convert_version(graph.to_model(), opset)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises many types; any failure means: do not upgrade
        ctx.upgrades_failed.add(opset)
        ctx.allow_upgrade = False
        report.note(f"could not upgrade opset {have} -> {opset} ({first_line(exc, 200)}); "
                    "rules that need it were skipped")
        return None
    report.note(f"upgraded opset {have} -> {opset} with onnx.version_converter (needed by a fusion)")
    return Graph(LoadedModel(converted, graph.loaded.path, graph.loaded.base_dir))


def upgrade_in_place(graph: Graph, have: int, want: int) -> bool:
    """Bump the opset without the converter when every node keeps its meaning; False changes nothing.

    Local functions are upgraded with the graph (their default-domain import must equal the model's),
    by the same rules; their value types are unknown, so a Clip with attribute bounds or a Softmax over
    an inner axis inside one needs the converter (which cannot convert functions: then no upgrade).
    """
    plan = []
    for nid, node in graph.nodes.items():
        if node.domain not in ("", "ai.onnx"):
            continue
        step = _plan_node(node, have, want, graph.facts.elem_type, graph.facts.rank)
        if step is False:
            return False
        if step is not None:
            plan.append((nid, step))
    function_plans = []
    for function in graph.model.functions:
        steps = _plan_function(function, want)
        if steps is False:
            return False
        function_plans.append((function, steps))
    for nid, moves in plan:
        _move_attributes_to_inputs(graph, nid, moves)
    for function, steps in function_plans:
        _upgrade_function(function, steps, want)
    graph.set_opset(want)
    return True


def _plan_function(function: onnx.FunctionProto, want: int):
    """[(node index, attribute moves)] to bring a function's body to `want`; False: it cannot be."""
    have = next((imp.version for imp in function.opset_import if imp.domain in ("", "ai.onnx")), None)
    if have is None:
        return []  # the body uses no default-domain op
    steps = []
    for k, node in enumerate(function.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        step = _plan_node(node, have, want, lambda v: None, lambda v: None)
        if step is False:
            return False
        if step:
            steps.append((k, step))
    return steps


def _upgrade_function(function: onnx.FunctionProto, steps, want: int) -> None:
    """Apply `_plan_function`'s moves (attribute -> a Constant node inside the body) and bump the import."""
    names = {v for n in function.node for v in (*n.input, *n.output)} | set(function.input)
    nodes = list(function.node)
    constants: dict[int, list[onnx.NodeProto]] = {}
    for k, moves in steps:
        node = nodes[k]
        inputs = list(node.input)
        for name, slot, dtype in moves:
            attr = next(a for a in node.attribute if a.name == name)
            value = np.asarray(onnx.helper.get_attribute_value(attr), dtype=dtype)
            const_name, n = f"{node.output[0]}_{name}", 0
            while const_name in names:
                n += 1
                const_name = f"{node.output[0]}_{name}_{n}"
            names.add(const_name)
            constants.setdefault(k, []).append(onnx.helper.make_node(
                "Constant", [], [const_name], value=onnx.numpy_helper.from_array(value, const_name)))
            inputs += [""] * (slot + 1 - len(inputs))
            inputs[slot] = const_name
            node.attribute.remove(attr)
        node.input[:] = inputs
    del function.node[:]
    for k, node in enumerate(nodes):
        function.node.extend(constants.get(k, []))
        function.node.append(node)
    for imp in function.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = want


def _plan_node(node: onnx.NodeProto, have: int, want: int, elem_type, rank):
    """None: unchanged; a list of attribute moves; False: needs the converter.

    `elem_type(value)` and `rank(value)` tell what is known of the node's inputs (None: unknown)."""
    old, new = op_schema(node.op_type, "", have), op_schema(node.op_type, "", want)
    if old is None or new is None:
        return False
    if old.since_version == new.since_version:
        return None
    if node.op_type in _MEANING_CHANGED or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                               for a in node.attribute):
        return False
    if node.op_type in _SOFTMAX_LIKE and old.since_version < 13 <= new.since_version:
        return None if _over_last_axis(node, rank) else False
    moves = []
    form = ATTRIBUTE_INPUTS.get(node.op_type)
    if form is not None and have < form[0] <= want:
        for name, slot, dtype in form[1]:
            if not any(a.name == name for a in node.attribute):
                continue
            if dtype is np.float32:  # a bound of Clip: must take the data's own float type
                elem = elem_type(node.input[0])
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


def _over_last_axis(node: onnx.NodeProto, rank) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if axis == -1:
        return True
    known = rank(node.input[0])
    return known is not None and axis == known - 1


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
