"""Validation that runs (issue 11): inputs that make sense to the model, other guesses of its dynamic dims, the
user's own data (bad data is a usage error), onnx.reference where onnxruntime cannot run a model, sequence
outputs compared element by element, and an opset gate that does not refuse what onnxruntime runs.

Every model here is real ONNX run by real onnxruntime / onnx.reference sessions through `fuser.optimize` or
the CLI; each case skipped validation (or crashed, or was refused) before this was fixed.
"""

from __future__ import annotations

import zipfile

import numpy as np
import onnx
import pytest
from builders import const, make_model
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from test_bad_input import expect_error, run_cli

import fuser
from fuser.cli import main
from fuser.validation.inputs import random_feeds

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def validation(model, **options) -> dict:
    _, report = fuser.optimize(model, **options)
    return report.validation


def assert_validated(model, engine="onnxruntime", **options) -> dict:
    v = validation(model, **options)
    assert v.status == "passed", v.reason or v.summary
    assert v.engine == engine
    return v


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


# ------------------------------------------------------------------ inputs that make sense to their consumers

CONSUMERS = {  # name -> (nodes, inputs, outputs, opset): a graph input feeds the slot that constrains it
    "gather-indices": ([node("Gather", ["data", "indices"])],
                       [("data", F, [5, 4]), ("indices", I64, ["n"])], [("y", F, ["n", 4])], 13),
    "gather-axis-1": ([node("Gather", ["data", "idx"], axis=1)],
                      [("data", F, [3, 7]), ("idx", I64, ["n", 2])], [("y", F, [3, "n", 2])], 13),
    "gather-elements": ([node("GatherElements", ["data", "idx"], axis=1)],
                        [("data", F, [4, 3]), ("idx", I64, [4, 3])], [("y", F, [4, 3])], 13),
    "gather-nd": ([node("GatherND", ["data", "idx"])],
                  [("data", F, [3, 4, 5]), ("idx", I64, ["n", 2])], [("y", F, ["n", 5])], 13),
    "scatter-nd": ([node("ScatterND", ["data", "idx", "upd"])],
                   [("data", F, [4, 5]), ("idx", I64, [3, 1]), ("upd", F, [3, 5])], [("y", F, [4, 5])], 13),
    "scatter-elements": ([node("ScatterElements", ["data", "idx", "upd"], axis=0)],
                         [("data", F, [4, 3]), ("idx", I64, [2, 3]), ("upd", F, [2, 3])], [("y", F, [4, 3])], 13),
    "one-hot-depth-input": ([const("values", [0.0, 1.0]), node("OneHot", ["indices", "depth", "values"])],
                            [("indices", I64, [6]), ("depth", I64, [])], [("y", F, [6, "d"])], 13),
    "top-k": ([node("TopK", ["x", "k"], ["v", "i"])],
              [("x", F, [2, 5]), ("k", I64, [1])], [("v", F, [2, "k"]), ("i", I64, [2, "k"])], 13),
    "reshape-shape": ([node("Reshape", ["x", "shape"])],
                      [("x", F, [2, 3, 4]), ("shape", I64, [3])], [("y", F, ["a", "b", "c"])], 13),
    "expand-shape": ([node("Expand", ["x", "shape"])],
                     [("x", F, [3, 1]), ("shape", I64, [2])], [("y", F, ["a", "b"])], 13),
    "constant-of-shape": ([node("ConstantOfShape", ["shape"])],
                          [("shape", I64, [2])], [("y", F, ["a", "b"])], 13),
    "tile-repeats": ([node("Tile", ["x", "repeats"])],
                     [("x", F, [2, 3]), ("repeats", I64, [2])], [("y", F, ["a", "b"])], 13),
    "slice-axes-steps": ([node("Slice", ["x", "starts", "ends", "axes", "steps"])],
                         [("x", F, [5, 6]), ("starts", I64, [2]), ("ends", I64, [2]), ("axes", I64, [2]),
                          ("steps", I64, [2])], [("y", F, ["a", "b"])], 13),
    "resize-scales": ([node("Resize", ["x", "", "scales"], mode="linear")],
                      [("x", F, [1, 1, 4, 4]), ("scales", F, [4])], [("y", F, ["n", "c", "h", "w"])], 13),
    "resize-sizes": ([node("Resize", ["x", "", "", "sizes"])],
                     [("x", F, [1, 1, 4, 4]), ("sizes", I64, [4])], [("y", F, ["n", "c", "h", "w"])], 13),
    "reduce-axes": ([node("ReduceSum", ["x", "axes"])],
                    [("x", F, [3, 4, 5]), ("axes", I64, [2])], [("y", F, ["a", "b", "c"])], 13),
    "unsqueeze-axes": ([node("Unsqueeze", ["x", "axes"])],
                       [("x", F, [3, 4]), ("axes", I64, [2])], [("y", F, ["a", "b", "c", "d"])], 13),
    "squeeze-axes": ([node("Squeeze", ["x", "axes"])],
                     [("x", F, [3, 1, 4, 1]), ("axes", I64, [2])], [("y", F, ["a", "b"])], 13),
    "split-sizes": ([node("Split", ["x", "split"], ["a", "b", "c"])],
                    [("x", F, [6, 2]), ("split", I64, [3])], [("a", F, ["a", 2]), ("b", F, ["b", 2]), ("c", F, ["c", 2])], 13),
    "reflect-pad": ([node("Pad", ["x", "pads"], mode="reflect")],
                    [("x", F, [2, 3]), ("pads", I64, [4])], [("y", F, ["a", "b"])], 13),
    "integer-mod": ([node("Mod", ["a", "b"])],
                    [("a", I64, [8]), ("b", I64, [8])], [("y", I64, [8])], 13),
    "cumsum-axis": ([node("CumSum", ["x", "axis"])],
                    [("x", F, [3, 4]), ("axis", I64, [])], [("y", F, [3, 4])], 13),
    "bool-scalar": ([node("Not", ["c"])], [("c", B, [])], [("y", B, [])], 13),
    "declared-zero-dim": ([node("Relu", ["x"])], [("x", F, [0, 3])], [("y", F, [0, 3])], 13),
    "dropout-ratio-and-mode": ([node("Dropout", ["x", "ratio", "training"])],
                               [("x", F, [4, 5]), ("ratio", F, []), ("training", B, [])], [("y", F, [4, 5])], 13),
    "nms-iou": ([node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score"])],
                [("boxes", F, [1, 3, 4]), ("scores", F, [1, 1, 3]), ("max_out", I64, [1]), ("iou", F, [1]),
                 ("score", F, [1])], [("y", I64, ["n", 3])], 13),
    "index-through-a-cast": ([node("Cast", ["pos"], ["p64"], to=I64), node("Gather", ["table", "p64"])],
                             [("table", F, [7, 2]), ("pos", TensorProto.INT32, ["n"])], [("y", F, ["n", 2])], 13),
}


def consumer_model(name: str) -> onnx.ModelProto:
    nodes, inputs, outputs, opset = CONSUMERS[name]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("name", sorted(CONSUMERS))
def test_random_inputs_make_sense_to_their_consumers(name):
    """onnxruntime runs the model on fuser's random inputs, so validation runs (it was skipped before)."""
    assert_validated(consumer_model(name))


def test_index_and_shape_values_stay_within_what_they_index():
    feeds = random_feeds(consumer_model("gather-indices"), {"indices": (64,)}, seed=1)
    assert 0 <= feeds["indices"].min() and feeds["indices"].max() == 4  # named like ids, yet within data's 5 rows
    nd = random_feeds(consumer_model("gather-nd"), {"idx": (64, 2)})["idx"]  # column j indexes data dim j: 3, then 4
    assert nd[:, 0].max() < 3 and nd[:, 1].max() < 4 and nd[:, 1].max() >= 3
    assert random_feeds(consumer_model("reshape-shape"))["shape"].tolist() == [2, 3, 4]
    assert sorted(random_feeds(consumer_model("split-sizes"))["split"].tolist()) == [2, 2, 2]
    scalar = random_feeds(consumer_model("bool-scalar"))["c"]
    assert isinstance(scalar, np.ndarray) and scalar.shape == () and scalar.dtype == np.bool_  # never np.bool_
    assert random_feeds(consumer_model("declared-zero-dim"))["x"].shape == (0, 3)
    assert random_feeds(consumer_model("dropout-ratio-and-mode"))["training"] == np.array(False)


# ------------------------------------------------------------------ other guesses of the dynamic dims


def reshape_needs_48() -> onnx.ModelProto:
    """A paddle2onnx OCR recognizer's shape: Reshape to [N, 3 * 48, -1] works only where 3 * H * W / 144 is whole."""
    nodes = [const("shape", [0, 144, -1], np.int64), node("Reshape", ["x", "shape"], ["r"]), node("Relu", ["r"])]
    return make_model(nodes, [("x", F, ["N", 3, "H", "W"])], [("y", F, ["N", 144, "L"])])


def test_a_model_failing_on_the_first_guess_is_run_on_other_sizes():
    v = assert_validated(reshape_needs_48())
    assert v.shapes == [{"x": [1, 3, 48, 48]}]
    assert any("failed on inputs x:1x3x224x224" in n and "x:1x3x48x48" in n for n in v.notes)
    assert "of shapes x:1x3x48x48 (the first guess, x:1x3x224x224, did not run)" in v.summary


def test_audio_with_a_reflect_pad_longer_than_the_default_length():
    nodes = [const("pads", [0, 20, 0, 20], np.int64), node("Pad", ["x", "pads"], mode="reflect")]
    model = make_model(nodes, [("x", F, [1, "samples"])], [("y", F, [1, "out"])])
    assert assert_validated(model).shapes == [{"x": [1, 32]}]


def test_guesses_are_bounded_and_the_skip_says_why():
    nodes = [const("shape", [7, 11, 13, -1], np.int64), node("Reshape", ["x", "shape"])]
    model = make_model(nodes, [("x", F, ["T"])], [("y", F, [7, 11, 13, "r"])])
    v = validation(model)
    assert v.status == "skipped"
    assert "on inputs x:1" in v.reason and "nor on 10 other guesses of its dynamic dims" in v.reason


def test_explicit_shapes_are_not_second_guessed():
    v = validation(reshape_needs_48(), input_shapes={"x": (1, 3, 224, 224)})
    assert v.status == "skipped" and "other guesses" not in v.reason


# ------------------------------------------------------------------ the user's data


def id_model() -> onnx.ModelProto:
    nodes = [node("Gather", ["emb", "ids"], ["g"]), node("Relu", ["g"])]
    emb = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    return make_model(nodes, [("ids", I64, [1, "seq"])], [("y", F, [1, "seq", 4])], [("emb", emb)])


def bad_inputs(tmp_path) -> dict[str, tuple]:
    """name -> (path to pass as --inputs, a fragment of the one-line error)."""
    garbage_zip = tmp_path / "garbage.npz"
    garbage_zip.write_bytes(b"PK\x03\x04" + b"\x00garbage" * 20)
    npy = tmp_path / "ids.npy"
    np.save(npy, np.zeros((1, 3), np.int64))
    cases = {"garbage-zip": (garbage_zip, "not a .npz file"), "npy": (npy, "is a .npy file")}
    for name, arrays, fragment in (
            ("strings", {"ids": np.array([["a", "b"]])}, "cannot be cast"),
            ("wrong-name", {"tokens": np.zeros((1, 3), np.int64)}, "'tokens', not inputs of the model"),
            ("wrong-rank", {"ids": np.zeros((3,), np.int64)}, "rank 1"),
            ("wrong-static-dim", {"ids": np.zeros((2, 3), np.int64)}, "axis 0 is fixed at 1"),
            ("floats-for-ids", {"ids": np.full((1, 3), 1.5)}, "cannot be cast"),
            ("ids-too-wide", {"ids": np.full((1, 3), 2**63 + 5, np.uint64)}, "cannot be cast")):
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        cases[name] = (path, fragment)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, ids=np.array([{"a": 1}], dtype=object))
    cases["pickled-objects"] = (pickled, "Python objects")
    return cases


BAD = ("garbage-zip", "npy", "strings", "wrong-name", "wrong-rank", "wrong-static-dim", "floats-for-ids",
       "ids-too-wide", "pickled-objects")


@pytest.mark.parametrize("case", BAD)
def test_bad_user_data_is_a_usage_error(tmp_path, case):
    model_path = tmp_path / "m.onnx"
    onnx.save(id_model(), model_path)
    path, fragment = bad_inputs(tmp_path)[case]
    expect_error(run_cli(tmp_path, model_path, "--inputs", str(path)), 2, fragment)


def sequence_of(elem_type, shape):
    return helper.make_sequence_type_proto(helper.make_tensor_type_proto(elem_type, shape))


def graph_model(nodes, inputs, outputs, opset=14) -> onnx.ModelProto:
    """`inputs`/`outputs`: (name, TypeProto) pairs, so sequences can be graph inputs and outputs."""
    graph = helper.make_graph(nodes, "g", [helper.make_value_info(n, t) for n, t in inputs],
                              [helper.make_value_info(n, t) for n, t in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_onnx_test_data_folder_with_a_sequence_input(tmp_path):
    nodes = [node("SequenceAt", ["seq", "pos"], ["t"]), node("Relu", ["t"])]
    model = graph_model(nodes, [("seq", sequence_of(F, [2])), ("pos", helper.make_tensor_type_proto(I64, []))],
                        [("y", helper.make_tensor_type_proto(F, [2]))])
    folder = tmp_path / "case" / "test_data_set_0"
    folder.mkdir(parents=True)
    elements = [np.array([1.0, -2.0], np.float32), np.array([-3.0, 4.0], np.float32)]
    (folder / "input_0.pb").write_bytes(numpy_helper.from_list(elements, "seq").SerializeToString())
    (folder / "input_1.pb").write_bytes(numpy_helper.from_array(np.array(1, np.int64), "pos").SerializeToString())
    v = assert_validated(model, inputs_path=str(tmp_path / "case"))
    assert v.outputs["y"].elements == 2
    assert assert_validated(model).shapes[0]["pos"] == []  # random: a position within the 3 generated tensors


def test_a_model_without_inputs_takes_an_empty_test_data_folder(tmp_path):
    model = make_model([const("c", [1.0, 2.0]), node("Relu", ["c"])], [], [("y", F, [2])])
    (tmp_path / "test_data_set_0").mkdir()
    assert_validated(model, inputs_path=str(tmp_path))


# ------------------------------------------------------------------ onnx.reference where onnxruntime cannot


def test_bfloat16_inputs_are_validated_with_onnx_reference():
    nodes = [node("Cast", ["x"], ["xf"], to=F), node("Relu", ["xf"])]
    model = make_model(nodes, [("x", TensorProto.BFLOAT16, [2, 3])], [("y", F, [2, 3])], opset=14)
    v = assert_validated(model, engine="reference")
    assert "with onnx.reference" in v.summary and any("onnxruntime cannot take" in n for n in v.notes)


def test_an_op_version_onnxruntime_lacks_is_validated_with_onnx_reference():
    """Opset-6 Add (broadcast attribute): onnxruntime has no kernel; onnx.reference runs it."""
    nodes = [node("Add", ["x", "b"], ["s"], broadcast=1), node("Relu", ["s"])]
    model = make_model(nodes, [("x", F, [2, 3])], [("y", F, [2, 3])], [("b", np.ones(3, np.float32))], opset=6)
    v = assert_validated(model, engine="reference")
    assert any("onnxruntime cannot load the model" in n for n in v.notes)


def test_unseeded_random_ops_skip_validation_and_say_why():
    model = make_model([node("RandomUniformLike", ["x"])], [("x", F, [4])], [("y", F, [4])])
    v = validation(model)
    assert v.status == "skipped" and "RandomUniformLike without a seed" in v.reason


# ------------------------------------------------------------------ sequence outputs


def hardswish_nodes(src: str, out: str) -> list:
    return [const("three", 3.0), const("zero", 0.0), const("six", 6.0),
            node("Add", [src, "three"], ["a"]), node("Clip", ["a", "zero", "six"], ["c"]),
            node("Mul", [src, "c"], ["m"]), node("Div", ["m", "six"], [out])]


def test_an_exact_fusion_feeding_a_sequence_output_is_kept():
    """Sequences are compared element by element with the element's fp32 tolerance (they had tolerance 0)."""
    nodes = [*hardswish_nodes("x", "h"), node("SequenceConstruct", ["h", "x"], ["seq"])]
    model = graph_model(nodes, [("x", helper.make_tensor_type_proto(F, [4, 8]))], [("seq", sequence_of(F, [4, 8]))])
    _, report = fuser.optimize(model)
    assert report.fusion_counts == {"hswish": 1}
    v = report.validation
    assert v.status == "passed", v.summary
    assert v.outputs["seq"].atol == 1e-4 and v.outputs["seq"].elements == 64


def test_a_ragged_sequence_output_is_compared_not_crashed():
    nodes = [const("split", [1, 3], np.int64), node("SplitToSequence", ["x", "split"], ["seq"])]
    model = graph_model(nodes, [("x", helper.make_tensor_type_proto(F, [4, 2]))], [("seq", sequence_of(F, None))])
    v = assert_validated(model)
    assert v.outputs["seq"].elements == 8


# ------------------------------------------------------------------ the opset gate


def save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


def test_an_opset_6_model_onnxruntime_runs_is_optimized_and_validated(tmp_path):
    model = make_model([node("Relu", ["x"], ["r"]), node("Sigmoid", ["r"])], [("x", F, [2, 3])],
                       [("y", F, [2, 3])], opset=6)
    result = CliRunner().invoke(main, ["optimize", str(save(tmp_path, model)), "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 0, result.output
    assert "validation: passed" in result.output


def test_a_model_importing_only_ai_onnx_ml_is_not_opset_1(tmp_path):
    graph = helper.make_graph([helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5)],
                              "ml", [helper.make_tensor_value_info("x", F, [3])],
                              [helper.make_tensor_value_info("y", F, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    result = CliRunner().invoke(main, ["optimize", str(save(tmp_path, model)), "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 0, result.output
    assert "opset 1" not in result.output and "validation: passed" in result.output


def test_an_opset_onnx_knows_but_onnxruntime_does_not_is_validated_with_onnx_reference():
    newest = onnx.defs.onnx_opset_version()
    model = make_model([node("Relu", ["x"])], [("x", F, [2])], [("y", F, [2])], opset=newest)
    v = assert_validated(model, engine="reference")
    assert v.summary.endswith(")") and "with onnx.reference" in v.summary


def test_an_opset_neither_onnx_nor_onnxruntime_knows_is_refused(tmp_path):
    graph = helper.make_graph([node("Relu", ["x"])], "g", [helper.make_tensor_value_info("x", F, [2])],
                              [helper.make_tensor_value_info("y", F, [2])])
    opset = onnx.defs.onnx_opset_version() + 1
    path = save(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    expect_error(run_cli(tmp_path, path), 1, f"opset {opset}", "onnxruntime cannot load it")


def test_test_data_readers_reject_a_file_that_is_not_a_proto(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "input_0.pb").write_bytes(b"\xff\xff\xff\xff not a protobuf")
    model_path = save(tmp_path, id_model())
    expect_error(run_cli(tmp_path, model_path, "--inputs", str(folder)), 2, "input_0.pb")


def test_a_zip_that_is_not_numpy_is_a_usage_error(tmp_path):
    path = tmp_path / "other.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ids.txt", "1 2 3")
    expect_error(run_cli(tmp_path, save(tmp_path, id_model()), "--inputs", str(path)), 2, str(path))


def test_an_fp32_output_computed_in_bfloat16_is_compared_at_bfloat16s_precision():
    """A bf16 LayerNorm between Casts (fp32 I/O): onnxruntime has no bf16 Sub/Div, so onnx.reference validates;
    the fused op differs from the decomposed one by bf16 rounding, which fp32's tolerance would call a change."""
    from test_rule_layernorm import BETA, BF, GAMMA, ln_model

    _, report = fuser.optimize(ln_model(elem=BF, mixed="before", gamma=GAMMA, beta=BETA, wrap_bf16=True))
    v = report.validation
    assert v.status == "passed" and v.engine == "reference", v.summary
    assert report.fusion_counts == {"layernorm": 1}
    assert v.outputs["y_out"].atol == 2e-2 and any("computed in bfloat16" in n for n in v.notes)
