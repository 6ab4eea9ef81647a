"""The rule library: one module per fusion family, each a declaration on fuser's pattern engine.

`ALL_RULES` is the order rules run in: specific before general (LayerNorm before RMSNorm, HardSwish
before HardSigmoid), so a general rule never claims part of a larger pattern.
"""

from __future__ import annotations

from fuser.errors import UsageError
from fuser.rule import Rule

from .hardsigmoid import HARDSIGMOID
from .hardswish import HARDSWISH

ALL_RULES: list[Rule] = [HARDSWISH, HARDSIGMOID]


def select_rules(names=(), skip=(), target: str = "generic", rules: list[Rule] | None = None) -> list[Rule]:
    """Rules to run: `names` (rule names or families; empty = all) minus `skip`, valid for `target`."""
    pool = ALL_RULES if rules is None else rules
    known = {r.name for r in pool} | {r.family for r in pool}
    unknown = [n for n in (*names, *skip) if n not in known]
    if unknown:
        raise UsageError(f"unknown rule or family: {', '.join(unknown)} (see `fuser rules`)")
    chosen = [r for r in pool if not names or r.name in names or r.family in names]
    return [r for r in chosen if r.name not in skip and r.family not in skip and target in r.targets]
