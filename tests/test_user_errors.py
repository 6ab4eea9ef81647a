"""A user's mistake is never an internal error: every command, every flag, tried the way a hostile user would.

Each case runs the real CLI and must end with exit 1 or 2 and one error line (fuser's `fuser: error: ...` or
click's `Error: ...` for a value click itself rejects), never a traceback or exit 3, and the input file untouched.
"""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
from builders import make_model
from click.testing import CliRunner
from onnx import TensorProto as T, helper

from fuser.cli import main
from test_bad_input import digest

F = T.FLOAT
HUGE = "99999999999999999999"  # past int64


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dynamic-batch Relu and an int64 ids input (whose random values are drawn from the vocabulary)."""
    folder = tmp_path_factory.mktemp("user-errors")
    relu = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, ["batch", 8])], [("y", F, ["batch", 8])],
                      opset=14)
    ids = make_model([helper.make_node("Cast", ["input_ids"], ["y"], to=F)], [("input_ids", T.INT64, [1, 8])],
                     [("y", F, [1, 8])], opset=14)
    onnx.save(relu, folder / "relu.onnx")
    onnx.save(ids, folder / "ids.onnx")
    return folder


def run(models, *args: str):
    """Run `fuser ARGS` ({relu}, {ids}, {dir} expanded); check the input is untouched and no traceback shows."""
    paths = {"relu": models / "relu.onnx", "ids": models / "ids.onnx", "dir": models}
    before = {p: digest(p) for p in (paths["relu"], paths["ids"])}
    result = CliRunner().invoke(main, [a.format(**paths) for a in args])
    assert {p: digest(p) for p in before} == before, "an input model was modified"
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


def assert_one_error_line(result, code: int, *fragments: str):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(("fuser: error:", "Error:"))]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------------ numbers out of range

@pytest.mark.parametrize("args, fragment", [
    (("optimize", "{relu}", "-o", "{dir}/o.onnx", "--seed", "-1"), "--seed"),
    (("audit", "{relu}", "--seed", "-1"), "--seed"),
    (("bench", "{relu}", "--provider", "cpu", "--iters", "1", "--seed", "-1"), "--seed"),
    (("optimize", "{ids}", "-o", "{dir}/o.onnx", "--vocab-size", HUGE), "--vocab-size"),
    (("bench", "{ids}", "--provider", "cpu", "--iters", "1", "--vocab-size", HUGE), "--vocab-size"),
    (("build", "{relu}", "-o", "{dir}/o.plan", "--profile", "x:1x8", "--workspace", "99999999999999"), "--workspace"),
    (("build", "{relu}", "-o", "{dir}/o.plan", "--profile", "x:1x8", "--max-aux-streams", "2147483648"),
     "--max-aux-streams"),
    (("build", "{relu}", "-o", "{dir}/o.plan", "--profile", "x:1x8", "--opt-level", "-1"), "--opt-level"),
    (("bench", "{relu}", "--provider", "cpu", "--batch", "0"), "--batch 0"),
    (("bench", "{relu}", "--provider", "cpu", "--iters", "0"), "--iters"),
    (("bench", "{relu}", "--provider", "cpu", "--warmup", "-1"), "--warmup"),
    (("optimize", "{relu}", "-o", "{dir}/o.onnx", "--max-iterations", "0"), "--max-iterations"),
    (("optimize", "{relu}", "-o", "{dir}/o.onnx", "--target-opset", "-5"), "target opset -5"),
    (("optimize", "{relu}", "-o", "{dir}/o.onnx", "--fold-budget", "-1"), "bad size '-1'"),
    (("optimize", "{relu}", "-o", "{dir}/o.onnx", "--atol", "nan"), "--atol 'nan'"),
])
def test_out_of_range_numbers_are_usage_errors(models, args, fragment):
    assert_one_error_line(run(models, *args), 2, fragment)


@pytest.mark.parametrize("args", [
    ("optimize", "{relu}", "-o", "{dir}/o.onnx", "--input-shape", "x:99999999999x8"),
    ("optimize", "{relu}", "-o", "{dir}/o.onnx", "--validate-shape", "x:99999999999x8"),
    ("audit", "{relu}", "--input-shape", "x:99999999999x8"),
    ("bench", "{relu}", "--provider", "cpu", "--iters", "1", "--batch", "99999999999"),
])
def test_inputs_too_big_for_memory_are_usage_errors_before_allocating(models, args):
    """Random inputs of a size no machine holds: named, with the flag that sets them, not a MemoryError."""
    assert_one_error_line(run(models, *args), 2, "input 'x'", "99999999999x8", "memory")


def test_the_same_input_pinned_twice_is_a_usage_error(models):
    for command in (("optimize", "{relu}", "-o", "{dir}/o.onnx"), ("bench", "{relu}", "--provider", "cpu")):
        result = run(models, *command, "--input-shape", "x:1x8", "--input-shape", "x:2x8")
        assert_one_error_line(result, 2, "--input-shape", "'x' is given twice")


# ------------------------------------------------------------------------------ build --profile

@pytest.mark.parametrize("profile, fragment", [
    ("x:1x8,1000000000000x8,1000000000000x8", "0..2147483647"),  # 1e12: past what TensorRT takes
    ("x:1x8,2147483648x8,2147483648x8", "2147483647"),
    (f"x:1x8,2x8,{HUGE}x8", "2147483647"),  # past int64
    ("x:4x8,2x8,1x8", "min <= opt <= max"),
    ("x:1x8x3", "rank 3 given"),
    ("q:1x8", "no input 'q'"),
    ("x:1.5x8", "expected one shape"),
    ("x:-1x8", "expected one shape"),
    ("x:1x8,2x8", "expected one shape"),
    ("x:1x9", "fixed at 8"),
    ("x:", "expected one shape"),
    ("", "empty profile"),
    (":1x8", "expected NAME:SHAPE"),
    ("x:1x8;x:1x8", "given twice"),
])
def test_absurd_profiles_are_usage_errors(models, profile, fragment):
    result = run(models, "build", "{relu}", "-o", "{dir}/o.plan", "--profile", profile)
    assert_one_error_line(result, 2, fragment)
    assert not (models / "o.plan").exists()


# ------------------------------------------------------------------------------ files and names

@pytest.mark.parametrize("command", ["optimize", "build", "audit", "bench"])
def test_an_empty_model_argument_is_a_usage_error(models, command):
    assert_one_error_line(run(models, command, ""), 2)


def test_model_errors_are_one_line_even_when_the_library_says_more(models, tmp_path):
    """onnx's JSON reader explains a bad .json model over two lines; the user still gets one."""
    fake = tmp_path / "model.json"
    fake.write_text('{"schema_version": "1.0"}')
    proc = subprocess.run([sys.executable, "-m", "fuser", "build", str(fake), "--profile", "x:1x8"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("fuser: error:"), proc.stderr


def test_a_profile_built_in_python_is_checked_like_a_parsed_one(models):
    """`BuildOptions` takes ShapeRanges directly: a negative or out-of-range dim is a UsageError, not a TypeError."""
    from fuser.errors import UsageError
    from fuser.trt import BuildOptions, build_engine
    from fuser.trt.profiles import ShapeRange

    for low, high in ((-1, 4), (1, 2**63)):
        profile = {"x": ShapeRange((low, 8), (2, 8), (high, 8))}
        with pytest.raises(UsageError, match="dim 0 must lie in 0..2147483647"):
            build_engine(models / "relu.onnx", BuildOptions(profiles=(profile,)))


def test_running_out_of_memory_is_an_error_not_a_bug(models):
    """Under a 4 GiB address-space limit a 6 GiB input fails to allocate: one line, exit 1 (or 2 when the
    machine's free memory is already too small for it), never 'internal error'."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    proc = subprocess.run([sys.executable, "-m", "fuser", "optimize", str(models / "relu.onnx"), "-o",
                           str(models / "o.onnx"), "--input-shape", "x:100000000x8"],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert proc.returncode in (1, 2), proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fuser: error:") and "memory" in lines[0], proc.stderr
    assert not (models / "o.onnx").exists()


# ------------------------------------------------------------------------------ flags that would be ignored

@pytest.mark.parametrize("flags", [("--build",), ("--strict",), ("--save-model", "{dir}/o.onnx"), ("--seed", "3"),
                                   ("--profile", "x:1x8"), ("--rules", "hswish"), ("--atol", "1e-3")])
def test_optimizing_flags_on_a_saved_report_are_usage_errors(models, tmp_path, flags):
    """A report is not optimized again: --build, --strict or --seed with one would be silently ignored."""
    report = tmp_path / "r.json"
    assert run(models, "audit", "{relu}", "--json", str(report)).exit_code == 0
    result = run(models, "audit", str(report), *flags)
    assert_one_error_line(result, 2, f"{flags[0]} needs a model, not a report")


@pytest.mark.parametrize("args, flag", [
    (("optimize", "{relu}", "-o", "{dir}/o.onnx", "--rules", ""), "--rules"),
    (("optimize", "{relu}", "-o", "{dir}/o.onnx", "--skip-rules", ","), "--skip-rules"),
    (("optimize", "{relu}", "-o", "{dir}/o.onnx", "--precision", "fp16", "--keep-fp32", " "), "--keep-fp32"),
    (("bench", "{relu}", "--provider", "cpu", "--iters", "1", "--batch", ","), "--batch"),
    (("bench", "{relu}", "--provider", "cpu", "--iters", "1", "--ort-opt", ""), "--ort-opt"),
])
def test_an_empty_list_is_a_usage_error_not_the_default(models, args, flag):
    """`--rules "$RULES"` with RULES unset would run every rule; say so instead."""
    assert_one_error_line(run(models, *args), 2, flag, "empty")


def test_an_input_given_twice_in_one_validation_shape_is_a_usage_error(models):
    result = run(models, "optimize", "{relu}", "-o", "{dir}/o.onnx", "--validate-shape", "x:1x8;x:2x8")
    assert_one_error_line(result, 2, "'x' is given twice")


# ------------------------------------------------------------------------------ names that are not text

def test_names_that_are_not_utf8_or_hold_control_characters(tmp_path):
    """protobuf hands a node name that is not UTF-8 back as bytes, and a name may hold a terminal escape:
    reports still write (JSON, JUnit, Markdown), and nothing raw reaches the terminal."""
    import json
    import xml.etree.ElementTree as ET

    from test_audit import hswish_model

    model = hswish_model(1)
    model.opset_import[0].version = 13  # with --no-upgrade, near misses name the nodes
    for node in model.graph.node:
        node.name = node.name.replace("/", "/@@@@")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString().replace(b"@@@@", b"\xff\x1b[J"))  # same length: still valid
    optimized = CliRunner().invoke(main, ["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--no-upgrade",
                                          "--report", str(tmp_path / "r.json")])
    assert optimized.exit_code == 0, optimized.output
    assert "\x1b" not in optimized.output
    assert "block0/\\xff\x1b[J" in json.loads((tmp_path / "r.json").read_text())["near_misses"][0]["at"]  # data
    audited = CliRunner().invoke(main, ["audit", str(path), "--no-upgrade", "--json", str(tmp_path / "a.json"),
                                        "--junit", str(tmp_path / "a.xml"), "--markdown", str(tmp_path / "a.md")])
    assert audited.exit_code == 0, audited.output
    assert "\x1b" not in audited.output
    assert "\\xff\\x1b[J" in (tmp_path / "a.md").read_text()
    out = "".join(e.text or "" for e in ET.parse(tmp_path / "a.xml").getroot().iter("system-out"))
    assert "block0/\\xff\\x1b[J" in out, out
