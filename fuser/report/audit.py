"""Expectations a CI job gates on, checked against a typed report (a run's, or a saved JSON report read back).

    layernorm>=35            applied rewrites of a family (or a rule) compared with a number: >= <= == != > <
    no-op Pow                the output has no Pow node (`--expect-no-op`)
    max-error 1e-3           every validated output's max absolute error is at most this (`--max-error`)
    baseline previous.json   no family has fewer fusions than in that earlier report (`--baseline`)
    no-warning ID            the TensorRT build logged no warning with this id (`--expect-no-warning`)
    validation               validation did not fail (always checked when the report has a validation section)
    no-rollback              validation rolled nothing back (`--expect-no-rollback`)

`check(report, expectations)` returns one `Check` per expectation; the CLI prints the failed ones by
name and exits 1. Results are also stored in the report as its `audit` section (`AuditSection`), so
the Markdown and JUnit renderings show them.

A gate must be able to fail: an expectation naming something that does not exist (a family, an op, a
warning id) is a usage error, and one the report holds no data for (no validation statistics, no build
log, a NaN error) fails with "cannot check" instead of passing.
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..errors import UsageError
from . import FieldError, Report, read_report
from ..validation.validate import ValidationSection

OPERATORS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "=": operator.eq, "!=": operator.ne,
             ">": operator.gt, "<": operator.lt}
_EXPECT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(>=|<=|==|!=|=|>|<)\s*(\d+)\s*$")


@dataclass(frozen=True)
class CountExpectation:
    """`family OP number` on fusion counts (a rule name works too)."""

    name: str
    op: str
    value: int

    def __str__(self) -> str:
        return f"{self.name}{'==' if self.op == '=' else self.op}{self.value}"


def parse_expectation(text: str) -> CountExpectation:
    m = _EXPECT.match(text)
    if not m:
        raise UsageError(f"bad --expect '{text}': expected FAMILY OP COUNT like layernorm>=35 "
                         "(OP one of >=, <=, ==, !=, >, <)")
    return CountExpectation(m.group(1), m.group(2), int(m.group(3)))


@dataclass
class Expectations:
    counts: list[CountExpectation] = field(default_factory=list)
    no_ops: list[str] = field(default_factory=list)
    max_error: float | None = None
    baseline: Report | None = None
    baseline_path: str | None = None
    no_warnings: list[str] = field(default_factory=list)
    no_rollback: bool = False

    @staticmethod
    def from_cli(expect=(), no_ops=(), max_error=None, baseline=None, no_warnings=(), no_rollback=False
                 ) -> Expectations:
        if max_error is not None and not (math.isfinite(max_error) and max_error >= 0):
            raise UsageError(f"--max-error {max_error}: expected a finite number >= 0")
        known_ids = warning_ids()
        for wid in no_warnings:
            if wid not in known_ids:
                raise UsageError(f"--expect-no-warning {wid}: no such warning id; fuser recognizes "
                                 f"{', '.join(known_ids)}")
        return Expectations([parse_expectation(t) for t in expect], list(no_ops), max_error,
                            load_report(baseline, "--baseline") if baseline else None,
                            str(baseline) if baseline else None, list(no_warnings), no_rollback)


@dataclass
class Check:
    """One expectation's verdict (field metadata: fuser/report/codec.py)."""

    name: str  # what was expected, as the user wrote it ("layernorm>=35", "no-op Pow")
    kind: str  # count | no-op | max-error | baseline | no-warning | validation | no-rollback
    passed: bool
    message: str


@dataclass
class AuditSection:
    """The report's `audit`: every expectation checked, and whether all passed."""

    key: ClassVar[str] = "audit"

    passed: bool
    checks: list[Check]

    @staticmethod
    def of(checks: list[Check]) -> AuditSection:
        return AuditSection(all(c.passed for c in checks), checks)


def report_sections() -> tuple[type, ...]:
    """Every section type a report may hold beyond its core: the passes' and the audit's."""
    from fuser.assembly import report_sections as pass_sections

    return (*pass_sections(), AuditSection)


def load_report(path, what: str = "report") -> Report:
    """A saved JSON report read into the typed Report; a usage error naming the field when it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what}: no such file: {path}")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UsageError(f"{what} {path} is not a JSON report ({exc})") from None
    if not isinstance(data, dict) or "fusion_counts" not in data:
        raise UsageError(f"{what} {path} is not a fuser report (it has no fusion_counts)")
    try:
        return read_report(data, report_sections())
    except FieldError as exc:
        raise UsageError(f"{what} {path} is not a fuser report: {exc}") from None
    except RecursionError:
        raise UsageError(f"{what} {path} is not a fuser report: it is nested too deeply") from None


def warning_ids() -> list[str]:
    """The ids `--expect-no-warning` takes: the TensorRT warnings fuser recognizes."""
    from fuser.trt.logs import KNOWN_WARNINGS

    return [w.id for w in KNOWN_WARNINGS]


def known_ops(report: Report) -> set[str]:
    """Op names `--expect-no-op` takes: every ONNX and onnxruntime op (other domains as domain.Op, as in the
    report's histograms) and any op the report's models have."""
    import onnx.defs
    from onnxruntime.capi import onnxruntime_pybind11_state as ort

    schemas = (*onnx.defs.get_all_schemas_with_history(), *ort.get_all_operator_schema())
    names = {s.name if s.domain in ("", "ai.onnx") else f"{s.domain}.{s.name}" for s in schemas}
    for model in (report.input, report.output):
        names |= set(model.ops) if model else set()
    return names


def _unknown_op(op: str, known: set[str]) -> UsageError:
    import difflib

    by_case = {name.lower(): name for name in known}
    guess = by_case.get(op.lower()) or next(iter(difflib.get_close_matches(op, known, n=1, cutoff=0.8)), None)
    hint = f" (did you mean {guess}?)" if guess else ""
    return UsageError(f"--expect-no-op '{op}': no ONNX or onnxruntime op is named so, and the model has none{hint}")


def known_names(report: Report) -> set[str]:
    """Rule and family names an expectation may use: the library's, and any the report mentions."""
    from fuser.assembly import all_rules

    names = {r.name for r in all_rules()} | {r.family for r in all_rules()}
    names |= set(report.rule_sources) | {s.family for s in report.rule_sources.values()}  # the user's rules too
    names |= set(report.rules) | set(report.fusion_counts)
    names |= {x.rule for x in (*(report.fusions or ()), *report.near_misses)}
    names |= {x.family for x in (*(report.fusions or ()), *report.near_misses)}
    return {n for n in names if n}


def count(report: Report, name: str) -> int | None:
    """Applied rewrites of family `name`, or of rule `name` when no family has that name; None when the report
    cannot tell (a rule name, and no list of fusions to count)."""
    from fuser.assembly import all_rules

    if name in report.fusion_counts:
        return report.fusion_counts[name]
    if name in {r.family for r in all_rules()} | {s.family for s in report.rule_sources.values()}:  # did not fire
        return 0
    if report.fusions is None:
        return None
    return sum(1 for f in report.fusions if f.rule == name)


def check(report: Report, exp: Expectations) -> list[Check]:
    checks: list[Check] = []
    known = known_names(report)
    for e in exp.counts:
        if e.name not in known:
            raise UsageError(f"--expect {e}: no rule or family is named '{e.name}' (see `fuser rules`)")
        have = count(report, e.name)
        if have is None:
            checks.append(Check(str(e), "count", False, f"cannot check: the report lists no fusions to count "
                                                        f"rule {e.name}'s"))
            continue
        ok = OPERATORS[e.op](have, e.value)
        checks.append(Check(str(e), "count", ok, f"{e.name}: {have} fusion{'s' if have != 1 else ''}"
                                                  + ("" if ok else f", expected {str(e)[len(e.name):]}")))
    ops = known_ops(report) if exp.no_ops else set()
    for op in exp.no_ops:
        if op not in ops:
            raise _unknown_op(op, ops)
        checks.append(_no_op(report, op))
    validation = report.validation
    if validation:
        failed = validation.status == "failed"
        checks.append(Check("validation", "validation", not failed,
                            validation.summary if not failed else f"validation failed: {validation.summary}"))
    if exp.max_error is not None:
        checks.append(_max_error(validation, exp.max_error))
    if exp.no_rollback:
        checks.append(_no_rollback(validation))
    if exp.baseline is not None:
        checks.extend(_baseline(report, exp.baseline, exp.baseline_path or "baseline"))
    for wid in exp.no_warnings:
        checks.append(_no_warning(report, wid))
    return checks


def _no_op(report: Report, op: str) -> Check:
    if report.output is None:
        return Check(f"no-op {op}", "no-op", False, "cannot check: the report has no output op histogram")
    n = report.output.ops.get(op, 0)
    return Check(f"no-op {op}", "no-op", n == 0,
                 f"no {op} left" if n == 0 else f"{n} {op} node{'s' if n != 1 else ''} left in the output")


def _no_rollback(validation: ValidationSection | None) -> Check:
    if not validation or validation.status == "skipped":
        why = (validation and validation.summary) or "the report has no validation section"
        return Check("no-rollback", "no-rollback", False, f"cannot check: validation did not run ({why})")
    rolled = validation.rolled_back
    return Check("no-rollback", "no-rollback", not rolled,
                 "nothing rolled back" if not rolled else "rolled back " + ", ".join(r.key for r in rolled))


def _max_error(validation: ValidationSection | None, limit: float) -> Check:
    name = f"max-error {limit:g}"
    if not validation or validation.status == "skipped" or not validation.outputs:
        why = (validation and validation.summary) or "the report has no validation statistics"
        return Check(name, "max-error", False, f"cannot check: {why}")
    over = []
    worst = 0.0
    for out, stats in validation.outputs.items():
        err = stats.max_abs
        if err is None:
            if stats.elements is None or stats.elements:
                over.append(f"'{out}' has no finite error (NaN or Inf, or {stats.error or 'not compared'})")
            continue
        if not math.isfinite(err):
            over.append(f"'{out}' {err} is not a finite number")
            continue
        worst = max(worst, err)
        if err > limit:
            over.append(f"'{out}' {err:.3g}")
    if over:
        return Check(name, "max-error", False, f"max abs error over {limit:g}: {', '.join(over)}")
    return Check(name, "max-error", True, f"max abs error {worst:.3g} <= {limit:g}")


def _baseline(report: Report, baseline: Report, path: str) -> list[Check]:
    now, before = report.fusion_counts, baseline.fusion_counts
    checks = []
    for family in sorted(before):
        have, had = now.get(family, 0), before[family]
        ok = have >= had
        msg = (f"{family}: {have} fusions (baseline {had})" if ok
               else f"fewer fusions than the baseline: {family} {have} < {had} ({path})")
        checks.append(Check(f"baseline {family}>={had}", "baseline", ok, msg))
    if not before:
        checks.append(Check("baseline", "baseline", True, f"the baseline {path} has no fusions"))
    return checks


def _no_warning(report: Report, wid: str) -> Check:
    name = f"no-warning {wid}"
    build = report.build
    if not build:
        return Check(name, "no-warning", False,
                     "cannot check: the report has no build section (no engine was built)")
    if build.warnings is None:
        return Check(name, "no-warning", False, "cannot check: the build section lists no warnings")
    hits = [w for w in build.warnings if w.id == wid]
    if not hits:
        return Check(name, "no-warning", True, f"no {wid} warning in the build")
    text = next(iter(hits[0].lines), "")
    detail = f": {text[:200]}" if text else ""
    return Check(name, "no-warning", False, f"the build logged {wid} {len(hits)}x{detail}")
