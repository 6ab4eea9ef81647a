"""`fuser bench`: time a model with onnxruntime, on the CUDA or the CPU execution provider.

    result = benchmark("model.onnx", provider="cuda", ort_opt="off", cuda_graph=True, batch=8)
    print(format_table([result]))

    session.py       onnxruntime session configuration, generated inputs, placement, IO binding
    stats.py         timed loops, latency statistics, output differences
    cuda_runtime.py  libcudart through ctypes (streams, events, pinned memory, async copies)
    pipeline.py      pipelined mode: two lanes on their own CUDA streams, copies overlapped with compute
    measure.py       benchmark(): one model, provider, optimization level and batch, measured
    table.py         the results as a table and a one-line pipeline summary

This package imports only onnxruntime, numpy, onnx and fuser.errors / fuser.validation.inputs (never the fuser pipeline), so
`benchmarks/gpu_bench.py` can load it on the GPU machine without the rest of fuser's dependencies.
"""

from .cuda_runtime import CudaRuntime
from .measure import benchmark
from .pipeline import COPY_BACKENDS
from .session import (ORT_OPT_LEVELS, PROVIDERS, bench_shapes, check_cuda_available, input_specs_of, make_feeds,
                      placement)
from .table import best_pipeline, format_table, pipeline_summary, row

__all__ = ["COPY_BACKENDS", "ORT_OPT_LEVELS", "PROVIDERS", "CudaRuntime", "bench_shapes", "benchmark",
           "best_pipeline", "check_cuda_available", "format_table", "input_specs_of", "make_feeds",
           "pipeline_summary", "placement", "row"]
