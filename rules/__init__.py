"""The rule library: one module per fusion family, each a declaration on fuser's pattern engine.

`ALL_RULES` is the order rules run in: specific before general (LayerNorm before RMSNorm, HardSwish
before HardSigmoid), so a general rule never claims part of a larger pattern. Which of them a run
uses is chosen in fuser/assembly.py (`select_rules`).
"""

from __future__ import annotations

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

