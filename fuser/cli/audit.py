"""`fuser audit MODEL.onnx|REPORT.json [--expect layernorm>=35] ...`: gate a CI job on what fuser did.

Runs the stage on MODEL (fuser/stage.py: with validation, in memory unless --save-model) or reads a saved
JSON report into the same types (fuser/audit.py `load_report`), checks the expectations, prints one line per
expectation, writes the reports asked for, and exits 1 when any expectation failed, naming each.

    fuser audit model.onnx --expect layernorm>=24 --expect-no-op Pow --max-error 1e-3 \\
        --baseline main.json --json report.json --markdown "$GITHUB_STEP_SUMMARY" --junit audit.xml
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

from fuser import stage
from fuser.report.audit import AuditSection, Expectations, check, load_report
from fuser.errors import UsageError
from fuser.outputs import OutputPlan, write_atomic
from fuser.report import Report
from fuser.report.formats import FORMATS, as_saved, printable, render
from fuser.report.terminal import audit_header
from fuser.validation.validate import ValidationFailed

from .build import trt_build_options
from .options import options_from, rule_options, validation_options
from .progress import Display

_FILE = click.Path(dir_okay=False, path_type=Path)
_OUT = click.Path(path_type=Path)  # outputs are checked by the run's OutputPlan, one rule for every flag
_EXT = {"json": "json", "md": "md", "junit": "xml", "html": "html"}


@click.command()
@click.argument("model", type=_FILE)
@click.option("--expect", multiple=True, metavar="FAMILY>=N",
              help="Applied rewrites of a family (or rule) compared with a count: >=, <=, ==, !=, >, < "
                   "(repeatable), e.g. --expect 'layernorm>=35'.")
@click.option("--expect-no-op", "no_ops", multiple=True, metavar="OP",
              help="The optimized model must contain no OP node (repeatable).")
@click.option("--expect-no-warning", "no_warnings", multiple=True, metavar="ID",
              help="The TensorRT build must not log warning ID (needs a report with a build section).")
@click.option("--expect-no-rollback", is_flag=True, help="Fail when validation had to roll a rewrite back.")
@click.option("--max-error", type=click.FloatRange(min=0), default=None,
              help="Every output's max absolute error against the original must be at most this.")
@click.option("--baseline", type=_FILE, default=None,
              help="An earlier JSON report: fail when any family has fewer fusions than it had.")
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS),
              help="Render the report in this format to -o (or stdout); repeatable with -o as a stem.")
@click.option("-o", "--output", type=_OUT, default=None, help="Where --format goes.")
@click.option("--json", "json_path", type=_OUT, default=None, help="Write the JSON report here.")
@click.option("--markdown", "markdown_path", type=_OUT, default=None,
              help="Write the Markdown report here (e.g. \"$GITHUB_STEP_SUMMARY\").")
@click.option("--junit", "junit_path", type=_OUT, default=None, help="Write JUnit XML here.")
@click.option("--html", "html_path", type=_OUT, default=None, help="Write the HTML report (the Markdown's sections, with charts) here.")
@click.option("--save-model", type=_OUT, default=None, help="Also write the optimized model here.")
@click.option("--build", "build_engine_too", is_flag=True,
              help="Also build a TensorRT(-RTX) engine from the optimized model, so --expect-no-warning "
                   "can check the builder's log.")
@trt_build_options
@rule_options
@validation_options
def audit(model: Path, expect, no_ops, no_warnings, expect_no_rollback, max_error, baseline, formats, output,
          json_path, markdown_path, junit_path, html_path, save_model, build_engine_too, build_options, **kw):
    """Optimize MODEL (or read a JSON report) and check expectations; exit 1 naming each that failed."""
    expectations = Expectations.from_cli(expect, no_ops, max_error, baseline, no_warnings, expect_no_rollback)
    targets = _targets(formats, output, json_path, markdown_path, junit_path, html_path)
    plan = OutputPlan()  # every file this run writes, checked before any work
    plan.read("the --baseline report", baseline)
    for flag, _, path in targets:
        plan.write(flag, path)
    error = None
    if model.suffix.lower() == ".json":
        _refuse_optimizing_flags()
        plan.read("the audited report", model)
        plan.check()
        report = load_report(model, "report")
    else:
        report, error = _optimize(model, save_model, kw, build_options if build_engine_too else None, plan)
    checks = check(report, expectations)
    report.set_section(AuditSection.of(checks))
    for _, fmt, path in targets:
        text = render(report, fmt)
        if path is None:
            click.echo(text, nl=False)
        else:
            write_atomic(path, text.encode())
    to_stderr = any(path is None for _, _, path in targets)  # stdout carries the rendered report
    click.echo(printable(audit_header(report)), err=to_stderr)
    for c in checks:
        click.echo(printable(f"  {'PASS' if c.passed else 'FAIL'} {c.name}: {c.message}"), err=to_stderr)
    failed = [c for c in checks if not c.passed]
    if error:
        click.echo(printable(f"fuser: error: {error}"), err=True)
    if failed:
        click.echo(printable(f"fuser: audit failed: {len(failed)} of {len(checks)} expectations failed: "
                             + ", ".join(c.name for c in failed)), err=True)
        sys.exit(1)
    if error:
        sys.exit(1)
    click.echo(f"audit passed: {len(checks)} expectation{'s' if len(checks) != 1 else ''} met", err=to_stderr)


# What applies to a saved report; every other flag (rules, validation, --save-model, --build and its options)
# shapes a run of the optimizer, which a report does not get.
_REPORT_FLAGS = {"model", "expect", "no_ops", "no_warnings", "expect_no_rollback", "max_error", "baseline", "formats",
                 "output", "json_path", "markdown_path", "junit_path", "html_path"}


def _refuse_optimizing_flags() -> None:
    ctx = click.get_current_context()
    for param in ctx.command.params:
        if param.name not in _REPORT_FLAGS and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            raise UsageError(f"{param.opts[0]} needs a model, not a report")


def _targets(formats, output, json_path, markdown_path, junit_path, html_path) -> list[tuple[str, str, Path | None]]:
    """(flag, format, path) for every report asked for; path None: stdout."""
    targets: list[tuple[str, str, Path | None]] = []
    formats = list(dict.fromkeys(formats))
    if output is not None and not formats:
        raise UsageError("-o/--output names where --format goes; give --format (json, md, junit or html)")
    if len(formats) == 1:
        targets.append(("-o", formats[0], output))
    elif formats:
        if output is None:
            raise UsageError("several --format values need -o (used as a stem: OUT.json, OUT.md, ...)")
        if not output.name:
            raise UsageError(f"-o {output} is a folder; several --format values need a file stem, e.g. -o report")
        targets += [(f"-o (--format {f})", f, output.with_suffix(f".{_EXT[f]}")) for f in formats]
    for flag, fmt, path in (("--json", "json", json_path), ("--markdown", "md", markdown_path),
                            ("--junit", "junit", junit_path), ("--html", "html", html_path)):
        if path is not None:
            targets.append((flag, fmt, path))
    return targets


def _optimize(model: Path, save_model: Path | None, kw: dict, build_options, plan: OutputPlan
              ) -> tuple[Report, str | None]:
    """The stage on MODEL (the model kept in memory unless --save-model); a report whose validation failed is
    still audited and rendered, with the error."""
    try:
        with Display() as progress:
            result = stage.run(model, options_from(kw), output=save_model, build=build_options, plan=plan,
                               flags=stage.Flags(output="--save-model"), progress=progress)
    except ValidationFailed as exc:
        if exc.report is None:
            raise
        return as_saved(exc.report), str(exc)
    return as_saved(result.report), None
