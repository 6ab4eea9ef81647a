"""The one place that tells TensorRT and TensorRT-RTX apart.

Both ship TensorRT's Python API (Builder, OnnxParser, IBuilderConfig, optimization profiles, timing cache, engine
inspector); build.py is written once against it and asks this module wherever the two differ. `tensorrt` (10 or
later: explicit batch by default, strongly typed networks) is preferred when importable; `FUSER_TRT_BACKEND=tensorrt|
tensorrt_rtx` forces one. Only TensorRT-RTX could be installed and tested here (real TensorRT's wheels download from a
host these machines cannot reach), so the `tensorrt` branches follow its documented API, untested.

What TensorRT-RTX 1.7.1 does differently, measured on a CPU-only machine (no CUDA driver):

- Networks are always strongly typed: precision comes from the ONNX tensor types. There are no FP16/BF16 builder
  flags (TF32 exists), so `--fp16/--bf16` are ignored with a warning; convert the graph to fp16 instead.
- It builds ahead of time without a GPU. With no target compute capability set, an engine is portable to 8.0, 8.6,
  8.9 and 12.x, so nothing needs setting on a CPU-only machine; `--compute-capability` narrows that list, and 7.5
  (Turing) must be asked for explicitly. The `current` target needs a GPU. H100/H200 (9.0) are not a target at all.
- Without a CUDA driver, REFIT fails inside the compiler ("CHECK(status == CUDA_SUCCESS) failed"), a timing cache can
  be written but not read back ("Failed to deserialize timing cache"), and engines cannot be deserialized, so the
  engine inspector is out of reach; the builder's verbose "Engine Layer Information" log lists the layers instead.
- The timing cache has no effect on its engines (release notes 1.1; every call is deprecated since 1.2 and raises a
  DeprecationWarning, silenced here). fuser still keys, loads and writes it, so one command works for both backends.
- VERSION_COMPATIBLE fails: it needs libnvinfer_lean, which TensorRT-RTX does not ship. The hardware-compatibility
  level is "unsupported in TensorRT-RTX" (logged and ignored): its engines are portable by default.
- The logger is process-wide: a second Builder given another ILogger is told "the current new logger is ignored".
- Its ONNX parser imports com.microsoft `Gelu` but rejects `FusedConv`, `SkipLayerNormalization`, `FastGelu` and
  `BiasGelu` ("Plugin not found").
- A LayerNorm spelled `ReduceMean -> Sub -> Pow (or Mul) -> ReduceMean -> Add -> Sqrt -> Div` in fp16 makes the builder
  warn "Detected layernorm nodes in FP16." and "Running layernorm after self-attention with FP16 Reduce or Pow may
  cause overflow..." whether or not attention precedes it and with or without the affine Mul/Add; an opset-17
  `LayerNormalization` does not (17 network layers become 5).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import os
import warnings
from dataclasses import dataclass
from types import ModuleType

from fuser.errors import FuserError, UsageError

BACKENDS = ("tensorrt", "tensorrt_rtx")
ENV_VAR = "FUSER_TRT_BACKEND"
NOT_INSTALLED = "no TensorRT backend: pip install 'fuser[rtx]' or tensorrt"

# TensorRT-RTX target names: "8.6" -> ComputeCapability.SM86.
RTX_TARGETS = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121",
               "current": "CURRENT"}


@dataclass(frozen=True)
class Backend:
    """An imported TensorRT flavour: `trt` is the module, used exactly like `import tensorrt as trt`."""

    name: str
    trt: ModuleType

    @property
    def version(self) -> str:
        return self.trt.__version__

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def label(self) -> str:
        return f"{'TensorRT-RTX' if self.is_rtx else 'TensorRT'} {self.version}"

    def create_network(self, builder, weakly_typed: bool):
        """Strongly typed (precision from the graph) unless fp16/bf16 builder flags must choose precisions.

        TensorRT-RTX networks are strongly typed whatever the flags say.
        """
        if self.is_rtx or weakly_typed:
            return builder.create_network(0)
        return builder.create_network(1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))

    def precision_flags(self, fp16: bool, bf16: bool) -> list:
        """Builder flags for --fp16/--bf16; none on TensorRT-RTX, which has no such flags."""
        wanted = [name for name, on in (("FP16", fp16), ("BF16", bf16)) if on]
        return [] if self.is_rtx else [getattr(self.trt.BuilderFlag, name) for name in wanted]

    def ignored_options(self, options) -> list[str]:
        """Say which requested options this backend ignores, and raise UsageError for one it cannot honour."""
        if self.is_rtx and options.version_compatible:
            raise UsageError("--version-compatible is not available with TensorRT-RTX: it needs TensorRT's lean "
                             "runtime (libnvinfer_lean), which TensorRT-RTX does not ship")
        ignored = []
        if self.is_rtx and (options.fp16 or options.bf16):
            ignored.append("--fp16/--bf16 are ignored by TensorRT-RTX: its networks are strongly typed, so precision "
                           "comes from the ONNX tensor types; convert the graph to fp16 instead")
        if self.is_rtx and options.hardware_compat:
            ignored.append("--hardware-compat is ignored by TensorRT-RTX: its engines are portable across its "
                           "supported GPUs by default; use --compute-capability to choose targets")
        if not self.is_rtx and options.compute_capabilities:
            ignored.append("--compute-capability is ignored by TensorRT: it builds for the GPU it runs on; "
                           "use --hardware-compat for portable engines")
        return ignored

    def set_hardware_compat(self, config, level: str) -> None:
        if not self.is_rtx:
            config.hardware_compatibility_level = getattr(self.trt.HardwareCompatibilityLevel, level.upper())

    def set_targets(self, config, compute_capabilities: tuple[str, ...]) -> None:
        """TensorRT-RTX only: the GPUs the engine must run on (default: all supported from 8.0 on)."""
        if not self.is_rtx or not compute_capabilities:
            return
        config.num_compute_capabilities = len(compute_capabilities)
        for index, target in enumerate(compute_capabilities):
            config.set_compute_capability(rtx_target(self.trt, target), index)

    def targets(self, compute_capabilities: tuple[str, ...]) -> list[str]:
        """What the engine is built for, as recorded in the timing-cache key."""
        if not self.is_rtx:
            return []
        return list(compute_capabilities) or ["portable"]

    @contextlib.contextmanager
    def quiet(self):
        """Silence TensorRT-RTX's DeprecationWarning on every timing-cache call (the module docstring says why)."""
        with warnings.catch_warnings():
            if self.is_rtx:
                warnings.simplefilter("ignore", DeprecationWarning)
            yield


def rtx_target(trt: ModuleType, text: str):
    """`8.6` -> ComputeCapability.SM86; UsageError naming the supported targets otherwise."""
    name = RTX_TARGETS.get(text.strip().lower())
    if name is None or not hasattr(trt.ComputeCapability, name):
        supported = ", ".join(t for t, n in RTX_TARGETS.items() if hasattr(trt.ComputeCapability, n))
        raise UsageError(f"--compute-capability {text}: TensorRT-RTX targets {supported}")
    return getattr(trt.ComputeCapability, name)


def load_backend(name: str | None = None) -> Backend:
    """The backend named, else the one FUSER_TRT_BACKEND names, else `tensorrt` if importable, else `tensorrt_rtx`."""
    name = name or os.environ.get(ENV_VAR) or None
    if name is not None and name not in BACKENDS:
        raise UsageError(f"{ENV_VAR}={name}: expected one of {', '.join(BACKENDS)}")
    for candidate in [name] if name else BACKENDS:
        try:
            return Backend(candidate, importlib.import_module(candidate))
        except ImportError:
            continue
    raise FuserError(f"{NOT_INSTALLED} ({name} was asked for)" if name else NOT_INSTALLED)


@functools.cache
def visible_gpu() -> str | None:
    """Compute capability of CUDA device 0 ("8.9"), or None without a driver or a device.

    Asked of the CUDA driver directly, so it needs no CUDA Python package.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) or cuda.cuDeviceGet(ctypes.byref(device), 0):
        return None
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device) or \
            cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device):
        return None
    return f"{major.value}.{minor.value}"
