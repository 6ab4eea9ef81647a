"""`fuser bench`: time a model with onnxruntime, on the CUDA or the CPU execution provider.

    result = benchmark("model.onnx", provider="cuda", ort_opt="off", cuda_graph=True, batch=8)
    python -m fuser.bench model.onnx --provider cuda --batch 8        # no click, no fuser pipeline needed

What one call measures (all through onnxruntime's own API):

    latency        `run_with_iobinding` on inputs and outputs that already live on the device (OrtValues
                   made with `OrtValue.ortvalue_from_numpy(x, "cuda", 0)`, outputs bound to fixed device
                   OrtValues found by one discovery run). The CUDA provider's run is synchronous, so the
                   host clock around each run is the time to the finished result. `warmup` runs first, then
                   `iters` timed runs: median, p90, mean, min, max (ms); throughput = batch / median.
    e2e            the same run with the copies a caller pays for: `OrtValue.update_inplace(numpy)` (host to
                   device) before and `OrtValue.numpy()` (device to host) after, pageable host memory.
    cuda graph     provider option `enable_cuda_graph=1`: onnxruntime captures the graph on an early run and
                   replays it afterwards; needs static shapes (the symbolic dims are pinned with
                   `add_free_dimension_override_by_name`) and every compute node on the CUDA provider.
    ort_opt        `GraphOptimizationLevel`: off (ORT_DISABLE_ALL), basic, extended, all.
    pipelined      see `_pipeline`: two lanes, each an InferenceSession whose CUDA provider computes on its
                   own CUDA stream (`user_compute_stream`), with pinned host buffers and asynchronous copies on
                   that stream; `run_with_iobinding` with `disable_synchronize_execution_providers=1` returns once
                   the work is enqueued, so batch i computes while batch i+1 uploads and batch i-1 downloads.
                   Streams, pinned memory and copies come from libcudart through ctypes (`pipeline_copies=
                   "cudart"`, the libcudart onnxruntime-gpu loads) or from onnxruntime's own API ("onnxruntime":
                   OrtEpDevice.create_sync_stream, HOST_ACCESSIBLE OrtValues, onnxruntime.copy_tensors); CUDA
                   events (libcudart) wait and time in both. Measured as one lane (nothing overlaps), two lanes
                   from one host thread, and one host thread per lane; every output is checked against a plain run.

Inputs are random, generated as validation does (`fuser.inputs`): floats standard normal, ids in
[0, vocab_size), masks of 1s with trailing 0s. `input_shapes` pins dynamic dims ({"ids": (1, 128)});
`batch` then replaces axis 0 of every input whose axis 0 is dynamic.

This module imports only onnxruntime, numpy, onnx (for dtypes) and fuser.errors / fuser.inputs, so it also
runs where the fuser pipeline is not installed (`benchmarks/gpu_bench.py` uses it so on the GPU machine).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import io
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from .errors import FuserError, ModelError, UsageError
from .inputs import DEFAULT_VOCAB_SIZE, InputSpec, random_tensor, resolve_shapes

PROVIDERS = ("cuda", "cpu")
ORT_OPT_LEVELS = ("off", "basic", "extended", "all")
_EP = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
_NOSYNC = "disable_synchronize_execution_providers"  # RunOptions config key: Run returns once work is enqueued


def _ort():
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
    """The session's inputs as `fuser.inputs.InputSpec` (read from onnxruntime, so the model is parsed once)."""
    specs = []
    for arg in session.get_inputs():
        dims = None if arg.shape is None else tuple(
            d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else None) for d in arg.shape)
        specs.append(InputSpec(arg.name, _elem_type(arg.type), dims))
    return specs


def bench_shapes(specs: list[InputSpec], input_shapes: dict | None, batch: int) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: `input_shapes` and defaults (fuser.inputs), then axis 0 := batch where dynamic."""
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


def _symbol_values(specs, shapes) -> dict[str, int]:
    """Symbolic dim name -> the value the chosen shapes give it (for free-dimension overrides)."""
    out: dict[str, int] = {}
    for spec in specs:
        for declared, value in zip(spec.dims or (), shapes[spec.name]):
            if isinstance(declared, str):
                out.setdefault(declared, int(value))
    return out


# ---------------------------------------------------------------------------------------------- sessions

@contextlib.contextmanager
def _quiet_stdout():
    """onnxruntime.preload_dlls prints one line per missing library; keep them for the error message."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


def _check_cuda_available(ort) -> str:
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


def _cuda_unusable(log: str) -> FuserError:
    missing = [ln.split(":")[0].replace("Failed to load ", "").strip()
               for ln in log.splitlines() if ln.startswith("Failed to load")]
    why = f" (missing: {', '.join(missing[:4])})" if missing else " (no CUDA GPU or driver, or CUDA 13 / cuDNN 9 " \
                                                                  "libraries not found)"
    return FuserError("--provider cuda: onnxruntime could not create the CUDA execution provider"
                      f"{why}; run on a machine with an NVIDIA GPU, or use --provider cpu "
                      "(FUSER_DEBUG=1 shows onnxruntime's log)")


@dataclass
class _SessionConfig:
    provider: str
    ort_opt: str
    cuda_graph: bool
    symbols: dict[str, int]
    stream: int | None = None  # a cudaStream_t for user_compute_stream
    threads: int = 0


def _make_session(ort, model_path: str, cfg: _SessionConfig):
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
        raise _cuda_unusable("")
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


def _stats(samples_ms: list[float], batch: int) -> dict:
    s = sorted(samples_ms)
    median = statistics.median(s)
    return {"median_ms": median, "p90_ms": float(np.percentile(s, 90)), "mean_ms": statistics.fmean(s),
            "min_ms": s[0], "max_ms": s[-1], "n": len(s),
            "throughput_per_s": batch * 1000.0 / median if median > 0 else None}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _ratio(a, b):
    return a / b if a and b else None


def _max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.dtype.kind not in "fc":
        return 0.0 if np.array_equal(a, b) else float("inf")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    scale = max(float(np.max(np.abs(b64))) if b64.size else 0.0, 1e-12)
    return float(np.max(np.abs(a64 - b64)) / scale) if a64.size else 0.0


# ---------------------------------------------------------------------------------------------- serial loop

class _Bound:
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


def _time_loop(fn, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    clock = time.perf_counter
    for _ in range(iters):
        t0 = clock()
        fn()
        samples.append((clock() - t0) * 1000.0)
    return samples


# ---------------------------------------------------------------------------------------------- CUDA via ctypes

class CudaRuntime:
    """The few libcudart calls the pipeline needs, through ctypes: streams, events, pinned memory, async copies.

    Found the way onnxruntime-gpu finds it: after `onnxruntime.preload_dlls()` the library is loaded by soname,
    else searched in the nvidia-* wheels (nvidia/cu13/lib, nvidia/cuda_runtime/lib) and the system paths.
    """

    H2D, D2H = 1, 2

    def __init__(self):
        self.lib = self._load()
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        for fn in ("cudaStreamCreateWithFlags", "cudaHostAlloc", "cudaMemcpyAsync", "cudaEventCreateWithFlags",
                   "cudaEventRecord", "cudaEventSynchronize", "cudaEventElapsedTime", "cudaStreamSynchronize",
                   "cudaFreeHost", "cudaStreamDestroy", "cudaEventDestroy", "cudaSetDevice", "cudaRuntimeGetVersion"):
            getattr(self.lib, fn).restype = ctypes.c_int
        self.lib.cudaMemcpyAsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                             ctypes.c_void_p]
        self.lib.cudaEventRecord.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.lib.cudaEventSynchronize.argtypes = [ctypes.c_void_p]
        self.lib.cudaEventElapsedTime.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_void_p]
        self.lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
        self.lib.cudaStreamDestroy.argtypes = [ctypes.c_void_p]
        self.lib.cudaEventDestroy.argtypes = [ctypes.c_void_p]
        self.lib.cudaFreeHost.argtypes = [ctypes.c_void_p]
        self.lib.cudaHostAlloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint]
        self.lib.cudaStreamCreateWithFlags.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]
        self.lib.cudaEventCreateWithFlags.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]
        self.check(self.lib.cudaSetDevice(0), "cudaSetDevice")
        v = ctypes.c_int()
        self.check(self.lib.cudaRuntimeGetVersion(ctypes.byref(v)), "cudaRuntimeGetVersion")
        self.version = v.value

    @staticmethod
    def _load():
        names = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
        for name in names:  # already loaded by onnxruntime.preload_dlls: dlopen finds it by soname
            with contextlib.suppress(OSError):
                return ctypes.CDLL(name)
        candidates = []
        import site  # installed packages only: never a folder the user happens to run from (untrusted)

        for base in [*site.getsitepackages(), site.getusersitepackages()]:
            candidates += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", "libcudart.so*")), reverse=True)
        candidates += sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*"), reverse=True)
        found = ctypes.util.find_library("cudart")
        if found:
            candidates.append(found)
        for path in candidates:
            with contextlib.suppress(OSError):
                return ctypes.CDLL(path)
        raise FuserError("--pipelined: libcudart (the CUDA runtime) was not found; it comes with the "
                         "nvidia-cuda-runtime wheel that onnxruntime-gpu uses, or a CUDA toolkit")

    def check(self, code: int, what: str) -> None:
        if code != 0:
            err = self.lib.cudaGetErrorString(code)
            raise FuserError(f"{what} failed: CUDA error {code} ({err.decode() if err else '?'})")

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreateWithFlags(ctypes.byref(s), 1), "cudaStreamCreateWithFlags")  # non-blocking
        return s.value

    def event(self, timing: bool = True) -> int:
        e = ctypes.c_void_p()
        self.check(self.lib.cudaEventCreateWithFlags(ctypes.byref(e), 0 if timing else 2), "cudaEventCreate")
        return e.value

    def pinned(self, nbytes: int) -> int:
        p = ctypes.c_void_p()
        self.check(self.lib.cudaHostAlloc(ctypes.byref(p), max(nbytes, 1), 0), "cudaHostAlloc")
        return p.value

    def copy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        if nbytes:
            self.check(self.lib.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")

    def record(self, event: int, stream: int) -> None:
        self.check(self.lib.cudaEventRecord(event, stream), "cudaEventRecord")

    def wait(self, event: int) -> None:
        self.check(self.lib.cudaEventSynchronize(event), "cudaEventSynchronize")

    def elapsed_ms(self, start: int, end: int) -> float:
        ms = ctypes.c_float()
        self.check(self.lib.cudaEventElapsedTime(ctypes.byref(ms), start, end), "cudaEventElapsedTime")
        return float(ms.value)

    def sync(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


def _pinned_array(rt: CudaRuntime, shape, dtype, keep: list) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    ptr = rt.pinned(nbytes)
    keep.append(ptr)
    return _host_view(ptr, shape, dtype)


def _host_view(ptr: int, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    buf = (ctypes.c_byte * max(count * dtype.itemsize, 1)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


class CudartCopies:
    """Pipeline streams, pinned buffers and copies from libcudart: cudaStreamCreateWithFlags(non-blocking),
    cudaHostAlloc, cudaMemcpyAsync on the lane's stream."""

    name = "cudart"

    def __init__(self, ort, rt: CudaRuntime):
        self.rt, self._pins = rt, []

    def stream(self):
        handle = self.rt.stream()
        return handle, handle

    def pinned(self, shape, dtype):
        arr = _pinned_array(self.rt, shape, dtype, self._pins)
        return arr, arr

    def upload(self, pinned, device_value, stream) -> None:
        self.rt.copy_async(device_value.data_ptr(), pinned.ctypes.data, pinned.nbytes, self.rt.H2D, stream)

    def download(self, device_value, pinned, stream) -> None:
        self.rt.copy_async(pinned.ctypes.data, device_value.data_ptr(), pinned.nbytes, self.rt.D2H, stream)

    def close(self) -> None:
        for ptr in self._pins:
            self.rt.lib.cudaFreeHost(ptr)
        self._pins.clear()


class OrtCopies:
    """The same from onnxruntime's own API (1.23+): the CUDA EP library registered as a plugin EP gives an
    OrtEpDevice; `create_sync_stream()` makes the lane's stream, `memory_info(HOST_ACCESSIBLE)` pinned OrtValues,
    `onnxruntime.copy_tensors(src, dst, stream)` the asynchronous copies. Waiting and timing still use CUDA events
    (libcudart): onnxruntime's Python API has no stream synchronization."""

    name = "onnxruntime"

    def __init__(self, ort, rt: CudaRuntime):
        self.ort, self._keep = ort, []
        devices = [d for d in ort.get_ep_devices() if d.ep_name == "CUDAExecutionProvider"]
        if not devices:
            lib = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
            try:
                ort.register_execution_provider_library("CUDA", lib)
            except Exception as exc:  # noqa: BLE001
                raise FuserError(f"--pipeline-copies onnxruntime: cannot register the CUDA EP library: {exc}") from None
            devices = [d for d in ort.get_ep_devices() if d.ep_name == "CUDAExecutionProvider"]
        if not devices:
            raise FuserError("--pipeline-copies onnxruntime: onnxruntime lists no CUDA EP device")
        self.device = devices[0]
        self.memory = self.device.memory_info(ort.OrtDeviceMemoryType.HOST_ACCESSIBLE)

    def stream(self):
        s = self.device.create_sync_stream()
        self._keep.append(s)
        return s.get_handle(), s

    def pinned(self, shape, dtype):
        value = self.ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(dtype).type,
                                                                memory_info=self.memory)
        self._keep.append(value)
        return _host_view(value.data_ptr(), shape, dtype), value

    def upload(self, pinned, device_value, stream) -> None:
        self.ort.copy_tensors([pinned], [device_value], stream)

    def download(self, device_value, pinned, stream) -> None:
        self.ort.copy_tensors([device_value], [pinned], stream)

    def close(self) -> None:
        self._keep.clear()


COPY_BACKENDS = {"cudart": CudartCopies, "onnxruntime": OrtCopies}


@dataclass
class _Lane:
    """One pipeline lane: a session computing on its own stream, pinned and device buffers, two events."""

    bound: _Bound
    stream: int          # cudaStream_t, given to the session as user_compute_stream
    stream_obj: object   # what the copy backend wants (the handle, or an OrtSyncStream)
    pin_in: dict         # name -> (numpy view of pinned memory, backend handle)
    pin_out: dict
    start: int
    end: int
    busy: bool = False
    set_index: int = -1
    latencies: list = field(default_factory=list)


def _pipeline(ort, rt: CudaRuntime, model_path: str, cfg: _SessionConfig, feed_sets: list[dict], warmup: int,
              iters: int, batch: int, references: list[dict], copies: str = "cudart") -> dict:
    """The multi-stream pipeline, measured three ways on the same two lanes.

    A lane is an InferenceSession whose CUDA provider computes on the lane's own stream (user_compute_stream),
    with pinned host buffers for its inputs and outputs and two CUDA events. Per batch i on lane L:
      host: wait for L's previous batch (event), take its outputs out of pinned memory (np.copyto: the
            "download" side of the caller), write batch i's inputs into L's pinned buffers (np.copyto from
            pageable arrays: the "upload" side);
      L's stream: event start, async copy host -> device into the bound inputs, run_with_iobinding
            (onnxruntime enqueues the graph on L's stream; RunOptions disable_synchronize_execution_providers=1
            so the call returns once enqueued), async copy device -> host from the bound outputs, event end.
    one_lane: one lane, so nothing overlaps (the baseline). two_lanes: lanes alternate from one host thread;
    batch i+1's upload and batch i-1's download run on the copy engines while batch i computes.
    two_lanes_two_threads: the same with one host thread per lane (onnxruntime releases the GIL in run),
    so onnxruntime's own CPU time to launch one batch overlaps the other lane's launch too.
    """
    backend = COPY_BACKENDS[copies](ort, rt)
    device = "cuda" if cfg.provider == "cuda" else "cpu"
    lanes = []
    for _ in range(2):
        stream, stream_obj = backend.stream()
        sess = _make_session(ort, model_path, _SessionConfig(**{**cfg.__dict__, "stream": stream}))
        bound = _Bound(ort, sess, feed_sets[0], device)
        pin_in = {k: backend.pinned(v.shape, v.dtype) for k, v in feed_sets[0].items()}
        pin_out = {}
        for name, value in bound.outputs.items():
            host = value.numpy()
            pin_out[name] = backend.pinned(host.shape, host.dtype)
        lanes.append(_Lane(bound, stream, stream_obj, pin_in, pin_out, rt.event(), rt.event()))
    nosync = ort.RunOptions()
    nosync.add_run_config_entry(_NOSYNC, "1")
    out_names = list(lanes[0].pin_out)

    def measure(active: list[_Lane], threads: int) -> dict:
        results: dict = {}
        enqueue_ms: list[float] = []  # host time of run_with_iobinding: small when it returns before the GPU ends
        for lane in active:
            lane.latencies = []
        n_warm = max(warmup, 2 * len(active))

        def issue(lane: _Lane, k: int, timed: bool) -> None:
            for name, arr in feed_sets[k].items():
                np.copyto(lane.pin_in[name][0], arr)
            rt.record(lane.start, lane.stream)
            for name, value in lane.bound.inputs.items():
                backend.upload(lane.pin_in[name][1], value, lane.stream_obj)
            t0 = time.perf_counter()
            lane.bound.run(nosync)
            if timed:
                enqueue_ms.append((time.perf_counter() - t0) * 1000.0)
            for name, value in lane.bound.outputs.items():
                backend.download(value, lane.pin_out[name][1], lane.stream_obj)
            rt.record(lane.end, lane.stream)
            lane.busy, lane.set_index = True, k

        def retire(lane: _Lane, timed: bool) -> None:
            rt.wait(lane.end)
            if timed:
                lane.latencies.append(rt.elapsed_ms(lane.start, lane.end))
            slot = results.setdefault((id(lane), lane.set_index), {n: None for n in out_names})
            for name in out_names:
                slot[name] = lane.pin_out[name][0].copy()
            lane.busy = False

        def drive(lane: _Lane, batches, timed: bool) -> None:
            for k in batches:
                if lane.busy:
                    retire(lane, timed)
                issue(lane, k, timed)
            if lane.busy:
                retire(lane, timed)

        def loop(n: int, timed: bool) -> float:  # one host thread, lanes in turn
            t0 = time.perf_counter()
            for i in range(n):
                lane = active[i % len(active)]
                if lane.busy:
                    retire(lane, timed)
                issue(lane, i % len(feed_sets), timed)
            for lane in active:
                if lane.busy:
                    retire(lane, timed)
            return time.perf_counter() - t0

        def threaded() -> float:
            """One host thread per lane. onnxruntime's CUDA provider keeps its CUDA graphs per host thread, so a
            new thread's first run captures again; CUDA forbids other threads' synchronizing calls during a
            capture, so the warm-up runs one thread at a time, and the timed loop starts once all are warm."""
            import threading

            errors: list[BaseException] = []
            turn = threading.Lock()
            start = threading.Barrier(len(active) + 1)

            def worker(j: int) -> None:
                lane = active[j]
                try:
                    with turn:
                        drive(lane, [i % len(feed_sets) for i in range(j, n_warm, len(active))], False)
                    start.wait()
                    drive(lane, [i % len(feed_sets) for i in range(j, iters, len(active))], True)
                except threading.BrokenBarrierError:
                    pass
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    errors.append(exc)
                    start.abort()

            workers = [threading.Thread(target=worker, args=(j,), daemon=True) for j in range(len(active))]
            for w in workers:
                w.start()
            try:
                start.wait()
            except threading.BrokenBarrierError:
                pass
            t0 = time.perf_counter()
            for w in workers:
                w.join()
            wall = time.perf_counter() - t0
            if errors:
                raise errors[0]
            return wall

        if threads <= 1:
            loop(n_warm, False)  # CUDA graphs: captured on each lane's first run in this thread
            wall = loop(iters, True)
        else:
            wall = threaded()
        mismatch = 0.0
        for (_, k), outs in results.items():  # every (lane, input set) pair: the outputs of a plain run?
            for name, value in references[k].items() if k < len(references) else ():
                mismatch = max(mismatch, _max_rel_diff(outs[name], value))
        lat = [x for lane in active for x in lane.latencies]
        stats = _stats(lat, batch)
        return {"lanes": len(active), "host_threads": max(1, threads), "wall_s": wall, "batches": iters,
                "throughput_per_s": batch * iters / wall if wall > 0 else None,
                "batch_ms": wall * 1000.0 / iters,
                "in_flight_median_ms": stats["median_ms"], "in_flight_p90_ms": stats["p90_ms"],
                "enqueue_median_ms": statistics.median(enqueue_ms) if enqueue_ms else None,
                "outputs_max_rel_diff": mismatch, "outputs_checked": len(results)}

    out: dict = {}
    try:
        for key, active, threads in (("one_lane", lanes[:1], 1), ("two_lanes", lanes, 1),
                                     ("two_lanes_two_threads", lanes, 2)):
            try:
                out[key] = measure(active, threads)
            except Exception as exc:  # noqa: BLE001 - one loop failing keeps the others' numbers
                out[key] = {"lanes": len(active), "host_threads": threads,
                            "error": f"{type(exc).__name__}: {_first_line(exc)}"}
                for lane in active:
                    lane.busy = False
                    with contextlib.suppress(FuserError):
                        rt.sync(lane.stream)
        if all("error" in v for v in out.values()):
            raise FuserError(f"--pipelined: every pipeline loop failed; first: {out['one_lane']['error']}")
    finally:
        for lane in lanes:
            with contextlib.suppress(FuserError):
                rt.sync(lane.stream)
        backend.close()
        for lane in lanes:
            rt.lib.cudaEventDestroy(lane.start)
            rt.lib.cudaEventDestroy(lane.end)
    out["copies"] = backend.name
    return out


# ---------------------------------------------------------------------------------------------- entry point

def benchmark(model_path, provider: str = "cuda", ort_opt: str = "off", cuda_graph: bool = False,
              pipelined: bool = False, batch: int = 1, warmup: int = 20, iters: int = 200,
              input_shapes: dict | None = None, *, seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE,
              input_sets: int = 4, e2e: bool = True, threads: int = 0, pipeline_copies: str = "cudart") -> dict:
    """Time `model_path` with onnxruntime; returns a JSON-ready dict (see the module docstring).

    Keys: model, provider, ort_opt, cuda_graph, pipelined, batch, input_shapes, warmup, iters, median_ms,
    p90_ms, throughput_per_s, latency (all stats), e2e (copies included), pipeline (when pipelined: one_lane,
    two_lanes, two_lanes_two_threads, speedups, copies), placement (nodes per provider at partitioning),
    outputs_max_rel_diff (the timed runs' outputs against the first run's), onnxruntime version.
    `pipeline_copies`: "cudart" or "onnxruntime" (who makes the pipeline's streams, pinned memory and copies).
    """
    model_path = os.fspath(model_path)
    if provider not in PROVIDERS:
        raise UsageError(f"--provider {provider!r}: expected one of {', '.join(PROVIDERS)}")
    if ort_opt not in ORT_OPT_LEVELS:
        raise UsageError(f"--ort-opt {ort_opt!r}: expected one of {', '.join(ORT_OPT_LEVELS)}")
    if provider != "cuda" and (cuda_graph or pipelined):
        raise UsageError(f"--{'cuda-graph' if cuda_graph else 'pipelined'} needs --provider cuda")
    if warmup < 0 or iters < 1:
        raise UsageError("--warmup must be >= 0 and --iters >= 1")
    if pipeline_copies not in COPY_BACKENDS:
        raise UsageError(f"--pipeline-copies {pipeline_copies!r}: expected one of {', '.join(COPY_BACKENDS)}")
    if not os.path.isfile(model_path):
        raise UsageError(f"no such file: {model_path}")
    ort = _ort()
    if provider == "cuda":
        log = _check_cuda_available(ort)
    else:
        log = ""

    # the inputs, read from a plain CPU session (onnxruntime parses the model; no onnx.load of the weights)
    probe = _make_session(ort, model_path, _SessionConfig("cpu", "off", False, {}))
    specs = input_specs_of(probe)
    shapes = bench_shapes(specs, input_shapes, batch)
    del probe
    symbols = _symbol_values(specs, shapes)
    feed_sets = [make_feeds(specs, shapes, seed + k, vocab_size) for k in range(max(1, input_sets))]
    cfg = _SessionConfig(provider, ort_opt, cuda_graph, symbols, threads=threads)

    try:
        if provider == "cuda" and not os.environ.get("FUSER_DEBUG"):
            ort.set_default_logger_severity(4)  # a provider that cannot load logs errors; we explain it below
        sess = _make_session(ort, model_path, cfg)
    except FuserError as exc:
        if provider == "cuda" and "could not create the CUDA" in str(exc):
            raise _cuda_unusable(log) from None
        raise
    finally:
        if provider == "cuda" and not os.environ.get("FUSER_DEBUG"):
            ort.set_default_logger_severity(2)
    device = "cuda" if provider == "cuda" else "cpu"
    result = {
        "model": model_path, "provider": provider, "ort_opt": ort_opt, "cuda_graph": bool(cuda_graph),
        "pipelined": bool(pipelined), "batch": batch, "input_shapes": {k: list(v) for k, v in shapes.items()},
        "warmup": warmup, "iters": iters, "onnxruntime": ort.__version__,
        "session_providers": sess.get_providers(), "placement": placement(sess),
    }
    bound = _Bound(ort, sess, feed_sets[0], device)
    first = bound.host_outputs()
    samples = _time_loop(bound.run, warmup, iters)
    result["latency"] = _stats(samples, batch)
    result.update({k: result["latency"][k] for k in ("median_ms", "p90_ms", "throughput_per_s")})
    result["outputs_max_rel_diff"] = max((_max_rel_diff(v, first[k]) for k, v in bound.host_outputs().items()),
                                         default=0.0)
    references = [first]
    if e2e or pipelined:
        # copies included: update_inplace (host -> device into the bound buffer) and .numpy() (device -> host)
        hosts = feed_sets
        counter = [0]

        def with_copies():
            feeds = hosts[counter[0] % len(hosts)]
            counter[0] += 1
            for k, v in bound.inputs.items():
                v.update_inplace(feeds[k])
            bound.run()
            for v in bound.outputs.values():
                v.numpy()

        result["e2e"] = _stats(_time_loop(with_copies, min(warmup, 10), iters), batch)
        if pipelined:
            references = []
            for feeds in feed_sets:  # reference outputs for every input set, from this session
                for k, v in bound.inputs.items():
                    v.update_inplace(feeds[k])
                bound.run()
                references.append(bound.host_outputs())
    bound = sess = None  # free the device memory before the pipeline makes its own sessions
    if pipelined:
        rt = CudaRuntime()
        p = _pipeline(ort, rt, model_path, cfg, feed_sets, warmup, iters, batch, references, pipeline_copies)
        one, two, two_t = p["one_lane"], p["two_lanes"], p["two_lanes_two_threads"]
        p["how"] = ("2 sessions, each computing on its own CUDA stream (user_compute_stream); pinned host buffers "
                    f"and async copies on that stream ({p['copies']}); run_with_iobinding with "
                    "disable_synchronize_execution_providers=1; CUDA events to wait and time")
        p["cuda_runtime_version"] = rt.version
        p["speedup"] = _ratio(two.get("throughput_per_s"), one.get("throughput_per_s"))
        p["speedup_two_threads"] = _ratio(two_t.get("throughput_per_s"), one.get("throughput_per_s"))
        result["pipeline"] = p
    return result


# ---------------------------------------------------------------------------------------------- output

COLUMNS = ("model", "provider", "ort_opt", "cuda_graph", "pipelined", "batch", "median_ms", "p90_ms",
           "throughput_per_s", "e2e_median_ms")


def best_pipeline(p: dict) -> dict:
    """The faster of the two two-lane loops (one host thread, or one per lane)."""
    return max((p["two_lanes"], p["two_lanes_two_threads"], p["one_lane"]),
               key=lambda x: x.get("throughput_per_s") or 0.0)


def row(result: dict) -> dict:
    """One flat table row of a result (or of an error record {"error": ...})."""
    r = {k: result.get(k) for k in COLUMNS}
    r["model"] = os.path.basename(str(result.get("model", "")))
    r["e2e_median_ms"] = (result.get("e2e") or {}).get("median_ms")
    if result.get("pipeline"):
        p = result["pipeline"]
        best = best_pipeline(p)
        r["pipelined"] = (f"{best['lanes']}L{best['host_threads']}T"
                          + ("/ort" if p.get("copies") == "onnxruntime" else ""))
        r["throughput_per_s"] = best.get("throughput_per_s")
        r["median_ms"] = best.get("batch_ms")
        r["p90_ms"] = None
        r["e2e_median_ms"] = p["one_lane"].get("batch_ms")
    if result.get("error"):
        r["error"] = result["error"]
    return r


def format_table(results: list[dict]) -> str:
    """A fixed-width table. Pipelined rows: 'pipe' names the fastest loop, 2L1T = two lanes from one host thread,
    2L2T = one host thread per lane ('/ort' when onnxruntime made the streams, pinned buffers and copies),
    'median ms' is wall time per batch of that loop, 'thru/s' its throughput, 'e2e ms' the one-lane loop's
    wall time per batch (the same work with nothing overlapped)."""
    head = ["model", "provider", "ort-opt", "graph", "pipe", "batch", "median ms", "p90 ms", "thru/s", "e2e ms"]
    rows = []
    for res in results:
        r = row(res)

        def num(v, fmt="{:.3f}"):
            return "-" if v is None else fmt.format(v)
        pipe = r["pipelined"] if isinstance(r["pipelined"], str) else ("on" if r["pipelined"] else "off")
        cells = [r["model"], str(r["provider"]), str(r["ort_opt"]), "on" if r["cuda_graph"] else "off",
                 pipe, str(r["batch"])]
        if r.get("error"):
            cells += ["error: " + r["error"][:70], "", "", ""]
        else:
            cells += [num(r["median_ms"]), num(r["p90_ms"]), num(r["throughput_per_s"], "{:.1f}"),
                      num(r["e2e_median_ms"])]
        rows.append(cells)
    widths = [max(len(h), *(len(c) for c in col)) if rows else len(h)
              for h, col in zip(head, zip(*rows) if rows else [[]] * len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in rows]
    return "\n".join(lines)


def pipeline_summary(result: dict) -> str:
    """One line: the three pipeline loops' throughput and whether every output matched a plain run."""
    p = result["pipeline"]
    parts = []
    for key, label in (("one_lane", "1 lane"), ("two_lanes", "2 lanes"), ("two_lanes_two_threads", "2 lanes/2 threads")):
        x = p[key]
        if "error" in x:
            parts.append(f"{label} failed: {x['error'][:120]}")
            continue
        parts.append(f"{label} {x['throughput_per_s']:.1f}/s ({x['batch_ms']:.3f} ms/batch, run() returns after "
                     f"{x['enqueue_median_ms']:.3f} ms)")
    diff = max((p[k].get("outputs_max_rel_diff", 0.0) for k in ("one_lane", "two_lanes", "two_lanes_two_threads")),
               default=0.0)
    return (f"pipelined {os.path.basename(str(result['model']))} batch {result['batch']} graph "
            f"{'on' if result['cuda_graph'] else 'off'} [{p['copies']}]: " + "; ".join(parts)
            + f"; outputs vs plain run: max rel diff {diff:.2g}")


def main(argv=None) -> int:
    """`python -m fuser.bench MODEL [options]`: the runner without click (for machines without the pipeline)."""
    import argparse
    import json

    from .inputs import parse_shape

    p = argparse.ArgumentParser(prog="python -m fuser.bench", description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--provider", choices=PROVIDERS, default="cuda")
    p.add_argument("--ort-opt", choices=ORT_OPT_LEVELS, default="off")
    p.add_argument("--cuda-graph", action="store_true")
    p.add_argument("--pipelined", action="store_true")
    p.add_argument("--pipeline-copies", choices=tuple(COPY_BACKENDS), default="cudart")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--input-shape", action="append", default=[])
    p.add_argument("--json", dest="json_path")
    a = p.parse_args(argv)
    try:
        from .outputs import OutputPlan, write_atomic

        plan = OutputPlan()
        plan.read("the model", a.model)
        plan.write("--json", a.json_path)
        plan.check()
        shapes = dict(parse_shape(s) for s in a.input_shape)
        res = benchmark(a.model, a.provider, a.ort_opt, a.cuda_graph, a.pipelined, a.batch, a.warmup, a.iters,
                        shapes, pipeline_copies=a.pipeline_copies)
    except FuserError as exc:
        print(f"fuser: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(format_table([res]))
    if res.get("pipeline"):
        print(pipeline_summary(res))
    if a.json_path:
        try:
            write_atomic(a.json_path, json.dumps(res, indent=2).encode())
        except FuserError as exc:
            print(f"fuser: error: {exc}", file=sys.stderr)
            return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
