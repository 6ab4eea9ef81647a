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
from .precision import PrecisionPass
from .shape_inference import ShapeFolding
from .shape_tensors import ShapeTensorRewrite

__all__ = ["CommonSubexpressionElimination", "ConstantFolding", "DeadCodeElimination", "FusionPass",
           "InitializerDedup", "NoOpElimination", "PrecisionPass", "ShapeFolding", "ShapeTensorRewrite"]
