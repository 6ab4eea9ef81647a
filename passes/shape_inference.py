"""Input-shape pins, and folding of shape chains that are static.

    Shape(x)[k]                    -> k-th dim of x, when that dim is static (other dims may be dynamic)
    Gather(Shape(x), i)            -> dims[i]          (also Slice, Concat, Unsqueeze, Squeeze, Cast...)
    Shape(x, start, end)           -> dims[start:end]  (opset 15)
    Size(x)                        -> prod(dims)       when every dim is static

Dims come from `graph.facts`: onnx shape inference (with data propagation, so `Reshape(x,
Concat(Shape(y)...))` keeps what it can), completed by onnxruntime's symbolic engine where onnx leaves a
dim of a Shape's or Size's input unknown (asked here, and only here: it is slow). Each integer
1-D (or scalar) tensor built from `Shape` is tracked element by element: an element is an int (static)
or a dim name (dynamic). A tensor whose elements are all static becomes an initializer of the same
name; what stays dynamic is reported with the dynamic dims it depends on ("Shape of 'pixel_values'
depends on dynamic dim 'batch'").

`--input-shape name:1x3x800x800` pins dims by rewriting the graph input's type (and every value_info
that used the same symbolic dim name, since ONNX gives one name one size); `--keep-dynamic` keeps the
inputs as they are.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from fuser.errors import UsageError
from fuser.facts import Dim, GraphFacts, Shape
from fuser.graph import Graph, attribute
from fuser.pass_manager import PassResult

from .sections import FoldingSection, NotFolded

ShapeOf = Callable[[str], Shape | None]  # a value's shape where known (`GraphFacts.shape`)

INT_TYPES = {TensorProto.INT64: np.int64, TensorProto.INT32: np.int32}
MAX_TRACKED = 64  # elements of a shape tensor worth tracking


# ------------------------------------------------------------ partial values
@dataclass
class ShapeValue:
    """An integer tensor of rank 0 or 1 known element by element (int = static, str/None = dynamic)."""

    elems: list[Dim]
    scalar: bool
    dtype: int  # TensorProto.INT64 / INT32

    @property
    def static(self) -> bool:
        return all(isinstance(e, int) for e in self.elems)

    def array(self) -> np.ndarray:
        arr = np.array(self.elems, dtype=INT_TYPES[self.dtype])
        return arr.reshape(()) if self.scalar else arr


def _norm_axis(axis: int, rank: int) -> int | None:
    axis = axis + rank if axis < 0 else axis
    return axis if 0 <= axis < rank else None


def _ints(graph: Graph, values: dict[str, ShapeValue], name: str) -> list[int] | None:
    """Integer contents of an input: a small constant, or a tracked value whose elements are all static."""
    if not name:
        return None
    if name in values:
        v = values[name]
        return [int(e) for e in v.elems] if v.static else None
    if graph.is_constant(name) and graph.constant_nbytes(name) <= 8 * MAX_TRACKED:
        arr = graph.constant(name)
        if arr is not None and arr.dtype.kind in "iu" and arr.ndim <= 1:
            return [int(x) for x in arr.reshape(-1)]
    return None


def shape_dims(graph: Graph, node: onnx.NodeProto, shape_of: ShapeOf) -> tuple[Shape, int] | None:
    """The dims a `Shape` node returns (honouring start/end, opset 15) and the first dim's index."""
    shape = shape_of(node.input[0])
    if shape is None:
        return None
    rank = len(shape)
    start, end = attribute(node, "start", 0), attribute(node, "end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return list(shape[start:end]), start


def propagate(graph: Graph, shape_of: ShapeOf) -> dict[str, ShapeValue]:
    """Element-wise values of the integer shape tensors, in one topological sweep."""
    values: dict[str, ShapeValue] = {}
    for nid in graph.topological_order():
        node = graph.node(nid)
        if node.domain not in ("", "ai.onnx") or not node.output or not node.output[0]:
            continue
        try:
            result = _step(graph, node, values, shape_of)
        except (ValueError, IndexError, TypeError, KeyError):
            result = None
        if result is not None and len(result.elems) <= MAX_TRACKED:
            values[node.output[0]] = result
    return values


def _input(graph: Graph, values: dict[str, ShapeValue], name: str) -> ShapeValue | None:
    if name in values:
        return values[name]
    if name and graph.is_constant(name) and graph.constant_nbytes(name) <= 8 * MAX_TRACKED:
        arr = graph.constant(name)
        if arr is not None and arr.ndim <= 1 and arr.dtype in (np.int64, np.int32):
            return ShapeValue([int(x) for x in arr.reshape(-1)], arr.ndim == 0,
                              helper.np_dtype_to_tensor_dtype(arr.dtype))
    return None


def _step(graph: Graph, node: onnx.NodeProto, values: dict[str, ShapeValue], shape_of: ShapeOf
          ) -> ShapeValue | None:
    op, ins = node.op_type, list(node.input)
    if op == "Shape":
        got = shape_dims(graph, node, shape_of)
        return None if got is None else ShapeValue(got[0], False, TensorProto.INT64)
    if op == "Size":
        shape = shape_of(ins[0])
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return ShapeValue([int(np.prod(shape, dtype=np.int64))], True, TensorProto.INT64)
    data = _input(graph, values, ins[0]) if ins else None
    if data is None:
        return None
    if op in ("Identity",) or (op == "Cast" and attribute(node, "to") in INT_TYPES):
        dtype = attribute(node, "to", data.dtype)
        info = np.iinfo(INT_TYPES[dtype])
        if any(isinstance(e, int) and not info.min <= e <= info.max for e in data.elems):
            return None  # the cast wraps: not a shape computation
        return ShapeValue(list(data.elems), data.scalar, dtype)
    if op == "Gather":
        if data.scalar or _norm_axis(attribute(node, "axis", 0), 1) != 0:
            return None
        idx = _ints(graph, values, ins[1])
        if idx is None:
            return None
        scalar = _is_scalar(graph, values, ins[1])
        n = len(data.elems)
        picked = []
        for i in idx:
            k = _norm_axis(i, n)
            if k is None:
                return None
            picked.append(data.elems[k])
        return ShapeValue(picked, scalar, data.dtype)
    if op == "Slice":
        if data.scalar:
            return None
        if graph.opset() >= 10:
            starts, ends = _ints(graph, values, ins[1]), _ints(graph, values, ins[2])
            axes = _ints(graph, values, ins[3]) if len(ins) > 3 and ins[3] else [0]
            steps = _ints(graph, values, ins[4]) if len(ins) > 4 and ins[4] else [1]
        else:
            starts, ends = attribute(node, "starts"), attribute(node, "ends")
            axes, steps = attribute(node, "axes", [0]), [1]
        if None in (starts, ends, axes, steps) or len(starts) != 1 or [_norm_axis(a, 1) for a in axes] != [0]:
            return None
        if steps[0] == 0:
            return None
        return ShapeValue(list(data.elems)[slice(starts[0], ends[0], steps[0])], False, data.dtype)
    if op == "Concat":
        if _norm_axis(attribute(node, "axis", 0), 1) != 0:
            return None
        parts = [_input(graph, values, v) for v in ins]
        if any(p is None or p.scalar for p in parts):
            return None
        return ShapeValue([e for p in parts for e in p.elems], False, data.dtype)
    if op == "Unsqueeze":
        axes = attribute(node, "axes") if graph.opset() < 13 else _ints(graph, values, ins[1] if len(ins) > 1 else "")
        if data.scalar and axes is not None and [_norm_axis(a, 1) for a in axes] == [0]:
            return ShapeValue(list(data.elems), False, data.dtype)
        return None
    if op == "Squeeze":
        if graph.opset() < 13:
            axes = attribute(node, "axes")
        elif len(ins) > 1 and ins[1]:
            axes = _ints(graph, values, ins[1])
            if axes is None:
                return None
        else:
            axes = None
        if not data.scalar and len(data.elems) == 1 and (axes is None or [_norm_axis(a, 1) for a in axes] == [0]):
            return ShapeValue(list(data.elems), True, data.dtype)
        return None
    if op == "Reshape":
        target = _ints(graph, values, ins[1]) if len(ins) > 1 else None
        n = len(data.elems)
        if target == [] and n == 1:
            return ShapeValue(list(data.elems), True, data.dtype)
        copies = target == [0] and not data.scalar and not attribute(node, "allowzero", 0)
        if target is not None and len(target) == 1 and (target[0] in (-1, n) or copies):
            return ShapeValue(list(data.elems), False, data.dtype)
        return None
    return None


def _is_scalar(graph: Graph, values: dict[str, ShapeValue], name: str) -> bool:
    if name in values:
        return values[name].scalar
    arr = graph.constant(name)
    return arr is not None and arr.ndim == 0


# ------------------------------------------------------------------- pins
def apply_pins(graph: Graph, options) -> tuple[bool, dict[str, int]]:
    """Rewrite graph input dims to the pinned sizes; returns (changed, the symbolic dims that got a size).

    Raises UsageError for an unknown input, a rank mismatch, or a pin that contradicts a static dim.
    """
    pins = getattr(options, "input_shapes", None) or {}
    if not pins or getattr(options, "keep_dynamic", False):
        return False, {}
    inputs = {v.name: v for v in graph.model.graph.input if v.name not in graph.initializers}
    symbols: dict[str, int] = {}
    changed = False
    for name, dims in pins.items():
        vi = inputs.get(name)
        if vi is None:
            raise UsageError(f"--input-shape: '{name}' is not a graph input (inputs: {', '.join(inputs) or 'none'})")
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise UsageError(f"--input-shape: input '{name}' is not a tensor")
        if tt.HasField("shape") and len(tt.shape.dim) != len(dims):
            raise UsageError(f"--input-shape: input '{name}' has rank {len(tt.shape.dim)}, the pin "
                             f"{'x'.join(map(str, dims))} has {len(dims)} dims")
        if not tt.HasField("shape"):
            for _ in dims:
                tt.shape.dim.add()
        for k, (dim, size) in enumerate(zip(tt.shape.dim, dims)):
            if size < 0:
                raise UsageError(f"--input-shape: dim {k} of input '{name}' is negative ({size})")
            if dim.HasField("dim_value"):
                if dim.dim_value != size:
                    raise UsageError(f"--input-shape: dim {k} of input '{name}' is {dim.dim_value}, "
                                     f"not {size}")
                continue
            if dim.dim_param:
                if symbols.setdefault(dim.dim_param, size) != size:
                    raise UsageError(f"--input-shape: dim '{dim.dim_param}' is pinned to both "
                                     f"{symbols[dim.dim_param]} and {size}")
            dim.dim_value = size  # clears dim_param (oneof)
            changed = True
    if symbols:  # one name, one size: every value typed with that name gets the size too
        g = graph.model.graph
        for vi in itertools.chain(g.input, g.value_info, g.output):
            if vi.type.HasField("tensor_type"):
                for dim in vi.type.tensor_type.shape.dim:
                    if dim.dim_param in symbols:
                        dim.dim_value = symbols[dim.dim_param]
    if changed:
        graph.touch()
        graph.facts.forget_symbolic()  # inferred before the pins: less precise than what follows
    return changed, (symbols if changed else {})


# ------------------------------------------------------------------- pass
class ShapeFolding:
    """Pin input dims, infer shapes, and fold every shape tensor whose elements are all static."""

    name = "shape-folding"
    requires = ("acyclic",)

    def run(self, graph: Graph, ctx) -> PassResult:
        section = ctx.report.section(FoldingSection)
        pinned, symbols = apply_pins(graph, ctx.options)
        if pinned:
            section.pinned_dims.update(symbols)
        if getattr(ctx.options, "input_shapes", None) and getattr(ctx.options, "keep_dynamic", False):
            ctx.report.note("the input shapes (--input-shape / input_shapes=) were not applied to the graph because "
                            "keep_dynamic is set (--keep-dynamic)")
        if not (graph.by_op.get("Shape") or graph.by_op.get("Size")):
            section.not_folded = []
            return PassResult(bool(pinned))
        facts = graph.facts.snapshot()  # as before the folds below, which keep every remaining name's shape
        facts.complete_symbolic(graph.node(nid).input[0] for op in ("Shape", "Size") for nid in graph.by_op.get(op, ()))
        values = propagate(graph, facts.shape)
        refs = graph.subgraph_refs()
        static = {v for v, sv in values.items() if sv.static and not graph.is_constant(v)}
        folded = 0
        for value in sorted(static):
            if graph.is_graph_output(value):
                continue
            # fold the frontier only: values whose users are not all folded with them
            users = [graph.node(u).output[0] for u, _ in graph.uses(value)]
            if value not in refs and users and all(u in static and not graph.is_graph_output(u) for u in users):
                continue
            use = graph.producer(value)
            if use is None:
                continue
            graph.remove_node(use[0])
            graph.set_initializer(value, values[value].array())
            folded += 1
        section.shape_values_folded += folded
        section.not_folded = _not_folded(graph, facts)
        return PassResult(bool(pinned) or folded > 0)


def _not_folded(graph: Graph, facts: GraphFacts) -> list[NotFolded]:
    """Why each remaining Shape/Size node stays: the dynamic dims its users actually read."""
    out = []
    for nid in graph.nodes_of_type("Shape") + graph.nodes_of_type("Size"):
        node = graph.node(nid)
        x = node.input[0]
        if node.op_type == "Size":
            shape = facts.shape(x)
            dims, offset, used = (shape or []), 0, None
        else:
            got = shape_dims(graph, node, facts.shape)
            dims, offset = got if got is not None else ([], 0)
            used = _used_positions(graph, node.output[0], len(dims))
        if not dims and facts.shape(x) is None:
            reason = f"{node.op_type} of '{x}': the rank of '{x}' is unknown to shape inference"
        else:
            positions = range(len(dims)) if used is None else sorted(used)
            dynamic = [(offset + k, dims[k]) for k in positions if k < len(dims) and not isinstance(dims[k], int)]
            if not dynamic:
                if any(graph.is_graph_output(v) for v in node.output):
                    reason = f"{node.op_type} of '{x}' is a graph output"
                else:
                    continue
            else:
                named = sorted({d for _, d in dynamic if isinstance(d, str) and not d.startswith("unk__")})
                unknown = [k for k, d in dynamic if d is None or (isinstance(d, str) and d.startswith("unk__"))]
                parts = []
                if named:
                    parts.append(f"dynamic dim{'s' if len(named) > 1 else ''} "
                                 + ", ".join(f"'{d}'" for d in named))
                if unknown:
                    parts.append(f"dim{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))} "
                                 "(unknown to shape inference)")
                reason = f"{node.op_type} of '{x}' depends on " + " and ".join(parts)
        out.append(NotFolded(node.name or node.output[0], node.output[0], reason))
    return out


def _used_positions(graph: Graph, value: str, n: int) -> set[int] | None:
    """Positions of a Shape output that its users read, when every user is a constant Gather/Slice."""
    used: set[int] = set()
    for nid, slot in graph.uses(value):
        user = graph.node(nid)
        if slot != 0:
            return None
        if user.op_type == "Gather" and attribute(user, "axis", 0) in (0, -1) and graph.is_constant(user.input[1]):
            for i in np.asarray(graph.constant(user.input[1])).reshape(-1):
                k = _norm_axis(int(i), n)
                if k is None:
                    return None
                used.add(k)
        elif user.op_type == "Slice" and graph.opset() >= 10 and all(
                graph.is_constant(v) for v in user.input[1:] if v):
            params = [graph.constant(v) for v in user.input[1:]] + [None, None]
            starts, ends, axes, steps = params[0], params[1], params[2], params[3]
            if len(starts) != 1 or (axes is not None and int(axes[0]) not in (0, -1)):
                return None
            step = 1 if steps is None else int(steps[0])
            if step == 0:
                return None
            used.update(range(n)[slice(int(starts[0]), int(ends[0]), step)])
        else:
            return None
    return used
