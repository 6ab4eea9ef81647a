"""What is known about a graph's values and ops, from one place: `graph.facts`.

Every pass and rule asks here for shapes, element types and op schemas; nothing else infers shapes or
reads schemas, so every answer rests on the same evidence and the same guards.

Values. `shape(v)`, `elem_type(v)`, `rank(v)` are exact for constants (an initializer's dims, a Constant's
attribute) and graph inputs (their declaration); every other value is told by onnx shape inference of
the graph as edited. Never by an exporter's value_info: it can be stale, and a rewrite sized from it (a
Flatten's K, a LayerNorm's axes) or a proof resting on it (a Reshape that is a no-op) would be wrong.
Inference runs on the graph's skeleton (`Graph.skeleton`: big weights and big Constant values become
typed inputs, never read or copied) and propagates data only where that cannot exhaust memory
(`infer_model`).

Freshness. The graph bumps `version` on every edit, and facts re-infer lazily, on the first question
after an edit. A value's name denotes the same tensor for the whole run (rewrites keep the names of the
values they keep and never reuse a removed one), so an answer stays true after edits; what edits change
is how much inference can tell. A pass that edits as it asks (the fusion rules, no-op elimination) takes
a `snapshot()`: the facts of its first question for the rest of its run, values created since unknown,
instead of one inference per edit.

Symbolic completion. Where onnx leaves a dim unknown, onnxruntime's symbolic engine may know it (a dim
that flows through a Reshape built from Shape). It is slow (~1 s per 5k nodes), so it runs only when
asked (`complete_symbolic`, by shape folding), and its answers are kept for the graph's lifetime (names
keep their meaning) until the inputs' dims are pinned again (`forget_symbolic`). onnx's static dims and
declared names win over it; it fills what onnx leaves unknown.

Schemas. `op_schema`: onnx's schema in force at an opset; `signature`: an op's type constraints, for
onnx's ops and onnxruntime's own domains (com.microsoft), reduced to what type checks need; the rule
engine checks every op it emits against them (`first_accepting_opset`, `GraphFacts.input_types`).
`attribute_default`: what an absent attribute means.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from onnx import defs, helper

from .model_io import MAX_OPSET

if TYPE_CHECKING:
    from .graph import Graph

Dim = int | str | None  # static size, symbolic name, or unknown
Shape = list[Dim]

DEFAULT_DOMAINS = ("", "ai.onnx")
MAX_PROPAGATED = 1 << 16  # elements of a rank-1 tensor worth propagating as data


# ===================================================================== the facts of one graph
@dataclass(frozen=True)
class _Inferred:
    """One run of onnx inference over the graph: at which version, and what it told."""

    version: int
    shapes: dict[str, Shape | None]
    types: dict[str, int]


class GraphFacts:
    """Shapes, element types and schemas of one Graph's values and nodes (see the module docstring)."""

    def __init__(self, graph: Graph, *, _live: GraphFacts | None = None):
        self.graph = graph
        self._live = _live  # set on a snapshot: the graph's own facts, whose inference it shares
        self._inferred: _Inferred | None = None
        self._symbolic: dict[str, Shape] = _live._symbolic if _live is not None else {}
        self._inputs: dict[str, onnx.ValueInfoProto] | None = None  # the graph inputs' declarations

    def snapshot(self) -> GraphFacts:
        """These facts as of the first question asked of the snapshot, kept through later edits."""
        return GraphFacts(self.graph, _live=self._live or self)

    # ------------------------------------------------------------------ values
    def shape(self, value: str) -> Shape | None:
        """Static shape where known: ints, symbolic dim names, or None per unknown dim; None: rank unknown."""
        g = self.graph
        t = g.initializers.get(value)
        if t is not None:
            return list(t.dims)
        constant = _constant_attribute(g, value)
        if constant is not None:
            return _constant_dims(constant)
        declared = self._declared_inputs().get(value)
        shape = type_shape(declared.type) if declared is not None else self._current().shapes.get(value)
        return _merge(shape, self._symbolic.get(value))

    def elem_type(self, value: str, infer: bool = True) -> int | None:
        """ONNX element type (TensorProto.FLOAT...) or None when unknown. `infer=False`: only what is exact
        without inference (constants, graph inputs)."""
        g = self.graph
        t = g.initializers.get(value)
        if t is not None:
            return t.data_type
        constant = _constant_attribute(g, value)
        if constant is not None:
            return _constant_elem_type(constant)
        declared = self._declared_inputs().get(value)
        if declared is not None and declared.type.HasField("tensor_type") and declared.type.tensor_type.elem_type:
            return declared.type.tensor_type.elem_type
        return self._current().types.get(value) if infer else None

    def rank(self, value: str) -> int | None:
        """A value's rank, also where inference lost its dims: through Reshape targets of known length,
        broadcasting (the largest input rank) and rank-preserving ops. None when it cannot be told.

        An explicit stack, not recursion: the chain behind a value may be 100,000 nodes long."""
        memo: dict[str, int | None] = {}
        stack, expanded = [value], set()
        while stack:
            v = stack[-1]
            if v in memo:
                stack.pop()
                continue
            shape = self.shape(v)
            node = self.graph.producer_node(v) if shape is None else None
            if shape is not None or node is None:
                memo[v] = len(shape) if shape is not None else None
                stack.pop()
                continue
            needed = _rank_inputs(node)
            if v not in expanded and any(i not in memo for i in needed):
                expanded.add(v)  # a value seen again before it is decided (a cycle) counts as unknown
                stack.extend(i for i in needed if i not in memo and i not in expanded)
                continue
            memo[v] = self._rank_of(node, [memo.get(i) for i in needed])
            stack.pop()
        return memo[value]

    def _rank_of(self, node: onnx.NodeProto, ranks: list[int | None]) -> int | None:
        if node.op_type in _SAME_RANK and ranks:
            return ranks[0]
        if node.op_type in _BROADCAST and ranks and None not in ranks:
            return max(ranks)
        if node.op_type in ("Reshape", "Expand") and len(node.input) > 1:
            target = self.shape(node.input[1])
            if target is not None and isinstance(target[0], int):
                if node.op_type == "Reshape":
                    return target[0]
                return max(target[0], ranks[0]) if ranks and ranks[0] is not None else None
        return None

    # -------------------------------------------------------- symbolic completion
    def complete_symbolic(self, values: Iterable[str]) -> None:
        """Ask onnxruntime's symbolic engine when a dim of one of `values` is unknown to onnx and was not
        already asked about (see the module docstring)."""
        if not any(_needs_more(self.shape(v)) and v not in self._symbolic for v in values):
            return
        model = self.graph.skeleton()
        try:
            model = infer_model(model)
        except Exception:  # inference is best effort: the symbolic engine starts from the skeleton
            pass
        self._symbolic.update(_symbolic(model))

    def forget_symbolic(self) -> None:
        """Drop the symbolic engine's answers (the input dims were pinned: what follows is more precise)."""
        self._symbolic.clear()

    # ------------------------------------------------------------------ schemas
    def schema(self, node: onnx.NodeProto) -> defs.OpSchema | None:
        """onnx's schema of the node's op at the graph's opset of its domain."""
        return op_schema(node.op_type, node.domain, self.graph.opset(node.domain))

    def signature(self, node: onnx.NodeProto) -> Signature | None:
        return signature(node.op_type, node.domain, self.graph.opset(node.domain))

    def attribute_default(self, node: onnx.NodeProto, name: str):
        return attribute_default(node.op_type, node.domain, self.graph.opset(node.domain), name)

    def input_types(self, nodes: list[onnx.NodeProto], around: list[onnx.NodeProto]) -> dict[str, int]:
        """Element types of the inputs of `nodes` (the ops a rewrite built), as far as they can be told.

        Cheapest first: exact types (constants, graph inputs), unified through the type parameters of
        `nodes` (LayerNormalization(x, scale) makes x the scale's type), then of the nodes `around` them
        too (the match: Add(x, 3.0) with a float16 constant makes x float16); only then inference.
        """
        wanted = {v for n in nodes for v in n.input if v}
        types: dict[str, int] = {}
        for group in (nodes, nodes + around):
            for v in {v for n in group for v in (*n.input, *n.output) if v} - types.keys():
                if (t := self.elem_type(v, infer=False)) is not None:
                    types[v] = t
            self._unify(group, types)
            if wanted <= types.keys():
                return types
        for v in wanted - types.keys():
            if (t := self.elem_type(v)) is not None:
                types[v] = t
        self._unify(nodes + around, types)
        return types

    def _unify(self, nodes: list[onnx.NodeProto], types: dict[str, int]) -> None:
        """Fill `types` in place through the type parameters of `nodes` (to a fixed point; nodes are few)."""
        groups: list[tuple[str | None, list[str]]] = []  # (fixed type string or None, values sharing a type)
        for node in nodes:
            sig = self.signature(node)
            if sig is None:
                continue
            by_param: dict[str, list[str]] = {}
            for slot, v in enumerate(node.input):
                formal = sig.formal(slot)
                if v and formal is not None:
                    by_param.setdefault(formal, []).append(v)
            for slot, v in enumerate(node.output):
                formal = sig.output_formal(slot)
                if v and formal is not None:
                    by_param.setdefault(formal, []).append(v)
            for formal, vs in by_param.items():
                groups.append((None if formal in sig.allowed else formal, vs))
        changed = True
        while changed:
            changed = False
            for fixed, vs in groups:
                known = {types[v] for v in vs if v in types} if fixed is None else set(_ELEM_OF.get(fixed, ()))
                if len(known) != 1:
                    continue
                elem = known.pop()
                for v in vs:
                    if v not in types:
                        types[v] = elem
                        changed = True

    # ---------------------------------------------------------------- internals
    def _current(self) -> _Inferred:
        inferred = self._inferred
        if self._live is not None:  # a snapshot: the live facts' inference at its first question
            if inferred is None:
                inferred = self._inferred = self._live._current()
            return inferred
        if inferred is None or inferred.version != self.graph.version:
            inferred = self._inferred = _infer_graph(self.graph)
        return inferred

    def _declared_inputs(self) -> dict[str, onnx.ValueInfoProto]:
        """The graph inputs' declarations: exact (an input is where values come from), no inference. The
        protos themselves: pinning dims or retyping an input edits them in place."""
        if self._live is not None:
            return self._live._declared_inputs()
        if self._inputs is None:
            self._inputs = {vi.name: vi for vi in self.graph.model.graph.input}
        return self._inputs


def _infer_graph(graph: Graph) -> _Inferred:
    version = graph.version
    skeleton = graph.skeleton()
    try:
        inferred = infer_model(skeleton)
    except Exception:  # inference is best effort: unknown facts only make passes and rules more careful
        inferred = skeleton
    shapes: dict[str, Shape | None] = {}
    types: dict[str, int] = {}
    for v in itertools.chain(inferred.graph.input, inferred.graph.value_info, inferred.graph.output):
        shapes[v.name] = type_shape(v.type)
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return _Inferred(version, shapes, types)


def type_shape(typ: onnx.TypeProto) -> Shape | None:
    """A TypeProto's dims (int, symbolic name or None each); None when it has no shape or is no tensor."""
    if not typ.HasField("tensor_type") or not typ.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in typ.tensor_type.shape.dim]


def _constant_attribute(graph: Graph, value: str) -> onnx.AttributeProto | None:
    """The attribute holding the value of a default-domain Constant node's output."""
    use = graph.producers.get(value)
    if use is None:
        return None
    node = graph.nodes[use[0]]
    if node.op_type != "Constant" or node.domain not in DEFAULT_DOMAINS or not node.attribute:
        return None
    return node.attribute[0]


_SCALAR_ATTRS = {"value_float": onnx.TensorProto.FLOAT, "value_int": onnx.TensorProto.INT64,
                 "value_string": onnx.TensorProto.STRING}
_LIST_ATTRS = {"value_floats": (onnx.TensorProto.FLOAT, "floats"), "value_ints": (onnx.TensorProto.INT64, "ints"),
               "value_strings": (onnx.TensorProto.STRING, "strings")}


def _constant_dims(attr: onnx.AttributeProto) -> Shape | None:
    if attr.name == "value":
        return list(attr.t.dims)
    if attr.name == "sparse_value":
        return list(attr.sparse_tensor.dims)
    if attr.name in _SCALAR_ATTRS:
        return []
    if attr.name in _LIST_ATTRS:
        return [len(getattr(attr, _LIST_ATTRS[attr.name][1]))]
    return None


def _constant_elem_type(attr: onnx.AttributeProto) -> int | None:
    if attr.name == "value":
        return attr.t.data_type or None
    if attr.name == "sparse_value":
        return attr.sparse_tensor.values.data_type or None
    if attr.name in _SCALAR_ATTRS:
        return _SCALAR_ATTRS[attr.name]
    if attr.name in _LIST_ATTRS:
        return _LIST_ATTRS[attr.name][0]
    return None


def _needs_more(shape: Shape | None) -> bool:
    return shape is None or any(d is None or (isinstance(d, str) and d.startswith("unk__")) for d in shape)


def _merge(onnx_shape: Shape | None, symbolic: Shape | None) -> Shape | None:
    """onnx's answer completed by the symbolic engine's: onnx's ints and declared names win."""
    if onnx_shape is None or symbolic is None or len(onnx_shape) != len(symbolic):
        return onnx_shape if onnx_shape is not None else symbolic
    out: Shape = []
    for x, y in zip(onnx_shape, symbolic):
        unknown = x is None or (isinstance(x, str) and x.startswith("unk__"))
        out.append(y if unknown and y is not None else x)
    return out


_SAME_RANK = frozenset({"Cast", "Relu", "Softmax", "LogSoftmax", "Erf", "Tanh", "Sqrt", "Neg", "Not", "Identity",
                        "Dropout", "Transpose", "Sigmoid", "Exp", "Log", "Abs", "Reciprocal", "CastLike",
                        "LayerNormalization", "Clip", "HardSigmoid", "HardSwish"})
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Where", "And", "Or", "Xor", "Equal", "Less",
                        "Greater", "LessOrEqual", "GreaterOrEqual", "Max", "Min", "Sum", "Mean", "MatMul"})


def _rank_inputs(node: onnx.NodeProto) -> list[str]:
    """The inputs whose ranks decide the rank of the node's output."""
    if node.op_type in _SAME_RANK or node.op_type == "Expand":
        return node.input[:1]
    if node.op_type in _BROADCAST:
        return [v for v in node.input if v]
    return []


# ================================================================ onnx inference, guarded
# onnx's data propagation (`data_prop=True`) is what turns `Shape -> Gather -> Concat -> Reshape` into
# static shapes, but it stores the value of every rank-1 tensor that a propagating op (Cast, Concat,
# Slice, Gather, Unsqueeze, ...) reads as one protobuf dim per element — ~140 bytes each, measured: a
# Cast of a [4,000,000] tensor took 550 MB, and a 300-byte model with a Cast after a ConstantOfShape of
# 2**28 elements took over 24 GB. Shape tensors are a handful of elements long, so where a propagating
# op reads a rank-1 tensor longer than MAX_PROPAGATED (seen by inference without data propagation
# first), the model is inferred without it. A long length known only through propagated values (a Range
# whose limit is a product of shape values) is not seen by that first pass; such graphs are not guarded.

# ops that make a tensor's size from values: with them, or a big declared tensor, the first pass runs
_SIZE_MAKERS = frozenset({"ConstantOfShape", "Range", "Expand", "Tile", "Pad", "OneHot", "Resize", "Upsample",
                          "EyeLike"})


def infer_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """`onnx.shape_inference.infer_shapes(model, data_prop=True)` where that is safe, else without data
    propagation. Raises what onnx raises."""
    if _may_be_long(model):
        plain = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
        if _long_input_to_propagation(plain):
            return plain
    return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)


def _may_be_long(model: onnx.ModelProto) -> bool:
    """Could a long rank-1 tensor exist? Only from a big declared tensor (an input, initializer or Constant,
    reshaped, gathered...) or an op that makes sizes from values."""
    g = model.graph
    constants = (_constant_dims(a) or [] for n in g.node if n.op_type == "Constant" for a in n.attribute[:1])
    shapes = itertools.chain(([d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.input
                              if v.type.HasField("tensor_type")), (list(t.dims) for t in g.initializer), constants)
    return any(math.prod(s) > MAX_PROPAGATED for s in shapes) or any(n.op_type in _SIZE_MAKERS for n in g.node)


@lru_cache(maxsize=None)
def _propagating_ops() -> frozenset[str]:
    return frozenset(s.name for s in defs.get_all_schemas_with_history()
                     if getattr(s, "has_data_propagation_function", False))


def _long_input_to_propagation(inferred: onnx.ModelProto) -> bool:
    g = inferred.graph
    rank1 = {}
    for v in itertools.chain(g.input, g.value_info, g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            dims = v.type.tensor_type.shape.dim
            if len(dims) == 1 and dims[0].HasField("dim_value"):
                rank1[v.name] = dims[0].dim_value
    rank1.update({t.name: t.dims[0] for t in g.initializer if len(t.dims) == 1})
    ops = _propagating_ops()
    return any(rank1.get(v, 0) > MAX_PROPAGATED for n in g.node if n.op_type in ops for v in n.input)


# ================================================================= onnxruntime's symbolic engine
def _symbolic(model: onnx.ModelProto) -> dict[str, Shape]:
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
        # that can be 1), and a folded dim must be proven. Driven by hand: its `infer_shapes` also saves
        # a temp model in the cwd when inference is incomplete.
        engine = ssi.SymbolicShapeInference(2**31 - 1, False, False, 0)
        engine._preprocess(model)
        while engine.run_:
            engine._infer_impl()
    except Exception:  # stopped at a node it cannot prove: what it inferred before that still holds
        pass
    finally:
        logger.setLevel(level)
    shapes: dict[str, Shape] = {}
    for name, vi in (getattr(engine, "known_vi_", None) or {}).items():
        try:
            shape = type_shape(vi.type)
        except Exception:
            continue
        if shape is not None:
            shapes[name] = shape
    return shapes


@lru_cache(maxsize=1)
def _symbolic_module():
    """onnxruntime's symbolic_shape_infer.py, loaded by path: importing it through `onnxruntime.tools`
    runs that package's __init__, which imports torch whenever torch is installed (1.5-2 s a run)."""
    try:
        import onnxruntime

        path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
        spec = importlib.util.spec_from_file_location("fuser_ort_symbolic_shape_infer", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except Exception:  # no onnxruntime tools: onnx's inference alone
        return None


# ========================================================================== op schemas
@lru_cache(maxsize=4096)
def op_schema(op_type: str, domain: str | None, opset: int) -> defs.OpSchema | None:
    """onnx's schema of an op in force at `opset` of its domain (None: onnx does not define it there)."""
    try:
        return defs.get_schema(op_type, opset, _domain(domain))
    except Exception:
        return None


@lru_cache(maxsize=4096)
def attribute_default(op_type: str, domain: str | None, opset: int, name: str):
    """The default of an attribute per the op's schema at this opset (None when it has none)."""
    schema = op_schema(op_type, domain, opset)
    attr = schema.attributes.get(name) if schema is not None else None
    if attr is None or not attr.default_value.name:
        return None
    return helper.get_attribute_value(attr.default_value)


@dataclass(frozen=True)
class Signature:
    """One schema version, reduced to what type checks need."""

    since: int
    inputs: tuple[tuple[str, bool], ...]  # (type string or parameter name, variadic) per formal input
    outputs: tuple[tuple[str, bool], ...]
    allowed: dict  # type parameter -> frozenset of 'tensor(float)'...
    attributes: frozenset[str] = frozenset()

    def formal(self, slot: int) -> str | None:
        """The type string of input `slot` (None: the op has no such input)."""
        return _formal(self.inputs, slot)

    def output_formal(self, slot: int) -> str | None:
        return _formal(self.outputs, slot)

    def types(self, formal: str) -> frozenset[str]:
        """The type strings a formal parameter takes ('T' -> its constraint; 'tensor(int64)' -> itself)."""
        return self.allowed.get(formal, frozenset({formal}))

    def accepts(self, types: list[int | None]) -> bool:
        """Do inputs of these element types (None: absent) satisfy the schema, one type per parameter?"""
        bound: dict[str, int] = {}
        for slot, elem in enumerate(types):
            if elem is None:
                continue
            formal = self.formal(slot)
            if formal is None or type_string(elem) not in self.types(formal):
                return False
            if formal in self.allowed and bound.setdefault(formal, elem) != elem:
                return False
        return True


def _formal(params: tuple[tuple[str, bool], ...], slot: int) -> str | None:
    if slot < len(params):
        return params[slot][0]
    if params and params[-1][1]:
        return params[-1][0]
    return None


def type_string(elem: int) -> str:
    """ONNX element type -> the schema's spelling: TensorProto.BFLOAT16 -> 'tensor(bfloat16)'."""
    return f"tensor({onnx.TensorProto.DataType.Name(elem).lower()})"


def type_name(elem: int) -> str:
    return onnx.TensorProto.DataType.Name(elem).lower()


_ELEM_OF = {type_string(e): (e,) for e in onnx.TensorProto.DataType.values() if e}


@lru_cache(maxsize=None)
def _registry() -> dict[tuple[str, str], tuple[Signature, ...]]:
    """(domain, op type) -> every version of its schema, oldest first: onnx's, and onnxruntime's own domains."""
    found: dict[tuple[str, str], list[Signature]] = {}
    variadic = defs.OpSchema.FormalParameterOption.Variadic
    for s in defs.get_all_schemas_with_history():
        sig = Signature(s.since_version, tuple((i.type_str, i.option == variadic) for i in s.inputs),
                        tuple((o.type_str, o.option == variadic) for o in s.outputs),
                        {c.type_param_str: frozenset(c.allowed_type_strs) for c in s.type_constraints},
                        frozenset(s.attributes))
        found.setdefault((s.domain or "", s.name), []).append(sig)
    try:  # onnxruntime's contrib ops; its registry repeats onnx's, which onnx already gave
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        for s in ort_state.get_all_operator_schema():
            if (s.domain or "") in DEFAULT_DOMAINS or (s.domain or "").startswith("ai.onnx"):
                continue
            sig = Signature(s.since_version,
                            tuple((i.typeStr, str(i.option).endswith("Variadic")) for i in s.inputs),
                            tuple((o.typeStr, str(o.option).endswith("Variadic")) for o in s.outputs),
                            {c.type_param_str: frozenset(c.allowed_type_strs) for c in s.type_constraints},
                            frozenset(s.attributes))
            found.setdefault((s.domain, s.name), []).append(sig)
    except Exception:  # an onnxruntime without the registry: its domains go unchecked
        pass
    return {key: tuple(sorted(sigs, key=lambda s: s.since)) for key, sigs in found.items()}


@lru_cache(maxsize=4096)
def signature(op_type: str, domain: str | None, opset: int) -> Signature | None:
    """The schema version in force at `opset` (None: the op is unknown there)."""
    current = None
    for sig in _registry().get((_domain(domain), op_type), ()):
        if sig.since <= opset:
            current = sig
    return current


def first_accepting_opset(op_type: str, domain: str | None, types: list[int | None], lowest: int,
                          highest: int | None = None) -> int | None:
    """The lowest opset in lowest..highest at which the op accepts inputs of `types` (None: none does)."""
    highest = min(defs.onnx_opset_version(), MAX_OPSET) if highest is None else highest
    versions = _registry().get((_domain(domain), op_type), ())
    for k, sig in enumerate(versions):
        end = versions[k + 1].since - 1 if k + 1 < len(versions) else highest
        start = max(sig.since, lowest)
        if start <= min(end, highest) and sig.accepts(types):
            return start
    return None


def known_schema(op_type: str, domain: str | None) -> bool:
    return (_domain(domain), op_type) in _registry()


def is_onnx_domain(domain: str | None) -> bool:
    """onnx's own domains (the default one, ai.onnx.ml...), as opposed to a runtime's (com.microsoft)."""
    return _domain(domain) == "" or (domain or "").startswith("ai.onnx")


def _domain(domain: str | None) -> str:
    return "" if domain in (None, *DEFAULT_DOMAINS) else domain
