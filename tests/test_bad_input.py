"""Every bad input: one clear line on stderr, the documented exit code, no traceback, nothing written,
and the input byte-for-byte unchanged."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T, helper, numpy_helper

from fuser.cli import main

from builders import make_model

F = T.FLOAT


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).exists() else None


def small_model(opset=13):
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [2])], [("y", F, [2])], opset=opset)


def run_cli(tmp_path, model_path, *args):
    out = tmp_path / "out.onnx"
    before = digest(model_path)
    result = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(out), *args])
    assert digest(model_path) == before, "the input file was modified"
    assert not out.exists(), "an output was written for a failed run"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")], "a temporary file was left"
    assert "Traceback" not in result.output
    return result


def expect_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("fuser: error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_file(tmp_path):
    expect_error(run_cli(tmp_path, tmp_path / "nope.onnx"), 2, "no such file")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    expect_error(run_cli(tmp_path, p), 1, "empty")


def test_garbage_file(tmp_path):
    p = tmp_path / "garbage.onnx"
    p.write_bytes(os.urandom(64) + b"\xff\xff\xff")
    expect_error(run_cli(tmp_path, p), 1, "ONNX")  # either "not a valid ONNX file" or "holds no ONNX graph"


def test_truncated_file(tmp_path):
    p = tmp_path / "truncated.onnx"
    data = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [64])], [("y", F, [64])],
                      [("w", np.ones(64, np.float32))]).SerializeToString()
    p.write_bytes(data[: len(data) // 2])
    expect_error(run_cli(tmp_path, p), 1, "not a valid ONNX file")


def test_protobuf_that_is_not_a_model(tmp_path):
    p = tmp_path / "tensor.onnx"
    p.write_bytes(numpy_helper.from_array(np.ones(8, np.float32), "t").SerializeToString())
    expect_error(run_cli(tmp_path, p), 1)


def test_missing_external_data_file(tmp_path):
    p = tmp_path / "ext.onnx"
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [1024])], [("y", F, [1024])],
                       [("w", np.ones(1024, np.float32))])
    onnx.save(model, p, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    expect_error(run_cli(tmp_path, p), 1, "ext.onnx.data", "missing")


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [4])], [("y", F, [4])],
                       [("w", np.ones(4, np.float32))])
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = T.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    sub = tmp_path / "m"
    sub.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 16)
    p = sub / "escape.onnx"
    p.write_bytes(model.SerializeToString())
    result = CliRunner().invoke(main, ["optimize", str(p), "-o", str(sub / "out.onnx")])
    expect_error(result, 1, location)
    assert "outside" in result.output or "absolute" in result.output


def test_symlink_pointing_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    sub = tmp_path / "m"
    sub.mkdir()
    (sub / "w.bin").symlink_to(tmp_path / "secret.bin")
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [4])], [("y", F, [4])],
                       [("w", np.ones(4, np.float32))])
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = T.EXTERNAL
    for k, v in (("location", "w.bin"), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    p = sub / "link.onnx"
    p.write_bytes(model.SerializeToString())
    result = CliRunner().invoke(main, ["optimize", str(p), "-o", str(sub / "out.onnx")])
    expect_error(result, 1, "outside the model's folder")


def test_cyclic_graph(tmp_path):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"), helper.make_node("Neg", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2])],
                              [helper.make_tensor_value_info("y", F, [2])])
    p = tmp_path / "cycle.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), p)
    expect_error(run_cli(tmp_path, p), 1, "cycle", "first", "second")


def test_duplicate_value_names(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="one"), helper.make_node("Neg", ["x"], ["a"], name="two"),
             helper.make_node("Abs", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2])],
                              [helper.make_tensor_value_info("y", F, [2])])
    p = tmp_path / "dup.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), p)
    expect_error(run_cli(tmp_path, p), 1, "produced twice", "one", "two")


def test_duplicate_output_names(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", F, [2])],
                              [helper.make_tensor_value_info("y", F, [2])] * 2)
    p = tmp_path / "dupout.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), p)
    expect_error(run_cli(tmp_path, p), 1, "listed twice")


@pytest.mark.parametrize("opset", [0, onnx.defs.onnx_opset_version() + 1, 100])
def test_opset_neither_onnx_nor_onnxruntime_knows(tmp_path, opset):
    """Opsets onnx or onnxruntime knows are read (tests/test_validation_inputs.py); others are refused."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", F, [2])], [helper.make_tensor_value_info("y", F, [2])])
    p = tmp_path / "opset.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), p)
    expect_error(run_cli(tmp_path, p), 1, f"opset {opset}", f"onnx knows opsets 1..{onnx.defs.onnx_opset_version()}")


def test_unknown_rule_is_a_usage_error(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    expect_error(run_cli(tmp_path, p, "--rules", "no-such-rule"), 2, "no-such-rule")


def test_target_opset_out_of_range_is_a_usage_error(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    expect_error(run_cli(tmp_path, p, "--target-opset", "28"), 2, "28")


def test_output_onto_the_input_is_refused(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    before = digest(p)
    result = CliRunner().invoke(main, ["optimize", str(p), "-o", str(p)])
    expect_error(result, 2, "overwrite the input")
    assert digest(p) == before


def test_real_process_prints_one_line_and_no_traceback(tmp_path):
    p = tmp_path / "garbage.onnx"
    p.write_bytes(b"this is not onnx at all")
    proc = subprocess.run([sys.executable, "-m", "fuser", "optimize", str(p), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("fuser: error:")
    assert "Traceback" not in proc.stderr + proc.stdout
