"""What the report shows, once for every document format: a page of sections made of a few kinds of blocks (text,
tables, charts, lists, folded details, code). formats.py renders the same page as Markdown and as HTML, so both
show every section, in the same order, with the same content.

    page = layout(as_saved(report))
    [section.title for section in page.sections]    # Before / after, Audit, Op histogram, Validation: passed, ...

Text is data: a model's names go into `Code` or plain strings and each renderer escapes them for its syntax.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from .codec import to_json
from .digest import near_miss_groups, op_rows
from .document import ModelSummary, Report


# ---------------------------------------------------------------------------------------------- the blocks

@dataclass(frozen=True)
class Code:
    """Inline code: a name from the model (an op, a node, a value)."""

    text: str


@dataclass(frozen=True)
class Strong:
    text: str


@dataclass(frozen=True)
class Mark:
    """A verdict: passed (True), failed (False), or neither (None: skipped, rolled back)."""

    ok: bool | None


Inline = str | Code | Strong | Mark
Cell = Inline | list[Inline] | int | float | None


@dataclass
class Para:
    parts: list[Inline]


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    numeric: frozenset[int] = frozenset()  # right-aligned columns


@dataclass
class Bullets:
    items: list[list[Inline]]


@dataclass
class Pre:
    text: str
    lang: str = ""


@dataclass
class Chart:
    """Horizontal bars on a log scale (1 and 1000 both visible), one group per row and one bar per series; `extra`
    columns (a delta, a time) are shown beside the numbers."""

    label: str  # the header of the row labels
    series: list[str]  # bar names: "before", "after" / "attempts", "hits", "near misses"
    rows: list[tuple[Inline, list[int], list[Cell]]]  # (label, one value per series, one cell per extra)
    extra: list[str] = field(default_factory=list)  # headers of the extra columns
    note: str = ""  # what the chart shows, under it


@dataclass
class Details:
    """Folded away by default: long lists."""

    summary: str
    blocks: list


@dataclass
class Section:
    title: str
    blocks: list


@dataclass
class Page:
    title: list[Inline]
    headline: list[list[Inline]]  # one line each: the verdicts
    sections: list[Section]


# ---------------------------------------------------------------------------------------------- the page

def layout(report: Report) -> Page:
    """The report (as saved: see formats.as_saved) as a page of sections."""
    title = ["fuser report: ", Code((report.input and report.input.path) or "model")]
    sections = [Section("Before / after", [before_after(report)])]
    audit = report.sections.get("audit")
    if audit:
        sections.append(Section("Audit", [Table(["expectation", "result", "detail"], [
            [Code(c.name), [Mark(c.passed), " pass" if c.passed else " FAIL"], c.message] for c in audit.checks])]))
    sections.append(Section("Op histogram", [op_chart(report)]))
    if report.validation:
        sections.append(validation_section(report.validation))
    if report.rules:
        sections.append(Section("Rules", [rule_chart(report)]))
    if report.passes:
        sections.append(passes_section(report))
    if report.near_misses:
        sections.append(near_miss_section(report))
    if report.fusion_counts or report.fusions:
        sections.append(fusions_section(report))
    for key, section in report.sections.items():  # a pass's own section says what it adds to the summary
        if hasattr(section, "summary") and section.summary():
            sections.append(Section(key.replace("_", " ").capitalize(), [Bullets([[line] for line in section.summary()])]))
    if report.build:
        sections.append(build_section(report.build))
    if report.notes or report.warnings:
        sections.append(Section("Notes", [Bullets([[Mark(None), " ", w] for w in report.warnings]
                                                  + [[n] for n in report.notes])]))
    sections.append(reproduce_section(report))
    return Page(title, headline(report), sections)


def headline(report: Report) -> list[list[Inline]]:
    lines = []
    audit = report.sections.get("audit")
    if audit:
        failed = [c for c in audit.checks if not c.passed]
        lines.append([Mark(not failed), " ", Strong(f"audit {'passed' if not failed else 'failed'}"),
                      f": {len(audit.checks) - len(failed)} of {len(audit.checks)} expectations met"])
    v = report.validation
    if v:
        ok = {"passed": True, "rolled-back": None, "failed": False, "skipped": None}.get(v.status)
        lines.append([Mark(ok), " ", Strong(f"validation {v.status}"), f": {v.summary or ''}"])
    counts = report.fusion_counts
    lines.append([Strong("fused"), ": " + (", ".join(f"{k} {n}" for k, n in counts.items()) if counts else "nothing")
                  + f" in {report.time_s:.2f} s"])
    return lines


def size_text(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def num(x, fmt: str = ".3g") -> str:
    return "–" if x is None else format(x, fmt)


def ms(seconds) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f}"


def _model_cells(model: ModelSummary | None, missing: str) -> list[Cell]:
    if model is None:
        return [missing, "–", "–", "–", "–", 0]
    return [Code(model.path) if model.path else missing, Code(model.sha256[:16]) if model.sha256 else "–",
            size_text(model.size_bytes), model.opset, model.nodes, len(model.ops)]


def before_after(report: Report) -> Table:
    names = ("file", "sha256", "size", "opset", "nodes", "distinct ops")
    rows = zip(names, _model_cells(report.input, "–"), _model_cells(report.output, "(in memory)"))
    return Table(["", "before", "after"], [[name, b, a] for name, b, a in rows])


def op_chart(report: Report) -> Chart | Para:
    rows = op_rows(report)
    if not rows:
        return Para(["no ops"])
    return Chart("op", ["before", "after"],
                 [(Code(r.op), [r.before, r.after], [f"{r.delta:+d}" if r.delta else "0"]) for r in rows],
                 extra=["Δ"], note="Op types by size of change, then by count; bars on a log scale.")


def rule_chart(report: Report) -> Chart:
    near: dict[str, int] = {}
    for miss in report.near_misses:
        near[miss.rule] = near.get(miss.rule, 0) + 1
    rows = [(name, [s.attempts, s.hits, near.get(name, 0)], [s.matches, ms(s.time_s)])
            for name, s in report.rules.items()]
    return Chart("rule", ["attempts", "hits", "near misses"], rows, extra=["matches", "time (ms)"],
                 note="attempts: candidates at the rule's root op; matches: the pattern matched; hits: applied. "
                      "Bars on a log scale.")


def passes_section(report: Report) -> Section:
    table = Table(["pass", "runs", "modified", "time (ms)"],
                  [[name, s.runs, s.modified, ms(s.time_s)] for name, s in report.passes.items()],
                  numeric=frozenset({1, 2, 3}))
    rounds = Para([f"{report.iterations} rounds; ",
                   "fixed point reached" if report.reached_fixed_point else Strong("no fixed point")])
    return Section("Passes", [table, rounds])


def validation_section(v) -> Section:
    blocks: list = []
    info = f"provider {v.provider} ({v.device or '–'}) · inputs {v.inputs or '–'}"
    if v.shapes:
        info += " · shapes " + "; ".join(", ".join(f"{k} {'x'.join(map(str, s or [])) or 'scalar'}"
                                                   for k, s in m.items()) for m in v.shapes)
    blocks.append(Para([info]))
    if v.reason:
        blocks.append(Para([f"Skipped: {v.reason}"]))
    if v.outputs:
        rows = []
        for name, s in v.outputs.items():
            nan_inf = (f"{s.nan.reference}/{s.inf.reference if s.inf else 0} → "
                       f"{s.nan.optimized}/{s.inf.optimized if s.inf else 0}") if s.nan else "–"
            result = "pass" if s.passed else f"FAIL ({'?' if s.mismatches is None else s.mismatches} off)"
            if s.judged_by == "fp32-reference":
                result += " vs fp32"
            if s.error:
                result = f"FAIL: {s.error}"
            rows.append([Code(name), s.dtype or "–", num(s.max_abs), num(s.mean_abs), num(s.median_abs),
                         num(s.p99_abs), num(s.max_rel), num(s.cosine, ".6f"), nan_inf,
                         f"{num(s.atol, 'g')} / {num(s.rtol, 'g')}", [Mark(s.passed), f" {result}"]])
        blocks.append(Table(["output", "dtype", "max abs", "mean abs", "median abs", "p99 abs", "max rel", "cosine",
                             "NaN/Inf ref→opt", "atol / rtol", "result"], rows,
                            numeric=frozenset(range(2, 8))))
    if v.rolled_back:
        trials = v.bisection.trials if v.bisection else "?"
        blocks.append(Para([Strong("Rolled back"), f" ({len(v.rolled_back)}; found in {trials} trials):"]))
        blocks.append(Bullets([[Code(r.key), f" ({r.rule}) replacing {', '.join(r.replaced)}: {r.effect}"]
                               for r in v.rolled_back]))
    return Section(f"Validation: {v.status}", blocks)


def near_miss_section(report: Report) -> Section:
    groups = near_miss_groups(report)
    by_reason = Table(["count", "rule", "reason", "first at"],
                      [[g.count, g.rule, g.reason, Code(g.first_at)] for g in groups], numeric=frozenset({0}))
    every = Table(["rule", "at", "reason"], [[m.rule, Code(m.at), m.reason] for m in report.near_misses])
    blocks: list = [by_reason]
    if len(groups) < len(report.near_misses):
        blocks.append(Details(f"Every near miss ({len(report.near_misses)})", [every]))
    return Section(f"Near misses ({len(report.near_misses)})", blocks)


def fusions_section(report: Report) -> Section:
    counts = report.fusion_counts
    blocks: list = [Para(["Per family: " + (", ".join(f"{k} {n}" for k, n in counts.items()) or "nothing")])]
    fusions = report.fusions or []
    if fusions:
        blocks.append(Details(f"Fused instances ({len(fusions)}) with the nodes they replaced", [Table(
            ["key", "rule", "replaced", "created"],
            [[Code(f.key), f.rule, ", ".join(f.replaced),
              ", ".join(f"{n} ({op})" for n, op in zip(f.created, f.created_ops))] for f in fusions])]))
    return Section("Fusions", blocks)


def build_section(build) -> Section:
    blocks: list = []
    engine, network = build.engine, build.network
    if build.backend and engine:
        blocks.append(Para([f"{build.backend.name} {build.backend.version}: ",
                            Code(engine.path) if engine.path else "(not written)",
                            f", {size_text(engine.size_bytes)}, built in {engine.build_seconds:.2f} s; "
                            f"{network.layer_count if network else '?'} network layers, "
                            f"{len(engine.layers)} engine layers"]))
    if build.timing_cache:
        cache = build.timing_cache
        blocks.append(Para(["timing cache ", Code(cache.path), f": {cache.status}"]))
    if build.warnings:
        blocks.append(Table(["warning", "count", "what it means"],
                            [[Code(w.id), w.count or len(w.lines), w.explanation] for w in build.warnings],
                            numeric=frozenset({1})))
    elif build.warnings is not None:
        blocks.append(Para(["No warning fuser recognizes in the builder's log."]))
    return Section("Build", blocks)


def reproduce_section(report: Report) -> Section:
    command = " ".join(shlex.quote(str(a)) for a in report.command)
    return Section("Reproduce", [
        Para([f"fuser {report.fuser_version}, report schema {report.schema_version}"]),
        Pre(command),
        Details("Options", [Pre(json.dumps(to_json(report.options), indent=1), "json")])])
