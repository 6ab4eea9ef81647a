"""Graph passes: each module one pass, each pass says whether it changed the graph.

`default_passes(options)` is fuser's pipeline, in the order that matters: fusion rules first (an
`x * 1` removed before the LayerNorm rule runs would hide the LayerNorm's scale), then folding of
constants and static shape chains, the ND-shape-tensor rewrites, and clean-up (CSE, no-ops,
duplicate initializers, dead code). Later rounds of the fixed point run fusion again on the cleaned
graph; by then fusion has claimed its patterns. `--precision fp16` adds PrecisionPass, a `final` pass:
the pass manager runs it once after the fixed point, so fusion never sees (or folds in) fp16.
"""

from __future__ import annotations

from .constant_folding import ConstantFolding
from .cse import CommonSubexpressionElimination
from .dead_code import DeadCodeElimination
from .fusion import FusionPass
from .initializers import InitializerDedup
from .noop import NoOpElimination
from .precision import PrecisionPass, PrecisionStats
from .sections import CleanupSection, FoldingSection
from .shape_inference import ShapeFolding
from .shape_tensors import ShapeTensorRewrite

REPORT_SECTIONS = (FoldingSection, CleanupSection, PrecisionStats)  # the report sections these passes write


def default_passes(options) -> list:
    from fuser.rules import select_rules

    return [
        FusionPass(select_rules(options.rules, options.skip_rules, options.target)),
        ConstantFolding(),
        ShapeFolding(),
        ShapeTensorRewrite(),
        CommonSubexpressionElimination(),
        NoOpElimination(),  # after fusion, never before: see the module docstring
        InitializerDedup(),
        DeadCodeElimination(),
        *([PrecisionPass()] if getattr(options, "precision", "fp32") == "fp16" else []),  # final: once, last
    ]


__all__ = ["REPORT_SECTIONS", "CleanupSection", "CommonSubexpressionElimination", "ConstantFolding",
           "DeadCodeElimination", "FoldingSection", "FusionPass", "InitializerDedup", "NoOpElimination",
           "PrecisionPass", "PrecisionStats", "ShapeFolding", "ShapeTensorRewrite", "default_passes"]
