"""Inputs for validation: seeded random tensors that make sense to the model, or the user's own data.

Random inputs, per graph input, by what consumes it first, then by dtype and name:

    an index (Gather, GatherElements, GatherND, Scatter*, OneHot, TopK's k, RotaryEmbedding positions,
      sequence lengths, positions in a sequence...)     drawn within the dim it indexes, when that dim is known
    a shape or axes (Reshape, Expand, ConstantOfShape, Tile, Slice axes/steps, Resize scales/sizes, Pad,
      Split, Squeeze/Unsqueeze/Reduce* axes, AffineGrid size...)   values that are valid for the consumer
    a value an op bounds (a Dropout ratio, an IoU threshold, a probability, an integer divisor, a Range step)
    float / float16 / double / bfloat16 / float8       standard normal (rounded to the type)
    int, name like *ids* / *token* / *index* / *position*   uniform in [0, vocab_size)   (embedding lookups)
    int or bool, name like *mask*                 1 with some trailing 0s per row, never an all-0 row
    other ints (int4 included)                    uniform in [0, 10) (within the type)
    bool                                          fair coin
    string                                        short words
    sequence of tensors                           SEQUENCE_LENGTH tensors of the element's shape
    optional                                      its element, present

Consumers are found through Identity and Cast; a dim is known from the concrete input shapes, the
initializers, or onnx shape inference with the inputs pinned. A 0-d input is a 0-d `np.ndarray`, never a
numpy scalar (onnxruntime refuses those).

Dynamic dims come from `Options.input_shapes` (`--input-shape ids:1x128`), else a default: axis 0 and
batch-like names are 1, spatial dims of a rank-4 input (or names like height/width) are 224, anything
else is 16. Declared static dims, 0 included, are kept. A symbolic dim (`dim_param`) takes one value
everywhere it appears, so `ids[batch, seq]` and `mask[batch, seq]` agree. `Options.validation_shapes`
asks for several input sets, one per shape map. When the original model cannot run on the first guess,
`alternative_feed_sets` gives other guesses: every defaulted dim set to one of `RETRY_SIZES` in turn.

User data (`--inputs`): a `.npz` of arrays named like the inputs, or a folder of `input_N.pb` files as
in the ONNX test data (TensorProto, or SequenceProto / OptionalProto for such inputs; `test_data_set_*/`
subfolders give one input set each). Data that does not fit the model (unknown or missing names, a rank
or a static dim that differs, a dtype that cannot be cast, not a .npz at all) is a usage error.
"""

from __future__ import annotations

import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelError, UsageError

DEFAULT_VOCAB_SIZE = 100
BATCH_DIM, SPATIAL_DIM, OTHER_DIM = 1, 224, 16
SEQUENCE_LENGTH = 3  # tensors in a generated sequence input
RETRY_SIZES = (1, 2, 3, 8, 16, 32, 48, 64, 128, 224, 256)  # dynamic dims tried when the first guess fails to run
ONE_HOT_DEPTH = 10  # a OneHot depth that is a graph input

_IDS = re.compile(r"ids|(^|[^a-z])id([^a-z]|$)|token|index|indices|position|label", re.IGNORECASE)
_MASK = re.compile(r"mask", re.IGNORECASE)
_TOKEN_TYPE = re.compile(r"token_type|segment", re.IGNORECASE)
_BATCH = re.compile(r"^(n|b|bs|batch.*|.*_batch|batch_size|num_batches)$", re.IGNORECASE)
_SPATIAL = re.compile(r"^(h|w|height|width|.*_height|.*_width|img_.*|image_.*)$", re.IGNORECASE)
_WORDS = np.array(["alpha", "Beta", "gamma delta", "", "epsilon", "ZETA", "eta", "theta"], dtype=object)
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class InputSpec:
    """One graph input as ONNX declares it: name, element type, dims (int, symbol name, or None).

    `container` wraps the tensor: () a tensor, ("sequence",), ("optional",) or ("optional", "sequence");
    `elem_type` and `dims` are the innermost tensor's.
    """

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...] | None  # None: rank unknown
    container: tuple[str, ...] = ()

    @property
    def dtype(self) -> np.dtype:
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"input '{self.name}' has element type {self.elem_type}, which fuser cannot "
                             "generate; pass --inputs or --no-validate") from None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed (initializers listed as inputs, as IR < 4 models do, are left out)."""
    inits = {t.name for t in model.graph.initializer}
    return [_spec(vi.name, vi.type) for vi in model.graph.input if vi.name not in inits]


def _spec(name: str, tp: onnx.TypeProto, container: tuple[str, ...] = ()) -> InputSpec:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        tt = tp.tensor_type
        dims = None
        if tt.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        return InputSpec(name, tt.elem_type, dims, container)
    if kind == "sequence_type" and "sequence" not in container:
        return _spec(name, tp.sequence_type.elem_type, (*container, "sequence"))
    if kind == "optional_type" and not container:
        return _spec(name, tp.optional_type.elem_type, ("optional",))
    raise ModelError(f"input '{name}' is a {kind.replace('_type', '') if kind else 'value of no type'}"
                     f"{' inside a ' + container[-1] if container else ''}, which fuser cannot generate; "
                     "pass --no-validate")


def default_dim(spec: InputSpec, axis: int, symbol: str | None) -> int:
    if symbol and _BATCH.match(symbol):
        return BATCH_DIM
    if symbol and _SPATIAL.match(symbol):
        return SPATIAL_DIM
    if axis == 0:
        return BATCH_DIM
    if spec.dims is not None and len(spec.dims) == 4 and axis >= 2 and spec.elem_type in _FLOATS:
        return SPATIAL_DIM
    return OTHER_DIM


def _is_batch(spec: InputSpec, axis: int, symbol: str | None) -> bool:
    """Dims the retry keeps at 1: batch-like names, and axis 0 of inputs of rank >= 2."""
    return bool(symbol and _BATCH.match(symbol)) or (axis == 0 and spec.dims is not None and len(spec.dims) >= 2)


def resolve_shapes(specs: list[InputSpec], overrides: dict[str, tuple[int, ...]] | None = None,
                   fill: int | None = None) -> dict[str, tuple[int, ...]]:
    """A concrete shape per input: overrides first (they also bind symbolic dims), then defaults.

    `fill`: every defaulted dim that is not batch-like takes this size instead (the retry's guesses).
    """
    overrides = dict(overrides or {})
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise UsageError(f"--input-shape names {', '.join(repr(u) for u in unknown)}, not an input of the model "
                         f"(inputs: {', '.join(by_name) or 'none'})")
    symbols: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in overrides.items():
        spec = by_name[name]
        shape = tuple(int(d) for d in shape)
        if spec.dims is not None and len(spec.dims) != len(shape):
            raise UsageError(f"--input-shape {name}:{'x'.join(map(str, shape))} has rank {len(shape)}; "
                             f"input '{name}' has rank {len(spec.dims)}")
        for axis, (declared, given) in enumerate(zip(spec.dims or (), shape)):
            if isinstance(declared, int) and declared > 0 and declared != given:
                raise UsageError(f"--input-shape gives {given} for axis {axis} of '{name}', which is fixed "
                                 f"at {declared}")
            if isinstance(declared, str):
                symbols.setdefault(declared, given)
        shapes[name] = shape
    for spec in specs:
        if spec.name in shapes:
            continue
        if spec.dims is None:  # rank unknown: guessed as a vector
            shapes[spec.name] = (fill if fill is not None else OTHER_DIM,)
            continue
        shape = []
        for axis, d in enumerate(spec.dims):
            if isinstance(d, int):  # declared, 0 included
                shape.append(d)
                continue
            guess = default_dim(spec, axis, d)
            if fill is not None and not _is_batch(spec, axis, d):
                guess = fill
            shape.append(symbols.setdefault(d, guess) if d else guess)
        shapes[spec.name] = tuple(shape)
    return shapes


def has_defaulted_dims(specs: list[InputSpec], overrides: dict | None = None) -> bool:
    """Whether some dim would be guessed (and so another guess could be tried)."""
    return any(s.name not in (overrides or {}) and (s.dims is None or
               any(not isinstance(d, int) and not _is_batch(s, k, d) for k, d in enumerate(s.dims))) for s in specs)


# ------------------------------------------------------------------ what the consumers of an input need


@dataclass(frozen=True)
class Draw:
    """A constraint on an input's values: uniform in [low, high) (ints or floats), or `exact` values."""

    low: float | np.ndarray = 0
    high: float | np.ndarray | None = None
    exact: np.ndarray | None = None


class _GraphFacts:
    """What the graph says about the values a model's inputs feed: their consumers, dims and constants."""

    KEEP_VALUES = {"Identity", "Cast"}  # the same values in the same shape: every constraint carries over
    KEEP_RANGE = {"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose"}  # same values, new shape

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], specs: list[InputSpec]):
        self.model = model
        self.shapes = shapes
        self.sequences = {s.name for s in specs if "sequence" in s.container}
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
        light = onnx.shape_inference.infer_shapes(light, data_prop=True)
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
            return Draw(0, SEQUENCE_LENGTH + (1 if insert else 0))
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


def _constraint(spec: InputSpec, shape: tuple[int, ...], facts: _GraphFacts) -> Draw | None:
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


# ------------------------------------------------------------------ random tensors


def random_tensor(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator,
                  vocab_size: int = DEFAULT_VOCAB_SIZE, draw: Draw | None = None) -> np.ndarray:
    """One random tensor of `spec`'s element type, always an np.ndarray (0-d for a scalar)."""
    dtype = spec.dtype
    shape = tuple(shape)
    if draw is not None and draw.exact is not None:
        exact = np.asarray(draw.exact)
        if exact.size == int(np.prod(shape, dtype=np.int64)):
            return exact.reshape(shape).astype(dtype)
        if exact.size == 1:
            return np.full(shape, exact.reshape(()), dtype=dtype)
        draw = None
    if dtype == object:
        return rng.choice(_WORDS, size=shape).astype(object).reshape(shape)
    integer = dtype.kind in "iu" or (dtype.kind == "V" and dtype.name.startswith(("int", "uint")))
    if dtype.kind == "b" or _MASK.search(spec.name) and integer:
        if draw is not None and draw.high is not None and np.all(np.asarray(draw.high) <= 1):
            return np.zeros(shape, dtype=dtype)
        value = _mask(shape, rng) if _MASK.search(spec.name) else rng.random(shape) < 0.5
        return np.asarray(value).astype(dtype).reshape(shape)
    if integer:
        low, high = 0, 10
        if _TOKEN_TYPE.search(spec.name):
            high = 2
        elif _IDS.search(spec.name):
            high = vocab_size
        if draw is not None:
            low = np.maximum(low, draw.low)
            high = high if draw.high is None else np.minimum(high, draw.high)
        if dtype.kind == "V":  # int4 / uint4: within the type
            high = np.minimum(high, 8 if dtype.name.startswith("int") else 16)
        high = np.maximum(high, low + 1)
        return np.asarray(rng.integers(low, high, size=shape)).astype(dtype).reshape(shape)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype).reshape(shape)
    if draw is not None and draw.high is not None:
        return np.asarray(rng.uniform(draw.low, draw.high, size=shape)).astype(dtype).reshape(shape)
    if dtype.kind in "fV":
        return np.asarray(rng.standard_normal(shape)).astype(dtype).reshape(shape)
    raise ModelError(f"cannot generate input '{spec.name}' of type {dtype}; pass --inputs or --no-validate")


def _mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """1s with a random run of trailing 0s per row (padding); the first position of each row stays 1."""
    if not shape:
        return np.ones((), dtype=np.int64)
    n = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    keep = rng.integers(max(1, (3 * n) // 4), n + 1, size=rows) if n else np.zeros(rows, dtype=np.int64)
    mask = (np.arange(n)[None, :] < keep[:, None]).astype(np.int64)
    return mask.reshape(shape)


def random_feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None, seed: int = 0,
                 vocab_size: int = DEFAULT_VOCAB_SIZE, fill: int | None = None) -> dict[str, np.ndarray]:
    """One seeded input set for `model` (shapes: overrides by input name; see the module docstring)."""
    specs = input_specs(model)
    concrete = resolve_shapes(specs, shapes, fill)
    rng = np.random.default_rng(seed)
    facts = _GraphFacts(model, {s.name: concrete[s.name] for s in specs if not s.container}, specs)
    feeds = {}
    for s in specs:
        shape = concrete[s.name]
        if "sequence" in s.container:
            feeds[s.name] = [random_tensor(s, shape, rng, vocab_size) for _ in range(SEQUENCE_LENGTH)]
        else:
            feeds[s.name] = random_tensor(s, shape, rng, vocab_size, _constraint(s, shape, facts))
    return feeds


# ------------------------------------------------------------------ the user's data


def read_test_value(path: str | Path, declared: onnx.TypeProto | None = None):
    """One `input_N.pb` / `output_N.pb` of the ONNX test-data layout, as (name, value).

    The file is a TensorProto, a SequenceProto (value: a list) or an OptionalProto (value: None or the
    element), by the declared type of the input or output it belongs to, as onnx's backend runner reads it.
    """
    data = Path(path).read_bytes()
    kind = declared.WhichOneof("value") if declared is not None else "tensor_type"
    if kind == "sequence_type":
        proto = onnx.SequenceProto()
        proto.ParseFromString(data)
        return proto.name, numpy_helper.to_list(proto)
    if kind == "optional_type":
        proto = onnx.OptionalProto()
        proto.ParseFromString(data)
        return proto.name, numpy_helper.to_optional(proto)
    tensor = TensorProto()
    tensor.ParseFromString(data)
    return tensor.name, numpy_helper.to_array(tensor)


def load_feed_sets(path: str | Path, model: onnx.ModelProto) -> list[dict[str, object]]:
    """Input sets from a `.npz` file or an ONNX test-data folder (`input_N.pb`, or `test_data_set_*/`)."""
    path = Path(path)
    specs = input_specs(model)
    if not path.exists():
        raise UsageError(f"--inputs: no such file or folder: {path}")
    if path.is_file():
        sets = [_read_pb_set([path], model, specs)] if path.suffix == ".pb" else [_read_npz(path)]
    else:
        pbs = _numbered(path.glob("input_*.pb"))
        if pbs:
            sets = [_read_pb_set(pbs, model, specs)]
        else:
            sets = [_read_pb_set(_numbered(d.glob("input_*.pb")), model, specs)
                    for d in sorted(path.iterdir()) if d.is_dir() and d.name.startswith("test_data_set")]
        if not sets and not specs:
            sets = [{}]  # a model without inputs: one empty set
        if not sets:
            raise UsageError(f"--inputs {path}: no input_N.pb files in the folder or its test_data_set_* folders")
    return [_conform(feeds, specs, str(path)) for feeds in sets]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise UsageError(f"--inputs {path} is a .npy file (one unnamed array); save the inputs by name with "
                         "numpy.savez(path, input_name=array, ...)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise UsageError(f"--inputs {path}: not a .npz file")
            return {k: np.asarray(data[k]) for k in data.files}
    except UsageError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UsageError(f"--inputs {path} holds Python objects (pickled arrays), which fuser never loads; "
                             "store numeric or string arrays") from None
        raise UsageError(f"--inputs {path}: not a .npz file ({_short(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        raise UsageError(f"--inputs {path}: not a .npz file ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _numbered(paths) -> list[Path]:
    def index(p: Path) -> int:
        m = re.search(r"(\d+)", p.stem)
        return int(m.group(1)) if m else 0
    return sorted(paths, key=index)


def _read_pb_set(files: list[Path], model: onnx.ModelProto, specs: list[InputSpec]) -> dict[str, object]:
    types = {vi.name: vi.type for vi in model.graph.input}
    feeds = {}
    for k, f in enumerate(files):
        declared = types.get(specs[k].name) if k < len(specs) else None
        try:
            name, value = read_test_value(f, declared)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            raise UsageError(f"--inputs: {f} is not a TensorProto/SequenceProto/OptionalProto ({_short(exc)})"
                             ) from None
        if not name or name not in types:
            name = specs[k].name if k < len(specs) else (name or f.stem)
        feeds[name] = value
    return feeds


def _conform(feeds: dict[str, object], specs: list[InputSpec], source: str) -> dict[str, object]:
    """The user's arrays checked against the model's inputs and cast to their types; else a usage error."""
    by_name = {s.name: s for s in specs}
    extra = sorted(set(feeds) - set(by_name))
    if extra:
        raise UsageError(f"--inputs {source} has {', '.join(repr(e) for e in extra)}, not inputs of the model "
                         f"(inputs: {', '.join(by_name) or 'none'})")
    missing = [s.name for s in specs if s.name not in feeds and "optional" not in s.container]
    if missing:
        raise UsageError(f"--inputs {source} lacks input(s) {', '.join(repr(m) for m in missing)}")
    out = {}
    for spec in specs:
        value = feeds.get(spec.name)
        if value is None:
            if "optional" not in spec.container:
                raise UsageError(f"--inputs {source}: input '{spec.name}' is empty, and it is not optional")
            out[spec.name] = None
        elif "sequence" in spec.container:
            if not isinstance(value, list):
                raise UsageError(f"--inputs {source}: input '{spec.name}' is a sequence; give a list of tensors "
                                 "(a SequenceProto input_N.pb)")
            out[spec.name] = [_conform_tensor(v, spec, f"{source}: input '{spec.name}' element {k}")
                              for k, v in enumerate(value)]
        else:
            out[spec.name] = _conform_tensor(value, spec, f"{source}: input '{spec.name}'")
    return out


def _conform_tensor(value, spec: InputSpec, where: str) -> np.ndarray:
    array = np.asarray(value)
    if spec.dims is not None:
        if array.ndim != len(spec.dims):
            raise UsageError(f"--inputs {where} has rank {array.ndim} (shape {list(array.shape)}); the model "
                             f"declares rank {len(spec.dims)}")
        for axis, (declared, got) in enumerate(zip(spec.dims, array.shape)):
            if isinstance(declared, int) and declared != got:
                raise UsageError(f"--inputs {where} has shape {list(array.shape)}; axis {axis} is fixed at "
                                 f"{declared} in the model")
    return _cast(array, spec.dtype, where)


def _cast(array: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """`array` as `dtype` where that keeps its meaning (same kind, or a wider kind; ints that fit)."""
    if array.dtype == dtype:
        return array
    src, dst = array.dtype, dtype
    refuse = UsageError(f"--inputs {where} is {src}; the model takes {dst}, which it cannot be cast to "
                        "without changing its values")
    if dst == object or src.kind in "OSU":
        if dst == object and src.kind in "OSU":
            return array.astype(object)
        raise refuse
    if dst.kind == "V" or src.kind == "V":  # bfloat16, float8, int4 (ml_dtypes): numbers of the same family
        dst_int = dst.kind in "iu" or dst.name.startswith(("int", "uint"))
        src_int = src.kind in "biu" or src.name.startswith(("int", "uint"))
        if src_int and not dst_int or src_int == dst_int:
            return _fits(array, dst, refuse)
        raise refuse
    if np.can_cast(src, dst, casting="same_kind") or np.can_cast(src, dst, casting="safe"):
        return _fits(array, dst, refuse)
    if src.kind == "b" and dst.kind in "iuf":
        return array.astype(dst)
    raise refuse


def _fits(array: np.ndarray, dtype: np.dtype, refuse: UsageError) -> np.ndarray:
    """`array` cast to `dtype`, refused when an integer does not fit the target's range."""
    if array.dtype.kind in "iu" and array.size and _integer_range(dtype) is not None:
        low, high = _integer_range(dtype)
        if int(array.min()) < low or int(array.max()) > high:
            raise refuse
    return array.astype(dtype)


def _integer_range(dtype: np.dtype) -> tuple[int, int] | None:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return int(info.min), int(info.max)
    if dtype.kind == "V" and dtype.name in ("int4", "uint4", "int2", "uint2"):
        bits = int(dtype.name[-1])
        return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if dtype.name.startswith("int") else (0, (1 << bits) - 1)
    return None


# ------------------------------------------------------------------ what validation runs on


def feed_sets(model: onnx.ModelProto, options) -> tuple[list[dict[str, object]], str]:
    """The input sets validation runs on, and a one-line description of where they came from."""
    if getattr(options, "inputs_path", None):
        return load_feed_sets(options.inputs_path, model), f"file {options.inputs_path}"
    return _random_sets(model, options, None), _random_source(options)


def alternative_feed_sets(model: onnx.ModelProto, options):
    """Other guesses when the original cannot run on the first: (input sets, description) per size tried.

    None for user data, explicit `validation_shapes`, or a model without a dim to guess.
    """
    if getattr(options, "inputs_path", None) or getattr(options, "validation_shapes", ()):
        return
    base = dict(getattr(options, "input_shapes", None) or {})
    if not has_defaulted_dims(input_specs(model), base):
        return
    for size in RETRY_SIZES:
        yield _random_sets(model, options, size), f"{_random_source(options)}, guessed dims {size}"


def _random_sets(model, options, fill: int | None) -> list[dict[str, object]]:
    base = dict(getattr(options, "input_shapes", None) or {})
    maps = list(getattr(options, "validation_shapes", ()) or ()) or [{}]
    seed = getattr(options, "seed", 0)
    vocab = getattr(options, "vocab_size", DEFAULT_VOCAB_SIZE)
    return [random_feeds(model, {**base, **dict(m)}, seed + k, vocab, fill) for k, m in enumerate(maps)]


def _random_source(options) -> str:
    return f"random (seed {getattr(options, 'seed', 0)}, vocab {getattr(options, 'vocab_size', DEFAULT_VOCAB_SIZE)})"


def describe(feeds: dict[str, object]) -> dict[str, list]:
    """Shapes of an input set (a sequence: the shapes of its tensors; an absent optional: None)."""
    out = {}
    for k, v in feeds.items():
        if v is None:
            out[k] = None
        elif isinstance(v, list):
            out[k] = [list(np.shape(x)) for x in v]
        else:
            out[k] = list(np.shape(v))
    return out


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'name:1x3x224x224' -> ('name', (1, 3, 224, 224)); a scalar is 'name:' (rank 0)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise UsageError(f"bad shape '{text}': expected NAME:DIMS like ids:1x128")
    try:
        shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x") if d.strip()) if dims else ()
    except ValueError:
        raise UsageError(f"bad shape '{text}': dims must be integers separated by 'x' (ids:1x128)") from None
    if any(d < 0 for d in shape):
        raise UsageError(f"bad shape '{text}': dims must be >= 0")
    return name, shape


def parse_shape_map(text: str) -> dict[str, tuple[int, ...]]:
    """'ids:1x128;mask:1x128' (';' or ' ' separated) -> {name: shape}."""
    out = {}
    for part in re.split(r"[;\s]+", text.strip()):
        if part:
            name, shape = parse_shape(part)
            out[name] = shape
    return out
