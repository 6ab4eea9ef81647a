"""What the commands print, compared with snapshots in tests/snapshots/ (FUSER_UPDATE_SNAPSHOTS=1 rewrites them):
the op-by-op table of what changed, the near misses by reason, one progress line per stage on a redirected stderr.
Timings, temporary paths and error magnitudes are normalized so the compared text is stable; the README's example
output is the demo's snapshot."""

from __future__ import annotations

import os
import re
from pathlib import Path

import onnx
from builders import const, make_model
from click.testing import CliRunner
from onnx import TensorProto, helper

from fuser.cli import main

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS = Path(__file__).parent / "snapshots"
F = TensorProto.FLOAT


def normalized(text: str, tmp_path: Path) -> str:
    text = text.replace(str(tmp_path), "<tmp>").replace(str(REPO) + os.sep, "")
    text = re.sub(r"\b\d+\.\d\d s\b", "<t> s", text)
    return re.sub(r"max abs error [0-9.e+-]+", "max abs error <e>", text)


def matches_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("FUSER_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}: run with FUSER_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(), f"{name} changed; if intended, run with FUSER_UPDATE_SNAPSHOTS=1"


def run_cli(*args) -> tuple[str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def both(stdout: str, stderr: str) -> str:
    return f"--- stdout\n{stdout}--- stderr\n{stderr}"


def test_optimize_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    stdout, stderr = run_cli("optimize", "models/demo.onnx", "-o", tmp_path / "demo.opt.onnx", "--progress")
    matches_snapshot("optimize_demo.txt", normalized(both(stdout, stderr), tmp_path))
    assert "  HardSwish                 0        1       +1" in stdout  # the ops it made are listed
    assert all(len(line) <= 100 for line in stdout.splitlines()[1:])


def near_miss_model() -> onnx.ModelProto:
    """Three HardSwish spellings at opset 13 (HardSwish needs 14) and a LayerNorm whose eps is a graph input."""
    nodes = [const("three", 3.0), const("zero", 0.0), const("six", 6.0), const("two", 2.0)]
    src = "x"
    for i in range(3):
        nodes += [helper.make_node("Add", [src, "three"], [f"a{i}"], name=f"block{i}/add"),
                  helper.make_node("Clip", [f"a{i}", "zero", "six"], [f"c{i}"], name=f"block{i}/clip"),
                  helper.make_node("Mul", [src, f"c{i}"], [f"m{i}"], name=f"block{i}/mul"),
                  helper.make_node("Div", [f"m{i}", "six"], [f"h{i}"], name=f"block{i}/div")]
        src = f"h{i}"
    nodes += [helper.make_node("ReduceMean", [src], ["mean"], name="norm/mean", axes=[-1]),
              helper.make_node("Sub", [src, "mean"], ["d"], name="norm/sub"),
              helper.make_node("Pow", ["d", "two"], ["sq"], name="norm/pow"),
              helper.make_node("ReduceMean", ["sq"], ["var"], name="norm/var", axes=[-1]),
              helper.make_node("Add", ["var", "eps"], ["ve"], name="norm/add_eps"),
              helper.make_node("Sqrt", ["ve"], ["std"], name="norm/sqrt"),
              helper.make_node("Div", ["d", "std"], ["y"], name="norm/div")]
    return make_model(nodes, [("x", F, [2, 16]), ("eps", F, [])], [("y", F, [2, 16])], opset=13)


def test_optimize_near_misses_by_reason(tmp_path):
    src = tmp_path / "near.onnx"
    onnx.save(near_miss_model(), src)
    stdout, stderr = run_cli("optimize", src, "-o", tmp_path / "near.opt.onnx", "--no-upgrade")
    matches_snapshot("optimize_near_misses.txt", normalized(both(stdout, stderr), tmp_path))
    assert "    3x hardswish: emits HardSwish, which needs opset 14" in stdout
    assert stderr == ""


def test_readme_shows_the_demo_summary(tmp_path, monkeypatch):
    """The README's example is what `fuser optimize models/demo.onnx` prints today (timing and error aside)."""
    monkeypatch.chdir(REPO)
    readme = (REPO / "README.md").read_text()
    shown = re.search(r"prints what it did:\n\n```\n(.*?)```", readme, re.S)
    assert shown, "the README's Quick start shows the demo's output after 'prints what it did:'"
    stdout, _ = run_cli("optimize", "models/demo.onnx", "--no-progress", "-o", tmp_path / "demo.opt.onnx")
    expected = normalized(stdout, tmp_path).replace("<tmp>/demo.opt.onnx", "models/demo.opt.onnx")
    assert normalized(shown.group(1), tmp_path) == expected
