"""Progress: one line per stage on a redirected stderr, a live line on a terminal (erased at the end, stdout keeping
only the summary), every stage and step through the library's `progress`, and the TensorRT builder's own progress
(its IProgressMonitor), which also lets Ctrl-C cancel a build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import fuser
from fuser.cli import main
from fuser.progress import Progress

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "demo.onnx"


class Recorder(Progress):
    def __init__(self):
        self.events: list[tuple] = []

    def stage(self, text):
        self.events.append(("stage", text))

    def step(self, text, done=None, total=None):
        self.events.append(("step", text, done, total))

    def stages(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "stage"]


def test_redirected_progress_is_quiet_or_one_line_per_stage(tmp_path):
    """Redirected, stderr is quiet by default (a failure stays one line); --progress gives one line per stage."""
    out = tmp_path / "demo.opt.onnx"
    result = CliRunner().invoke(main, ["optimize", str(DEMO), "-o", str(out), "--progress"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"fuser: optimizing {DEMO} (38 nodes)",
                                          "fuser: validating: both models on the same inputs",
                                          f"fuser: writing {out}"]
    assert result.stdout.startswith(f"fuser {DEMO} -> {out}\n") and "fuser: " not in result.stdout
    for quiet in ([], ["--no-progress"]):
        plain = CliRunner().invoke(main, ["optimize", str(DEMO), "-o", str(out), *quiet])
        assert plain.exit_code == 0 and plain.stderr == "", plain.stderr
        assert plain.stdout.splitlines()[2:] == result.stdout.splitlines()[2:]  # the same summary (time aside)


def on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run `python -m fuser ARGS` with stderr on a pseudo-terminal (stdout a pipe): (exit code, stdout, stderr)."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="100")
    proc = subprocess.Popen([sys.executable, "-m", "fuser", *args], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    stdout = proc.stdout.read().decode()
    code = proc.wait(timeout=120)
    os.close(master)
    return code, stdout, err.decode()


def test_a_terminal_gets_a_live_line_erased_at_the_end(tmp_path):
    """rich draws the stage and its step on the terminal, then erases the line; stdout has the summary only."""
    code, stdout, err = on_a_terminal(["optimize", str(DEMO), "-o", str(tmp_path / "o.onnx")], tmp_path)
    assert code == 0, err
    assert "optimizing" in err and "validating" in err and "writing" in err  # drawn live
    assert "fuser: optimizing" not in err  # not the redirected lines
    assert "\x1b[2K" in err and err.rstrip("\r\n").endswith("\x1b[2K")  # the live line is erased at the end
    assert stdout.startswith(f"fuser {DEMO} -> ") and "\x1b" not in stdout


def test_a_failure_on_a_terminal_still_leaves_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    code, stdout, err = on_a_terminal(["optimize", str(bad), "-o", str(tmp_path / "o.onnx")], tmp_path)
    assert code == 1 and stdout == ""
    _, _, last = err.rpartition("\x1b[2K")  # what follows the erased live line
    visible = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", last).strip()
    assert visible.startswith("fuser: error: ") and "\n" not in visible and "not a valid ONNX" in visible, err


def test_the_library_reports_stages_and_steps(tmp_path):
    recorder = Recorder()
    fuser.optimize_file(DEMO, tmp_path / "o.onnx", progress=recorder)
    assert recorder.stages() == [f"optimizing {DEMO} (38 nodes)", "validating: both models on the same inputs",
                                 f"writing {tmp_path / 'o.onnx'}"]
    steps = [e[1] for e in recorder.events if e[0] == "step"]
    assert steps[0] == "round 1: fusion (38 nodes)"
    assert "running the original model" in steps and "running the optimized model" in steps
    lines: list[str] = []  # a plain callable gets every stage and step as a line
    fuser.optimize(DEMO, progress=lines.append)
    assert lines[0] == f"optimizing {DEMO} (38 nodes)" and "round 1: fusion (38 nodes)" in lines
    with pytest.raises(TypeError, match="progress must be"):
        fuser.optimize(DEMO, progress="verbose")


def test_rollback_trials_are_steps_of_validation():
    from test_validate import planted_model, planted_passes

    recorder = Recorder()
    _, report = fuser.optimize(planted_model(), passes=planted_passes(), progress=recorder)
    assert report.validation.status == "rolled-back"
    validating = recorder.events.index(("stage", "validating: both models on the same inputs"))
    trials = [e[1] for e in recorder.events[validating:] if e[0] == "step" and e[1].startswith("rollback trial")]
    assert len(trials) == report.validation.bisection.trials
    assert all(not e[1].startswith("round ") for e in recorder.events[validating:])  # a trial's passes stay quiet


# ------------------------------------------------------------------------------ the TensorRT builder's progress

def _build_args(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from fuser.trt import BuildOptions, parse_profile

    return BuildOptions(profiles=(parse_profile("x:1x3x16x16"),), opt_level=0, backend="tensorrt_rtx")


def test_the_builder_reports_its_phases(tmp_path):
    from fuser.trt import build_engine

    options = _build_args(tmp_path)
    recorder = Recorder()
    build_engine(DEMO, options, tmp_path / "demo.plan", progress=recorder)
    assert recorder.stages() == [f"building {tmp_path / 'demo.plan'} with TensorRT-RTX "
                                 f"{__import__('tensorrt_rtx').__version__}"]
    steps = [e for e in recorder.events if e[0] == "step"]
    assert steps and all(total and 0 <= done <= total for _, _, done, total in steps)
    done = [d for _, _, d, _ in steps]
    assert done == sorted(done) and done[-1] >= steps[-1][3] - 1  # the outermost phase, step by step
    assert "building engine" in {text for _, text, _, _ in steps}


def test_an_interrupt_during_the_build_cancels_it(tmp_path):
    """Ctrl-C (or SIGTERM, which the CLI turns into the same) lands in the monitor's callback: the build is cancelled
    and the interrupt raised after it, the engine not written."""
    from fuser.trt import build_engine

    options = _build_args(tmp_path)

    class Interrupting(Recorder):
        def step(self, text, done=None, total=None):
            super().step(text, done, total)
            if len(self.events) == 3:
                raise KeyboardInterrupt

    interrupting = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        build_engine(DEMO, options, tmp_path / "demo.plan", progress=interrupting)
    assert not (tmp_path / "demo.plan").exists() and list(tmp_path.iterdir()) == []
    assert len(interrupting.events) <= 4  # the builder stopped at the next step


def test_fuser_build_redirected_prints_only_its_summary(tmp_path, monkeypatch):
    pytest.importorskip("tensorrt_rtx")
    monkeypatch.setenv("FUSER_TRT_BACKEND", "tensorrt_rtx")
    result = CliRunner().invoke(main, ["build", str(DEMO), "-o", str(tmp_path / "d.plan"), "--profile",
                                       "x:1x3x16x16", "--opt-level", "0"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout.startswith(f"built {tmp_path / 'd.plan'}")
