"""Synthetic graphs of a chosen size with every fusion family in exporter spelling, for timing the core.

    python benchmarks/synthetic.py --nodes 50000 -o /tmp/g50k.onnx
    python benchmarks/synthetic.py --big -o /tmp/big/model.onnx     # > 2 GB, external data

One block is ~24 nodes: a decomposed LayerNorm (9 nodes), a hard-swish (Add/Clip/Mul/Div), a
hard-sigmoid gate, a MatMul + Add projection and a Relu. `--big` makes the projections 2048 x 2048
fp32 (16 MiB each) until the weights pass 2 GiB, written tensor by tensor as external data so the
generator never holds them all in memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


def block(i: int, x: str, hidden: int) -> tuple[list, list, str]:
    p = f"b{i}"
    nodes = [
        helper.make_node("ReduceMean", [x], [f"{p}_mean"], axes=[-1], name=f"{p}/ln/ReduceMean"),
        helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_d"], name=f"{p}/ln/Sub"),
        helper.make_node("Pow", [f"{p}_d", "two"], [f"{p}_sq"], name=f"{p}/ln/Pow"),
        helper.make_node("ReduceMean", [f"{p}_sq"], [f"{p}_var"], axes=[-1], name=f"{p}/ln/ReduceMean_1"),
        helper.make_node("Add", [f"{p}_var", "eps"], [f"{p}_ve"], name=f"{p}/ln/Add"),
        helper.make_node("Sqrt", [f"{p}_ve"], [f"{p}_std"], name=f"{p}/ln/Sqrt"),
        helper.make_node("Div", [f"{p}_d", f"{p}_std"], [f"{p}_n"], name=f"{p}/ln/Div"),
        helper.make_node("Mul", [f"{p}_n", f"{p}.ln.weight"], [f"{p}_s"], name=f"{p}/ln/Mul"),
        helper.make_node("Add", [f"{p}_s", f"{p}.ln.bias"], [f"{p}_ln"], name=f"{p}/ln/Add_1"),
        helper.make_node("MatMul", [f"{p}_ln", f"{p}.fc.weight"], [f"{p}_mm"], name=f"{p}/fc/MatMul"),
        helper.make_node("Add", [f"{p}_mm", f"{p}.fc.bias"], [f"{p}_fc"], name=f"{p}/fc/Add"),
        helper.make_node("Add", [f"{p}_fc", "three"], [f"{p}_hs_a"], name=f"{p}/hs/Add"),
        helper.make_node("Clip", [f"{p}_hs_a", "zero", "six"], [f"{p}_hs_c"], name=f"{p}/hs/Clip"),
        helper.make_node("Mul", [f"{p}_fc", f"{p}_hs_c"], [f"{p}_hs_m"], name=f"{p}/hs/Mul"),
        helper.make_node("Div", [f"{p}_hs_m", "six"], [f"{p}_hs"], name=f"{p}/hs/Div"),
        helper.make_node("Add", [f"{p}_hs", "three"], [f"{p}_g_a"], name=f"{p}/gate/Add"),
        helper.make_node("Clip", [f"{p}_g_a", "zero", "six"], [f"{p}_g_c"], name=f"{p}/gate/Clip"),
        helper.make_node("Mul", [f"{p}_g_c", "sixth"], [f"{p}_g"], name=f"{p}/gate/Mul"),
        helper.make_node("Mul", [x, f"{p}_g"], [f"{p}_gated"], name=f"{p}/gate/Apply"),
        helper.make_node("Add", [f"{p}_gated", f"{p}_hs"], [f"{p}_res"], name=f"{p}/residual"),
        helper.make_node("Relu", [f"{p}_res"], [f"{p}_out"], name=f"{p}/Relu"),
    ]
    weights = [(f"{p}.ln.weight", [hidden]), (f"{p}.ln.bias", [hidden]), (f"{p}.fc.weight", [hidden, hidden]),
               (f"{p}.fc.bias", [hidden])]
    return nodes, weights, f"{p}_out"


def build(blocks: int, hidden: int, rng, weights_dir: Path | None = None) -> onnx.ModelProto:
    """The model; with `weights_dir`, tensors are written to weights_dir/model.onnx.data as they are made."""
    shared = [numpy_helper.from_array(np.array(v, np.float32), n)
              for n, v in (("two", 2.0), ("eps", 1e-5), ("three", 3.0), ("zero", 0.0), ("six", 6.0), ("sixth", 1 / 6))]
    nodes, inits, x = [], list(shared), "x"
    data = open(weights_dir / "model.onnx.data", "wb") if weights_dir else None
    try:
        for i in range(blocks):
            bn, bw, x = block(i, x, hidden)
            nodes += bn
            for name, shape in bw:
                a = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[0])).astype(np.float32)
                if name.endswith("ln.weight"):
                    a += 1.0
                inits.append(_external(name, a, data) if data else numpy_helper.from_array(a, name))
    finally:
        if data:
            data.close()
    graph = helper.make_graph(nodes, "synthetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "seq", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def _external(name: str, array: np.ndarray, f) -> onnx.TensorProto:
    offset = f.tell()
    f.write(array.tobytes())
    t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape, data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "model.onnx.data"), ("offset", str(offset)), ("length", str(array.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--big", action="store_true", help="> 2 GB with external data (hidden 2048)")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.big:
        hidden = 2048
        blocks = (2**31 // (hidden * hidden * 4)) + 4  # weights just over 2 GiB
        model = build(blocks, hidden, rng, weights_dir=args.output.parent)
        if args.output.name != "model.onnx":
            raise SystemExit("--big writes model.onnx + model.onnx.data; name the output model.onnx")
    else:
        model = build(max(1, args.nodes // 21), args.hidden, rng)
    onnx.save(model, args.output)
    print(f"wrote {args.output}: {len(model.graph.node)} nodes")


if __name__ == "__main__":
    main()
