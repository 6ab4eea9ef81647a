"""onnxruntime sessions for the benchmark: configuration, generated inputs, placement, IO binding.

Inputs are random, generated as validation does (`fuser.validation.inputs`): floats standard normal, ids in
[0, vocab_size), masks of 1s with trailing 0s. `input_shapes` pins dynamic dims ({"ids": (1, 128)});
`batch` then replaces axis 0 of every input whose axis 0 is dynamic. The symbolic dims are pinned in the
session too (`add_free_dimension_override_by_name`): static shapes are what CUDA graphs need, and every
configuration gets the same ones.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..errors import FuserError, ModelError, UsageError
from ..validation.inputs import InputSpec, random_tensor, resolve_shapes

PROVIDERS = ("cuda", "cpu")
ORT_OPT_LEVELS = ("off", "basic", "extended", "all")


def load_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
        raise FuserError(f"fuser bench needs onnxruntime (pip install onnxruntime-gpu): {exc}") from None
    return ort


def _opt_level(ort, name: str):
    levels = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if name not in levels:
        raise UsageError(f"--ort-opt {name!r}: expected one of {', '.join(ORT_OPT_LEVELS)}")
    return levels[name]


# ---------------------------------------------------------------------------------------------- inputs

def _elem_type(ort_type: str) -> int:
    """'tensor(float)' -> TensorProto.FLOAT."""
    if not (ort_type.startswith("tensor(") and ort_type.endswith(")")):
        raise ModelError(f"input of type {ort_type} is not a tensor; fuser bench generates tensors only")
    try:
        return TensorProto.DataType.Value(ort_type[7:-1].upper())
    except ValueError:
        raise ModelError(f"input type {ort_type} is not an ONNX tensor type fuser knows") from None


def input_specs_of(session) -> list[InputSpec]:
    """The session's inputs as `fuser.validation.inputs.InputSpec` (read from onnxruntime, so the model is parsed once)."""
    specs = []
    for arg in session.get_inputs():
        dims = None if arg.shape is None else tuple(
            d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else None) for d in arg.shape)
        specs.append(InputSpec(arg.name, _elem_type(arg.type), dims))
    return specs


def bench_shapes(specs: list[InputSpec], input_shapes: dict | None, batch: int) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: `input_shapes` and defaults (fuser.validation.inputs), then axis 0 := batch where dynamic."""
    if batch < 1:
        raise UsageError(f"--batch {batch}: must be >= 1")
    shapes = resolve_shapes(specs, {k: tuple(v) for k, v in (input_shapes or {}).items()})
    out = {}
    for spec in specs:
        shape = list(shapes[spec.name])
        declared0 = spec.dims[0] if spec.dims else None
        if shape:
            if isinstance(declared0, int):
                if batch != 1 and declared0 != batch:
                    raise UsageError(f"--batch {batch}: input '{spec.name}' has a fixed axis 0 of {declared0}")
            else:
                shape[0] = batch
        out[spec.name] = tuple(shape)
    return out


def make_feeds(specs, shapes, seed: int, vocab_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: np.ascontiguousarray(random_tensor(s, shapes[s.name], rng, vocab_size)) for s in specs}


def symbol_values(specs, shapes) -> dict[str, int]:
    """Symbolic dim name -> the value the chosen shapes give it (for free-dimension overrides)."""
    out: dict[str, int] = {}
    for spec in specs:
        for declared, value in zip(spec.dims or (), shapes[spec.name]):
            if isinstance(declared, str):
                out.setdefault(declared, int(value))
    return out


@contextlib.contextmanager
def _quiet_stdout():
    """onnxruntime.preload_dlls prints one line per missing library; keep them for the error message."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


def check_cuda_available(ort) -> str:
    """Load CUDA's libraries (onnxruntime.preload_dlls) and make sure the provider exists; returns its log."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise FuserError("--provider cuda: this onnxruntime build has no CUDA execution provider "
                         f"(it has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu, "
                         "or use --provider cpu")
    log = ""
    if hasattr(ort, "preload_dlls"):
        with _quiet_stdout() as buf:
            try:
                ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - a failed preload is reported with the provider check
                print(f"preload_dlls: {exc}")
        log = buf.getvalue()
    return log


def cuda_unusable(log: str) -> FuserError:
    missing = [ln.split(":")[0].replace("Failed to load ", "").strip()
               for ln in log.splitlines() if ln.startswith("Failed to load")]
    why = f" (missing: {', '.join(missing[:4])})" if missing else " (no CUDA GPU or driver, or CUDA 13 / cuDNN 9 " \
                                                                  "libraries not found)"
    return FuserError("--provider cuda: onnxruntime could not create the CUDA execution provider"
                      f"{why}; run on a machine with an NVIDIA GPU, or use --provider cpu "
                      "(FUSER_DEBUG=1 shows onnxruntime's log)")


@dataclass
class SessionConfig:
    provider: str
    ort_opt: str
    cuda_graph: bool
    symbols: dict[str, int]
    stream: int | None = None  # a cudaStream_t for user_compute_stream
    threads: int = 0


def make_session(ort, model_path: str, cfg: SessionConfig):
    so = ort.SessionOptions()
    so.graph_optimization_level = _opt_level(ort, cfg.ort_opt)
    so.log_severity_level = 3
    if cfg.threads:
        so.intra_op_num_threads = cfg.threads
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    for name, value in cfg.symbols.items():  # static shapes: what CUDA graphs need, the same for every config
        so.add_free_dimension_override_by_name(name, value)
    if cfg.provider == "cuda":
        opts = {"device_id": "0"}
        if cfg.cuda_graph:
            opts["enable_cuda_graph"] = "1"
        if cfg.stream is not None:
            opts["has_user_compute_stream"] = "1"
            opts["user_compute_stream"] = str(cfg.stream)
        providers = [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(model_path, so, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception classes
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if cfg.cuda_graph and "graph capture" in msg:
            raise FuserError(f"--cuda-graph: onnxruntime refused graph capture for this model: {msg}") from None
        raise ModelError(f"onnxruntime cannot load {model_path}: {msg}") from None
    if cfg.provider == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise cuda_unusable("")
    return sess


def placement(sess) -> dict:
    """Nodes per execution provider after onnxruntime's partitioning (and its own fusions), CPU ops named."""
    out: dict = {"nodes": {}, "cpu_ops": {}}
    try:
        subgraphs = sess.get_provider_graph_assignment_info()
    except Exception:  # noqa: BLE001 - older onnxruntime
        return out
    for sg in subgraphs:
        nodes = sg.get_nodes()
        out["nodes"][sg.ep_name] = out["nodes"].get(sg.ep_name, 0) + len(nodes)
        if sg.ep_name == "CPUExecutionProvider":
            for n in nodes:
                out["cpu_ops"][n.op_type] = out["cpu_ops"].get(n.op_type, 0) + 1
    return out


class Bound:
    """One session with device-resident inputs and outputs bound through an IOBinding."""

    def __init__(self, ort, sess, feeds: dict[str, np.ndarray], device: str):
        self.sess, self.device = sess, device
        self.binding = sess.io_binding()
        # own buffers (a cpu OrtValue would otherwise share the caller's numpy array)
        self.inputs = {k: ort.OrtValue.ortvalue_from_numpy(v.copy() if device == "cpu" else v, device, 0)
                       for k, v in feeds.items()}
        for k, v in self.inputs.items():
            self.binding.bind_ortvalue_input(k, v)
        self.output_names = [o.name for o in sess.get_outputs()]
        # discovery run: onnxruntime allocates the outputs on the device; we keep and rebind them, so every
        # later run (and a captured CUDA graph) writes to the same addresses
        for name in self.output_names:
            self.binding.bind_output(name, device, 0)
        sess.run_with_iobinding(self.binding)
        self.outputs = dict(zip(self.output_names, self.binding.get_outputs()))
        self.binding.clear_binding_outputs()
        for name, value in self.outputs.items():
            self.binding.bind_ortvalue_output(name, value)

    def run(self, run_options=None):
        self.sess.run_with_iobinding(self.binding, run_options)

    def host_outputs(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.outputs.items()}
