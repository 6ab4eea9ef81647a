"""Graph passes: each module one pass, each pass says whether it changed the graph.

`default_passes(options)` is fuser's pipeline, in the order that matters: fusion rules first (an
`x * 1` removed before the LayerNorm rule runs would hide the LayerNorm's scale), then clean-up.
"""

from __future__ import annotations

from .dead_code import DeadCodeElimination
from .fusion import FusionPass


def default_passes(options) -> list:
    from fuser.rules import select_rules

    return [
        FusionPass(select_rules(options.rules, options.skip_rules, options.target)),
        DeadCodeElimination(),
    ]


__all__ = ["DeadCodeElimination", "FusionPass", "default_passes"]
