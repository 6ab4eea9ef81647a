"""The rule library: one module per fusion family, each a declaration on fuser's pattern engine.

`ALL_RULES` is the order rules run in: specific before general (LayerNorm before RMSNorm, HardSwish
before HardSigmoid), so a general rule never claims part of a larger pattern.
"""

from __future__ import annotations

from fuser.errors import UsageError
from fuser.rule import Rule

from .conv_bn import CONV_BN, FUSED_CONV
from .conv_elementwise import CONV_ELEMENTWISE
from .flatten import FLATTEN
from .hardsigmoid import HARDSIGMOID
from .hardswish import HARDSWISH
from .layernorm import LAYERNORM_TIERS
from .rmsnorm import RMSNORM_TIERS

# CONV_ELEMENTWISE after the hard activations: Add(conv, 3) is the start of a HardSigmoid of the conv
# and must not be folded into the conv's bias first (tests/test_rule_conv_elementwise.py checks it).
# FUSED_CONV (onnxruntime target only) last: it takes a Conv once BN/scales are folded into it.
ALL_RULES: list[Rule] = [CONV_BN, *LAYERNORM_TIERS, *RMSNORM_TIERS, HARDSWISH, HARDSIGMOID,
                         CONV_ELEMENTWISE, FUSED_CONV, FLATTEN]


def select_rules(names=(), skip=(), target: str = "generic", rules: list[Rule] | None = None) -> list[Rule]:
    """Rules to run: `names` (rule names or families; empty = all) minus `skip`, valid for `target`."""
    pool = ALL_RULES if rules is None else rules
    known = {r.name for r in pool} | {r.family for r in pool}
    unknown = [n for n in (*names, *skip) if n not in known]
    if unknown:
        raise UsageError(f"unknown rule or family: {', '.join(unknown)} (see `fuser rules`)")
    chosen = [r for r in pool if not names or r.name in names or r.family in names]
    return [r for r in chosen if r.name not in skip and r.family not in skip and target in r.targets]
