"""Inputs for validation: seeded random tensors with sensible ranges, or the user's own data.

Random inputs, per graph input, by dtype and name:

    float / float16 / double     standard normal
    int, name like *ids* / *token* / *index* / *position*   uniform in [0, vocab_size)   (embedding lookups)
    int or bool, name like *mask*                 1 with some trailing 0s per row, never an all-0 row
    other ints                                    uniform in [0, 10)
    bool                                          fair coin

Dynamic dims come from `Options.input_shapes` (`--input-shape ids:1x128`), else a default: axis 0 and
batch-like names are 1, spatial dims of a rank-4 input (or names like height/width) are 224, anything
else is 16. A symbolic dim (`dim_param`) takes one value everywhere it appears, so `ids[batch, seq]`
and `mask[batch, seq]` agree. `Options.validation_shapes` asks for several input sets, one per shape map.

User data (`--inputs`): a `.npz` of arrays named like the inputs, or a folder of `input_N.pb`
TensorProtos as in the ONNX test data (`test_data_set_*/` subfolders give one input set each).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import psutil
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelError, UsageError

DEFAULT_VOCAB_SIZE = 100
BATCH_DIM, SPATIAL_DIM, OTHER_DIM = 1, 224, 16

_IDS = re.compile(r"ids|(^|[^a-z])id([^a-z]|$)|token|index|indices|position|label", re.IGNORECASE)
_MASK = re.compile(r"mask", re.IGNORECASE)
_TOKEN_TYPE = re.compile(r"token_type|segment", re.IGNORECASE)
_BATCH = re.compile(r"^(n|b|bs|batch.*|.*_batch|batch_size|num_batches)$", re.IGNORECASE)
_SPATIAL = re.compile(r"^(h|w|height|width|.*_height|.*_width|img_.*|image_.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class InputSpec:
    """One graph input as ONNX declares it: name, element type, dims (int, symbol name, or None)."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...] | None  # None: rank unknown

    @property
    def dtype(self) -> np.dtype:
        if self.elem_type == TensorProto.BFLOAT16:
            raise ModelError(f"input '{self.name}' is bfloat16, which numpy cannot generate; pass --inputs")
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed (initializers listed as inputs, as IR < 4 models do, are left out)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            raise ModelError(f"input '{vi.name}' is not a tensor (sequence/map inputs cannot be generated); "
                             "pass --inputs or --no-validate")
        tt = vi.type.tensor_type
        dims = None
        if tt.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, tt.elem_type, dims))
    return specs


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


def resolve_shapes(specs: list[InputSpec], overrides: dict[str, tuple[int, ...]] | None = None
                   ) -> dict[str, tuple[int, ...]]:
    """A concrete shape per input: overrides first (they also bind symbolic dims), then defaults."""
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
        if spec.dims is None:
            raise UsageError(f"input '{spec.name}' has no declared shape; give one with --input-shape")
        shape = []
        for axis, d in enumerate(spec.dims):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif isinstance(d, str):
                shape.append(symbols.setdefault(d, default_dim(spec, axis, d)))
            else:
                shape.append(default_dim(spec, axis, None))
        shapes[spec.name] = tuple(shape)
    return shapes


_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}


def random_tensor(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator,
                  vocab_size: int = DEFAULT_VOCAB_SIZE) -> np.ndarray:
    dtype = spec.dtype
    _check_fits_in_memory(spec.name, shape, dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if _MASK.search(spec.name) and dtype.kind in "biu":
        return _mask(shape, rng).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        if _TOKEN_TYPE.search(spec.name):
            high = 2
        elif _IDS.search(spec.name):
            high = vocab_size
        else:
            high = 10
        return rng.integers(0, high, size=shape).astype(dtype)
    raise ModelError(f"cannot generate input '{spec.name}' of type {dtype}; pass --inputs or --no-validate")


def _check_fits_in_memory(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """UsageError before allocating an input that cannot fit (a typo'd --input-shape or --batch), not MemoryError."""
    need = math.prod(shape) * (8 + dtype.itemsize)  # numpy draws float64/int64, then converts
    free = psutil.virtual_memory().available
    if need > free:
        raise UsageError(f"input '{name}' of shape {'x'.join(map(str, shape))} needs {need / 2**30:,.1f} GiB of "
                         f"memory, more than the {free / 2**30:,.1f} GiB available; choose smaller dims "
                         "(--input-shape, --validate-shape, --batch)")


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
                 vocab_size: int = DEFAULT_VOCAB_SIZE) -> dict[str, np.ndarray]:
    """One seeded input set for `model` (shapes: overrides by input name; see the module docstring)."""
    specs = input_specs(model)
    concrete = resolve_shapes(specs, shapes)
    rng = np.random.default_rng(seed)
    return {s.name: random_tensor(s, concrete[s.name], rng, vocab_size) for s in specs}


def load_feed_sets(path: str | Path, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Input sets from a `.npz` file or an ONNX test-data folder (`input_N.pb`, or `test_data_set_*/`)."""
    path = Path(path)
    specs = input_specs(model)
    if not path.exists():
        raise UsageError(f"--inputs: no such file or folder: {path}")
    if path.is_file():
        if path.suffix == ".pb":
            sets = [_read_pb_set([path], specs)]
        else:
            try:
                with np.load(path, allow_pickle=False) as data:
                    sets = [{k: np.asarray(data[k]) for k in data.files}]
            except (OSError, ValueError) as exc:
                raise UsageError(f"--inputs {path}: not a .npz file ({exc})") from None
    else:
        pbs = _numbered(path.glob("input_*.pb"))
        if pbs:
            sets = [_read_pb_set(pbs, specs)]
        else:
            sets = [_read_pb_set(_numbered(d.glob("input_*.pb")), specs)
                    for d in sorted(path.iterdir()) if d.is_dir() and any(d.glob("input_*.pb"))]
        if not sets:
            raise UsageError(f"--inputs {path}: no input_N.pb files in the folder or its test_data_set_* folders")
    return [_conform(feeds, specs, str(path)) for feeds in sets]


def _numbered(paths) -> list[Path]:
    def index(p: Path) -> int:
        m = re.search(r"(\d+)", p.stem)
        return int(m.group(1)) if m else 0
    return sorted(paths, key=index)


def _read_pb_set(files: list[Path], specs: list[InputSpec]) -> dict[str, np.ndarray]:
    feeds = {}
    for k, f in enumerate(files):
        tensor = TensorProto()
        try:
            tensor.ParseFromString(f.read_bytes())
        except Exception as exc:
            raise UsageError(f"--inputs: {f} is not a TensorProto ({exc})") from None
        name = tensor.name or (specs[k].name if k < len(specs) else f.stem)
        feeds[name] = numpy_helper.to_array(tensor)
    return feeds


def _conform(feeds: dict[str, np.ndarray], specs: list[InputSpec], source: str) -> dict[str, np.ndarray]:
    by_name = {s.name: s for s in specs}
    extra = sorted(set(feeds) - set(by_name))
    if extra:
        raise UsageError(f"--inputs {source} has {', '.join(repr(e) for e in extra)}, not inputs of the model "
                         f"(inputs: {', '.join(by_name)})")
    missing = [s.name for s in specs if s.name not in feeds]
    if missing:
        raise UsageError(f"--inputs {source} lacks input(s) {', '.join(repr(m) for m in missing)}")
    out = {}
    for spec in specs:
        array = np.asarray(feeds[spec.name])
        if spec.elem_type != TensorProto.BFLOAT16 and array.dtype != spec.dtype:
            array = array.astype(spec.dtype)
        out[spec.name] = array
    return out


def feed_sets(model: onnx.ModelProto, options) -> tuple[list[dict[str, np.ndarray]], str]:
    """The input sets validation runs on, and a one-line description of where they came from."""
    if getattr(options, "inputs_path", None):
        return load_feed_sets(options.inputs_path, model), f"file {options.inputs_path}"
    base = dict(getattr(options, "input_shapes", None) or {})
    maps = list(getattr(options, "validation_shapes", ()) or ()) or [{}]
    seed = getattr(options, "seed", 0)
    vocab = getattr(options, "vocab_size", DEFAULT_VOCAB_SIZE)
    sets = [random_feeds(model, {**base, **dict(m)}, seed + k, vocab) for k, m in enumerate(maps)]
    return sets, f"random (seed {seed}, vocab {vocab})"


def describe(feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in feeds.items()}


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
            if name in out:
                raise UsageError(f"bad shapes '{text}': input '{name}' is given twice")
            out[name] = shape
    return out
