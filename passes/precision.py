"""fp16 in the graph: convert float32 tensors to float16, keeping fp32 islands where precision or types need them.

Strongly typed TensorRT(-RTX) takes precision from the ONNX tensor types, so `--precision fp16` writes it
into the graph. The pass runs once, after fusion and clean-up have reached their fixed point (it is a
`final` pass: LayerNorms are already fused, and no rule ever folds constants in fp16 arithmetic).

    float32 initializer / Constant           -> float16 copy of the values
    float32 node output                      -> float16 (where the op's schema allows float16 for it)
    LayerNormalization(x, s, b)              -> LayerNormalization(x16, s16, b16, stash_type=1)  fp32 statistics
                                                (any op with a stash_type attribute: GroupNormalization...)
    Cast(x, to=FLOAT)                        -> Cast(x, to=FLOAT16);  ConstantOfShape value, dtype attrs alike
    op in keep_fp32 (op type or node name)   -> Cast(->fp32) · op · Cast(->fp16), only where an fp16 tensor
                                                enters or leaves it; one Cast per value and direction, reused
    constant with a finite |x| > 65504       -> stays fp32 ("overflow_kept"), and so do the ops reading it
                                                (Mul(1 - mask, -3.4e38) in fp16 after a Cast would be 0 * -inf
                                                = NaN); their results are Cast to fp16 for fp16 users
    operand the schema keeps float-only      -> stays fp32 (Resize scales); a whole op with no float16 type
                                                (Range) stays fp32 and is listed in "kept_fp32"
    graph inputs / outputs                   -> keep their types, Casts at the boundary (fp16_io: become fp16)
    integer, bool, double, bfloat16 tensors  -> untouched

Which operand may be fp16 is read from the ONNX schema of the node's op at the model's opset: an operand
whose type parameter is shared with an output follows the node's precision; a type parameter used by one
input only (Cast's input, Shape's input, Pow's exponent) takes either type and never gets a Cast.

Not handled (left as they are, documented): ops of non-standard domains and ops with subgraphs (If,
Loop, Scan) stay fp32 entirely, and values their subgraphs read from the outer scope keep their fp32
type under their name; sequence and optional types are not converted; values whose type onnx shape
inference cannot tell are left alone (counted in the report). Constants whose every nonzero value
flushes to zero in fp16 (a decomposed LayerNorm's eps of 1e-12) are converted but listed in
"flushed_to_zero" with a warning: keep their consumers in fp32 or fuse the pattern.

The report's `precision` section (`PrecisionStats`): converted_initializers, converted_constants (Constant nodes),
fp16_copies (exact fp16 copies of an fp32 constant also read by a kept op), casts_inserted, kept_fp32
(node, op, reason), overflow_kept, flushed_to_zero, unknown_types, unmatched_keep_fp32 (also a warning).
Inserted Casts carry doc_string "fuser:precision"; running the pass again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fuser.facts import Signature, is_onnx_domain
from fuser.graph import Graph, attribute
from fuser.pass_manager import PassResult

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = 65504.0
# Operand requirements: a type, or "either type" (never Cast) preferring fp16 or fp32 for constants.
ANY, ANY32 = -1, -2
MARK = "fuser:precision"  # doc_string of the Casts this pass inserts (re-running the pass leaves them alone)
TYPE_ATTR = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
             "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "Bernoulli": "dtype"}
SUBGRAPH = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
F16, F32 = "tensor(float16)", "tensor(float)"


@dataclass
class NodePlan:
    """What one node becomes: the type each float32 operand must have, the new type of each float32 output."""

    mode: int  # FLOAT16, or FLOAT for a node kept in fp32
    inputs: dict[int, int]  # input slot -> FLOAT16 | FLOAT | ANY | ANY32
    outputs: dict[int, int]  # output slot -> FLOAT16 | FLOAT
    reason: str | None = None  # why the node stays fp32


@dataclass
class KeptFp32:
    """A node that stays fp32, and why (an island of --keep-fp32, an overflowing constant, a type it needs)."""

    node: str
    op: str
    reason: str


@dataclass
class PrecisionStats:
    """What the fp16 conversion did: the report's `precision` section (metadata: fuser/report/codec.py)."""

    key: ClassVar[str] = "precision"

    precision: str = "fp16"
    converted_initializers: int = 0
    converted_constants: int = 0
    fp16_copies: int = 0
    casts_inserted: int = 0
    kept_fp32: list[KeptFp32] = field(default_factory=list)
    overflow_kept: list[str] = field(default_factory=list)
    flushed_to_zero: list[str] = field(default_factory=list)
    unknown_types: int = 0
    unmatched_keep_fp32: list[str] = field(default_factory=list)  # keep_fp32 entries that name no op type or node
    modified: bool = field(default=False, metadata={"json": False})

    def summary(self) -> list[str]:
        """The line `fuser optimize` prints."""
        return [f"fp16: {self.converted_initializers} initializers converted, {self.casts_inserted} casts, "
                f"{len(self.kept_fp32)} nodes kept fp32, {len(self.overflow_kept)} overflowing constants kept fp32"]


class PrecisionPass:
    """`--precision fp16`: one conversion after the fixed point (see the module docstring)."""

    name = "precision"
    requires = ("acyclic",)
    final = True  # the pass manager runs it once, after fusion and clean-up converged

    def run(self, graph: Graph, ctx) -> PassResult:
        options = ctx.options
        if getattr(options, "precision", "fp32") != "fp16":
            return PassResult(False)
        stats = convert_fp16(graph, keep=getattr(options, "keep_fp32", ()), fp16_io=getattr(options, "fp16_io", False))
        ctx.report.set_section(stats)
        if stats.flushed_to_zero:
            ctx.report.warnings.append(
                f"fp16: every nonzero value of {len(stats.flushed_to_zero)} constant(s) flushes to zero "
                f"({', '.join(stats.flushed_to_zero[:4])}{', ...' if len(stats.flushed_to_zero) > 4 else ''}); "
                "keep their consumers in fp32 (--keep-fp32 / keep_fp32=) if they matter")
        if stats.unmatched_keep_fp32:
            unmatched = ", ".join(stats.unmatched_keep_fp32)
            ctx.report.warnings.append(f"keep_fp32 (--keep-fp32): no op type or node name {unmatched} "
                                       "in the optimized graph (names of fused nodes change)")
        if stats.unknown_types:
            ctx.report.notes.append(f"fp16: {stats.unknown_types} values of unknown type were left as they are")
        return PassResult(stats.modified)


def convert_fp16(graph: Graph, keep=(), fp16_io: bool = False) -> PrecisionStats:
    """Convert `graph` in place; `keep`: op types or node names that stay fp32."""
    return _Converter(graph, frozenset(keep), fp16_io).run()


# ------------------------------------------------------------------ schemas
def _is_free(sig: Signature, node: onnx.NodeProto, slot: int, fp32: set[str]) -> bool:
    """Does this input take either float type without tying any other operand (Cast's input, Pow's exponent)?"""
    p = sig.formal(slot)
    if p is None or not {F16, F32} <= sig.types(p):
        return False
    if p in {formal for formal, _ in sig.outputs}:
        return False
    tied = [i for i, v in enumerate(node.input) if v in fp32 and sig.formal(i) == p]
    return len(tied) <= 1


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


# ---------------------------------------------------------------- converter
class _Converter:
    def __init__(self, graph: Graph, keep: frozenset[str], fp16_io: bool):
        self.g = graph
        self.keep = keep
        self.fp16_io = fp16_io
        self.stats = PrecisionStats()
        self.vtype: dict[str, int] = {}  # float32 value (name) -> its type after conversion
        self.versions: dict[tuple[str, int], str] = {}  # (value, type) -> name of that value in that type
        self.copyable: set[str] = set()  # fp32 constants a fp16 use may get an exact fp16 copy of
        self.overflow: set[str] = set()  # constants with a finite value beyond +-65504

    def run(self) -> PrecisionStats:
        g = self.g
        values = list(dict.fromkeys([*g.input_names, *g.initializers, *g.producers]))
        types = {v: g.facts.elem_type(v) for v in values}
        self.fp32 = {v for v, t in types.items() if t == FLOAT}
        self.order = [v for v in values if v in self.fp32]  # deterministic iteration (sets are not)
        self.stats.unknown_types = sum(1 for v, t in types.items() if t is None and v in g.producers)
        known = {n.op_type for n in g.nodes.values()} | {n.name for n in g.nodes.values()}
        self.stats.unmatched_keep_fp32 = sorted(k for k in self.keep if k not in known)
        if not self.fp32:
            return self.stats
        pinned = {v: (FLOAT16 if self.fp16_io else FLOAT) for v in g.output_names if v in self.fp32}
        pinned.update({v: FLOAT for v in sorted(g.subgraph_refs()) if v in self.fp32})  # outer-scope reads
        plans = {nid: plan for nid, node in g.nodes.items()
                 if not self._is_constant_node(node) and (plan := self._plan(node)) is not None}
        self._overflowing_constants(plans)
        self._casts_to_fp32_users(plans, pinned)
        for nid, plan in plans.items():
            node = g.node(nid)
            if plan.reason and plan.reason != "island boundary":
                self.stats.kept_fp32.append(KeptFp32(node.name or node.op_type, node.op_type, plan.reason))
            for slot, t in plan.outputs.items():
                self.vtype[node.output[slot]] = t
        self._graph_inputs(pinned)
        self._constants(plans, pinned)
        self._pin(pinned)
        self._operands(plans)
        self._attributes(plans)
        self._types()
        g.touch()  # value types changed
        s = self.stats
        s.modified = bool(s.converted_initializers or s.converted_constants or s.fp16_copies or s.casts_inserted
                          or any(t == FLOAT16 for t in self.vtype.values()))
        return s

    # ---- decisions
    @staticmethod
    def _is_constant_node(node: onnx.NodeProto) -> bool:
        return node.op_type == "Constant" and node.domain in ("", "ai.onnx")

    def _signature(self, node: onnx.NodeProto) -> Signature | None:
        """The op's onnx schema at the model's opset (None for a runtime's own domain, such as com.microsoft,
        whose kernels' types its schema does not tell)."""
        return self.g.facts.signature(node) if is_onnx_domain(node.domain) else None

    def _keep_reason(self, node: onnx.NodeProto, schema: Signature | None) -> str | None:
        if node.op_type == "Cast" and MARK in node.doc_string and attribute(node, "to") == FLOAT:
            return "island boundary"
        if node.op_type in self.keep or (node.name and node.name in self.keep):
            return "keep-list"
        if node.domain not in ("", "ai.onnx"):
            return f"non-standard domain {node.domain}"
        if any(a.type in SUBGRAPH for a in node.attribute):
            return "has subgraphs"
        if schema is None:
            return f"no schema for {node.op_type} at opset {self.g.opset(node.domain)}"
        if node.op_type == "ConstantOfShape":
            value = attribute(node, "value")
            if value is not None and value.data_type == FLOAT and _overflows(numpy_helper.to_array(value)):
                return "value overflows fp16"
        return None

    def _plan(self, node: onnx.NodeProto) -> NodePlan | None:
        fp32 = self.fp32
        ins = [i for i, v in enumerate(node.input) if v in fp32]
        outs = [j for j, v in enumerate(node.output) if v in fp32]
        if not ins and not outs:
            return None
        schema = self._signature(node)
        reason = self._keep_reason(node, schema)
        if reason is None:
            inputs, outputs = {}, {}
            for i in ins:
                p = schema.formal(i)
                inputs[i] = (FLOAT if p is None else ANY if _is_free(schema, node, i, fp32)
                             else FLOAT16 if F16 in schema.types(p) else FLOAT)
            for j in outs:
                p = schema.output_formal(j)
                outputs[j] = FLOAT16 if p is not None and F16 in schema.types(p) else FLOAT
            if FLOAT16 in inputs.values() or FLOAT16 in outputs.values():
                return NodePlan(FLOAT16, inputs, outputs)
            if not outs and all(t == ANY for t in inputs.values()):
                return NodePlan(FLOAT16, inputs, outputs)  # Shape(x), Cast(x, to=INT64): nothing to decide
            reason = f"{node.op_type}-{schema.since} has no float16 type"
        return self._kept_plan(node, schema, reason)

    def _kept_plan(self, node: onnx.NodeProto, schema: Signature | None, reason: str) -> NodePlan:
        fp32 = self.fp32
        inputs = {i: (ANY32 if schema is not None and _is_free(schema, node, i, fp32) else FLOAT)
                  for i, v in enumerate(node.input) if v in fp32}
        return NodePlan(FLOAT, inputs, {j: FLOAT for j, v in enumerate(node.output) if v in fp32}, reason)

    def _overflowing_constants(self, plans: dict[int, NodePlan]) -> None:
        """A constant beyond the fp16 range stays fp32, and so does each op that reads it as an fp16 operand:
        Mul(1 - mask, -3.4e38) computed in fp32 then cast gives -inf where masked and 0 elsewhere, while
        Cast(-3.4e38) -> -inf before the Mul would give NaN (0 * -inf); Div(x, 1e5) would give 0."""
        g = self.g
        for v in self.order:
            if not g.is_constant(v) or (array := g.constant(v)) is None or not _overflows(array):
                continue
            self.overflow.add(v)
            self.stats.overflow_kept.append(v)
            for nid, slot in g.uses(v):
                plan = plans.get(nid)
                if plan is not None and plan.mode == FLOAT16 and plan.inputs.get(slot) == FLOAT16:
                    node = g.node(nid)
                    plans[nid] = self._kept_plan(node, self._signature(node), f"reads {v}, beyond the fp16 range")

    def _casts_to_fp32_users(self, plans: dict[int, NodePlan], pinned: dict[str, int]) -> None:
        """Cast(x, to=FLOAT) whose every user wants fp32 (a kept op, an fp32 graph output) stays as it is:
        Cast(ids, to=FLOAT16) then back to fp32 would lose what fp32 holds (integers past 2048)."""
        g = self.g
        for nid, plan in plans.items():
            node = g.node(nid)
            if node.op_type != "Cast" or plan.mode != FLOAT16 or plan.outputs.get(0) != FLOAT16:
                continue
            out = node.output[0]
            wants = [plans[u].inputs.get(slot, ANY) if u in plans else ANY for u, slot in g.uses(out)]
            if out in pinned:
                wants.append(pinned[out])
            if any(w in (FLOAT, ANY32) for w in wants) and all(w in (FLOAT, ANY32, ANY) for w in wants):
                plan.mode, plan.outputs[0] = FLOAT, FLOAT

    def _graph_inputs(self, pinned: dict[str, int]) -> None:
        g = self.g
        for v in g.input_names:
            if v not in self.fp32:
                continue
            t = FLOAT16 if self.fp16_io and pinned.get(v, FLOAT16) == FLOAT16 else FLOAT
            if t == FLOAT16 and v in g.initializers:  # an initializer that is also an input (a default value)
                base = g.loaded.base_dir
                array = numpy_helper.to_array(g.initializers[v], str(base) if base else "")
                if _overflows(array):
                    self.stats.overflow_kept.append(v)
                    t = FLOAT
                else:
                    g.set_initializer(v, _to_fp16(array)[0])
                    self.stats.converted_initializers += 1
            self.vtype[v] = t

    def _constants(self, plans: dict[int, NodePlan], pinned: dict[str, int]) -> None:
        """Each fp32 constant: converted in place when every use takes fp16; else kept fp32 (copies or Casts)."""
        g = self.g
        for v in [v for v in self.order if g.is_constant(v)]:
            array = g.constant(v)
            producer = g.producer_node(v)
            wants = {plans[nid].inputs.get(slot, ANY) if nid in plans else ANY for nid, slot in g.uses(v)}
            kept = producer is not None and (producer.name in self.keep or "Constant" in self.keep)
            overflow = v in self.overflow
            if array is None or overflow or kept or v in pinned or FLOAT in wants or ANY32 in wants \
                    or not g.uses(v):
                self.vtype[v] = FLOAT
                if array is not None and not overflow and not kept:
                    self.copyable.add(v)
                continue
            array16, flushed = _to_fp16(array)
            if flushed:
                self.stats.flushed_to_zero.append(v)
            self._replace_constant(v, array16)
            self.vtype[v] = FLOAT16

    def _replace_constant(self, v: str, array16: np.ndarray) -> None:
        g = self.g
        if v in g.initializers:
            g.remove_initializer(v)
            g.set_initializer(v, array16)
            self.stats.converted_initializers += 1
            return
        nid = g.producer(v)[0]
        old = g.remove_node(nid)
        first = min((u for u, _ in g.uses(v)), key=g.order.__getitem__, default=None)
        g.add_node("Constant", [], [v], name=old.name or None, before=first, doc=old.doc_string,
                   value=numpy_helper.from_array(array16))
        self.stats.converted_constants += 1

    # ---- edits
    def _pin(self, pinned: dict[str, int]) -> None:
        """Values whose name must keep a type (graph outputs, outer-scope reads): rename the producer's output."""
        g = self.g
        for v, want in pinned.items():
            have = self.vtype.get(v)
            use = g.producer(v)
            if have is None or have == want or use is None or self._is_constant_node(g.node(use[0])):
                continue
            inner = g.fresh_name(f"{v}_{_suffix(have)}")
            g.rename(v, inner)
            self._cast(inner, v, want)
            self.vtype[inner], self.vtype[v] = have, want
            self.versions[(inner, want)] = v

    def _operands(self, plans: dict[int, NodePlan]) -> None:
        g = self.g
        for nid, plan in list(plans.items()):
            node = g.node(nid)
            for slot, want in plan.inputs.items():
                v = node.input[slot]
                have = self.vtype.get(v)
                if want in (ANY, ANY32) or have is None or have == want:
                    continue
                g.set_input(nid, slot, self._version(v, want, nid))

    def _version(self, v: str, want: int, before: int) -> str:
        key = (v, want)
        if key not in self.versions:
            g = self.g
            if want == FLOAT16 and v in self.copyable:
                array16, flushed = _to_fp16(g.constant(v))
                if flushed:
                    self.stats.flushed_to_zero.append(v)
                self.versions[key] = g.add_initializer(f"{v}_fp16", array16)
                self.stats.fp16_copies += 1
            else:
                out = g.fresh_name(f"{v}_{_suffix(want)}")
                self._cast(v, out, want, before)
                self.versions[key] = out
            self.vtype[self.versions[key]] = want
        return self.versions[key]

    def _cast(self, src: str, dst: str, to: int, before: int | None = None) -> None:
        self.g.add_node("Cast", [src], [dst], name=f"{src}_to_{_suffix(to)}", before=before, doc=MARK, to=to)
        self.stats.casts_inserted += 1

    def _attributes(self, plans: dict[int, NodePlan]) -> None:
        g = self.g
        for nid, plan in plans.items():
            if plan.mode != FLOAT16 or FLOAT16 not in plan.outputs.values():
                continue
            node = g.node(nid)
            if node.op_type in TYPE_ATTR and plan.outputs.get(0) == FLOAT16:
                _set_attr(node, TYPE_ATTR[node.op_type], FLOAT16)
            elif node.op_type == "ConstantOfShape" and plan.outputs.get(0) == FLOAT16:
                value = attribute(node, "value")
                array = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
                _set_attr(node, "value", numpy_helper.from_array(array.astype(np.float16)))
            schema = self._signature(node)
            if schema is not None and "stash_type" in schema.attributes:
                _set_attr(node, "stash_type", 1)  # statistics in fp32

    def _types(self) -> None:
        """Declared types follow: value_info of converted values, and graph I/O under fp16_io."""
        g = self.g.model.graph
        for vi in (*g.value_info, *g.input, *g.output):
            tt = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and tt.elem_type == FLOAT and self.vtype.get(vi.name) == FLOAT16:
                tt.elem_type = FLOAT16


def _overflows(array: np.ndarray) -> bool:
    """Does a finite value lie beyond the fp16 range (|x| > 65504)? Two reductions in the common case."""
    a = np.asarray(array)
    if a.size == 0:
        return False
    hi, lo = float(a.max()), float(a.min())
    if -FP16_MAX <= lo and hi <= FP16_MAX:  # False for NaN too: then look closer
        return False
    return bool(np.any(np.isfinite(a) & (np.abs(a) > FP16_MAX)))


def _to_fp16(array: np.ndarray) -> tuple[np.ndarray, bool]:
    """(fp16 values, does every nonzero value flush to zero)."""
    a = np.asarray(array)
    with np.errstate(over="ignore"):
        a16 = a.astype(np.float16)
    return a16, not a16.any() and bool(a.any())


def _suffix(t: int) -> str:
    return "fp16" if t == FLOAT16 else "fp32"
