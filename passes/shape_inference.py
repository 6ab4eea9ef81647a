"""Shape inference with symbolic dims, input-shape pins, and folding of shape chains that are static.

    Shape(x)[k]                    -> k-th dim of x, when that dim is static (other dims may be dynamic)
    Gather(Shape(x), i)            -> dims[i]          (also Slice, Concat, Unsqueeze, Squeeze, Cast...)
    Shape(x, start, end)           -> dims[start:end]  (opset 15)
    Size(x)                        -> prod(dims)       when every dim is static

Dims come from onnx shape inference (with data propagation, so `Reshape(x, Concat(Shape(y)...))` keeps
what it can), completed by onnxruntime's symbolic engine where onnx leaves a dim unknown. Each integer
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
import logging
import weakref
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import TensorProto, helper

from fuser import onnx_inference
from fuser.errors import UsageError
from fuser.graph import Graph, attribute

from .sections import FoldingSection, NotFolded

Dim = int | str | None  # static size, symbolic name, or unknown
Shape = list[Dim]

INT_TYPES = {TensorProto.INT64: np.int64, TensorProto.INT32: np.int32}
MAX_TRACKED = 64  # elements of a shape tensor worth tracking


# ------------------------------------------------------------------ inference
def infer_shapes(graph: Graph, symbolic: bool | None = None) -> dict[str, Shape | None]:
    """Fresh shapes of every value: onnx inference (data_prop) merged with onnxruntime's symbolic engine.

    `symbolic=None` runs the symbolic engine only when onnx leaves some dim of a `Shape`/`Size` input
    unknown that an earlier symbolic run on this graph did not answer (it is slow: ~1 s per 5k nodes).
    Its answers are kept for the graph's lifetime: a value name always denotes the same value during a
    run (rewrites keep names for unchanged values and never reuse a removed name). onnx's ints and
    declared names win over the symbolic engine's; the engine fills what onnx leaves unknown.
    """
    skeleton = graph.skeleton()
    shapes = ShapeMap()
    try:
        inferred = onnx_inference.infer_shapes(skeleton)
    except Exception:  # inference is best effort: unknown shapes only make folding more careful
        inferred = skeleton
    _collect(inferred.graph, shapes)
    for name, t in graph.initializers.items():
        shapes[name] = list(t.dims)
        shapes.types[name] = t.data_type
    known = _SYMBOLIC.get(graph)
    if symbolic is None:
        symbolic = any(_needs_more(shapes.get(x)) and (known is None or x not in known)
                       for op in ("Shape", "Size") for nid in graph.by_op.get(op, ())
                       for x in graph.node(nid).input[:1])
    if symbolic:
        known = {**(known or {}), **_symbolic(inferred)}
        _SYMBOLIC[graph] = known
    for name, shape in (known or {}).items():
        shapes[name] = _merge(shapes.get(name), shape)
    return shapes


_SYMBOLIC: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> symbolic engine's shapes


class ShapeMap(dict):
    """value name -> shape (None when unknown), and `types`: value name -> ONNX element type."""

    def __init__(self):
        super().__init__()
        self.types: dict[str, int] = {}


def _collect(g: onnx.GraphProto, shapes: dict[str, Shape | None]) -> None:
    types = getattr(shapes, "types", None)
    for v in itertools.chain(g.input, g.value_info, g.output):
        shapes[v.name] = type_shape(v.type)
        if types is not None and v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type


def type_shape(typ: onnx.TypeProto) -> Shape | None:
    if not typ.HasField("tensor_type") or not typ.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in typ.tensor_type.shape.dim]


def _needs_more(shape: Shape | None) -> bool:
    return shape is None or any(d is None or (isinstance(d, str) and d.startswith("unk__")) for d in shape)


def _merge(a: Shape | None, b: Shape | None) -> Shape | None:
    if a is None or b is None or len(a) != len(b):
        return a if a is not None else b
    out: Shape = []
    for x, y in zip(a, b):
        unknown = x is None or (isinstance(x, str) and x.startswith("unk__"))
        out.append(y if unknown and y is not None else x)  # a declared name or onnx's int is kept
    return out


def _symbolic(model: onnx.ModelProto) -> dict[str, Shape | None]:
    """onnxruntime's symbolic shape inference, partial results kept (it raises when incomplete)."""
    ssi = _symbolic_module()
    if ssi is None:
        return {}
    logger = logging.getLogger(ssi.__name__)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    engine = None
    try:
        # No auto_merge: merging two dims to make a broadcast agree assumes what may be false (a dim
        # that can be 1), and a folded dim must be proven. Driven by hand: `infer_shapes` also saves a
        # temp model in the cwd when inference is incomplete.
        engine = ssi.SymbolicShapeInference(2**31 - 1, False, False, 0)
        engine._preprocess(model)
        while engine.run_:
            engine._infer_impl()
    except Exception:  # stopped at a node it cannot prove: what it inferred before that still holds
        pass
    finally:
        logger.setLevel(level)
    shapes: dict[str, Shape | None] = {}
    for name, vi in (getattr(engine, "known_vi_", None) or {}).items():
        try:
            shape = type_shape(vi.type)
        except Exception:
            continue
        if shape is not None:
            shapes[name] = shape
    return shapes


def _symbolic_module():
    """onnxruntime's symbolic_shape_infer.py, loaded by path: importing it through `onnxruntime.tools`
    runs that package's __init__, which imports torch whenever torch is installed (1.5-2 s a run)."""
    global _SSI
    if _SSI is None:
        try:
            import importlib.util

            import onnxruntime

            path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
            spec = importlib.util.spec_from_file_location("fuser_ort_symbolic_shape_infer", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _SSI = module
        except Exception:  # no onnxruntime tools: onnx's inference alone
            _SSI = False
    return _SSI or None


_SSI = None


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


def shape_dims(graph: Graph, node: onnx.NodeProto, shapes: dict[str, Shape | None]) -> tuple[Shape, int] | None:
    """The dims a `Shape` node returns (honouring start/end, opset 15) and the first dim's index."""
    shape = shapes.get(node.input[0])  # fresh inference only: exported value_info can be stale
    if shape is None:
        return None
    rank = len(shape)
    start, end = attribute(node, "start", 0), attribute(node, "end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return list(shape[start:end]), start


def propagate(graph: Graph, shapes: dict[str, Shape | None]) -> dict[str, ShapeValue]:
    """Element-wise values of the integer shape tensors, in one topological sweep."""
    values: dict[str, ShapeValue] = {}
    for nid in graph.topological_order():
        node = graph.node(nid)
        if node.domain not in ("", "ai.onnx") or not node.output or not node.output[0]:
            continue
        try:
            result = _step(graph, node, values, shapes)
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


def _step(graph: Graph, node: onnx.NodeProto, values: dict[str, ShapeValue],
          shapes: dict[str, Shape | None]) -> ShapeValue | None:
    op, ins = node.op_type, list(node.input)
    if op == "Shape":
        got = shape_dims(graph, node, shapes)
        return None if got is None else ShapeValue(got[0], False, TensorProto.INT64)
    if op == "Size":
        shape = shapes.get(ins[0])
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
        graph.invalidate_types()
        _SYMBOLIC.pop(graph, None)  # inferred before the pins: less precise than what follows
    return changed, (symbols if changed else {})


# ------------------------------------------------------------------- pass
class ShapeFolding:
    """Pin input dims, infer shapes, and fold every shape tensor whose elements are all static."""

    name = "shape-folding"
    requires = ("acyclic",)

    def run(self, graph: Graph, ctx) -> bool:
        section = ctx.report.section(FoldingSection)
        pinned, symbols = apply_pins(graph, ctx.options)
        if pinned:
            section.pinned_dims.update(symbols)
        if getattr(ctx.options, "input_shapes", None) and getattr(ctx.options, "keep_dynamic", False):
            ctx.report.note("--input-shape was not applied to the graph because --keep-dynamic is set")
        if not (graph.by_op.get("Shape") or graph.by_op.get("Size")):
            section.not_folded = []
            return bool(pinned)
        shapes = infer_shapes(graph)
        values = propagate(graph, shapes)
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
        section.not_folded = _not_folded(graph, shapes)
        return bool(pinned) or folded > 0


def _not_folded(graph: Graph, shapes: dict[str, Shape | None]) -> list[NotFolded]:
    """Why each remaining Shape/Size node stays: the dynamic dims its users actually read."""
    out = []
    for nid in graph.nodes_of_type("Shape") + graph.nodes_of_type("Size"):
        node = graph.node(nid)
        x = node.input[0]
        if node.op_type == "Size":
            shape = shapes.get(x)
            dims, offset, used = (shape or []), 0, None
        else:
            got = shape_dims(graph, node, shapes)
            dims, offset = got if got is not None else ([], 0)
            used = _used_positions(graph, node.output[0], len(dims))
        if not dims and (shapes.get(x)) is None:
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
