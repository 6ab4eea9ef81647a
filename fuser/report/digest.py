"""What a report says at a glance, computed once for every rendering (the terminal summary, Markdown, HTML):
the op histogram before and after with the ops that changed first, and the near misses grouped by reason."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .document import Report

_QUOTED = re.compile(r"'[^']*'")


@dataclass(frozen=True)
class OpRow:
    op: str
    before: int
    after: int

    @property
    def delta(self) -> int:
        return self.after - self.before


def op_rows(report: Report) -> list[OpRow]:
    """Every op type of the model before or after: the biggest changes first, then the most frequent ops."""
    before = report.input.ops if report.input else {}
    after = report.output.ops if report.output else {}
    rows = [OpRow(op, before.get(op, 0), after.get(op, 0)) for op in set(before) | set(after)]
    return sorted(rows, key=lambda r: (-abs(r.delta), -max(r.before, r.after), r.op))


@dataclass(frozen=True)
class NearMissGroup:
    """Near misses of one rule whose reasons say the same thing about different nodes."""

    rule: str
    reason: str  # the first one's, word for word
    count: int
    first_at: str


def near_miss_groups(report: Report) -> list[NearMissGroup]:
    """The near misses grouped by rule and by reason (names in quotes set aside), the biggest group first."""
    groups: dict[tuple[str, str], list] = {}
    for miss in report.near_misses:
        groups.setdefault((miss.rule, _QUOTED.sub("'…'", miss.reason)), []).append(miss)
    found = [NearMissGroup(rule, misses[0].reason, len(misses), misses[0].at)
             for (rule, _), misses in groups.items()]
    return sorted(found, key=lambda g: -g.count)  # stable: equal counts keep the report's order
