"""Optimization profiles: `x:1x3x224x224,8x3x224x224,16x3x224x224` is input x's min, opt and max shape.

One shape means min = opt = max. Inputs of one profile are separated by ';' (`x:1x3x16x16;mask:1x16`); each
`--profile` option is one more profile. Profiles are checked against the model before TensorRT sees them, so a
mistake comes back as one line naming the profile and the input instead of a builder error.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import onnx

from fuser.errors import UsageError

SHAPE = re.compile(r"\d+(x\d+)*")
MAX_DIM = 2**31 - 1  # TensorRT refuses a profile dim past int32 ("Shape provided for opt is inconsistent")

# A model dimension: an int when static, the dim_param name (or None) when dynamic.
Dim = int | str | None


class ShapeRange(NamedTuple):
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


Profile = dict[str, ShapeRange]


def parse_profile(text: str) -> Profile:
    """`x:1x3x224x224,8x3x224x224,16x3x224x224;mask:1x16` -> {"x": ShapeRange(...), "mask": ShapeRange(...)}."""
    profile: Profile = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        # rpartition: ONNX names may contain ':' ("input:0"), shapes never do.
        name, colon, shapes = item.rpartition(":")
        if not colon or not name:
            raise UsageError(f"profile '{text}': expected NAME:SHAPE or NAME:MIN,OPT,MAX, got '{item}'")
        if name in profile:
            raise UsageError(f"profile '{text}': input '{name}' is given twice")
        profile[name] = _parse_range(name, shapes)
    if not profile:
        raise UsageError("empty profile: expected NAME:MIN,OPT,MAX such as x:1x3x224x224,8x3x224x224,16x3x224x224")
    return profile


def _parse_range(name: str, text: str) -> ShapeRange:
    shapes = [shape.strip() for shape in text.split(",")]
    if len(shapes) not in (1, 3) or not all(SHAPE.fullmatch(shape) for shape in shapes):
        raise UsageError(f"profile input '{name}': expected one shape or MIN,OPT,MAX shapes like 1x3x224x224, "
                         f"got '{text}'")
    dims = [tuple(int(dim) for dim in shape.split("x")) for shape in shapes]
    return ShapeRange(*(dims * 3 if len(dims) == 1 else dims))


def model_inputs(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...] | None]:
    """The model's real inputs (not initializers) and their dims; None where the rank is unknown."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        inputs[value.name] = tuple(
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in tensor.shape.dim
        ) if tensor.HasField("shape") else None
    return inputs


def check_profiles(profiles: list[Profile], inputs: dict[str, tuple[Dim, ...] | None]) -> None:
    """UsageError unless every profile names real inputs with fitting shapes and covers every dynamic input."""
    dynamic = [name for name, dims in inputs.items() if dims is None or not all(isinstance(d, int) for d in dims)]
    if not profiles and dynamic:
        raise UsageError(f"input '{dynamic[0]}' has dynamic dims ({_show(inputs[dynamic[0]])}): "
                         f"give its shapes with --profile '{dynamic[0]}:MIN,OPT,MAX'")
    for number, profile in enumerate(profiles, 1):
        for name, shapes in profile.items():
            if name not in inputs:
                raise UsageError(f"profile {number}: the model has no input '{name}' "
                                 f"(inputs: {', '.join(inputs) or 'none'})")
            _check_input(f"profile {number}, input '{name}'", inputs[name], shapes)
        missing = [name for name in dynamic if name not in profile]
        if missing:
            raise UsageError(f"profile {number} does not give shapes for dynamic input '{missing[0]}' "
                             f"({_show(inputs[missing[0]])})")


def _check_input(where: str, dims: tuple[Dim, ...] | None, shapes: ShapeRange) -> None:
    if len({len(shape) for shape in shapes}) != 1:
        raise UsageError(f"{where}: min, opt and max must have the same rank, got {_show_range(shapes)}")
    if dims is not None and len(shapes.min) != len(dims):
        raise UsageError(f"{where}: rank {len(shapes.min)} given ({_show(shapes.min)}), "
                         f"the model's input has rank {len(dims)} ({_show(dims)})")
    for axis in range(len(shapes.min)):
        low, opt, high = (shape[axis] for shape in shapes)
        if dims is not None and isinstance(dims[axis], int) and {low, opt, high} != {dims[axis]}:
            raise UsageError(f"{where}: dim {axis} is fixed at {dims[axis]} in the model ({_show(dims)}), "
                             f"got {_show_range(shapes)}")
        if not low <= opt <= high:
            raise UsageError(f"{where}: dim {axis} needs min <= opt <= max, got {_show_range(shapes)}")
        if low < 0 or high > MAX_DIM:
            raise UsageError(f"{where}: dim {axis} must lie in 0..{MAX_DIM}, got {_show_range(shapes)}")


def _show(dims) -> str:
    if dims is None:
        return "rank unknown"
    return "x".join("?" if dim is None else str(dim) for dim in dims)


def _show_range(shapes: ShapeRange) -> str:
    return ",".join(_show(shape) for shape in shapes)
