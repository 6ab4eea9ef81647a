"""Reading and writing ONNX files without losing anything.

Why a module of its own: every way a model file can be wrong (missing, empty, truncated, not ONNX,
external data missing or pointing outside the model's folder, an opset neither onnx nor onnxruntime knows) must
become one clear `ModelError`, and every write must be atomic (fuser/outputs.py) so an interrupted or
failed run leaves either the old files or the new ones, never half of them. Weights stored as external
data are never read here: `load_model` keeps them as references and `save_model` streams their bytes
from the source file to the destination file chunk by chunk, so a model over 2 GB costs memory for its
graph, not its weights.

External data is found as onnxruntime finds it: a location is looked up beside the model path *as
given*, and must lead (symlinks followed) into that folder or into the folder that really holds the
model file. That is what a Hugging Face cache snapshot needs (snapshots/<rev>/model.onnx and its
data are symlinks into blobs/), and nothing more: a symlink to any other file is refused. Each
tensor, wherever it sits (initializer, sparse initializer, Constant, attribute, subgraph, function
body), is checked the same way; its location is then rewritten relative to `base_dir` without
symlinks, so every later reader (onnx, onnxruntime, the copy on save) opens the file that was checked.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.numpy_helper
from google.protobuf.message import DecodeError

from .errors import ModelError, UsageError
from .outputs import OutputPlan, data_file, finish, model_companions, swap_in, temporary_file, write_atomic

# The highest default-domain opset fuser upgrades a model to: what onnxruntime 1.31 runs (onnx 1.23 knows 28).
# Models are not refused by this: any opset onnx or onnxruntime knows is read (see check_opset_supported).
MAX_OPSET = 26
PROTOBUF_LIMIT = 2**31 - 1
COPY_CHUNK = 64 << 20  # bytes streamed at a time when copying external data
EXTERNAL_THRESHOLD = 1024  # tensors at least this large go to the data file when writing externally


@dataclass
class LoadedModel:
    """A model plus where its external data lives (`base_dir`), so weights can be read lazily."""

    model: onnx.ModelProto
    path: Path | None
    base_dir: Path | None

    @property
    def has_external_data(self) -> bool:
        return any(uses_external_data(t) for t in iter_tensors(self.model))


def uses_external_data(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def iter_tensors(model_or_graph: onnx.ModelProto | onnx.GraphProto):
    """Every tensor: initializers, sparse initializers (values and indices), tensors held by attributes
    (TENSOR, TENSORS, SPARSE_TENSOR(S)), in subgraphs too, and for a model in its functions' bodies."""
    return (tensor for tensor, _ in _tensor_slots(model_or_graph))


def _tensor_slots(model_or_graph, dense: bool = True):
    """(tensor, whether its bytes may be moved to external data on save): initializers and TENSOR
    attributes of the graphs may; sparse parts and function bodies are copied as they are."""
    if isinstance(model_or_graph, onnx.ModelProto):
        yield from _tensor_slots(model_or_graph.graph)
        for function in model_or_graph.functions:
            yield from _node_tensors(function.node, dense=False)
        return
    graph = model_or_graph
    for tensor in graph.initializer:
        yield tensor, dense
    for sparse in graph.sparse_initializer:
        yield sparse.values, False
        yield sparse.indices, False
    yield from _node_tensors(graph.node, dense)


def _node_tensors(nodes, dense: bool):
    A = onnx.AttributeProto
    for node in nodes:
        for attr in node.attribute:
            if attr.type == A.TENSOR:
                yield attr.t, dense
            elif attr.type == A.TENSORS:
                yield from ((t, False) for t in attr.tensors)
            elif attr.type in (A.SPARSE_TENSOR, A.SPARSE_TENSORS):
                for sparse in ([attr.sparse_tensor] if attr.type == A.SPARSE_TENSOR else attr.sparse_tensors):
                    yield sparse.values, False
                    yield sparse.indices, False
            elif attr.type in (A.GRAPH, A.GRAPHS):
                for g in ([attr.g] if attr.type == A.GRAPH else attr.graphs):
                    yield from _tensor_slots(g, dense)


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def default_opset(model: onnx.ModelProto) -> int | None:
    """The default-domain ("" or "ai.onnx") opset, or None for a model that imports only other domains."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def load_model(path: str | os.PathLike, check_opset: bool = True) -> LoadedModel:
    """Parse `path` into a ModelProto without reading external weights; fail with one clear line."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no such file: {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not an ONNX file")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"{path} is empty (0 bytes): not an ONNX model")
    model = onnx.ModelProto()
    try:
        with open(path, "rb") as f:
            model.ParseFromString(f.read())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{path} is not a valid ONNX file (protobuf parse failed: {exc}); "
                         "is it truncated or a different format?") from None
    if not model.HasField("graph") or (len(model.graph.node) == 0 and len(model.graph.output) == 0):
        raise ModelError(f"{path} parses as protobuf but holds no ONNX graph: not an ONNX model")
    if model.ir_version == 0:
        raise ModelError(f"{path} has no ir_version: not an ONNX model")
    folder = path.absolute().parent  # as given: onnxruntime looks beside the path it was given
    loaded = _locate_external_data(model, path, folder, (folder.resolve(), path.resolve().parent))
    if check_opset:
        check_opset_supported(model, str(path), path)
    return loaded


def from_proto(model: onnx.ModelProto, base_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Wrap an in-memory ModelProto (library use); `base_dir` is where its external data lives."""
    folder = Path(base_dir).absolute() if base_dir else None
    loaded = _locate_external_data(model, None, folder, (folder.resolve(),) if folder else ())
    check_opset_supported(model, "model")
    return loaded


def check_opset_supported(model: onnx.ModelProto, what: str, path: Path | None = None) -> None:
    """Refuse a default-domain opset that neither the installed onnx nor onnxruntime knows.

    Whether validation can run is not decided here: an opset-6 model onnxruntime has no kernels for is
    validated with onnx.reference, or optimized with a note saying why validation could not run.
    """
    opset = default_opset(model)
    known = onnx.defs.onnx_opset_version()
    if opset is None or 1 <= opset <= known or (opset > known and _onnxruntime_loads(model, path)):
        return
    raise ModelError(f"{what} uses default-domain opset {opset}; the installed onnx knows opsets 1..{known} "
                     "and onnxruntime cannot load it either, so fuser cannot read it (convert it first)")


def _onnxruntime_loads(model: onnx.ModelProto, path: Path | None) -> bool:
    """Whether onnxruntime creates a session for the model (for opsets newer than the installed onnx)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        ort.InferenceSession(str(path) if path is not None else model.SerializeToString(), so,
                             providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any failure means it does not load
        return False
    return True


def _locate_external_data(model: onnx.ModelProto, path: Path | None, folder: Path | None,
                          roots: tuple[Path, ...]) -> LoadedModel:
    """Check every external reference (missing, too short, or leading out of `roots`) and return the
    model with its locations relative to `base_dir`, symlink-free (a copy when one had to change:
    `model` itself is never modified)."""
    tensors = [t for t in iter_tensors(model) if uses_external_data(t)]
    if not tensors:
        return LoadedModel(model, path, roots[0] if roots else None)
    if folder is None:
        raise ModelError("the model references external data but no folder was given to read it from")
    targets: list[Path] = []
    sizes: dict[Path, int] = {}
    for t in tensors:
        info = external_info(t)
        location = info.get("location", "")
        target = _confined_target(folder, roots, location, t.name)
        if target not in sizes:
            if not target.is_file():
                raise ModelError(f"external data file '{location}' for tensor '{t.name}' is missing "
                                 f"(looked in {folder})")
            sizes[target] = target.stat().st_size
        _check_range(t, info, location, sizes[target])
        targets.append(target)
    base = roots[0]
    if any(not _inside(target, base) for target in targets):  # a Hugging Face snapshot: data in blobs/
        base = Path(os.path.commonpath([base, *targets]))
    if any(external_info(t)["location"] != target.relative_to(base).as_posix()
           for t, target in zip(tensors, targets)):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        for t in iter_tensors(copy):
            if uses_external_data(t):
                target = _confined_target(folder, roots, external_info(t)["location"], t.name)
                for entry in t.external_data:
                    if entry.key == "location":
                        entry.value = target.relative_to(base).as_posix()
        model = copy
    return LoadedModel(model, path, base)


def _check_range(t: onnx.TensorProto, info: dict[str, str], location: str, size: int) -> None:
    offset = _int_entry(t, info, "offset", 0)
    length = _int_entry(t, info, "length", size - offset)
    if offset < 0 or length < 0:
        raise ModelError(f"external data for tensor '{t.name}' has a negative offset or length "
                         f"(offset {offset}, length {length})")
    if offset + length > size:
        raise ModelError(f"external data for tensor '{t.name}' runs past the end of '{location}' "
                         f"(offset {offset} + length {length} > {size} bytes): truncated?")
    needed = _stored_nbytes(t)
    if needed is not None and length != needed:
        raise ModelError(f"external data for tensor '{t.name}' is {length} bytes but its type and shape "
                         f"{list(t.dims)} need {needed} bytes")


def external_files(loaded: LoadedModel) -> set[Path]:
    """The files the model's external data is read from (resolved)."""
    return {resolve_location(loaded.base_dir, external_info(t).get("location", ""), t.name)
            for t in iter_tensors(loaded.model) if uses_external_data(t)}


def _int_entry(tensor: onnx.TensorProto, info: dict[str, str], key: str, default: int) -> int:
    if key not in info:
        return default
    try:
        return int(info[key])
    except ValueError:
        raise ModelError(f"external data for tensor '{tensor.name}' has {key} '{info[key][:40]}', "
                         "not an integer") from None


_SUB_BYTE_BITS = {getattr(onnx.TensorProto, n): bits for n, bits in
                  (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
                  if hasattr(onnx.TensorProto, n)}


def _stored_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the raw data of `tensor` must have (None where it cannot be told: strings, unknown types)."""
    n = 1
    for d in tensor.dims:
        n *= d
    if tensor.data_type in _SUB_BYTE_BITS:
        return (n * _SUB_BYTE_BITS[tensor.data_type] + 7) // 8
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        return n * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:  # a type this onnx does not know: leave it to the reader
        return None


def resolve_location(base: Path, location: str, tensor_name: str) -> Path:
    """The file an external-data `location` names, refusing paths that escape `base` (untrusted models)."""
    return _confined_target(base, (base.resolve(),), location, tensor_name)


def _confined_target(folder: Path, roots: tuple[Path, ...], location: str, tensor_name: str) -> Path:
    """`folder/location` with symlinks followed; refused unless it is inside one of `roots`."""
    if not location:
        raise ModelError(f"tensor '{tensor_name}' is marked external but names no location")
    if "\0" in location:
        raise ModelError(f"tensor '{tensor_name}' has an external-data location with a NUL byte: refused")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location.split("/")[0]:
        raise ModelError(f"tensor '{tensor_name}' points at absolute path '{location}'; "
                         "external data must sit in the model's folder")
    target = (folder / location).resolve()
    if not any(_inside(target, root) for root in roots):
        raise ModelError(f"tensor '{tensor_name}' points at '{location}', outside the model's folder; "
                         "refused (an untrusted model must not read other files)")
    return target


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def stored_size(loaded: LoadedModel) -> int:
    """Bytes the model would take as one protobuf: its graph plus every external tensor's data."""
    return loaded.model.ByteSize() + sum(_external_length(loaded, t) for t in iter_tensors(loaded.model)
                                         if uses_external_data(t))


def external_ends(loaded: LoadedModel, tensor: onnx.TensorProto, n: int) -> bytes:
    """The first and last `n` bytes of an external tensor, read without loading it."""
    info = external_info(tensor)
    src = resolve_location(loaded.base_dir, info.get("location", ""), tensor.name)
    offset = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else src.stat().st_size - offset
    with open(src, "rb") as f:
        f.seek(offset)
        head = f.read(min(n, length))
        f.seek(offset + max(0, length - n))
        return head + f.read(min(n, length))


def external_sha256(loaded: LoadedModel, tensor: onnx.TensorProto) -> str:
    """SHA-256 of an external tensor's bytes, streamed from its file: compared without being loaded."""
    import hashlib

    info = external_info(tensor)
    src = resolve_location(loaded.base_dir, info.get("location", ""), tensor.name)
    offset = int(info.get("offset", 0))
    remaining = int(info["length"]) if "length" in info else src.stat().st_size - offset
    h = hashlib.sha256()
    with open(src, "rb") as f:
        f.seek(offset)
        while remaining:
            chunk = f.read(min(COPY_CHUNK, remaining))
            if not chunk:
                raise ModelError(f"external data for tensor '{tensor.name}' ends early")
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


def save_model(loaded: LoadedModel, model: onnx.ModelProto, path: str | os.PathLike,
               external_data: bool | None = None) -> list[Path]:
    """Write `model` to `path` atomically and return the files written.

    `external_data`: None keeps the input's choice (external if the input had external data or the
    result would pass protobuf's 2 GB limit), True forces a `PATH.data` file beside the output, False
    forbids it (and fails clearly when the model cannot fit in one protobuf). `loaded` tells where the
    external tensors referenced by `model` can be read from.
    """
    path = Path(path)
    referenced = [t for t in iter_tensors(model) if uses_external_data(t)]
    external_bytes = sum(_external_length(loaded, t) for t in referenced)
    total = model.ByteSize() + external_bytes
    if external_data is False and total >= PROTOBUF_LIMIT:
        raise UsageError(f"the model holds {total / 2**30:.2f} GiB with its weights; a single ONNX file "
                         "cannot exceed protobuf's 2 GB limit: drop --no-external-data")
    if external_data is None:
        external_data = bool(referenced) or total >= PROTOBUF_LIMIT
    check_model_output(loaded, path, external_data)
    if not external_data:
        if referenced:  # small enough to inline: read the weights into a copy, never into `model`
            model = _inlined(loaded, model)
        return [write_atomic(path, model.SerializeToString())]
    return _save_with_external_data(loaded, model, path)


def check_model_output(loaded: LoadedModel, path: Path, external_data: bool | None, flag: str = "output") -> None:
    """Refuse (before any work) a model output that would replace one of the input's files."""
    plan = OutputPlan()
    plan.read_model(loaded)
    plan.write(flag, path, *model_companions(path, external_data))
    plan.check()


def _external_length(loaded: LoadedModel, tensor: onnx.TensorProto) -> int:
    info = external_info(tensor)
    if "length" in info:
        return int(info["length"])
    src = resolve_location(loaded.base_dir, info.get("location", ""), tensor.name)
    return src.stat().st_size - int(info.get("offset", 0))


def _inlined(loaded: LoadedModel, model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in iter_tensors(out):
        if uses_external_data(tensor):
            array = onnx.numpy_helper.to_array(tensor, base_dir=str(loaded.base_dir))
            tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    return out


def _save_with_external_data(loaded: LoadedModel, model: onnx.ModelProto, path: Path) -> list[Path]:
    """Stream every large tensor into `PATH.data` and write the graph to `PATH`, both atomically.

    Tensors whose bytes are already external (wherever they sit: initializer, sparse, attribute,
    function body) are copied file-to-file in chunks; in-memory initializers and Constant values over
    the threshold are written from memory. Both files are written to temporary files, then swapped in
    together (`outputs.swap_in`): the previous pair stays until both new files are complete, a failed
    swap restores it, and concurrent runs never leave one run's graph with another run's data.
    """
    data_path = data_file(path)
    out = onnx.ModelProto()
    out.CopyFrom(model)  # the proto is small here: raw bytes of external tensors are not in it
    with temporary_file(data_path) as (dst, tmp_data):
        sources: dict[Path, object] = {}
        try:
            for tensor, movable in _tensor_slots(out):
                if uses_external_data(tensor):
                    info = external_info(tensor)
                    src_path = resolve_location(loaded.base_dir, info["location"], tensor.name)
                    if src_path not in sources:
                        sources[src_path] = open(src_path, "rb")
                    offset = int(info.get("offset", 0))
                    length = int(info["length"]) if "length" in info else src_path.stat().st_size - offset
                    start = _align(dst)
                    _copy_range(sources[src_path], dst, offset, length)
                elif movable and (len(tensor.raw_data) >= EXTERNAL_THRESHOLD or _large_typed_data(tensor)):
                    if not tensor.raw_data:
                        _to_raw(tensor)
                    start = _align(dst)
                    dst.write(tensor.raw_data)
                    length = len(tensor.raw_data)
                    tensor.ClearField("raw_data")
                else:
                    continue
                del tensor.external_data[:]
                for key, value in (("location", data_path.name), ("offset", str(start)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                tensor.data_location = onnx.TensorProto.EXTERNAL
        finally:
            for f in sources.values():
                f.close()
        finish(dst)
        if out.ByteSize() >= PROTOBUF_LIMIT:
            raise ModelError("the graph alone (without weights) is over protobuf's 2 GB limit")
        with temporary_file(path) as (graph_file, tmp_graph):
            graph_file.write(out.SerializeToString())
            finish(graph_file)
            swap_in([(tmp_graph, path), (tmp_data, data_path)])
    return [path, data_path]


def _large_typed_data(tensor: onnx.TensorProto) -> bool:
    n = 1
    for d in tensor.dims:
        n *= d
    return n * 4 >= EXTERNAL_THRESHOLD and not tensor.raw_data and tensor.data_type != onnx.TensorProto.STRING


def _to_raw(tensor: onnx.TensorProto) -> None:
    array = onnx.numpy_helper.to_array(tensor)
    raw = onnx.numpy_helper.from_array(array, tensor.name)
    tensor.CopyFrom(raw)


def _align(f, alignment: int = 64) -> int:
    pos = f.tell()
    pad = (-pos) % alignment
    if pad:
        f.write(b"\0" * pad)
    return pos + pad


_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EBADF}


def _copy_range(src, dst, offset: int, length: int) -> None:
    """Copy `length` bytes at `offset` of `src` to the end of `dst`: in the kernel where the OS can
    (copy_file_range: no bytes pass through Python), else in chunks of COPY_CHUNK."""
    if hasattr(os, "copy_file_range"):
        dst.flush()
        out_pos, remaining = dst.tell(), length
        try:
            while remaining:
                n = os.copy_file_range(src.fileno(), dst.fileno(), min(COPY_CHUNK, remaining),
                                       offset + length - remaining, out_pos + length - remaining)
                if n == 0:
                    raise ModelError("external data file ended early while copying weights")
                remaining -= n
            dst.seek(out_pos + length)
            return
        except OSError as exc:  # a file system without it: fall back to reading and writing
            if exc.errno not in _NO_COPY_FILE_RANGE:
                raise
            dst.seek(out_pos)
            dst.truncate()
    src.seek(offset)
    remaining = length
    while remaining:
        chunk = src.read(min(COPY_CHUNK, remaining))
        if not chunk:
            raise ModelError("external data file ended early while copying weights")
        dst.write(chunk)
        remaining -= len(chunk)
