"""The two ways validation runs a model: onnxruntime, or onnx's reference evaluator where onnxruntime cannot.

onnxruntime runs with its own graph optimizations OFF (otherwise it fuses the original itself and the
comparison proves nothing), on the CPU provider unless CUDA is asked for and usable. It cannot run
everything a valid model may hold: bfloat16 / float8 / int4 inputs (numpy cannot hand them over), ops or
op versions it has no kernel for (opset-6 `Add`, `ai.onnx.preview.training`), the newest opsets.
`onnx.reference.ReferenceEvaluator` runs any op onnx defines, in numpy: slow, so it is used only for
models up to `REFERENCE_LIMIT` bytes. Both sessions answer `run(feeds) -> {output name: value}`, where a
value is an array, a list (a sequence) or None (an absent optional).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import first_line
from ..model_io import LoadedModel, iter_tensors, uses_external_data

ENGINES = ("onnxruntime", "reference")
INLINE_LIMIT = 2**31 - 1 - (1 << 20)  # bigger models go to onnxruntime through a temporary file
REFERENCE_LIMIT = 64 << 20  # bytes (graph and weights) up to which onnx.reference may run a model
_CUDA_UNUSABLE = False  # set once a CUDA session silently fell back to CPU
_CUDA_PRELOADED = False


class CannotLoad(Exception):
    """This engine cannot load the model (no kernel, unknown op, too big for onnx.reference)."""


def open_session(engine: str, model: onnx.ModelProto, base_dir: Path | None, provider: str = "cpu",
                 path: Path | None = None, loaded: LoadedModel | None = None):
    """A session of `engine` for `model`; raises CannotLoad with onnxruntime's or onnx's first line."""
    try:
        if engine == "onnxruntime":
            return Session(model, base_dir, provider, path=path, loaded=loaded)
        return ReferenceSession(model, base_dir)
    except CannotLoad:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to load is this engine's answer
        raise CannotLoad(first_line(exc)) from None


def _session_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # or ORT fuses the original itself
    so.log_severity_level = 4  # failures are reported by fuser, in one line, not by onnxruntime on stderr
    return so


def providers_for(provider: str) -> tuple[list, str | None]:
    """onnxruntime providers for `provider`, and a note when the one asked for is not available."""
    import onnxruntime as ort

    if provider == "cuda":
        if _CUDA_UNUSABLE:
            return ["CPUExecutionProvider"], "CUDA was asked for but could not be used here; validated on CPU"
        if "CUDAExecutionProvider" in ort.get_available_providers():
            _preload_cuda(ort)
            # tf32 off: both models must be computed at the precision their types say
            return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"], None
        return ["CPUExecutionProvider"], "CUDA was asked for but onnxruntime has no CUDA provider; validated on CPU"
    return ["CPUExecutionProvider"], None


def _preload_cuda(ort) -> None:
    """Load CUDA/cuDNN from the nvidia-* wheels if that is where they are (onnxruntime >= 1.21), quietly."""
    global _CUDA_PRELOADED
    if _CUDA_PRELOADED or not hasattr(ort, "preload_dlls"):
        return
    _CUDA_PRELOADED = True
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            ort.preload_dlls()
        except Exception:  # missing libraries: the CUDA session then falls back to CPU, with a note
            pass


class Session:
    """An onnxruntime session for a model held in memory whose external weights live in `base_dir`."""

    engine = "onnxruntime"

    def __init__(self, model: onnx.ModelProto, base_dir: Path | None, provider: str, path: Path | None = None,
                 loaded: LoadedModel | None = None):
        import onnxruntime as ort

        self.note: str | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        providers, self.note = providers_for(provider)
        so = _session_options()
        external = any(uses_external_data(t) for t in iter_tensors(model))
        if path is not None:
            source = str(path)  # onnxruntime reads (and maps) external data next to the file itself
        elif model.ByteSize() < INLINE_LIMIT:
            if external and base_dir is not None:
                so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(base_dir))
            source = model.SerializeToString()
        else:  # too big for one protobuf: write it with its weights to a temporary folder
            from ..model_io import save_model
            from ..outputs import interrupts_held

            with interrupts_held():  # an interrupt lands before or after, never inside (leaking the folder)
                self._tmp = tempfile.TemporaryDirectory(prefix="fuser-validate-")
            target = Path(self._tmp.name) / "model.onnx"
            save_model(loaded or LoadedModel(model, None, base_dir), model, target, external_data=True)
            source = str(target)
        try:
            self.sess = ort.InferenceSession(source, so, providers=providers)
        except Exception as exc:
            if provider == "cuda" and "use_tf32" in str(exc):
                self.sess = ort.InferenceSession(source, so, providers=["CUDAExecutionProvider",
                                                                        "CPUExecutionProvider"])
            else:
                self.close()
                raise
        if provider == "cuda" and self.note is None and self.sess.get_providers()[0] != "CUDAExecutionProvider":
            global _CUDA_UNUSABLE
            _CUDA_UNUSABLE = True  # onnxruntime already said why on stderr; ask once per process
            self.note = "CUDA was asked for but could not be used here; validated on CPU"
        self.device = self.sess.get_providers()[0]
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def run(self, feeds: dict[str, object]) -> dict[str, object]:
        types = {i.name: i.type for i in self.sess.get_inputs()}
        feeds = {k: (v.astype(np.float16) if types[k] == "tensor(float16)" and isinstance(v, np.ndarray)
                     and v.dtype == np.float32 else v)
                 for k, v in feeds.items() if k in types}  # --fp16-io: the original's fp32 inputs, rounded
        return dict(zip(self.output_names, self.sess.run(None, feeds)))

    def close(self) -> None:
        self.sess = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class ReferenceSession:
    """onnx.reference.ReferenceEvaluator on a copy of the model with its external weights read in."""

    engine = "reference"
    note = None
    device = "onnx.reference (CPU, numpy)"

    def __init__(self, model: onnx.ModelProto, base_dir: Path | None):
        from onnx.reference import ReferenceEvaluator

        external = [t for t in iter_tensors(model) if uses_external_data(t)]
        size = model.ByteSize() + sum(int(np.prod(t.dims, dtype=np.int64)) * _itemsize(t) for t in external)
        if size > REFERENCE_LIMIT:
            raise CannotLoad(f"the model holds {size / 2**20:.0f} MiB, more than onnx.reference's "
                             f"{REFERENCE_LIMIT >> 20} MiB limit")
        if external:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            for t in iter_tensors(copy):
                if uses_external_data(t):
                    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t, str(base_dir or "")), t.name))
            model = copy
        self.ref = ReferenceEvaluator(model)
        self.output_names = list(self.ref.output_names)
        self.input_names = set(self.ref.input_names)

    def run(self, feeds: dict[str, object]) -> dict[str, object]:
        with warnings.catch_warnings(), np.errstate(all="ignore"):  # NaN from random inputs is data, not news
            warnings.simplefilter("ignore")
            outputs = self.ref.run(None, {k: v for k, v in feeds.items() if k in self.input_names})
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self.ref = None


def _itemsize(t: onnx.TensorProto) -> int:
    try:
        return max(1, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize)
    except Exception:  # noqa: BLE001 - an unknown type: count a byte per element
        return 1
