"""Inputs for validation: seeded random tensors that make sense to the model, or the user's own data.

Random inputs, per graph input: first what its consumers need (`fuser.validation.input_constraints`: an index stays
within the dim it indexes, a shape or axes input gets valid values, a ratio stays in [0, 1)...), then by
dtype and name; a name-based range and a consumer's bound intersect:

    float / float16 / double / bfloat16 / float8       standard normal (rounded to the type)
    int, name like *ids* / *token* / *index* / *position*   uniform in [0, vocab_size)   (embedding lookups)
    int or bool, name like *mask*                 1 with some trailing 0s per row, never an all-0 row
    other ints (int4 included)                    uniform in [0, 10) (within the type)
    bool                                          fair coin
    string                                        short words
    sequence of tensors                           SEQUENCE_LENGTH tensors of the element's shape
    optional                                      its element, present

A 0-d input is a 0-d `np.ndarray`, never a numpy scalar (onnxruntime refuses those).

Dynamic dims come from `Options.input_shapes` (`--input-shape ids:1x128`), else a default: axis 0 and
batch-like names are 1, spatial dims of a rank-4 input (or names like height/width) are 224, anything
else is 16; an input of unknown rank is guessed as a vector. Declared static dims, 0 included, are kept.
A symbolic dim (`dim_param`) takes one value everywhere it appears, so `ids[batch, seq]` and
`mask[batch, seq]` agree. `Options.validation_shapes` asks for several input sets, one per shape map. When
the original model cannot run on the first guess, `alternative_feed_sets` gives other guesses: every
defaulted dim that is not a batch dim set to one of `RETRY_SIZES` in turn.

User data (`--inputs`): a `.npz` of arrays named like the inputs, or a folder of `input_N.pb` files as
in the ONNX test data (TensorProto, or SequenceProto / OptionalProto for such inputs; `test_data_set_*/`
subfolders give one input set each). Data that does not fit the model (unknown or missing names, a rank
or a static dim that differs, a dtype that cannot be cast, not a .npz at all) is a usage error.
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import psutil
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError, UsageError
from .input_constraints import Draw, ConsumerFacts, constraint_for

DEFAULT_VOCAB_SIZE = 100
BATCH_DIM, SPATIAL_DIM, OTHER_DIM = 1, 224, 16
SEQUENCE_LENGTH = 3  # tensors in a generated sequence input
RETRY_SIZES = (1, 2, 3, 8, 16, 32, 48, 64, 128, 224, 256)  # dynamic dims tried when the first guess fails to run

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


# ------------------------------------------------------------------ random tensors


def random_tensor(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator,
                  vocab_size: int = DEFAULT_VOCAB_SIZE, draw: Draw | None = None) -> np.ndarray:
    """One random tensor of `spec`'s element type, always an np.ndarray (0-d for a scalar)."""
    dtype = spec.dtype
    shape = tuple(shape)
    _check_fits_in_memory(spec.name, shape, dtype)
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
    if dtype.kind == "b" or (integer and _MASK.search(spec.name)):
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
                 vocab_size: int = DEFAULT_VOCAB_SIZE, fill: int | None = None) -> dict[str, np.ndarray]:
    """One seeded input set for `model` (shapes: overrides by input name; see the module docstring)."""
    specs = input_specs(model)
    concrete = resolve_shapes(specs, shapes, fill)
    rng = np.random.default_rng(seed)
    facts = ConsumerFacts(model, {s.name: concrete[s.name] for s in specs if not s.container},
                       {s.name: SEQUENCE_LENGTH for s in specs if "sequence" in s.container})
    feeds = {}
    for s in specs:
        shape = concrete[s.name]
        if "sequence" in s.container:
            feeds[s.name] = [random_tensor(s, shape, rng, vocab_size) for _ in range(SEQUENCE_LENGTH)]
        else:
            feeds[s.name] = random_tensor(s, shape, rng, vocab_size, constraint_for(s, shape, facts))
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
            if name in out:
                raise UsageError(f"bad shapes '{text}': input '{name}' is given twice")
            out[name] = shape
    return out
