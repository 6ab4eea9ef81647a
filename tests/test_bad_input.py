"""Every bad input, and the paths that would destroy one: one clear line on stderr, the documented exit code,
no traceback, nothing written, the input byte-for-byte unchanged.

    model files       missing, empty, garbage, truncated, not a model, a directory, unreadable, cyclic, duplicate
                      names, an opset nothing runs, an empty graph
    external data     missing, outside the model's folder, a symlink out, truncated, malformed entries, over 2 GB
                      without --no-external-data
    output paths      onto the input or its data files, a directory, a missing folder
    options           an unknown rule, a target opset out of range

Exit codes themselves are tests/test_exit_codes.py.
"""

from __future__ import annotations

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

import fuser
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


def folder_digest(folder: Path) -> dict:
    return {p.name: digest(p) for p in sorted(folder.iterdir()) if p.is_file()}


def external_model(folder: Path, name="model.onnx", location="model.onnx.data") -> Path:
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [1024])], [("y", F, [1024])],
                       [("w", np.arange(1024, dtype=np.float32))])
    path = folder / name
    onnx.save(model, path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def raw_external_model(folder: Path, entries, dims=(4,)) -> Path:
    """A model whose weight `w` has exactly these external_data entries (as a hostile file could)."""
    tensor = onnx.TensorProto(name="w", data_type=F, dims=list(dims), data_location=T.EXTERNAL)
    for k, v in entries:
        e = tensor.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", F, list(dims))],
                              [helper.make_tensor_value_info("y", F, list(dims))], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = folder / "raw.onnx"
    path.write_bytes(model.SerializeToString())
    return path


# ------------------------------------------------------------------------------ paths
def test_optimize_a_directory(tmp_path):
    d = tmp_path / "dir.onnx"
    d.mkdir()
    (d / "inside.onnx").write_bytes(small_model().SerializeToString())
    result = CliRunner().invoke(main, ["optimize", str(d), "-o", str(tmp_path / "out.onnx")])
    expect_error(result, 2, "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.onnx"] and len(list(d.iterdir())) == 1


def test_output_is_a_directory(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    target = tmp_path / "outdir"
    target.mkdir()
    before = digest(p)
    result = CliRunner().invoke(main, ["optimize", str(p), "-o", str(target)])
    expect_error(result, 2, "is a directory")
    assert list(target.iterdir()) == [] and digest(p) == before
    assert not [q for q in tmp_path.iterdir() if q.name.endswith(".tmp")], "a temporary file was left"


def test_output_folder_does_not_exist(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    result = CliRunner().invoke(main, ["optimize", str(p), "-o", str(tmp_path / "nope" / "o.onnx")])
    expect_error(result, 2, "does not exist")
    assert not (tmp_path / "nope").exists()


def test_report_path_is_a_directory(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    (tmp_path / "r").mkdir()
    result = CliRunner().invoke(main, ["optimize", str(p), "-o", str(tmp_path / "o.onnx"), "--report",
                                       str(tmp_path / "r")])
    assert result.exit_code == 2 and "directory" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    p.chmod(0)
    try:
        result = run_cli(tmp_path, p)
        assert result.exit_code in (1, 2) and "Traceback" not in result.output
    finally:
        p.chmod(0o644)


# ------------------------------------------------------------------------------ external data
def test_truncated_external_data_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = external_model(src)
    with open(src / "model.onnx.data", "r+b") as f:
        f.truncate(1000)  # declared: 4096 bytes
    before = folder_digest(src)
    expect_error(run_cli(tmp_path, path), 1, "runs past the end", "model.onnx.data", "truncated")
    assert folder_digest(src) == before


@pytest.mark.parametrize("entries, fragment", [
    ([("location", "w.bin"), ("offset", "abc"), ("length", "16")], "offset 'abc', not an integer"),
    ([("location", "w.bin"), ("offset", "0"), ("length", "1e3")], "length '1e3', not an integer"),
    ([("location", "w.bin"), ("offset", "-8"), ("length", "16")], "negative offset"),
    ([("location", "w.bin"), ("offset", "0"), ("length", "8")], "is 8 bytes but"),
    ([("location", "w.bin"), ("offset", "16")], "is 48 bytes but"),  # no length: to the end of the file
    ([("location", "w.bin\0../../etc/passwd")], "NUL byte"),
    ([("location", "sub")], "missing"),  # a folder, not a file
], ids=["offset-not-int", "length-not-int", "negative-offset", "too-short-for-shape", "too-long-to-eof",
        "nul-byte", "location-is-a-folder"])
def test_malformed_external_data_entries(tmp_path, entries, fragment):
    """Untrusted external-data metadata is a model error with its reason, never an internal error."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"\0" * 64)
    (src / "sub").mkdir()
    path = raw_external_model(src, entries)
    before = folder_digest(src)
    expect_error(run_cli(tmp_path, path), 1, fragment)
    assert folder_digest(src) == before


def test_output_onto_the_inputs_external_data_file_is_refused(tmp_path):
    """Writing OUT over the input's weights file would modify the input: refused."""
    src = tmp_path / "src"
    src.mkdir()
    path = external_model(src, location="weights.bin")
    before = folder_digest(src)
    result = CliRunner().invoke(main, ["optimize", str(path), "-o", str(src / "weights.bin")])
    expect_error(result, 2, "one of the input's files")
    assert folder_digest(src) == before


def test_output_data_file_colliding_with_the_inputs_is_refused(tmp_path):
    """OUT.data would replace the input's data file (input saved with location 'out.onnx.data')."""
    src = tmp_path / "src"
    src.mkdir()
    path = external_model(src, location="out.onnx.data")
    before = folder_digest(src)
    result = CliRunner().invoke(main, ["optimize", str(path), "-o", str(src / "out.onnx"), "--external-data"])
    expect_error(result, 2, "out.onnx.data", "one of the input's files")
    assert folder_digest(src) == before
    assert not (src / "out.onnx").exists()


def test_over_2gb_without_external_data_leaves_nothing_and_touches_nothing(tmp_path):
    """The refusal of tests/test_external_data.py, with the rest of the bad-input contract checked."""
    n = (2**31 + 2**26) // 4
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big.bin", "wb") as f:
        f.truncate(n * 4)  # sparse: costs no disk
    path = raw_external_model(src, [("location", "big.bin"), ("offset", "0"), ("length", str(n * 4))], dims=(n,))
    stat = (src / "big.bin").stat()
    graph_bytes = path.read_bytes()
    # refused before any work: validation never runs onnxruntime on the 2 GB of weights
    expect_error(run_cli(tmp_path, path, "--no-external-data"), 2, "2 GB")
    after = (src / "big.bin").stat()
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns) and path.read_bytes() == graph_bytes


def test_external_data_model_is_checked_from_any_working_directory(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    path = external_model(src)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, report = fuser.optimize(path)
    assert not [w for w in report.warnings if "onnx.checker" in w], report.warnings


# ------------------------------------------------------------------------------ graphs
def test_empty_graph(tmp_path):
    graph = helper.make_graph([], "g", [], [])
    p = tmp_path / "empty_graph.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), p)
    expect_error(run_cli(tmp_path, p), 1, "holds no ONNX graph")


def test_graph_without_nodes_is_fine(tmp_path):
    """Not a bad input: output = input, no nodes. fuser writes it back unchanged (exit 0)."""
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("x", F, [2])],
                              [helper.make_tensor_value_info("x", F, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    p, out = tmp_path / "identity.onnx", tmp_path / "identity.opt.onnx"
    onnx.save(model, p)
    result = CliRunner().invoke(main, ["optimize", str(p), "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    assert len(written.graph.node) == 0 and [o.name for o in written.graph.output] == ["x"]
