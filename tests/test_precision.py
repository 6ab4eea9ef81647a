"""`--precision fp16`: float32 -> float16 with fp32 islands, on a small BERT-like encoder built inline.

The encoder is the exporter's opset-13 spelling (decomposed LayerNorm, erf GELU, multi-head attention with
Reshape/Transpose); fusion runs first, then the conversion, once. Numerics are checked with onnxruntime
(its optimizer off) against the fp32 original; TensorRT-RTX builds the fp16 models on the CPU.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import fuser
from fuser.cli import main
from fuser.graph import attribute
from fuser.passes import PrecisionPass
from fuser.passes.dead_code import DeadCodeElimination
from fuser.passes.precision import KeptFp32
from builders import make_model, ops, run

HIDDEN, HEADS, FFN, BATCH, SEQ = 64, 4, 128, 2, 8
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


def encoder(layers: int = 2, seed: int = 0) -> onnx.ModelProto:
    """x[2, 8, 64] -> `layers` x (attention + residual + LN, FFN(erf GELU) + residual + LN) -> y[2, 8, 64]."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def w(name, *shape, scale=None):
        scale = scale if scale is not None else 1 / np.sqrt(shape[0])
        inits.append((name, (rng.standard_normal(shape) * scale).astype(np.float32)))
        return name

    def node(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def scalar(name, value):
        nodes.append(helper.make_node("Constant", [], [name], name=name,
                                      value=numpy_helper.from_array(np.asarray(value, np.float32))))
        return name

    def layernorm(x, p):
        mean = node("ReduceMean", [x], f"{p}_mean", axes=[-1])
        d = node("Sub", [x, mean], f"{p}_d")
        d2 = node("Pow", [d, scalar(f"{p}_two", 2.0)], f"{p}_d2")
        var = node("ReduceMean", [d2], f"{p}_var", axes=[-1])
        std = node("Sqrt", [node("Add", [var, scalar(f"{p}_eps", 1e-5)], f"{p}_var_eps")], f"{p}_std")
        normed = node("Div", [d, std], f"{p}_normed")
        gamma = w(f"{p}_gamma", HIDDEN, scale=0.1)
        inits[-1] = (gamma, inits[-1][1] + 1)
        scaled = node("Mul", [normed, gamma], f"{p}_scaled")
        return node("Add", [scaled, w(f"{p}_beta", HIDDEN, scale=0.1)], f"{p}_out")

    def linear(x, p, n_in, n_out):
        return node("Add", [node("MatMul", [x, w(f"{p}_w", n_in, n_out)], f"{p}_mm"), w(f"{p}_b", n_out, scale=0.1)],
                    p)

    inits += [("heads_shape", np.array([0, 0, HEADS, HIDDEN // HEADS], np.int64)),
              ("hidden_shape", np.array([0, 0, HIDDEN], np.int64))]
    x = "x"
    for i in range(layers):
        p = f"l{i}"
        q, k, v = (node("Reshape", [linear(x, f"{p}_{n}", HIDDEN, HIDDEN), "heads_shape"], f"{p}_{n}_heads")
                   for n in "qkv")
        q = node("Transpose", [q], f"{p}_qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], f"{p}_kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [v], f"{p}_vt", perm=[0, 2, 1, 3])
        scores = node("Div", [node("MatMul", [q, k], f"{p}_qk"), scalar(f"{p}_scale", np.sqrt(HIDDEN // HEADS))],
                      f"{p}_scores")
        probs = node("Softmax", [scores], f"{p}_softmax", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"{p}_ctx")], f"{p}_ctxt", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, "hidden_shape"], f"{p}_ctx_merged")
        attn = node("Add", [linear(ctx, f"{p}_o", HIDDEN, HIDDEN), x], f"{p}_residual1")
        h = layernorm(attn, f"{p}_ln1")
        f = linear(h, f"{p}_ff1", HIDDEN, FFN)
        erf = node("Erf", [node("Div", [f, scalar(f"{p}_sqrt2", np.sqrt(2.0))], f"{p}_gelu_div")], f"{p}_erf")
        gx = node("Mul", [f, node("Add", [erf, scalar(f"{p}_one", 1.0)], f"{p}_erf1")], f"{p}_gx")
        gelu = node("Mul", [gx, scalar(f"{p}_half", 0.5)], f"{p}_gelu")
        out = node("Add", [linear(gelu, f"{p}_ff2", FFN, HIDDEN), h], f"{p}_residual2")
        x = layernorm(out, f"{p}_ln2")
    nodes[-1].output[0] = "y"
    return make_model(nodes, [("x", FLOAT, [BATCH, SEQ, HIDDEN])], [("y", FLOAT, [BATCH, SEQ, HIDDEN])], inits)


def feeds(seed: int = 1) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((BATCH, SEQ, HIDDEN)).astype(np.float32)}


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value (inferred), initializers and graph I/O included."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            types[n.output[0]] = attribute(n, "value").data_type
    return types


def casts(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Cast"]


def assert_close_to_fp32(original: onnx.ModelProto, optimized: onnx.ModelProto, tol: float = 1e-2) -> float:
    """fp16 tolerance: max abs error within `tol` of the output scale."""
    inputs = feeds()
    for e, a in zip(run(original, inputs), run(optimized, {k: v.astype(np.float16) if _is_fp16_input(optimized, k)
                                                           else v for k, v in inputs.items()})):
        scale = max(1.0, float(np.abs(e).max()))
        err = float(np.abs(a.astype(np.float64) - e).max())
        assert err <= tol * scale, (err, scale)
    return err


def _is_fp16_input(model, name):
    return any(i.name == name and i.type.tensor_type.elem_type == FLOAT16 for i in model.graph.input)


def no_cast_pairs(model: onnx.ModelProto) -> bool:
    produced_by_cast = {n.output[0] for n in casts(model)}
    return not any(n.input[0] in produced_by_cast for n in casts(model))


# ----------------------------------------------------------------- (a) fused encoder, converted
def test_fused_encoder_converts_to_fp16_with_fp32_layernorm_statistics():
    model = encoder()
    optimized, report = fuser.optimize(model, precision="fp16")  # validation on: fp16 tolerances
    onnx.checker.check_model(optimized, full_check=True)
    assert report.validation.status == "passed"
    lns = [n for n in optimized.graph.node if n.op_type == "LayerNormalization"]
    assert len(lns) == 4 and all(attribute(n, "stash_type") == 1 for n in lns)
    assert not {"ReduceMean", "Pow", "Sqrt"} & set(ops(optimized))
    types = value_types(optimized)
    assert {v for v, t in types.items() if t == FLOAT} == {"x", "y"}  # the only fp32 tensors: the graph I/O
    assert {t.data_type for t in optimized.graph.initializer} == {FLOAT16, TensorProto.INT64}
    assert types["heads_shape"] == TensorProto.INT64  # integer tensors untouched
    assert [(n.input[0], n.output[0], attribute(n, "to")) for n in casts(optimized)] == [
        ("x", "x_fp16", FLOAT16), ("y_fp16", "y", FLOAT)]  # one Cast at each boundary
    section = report.sections["precision"]
    assert section.converted_initializers == sum(1 for t in model.graph.initializer if t.data_type == FLOAT)
    assert (section.casts_inserted, section.kept_fp32, section.overflow_kept) == (2, [], [])
    assert report.passes["precision"].runs == 1  # a final pass: once, after the fixed point
    assert_close_to_fp32(model, optimized)


def test_fp16_io_converts_the_graph_inputs_and_outputs():
    model = encoder(layers=1)
    optimized, report = fuser.optimize(model, precision="fp16", fp16_io=True)  # validation feeds fp16 inputs
    onnx.checker.check_model(optimized, full_check=True)
    assert report.validation.status == "passed"
    assert [v.type.tensor_type.elem_type for v in (*optimized.graph.input, *optimized.graph.output)] == [FLOAT16] * 2
    assert not casts(optimized) and FLOAT not in value_types(optimized).values()
    assert_close_to_fp32(model, optimized)


def test_the_pass_is_idempotent_and_fp32_leaves_the_graph_alone():
    model = encoder(layers=1)
    twice, report = fuser.optimize(model, precision="fp16", keep_fp32=("Softmax",), validate=False,
                                   passes=[DeadCodeElimination(), PrecisionPass(), PrecisionPass()])
    once, _ = fuser.optimize(model, precision="fp16", keep_fp32=("Softmax",), validate=False,
                             passes=[DeadCodeElimination(), PrecisionPass()])
    assert (report.passes["precision"].runs, report.passes["precision"].modified) == (2, 1)
    assert twice == once
    same, report = fuser.optimize(model, validate=False, passes=[PrecisionPass()])  # precision fp32: a no-op
    assert same.graph.initializer == model.graph.initializer and "precision" not in report.sections


# --------------------------------------------------- (b) TensorRT-RTX: no LayerNorm warning once fused
def test_tensorrt_rtx_builds_the_fused_fp16_encoder_without_the_layernorm_warning(monkeypatch):
    pytest.importorskip("tensorrt_rtx")
    from fuser.trt import BuildOptions, build_engine
    from fuser.trt.backend import ENV_VAR

    monkeypatch.setenv(ENV_VAR, "tensorrt_rtx")  # the warning's wording is TensorRT-RTX's
    model = encoder()
    fused, _ = fuser.optimize(model, precision="fp16", validate=False)
    unfused, _ = fuser.optimize(model, precision="fp16", skip_rules=("layernorm",), validate=False)
    assert "LayerNormalization" in ops(fused) and "LayerNormalization" not in ops(unfused)
    assert "Pow" in ops(unfused) and value_types(unfused)[next(n.output[0] for n in unfused.graph.node
                                                               if n.op_type == "Pow")] == FLOAT16
    built = {name: build_engine(m, BuildOptions(opt_level=0)) for name, m in (("fused", fused), ("unfused", unfused))}
    warnings = {name: [w.id for w in r.warnings] for name, r in built.items()}
    assert warnings["fused"].count("layernorm-fp16") == 0
    assert "layernorm-fp16" in warnings["unfused"]
    layers = {name: len(r.network_layers) for name, r in built.items()}
    assert layers["fused"] < layers["unfused"]
    assert {layer["precision"] for layer in built["fused"].network_layers} <= {"HALF", "FLOAT"}
    halves = sum(layer["precision"] == "HALF" for layer in built["fused"].network_layers)
    assert halves >= len(built["fused"].network_layers) - 2  # fp32 only at the I/O Casts


# ------------------------------------------------------------------------ (c) keep-list
def test_keep_fp32_softmax_gets_exactly_one_cast_in_and_one_out():
    model = encoder()
    optimized, report = fuser.optimize(model, precision="fp16", keep_fp32=("Softmax",))
    onnx.checker.check_model(optimized, full_check=True)
    types = value_types(optimized)
    producers = {o: n for n in optimized.graph.node for o in n.output}
    consumers = {}
    for n in optimized.graph.node:
        for v in n.input:
            consumers.setdefault(v, []).append(n)
    softmaxes = [n for n in optimized.graph.node if n.op_type == "Softmax"]
    for sm in softmaxes:
        cast_in = producers[sm.input[0]]
        assert (cast_in.op_type, attribute(cast_in, "to"), types[cast_in.input[0]]) == ("Cast", FLOAT, FLOAT16)
        assert types[sm.output[0]] == FLOAT
        (cast_out,) = consumers[sm.output[0]]
        assert (cast_out.op_type, attribute(cast_out, "to")) == ("Cast", FLOAT16)
        assert [n.op_type for n in consumers[cast_out.output[0]]] == ["MatMul"]
    assert len(casts(optimized)) == 2 * len(softmaxes) + 2  # + the graph input's and output's
    assert no_cast_pairs(optimized)
    section = report.sections["precision"]
    assert [(k.op, k.reason) for k in section.kept_fp32] == [("Softmax", "keep-list")] * 2
    assert section.casts_inserted == len(casts(optimized))
    assert_close_to_fp32(model, optimized)


def test_keep_fp32_by_node_name_an_island_of_two_nodes_and_a_shared_constant():
    """Div (by name) + Softmax: one island, Casts only at its edges; the shared 1/sqrt(d) constant is
    kept fp32 for the island and copied (not Cast) to fp16 for the other layer's Div."""
    model = encoder()
    optimized, report = fuser.optimize(model, precision="fp16", keep_fp32=("l0_scores", "l0_softmax"))
    onnx.checker.check_model(optimized, full_check=True)
    types = value_types(optimized)
    by_name = {n.name: n for n in optimized.graph.node}
    div, softmax = by_name["l0_scores"], by_name["l0_softmax"]
    assert types[div.output[0]] == types[softmax.output[0]] == FLOAT and softmax.input[0] == div.output[0]
    assert types[by_name["l1_softmax"].output[0]] == FLOAT16
    assert len(casts(optimized)) == 2 + 2 and no_cast_pairs(optimized)
    section = report.sections["precision"]
    assert sorted(k.node for k in section.kept_fp32) == ["l0_scores", "l0_softmax"]
    assert types[div.input[1]] == FLOAT and types[by_name["l1_scores"].input[1]] == FLOAT16
    assert_close_to_fp32(model, optimized)


def test_a_constant_shared_by_a_kept_and_a_converted_node_is_copied_not_cast():
    nodes = [helper.make_node("Mul", ["x", "k"], ["a"], name="kept_mul"),
             helper.make_node("Mul", ["a", "k"], ["y"], name="mul")]
    model = make_model(nodes, [("x", FLOAT, [4])], [("y", FLOAT, [4])], [("k", np.full(4, 1 / 3, np.float32))])
    optimized, report = fuser.optimize(model, precision="fp16", keep_fp32=("kept_mul",), validate=False,
                                       passes=[PrecisionPass()])
    onnx.checker.check_model(optimized, full_check=True)
    assert {t.name: t.data_type for t in optimized.graph.initializer} == {"k": FLOAT, "k_fp16": FLOAT16}
    assert [n.input[0] for n in casts(optimized)] == ["a", "y_fp16"]  # the kept Mul's output, and the output
    assert report.sections["precision"].fp16_copies == 1


# ------------------------------------------------------------------ (d) overflow
def masked_softmax(mask_value: float, spelling: str = "add") -> onnx.ModelProto:
    """softmax(x @ w + mask_bias): the additive mask's -1e9 (or torch.finfo.min) does not fit fp16.

    "add": a constant bias; "mul": HF's `(1 - mask) * min` from a 0/1 mask input (0 * -inf = NaN if cast first).
    """
    rng = np.random.default_rng(0)
    w = ("w", (rng.standard_normal((HIDDEN, HIDDEN)) / 8).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"], name="mm")]
    if spelling == "add":
        bias = np.zeros((1, HIDDEN), np.float32)
        bias[0, HIDDEN // 2:] = mask_value
        inits, inputs = [w, ("mask", bias)], [("x", FLOAT, [BATCH, SEQ, HIDDEN])]
    else:
        nodes += [helper.make_node("Sub", ["one", "keep"], ["dropped"], name="invert"),
                  helper.make_node("Mul", ["dropped", "min"], ["mask"], name="mask_bias")]
        inits = [w, ("one", np.float32(1)), ("min", np.float32(mask_value))]
        inputs = [("x", FLOAT, [BATCH, SEQ, HIDDEN]), ("keep", FLOAT, [1, HIDDEN])]
    nodes += [helper.make_node("Add", ["xw", "mask"], ["masked"], name="add_mask"),
              helper.make_node("Softmax", ["masked"], ["y"], name="softmax", axis=-1)]
    return make_model(nodes, inputs, [("y", FLOAT, [BATCH, SEQ, HIDDEN])], inits)


def test_an_initializer_beyond_fp16_range_stays_fp32_and_so_does_the_op_reading_it():
    model = masked_softmax(-1e9)
    optimized, report = fuser.optimize(model, precision="fp16")
    onnx.checker.check_model(optimized, full_check=True)
    assert {t.name: t.data_type for t in optimized.graph.initializer} == {"w": FLOAT16, "mask": FLOAT}
    types = value_types(optimized)
    add = next(n for n in optimized.graph.node if n.op_type == "Add")
    assert add.input[1] == "mask" and types[add.input[0]] == types[add.output[0]] == FLOAT  # an fp32 island
    assert not any(n.input[0] == "mask" for n in casts(optimized))  # never Cast to -inf
    assert [n.input[0] for n in casts(optimized)] == ["x", "xw", "masked", "y_fp16"]
    assert no_cast_pairs(optimized)
    section = report.sections["precision"]
    assert section.overflow_kept == ["mask"] and section.converted_initializers == 1
    assert section.kept_fp32 == [KeptFp32("add_mask", "Add", "reads mask, beyond the fp16 range")]
    assert_close_to_fp32(model, optimized)
    fits, report = fuser.optimize(masked_softmax(-6e4), precision="fp16", validate=False)
    assert {t.data_type for t in fits.graph.initializer} == {FLOAT16}
    assert report.sections["precision"].overflow_kept == [] and len(casts(fits)) == 2


def test_a_mul_form_mask_with_float_min_gives_no_nan():
    """HF's `(1 - mask) * finfo(float32).min`: Cast(min) -> -inf first would make 0 * -inf = NaN."""
    model = masked_softmax(float(np.finfo(np.float32).min), spelling="mul")
    optimized, report = fuser.optimize(model, precision="fp16", passes=[PrecisionPass()])
    onnx.checker.check_model(optimized, full_check=True)
    assert report.sections["precision"].overflow_kept == ["min"]
    keep = np.ones((1, HIDDEN), np.float32)
    keep[0, HIDDEN // 2:] = 0
    inputs = {**feeds(), "keep": keep}
    (expected,), (actual,) = run(model, inputs), run(optimized, inputs)
    assert not np.isnan(actual).any()
    np.testing.assert_allclose(actual, expected, atol=1e-2)


# ------------------------------------------------- ops whose operands or outputs are typed specially
def test_schema_typed_operands_cast_range_resize_and_constant_of_shape():
    scales = np.array([1, 1, 2, 2], np.float32)
    nodes = [helper.make_node("Resize", ["x4", "", "scales"], ["up"], name="resize", mode="nearest"),
             helper.make_node("Shape", ["x4"], ["shape"], name="shape"),
             helper.make_node("Cast", ["shape"], ["shape_f"], name="cast", to=FLOAT),
             helper.make_node("Mul", ["shape_f", "half"], ["halved"], name="halve"),
             helper.make_node("Range", ["zero", "four", "one"], ["r"], name="range"),
             helper.make_node("Add", ["halved", "r"], ["y2"], name="add_range"),
             helper.make_node("ConstantOfShape", ["shape"], ["filled"], name="fill",
                              value=numpy_helper.from_array(np.array([2.5], np.float32))),
             helper.make_node("Add", ["x4", "filled"], ["y3"], name="add_fill"),
             helper.make_node("Cast", ["shape"], ["y4"], name="cast_out", to=FLOAT)]  # only fp32 users: stays
    inits = [("scales", scales), ("half", np.float32(0.5)), ("zero", np.float32(0)), ("four", np.float32(4)),
             ("one", np.float32(1))]
    model = make_model(nodes, [("x4", FLOAT, [1, 2, 4, 4])],
                       [("up", FLOAT, [1, 2, 8, 8]), ("y2", FLOAT, [4]), ("y3", FLOAT, [1, 2, 4, 4]),
                        ("y4", FLOAT, [4])], inits)
    optimized, report = fuser.optimize(model, precision="fp16", keep_fp32=("Sofmax",), validate=False,
                                       passes=[PrecisionPass()])
    onnx.checker.check_model(optimized, full_check=True)
    types = value_types(optimized)
    by_name = {n.name: n for n in optimized.graph.node}
    assert types["scales"] == FLOAT  # Resize scales are tensor(float) only
    assert types["r"] == FLOAT and {types[v] for v in ("zero", "four", "one")} == {FLOAT}  # Range has no fp16
    assert attribute(by_name["cast"], "to") == FLOAT16 and types["shape"] == TensorProto.INT64
    assert attribute(by_name["fill"], "value").data_type == FLOAT16 and types["filled"] == FLOAT16
    assert types["half"] == FLOAT16
    assert attribute(by_name["cast_out"], "to") == FLOAT and by_name["cast_out"].output[0] == "y4"
    assert no_cast_pairs(optimized)
    assert report.sections["precision"].unmatched_keep_fp32 == ["Sofmax"]
    assert any("keep_fp32 (--keep-fp32): no op type or node name Sofmax" in w for w in report.warnings)
    assert report.sections["precision"].kept_fp32 == [KeptFp32("range", "Range", "Range-11 has no float16 type")]
    inputs = {"x4": np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)}
    for e, a in zip(run(model, inputs), run(optimized, inputs)):
        np.testing.assert_allclose(a, e, atol=1e-2 * max(1.0, np.abs(e).max()))


# ------------------------------------------------------------------------------- (e) CLI
def test_cli_optimize_precision_fp16_end_to_end(tmp_path):
    src, dst, report_path = tmp_path / "enc.onnx", tmp_path / "enc.fp16.onnx", tmp_path / "report.json"
    onnx.save(encoder(), src)
    result = CliRunner().invoke(main, ["optimize", str(src), "-o", str(dst), "--precision", "fp16",
                                       "--keep-fp32", "Softmax", "--keep-fp32", "l0_gelu_div",
                                       "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    assert "fp16: 32 initializers converted" in result.output
    optimized = onnx.load(dst)
    onnx.checker.check_model(optimized, full_check=True)
    assert "LayerNormalization" in ops(optimized)
    report = json.loads(report_path.read_text())
    assert report["options"]["precision"] == "fp16"
    assert report["options"]["keep_fp32"] == ["Softmax", "l0_gelu_div"]
    kept = sorted(k["node"] for k in report["precision"]["kept_fp32"])
    assert kept == ["l0_gelu_div", "l0_softmax", "l1_softmax"]
    assert report["validation"]["status"] == "passed"
    bad = CliRunner().invoke(main, ["optimize", str(src), "--keep-fp32", "Softmax"])
    assert bad.exit_code == 2 and "--precision fp16" in bad.output
