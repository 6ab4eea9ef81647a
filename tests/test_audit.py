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

from fuser.report.audit import Expectations, check, parse_expectation
from fuser.cli import main
from fuser.errors import UsageError
from fuser.report import ModelSummary, Report
from fuser.rule import Fusion
from test_report_formats import check_schema

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
    assert set(suites) == {"fuser.rules", "fuser.validation", "fuser.report.audit"}
    assert suites["fuser.report.audit"].get("failures") == "0" and suites["fuser.report.audit"].get("tests") == "6"
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
    result = audit(saved, "--max-error", "1e-3", "--expect-no-warning", "layernorm-fp16")
    assert result.exit_code == 1
    assert "FAIL max-error 0.001: cannot check: the report has no validation statistics" in result.output
    assert "FAIL no-warning layernorm-fp16: cannot check: the report has no build section" in result.output


def test_build_warnings_and_failed_validation_from_a_report(model_path, tmp_path):
    path = tmp_path / "r.json"
    assert audit(model_path, "--json", path).exit_code == 0
    report = json.loads(path.read_text())
    report["build"] = {"warnings": [{"id": "layernorm-fp16", "lines": ["Detected layernorm nodes in FP16."]}]}
    report["validation"]["status"] = "failed"
    report["validation"]["summary"] = "failed: output 'y' off"
    path.write_text(json.dumps(report))
    result = audit(path, "--expect-no-warning", "layernorm-fp16", "--expect-no-warning", "timing-cache-unusable")
    assert result.exit_code == 1
    assert "FAIL no-warning layernorm-fp16: the build logged layernorm-fp16 1x: Detected layernorm" \
        in result.output
    assert "PASS no-warning timing-cache-unusable" in result.output and "FAIL validation: validation failed" in result.output


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
    fusion = Fusion("hardswish", "hswish", "hardswish@h", "div", ["div"], ["h"], ["HardSwish"])
    report = Report(fusion_counts={"hswish": 2}, fusions=[fusion] * 2,
                    output=ModelSummary(None, None, None, 14, 2, {"HardSwish": 2}))
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
    import fuser.assembly
    from test_validate import planted_model, planted_passes

    monkeypatch.setattr(fuser.assembly, "default_passes", lambda options, *_: planted_passes())
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


# ------------------------------------------------------------------------------ reports that are not quite reports

@pytest.fixture(scope="module")
def saved_report(model_path, tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("saved") / "report.json"
    assert audit(model_path, "--json", path).exit_code == 0
    return json.loads(path.read_text())


def edited(report: dict, field: str, value) -> dict:
    """A copy of `report` with FIELD (dotted) set to value, or deleted when value is DELETE."""
    import copy

    out = copy.deepcopy(report)
    *parents, last = field.split(".")
    holder = out
    for key in parents:
        holder = holder[key]
    if value is DELETE:
        del holder[last]
    else:
        holder[last] = value
    return out


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()
MISTYPED = [
    ("fusion_counts", [], "fusion_counts"), ("fusion_counts", None, "fusion_counts"),
    ("fusion_counts", {"hswish": "2"}, "fusion_counts.hswish"), ("fusion_counts", {"hswish": None}, "fusion_counts.hswish"),
    ("validation", "passed", "validation"), ("validation", [], "validation"),
    ("validation.outputs", None, "validation.outputs"), ("validation.outputs", [], "validation.outputs"),
    ("validation.outputs", DELETE, "validation"), ("validation.outputs.y", None, "validation.outputs.y"),
    ("validation.outputs.y.max_abs", "big", "validation.outputs.y.max_abs"),
    ("validation.outputs.y.elements", None, "validation.outputs.y.elements"),
    ("validation.rolled_back", "x", "validation.rolled_back"), ("validation.rolled_back", [1], "validation.rolled_back[0]"),
    ("validation.rolled_back", [{"rule": 1}], "validation.rolled_back[0].rule"),
    ("validation.status", None, "validation.status"), ("validation.summary", 5, "validation.summary"),
    ("output.ops", None, "output.ops"), ("output.ops", [], "output.ops"), ("output.ops", {"Pow": "1"}, "output.ops.Pow"),
    ("input", [], "input"), ("input.path", 5, "input.path"),
    ("fusions", None, "fusions"), ("fusions", [1], "fusions[0]"), ("fusions", [{"rule": []}], "fusions[0].rule"),
    ("near_misses", None, "near_misses"), ("near_misses", [{}], "near_misses[0]"),
    ("rules", None, "rules"), ("rules", [], "rules"), ("rules.hardswish", None, "rules.hardswish"),
    ("build", "x", "build"), ("build", {"warnings": None}, "build.warnings"),
    ("build", {"warnings": [{"id": None}]}, "build.warnings[0].id"),
    ("warnings", 5, "warnings"), ("time_s", "x", "time_s"), ("time_s", None, "time_s"),
    ("command", None, "command"), ("audit", 5, "audit"),
]


@pytest.mark.parametrize("role", ["report", "baseline"])
@pytest.mark.parametrize("field, value, named", MISTYPED, ids=[f"{f}={v!r}"[:40] for f, v, _ in MISTYPED])
def test_a_mistyped_report_field_is_a_usage_error_naming_it(saved_report, model_path, tmp_path, role, field, value,
                                                            named):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(edited(saved_report, field, value)))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(saved_report))
    report, baseline = (bad, good) if role == "report" else (good, bad)
    result = audit(report, "--baseline", baseline, "--expect", "hswish>=1", "--expect", "hardswish>=1",
                   "--expect-no-op", "Pow", "--max-error", "1e-3", "--expect-no-rollback", "--json",
                   tmp_path / "o.json", "--markdown", tmp_path / "o.md", "--junit", tmp_path / "o.xml")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("fuser: error:")]
    assert len(errors) == 1 and f"field {named}:" in errors[0] and str(bad) in errors[0], result.output


def test_missing_sections_are_read_as_absent(saved_report, tmp_path):
    """Only fusion_counts is required; the audit checks and renders what the report has."""
    report = {"fusion_counts": saved_report["fusion_counts"], "validation": saved_report["validation"]}
    path = tmp_path / "slim.json"
    path.write_text(json.dumps(report))
    result = audit(path, "--expect", "hswish==2", "--max-error", "1e-3", "--markdown", tmp_path / "r.md",
                   "--junit", tmp_path / "r.xml", "--html", tmp_path / "r.html", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "PASS max-error 0.001" in result.output and ET.parse(tmp_path / "r.xml").getroot().get("tests") == "4"


def test_a_deeply_nested_report_is_a_usage_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"fusion_counts": {}, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    result = audit(path)
    assert result.exit_code == 2 and "not a JSON report" in result.output, result.output


# ------------------------------------------------------------------------------ gates that must be able to fail

def test_an_unknown_warning_id_is_a_usage_error_listing_the_known_ones(saved_report, model_path, tmp_path):
    from fuser.trt.logs import KNOWN_WARNINGS

    path = tmp_path / "r.json"
    path.write_text(json.dumps(saved_report))
    for source in (path, model_path):
        result = audit(source, "--expect-no-warning", "foo")
        assert result.exit_code == 2, result.output
        assert "--expect-no-warning foo: no such warning id" in result.output
        assert all(w.id in result.output for w in KNOWN_WARNINGS)


@pytest.mark.parametrize("stats, why", [
    ({"max_abs": float("nan"), "elements": 16}, "not a finite number"),
    ({"max_abs": float("inf"), "elements": 16}, "not a finite number"),
    ({"max_abs": None, "elements": 16}, "no finite error"),
    ({"max_abs": None}, "no finite error"),
])
def test_max_error_fails_when_the_error_is_not_a_number(saved_report, tmp_path, stats, why):
    report = edited(saved_report, "validation.outputs.y", {**saved_report["validation"]["outputs"]["y"], **stats})
    if "elements" not in stats:
        del report["validation"]["outputs"]["y"]["elements"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))  # json writes NaN and Infinity, as other tools do
    result = audit(path, "--max-error", "1e-3")
    assert result.exit_code == 1, result.output
    assert "FAIL max-error 0.001" in result.output and why in result.output


@pytest.mark.parametrize("limit", ["nan", "inf", "-1"])
def test_max_error_must_be_a_finite_limit(model_path, limit):
    result = audit(model_path, "--max-error", limit)
    assert result.exit_code == 2 and "--max-error" in result.output, result.output


@pytest.mark.parametrize("op, hint", [("Poww", "Pow"), ("relu", "Relu"), ("", None), ("com.microsoft.FusedCnv",
                                                                                       "com.microsoft.FusedConv")])
def test_expect_no_op_on_an_op_that_does_not_exist_is_a_usage_error(model_path, op, hint):
    result = audit(model_path, "--expect-no-op", op)
    assert result.exit_code == 2, result.output
    assert f"--expect-no-op '{op}': no ONNX or onnxruntime op is named so" in result.output
    assert hint is None or f"did you mean {hint}?" in result.output


def test_expect_no_op_takes_standard_contrib_and_the_models_own_ops(saved_report, tmp_path):
    report = edited(saved_report, "input.ops", {**saved_report["input"]["ops"], "com.example.MyOp": 1})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    result = audit(path, "--expect-no-op", "Softmax", "--expect-no-op", "com.microsoft.FusedConv",
                   "--expect-no-op", "com.example.MyOp", "--expect-no-op", "ai.onnx.ml.Normalizer")
    assert result.exit_code == 0, result.output
    assert result.output.count("PASS no-op") == 4


@pytest.mark.parametrize("field, value, flags, why", [
    ("output", None, ("--expect-no-op", "Pow"), "cannot check: the report has no output op histogram"),
    ("output", DELETE, ("--expect-no-op", "Pow"), "cannot check: the report has no output op histogram"),
    ("validation", None, ("--expect-no-rollback",), "cannot check: validation did not run"),
    ("validation.status", "skipped", ("--expect-no-rollback",), "cannot check: validation did not run"),
    ("build", {"warnings": [{"id": "layernorm-fp16"}]}, ("--expect-no-warning", "timing-cache-unusable"), None),
    ("build", {"log": []}, ("--expect-no-warning", "layernorm-fp16"), "cannot check: the build section lists no warnings"),
    ("fusions", DELETE, ("--expect", "hardswish==0"), "cannot check: the report lists no fusions to count rule"),
    ("fusions", DELETE, ("--expect", "hsigmoid==0"), None),  # a family: absent from fusion_counts means none
])
def test_a_gate_that_cannot_be_evaluated_fails(saved_report, tmp_path, field, value, flags, why):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(edited(saved_report, field, value)))
    result = audit(path, *flags)
    if why is None:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1 and why in result.output, result.output


# ------------------------------------------------------------------------------ any name renders

HOSTILE = "".join(map(chr, range(32))) + "\ud800 ]]> \ufffe & <b>'\""


def test_reports_render_for_any_rule_or_model_name(saved_report, tmp_path):
    """Control characters, an unpaired surrogate and ']]>' in names: JUnit still parses, Markdown/HTML/JSON write."""
    report = edited(saved_report, "rules", {f"rule{HOSTILE}": {"attempts": 1, "hits": 0, "time_s": 0.0}})
    report["near_misses"] = [{"rule": f"rule{HOSTILE}", "family": "f", "at": f"node{HOSTILE}",
                              "reason": f"why{HOSTILE}"}]
    report["input"]["path"] = f"model{HOSTILE}.onnx"
    report["validation"]["outputs"] = {f"y{HOSTILE}": {**saved_report["validation"]["outputs"]["y"], "passed": False,
                                                        "error": f"err{HOSTILE}"}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))  # json escapes the surrogate as \ud800
    result = audit(path, "--junit", tmp_path / "r.xml", "--markdown", tmp_path / "r.md", "--html", tmp_path / "r.html",
                   "--json", tmp_path / "o.json")
    assert result.exit_code == 0, result.output
    names = [c.get("name") for c in ET.parse(tmp_path / "r.xml").getroot().iter("testcase")]
    assert "rule\\x00\\x01" in names[0] and "\\x1f\\ud800 ]]> \\ufffe & <b>'\"" in names[0], names
    text = (tmp_path / "r.xml").read_text()
    assert "node\\x00" in text and "err\\x00" in text
    assert "\\ud800" in (tmp_path / "r.md").read_text() and "\\ud800" in (tmp_path / "r.html").read_text()
    assert json.loads((tmp_path / "o.json").read_text())["input"]["path"] == f"model{HOSTILE}.onnx"


def test_junit_parses_for_a_model_with_control_characters_in_node_names(tmp_path):
    """Names come from the model too: node names with control characters reach JUnit through near misses."""
    model = hswish_model(1)
    model.opset_import[0].version = 13  # HardSwish needs 14: with --no-upgrade, near misses name the nodes
    for node in model.graph.node:
        node.name = node.name.replace("/", "\x01/\x1b")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    result = audit(path, "--no-upgrade", "--junit", tmp_path / "r.xml")
    assert result.exit_code == 0, result.output
    out = "".join(e.text or "" for e in ET.parse(tmp_path / "r.xml").getroot().iter("system-out"))
    assert "not fused at 'block0\\x01/\\x1b" in out, out


def test_an_error_naming_a_hostile_field_is_still_one_printable_line(saved_report, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(edited(saved_report, "rules", {"\ud800\x1b[2J\r\nPASS": None})))
    proc = subprocess.run([sys.executable, "-m", "fuser", "audit", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "\x1b" not in proc.stderr, proc.stderr
    assert "field rules['\\ud800\\x1b[2J PASS']: expected object, got null" in proc.stderr, proc.stderr
