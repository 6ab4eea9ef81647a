"""One spelling per op for the matcher: attributes that later opsets turned into inputs become inputs.

ONNX moved several operands from attributes to inputs over time (ReduceMean axes at opset 18, Clip
bounds at 11, Squeeze/Unsqueeze axes and Split sizes at 13, Pad pads at 11, Slice at 10). Patterns are
written once, in the input form; `logical_inputs` presents an attribute-form node the same way, with
the attribute's value as a `Literal` in the input's slot. So `Clip(x, 0, 6)` matches Clip-6 with
min/max attributes and Clip-11 with constant inputs alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

_REDUCE_OPS_18 = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                  "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")

# op type -> (first opset with the input form, [(attribute name, input slot, numpy dtype)])
ATTRIBUTE_INPUTS: dict[str, tuple[int, list[tuple[str, int, type]]]] = {
    **{op: (18, [("axes", 1, np.int64)]) for op in _REDUCE_OPS_18},
    "ReduceSum": (13, [("axes", 1, np.int64)]),
    "Clip": (11, [("min", 1, np.float32), ("max", 2, np.float32)]),
    "Squeeze": (13, [("axes", 1, np.int64)]),
    "Unsqueeze": (13, [("axes", 1, np.int64)]),
    "Split": (13, [("split", 1, np.int64)]),
    "Pad": (11, [("pads", 1, np.int64), ("value", 2, np.float32)]),
    "Slice": (10, [("starts", 1, np.int64), ("ends", 2, np.int64), ("axes", 3, np.int64)]),
}


@dataclass(frozen=True)
class Literal:
    """An operand that an older opset carries as an attribute: its value, not a graph value."""

    value: np.ndarray

    def __hash__(self):
        return hash(self.value.tobytes())

    def __eq__(self, other):
        return isinstance(other, Literal) and np.array_equal(self.value, other.value)


Operand = str | Literal | None  # a value name, an attribute-borne literal, or an absent optional input


def uses_attribute_form(op_type: str, opset: int) -> bool:
    form = ATTRIBUTE_INPUTS.get(op_type)
    return form is not None and opset < form[0]


def logical_inputs(node: onnx.NodeProto, opset: int) -> list[Operand]:
    """The node's operands in the input form of the newest opset (empty names become None)."""
    operands: list[Operand] = [v or None for v in node.input]
    if node.domain not in ("", "ai.onnx") or not uses_attribute_form(node.op_type, opset):
        return operands
    for attr_name, slot, dtype in ATTRIBUTE_INPUTS[node.op_type][1]:
        value = next((helper.get_attribute_value(a) for a in node.attribute if a.name == attr_name), None)
        while len(operands) <= slot:
            operands.append(None)
        if value is not None:
            operands[slot] = Literal(np.asarray(value, dtype=dtype))
    return operands


def logical_attribute_names(op_type: str, opset: int) -> set[str]:
    """Attributes that `logical_inputs` already presented as operands (so attribute checks skip them)."""
    if not uses_attribute_form(op_type, opset):
        return set()
    return {name for name, _, _ in ATTRIBUTE_INPUTS[op_type][1]}
