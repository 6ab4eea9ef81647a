"""The stage in one library call (fuser/stage.py): `fuser optimize` and `fuser audit` wrap it, so a library user gets
the same report, the same files and the same errors; every file the run writes is checked before any work."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner
from test_audit import hswish_model
from test_bad_input import external_model
from test_validate import planted_model, planted_passes

import fuser
from fuser import stage
from fuser.cli import main
from fuser.errors import UsageError
from fuser.outputs import OutputPlan
from fuser.report import to_json
from fuser.trt import BuildOptions, parse_profile
from fuser.validation.validate import ValidationFailed

PROFILE = "x:1x8,2x8,4x8"


def comparable(report: dict, folder) -> dict:
    """A JSON report without what differs between two runs of the same work: times, the argv, the output's name."""
    text = json.dumps(report).replace(str(folder), "DIR").replace("lib.", "OUT.").replace("cli.", "OUT.")
    report = json.loads(text)
    report.pop("command")
    report.pop("time_s")
    for stats in (*report["passes"].values(), *report["rules"].values()):
        stats.pop("time_s")
    report["validation"].pop("time_s")
    if report["build"]:
        report["build"] = {k: report["build"][k] for k in ("backend", "options", "network", "timing_cache")}
        report["build"]["engine"] = report["build"]["network"]["layer_count"]
    return report


def test_the_library_writes_what_the_command_line_writes(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(hswish_model(), src)
    cli = CliRunner().invoke(main, ["optimize", str(src), "-o", str(tmp_path / "cli.onnx"), "--target", "tensorrt",
                                    "--report", str(tmp_path / "cli.json"), "--build", "--opt-level", "0",
                                    "--profile", PROFILE])
    assert cli.exit_code == 0, cli.output
    build = BuildOptions(profiles=(parse_profile(PROFILE),), opt_level=0)
    result = stage.run(src, fuser.Options(target="tensorrt"), output=tmp_path / "lib.onnx",
                       report_path=tmp_path / "lib.json", build=build, engine=tmp_path / "lib.plan")
    assert (tmp_path / "lib.onnx").read_bytes() == (tmp_path / "cli.onnx").read_bytes()
    assert (tmp_path / "lib.plan").stat().st_size == (tmp_path / "cli.plan").stat().st_size > 0
    saved = json.loads((tmp_path / "lib.json").read_text())
    assert saved == to_json(result.report) and result.build.engine_path == tmp_path / "lib.plan"
    assert comparable(saved, tmp_path) == comparable(json.loads((tmp_path / "cli.json").read_text()), tmp_path)
    assert saved["output_files"] == [str(tmp_path / "lib.onnx")]
    assert saved["build"]["engine"]["path"] == str(tmp_path / "lib.plan")


def test_optimize_and_optimize_file_are_the_stage(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(hswish_model(), src)
    report = fuser.optimize_file(src, tmp_path / "o.onnx")
    model, in_memory = fuser.optimize(src)
    assert report.output.path == str(tmp_path / "o.onnx") and report.output_files == [str(tmp_path / "o.onnx")]
    assert in_memory.output.path is None and in_memory.output_files == []
    assert onnx.load(tmp_path / "o.onnx").graph == model.graph
    assert to_json(in_memory)["fusions"] == to_json(report)["fusions"]


class Spy:
    """A pass that records that the run did work."""

    name, requires = "spy", ()
    runs = 0

    def run(self, graph, ctx) -> bool:
        Spy.runs += 1
        return False


@pytest.mark.parametrize("where", ["report over the input", "a caller's file over the output",
                                   "the engine over the output", "output over the input's data"])
def test_every_file_the_stage_writes_is_checked_before_any_work(tmp_path, where):
    src = external_model(tmp_path, "m.onnx", location="m.data")
    out = tmp_path / "o.onnx"
    plan, kw = OutputPlan(), {"output": out}
    if where == "report over the input":
        kw["report_path"] = src
    elif where == "a caller's file over the output":
        plan.write("--json", out)
    elif where == "the engine over the output":
        kw.update(build=BuildOptions(), engine=out)
    else:
        kw["output"] = tmp_path / "m.data"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    Spy.runs = 0
    with pytest.raises(UsageError):
        stage.run(src, passes=[Spy()], plan=plan, **kw)
    assert Spy.runs == 0 and {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_library_refuses_what_the_command_line_refuses(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(hswish_model(), src)
    cli = CliRunner().invoke(main, ["optimize", str(src), "-o", str(src)])
    with pytest.raises(UsageError) as library:
        fuser.optimize_file(src, src)
    assert cli.exit_code == 2 and "fuser: error: -o " in cli.output
    assert str(library.value).startswith("output ") and str(library.value).split(" ", 2)[2] in cli.output
    with pytest.raises(UsageError, match="no rule or family named|unknown"):
        stage.run(tmp_path / "missing.onnx", fuser.Options(rules=("layrnorm",)))  # names first, then the file


def test_a_failed_validation_writes_only_the_report(tmp_path):
    src = tmp_path / "planted.onnx"
    onnx.save(planted_model(), src)
    with pytest.raises(ValidationFailed) as info:
        stage.run(src, fuser.Options(strict=True), output=tmp_path / "o.onnx", report_path=tmp_path / "r.json",
                  passes=planted_passes())
    assert not (tmp_path / "o.onnx").exists()
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["validation"]["status"] == "failed" == info.value.report.validation.status
    assert saved == to_json(info.value.report)
