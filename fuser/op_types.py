"""Which element types an op's schema accepts at an opset: the engine's type gate for emitted ops.

A rule emits ops (HardSwish, LayerNormalization, com.microsoft.FusedConv) whose schemas constrain the
element types of their inputs, and the constraints change over opsets: HardSwish takes bfloat16 only
from opset 22 and never int32, although the Add/Clip/Mul/Div it replaces take both. Emitting it
anyway writes a model that fails the checker. `first_accepting_opset` says from which opset an op
accepts given input types (None: at none); `input_types` finds those types: declared or inferred
types of the values, else unified through the type parameters of the nodes around them (in
`Add(x, 3.0)` with a float16 constant, x is float16 too).

Schemas come from onnx; ops of onnxruntime's own domains (com.microsoft) from onnxruntime's registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import onnx
from onnx import defs

from .graph import Graph
from .model_io import MAX_OPSET

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Signature:
    """One schema version, reduced to what type checks need."""

    since: int
    inputs: tuple[tuple[str, bool], ...]  # (type string or parameter name, variadic) per formal input
    outputs: tuple[str, ...]
    allowed: dict  # type parameter -> frozenset of 'tensor(float)'...

    def formal(self, slot: int) -> str | None:
        """The type string of input `slot` (None: the op has no such input)."""
        if slot < len(self.inputs):
            return self.inputs[slot][0]
        if self.inputs and self.inputs[-1][1]:
            return self.inputs[-1][0]
        return None

    def accepts(self, types: list[int | None]) -> bool:
        """Do inputs of these element types (None: absent) satisfy the schema, one type per parameter?"""
        bound: dict[str, int] = {}
        for slot, elem in enumerate(types):
            if elem is None:
                continue
            formal = self.formal(slot)
            if formal is None or type_string(elem) not in self.allowed.get(formal, {formal}):
                return False
            if formal in self.allowed and bound.setdefault(formal, elem) != elem:
                return False
        return True


def type_string(elem: int) -> str:
    """ONNX element type -> the schema's spelling: TensorProto.BFLOAT16 -> 'tensor(bfloat16)'."""
    return f"tensor({onnx.TensorProto.DataType.Name(elem).lower()})"


def type_name(elem: int) -> str:
    return onnx.TensorProto.DataType.Name(elem).lower()


@lru_cache(maxsize=None)
def _registry() -> dict[tuple[str, str], tuple[Signature, ...]]:
    """(domain, op type) -> every version of its schema, oldest first."""
    found: dict[tuple[str, str], list[Signature]] = {}
    for s in defs.get_all_schemas_with_history():
        sig = Signature(s.since_version,
                        tuple((i.type_str, i.option == defs.OpSchema.FormalParameterOption.Variadic) for i in s.inputs),
                        tuple(o.type_str for o in s.outputs),
                        {c.type_param_str: frozenset(c.allowed_type_strs) for c in s.type_constraints})
        found.setdefault((s.domain or "", s.name), []).append(sig)
    try:  # onnxruntime's contrib ops; its registry repeats onnx's, which onnx already gave
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        for s in ort_state.get_all_operator_schema():
            if (s.domain or "") in DEFAULT_DOMAINS or (s.domain or "").startswith("ai.onnx"):
                continue
            sig = Signature(s.since_version,
                            tuple((i.typeStr, str(i.option).endswith("Variadic")) for i in s.inputs),
                            tuple(o.typeStr for o in s.outputs),
                            {c.type_param_str: frozenset(c.allowed_type_strs) for c in s.type_constraints})
            found.setdefault((s.domain, s.name), []).append(sig)
    except Exception:  # an onnxruntime without the registry: its domains go unchecked
        pass
    return {key: tuple(sorted(sigs, key=lambda s: s.since)) for key, sigs in found.items()}


@lru_cache(maxsize=4096)
def signature(op_type: str, domain: str, opset: int) -> Signature | None:
    """The schema version in force at `opset` (None: the op is unknown there)."""
    versions = _registry().get((_domain(domain), op_type), ())
    current = None
    for sig in versions:
        if sig.since <= opset:
            current = sig
    return current


def first_accepting_opset(op_type: str, domain: str, types: list[int | None], lowest: int,
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


def known_schema(op_type: str, domain: str) -> bool:
    return (_domain(domain), op_type) in _registry()


def input_types(graph: Graph, nodes: list[onnx.NodeProto], around: list[onnx.NodeProto]) -> dict[str, int]:
    """Element types of the inputs of `nodes` (the ops a rewrite built), as far as they can be told.

    Cheapest first: declared types (initializers, Constants, value_info), unified through the type
    parameters of `nodes` (LayerNormalization(x, scale) makes x the scale's type), then of the nodes
    `around` them too (the match: Add(x, 3.0) with a float16 constant makes x float16); only then onnx's
    inference of the whole graph.
    """
    wanted = {v for n in nodes for v in n.input if v}
    types: dict[str, int] = {}
    for group in (nodes, nodes + around):
        for v in {v for n in group for v in (*n.input, *n.output) if v} - types.keys():
            if (t := graph.elem_type(v, infer=False)) is not None:
                types[v] = t
        _unify(graph, group, types)
        if wanted <= types.keys():
            return types
    for v in wanted - types.keys():
        if (t := graph.elem_type(v)) is not None:
            types[v] = t
    _unify(graph, nodes + around, types)
    return types


def _unify(graph: Graph, nodes: list[onnx.NodeProto], types: dict[str, int]) -> None:
    """Fill `types` in place through the type parameters of `nodes` (to a fixed point; nodes are few)."""
    groups: list[tuple[str | None, list[str]]] = []  # (fixed type string or None, values sharing a type)
    for node in nodes:
        sig = signature(node.op_type, node.domain, graph.opset(node.domain))
        if sig is None:
            continue
        by_param: dict[str, list[str]] = {}
        for slot, v in enumerate(node.input):
            formal = sig.formal(slot)
            if v and formal is not None:
                by_param.setdefault(formal, []).append(v)
        for slot, v in enumerate(node.output):
            if v and slot < len(sig.outputs):
                by_param.setdefault(sig.outputs[slot], []).append(v)
        for formal, vs in by_param.items():
            groups.append((None if formal in sig.allowed else formal, vs))
    changed = True
    while changed:
        changed = False
        for fixed, vs in groups:
            known = {types[v] for v in vs if v in types}
            if fixed is not None:
                known = {e for e in _ELEM_OF.get(fixed, ())}
            if len(known) != 1:
                continue
            elem = known.pop()
            for v in vs:
                if v not in types:
                    types[v] = elem
                    changed = True


_ELEM_OF = {type_string(e): (e,) for e in onnx.TensorProto.DataType.values() if e}


def _domain(domain: str | None) -> str:
    return "" if domain in (None, *DEFAULT_DOMAINS) else domain
