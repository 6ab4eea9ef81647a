"""Generate models/demo.onnx: a small CNN holding one instance of every fusion family, as exporters spell them.

    python models/make_demo.py        # rewrites models/demo.onnx (fixed seed: byte-identical output)

Opset 13, dynamic batch. Families, in exporter spelling:
- conv+bn+relu:        Conv -> BatchNormalization -> Relu                   (torch, TrainingMode.PRESERVE)
- conv+elementwise:    Conv -> Mul([1,C,1,1]) -> Add([1,C,1,1])             (frozen BN, DETR backbones)
- hswish:              Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(6)       (YOLOv5 / timm export activations)
- hsigmoid:            Add(3) -> Clip(0, 6) -> Div(6), gating another tensor (squeeze-excite)
- layernorm:           ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div -> Mul -> Add
- a shape sub-graph:   Reshape target computed from Shape -> Gather -> Unsqueeze -> Concat
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
C_IN, C, H, W = 3, 8, 16, 16


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def init(name, shape, scale=0.3, positive=False):
        a = rng.standard_normal(shape).astype(np.float32) * scale
        return numpy_helper.from_array(np.abs(a) + 0.5 if positive else a, name)

    def scalar(name, value, dtype=np.float32):
        return helper.make_node("Constant", [], [name], name=name,
                                value=numpy_helper.from_array(np.array(value, dtype=dtype)))

    inits = [
        init("conv1.weight", [C, C_IN, 3, 3]), init("conv1.bias", [C]),
        init("bn1.weight", [C], positive=True), init("bn1.bias", [C]),
        init("bn1.running_mean", [C], 0.1), init("bn1.running_var", [C], positive=True),
        init("conv2.weight", [C, C, 1, 1]), init("frozen_bn.scale", [1, C, 1, 1], positive=True),
        init("frozen_bn.shift", [1, C, 1, 1]),
        init("norm.weight", [H * W], positive=True), init("norm.bias", [H * W]),
        numpy_helper.from_array(np.array([C], np.int64), "channels"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                                "bn1.running_var"], ["b1"], name="bn1", epsilon=1e-5),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight"], ["c2"], name="conv2"),
        helper.make_node("Mul", ["c2", "frozen_bn.scale"], ["m2"], name="frozen_bn/Mul"),
        helper.make_node("Add", ["m2", "frozen_bn.shift"], ["a2"], name="frozen_bn/Add"),
        # hard-swish, export-friendly spelling
        scalar("hs/three", 3.0), scalar("hs/zero", 0.0), scalar("hs/six", 6.0),
        helper.make_node("Add", ["a2", "hs/three"], ["hs_add"], name="hs/Add"),
        helper.make_node("Clip", ["hs_add", "hs/zero", "hs/six"], ["hs_clip"], name="hs/Clip"),
        helper.make_node("Mul", ["a2", "hs_clip"], ["hs_mul"], name="hs/Mul"),
        helper.make_node("Div", ["hs_mul", "hs/six"], ["act"], name="hs/Div"),
        # squeeze-excite gate with hard-sigmoid
        helper.make_node("GlobalAveragePool", ["act"], ["se_pool"], name="se/Pool"),
        scalar("se/three", 3.0), scalar("se/zero", 0.0), scalar("se/six", 6.0),
        helper.make_node("Add", ["se_pool", "se/three"], ["se_add"], name="se/Add"),
        helper.make_node("Clip", ["se_add", "se/zero", "se/six"], ["se_clip"], name="se/Clip"),
        helper.make_node("Div", ["se_clip", "se/six"], ["se_gate"], name="se/Div"),
        helper.make_node("Mul", ["act", "se_gate"], ["gated"], name="se/Mul"),
        # flatten H*W with a target computed from Shape, as torch's x.view(x.size(0), C, -1) exports
        helper.make_node("Shape", ["gated"], ["shape"], name="flatten/Shape"),
        scalar("flatten/zero_idx", 0, np.int64),
        helper.make_node("Gather", ["shape", "flatten/zero_idx"], ["batch"], name="flatten/Gather", axis=0),
        helper.make_node("Unsqueeze", ["batch", "minus_one_axes"], ["batch1"], name="flatten/Unsqueeze"),
        helper.make_node("Concat", ["batch1", "channels", "minus_one"], ["target"], name="flatten/Concat", axis=0),
        helper.make_node("Reshape", ["gated", "target"], ["tokens"], name="flatten/Reshape"),
        # LayerNorm over the last axis, decomposed as torch exports it at opset <= 16
        helper.make_node("ReduceMean", ["tokens"], ["ln_mean"], name="norm/ReduceMean", axes=[-1]),
        helper.make_node("Sub", ["tokens", "ln_mean"], ["ln_d"], name="norm/Sub"),
        scalar("norm/two", 2.0),
        helper.make_node("Pow", ["ln_d", "norm/two"], ["ln_sq"], name="norm/Pow"),
        helper.make_node("ReduceMean", ["ln_sq"], ["ln_var"], name="norm/ReduceMean_1", axes=[-1]),
        scalar("norm/eps", 1e-5),
        helper.make_node("Add", ["ln_var", "norm/eps"], ["ln_ve"], name="norm/Add"),
        helper.make_node("Sqrt", ["ln_ve"], ["ln_std"], name="norm/Sqrt"),
        helper.make_node("Div", ["ln_d", "ln_std"], ["ln_n"], name="norm/Div"),
        helper.make_node("Mul", ["ln_n", "norm.weight"], ["ln_s"], name="norm/Mul"),
        helper.make_node("Add", ["ln_s", "norm.bias"], ["y"], name="norm/Add_1"),
    ]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "minus_one_axes"))
    graph = helper.make_graph(
        nodes, "fuser-demo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", C_IN, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", C, H * W])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fuser-demo")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


if __name__ == "__main__":
    out = Path(__file__).with_name("demo.onnx")
    onnx.save(build(), out)
    print(f"wrote {out}")
