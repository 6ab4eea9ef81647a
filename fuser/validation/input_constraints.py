"""What the consumers of a graph input need from its values, so random inputs make sense to the model.

An input that indexes a dim (Gather, GatherElements, GatherND, Scatter*, OneHot, TopK's k, RotaryEmbedding
positions, sequence lengths, class labels, positions in a sequence...) is drawn within that dim; an input
that is a shape, axes or sizes (Reshape, Expand, ConstantOfShape, Tile, Slice axes/steps, Resize scales/sizes,
Pad, Split, Squeeze/Unsqueeze/Reduce* axes, AffineGrid size...) gets values valid for its consumer; a value an
op bounds (a Dropout ratio, an IoU threshold, a probability, an integer divisor, a Range step, a float8 zero
point) stays within the bounds. `RULES` maps op type and input slot to the rule; `constraint_for` combines
the rules of every consumer: exact values win, ranges intersect.

Consumers are found through Identity and Cast (same values, same shape: every rule applies) and through
Unsqueeze, Squeeze, Reshape, Flatten, Expand and Transpose (same values, new shape: only ranges apply). A
dim is known from the concrete input shapes, the initializers and Constants, or onnx shape inference with the
inputs pinned, run on a copy of the model without its weights' bytes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..facts import infer_model

if TYPE_CHECKING:
    from .inputs import InputSpec

ONE_HOT_DEPTH = 10  # a OneHot depth that is a graph input


@dataclass(frozen=True)
class Draw:
    """A constraint on an input's values: uniform in [low, high) (ints or floats), or `exact` values."""

    low: float | np.ndarray = 0
    high: float | np.ndarray | None = None
    exact: np.ndarray | None = None


class ConsumerFacts:
    """What the graph says about the values a model's inputs feed: their consumers, dims and constants."""

    KEEP_VALUES = {"Identity", "Cast"}  # the same values in the same shape: every constraint carries over
    KEEP_RANGE = {"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose"}  # same values, new shape

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], sequences: dict[str, int]):
        self.model = model
        self.shapes = shapes
        self.sequences = sequences  # graph inputs that are sequences -> the number of tensors generated
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for node in model.graph.node:
            for slot, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((node, slot))
        self.tensors = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.output:
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        self.tensors[node.output[0]] = a.t
        self._inferred: dict[str, tuple] | None = None

    def uses(self, name: str) -> list[tuple[onnx.NodeProto, int, bool]]:
        """(consumer, input slot, reshaped on the way) for `name` and what carries its values unchanged."""
        out, todo, seen = [], [(name, False)], {name}
        while todo:
            value, reshaped = todo.pop()
            for node, slot in self.consumers.get(value, ()):
                carries = node.op_type in self.KEEP_VALUES or node.op_type in self.KEEP_RANGE
                if carries and slot == 0 and node.output and node.domain in ("", "ai.onnx"):
                    if node.output[0] not in seen:
                        seen.add(node.output[0])
                        todo.append((node.output[0], reshaped or node.op_type in self.KEEP_RANGE))
                else:
                    out.append((node, slot, reshaped))
        return out

    def dims(self, name: str) -> tuple[int, ...] | None:
        if name in self.shapes:
            return tuple(self.shapes[name])
        if name in self.tensors:
            return tuple(self.tensors[name].dims)
        return self.inferred().get(name)

    def value(self, name: str) -> np.ndarray | None:
        t = self.tensors.get(name)
        if t is None or t.data_location == TensorProto.EXTERNAL or int(np.prod(t.dims, dtype=np.int64)) > 64:
            return None
        try:
            return numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - an odd tensor: no value known
            return None

    def inferred(self) -> dict[str, tuple[int, ...]]:
        """Static dims from onnx shape inference with the inputs pinned to their concrete shapes (lazy)."""
        if self._inferred is None:
            self._inferred = {name: dims for name, (_, dims) in infer_value_types(self.model, self.shapes).items()
                              if dims is not None and all(isinstance(d, int) for d in dims)}
        return self._inferred

    def dim(self, name: str, axis: int) -> int | None:
        dims = self.dims(name)
        if not dims or not -len(dims) <= axis < len(dims):
            return None
        return dims[axis]

    def rank(self, name: str) -> int | None:
        dims = self.dims(name)
        return None if dims is None else len(dims)


def infer_value_types(model: onnx.ModelProto, pinned: dict[str, tuple[int, ...]] | None = None
                      ) -> dict[str, tuple[int, tuple | None]]:
    """(element type, dims) of the graph's values by onnx shape inference; {} when it fails.

    It runs on a light copy (`_light_copy`); the inputs named in `pinned` get those concrete shapes. A dim is
    an int, or None where inference leaves it unknown.
    """
    light = _light_copy(model)
    for vi in light.graph.input:
        if vi.name in (pinned or {}) and vi.type.HasField("tensor_type"):
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in pinned[vi.name]:
                shape.dim.add().dim_value = d
    try:
        light = infer_model(light)  # data propagation only where it cannot exhaust memory
    except Exception:  # noqa: BLE001 - inference is a help, never a requirement
        return {}
    out = {}
    for vi in (*light.graph.input, *light.graph.value_info, *light.graph.output):
        if vi.type.HasField("tensor_type"):
            tt = vi.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim) \
                if tt.HasField("shape") else None
            out[vi.name] = (tt.elem_type, dims)
    return out


def _light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its weights' bytes: initializers over 4 KiB become typed graph inputs (shape
    inference needs their shapes, not their values; copying them would cost the model's size in memory)."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = model.graph
    light.graph.name = g.name
    light.graph.node.extend(g.node)
    light.graph.input.extend(g.input)
    light.graph.output.extend(g.output)
    light.graph.value_info.extend(g.value_info)
    declared = {vi.name for vi in g.input}
    for t in g.initializer:
        if t.data_location != TensorProto.EXTERNAL and len(t.raw_data) <= 4096:
            light.graph.initializer.append(t)
        elif t.name not in declared:
            light.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _input(node: onnx.NodeProto, slot: int) -> str:
    return node.input[slot] if len(node.input) > slot else ""


def _index_into(data_slot: int, default_axis: int = 0):
    """Indices along `axis` of the input in `data_slot`: within its dim."""
    def rule(node, facts, shape):
        d = facts.dim(_input(node, data_slot), _attr(node, "axis", default_axis))
        return Draw(0, d) if d else None
    return rule


def _index_nd(node, facts, shape):
    """GatherND / ScatterND indices: column j indexes dim batch_dims + j of the data."""
    dims, bd = facts.dims(node.input[0]), _attr(node, "batch_dims", 0)
    if not dims or not shape or shape[-1] < 1 or bd + shape[-1] > len(dims) or 0 in dims[bd:bd + shape[-1]]:
        return None
    return Draw(0, np.array(dims[bd:bd + shape[-1]]))


def _count_within(data_slot: int, axis_of):
    """A count from 1 to the dim of `data_slot` on `axis_of(node)` (TopK's k, sequence lengths)."""
    def rule(node, facts, shape):
        d = facts.dim(_input(node, data_slot), axis_of(node))
        return Draw(1, d + 1) if d else None
    return rule


def _split_sizes(node, facts, shape):
    d = facts.dim(node.input[0], _attr(node, "axis", 0))
    if d is None:
        return None
    if len(shape) == 0:  # SplitToSequence's scalar split: a chunk length
        return Draw(1, d + 1) if d else None
    n = int(np.prod(shape))
    return Draw(exact=np.array([d // n + (1 if k < d % n else 0) for k in range(n)]))


def _axes(data_slot: int, extra_rank: bool = False):
    """Distinct axes 0..L-1 of the input in `data_slot` (Unsqueeze: of the output, so any L)."""
    def rule(node, facts, shape):
        n = int(np.prod(shape)) if shape else 1
        r = facts.rank(_input(node, data_slot))
        if not extra_rank and (r is None or n > r):
            return None
        return Draw(exact=np.arange(n).reshape(shape))
    return rule


def _squeeze_axes(node, facts, shape):
    dims = facts.dims(node.input[0])
    n = int(np.prod(shape)) if shape else 1
    ones = [k for k, d in enumerate(dims or ()) if d == 1]
    return Draw(exact=np.array(ones[:n]).reshape(shape)) if len(ones) >= n else None


def _target_shape(broadcast: bool):
    """Reshape: the data's own dims, else [1, ..., 1, -1]; Expand: the data's dims, else ones."""
    def rule(node, facts, shape):
        if len(shape) != 1:
            return None
        dims, n = facts.dims(node.input[0]), shape[0]
        if dims is not None and len(dims) == n:
            return Draw(exact=np.array(dims))
        if n == 0:
            return None
        return Draw(exact=np.ones(n, dtype=np.int64) if broadcast else np.array([1] * (n - 1) + [-1]))
    return rule


def _resize(scales: bool):
    """Resize / Upsample: scale 2 on the last two axes (or the `axes` named), sizes to match."""
    def rule(node, facts, shape):
        dims = facts.dims(node.input[0])
        if dims is None or len(shape) != 1:
            return None
        axes = _attr(node, "axes")
        picked = [dims[a] for a in axes] if axes else list(dims)
        if len(picked) != shape[0]:
            return None
        factor = [2.0 if (axes or k >= len(picked) - 2) else 1.0 for k in range(len(picked))]
        if scales:
            return Draw(exact=np.array(factor))
        return Draw(exact=np.array([int(d * f) for d, f in zip(picked, factor)]))
    return rule


def _seq_position(insert: bool):
    def rule(node, facts, shape):
        if node.input[0] in facts.sequences:
            return Draw(0, facts.sequences[node.input[0]] + (1 if insert else 0))
        return None
    return rule


def _one_hot_indices(node, facts, shape):
    depth = facts.value(node.input[1])
    if depth is not None and depth.size == 1:
        return Draw(0, max(1, int(depth.reshape(()))))
    return Draw(0, ONE_HOT_DEPTH)


def _affine_size(node, facts, shape):
    n = facts.dim(node.input[0], 0)
    if n is None or len(shape) != 1 or shape[0] not in (4, 5):
        return None
    return Draw(exact=np.array([n, 2] + [4] * (shape[0] - 2)))


def _attention_kv_lengths(node, facts, shape):
    dims = facts.dims(node.input[1])
    if not dims or len(dims) not in (3, 4):
        return None
    d = dims[-2] if len(dims) == 4 else dims[1]
    return Draw(1, d + 1) if d else None


def _rank_of(data_slot: int, spare: int = 0):
    def rule(node, facts, shape):
        r = facts.rank(node.input[data_slot])
        return Draw(0, r - spare) if r and r > spare else None
    return rule


def _fixed(low, high=None, exact=None):
    return lambda node, facts, shape: Draw(low, high, exact)


def _positive_step(node, facts, shape):
    return Draw(1, 4)


def _class_labels(node, facts, shape):
    """NegativeLogLikelihoodLoss / SoftmaxCrossEntropyLoss targets: classes, axis 1 of the scores."""
    d = facts.dim(node.input[0], 1)
    return Draw(0, d) if d else None


def _write_positions(node, facts, shape):
    """TensorScatter write_indices: where `update` still fits in the cache along `axis`."""
    axis = _attr(node, "axis", -2)
    cache, update = facts.dim(node.input[0], axis), facts.dim(node.input[1], axis)
    return Draw(0, cache - update + 1) if cache is not None and update is not None and cache >= update else None


RULES: dict[str, dict[int, object]] = {  # op type -> input slot -> rule(node, facts, the input's shape)
    "Gather": {1: _index_into(0)},
    "GatherElements": {1: _index_into(0)},
    "ScatterElements": {1: _index_into(0)},
    "Scatter": {1: _index_into(0)},
    "GatherND": {1: _index_nd},
    "ScatterND": {1: _index_nd},
    "OneHot": {0: _one_hot_indices, 1: _fixed(0, exact=np.array(ONE_HOT_DEPTH))},
    "TopK": {1: _count_within(0, lambda n: _attr(n, "axis", -1))},
    "ReverseSequence": {1: _count_within(0, lambda n: _attr(n, "time_axis", 0))},
    "RNN": {4: _count_within(0, lambda n: _attr(n, "layout", 0))},
    "GRU": {4: _count_within(0, lambda n: _attr(n, "layout", 0))},
    "LSTM": {4: _count_within(0, lambda n: _attr(n, "layout", 0))},
    "RotaryEmbedding": {3: lambda n, f, s: (lambda d: Draw(0, d) if d else None)(f.dim(n.input[1], 0))},
    "Attention": {6: _attention_kv_lengths},
    "Split": {1: _split_sizes},
    "SplitToSequence": {1: _split_sizes},
    "SequenceAt": {1: _seq_position(False)},
    "SequenceErase": {1: _seq_position(False)},
    "SequenceInsert": {2: _seq_position(True)},
    "CumSum": {1: _rank_of(0)},
    "CumProd": {1: _rank_of(0)},
    "DFT": {1: _count_within(0, lambda n: _attr(n, "axis", -2)), 2: _rank_of(0, spare=1)},
    "HannWindow": {0: _fixed(1, 17)},
    "HammingWindow": {0: _fixed(1, 17)},
    "BlackmanWindow": {0: _fixed(1, 17)},
    "Range": {2: _positive_step},
    "Mod": {1: _fixed(1, 10)},
    "Div": {1: _fixed(1, 10)},  # applied to integer inputs only: no division by zero
    "Dropout": {1: _fixed(0.0, 0.5), 2: _fixed(0, exact=np.array(False))},
    "NonMaxSuppression": {3: _fixed(0.0, 1.0)},
    "Bernoulli": {0: _fixed(0.0, 1.0)},  # probabilities
    "Reshape": {1: _target_shape(broadcast=False)},
    "Expand": {1: _target_shape(broadcast=True)},
    "ConstantOfShape": {0: _fixed(1, 5)},
    "Tile": {1: _fixed(1, 4)},
    "Slice": {3: _axes(0), 4: _fixed(0, exact=np.array(1))},
    "Pad": {1: _fixed(0, 2), 3: _axes(0)},
    "CenterCropPad": {1: _fixed(1, 5)},
    "Unsqueeze": {1: _axes(0, extra_rank=True)},
    "Squeeze": {1: _squeeze_axes},
    "Resize": {2: _resize(scales=True), 3: _resize(scales=False)},
    "Upsample": {1: _resize(scales=True)},
    "AffineGrid": {1: _affine_size},
    "NegativeLogLikelihoodLoss": {1: _class_labels},
    "SoftmaxCrossEntropyLoss": {1: _class_labels},
    "TensorScatter": {2: _write_positions},
    "RoiAlign": {2: _index_into(0)},  # batch indices: rows of X
    "ai.onnx.ml/ArrayFeatureExtractor": {1: _index_into(0, default_axis=-1)},
}
_INTEGER_ONLY = {"Mod", "Div"}
_REDUCE_AXES = _axes(0)
_ZERO = _fixed(0, exact=np.array(0))


def _rule_for(node: onnx.NodeProto, slot: int, spec: InputSpec):
    default_domain = node.domain in ("", "ai.onnx")
    if default_domain and node.op_type.startswith("Reduce") and slot == 1:
        return _REDUCE_AXES
    if default_domain and node.op_type in _INTEGER_ONLY and spec.dtype.kind not in "iu":
        return None
    if default_domain and node.op_type in ("QuantizeLinear", "DequantizeLinear") and slot == 2 and \
            spec.dtype.kind == "V" and spec.dtype.name.startswith("float"):
        return _ZERO  # a float8 / float4 zero point must be 0
    return RULES.get(node.op_type if default_domain else f"{node.domain}/{node.op_type}", {}).get(slot)


def constraint_for(spec: InputSpec, shape: tuple[int, ...], facts: ConsumerFacts) -> Draw | None:
    """The constraints of every consumer, combined: exact values win, ranges intersect."""
    found: Draw | None = None
    for node, slot, reshaped in facts.uses(spec.name):
        rule = _rule_for(node, slot, spec)
        if rule is None:
            continue
        try:
            draw = rule(node, facts, shape)
        except Exception:  # noqa: BLE001 - a malformed node: no constraint from it
            draw = None
        if draw is None or (reshaped and draw.exact is not None):  # exact values are for the shape they met
            continue
        if draw.exact is not None:
            return draw
        if found is None:
            found = draw
        else:
            high = draw.high if found.high is None else (found.high if draw.high is None
                                                         else np.minimum(found.high, draw.high))
            found = Draw(np.maximum(found.low, draw.low), high)
    return found
