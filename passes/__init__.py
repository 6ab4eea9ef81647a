"""Graph passes: each module one pass, each pass says what it did (`PassResult`).

Which passes run, and in what order, is chosen in fuser/assembly.py (`default_passes`).
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


__all__ = ["REPORT_SECTIONS", "CleanupSection", "CommonSubexpressionElimination", "ConstantFolding",
           "DeadCodeElimination", "FoldingSection", "FusionPass", "InitializerDedup", "NoOpElimination",
           "PrecisionPass", "PrecisionStats", "ShapeFolding", "ShapeTensorRewrite"]
