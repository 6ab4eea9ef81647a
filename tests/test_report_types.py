"""The typed report: one serializer both ways (a saved report reads back into the same types, field by field), the
checked-in JSON schema generated from the types, errors naming the field, and a new section being one type."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import jsonschema
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper
from test_report_formats import check_schema, layernorm_model
from test_validate import planted_model, planted_passes

import fuser
from fuser.report.audit import AuditSection, Expectations, check, report_sections
from fuser.cli import main
from fuser.assembly import default_passes
from fuser.pass_manager import PassResult
from fuser.passes import CleanupSection, FoldingSection, PrecisionStats
from fuser.report import FieldError, Report, read_report, to_json
from fuser.report.formats import render
from fuser.report.schema import checked_in, report_schema
from fuser.report.terminal import optimize_summary
from fuser.validation.validate import OutputStats, ValidationSection


@pytest.fixture(scope="module")
def rich_report() -> Report:
    """A report with every kind of section: rolled-back validation, folding, clean-up, fp16, an audit."""
    model = planted_model()
    model.graph.node[-1].output[0] = "y_sum"
    model.graph.node.append(helper.make_node("Identity", ["y_sum"], ["y"], name="noop"))
    fp16 = fuser.Options(precision="fp16")
    _, report = fuser.optimize(model, fp16, passes=[planted_passes()[0], *default_passes(fp16)[1:]])
    report.set_section(AuditSection.of(check(report, Expectations.from_cli(["hswish>=1"], ["Pow"]))))
    assert report.validation.status == "rolled-back"
    return report


def test_the_checked_in_schema_is_the_one_generated_from_the_types():
    assert checked_in() == report_schema(report_sections()), "run `python -m fuser.report.schema`"
    jsonschema.Draft202012Validator.check_schema(checked_in())
    proc = subprocess.run([sys.executable, "-m", "fuser.report.schema", "--check"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_report_reads_back_into_the_same_types(rich_report):
    document = to_json(rich_report)
    assert {"folding", "cleanup", "precision", "audit"} <= set(document) and document["fusions"]
    check_schema(document)
    back = read_report(json.loads(json.dumps(document)), report_sections())
    assert to_json(back) == document  # every field, both ways
    assert isinstance(back.validation, ValidationSection) and back.validation.status == rich_report.validation.status
    assert all(isinstance(s, OutputStats) for s in back.validation.outputs.values())
    assert [type(back.sections[k]) for k in ("folding", "cleanup", "precision", "audit")] == [
        FoldingSection, CleanupSection, PrecisionStats, AuditSection]
    assert back.options == rich_report.options and back.fusions == rich_report.fusions


def test_every_format_renders_a_saved_report_as_it_renders_the_run(rich_report):
    back = read_report(to_json(rich_report), report_sections())
    for fmt in ("json", "md", "junit", "html"):
        assert render(back, fmt) == render(rich_report, fmt), fmt
    assert optimize_summary(back, "a", "b") == optimize_summary(rich_report, "a", "b")
    assert "folded:" in optimize_summary(back, "a", "b") or "fp16:" in optimize_summary(back, "a", "b")


def test_a_saved_report_reads_back_from_the_command_line(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(layernorm_model(), src)
    result = CliRunner().invoke(main, ["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--report",
                                       str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r.json").read_text())
    assert to_json(read_report(saved, report_sections())) == saved


@pytest.mark.parametrize("document, message", [
    ({"fusion_counts": {}, "validation": {"status": "passed"}}, "field validation: 'summary' is missing"),
    ({"fusion_counts": {}, "fusions": None}, "field fusions: expected array, got null"),  # absent: not recorded
    ({"fusion_counts": {}, "build": {"warnings": None}}, "field build.warnings: expected array, got null"),
    ({"fusion_counts": {}, "validation": {"status": "ok", "summary": "", "shapes": [], "outputs": {},
                                          "rolled_back": []}}, "field validation.status: expected one of 'passed'"),
    ({"fusion_counts": {}, "validation": {"status": "passed", "summary": "", "shapes": [], "rolled_back": [],
                                          "outputs": {"y": {"passed": True, "elements": None}}}},
     "field validation.outputs.y.elements: expected integer, got null"),
    ({"fusion_counts": {}, "options": {"target": "gpu"}}, "field options: unknown target 'gpu'"),
    ({"fusion_counts": {}, "folding": {"skipped": [{"node": "a", "op": "Add"}]}}, "field folding.skipped[0]: "
                                                                                   "'reason' is missing"),
    ({"schema_version": "2.0", "fusion_counts": {}}, "field schema_version: version 2.0 is not 1.x"),
])
def test_a_field_that_does_not_fit_is_named(document, message):
    with pytest.raises(FieldError) as info:
        read_report(document, report_sections())
    assert str(info.value).startswith(message), str(info.value)


def test_absent_is_not_recorded_and_null_statistics_are_numbers_that_were_not_finite():
    report = read_report({"fusion_counts": {"hswish": 1}, "validation": {
        "status": "passed", "summary": "", "shapes": [{"seq": [[2], [3]], "opt": None}], "rolled_back": [],
        "outputs": {"y": {"passed": True, "max_abs": None, "mean_abs": float("nan")}}}}, report_sections())
    assert report.fusions is None and report.near_misses == [] and report.build is None
    stats = report.validation.outputs["y"]
    assert stats.max_abs is None and stats.mean_abs != stats.mean_abs and stats.elements is None
    assert to_json(report)["validation"]["outputs"]["y"] == {"mean_abs": None, "passed": True}  # None: left out


@dataclass
class CallsSection:
    """A section a new pass brings along: its type is all the report needs."""

    key: ClassVar[str] = "calls"
    calls: int = 0

    def summary(self) -> list[str]:
        return [f"called {self.calls} times"]


class CountingPass:
    name, requires = "counting", ()

    def run(self, graph, ctx) -> PassResult:
        ctx.report.section(CallsSection).calls += 1
        return PassResult(False)


def test_a_new_pass_section_is_one_type():
    _, report = fuser.optimize(layernorm_model(), passes=[CountingPass()], validate=False)
    document = to_json(report)
    assert document["calls"] == {"calls": 1}
    assert read_report(document, [CallsSection]).sections["calls"] == CallsSection(1)
    assert "  called 1 times" in optimize_summary(report, "a", "b").splitlines()
    schema = report_schema([CallsSection])
    assert schema["properties"]["calls"] == {"$ref": "#/$defs/CallsSection"}
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
