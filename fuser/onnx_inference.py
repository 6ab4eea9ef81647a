"""onnx shape inference, with data propagation only where it cannot exhaust memory.

onnx's data propagation (`data_prop=True`) is what turns `Shape -> Gather -> Concat -> Reshape` into
static shapes, but it stores the value of every rank-1 tensor that a propagating op (Cast, Concat,
Slice, Gather, Unsqueeze, ...) reads as one protobuf dim per element — ~140 bytes each, measured:
a Cast of a [4,000,000] tensor took 550 MB, and a 300-byte model with a Cast after a ConstantOfShape
of 2**28 elements took over 24 GB. Shape tensors are a handful of elements long, so where a
propagating op reads a rank-1 tensor longer than `MAX_PROPAGATED` (seen by inference without data
propagation first), the model is inferred without it.

A long length known only through propagated values (a Range whose limit is a product of shape
values) is not seen by that first pass; such graphs are not guarded.
"""

from __future__ import annotations

import itertools
import math

import onnx
from onnx import defs

MAX_PROPAGATED = 1 << 16  # elements of a rank-1 tensor worth propagating as data
# ops that make a tensor's size from values: with them, or a big declared tensor, the first pass runs
_SIZE_MAKERS = frozenset({"ConstantOfShape", "Range", "Expand", "Tile", "Pad", "OneHot", "Resize", "Upsample",
                          "EyeLike"})


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`onnx.shape_inference.infer_shapes(model, data_prop=True)` where that is safe, else without data
    propagation. Raises what onnx raises."""
    if _may_be_long(model):
        plain = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
        if _long_input_to_propagation(plain):
            return plain
    return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)


def _may_be_long(model: onnx.ModelProto) -> bool:
    """Could a long rank-1 tensor exist? Only from a big declared tensor (reshaped, gathered...) or an op
    that makes sizes from values."""
    g = model.graph
    shapes = itertools.chain(([d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.input
                              if v.type.HasField("tensor_type")), (list(t.dims) for t in g.initializer))
    return any(math.prod(s) > MAX_PROPAGATED for s in shapes) or any(n.op_type in _SIZE_MAKERS for n in g.node)


def _propagating_ops() -> frozenset[str]:
    global _PROPAGATING
    if _PROPAGATING is None:
        _PROPAGATING = frozenset(s.name for s in defs.get_all_schemas_with_history()
                                 if getattr(s, "has_data_propagation_function", False))
    return _PROPAGATING


_PROPAGATING: frozenset[str] | None = None


def _long_input_to_propagation(inferred: onnx.ModelProto) -> bool:
    g = inferred.graph
    rank1 = {}
    for v in itertools.chain(g.input, g.value_info, g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            dims = v.type.tensor_type.shape.dim
            if len(dims) == 1 and dims[0].HasField("dim_value"):
                rank1[v.name] = dims[0].dim_value
    rank1.update({t.name: t.dims[0] for t in g.initializer if len(t.dims) == 1})
    ops = _propagating_ops()
    return any(rank1.get(v, 0) > MAX_PROPAGATED for n in g.node if n.op_type in ops for v in n.input)
