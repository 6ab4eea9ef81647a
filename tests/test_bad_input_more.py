"""More bad inputs (issue 8), beyond tests/test_bad_input.py: directories, truncated or malformed external
data, outputs that would overwrite the input's own files, empty graphs, internal errors, and the exit
codes docs/guarantees.md documents. Each: one clear line on stderr, the documented exit code, no
traceback, nothing written, the input byte-for-byte unchanged."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T, helper

import fuser
import fuser.assembly
from fuser.cli import INTERNAL_ERROR, main
from fuser.errors import FuserError, ModelError, UsageError

from builders import make_model
from test_bad_input import digest, expect_error, run_cli, small_model

F = T.FLOAT
DOCS = Path(__file__).resolve().parent.parent / "docs" / "guarantees.md"


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


def test_rules_takes_no_model_path(tmp_path):
    """`fuser rules` lists rules; given a path (a directory here) it is a usage error, not a crash."""
    d = tmp_path / "models"
    d.mkdir()
    result = CliRunner().invoke(main, ["rules", str(d)])
    assert result.exit_code == 2 and "unexpected extra argument" in result.output
    assert "Traceback" not in result.output


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


def test_internal_error_is_one_line_exit_3_and_writes_nothing(tmp_path, monkeypatch):
    class Broken:
        name, requires = "broken", ()

        def run(self, graph, ctx):
            raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(fuser.assembly, "default_passes", lambda options: [Broken()])
    monkeypatch.delenv("FUSER_DEBUG", raising=False)
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    result = run_cli(tmp_path, p)
    assert result.exit_code == INTERNAL_ERROR == 3
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fuser: internal error: RuntimeError: a bug"), result.output
    assert "FUSER_DEBUG=1" in lines[0]


# ------------------------------------------------------------------------------ exit codes
def test_exit_codes_are_the_documented_ones():
    """docs/guarantees.md's exit-code table is what the code does."""
    text = DOCS.read_text()
    table = dict(re.findall(r"^\|\s*`?(\d+)`?\s*\|\s*([^|]+?)\s*\|", text, re.MULTILINE))
    assert set(table) == {"0", "1", "2", "3", "130"}, table
    assert FuserError.exit_code == ModelError.exit_code == 1 and UsageError.exit_code == 2
    assert INTERNAL_ERROR == 3
    assert "model" in table["1"].lower() and "usage" in table["2"].lower() and "internal" in table["3"].lower()
    assert "interrupt" in table["130"].lower()
    errors_doc = sys.modules["fuser.errors"].__doc__
    for code in ("0 success", "1 a model error", "2 a usage error", "3 an internal error"):
        assert code in errors_doc, f"fuser/errors.py no longer documents '{code}'"


def test_exit_code_130_when_interrupted(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fuser.cli.optimize.optimize_file", interrupted)
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    result = run_cli(tmp_path, p)
    assert result.exit_code == 130 and "interrupted" in result.output


def test_success_is_exit_0_in_a_real_process(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    proc = subprocess.run([sys.executable, "-m", "fuser", "optimize", str(p), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
