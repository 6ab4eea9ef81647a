"""A fusion rule is a declaration: what it matches, when it refuses (with a reason), what it builds.

    HARD_SIGMOID = Rule(
        name="hardsigmoid", family="hsigmoid", emits="HardSigmoid", min_opset=6,
        pattern=op.Div(op.Clip(op.Add(x, 3.0), 0.0, 6.0), 6.0),
        rewrite=lambda m, b, _: b.op("HardSigmoid", m["x"], alpha=1 / 6, beta=0.5),
    )

`check(m)` looks at one match and returns either a `Refusal("why")` or what it found (any object, or
None); `rewrite(m, builder, analysis)` receives that, so nothing is worked out twice and nothing travels
beside the call. Outcomes are declared, never raised.

`apply_rule` is the engine that runs one rule over a graph: candidates come from the index of the
pattern's root op; every structural match then passes, in order, the rule's check, the safety check
(no value the match would remove is used outside it or is a graph output), the opset check (the
model's opset is at least what the emitted ops need, or may be upgraded to it) and, once the
replacement is built, the type check (every emitted op accepts its inputs' element types at that
opset, per its schema: `facts.signature`). The first refusal of a candidate is kept as a near miss,
with its reason, for the report. A match that needs an opset the run may upgrade to stops the rule
with `NeedsOpset`: the fusion pass hands it to the pass manager, which upgrades the model and runs the
round again. Shapes and types come from one snapshot of `graph.facts` per run of the rule pass.

A rule's own code is checked where it runs: what its check or rewrite raises, a rewrite that returns
something else than value names, and a node it builds that onnx.checker refuses all stop the run with
`RuleFailed` naming the rule and the node (a bug in fuser for its own rules; for a rule loaded from
outside fuser, the stage turns it into one line naming where the rule came from: fuser/rule_loading.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .errors import FuserError, first_line
from .facts import DEFAULT_DOMAINS, GraphFacts, first_accepting_opset, known_schema, type_name
from .graph import Graph
from .matcher import Match, match_value, may_match_at
from .op_forms import Literal
from .pattern import Pattern

TARGETS = ("generic", "tensorrt", "onnxruntime")
MAX_MATCHES_PER_CANDIDATE = 64  # alternatives x commutations explored at one root before giving up


@dataclass(frozen=True)
class Refusal:
    """Why a match is not rewritten; the report keeps it as a near miss."""

    reason: str


class RuleFailed(Exception):
    """A rule's own code raised in its check or rewrite, or broke the rule contract. In one of fuser's rules
    that is a bug in fuser (an internal error); the stage names a rule loaded from outside fuser instead
    (fuser/rule_loading.py)."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class NeedsOpset:
    """A match that can be rewritten once the model is at `opset`, which this run may upgrade to."""

    opset: int


@dataclass(frozen=True)
class Rule:
    """pattern + check + rewrite (see the module docstring); `emits` and `min_opset` say what it builds."""

    name: str
    family: str
    pattern: Pattern
    rewrite: Callable[[Match, Rewriter, Any], str | dict[str, str]]  # (match, builder, check's analysis)
    check: Callable[[Match], Refusal | Any] | None = None  # a Refusal, or the analysis rewrite receives
    emits: str = ""
    min_opset: int = 1
    spellings: tuple[str, ...] = ()
    targets: tuple[str, ...] = TARGETS
    doc: str = ""

    def root_ops(self) -> list[str]:
        ops = self.pattern.root_ops()
        if not ops:
            raise ValueError(f"rule {self.name}: the pattern's root must be an op (or alternatives of ops)")
        return sorted(ops)


@dataclass
class RuleStats:
    """A rule's costs and hits: candidates tried at its root op (attempts), structural matches, applied rewrites."""

    attempts: int = 0
    matches: int = 0
    hits: int = 0
    time_s: float = field(default=0.0, metadata={"digits": 6})  # metadata: see fuser/report/codec.py


@dataclass
class Fusion:
    """One applied rewrite, with provenance: the nodes it removed and the nodes it created."""

    rule: str
    family: str
    key: str  # rule@root-value: stable across runs, used to disable (roll back) this instance
    root: str
    replaced: list[str]
    created: list[str]
    created_ops: list[str]


@dataclass
class NearMiss:
    """A place a rule matched (or almost) and did not fire, with the reason."""

    rule: str
    family: str
    at: str
    reason: str
    nodes: frozenset[int] = field(default=frozenset(), repr=False, compare=False,
                                  metadata={"json": False})  # what the match covered (node ids of this run)


@dataclass
class RuleResult:
    """What one run of a rule did: its rewrites, its near misses, and whether it stopped for an upgrade."""

    fusions: list[Fusion] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)
    needs: NeedsOpset | None = None


class Rewriter:
    """What a rule's rewrite uses to build its replacement: ops, constants, operands.

    An op the target may not contain (a non-standard domain for tensorrt or generic) is built all the
    same and recorded in `refusal`: the engine then removes everything the rewrite built."""

    def __init__(self, graph: Graph, rule: Rule, match: Match, anchor: int, target: str):
        self.graph = graph
        self.rule = rule
        self.match = match
        self.anchor = anchor
        self.target = target
        self.created: list[int] = []
        self.initializers: list[str] = []
        self.refusal: Refusal | None = None
        self._prefix = graph.node(anchor).name or rule.name

    def op(self, op_type: str, *inputs: str | Literal | None, outputs: int = 1, domain: str = "",
           **attrs) -> str | list[str]:
        if domain not in DEFAULT_DOMAINS and self.target in ("tensorrt", "generic") and self.refusal is None:
            self.refusal = Refusal(f"would emit {domain}.{op_type}, a non-standard op, for target '{self.target}'")
        names = [self.operand(i) if i is not None else "" for i in inputs]
        while names and not names[-1]:
            names.pop()
        doc = f"fuser:{self.rule.name}"
        nid = self.graph.add_node(op_type, names, outputs, name=f"{self._prefix}/{self.rule.name}",
                                  domain=domain, before=self.anchor, doc=doc,
                                  **{k: v for k, v in attrs.items() if v is not None})
        self.created.append(nid)
        outs = list(self.graph.node(nid).output)
        return outs[0] if outputs == 1 else outs

    def const(self, value, hint: str = "const", dtype=None) -> str:
        array = np.asarray(value, dtype=dtype) if dtype is not None else np.asarray(value)
        name = self.graph.add_initializer(f"{self._prefix}/{self.rule.name}/{hint}", array)
        self.initializers.append(name)
        return name

    def undo(self, opsets: dict[str, int]) -> None:
        """Remove what this rewrite built (nodes, initializers, opset imports): the graph as before it."""
        for created in self.created:
            self.graph.remove_node(created)
        for name in self.initializers:
            self.graph.remove_initializer(name)
        self.graph.opsets.clear()
        self.graph.opsets.update(opsets)
        self.graph.touch()

    def operand(self, value: str | Literal) -> str:
        """A graph value for an operand (attribute-borne literals become initializers)."""
        if isinstance(value, Literal):
            return self.const(value.value, "literal")
        return value


def unsafe_reason(match: Match, replaced: set[str]) -> str | None:
    """Why removing the matched nodes would lose a value used elsewhere (None when it is safe)."""
    g = match.graph
    inside = set(match.nodes)
    for nid in match.nodes:
        node = g.node(nid)
        for value in node.output:
            if not value or value in replaced:
                continue
            if g.is_graph_output(value):
                return f"value '{value}' inside the match is a graph output"
            if g.read_by_subgraph(value):
                return f"value '{value}' inside the match is read by a subgraph (If/Loop/Scan body)"
            for user, _ in g.uses(value):
                if user not in inside:
                    return (f"value '{value}' (from '{node.name or node.op_type}') is also used outside the "
                            f"match by '{g.node(user).name or g.node(user).op_type}'")
    return None


def apply_rule(graph: Graph, rule: Rule, ctx, stats: RuleStats, facts: GraphFacts | None = None) -> RuleResult:
    """Apply `rule` everywhere it matches, once per candidate, asking `facts` (default: a snapshot of
    `graph.facts`) about shapes and types."""
    facts = facts or graph.facts.snapshot()
    result = RuleResult()
    start = time.perf_counter()
    candidates = sorted({nid for op_type in rule.root_ops() for nid in graph.by_op.get(op_type, ())},
                        key=graph.order.__getitem__)
    for nid in candidates:
        if nid not in graph:
            continue
        stats.attempts += 1
        node = graph.node(nid)
        if not may_match_at(rule.pattern, node, graph):
            continue
        at = node.name or node.output[0]
        reason, covered = None, frozenset()
        for slot, root_value in enumerate(node.output):
            if not root_value:
                continue
            key = f"{rule.name}@{root_value}"
            if key in ctx.disabled:
                reason = reason or "rolled back: this instance changed the outputs in validation"
                continue
            for k, m in enumerate(match_value(rule.pattern, root_value, Match(graph, nid, facts=facts))):
                if k >= MAX_MATCHES_PER_CANDIDATE:
                    break
                stats.matches += 1
                outcome = _apply(graph, rule, m, nid, root_value, key, ctx)
                if isinstance(outcome, NeedsOpset):
                    result.needs = outcome
                    stats.time_s += time.perf_counter() - start
                    return result
                if isinstance(outcome, Refusal):
                    if reason is None:
                        reason, covered = outcome.reason, frozenset(m.nodes)
                    continue
                result.fusions.append(outcome)
                stats.hits += 1
                reason = None
                break
            else:
                continue
            break
        if reason:
            result.near_misses.append(NearMiss(rule.name, rule.family, at, reason, covered))
    stats.time_s += time.perf_counter() - start
    return result


def _apply(graph: Graph, rule: Rule, m: Match, nid: int, root_value: str, key: str, ctx
           ) -> Fusion | Refusal | NeedsOpset:
    """One match through the check, the safety and opset gates, the rewrite and the type gate."""
    analysis = _call(rule, "check", m, rule.check, m) if rule.check else None
    if isinstance(analysis, Refusal):
        return analysis
    if isinstance(analysis, str):  # the old spelling of a refusal: taken as an analysis, it would rewrite
        raise RuleFailed(rule.name, f"rule '{rule.name}': its check returned the string {analysis!r} at node "
                                    f"'{_at(m)}'; a refusal is Refusal(reason)")
    unsafe = unsafe_reason(m, {root_value})
    if unsafe:
        return Refusal(unsafe)
    # an opset the run may upgrade to is decided after the type gate, which may need a later one still
    refusal = _opset_gate(graph, ctx, rule.min_opset, _needs(rule), upgrade=False)
    return refusal or _rewrite(graph, rule, m, nid, root_value, key, ctx, analysis)


def _call(rule: Rule, what: str, m: Match, function, *args):
    """`function(*args)`, the rule's own check or rewrite: what it raises becomes RuleFailed naming the rule
    and the node (fuser's own errors, a model's missing data, and memory pass through)."""
    try:
        return function(*args)
    except (FuserError, MemoryError, RuleFailed):
        raise
    except Exception as exc:
        raise RuleFailed(rule.name, f"rule '{rule.name}' raised {type(exc).__name__} in its {what} at node "
                                    f"'{_at(m)}': {first_line(exc)}") from exc


def _at(m: Match) -> str:
    node = m.graph.node(m.root)
    return node.name or node.output[0]


def _needs(rule: Rule) -> str:
    return f"emits {rule.emits}, which needs opset {rule.min_opset}"


def _opset_gate(graph: Graph, ctx, needed: int, what: str, upgrade: bool = True) -> Refusal | NeedsOpset | None:
    """None when the model's opset is at least `needed`; NeedsOpset when the run may upgrade to it
    (`upgrade=False`: None, the caller decides later); else the Refusal that says why it may not."""
    have = graph.opset()
    if have >= needed:
        return None
    if ctx.allow_upgrade and needed <= ctx.max_opset:
        return NeedsOpset(needed) if upgrade else None
    if not ctx.allow_upgrade:
        return Refusal(f"{what}; the model has opset {have} and upgrades are disabled (--no-upgrade / "
                       "allow_upgrade=False)")
    return Refusal(f"{what}; the target opset is {ctx.max_opset} (raise it: --target-opset {needed} / "
                   f"target_opset={needed})")


def _type_gate(graph: Graph, rule: Rule, m: Match, created: list[int], ctx) -> Refusal | NeedsOpset | None:
    """Does every op the rewrite created accept its inputs' element types at the model's opset (and is
    that opset at least the rule's `min_opset`)?

    When the emitted ops need a later opset (HardSwish takes bfloat16 from opset 22), the answer is
    NeedsOpset where the run may upgrade to it, and otherwise the reason. An unknown type is refused:
    the gate cannot prove acceptance, and a wrong guess writes a model that fails the checker.
    """
    nodes = [graph.node(c) for c in created]
    types = m.facts.input_types(nodes, [graph.node(n) for n in m.nodes])
    needed, what = rule.min_opset, _needs(rule)
    for node in nodes:
        if not known_schema(node.op_type, node.domain):
            continue  # a custom op: nothing to check against
        unknown = [v for v in node.input if v and v not in types]
        if unknown:
            return Refusal(f"the element type of '{unknown[0]}' is unknown, so it cannot be told whether "
                           f"{_qualified(node)} accepts it")
        elem = [types[v] if v else None for v in node.input]
        given = ", ".join(dict.fromkeys(type_name(e) for e in elem if e is not None))
        default = (node.domain or "") in DEFAULT_DOMAINS
        have = graph.opset(node.domain)
        if not have:
            return Refusal(f"emits {_qualified(node)}, but the model does not import the domain '{node.domain}'")
        lowest = max(have, rule.min_opset) if default else have
        first = first_accepting_opset(node.op_type, node.domain, elem, lowest, None if default else have)
        if first is None:
            return Refusal(f"{_qualified(node)} does not accept {given}" + ("" if default else f" (version {have})"))
        if first > needed:
            needed, what = first, f"{_qualified(node)} accepts {given} from opset {first}"
    return _opset_gate(graph, ctx, needed, what)


def _invalid_node(graph: Graph, created: list[int]) -> str | None:
    """What onnx.checker says of the first node a rewrite built that it refuses (an unknown op, an attribute
    the op does not have, too many inputs), or None: said here, it names the rule, not the whole model."""
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = onnx.IR_VERSION
    ctx.opset_imports = dict(graph.opsets)
    for nid in created:
        node = graph.node(nid)
        try:
            onnx.checker.check_node(node, ctx)
        except onnx.checker.ValidationError as exc:
            return f"{_qualified(node)}: {first_line(exc)}"
    return None


def _qualified(node) -> str:
    return node.op_type if (node.domain or "") in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def _rewrite(graph: Graph, rule: Rule, m: Match, nid: int, root_value: str, key: str, ctx, analysis
             ) -> Fusion | Refusal | NeedsOpset:
    """Build the rule's replacement and, when the emitted ops accept their types, swap it in."""
    builder = Rewriter(graph, rule, m, nid, ctx.target)
    opsets = dict(graph.opsets)
    replaced_names = m.node_names()
    result = _call(rule, "rewrite", m, rule.rewrite, m, builder, analysis)
    if not (isinstance(result, str) and result or isinstance(result, dict) and result
            and all(isinstance(k, str) and isinstance(v, str) and v for k, v in result.items())):
        raise RuleFailed(rule.name, f"rule '{rule.name}': its rewrite returned {type(result).__name__} "
                                    f"{str(result)[:80]!r} at node '{_at(m)}'; it returns the name of the value "
                                    "that replaces the match's root, or a dict {old value: new value}")
    stop = builder.refusal or _type_gate(graph, rule, m, builder.created, ctx)
    if stop is not None:
        builder.undo(opsets)
        return stop
    invalid = _invalid_node(graph, builder.created)
    if invalid:
        raise RuleFailed(rule.name, f"rule '{rule.name}': its rewrite at node '{_at(m)}' built a node onnx.checker "
                                    f"refuses: {invalid}")
    mapping = result if isinstance(result, dict) else {root_value: result}
    extra = set(mapping) - {root_value}
    if extra and unsafe_reason(m, set(mapping)) is not None:
        raise RuleFailed(rule.name, f"rule '{rule.name}': its rewrite at node '{_at(m)}' replaced values the "
                                    f"safety check did not clear ({', '.join(sorted(extra))})")
    created_ops = [graph.node(c).op_type for c in builder.created]
    for matched in m.nodes:
        graph.remove_node(matched)
    for old, new in mapping.items():
        graph.substitute(old, new)
    created = [graph.node(c).name for c in builder.created if c in graph]
    return Fusion(rule.name, rule.family, key, replaced_names[0], replaced_names, created, created_ops)
