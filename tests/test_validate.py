"""Numerics validation: statistics, tolerances, inputs, and the rollback of planted wrong rewrites."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import const, make_model, ops, run
from onnx import TensorProto, helper, numpy_helper

import fuser
from fuser.errors import ModelError, UsageError
from fuser.validation.inputs import input_specs, load_feed_sets, parse_shape, random_feeds, resolve_shapes
from fuser.pass_manager import PassResult
from fuser.passes import DeadCodeElimination, FusionPass
from fuser.pattern import Var, op
from fuser.rule import Rule
from fuser.rules import ALL_RULES
from fuser.validation.validate import ValidationFailed, compare, upcast_to_fp32

F, H = TensorProto.FLOAT, TensorProto.FLOAT16
HSWISH = [r for r in ALL_RULES if r.family == "hswish"]
x = Var("x")

# Deliberately wrong: Relu(x) is not Abs(x). Right only where x >= 0, e.g. after an Exp.
BROKEN = Rule(name="broken_relu", family="broken", pattern=op.Relu(x), emits="Abs",
              rewrite=lambda m, b, _: b.op("Abs", m["x"]), doc="Relu(x) -> Abs(x) (wrong on purpose)")


def hswish_nodes(i: int, src: str) -> list[onnx.NodeProto]:
    """Div(Mul(src, Clip(Add(src, 3), 0, 6)), 6): a decomposed HardSwish, nodes named add{i}..div{i}."""
    return [helper.make_node("Add", [src, "three"], [f"a{i}"], name=f"add{i}"),
            helper.make_node("Clip", [f"a{i}", "zero", "six"], [f"c{i}"], name=f"clip{i}"),
            helper.make_node("Mul", [src, f"c{i}"], [f"m{i}"], name=f"mul{i}"),
            helper.make_node("Div", [f"m{i}", "six"], [f"h{i}"], name=f"div{i}")]


CONSTS = [const("three", 3.0), const("zero", 0.0), const("six", 6.0)]


def planted_model(opset: int = 14) -> onnx.ModelProto:
    """Two HardSwishes (good fusions) and three Relus: relu_exp is safe to turn into Abs, relu_a/relu_b are not."""
    nodes = [*CONSTS, *hswish_nodes(0, "x"),
             helper.make_node("Relu", ["h0"], ["r0"], name="relu_a"),
             *hswish_nodes(1, "r0"),
             helper.make_node("Exp", ["x"], ["e"], name="exp"),
             helper.make_node("Relu", ["e"], ["re"], name="relu_exp"),
             helper.make_node("Relu", ["x"], ["r1"], name="relu_b"),
             helper.make_node("Add", ["r1", "h1"], ["s"], name="sum"),
             helper.make_node("Add", ["s", "re"], ["y"], name="out")]
    return make_model(nodes, [("x", F, ["batch", 16])], [("y", F, ["batch", 16])], opset=opset)


def planted_passes():
    return [FusionPass([*HSWISH, BROKEN]), DeadCodeElimination()]


def test_validation_passes_with_statistics():
    model = make_model([*CONSTS, *hswish_nodes(0, "x")], [("x", F, ["batch", 8])], [("h0", F, ["batch", 8])],
                       opset=14)
    optimized, report = fuser.optimize(model)
    assert ops(optimized) == ["HardSwish"]
    v = report.validation
    assert v.status == "passed" and v.summary.startswith("passed: 1 output") and v.rolled_back == []
    assert v.shapes == [{"x": [1, 8]}] and v.provider == "cpu" and v.device == "CPUExecutionProvider"
    stats = v.outputs["h0"]
    for key in ("max_abs", "mean_abs", "median_abs", "p99_abs", "max_rel", "mean_rel", "median_rel", "p99_rel",
                "cosine", "nan", "inf", "atol", "rtol", "mismatches"):
        assert getattr(stats, key) is not None, key
    assert stats.passed and stats.max_abs < 1e-6 and stats.cosine > 0.999999
    assert stats.atol == stats.rtol == 1e-4 and (stats.nan.reference, stats.nan.optimized) == (0, 0)


def test_planted_wrong_rewrite_is_rolled_back_exactly():
    model = planted_model()
    optimized, report = fuser.optimize(model, passes=planted_passes())
    v = report.validation
    assert v.status == "rolled-back"
    culprits = {r.key: r for r in v.rolled_back}
    assert set(culprits) == {"broken_relu@r0", "broken_relu@r1"}  # relu_exp's rewrite was right and stays
    assert culprits["broken_relu@r0"].replaced == ["relu_a"] and culprits["broken_relu@r0"].rule == "broken_relu"
    assert "output 'y'" in culprits["broken_relu@r1"].effect
    kept = {f.key for f in report.fusions}
    assert kept == {"hardswish@h0", "hardswish@h1", "broken_relu@re"}
    assert sorted(ops(optimized)) == sorted(["HardSwish", "HardSwish", "Relu", "Relu", "Exp", "Abs", "Add", "Add"])
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32) * 4}
    np.testing.assert_allclose(run(optimized, feeds)[0], run(model, feeds)[0], atol=1e-5)
    assert any("broken_relu@r1" in w and "relu_b" in w for w in report.warnings)
    reasons = {m.at: m.reason for m in report.near_misses if m.rule == "broken_relu"}
    assert reasons["relu_a"].startswith("rolled back") and reasons["relu_b"].startswith("rolled back")
    assert v.bisection.trials <= 8 and v.first_attempt.failed_outputs["y"].passed is False
    assert v.outputs["y"].passed
    assert not hasattr(report.options, "disabled")  # the user's options: rerunning them redoes the rollback


def test_many_rewrites_one_culprit_costs_few_trials():
    """20 correct Relu->Abs rewrites (after Exp) and one wrong: ~2 log2(n) trials, the 20 stay."""
    nodes, acc = [], "x"
    for i in range(20):
        nodes += [helper.make_node("Exp", ["x"], [f"e{i}"], name=f"exp{i}"),
                  helper.make_node("Relu", [f"e{i}"], [f"r{i}"], name=f"relu{i}"),
                  helper.make_node("Add", [acc, f"r{i}"], [f"s{i}"], name=f"add{i}")]
        acc = f"s{i}"
        if i == 13:
            nodes += [helper.make_node("Relu", ["x"], ["bad"], name="relu_bad"),
                      helper.make_node("Add", [acc, "bad"], ["sb"], name="add_bad")]
            acc = "sb"
    nodes.append(helper.make_node("Identity", [acc], ["y"], name="out"))
    model = make_model(nodes, [("x", F, [4, 4])], [("y", F, [4, 4])], opset=14)
    _, report = fuser.optimize(model, passes=[FusionPass([BROKEN]), DeadCodeElimination()])
    v = report.validation
    assert [r.key for r in v.rolled_back] == ["broken_relu@bad"]
    assert len(report.fusions) == 20 and v.bisection.trials <= 12


def test_strict_fails_instead_of_rolling_back():
    with pytest.raises(ValidationFailed, match=r"--strict.*output 'y'") as info:
        fuser.optimize(planted_model(), passes=planted_passes(), strict=True)
    assert isinstance(info.value, ModelError)
    assert info.value.report.validation.status == "failed"
    assert info.value.report.validation.outputs["y"].passed is False


class BreakRelu:
    """A non-fusion pass that changes numerics (as a bad folding pass could): Relu -> Abs, unrecorded."""

    name = "bad-fold"
    requires = ()

    def run(self, graph, ctx) -> PassResult:
        changed = False
        for nid in list(graph.by_op.get("Relu", ())):
            graph.node(nid).op_type = "Abs"
            changed = True
        if changed:
            graph.by_op.setdefault("Abs", set()).update(graph.by_op.pop("Relu"))
        return PassResult(changed)


def test_non_fusion_pass_breaking_numerics_is_an_error():
    with pytest.raises(ValidationFailed, match="even with all 2 fusions rolled back.*non-fusion pass"):
        fuser.optimize(planted_model(), passes=[FusionPass(HSWISH), BreakRelu(), DeadCodeElimination()])
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = make_model(nodes, [("x", F, [4])], [("y", F, [4])], opset=14)
    with pytest.raises(ValidationFailed, match="no fusion was applied"):
        fuser.optimize(model, passes=[BreakRelu()])


def test_optimize_file_writes_nothing_when_validation_fails(tmp_path):
    src, dst = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(planted_model(), src)
    with pytest.raises(ValidationFailed):
        fuser.optimize_file(src, dst, fuser.Options(strict=True), passes=planted_passes())
    assert not dst.exists()
    report = fuser.optimize_file(src, dst, passes=planted_passes())
    assert dst.exists() and report.validation.status == "rolled-back"


def test_validation_off_and_skipped():
    _, report = fuser.optimize(planted_model(), passes=planted_passes(), validate=False)
    assert report.validation is None and len(report.fusions) == 5
    nodes = [helper.make_node("Frobnicate", ["x"], ["y"], name="custom", domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2])],
                              [helper.make_tensor_value_info("y", F, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    _, report = fuser.optimize(model)
    assert report.validation.status == "skipped" and "cannot load the model" in report.validation.summary
    assert any(w.startswith("validation skipped") for w in report.warnings)
    with pytest.raises(ValidationFailed, match="could not run"):
        fuser.optimize(model, strict=True)


# ------------------------------------------------------------------------------------------ comparison

def test_compare_tolerance_scales_with_reference():
    ref = np.array([1000.0, 1e-3, 0.0], dtype=np.float32)
    ok = compare([ref], [ref + np.array([0.05, 5e-5, 5e-5], dtype=np.float32)], atol=1e-4, rtol=1e-4)
    assert ok.passed and ok.max_abs == pytest.approx(0.05, rel=1e-3)  # 0.05 <= 1e-4 + 1e-4 * 1000
    # atol is relative to the output's scale (its largest magnitude): near zero in an output reaching 1000,
    # 2e-4 is rounding noise; in an output of scale 1 it is a mismatch
    assert compare([ref], [ref + np.array([0.0, 0.0, 2e-2], dtype=np.float32)], atol=1e-4, rtol=1e-4).passed
    small = np.array([1.0, 1e-3, 0.0], dtype=np.float32)
    bad = compare([small], [small + np.array([0.0, 0.0, 2e-4], dtype=np.float32)], atol=1e-4, rtol=1e-4)
    assert not bad.passed and bad.mismatches == 1 and bad.worst.index == 2 and bad.scale == 1.0
    assert bad.max_rel == 0.0  # relative error is over elements where the reference is nonzero


def test_compare_nan_inf_and_integers():
    ref = np.array([np.nan, np.inf, 1.0], dtype=np.float32)
    same = compare([ref], [ref.copy()], 1e-4, 1e-4)
    assert same.passed and (same.nan.reference, same.nan.optimized) == (1, 1) and same.inf.reference == 1
    new_nan = compare([ref], [np.array([np.nan, np.inf, np.nan], dtype=np.float32)], 1e-4, 1e-4)
    assert not new_nan.passed and (new_nan.nan.reference, new_nan.nan.optimized) == (1, 2)
    ints = compare([np.array([1, 2, 3])], [np.array([1, 2, 4])], 0.0, 0.0)
    assert not ints.passed and ints.mismatches == 1
    shape = compare([np.zeros((2, 3))], [np.zeros((3, 2))], 1.0, 1.0)
    assert not shape.passed and "shape" in shape.error
    cos = compare([np.array([1.0, 0.0])], [np.array([0.0, 1.0])], 10.0, 0.0)
    assert cos.passed and cos.cosine == 0.0


def test_per_output_and_global_tolerances():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ra"), helper.make_node("Relu", ["x"], ["b"], name="rb")]
    model = make_model(nodes, [("x", F, [64])], [("a", F, [64]), ("b", F, [64])], opset=14)
    # Abs differs from Relu by |x| on negatives (up to ~3): tolerate it on 'a' only
    with pytest.raises(ValidationFailed, match="output 'b'"):
        fuser.optimize(model, passes=[FusionPass([BROKEN])], strict=True, tolerances={"a": {"atol": 10.0}})
    _, report = fuser.optimize(model, passes=[FusionPass([BROKEN])], atol=10.0)
    assert report.validation.status == "passed" and report.validation.outputs["a"].atol == 10.0


def test_fp16_more_accurate_rewrite_passes_against_fp32_reference():
    """x + 1024 rounded through fp16, minus 1024, loses x's fraction; a rewrite to x is right, though it is
    far from the original (onnxruntime's CPU runs fp16 Add/Sub in fp32, so the rounding is an explicit Cast)."""
    pattern = op.Sub(op.Cast(op.Cast(op.Add(x, 1024.0), to=H), to=F), 1024.0)
    simplify = Rule(name="cancel_add_sub", family="cancel", emits="Identity", pattern=pattern,
                    rewrite=lambda m, b, _: b.op("Identity", m["x"]))
    nodes = [const("k", 1024.0), helper.make_node("Add", ["x", "k"], ["a"], name="add"),
             helper.make_node("Cast", ["a"], ["h"], name="to16", to=H),
             helper.make_node("Cast", ["h"], ["b"], name="to32", to=F),
             helper.make_node("Sub", ["b", "k"], ["y"], name="sub")]
    model = make_model(nodes, [("x", F, [256])], [("y", F, [256])], opset=14)
    optimized, report = fuser.optimize(model, passes=[FusionPass([simplify]), DeadCodeElimination()])
    stats = report.validation.outputs["y"]
    assert report.validation.status == "passed" and ops(optimized) == ["Identity"]
    assert stats.judged_by == "fp32-reference" and stats.max_abs > 0.1 and stats.mismatches > 0
    assert stats.fp32_reference.max_abs_optimized < 1e-3 < stats.fp32_reference.max_abs_original
    # a wrong rewrite of a low-precision model is still caught
    wrong = Rule(name="wrong_cancel", family="cancel", emits="Neg", pattern=pattern,
                 rewrite=lambda m, b, _: b.op("Neg", m["x"]))
    optimized, report = fuser.optimize(model, passes=[FusionPass([wrong]), DeadCodeElimination()])
    assert report.validation.status == "rolled-back" and "Neg" not in ops(optimized)


def test_upcast_to_fp32_model():
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=H), helper.make_node("Add", ["h", "w"], ["y"])]
    model = make_model(nodes, [("x", F, [2])], [("y", H, [2])], [("w", np.ones(2, np.float16))], opset=14)
    up = upcast_to_fp32(model)
    assert up.graph.output[0].type.tensor_type.elem_type == F and up.graph.initializer[0].data_type == F
    assert helper.get_attribute_value(up.graph.node[0].attribute[0]) == F
    onnx.checker.check_model(up, full_check=True)


# ------------------------------------------------------------------------------------------ inputs

def id_mask_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["g"]),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=F),
             helper.make_node("Unsqueeze", ["mf", "ax"], ["mu"]),
             helper.make_node("Mul", ["g", "mu"], ["y"])]
    emb = np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32)
    return make_model(nodes, [("input_ids", TensorProto.INT64, ["batch", "seq"]),
                              ("attention_mask", TensorProto.INT64, ["batch", "seq"])],
                      [("y", F, ["batch", "seq", 4])], [("emb", emb), ("ax", np.array([-1]))], opset=14)


def test_random_inputs_ids_masks_and_dims():
    model = id_mask_model()
    feeds = random_feeds(model, seed=3, vocab_size=100)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.shape == mask.shape == (1, 16) and ids.dtype == np.int64  # batch 1, other dims 16, shared 'seq'
    assert ids.min() >= 0 and ids.max() < 100 and set(np.unique(mask)) <= {0, 1} and (mask[:, 0] == 1).all()
    small = random_feeds(model, {"input_ids": (2, 5)}, vocab_size=7)
    assert small["input_ids"].shape == small["attention_mask"].shape == (2, 5)  # symbols bind across inputs
    assert small["input_ids"].max() < 7
    np.testing.assert_array_equal(random_feeds(model, seed=3)["input_ids"], ids)  # seeded
    image = make_model([helper.make_node("Relu", ["img"], ["y"])], [("img", F, ["N", 3, "H", "W"])],
                       [("y", F, ["N", 3, "H", "W"])], opset=14)
    assert resolve_shapes(input_specs(image)) == {"img": (1, 3, 224, 224)}


def test_bad_shapes_are_usage_errors():
    specs = input_specs(id_mask_model())
    with pytest.raises(UsageError, match="not an input"):
        resolve_shapes(specs, {"nope": (1,)})
    with pytest.raises(UsageError, match="rank 3"):
        resolve_shapes(specs, {"input_ids": (1, 2, 3)})
    fixed = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [1, 3])], [("y", F, [1, 3])])
    with pytest.raises(UsageError, match="fixed at 3"):
        resolve_shapes(input_specs(fixed), {"x": (1, 4)})
    assert parse_shape("ids:1x128") == ("ids", (1, 128))
    with pytest.raises(UsageError):
        parse_shape("ids=1x128")


def test_user_inputs_npz_and_pb_folders(tmp_path):
    model = id_mask_model()
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    np.savez(tmp_path / "data.npz", input_ids=ids, attention_mask=np.ones((1, 3), np.int32))
    (feeds,) = load_feed_sets(tmp_path / "data.npz", model)
    assert feeds["attention_mask"].dtype == np.int64  # converted to the input's type
    for k, n in enumerate((3, 5)):
        d = tmp_path / "tests" / f"test_data_set_{k}"
        d.mkdir(parents=True)
        for i, (name, value) in enumerate((("input_ids", np.zeros((1, n), np.int64)),
                                           ("attention_mask", np.ones((1, n), np.int64)))):
            (d / f"input_{i}.pb").write_bytes(numpy_helper.from_array(value, name).SerializeToString())
    sets = load_feed_sets(tmp_path / "tests", model)
    assert [s["input_ids"].shape for s in sets] == [(1, 3), (1, 5)]
    _, report = fuser.optimize(model, inputs_path=str(tmp_path / "tests"))
    assert report.validation.shapes == [{"input_ids": [1, 3], "attention_mask": [1, 3]},
                                           {"input_ids": [1, 5], "attention_mask": [1, 5]}]
    np.savez(tmp_path / "bad.npz", input_ids=ids)
    with pytest.raises(UsageError, match="lacks input"):
        load_feed_sets(tmp_path / "bad.npz", model)


def test_several_validation_shapes():
    _, report = fuser.optimize(id_mask_model(), validation_shapes=({"input_ids": (1, 4)}, {"input_ids": (3, 9)}))
    v = report.validation
    assert [s["input_ids"] for s in v.shapes] == [[1, 4], [3, 9]]
    assert v.outputs["y"].elements == 1 * 4 * 4 + 3 * 9 * 4 and "2 input sets" in v.summary


def test_external_data_models_validate(tmp_path):
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"), *CONSTS, *hswish_nodes(0, "mm")]
    model = make_model(nodes, [("x", F, [2, 64])], [("h0", F, [2, 64])], [("w", w)], opset=14)
    src = tmp_path / "m.onnx"
    onnx.save_model(model, src, save_as_external_data=True, location="m.data", size_threshold=0)
    report = fuser.optimize_file(src, tmp_path / "out.onnx")
    assert report.validation.status == "passed" and report.fusion_counts == {"hswish": 1}
    optimized, report = fuser.optimize(src)  # in memory: the optimized model points at m.data
    assert report.validation.status == "passed"
    assert optimized.graph.initializer[0].data_location == TensorProto.EXTERNAL


def test_models_over_the_protobuf_limit_go_through_a_file(tmp_path, monkeypatch):
    import fuser.validation.engines

    monkeypatch.setattr(fuser.validation.engines, "INLINE_LIMIT", 0)  # as if every model were over 2 GB
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"), *CONSTS, *hswish_nodes(0, "mm")]
    model = make_model(nodes, [("x", F, [2, 64])], [("h0", F, [2, 64])], [("w", w)], opset=14)
    _, report = fuser.optimize(model, passes=[FusionPass([*HSWISH, BROKEN]), DeadCodeElimination()])
    assert report.validation.status == "passed" and report.fusion_counts == {"hswish": 1}


def test_inputs_fuser_cannot_make_skip_validation():
    """A map input (ai.onnx.ml) cannot be generated; bfloat16 inputs can (validated with onnx.reference)."""
    nodes = [helper.make_node("DictVectorizer", ["x"], ["y"], domain="ai.onnx.ml", string_vocabulary=["a", "b"])]
    graph = helper.make_graph(nodes, "g", [helper.make_value_info("x", helper.make_map_type_proto(
        TensorProto.STRING, helper.make_tensor_type_proto(F, [])))], [helper.make_tensor_value_info("y", F, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    _, report = fuser.optimize(model)
    assert report.validation.status == "skipped" and "'x' is a map" in report.validation.reason
