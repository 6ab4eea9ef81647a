"""ND shape tensors become 1-D gathers; Reshape targets built from Shape get 0 / -1 placeholders.

Models are written by hand as torch's TorchScript exporter spells them (F.pad's `_prepare_onnx_paddings`,
`x.view(x.size(0), x.size(1), 12, 64)`), with dynamic batch / height / width, and run with
onnxruntime (its optimizer off) at several input shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import const, make_model, ops, run
from onnx import TensorProto as TP
from onnx import helper

import fuser

I64_MAX = 9223372036854775807


def i64(name, value):
    return const(name, value, np.int64)


def unsqueeze(src, dst, opset):
    if opset >= 13:
        return [i64(f"{dst}_axes", [0]), helper.make_node("Unsqueeze", [src, f"{dst}_axes"], [dst])]
    return [helper.make_node("Unsqueeze", [src], [dst], axes=[0])]


def pad_model(opset=13, multiple=32, rank_from_size=False):
    """`F.pad(x, (0, pw, 0, ph))` with pw, ph rounding H and W up to a multiple, as torch exports it.

    `rank_from_size`: the exporter did not know x's rank and wrote `Size(Shape(x))` for it.
    """
    nodes = [helper.make_node("Shape", ["x"], ["s"]), i64("i2", 2), i64("i3", 3), i64("k", multiple),
             i64("zero", 0)]
    for dim, idx in (("h", "i2"), ("w", "i3")):
        nodes += [helper.make_node("Gather", ["s", idx], [dim], axis=0),
                  helper.make_node("Mod", [dim, "k"], [f"{dim}_m"]),
                  helper.make_node("Sub", ["k", f"{dim}_m"], [f"{dim}_s"]),
                  helper.make_node("Mod", [f"{dim}_s", "k"], [f"p{dim}"])]
    for src, dst in (("zero", "u0"), ("pw", "u1"), ("zero", "u2"), ("ph", "u3")):
        nodes += unsqueeze(src, dst, opset)
    nodes += [
        helper.make_node("Concat", ["u0", "u1", "u2", "u3"], ["pad"], axis=0),
        # pad_len = size(pad, 0); extension = rank * 2 - pad_len
        helper.make_node("Shape", ["pad"], ["pad_shape"]), i64("idx0", [0]),
        helper.make_node("Gather", ["pad_shape", "idx0"], ["pad_len"], axis=0),
        *([helper.make_node("Shape", ["x"], ["x_shape"]), helper.make_node("Size", ["x_shape"], ["rank"])]
          if rank_from_size else [i64("rank", 4)]),
        i64("two", 2),
        helper.make_node("Mul", ["rank", "two"], ["rank2"]),
        helper.make_node("Sub", ["rank2", "pad_len"], ["ext"]),
        helper.make_node("Cast", ["pad"], ["pad64"], to=TP.INT64),
        helper.make_node("ConstantOfShape", ["ext"], ["zeros"],
                         value=onnx.numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Concat", ["pad64", "zeros"], ["paddings"], axis=0),
        # Reshape(-1, 2) -> flip(dim 0) -> Transpose(1, 0) -> Reshape(-1)
        i64("shape_m12", [-1, 2]),
        helper.make_node("Reshape", ["paddings", "shape_m12"], ["pads_2d"]),
        i64("starts", [-1]), i64("ends", [-I64_MAX]), i64("axes", [0]), i64("steps", [-1]),
        helper.make_node("Slice", ["pads_2d", "starts", "ends", "axes", "steps"], ["pads_flip"]),
        helper.make_node("Transpose", ["pads_flip"], ["pads_t"], perm=[1, 0]),
        i64("shape_m1", [-1]),
        helper.make_node("Reshape", ["pads_t", "shape_m1"], ["pads_flat"]),
        helper.make_node("Cast", ["pads_flat"], ["pads_onnx"], to=TP.INT64),
        const("pad_value", 0.0),
        helper.make_node("Pad", ["x", "pads_onnx", "pad_value"], ["padded"], mode="constant"),
        const("weight", np.random.default_rng(0).standard_normal((4, 3, 3, 3)), np.float32),
        helper.make_node("Conv", ["padded", "weight"], ["y"], pads=[1, 1, 1, 1]),
    ]
    return make_model(nodes, [("x", TP.FLOAT, ["N", 3, "H", "W"])], [("y", TP.FLOAT, ["N", 4, None, None])],
                      opset=opset)


def int_tensor_ranks(model) -> dict[str, int]:
    """Rank of every integer tensor in the model, from onnx shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.elem_type in (TP.INT64, TP.INT32) and tt.HasField("shape"):
            ranks[vi.name] = len(tt.shape.dim)
    for t in inferred.graph.initializer:
        if t.data_type in (TP.INT64, TP.INT32):
            ranks[t.name] = len(t.dims)
    return ranks


def assert_same_outputs(model, optimized, shapes):
    rng = np.random.default_rng(1)
    name = model.graph.input[0].name
    for shape in shapes:
        feeds = {name: rng.standard_normal(shape).astype(np.float32)}
        for expected, actual in zip(run(model, feeds), run(optimized, feeds)):
            assert expected.shape == actual.shape
            np.testing.assert_array_equal(expected, actual)


@pytest.mark.parametrize("opset, rank_from_size", [(11, False), (13, False), (17, False), (13, True)])
def test_pad_idiom_leaves_no_2d_shape_tensor(opset, rank_from_size):
    model = pad_model(opset, rank_from_size=rank_from_size)
    assert max(int_tensor_ranks(model).values()) == 2  # the exported idiom has one
    optimized, report = fuser.optimize(model, validate=False)
    onnx.checker.check_model(optimized, full_check=True)
    ranks = int_tensor_ranks(optimized)
    assert all(r <= 1 for r in ranks.values()), {k: r for k, r in ranks.items() if r > 1}
    assert "Transpose" not in ops(optimized) and "Slice" not in ops(optimized)
    assert ops(optimized).count("Reshape") == 0 and ops(optimized).count("Gather") == 3  # h, w, the permutation
    assert "ConstantOfShape" not in ops(optimized) and ops(optimized).count("Shape") == 1  # Shape(pad) folded
    assert report.sections["folding"].nd_shape_chains_rewritten == 1
    assert_same_outputs(model, optimized, [(1, 3, 30, 45), (2, 3, 64, 64), (3, 3, 33, 1), (1, 3, 7, 97)])


def test_pad_permutation_is_exact_for_every_pad_slot():
    """The Gather reorders all 8 pads as torch does: put a distinct value in each and compare directly."""
    nodes = [helper.make_node("Reshape", ["p", "shape_m12"], ["p2"]),
             helper.make_node("Slice", ["p2", "starts", "ends", "axes", "steps"], ["pf"]),
             helper.make_node("Transpose", ["pf"], ["pt"], perm=[1, 0]),
             helper.make_node("Reshape", ["pt", "shape_m1"], ["out"])]
    inits = [("shape_m12", np.array([-1, 2])), ("starts", np.array([-1])), ("ends", np.array([-I64_MAX])),
             ("axes", np.array([0])), ("steps", np.array([-1])), ("shape_m1", np.array([-1]))]
    model = make_model(nodes, [("p", TP.INT64, [8])], [("out", TP.INT64, [8])], inits, opset=13)
    optimized, _ = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["Gather"]
    p = np.arange(10, 18, dtype=np.int64)
    np.testing.assert_array_equal(run(optimized, {"p": p})[0], run(model, {"p": p})[0])
    np.testing.assert_array_equal(run(optimized, {"p": p})[0], [16, 14, 12, 10, 17, 15, 13, 11])


def test_nd_chain_of_float_data_is_left_alone():
    """Only integer (shape) tensors are rewritten; a float Reshape/Transpose chain is real data movement."""
    nodes = [helper.make_node("Reshape", ["p", "shape_m12"], ["p2"]),
             helper.make_node("Transpose", ["p2"], ["pt"], perm=[1, 0]),
             helper.make_node("Reshape", ["pt", "shape_m1"], ["out"])]
    inits = [("shape_m12", np.array([-1, 2])), ("shape_m1", np.array([-1]))]
    model = make_model(nodes, [("p", TP.FLOAT, [8])], [("out", TP.FLOAT, [8])], inits, opset=13)
    optimized, _ = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["Reshape", "Transpose", "Reshape"]


def test_nd_chain_with_a_second_user_is_left_alone():
    nodes = [helper.make_node("Reshape", ["p", "shape_m12"], ["p2"]),
             helper.make_node("Transpose", ["p2"], ["pt"], perm=[1, 0]),
             helper.make_node("Reshape", ["pt", "shape_m1"], ["out"])]
    inits = [("shape_m12", np.array([-1, 2])), ("shape_m1", np.array([-1]))]
    model = make_model(nodes, [("p", TP.INT64, [8])], [("out", TP.INT64, [8]), ("p2", TP.INT64, [4, 2])], inits,
                       opset=13)
    optimized, _ = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["Reshape", "Transpose", "Reshape"]


def heads_model(order=(0, 1), allowzero=None, opset=14):
    """`x.view(x.size(0), x.size(1), 12, 64)` on x of shape [B, S, 768] (B, S dynamic)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"])]
    for k in (0, 1):
        nodes += [i64(f"i{k}", k), helper.make_node("Gather", ["s", f"i{k}"], [f"d{k}"], axis=0)]
        nodes += unsqueeze(f"d{k}", f"u{k}", opset)
    nodes += [i64("heads", [12]), i64("dim", [64]),
              helper.make_node("Concat", [f"u{order[0]}", f"u{order[1]}", "heads", "dim"], ["target"], axis=0)]
    kw = {} if allowzero is None else {"allowzero": allowzero}
    nodes += [helper.make_node("Reshape", ["x", "target"], ["y"], **kw),
              helper.make_node("Transpose", ["y"], ["z"], perm=[0, 2, 1, 3])]
    return make_model(nodes, [("x", TP.FLOAT, ["B", "S", 768])], [("z", TP.FLOAT, [None] * 4)], opset=opset)


def test_reshape_target_gets_copy_placeholders():
    model = heads_model()
    optimized, report = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["Reshape", "Transpose"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in optimized.graph.initializer}
    target = inits[optimized.graph.node[0].input[1]]
    assert target.tolist() == [0, 0, 12, 64]
    assert report.sections["folding"].reshape_targets_rewritten == 1
    assert_same_outputs(model, optimized, [(1, 5, 768), (2, 7, 768), (3, 1, 768)])


def test_reshape_dims_in_other_positions_are_not_copies():
    """view(size(1), size(0), ...) swaps dims: 0 would copy the wrong one, and two -1 are impossible."""
    model = heads_model(order=(1, 0))
    optimized, _ = fuser.optimize(model, validate=False)
    assert "Concat" in ops(optimized) and "Shape" in ops(optimized)
    assert_same_outputs(model, optimized, [(2, 3, 768), (4, 5, 768)])


def test_reshape_allowzero_is_left_alone():
    optimized, _ = fuser.optimize(heads_model(allowzero=1), validate=False)
    assert "Concat" in ops(optimized)


def test_reshape_merged_dims_get_minus_one():
    """`x.view(x.size(0) * x.size(1), 768)` -> Reshape(x, [-1, 768])."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), i64("i0", 0), i64("i1", 1),
             helper.make_node("Gather", ["s", "i0"], ["d0"], axis=0),
             helper.make_node("Gather", ["s", "i1"], ["d1"], axis=0),
             helper.make_node("Mul", ["d0", "d1"], ["bs"])]
    nodes += unsqueeze("bs", "u", 13)
    nodes += [i64("hidden", [768]), helper.make_node("Concat", ["u", "hidden"], ["target"], axis=0),
              helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = make_model(nodes, [("x", TP.FLOAT, ["B", "S", 768])], [("y", TP.FLOAT, [None, 768])], opset=13)
    optimized, _ = fuser.optimize(model, validate=False)
    assert ops(optimized) == ["Reshape"]
    target = onnx.numpy_helper.to_array(optimized.graph.initializer[0])
    assert target.tolist() == [-1, 768]
    assert_same_outputs(model, optimized, [(1, 1, 768), (2, 9, 768), (5, 3, 768)])


def test_same_symbolic_dim_of_another_tensor_is_a_copy():
    """Reshape(y, [size(x, 0), -1]) with x and y both [B, ...]: dim 0 of x is dim 0 of y."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), i64("i0", 0),
             helper.make_node("Gather", ["s", "i0"], ["b"], axis=0)]
    nodes += unsqueeze("b", "u", 13)
    nodes += [i64("rest", [-1]), helper.make_node("Concat", ["u", "rest"], ["target"], axis=0),
              helper.make_node("Reshape", ["y", "target"], ["z"]),
              helper.make_node("ReduceSum", ["x"], ["xs"], keepdims=0),
              helper.make_node("Add", ["z", "xs"], ["out"])]
    model = make_model(nodes, [("x", TP.FLOAT, ["B", 4]), ("y", TP.FLOAT, ["B", 2, 2])],
                       [("out", TP.FLOAT, [None, None])], opset=13)
    optimized, _ = fuser.optimize(model, validate=False)
    assert "Shape" not in ops(optimized)
    rng = np.random.default_rng(0)
    for b in (1, 3):
        feeds = {"x": rng.standard_normal((b, 4)).astype(np.float32),
                 "y": rng.standard_normal((b, 2, 2)).astype(np.float32)}
        np.testing.assert_array_equal(run(model, feeds)[0], run(optimized, feeds)[0])
