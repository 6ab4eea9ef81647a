"""The exit codes docs/guarantees.md documents, in real runs: 0 success, 1 a model error, 2 a usage error, 3 an
internal error (one line, never a traceback, nothing written), 130 interrupted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
from click.testing import CliRunner

import fuser.assembly
from fuser.cli import INTERNAL_ERROR, main
from fuser.errors import FuserError, ModelError, UsageError

from test_bad_input import run_cli, small_model

DOCS = Path(__file__).resolve().parent.parent / "docs" / "guarantees.md"


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
    class Interrupted:
        name, requires = "interrupted", ()

        def run(self, graph, ctx):
            raise KeyboardInterrupt

    monkeypatch.setattr(fuser.assembly, "default_passes", lambda options, *_: [Interrupted()])
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


def test_internal_error_is_one_line_exit_3_and_writes_nothing(tmp_path, monkeypatch):
    class Broken:
        name, requires = "broken", ()

        def run(self, graph, ctx):
            raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(fuser.assembly, "default_passes", lambda options, *_: [Broken()])
    monkeypatch.delenv("FUSER_DEBUG", raising=False)
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    result = run_cli(tmp_path, p)
    assert result.exit_code == INTERNAL_ERROR == 3
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fuser: internal error: RuntimeError: a bug"), result.output
    assert "FUSER_DEBUG=1" in lines[0]


def test_rules_takes_no_model_path(tmp_path):
    """`fuser rules` lists rules; given a path (a directory here) it is a usage error, not a crash."""
    d = tmp_path / "models"
    d.mkdir()
    result = CliRunner().invoke(main, ["rules", str(d)])
    assert result.exit_code == 2 and "unexpected extra argument" in result.output
    assert "Traceback" not in result.output
