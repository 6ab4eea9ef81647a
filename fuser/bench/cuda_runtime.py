"""The CUDA runtime (libcudart) through ctypes, for the pipelined mode: no CUDA Python package is needed, the
library is the one onnxruntime-gpu itself loads."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import os

from ..errors import FuserError


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
