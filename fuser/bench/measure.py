"""One benchmark: what `fuser bench` measures for one model, provider, optimization level and batch.

All through onnxruntime's own API:

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
    pipelined      two lanes on their own CUDA streams, copies overlapped with compute (pipeline.py).
"""

from __future__ import annotations

import os

from ..errors import FuserError, UsageError
from ..validation.inputs import DEFAULT_VOCAB_SIZE
from .cuda_runtime import CudaRuntime
from .pipeline import COPY_BACKENDS, run_pipeline
from .session import (ORT_OPT_LEVELS, PROVIDERS, Bound, SessionConfig, bench_shapes, check_cuda_available,
                      cuda_unusable, input_specs_of, load_ort, make_feeds, make_session, placement, symbol_values)
from .stats import latency_stats, max_rel_diff, ratio, time_loop


def benchmark(model_path, provider: str = "cuda", ort_opt: str = "off", cuda_graph: bool = False,
              pipelined: bool = False, batch: int = 1, warmup: int = 20, iters: int = 200,
              input_shapes: dict | None = None, *, seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE,
              input_sets: int = 4, e2e: bool = True, threads: int = 0, pipeline_copies: str = "cudart") -> dict:
    """Time `model_path` with onnxruntime; returns a JSON-ready dict (see this module's docstring).

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
    ort = load_ort()
    if provider == "cuda":
        log = check_cuda_available(ort)
    else:
        log = ""

    # the inputs, read from a plain CPU session (onnxruntime parses the model; no onnx.load of the weights)
    probe = make_session(ort, model_path, SessionConfig("cpu", "off", False, {}))
    specs = input_specs_of(probe)
    shapes = bench_shapes(specs, input_shapes, batch)
    del probe
    symbols = symbol_values(specs, shapes)
    feed_sets = [make_feeds(specs, shapes, seed + k, vocab_size) for k in range(max(1, input_sets))]
    cfg = SessionConfig(provider, ort_opt, cuda_graph, symbols, threads=threads)

    try:
        if provider == "cuda" and not os.environ.get("FUSER_DEBUG"):
            ort.set_default_logger_severity(4)  # a provider that cannot load logs errors; we explain it below
        sess = make_session(ort, model_path, cfg)
    except FuserError as exc:
        if provider == "cuda" and "could not create the CUDA" in str(exc):
            raise cuda_unusable(log) from None
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
    bound = Bound(ort, sess, feed_sets[0], device)
    first = bound.host_outputs()
    samples = time_loop(bound.run, warmup, iters)
    result["latency"] = latency_stats(samples, batch)
    result.update({k: result["latency"][k] for k in ("median_ms", "p90_ms", "throughput_per_s")})
    result["outputs_max_rel_diff"] = max((max_rel_diff(v, first[k]) for k, v in bound.host_outputs().items()),
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

        result["e2e"] = latency_stats(time_loop(with_copies, min(warmup, 10), iters), batch)
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
        p = run_pipeline(ort, rt, model_path, cfg, feed_sets, warmup, iters, batch, references, pipeline_copies)
        one, two, two_t = p["one_lane"], p["two_lanes"], p["two_lanes_two_threads"]
        p["how"] = ("2 sessions, each computing on its own CUDA stream (user_compute_stream); pinned host buffers "
                    f"and async copies on that stream ({p['copies']}); run_with_iobinding with "
                    "disable_synchronize_execution_providers=1; CUDA events to wait and time")
        p["cuda_runtime_version"] = rt.version
        p["speedup"] = ratio(two.get("throughput_per_s"), one.get("throughput_per_s"))
        p["speedup_two_threads"] = ratio(two_t.get("throughput_per_s"), one.get("throughput_per_s"))
        result["pipeline"] = p
    return result
