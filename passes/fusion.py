"""Apply the declarative fusion rules, rule by rule, each over all its candidates.

Rule-major order is deliberate: a rule earlier in the list claims its nodes before a later, more
general one sees them (LayerNorm before RMSNorm, whose pattern is a LayerNorm's tail).
A refusal whose matched nodes all lie inside an earlier refusal of this pass is the same near miss
seen by a smaller rule (a LayerNorm's tail seen as an RMSNorm) and is not reported twice.
"""

from __future__ import annotations

from fuser.graph import Graph
from fuser.rule import Rule, apply_rule


class FusionPass:
    name = "fusion"
    requires = ("acyclic",)

    def __init__(self, rules: list[Rule]):
        self.rules = rules

    def run(self, graph: Graph, ctx) -> bool:
        # When one rule needs an upgrade, upgrade once to what every rule here may need (within the cap).
        ctx.wanted_opset = max((r.min_opset for r in self.rules if r.min_opset <= ctx.max_opset), default=0)
        modified = False
        refused: list[frozenset[int]] = []
        for rule in self.rules:
            fusions, near = apply_rule(graph, rule, ctx, ctx.report.rule_stats(rule.name))
            ctx.report.add_fusions(fusions)
            for miss in near:
                if miss.nodes and any(miss.nodes <= earlier for earlier in refused):
                    continue
                refused.append(miss.nodes)
                ctx.report.add_near_miss(miss)
            modified |= bool(fusions)
        return modified
