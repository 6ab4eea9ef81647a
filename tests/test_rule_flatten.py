"""Flatten(x, axis=1) -> Reshape(x, [0, K]) for the tensorrt target: fewer TensorRT layers, same values."""

import numpy as np
import pytest
from onnx import TensorProto as T, helper

from builders import assert_trt_builds, make_model, ops, optimize_and_compare

F = T.FLOAT


def flatten_model(shape, axis=1):
    out = ["N", "K"] if axis == 1 else ["M", "K"]
    return make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Flatten", ["r"], ["y"], axis=axis)],
                      [("x", F, shape)], [("y", F, out)])


@pytest.mark.parametrize("shape,target", [(["N", 8, 2, 2], [0, 32]), (["N", 8, "H", "W"], [0, -1])])
def test_batch_flatten_becomes_a_constant_reshape(shape, target):
    optimized, report = optimize_and_compare(flatten_model(shape), target="tensorrt")
    assert ops(optimized) == ["Relu", "Reshape"]
    init = {t.name: t for t in optimized.graph.initializer}
    reshape = optimized.graph.node[1]
    assert np.frombuffer(init[reshape.input[1]].raw_data, np.int64).tolist() == target


def test_other_axes_and_other_targets_keep_flatten():
    optimized, _ = optimize_and_compare(flatten_model(["N", 8, 2, 2], axis=2), target="tensorrt")
    assert "Flatten" in ops(optimized)
    optimized, _ = optimize_and_compare(flatten_model(["N", 8, 2, 2]), target="generic")
    assert "Flatten" in ops(optimized)


def test_fewer_tensorrt_layers(monkeypatch):
    model = flatten_model(["N", 8, 2, 2])
    before = assert_trt_builds(model, monkeypatch)
    after = assert_trt_builds(optimize_and_compare(model, target="tensorrt")[0], monkeypatch)
    assert len(after.network_layers) < len(before.network_layers)
