"""Apply the declarative fusion rules, rule by rule, each over all its candidates.

Rule-major order is deliberate: a rule earlier in the list claims its nodes before a later, more
general one sees them (LayerNorm before RMSNorm, whose pattern is a LayerNorm's tail).
A refusal whose matched nodes all lie inside an earlier refusal of this pass is the same near miss
seen by a smaller rule (a LayerNorm's tail seen as an RMSNorm) and is not reported twice.

When a match needs a higher opset the run may upgrade to, the pass stops there (later rules would
claim parts of patterns the upgrade lets fuse whole) and asks for the most any of its rules needs
within the cap, so the model is upgraded once.
"""

from __future__ import annotations

from fuser.graph import Graph
from fuser.pass_manager import PassResult
from fuser.rule import Rule, apply_rule


class FusionPass:
    name = "fusion"
    requires = ("acyclic",)

    def __init__(self, rules: list[Rule]):
        self.rules = rules

    def run(self, graph: Graph, ctx) -> PassResult:
        facts = graph.facts.snapshot()  # rules ask about shapes and types while the pass edits
        modified = False
        refused: list[frozenset[int]] = []
        for rule in self.rules:
            result = apply_rule(graph, rule, ctx, ctx.report.rule_stats(rule.name), facts)
            ctx.report.add_fusions(result.fusions)
            modified |= bool(result.fusions)
            if result.needs is not None:  # its near misses are looked at again after the upgrade
                wanted = max((r.min_opset for r in self.rules if r.min_opset <= ctx.max_opset), default=0)
                return PassResult(modified, needs_opset=max(result.needs.opset, wanted))
            for miss in result.near_misses:
                if miss.nodes and any(miss.nodes <= earlier for earlier in refused):
                    continue
                refused.append(miss.nodes)
                ctx.report.add_near_miss(miss)
        return PassResult(modified)
