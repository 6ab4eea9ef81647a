"""`fuser audit`: expectations pass and fail with the right exit codes and messages; reports get written."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import onnx
import pytest
from builders import const, make_model
from click.testing import CliRunner
from onnx import TensorProto, helper

from fuser.audit import Expectations, check, parse_expectation
from fuser.cli import main
from fuser.errors import UsageError
from fuser.report_formats import check_schema

F = TensorProto.FLOAT


def hswish_model(sites: int = 2) -> onnx.ModelProto:
    nodes = [const("three", 3.0), const("zero", 0.0), const("six", 6.0)]
    src = "x"
    for i in range(sites):
        nodes += [helper.make_node("Add", [src, "three"], [f"a{i}"], name=f"block{i}/add"),
                  helper.make_node("Clip", [f"a{i}", "zero", "six"], [f"c{i}"], name=f"block{i}/clip"),
                  helper.make_node("Mul", [src, f"c{i}"], [f"m{i}"], name=f"block{i}/mul"),
                  helper.make_node("Div", [f"m{i}", "six"], [f"h{i}"], name=f"block{i}/div")]
        src = f"h{i}"
    nodes.append(helper.make_node("Pow", [src, "three"], ["y"], name="cube"))
    return make_model(nodes, [("x", F, ["batch", 8])], [("y", F, ["batch", 8])], opset=14)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("audit") / "model.onnx"
    onnx.save(hswish_model(), path)
    return path


def audit(*args):
    return CliRunner().invoke(main, ["audit", *map(str, args)])


def test_passing_expectations_exit_0(model_path, tmp_path):
    out = tmp_path / "r"
    result = audit(model_path, "--expect", "hswish>=2", "--expect", "hswish==2", "--expect", "hardswish<3",
                   "--expect-no-op", "Clip", "--max-error", "1e-3", "--json", f"{out}.json", "--markdown",
                   f"{out}.md", "--junit", f"{out}.xml", "--html", f"{out}.html")
    assert result.exit_code == 0, result.output
    assert "PASS hswish>=2: hswish: 2 fusions" in result.output and "PASS no-op Clip" in result.output
    assert "PASS max-error 0.001" in result.output and "audit passed: 6 expectations met" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    check_schema(report)
    assert report["audit"]["passed"] and report["validation"]["status"] == "passed"
    assert report["input"]["sha256"] and report["input"]["size_bytes"] == model_path.stat().st_size
    assert "| nodes | 12 | 4 |" in (tmp_path / "r.md").read_text()
    suites = {s.get("name"): s for s in ET.parse(tmp_path / "r.xml").getroot()}
    assert set(suites) == {"fuser.rules", "fuser.validation", "fuser.audit"}
    assert suites["fuser.audit"].get("failures") == "0" and suites["fuser.audit"].get("tests") == "6"
    assert "class='bar after'" in (tmp_path / "r.html").read_text()


def test_failing_expectations_exit_1_naming_each(model_path):
    result = audit(model_path, "--expect", "hswish>=3", "--expect-no-op", "Pow", "--expect", "hsigmoid>=1",
                   "--expect-no-op", "Clip")
    assert result.exit_code == 1
    assert "FAIL hswish>=3: hswish: 2 fusions, expected >=3" in result.output
    assert "FAIL no-op Pow: 1 Pow node left in the output" in result.output
    assert "FAIL hsigmoid>=1" in result.output and "PASS no-op Clip" in result.output
    assert "audit failed: 3 of 5 expectations failed: hswish>=3, hsigmoid>=1, no-op Pow" in result.output


def test_baseline_and_saved_report(model_path, tmp_path):
    current = tmp_path / "current.json"
    assert audit(model_path, "--json", current).exit_code == 0
    same = audit(current, "--baseline", current, "--expect", "hswish==2")
    assert same.exit_code == 0 and "PASS baseline hswish>=2" in same.output
    better = json.loads(current.read_text())
    better["fusion_counts"] = {"hswish": 3, "layernorm": 1}
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(better))
    result = audit(model_path, "--baseline", baseline)  # optimizes again, compares with the baseline
    assert result.exit_code == 1
    assert "fewer fusions than the baseline: hswish 2 < 3" in result.output
    assert "fewer fusions than the baseline: layernorm 0 < 1" in result.output


def test_report_checks_without_data_fail_clearly(model_path, tmp_path):
    saved = tmp_path / "novalidate.json"
    assert audit(model_path, "--no-validate", "--json", saved).exit_code == 0
    result = audit(saved, "--max-error", "1e-3", "--expect-no-warning", "TRT_LAYERNORM_FP16")
    assert result.exit_code == 1
    assert "FAIL max-error 0.001: cannot check: the report has no validation statistics" in result.output
    assert "FAIL no-warning TRT_LAYERNORM_FP16: cannot check: the report has no build section" in result.output


def test_build_warnings_and_failed_validation_from_a_report(model_path, tmp_path):
    path = tmp_path / "r.json"
    assert audit(model_path, "--json", path).exit_code == 0
    report = json.loads(path.read_text())
    report["build"] = {"warnings": [{"id": "TRT_LAYERNORM_FP16", "message": "Detected layernorm nodes in FP16."}]}
    report["validation"]["status"] = "failed"
    report["validation"]["summary"] = "failed: output 'y' off"
    path.write_text(json.dumps(report))
    result = audit(path, "--expect-no-warning", "TRT_LAYERNORM_FP16", "--expect-no-warning", "OTHER")
    assert result.exit_code == 1
    assert "FAIL no-warning TRT_LAYERNORM_FP16: the build logged TRT_LAYERNORM_FP16 1x: Detected layernorm" \
        in result.output
    assert "PASS no-warning OTHER" in result.output and "FAIL validation: validation failed" in result.output


def test_usage_errors_exit_2(model_path, tmp_path):
    bad = audit(model_path, "--expect", "hswish=>2")
    assert bad.exit_code == 2 and "bad --expect 'hswish=>2'" in bad.output
    unknown = audit(model_path, "--expect", "layrnorm>=1")
    assert unknown.exit_code == 2 and "no rule or family is named 'layrnorm'" in unknown.output
    not_report = tmp_path / "x.json"
    not_report.write_text("{}")
    assert audit(not_report).exit_code == 2
    assert audit(model_path, "-o", tmp_path / "r.md").exit_code == 2  # -o without --format


def test_format_to_stdout_keeps_it_clean(model_path):
    result = CliRunner().invoke(main, ["audit", str(model_path), "--format", "json", "--expect", "hswish>=1"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)  # the check lines went to stderr
    assert report["audit"]["checks"][0]["name"] == "hswish>=1" and "PASS hswish>=1" in result.stderr


def test_expectation_parsing_and_rule_names():
    assert str(parse_expectation(" layernorm >= 35 ")) == "layernorm>=35"
    assert str(parse_expectation("hswish=2")) == "hswish==2"
    with pytest.raises(UsageError):
        parse_expectation("layernorm")
    report = {"fusion_counts": {"hswish": 2}, "fusions": [{"rule": "hardswish", "family": "hswish"}] * 2,
              "output": {"ops": {"HardSwish": 2}}, "rules": {}}
    checks = check(report, Expectations.from_cli(["hardswish>1", "hswish!=2"], ["HardSwish"]))
    assert [c.passed for c in checks] == [True, False, False]


def test_python_m_fuser_audit_subprocess(model_path):
    proc = subprocess.run([sys.executable, "-m", "fuser", "audit", str(model_path), "--expect", "hswish>=5",
                           "--expect", "hswish>=1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "FAIL hswish>=5" in proc.stdout and "PASS hswish>=1" in proc.stdout
    assert "audit failed: 1 of 3 expectations failed: hswish>=5" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_optimize_validation_flags(model_path, tmp_path):
    report_path = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--atol", "1e-3",
                                       "--rtol", "y:1e-2", "--input-shape", "x:3x8", "--seed", "7", "--report",
                                       str(report_path)])
    assert result.exit_code == 0, result.output
    assert "validation: passed: 1 output within tolerance" in result.output
    report = json.loads(report_path.read_text())
    o, v = report["options"], report["validation"]
    assert o["atol"] == 1e-3 and o["rtol"] is None and o["tolerances"] == {"y": {"rtol": 1e-2}} and o["seed"] == 7
    assert o["input_shapes"] == {"x": [3, 8]} and v["shapes"] == [{"x": [3, 8]}]
    assert v["outputs"]["y"]["atol"] == 1e-3 and v["outputs"]["y"]["rtol"] == 1e-2
    two = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--validate-shape",
                                    "x:1x8", "--validate-shape", "x:4x8", "--report", str(report_path)])
    assert two.exit_code == 0 and json.loads(report_path.read_text())["validation"]["shapes"] == [{"x": [1, 8]},
                                                                                                   {"x": [4, 8]}]
    off = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--no-validate",
                                    "--report", str(report_path)])
    assert off.exit_code == 0 and json.loads(report_path.read_text())["validation"] is None
    bad = CliRunner().invoke(main, ["optimize", str(model_path), "--atol", "y:lots"])
    assert bad.exit_code == 2 and "bad --atol 'y:lots'" in bad.output
    shape = CliRunner().invoke(main, ["optimize", str(model_path), "--input-shape", "x:3x9"])
    assert shape.exit_code == 2 and "input-shape" in shape.output


def test_audit_of_a_run_with_a_wrong_rewrite(tmp_path, monkeypatch):
    """A rule that breaks numerics (planted through the default pipeline): rolled back, or fatal under --strict."""
    import fuser.passes
    from test_validate import planted_model, planted_passes

    monkeypatch.setattr(fuser.passes, "default_passes", lambda options: planted_passes())
    path = tmp_path / "planted.onnx"
    onnx.save(planted_model(), path)
    rolled = audit(path, "--expect", "hswish==2", "--expect-no-rollback", "--junit", tmp_path / "r.xml")
    assert rolled.exit_code == 1
    assert "PASS validation: rolled back 2 of 5 rewrites" in rolled.output
    assert "FAIL no-rollback: rolled back broken_relu@r0, broken_relu@r1" in rolled.output
    strict = audit(path, "--strict", "--markdown", tmp_path / "r.md", "--junit", tmp_path / "s.xml")
    assert strict.exit_code == 1
    assert "FAIL validation: validation failed: failed: output 'y'" in strict.output
    assert "fuser: error: validation failed (--strict)" in strict.output
    assert "### Validation: failed" in (tmp_path / "r.md").read_text()
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "s.xml").getroot().iter("testcase")}
    assert cases["output y"].find("failure") is not None and cases["validation"].find("failure") is not None
