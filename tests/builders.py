"""Small helpers tests share: build a model from nodes, run it with onnxruntime (its optimizer OFF)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import fuser

NP_TO_ONNX = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


def make_model(nodes, inputs, outputs, initializers=(), opset=13, ir_version=8) -> onnx.ModelProto:
    """`inputs`/`outputs`: (name, elem_type, shape) triples; `initializers`: (name, array) pairs."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def const(name: str, value, dtype=np.float32) -> onnx.NodeProto:
    """A Constant node holding `value` (rank 0 for Python scalars)."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype=dtype)))


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # or ORT fuses for us
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 0, scale: float = 4.0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 2 for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = np.asarray(rng.standard_normal(shape) * scale).astype(dtype)
    return feeds


def optimize_and_compare(model: onnx.ModelProto, atol: float | None = None, **options):
    """Optimize, full-check the result, and assert outputs match the input model's (ORT optimizer off).

    Tolerance: 1e-5 of the output scale for fp32, 1e-2 for fp16.
    """
    optimized, report = fuser.optimize(model, **options)
    onnx.checker.check_model(optimized, full_check=True)
    feeds = random_feeds(model)
    expected, actual = run(model, feeds), run(optimized, feeds)
    for e, a in zip(expected, actual):
        tol = atol if atol is not None else (1e-2 if e.dtype == np.float16 else 1e-5)
        scale = max(1.0, float(np.abs(e.astype(np.float64)).max()))
        np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), atol=tol * scale, rtol=0)
    return optimized, report


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def assert_trt_builds(model: onnx.ModelProto, monkeypatch):
    """The model parses and builds with TensorRT-RTX (CPU-only build); dynamic dims get profiles 1..4."""
    import pytest

    pytest.importorskip("tensorrt_rtx")
    from fuser.trt import BuildOptions, build_engine
    from fuser.trt.backend import ENV_VAR
    from fuser.trt.profiles import ShapeRange

    monkeypatch.setenv(ENV_VAR, "tensorrt_rtx")
    profile = {}
    for vi in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim]
        if None in dims:
            profile[vi.name] = ShapeRange(*(tuple(v if v else n for v in dims) for n in (1, 2, 4)))
    result = build_engine(model, BuildOptions(opt_level=0, profiles=(profile,) if profile else ()))
    assert result.engine_size > 0
    return result
