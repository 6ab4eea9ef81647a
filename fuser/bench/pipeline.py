"""Pipelined mode: two lanes, each an InferenceSession computing on its own CUDA stream, so one batch computes
while the next uploads and the previous downloads.

Each lane's CUDA provider computes on the lane's stream (`user_compute_stream`), with pinned host buffers and
asynchronous copies on that stream; `run_with_iobinding` with `disable_synchronize_execution_providers=1`
returns once the work is enqueued. Streams, pinned memory and copies come from libcudart through ctypes
(`copies="cudart"`, cuda_runtime.py) or from onnxruntime's own API (`copies="onnxruntime"`:
OrtEpDevice.create_sync_stream, HOST_ACCESSIBLE OrtValues, onnxruntime.copy_tensors); CUDA events (libcudart)
wait and time in both. Measured as one lane (nothing overlaps), two lanes from one host thread, and one host
thread per lane; every output is checked against a plain run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import FuserError, first_line
from .cuda_runtime import CudaRuntime
from .session import Bound, SessionConfig, make_session
from .stats import latency_stats, max_rel_diff

NOSYNC = "disable_synchronize_execution_providers"  # RunOptions config key: Run returns once work is enqueued


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

    bound: Bound
    stream: int          # cudaStream_t, given to the session as user_compute_stream
    stream_obj: object   # what the copy backend wants (the handle, or an OrtSyncStream)
    pin_in: dict         # name -> (numpy view of pinned memory, backend handle)
    pin_out: dict
    start: int
    end: int
    busy: bool = False
    set_index: int = -1
    latencies: list = field(default_factory=list)


def run_pipeline(ort, rt: CudaRuntime, model_path: str, cfg: SessionConfig, feed_sets: list[dict], warmup: int,
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
        sess = make_session(ort, model_path, SessionConfig(**{**cfg.__dict__, "stream": stream}))
        bound = Bound(ort, sess, feed_sets[0], device)
        pin_in = {k: backend.pinned(v.shape, v.dtype) for k, v in feed_sets[0].items()}
        pin_out = {}
        for name, value in bound.outputs.items():
            host = value.numpy()
            pin_out[name] = backend.pinned(host.shape, host.dtype)
        lanes.append(_Lane(bound, stream, stream_obj, pin_in, pin_out, rt.event(), rt.event()))
    nosync = ort.RunOptions()
    nosync.add_run_config_entry(NOSYNC, "1")
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
                mismatch = max(mismatch, max_rel_diff(outs[name], value))
        lat = [x for lane in active for x in lane.latencies]
        stats = latency_stats(lat, batch)
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
                            "error": f"{type(exc).__name__}: {first_line(exc)}"}
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
