"""The report in the formats CI tools read, every one rendered from the typed Report (`render(report, fmt)`).

    json      the document itself (codec.to_json); its schema is fuser/schema/report.schema.json
    md        Markdown for a CI job summary (`--markdown "$GITHUB_STEP_SUMMARY"`): before/after table,
              op histogram chart, fusions, validation statistics, rules, near misses, provenance, how to reproduce
    junit     JUnit XML: one test case per rule (fails when validation rolled one of its rewrites back),
              one per validated output, one per audit expectation
    html      a standalone page: the before/after table and the op histogram as a bar chart

A run's report renders exactly as its saved JSON read back would: it goes through the JSON first, so names
protobuf handed back as bytes are text and NaN is null in every format. Names are data from a model or a JSON
file: `printable` writes the characters a file or a terminal cannot take (control characters, unpaired
surrogates, what XML 1.0 forbids) as visible escapes.
"""

from __future__ import annotations

import html
import json
import re
import shlex
import xml.etree.ElementTree as ET

from .codec import to_json
from .document import ModelSummary, Report, read_report

FORMATS = ("json", "md", "junit", "html")
BAR_WIDTH = 20

_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def printable(text: str) -> str:
    """`text` with control characters (but newline and tab), unpaired surrogates and U+FFFE/U+FFFF written as
    \\xNN / \\uNNNN: safe in XML 1.0, in UTF-8 files and on a terminal."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def render(report: Report, fmt: str) -> str:
    renderers = {"json": _json_text, "md": to_markdown, "junit": to_junit, "html": to_html}
    if fmt not in renderers:
        raise ValueError(f"unknown report format '{fmt}' (choose from {', '.join(FORMATS)})")
    return printable(renderers[fmt](report))


def as_saved(report: Report) -> Report:
    """The report as its JSON reads back: text names, null for NaN (what every renderer shows)."""
    return read_report(to_json(report), [type(section) for section in report.sections.values()])


def _json_text(report: Report) -> str:
    """Strict JSON (NaN and Inf, which JSON lacks, are null)."""
    return json.dumps(to_json(report), indent=2, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------- Markdown

def _md(value) -> str:
    """Text safe inside a Markdown table cell."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _code(value) -> str:
    text = _md(value).replace("`", "'")
    return f"`{text}`" if text else ""


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _num(x, fmt: str = ".3g") -> str:
    return "–" if x is None else format(x, fmt)


def _ms(seconds) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f}"


def _bar(n: int, top: int, width: int = BAR_WIDTH) -> str:
    filled = 0 if not top else round(width * n / top)
    if n and not filled:
        filled = 1
    return "█" * filled + "·" * (width - filled)


def _status_icon(ok: bool | None) -> str:
    return {True: "✅", False: "❌", None: "⚠️"}[ok]


def _ops(model: ModelSummary | None) -> dict[str, int]:
    return model.ops if model else {}


def histogram_rows(report: Report) -> list[tuple[str, int, int]]:
    before, after = _ops(report.input), _ops(report.output)
    ops = sorted(set(before) | set(after), key=lambda op: (-max(before.get(op, 0), after.get(op, 0)), op))
    return [(op, before.get(op, 0), after.get(op, 0)) for op in ops]


def histogram_markdown(report: Report) -> str:
    """The op histogram before/after as a Markdown table with text bars."""
    rows = histogram_rows(report)
    if not rows:
        return "_no ops_\n"
    top = max(max(b, a) for _, b, a in rows)
    lines = ["| op | before | after | Δ | before | after |", "|---|---:|---:|---:|---|---|"]
    for op, b, a in rows:
        delta = a - b
        lines.append(f"| {_code(op)} | {b} | {a} | {'+' if delta > 0 else ''}{delta if delta else '0'} "
                     f"| `{_bar(b, top)}` | `{_bar(a, top)}` |")
    return "\n".join(lines) + "\n"


def _cells(model: ModelSummary | None, missing: str) -> list:
    if model is None:
        return [missing, "–", "–", "–", "–", 0]
    return [_code(model.path) or missing, _code((model.sha256 or "")[:16]) or "–", _size(model.size_bytes),
            model.opset, model.nodes, len(model.ops)]


def before_after_markdown(report: Report) -> str:
    names = ("file", "sha256", "size", "opset", "nodes", "distinct ops")
    rows = zip(names, _cells(report.input, "–"), _cells(report.output, "(in memory)"))
    lines = ["| | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {b} | {a} |" for name, b, a in rows]
    return "\n".join(lines) + "\n"


def to_markdown(report: Report) -> str:
    report = as_saved(report)
    out: list[str] = []
    title = (report.input and report.input.path) or "model"
    out.append(f"## fuser report: {_code(title)}\n")
    headline = []
    audit = report.sections.get("audit")
    if audit:
        failed = [c for c in audit.checks if not c.passed]
        headline.append(f"{_status_icon(not failed)} **audit {'passed' if not failed else 'failed'}**: "
                        f"{len(audit.checks) - len(failed)} of {len(audit.checks)} expectations met")
    v = report.validation
    if v:
        ok = {"passed": True, "rolled-back": None, "failed": False, "skipped": None}.get(v.status)
        headline.append(f"{_status_icon(ok)} **validation {v.status}**: {_md(v.summary)}")
    counts = report.fusion_counts
    headline.append("**fused**: " + (", ".join(f"{_md(k)} {n}" for k, n in counts.items()) if counts else "nothing")
                    + f" in {report.time_s:.2f} s")
    out.append("  \n".join(headline) + "\n")
    out.append("### Before / after\n")
    out.append(before_after_markdown(report))
    if audit:
        out.append("### Audit\n")
        out.append("| expectation | result | detail |\n|---|---|---|")
        out.append("\n".join(f"| {_code(c.name)} | {_status_icon(c.passed)} {'pass' if c.passed else 'FAIL'} "
                             f"| {_md(c.message)} |" for c in audit.checks) + "\n")
    out.append("### Op histogram\n")
    out.append(histogram_markdown(report))
    if v:
        out.append(validation_markdown(v))
    out.append(rules_markdown(report))
    near = report.near_misses
    if near:
        out.append(f"### Near misses ({len(near)})\n")
        out.append("| rule | at | reason |\n|---|---|---|")
        out.append("\n".join(f"| {_md(m.rule)} | {_code(m.at)} | {_md(m.reason)} |" for m in near) + "\n")
    fusions = report.fusions or []
    if fusions:
        out.append(f"<details><summary>Fused instances ({len(fusions)}) with the nodes they replaced</summary>\n")
        out.append("| key | rule | replaced | created |\n|---|---|---|---|")
        out.append("\n".join(
            f"| {_code(f.key)} | {_md(f.rule)} | {_md(', '.join(f.replaced))} "
            f"| {_md(', '.join(f'{n} ({op})' for n, op in zip(f.created, f.created_ops)))} |"
            for f in fusions))
        out.append("\n</details>\n")
    build = report.build
    if build and build.warnings:
        out.append("### Build warnings\n")
        out.append("| id | message |\n|---|---|")
        out.append("\n".join(f"| {_code(w.id)} | {_md(w.explanation)} |" for w in build.warnings) + "\n")
    if report.notes or report.warnings:
        out.append("### Notes\n")
        out.append("\n".join([f"- ⚠️ {_md(w)}" for w in report.warnings] + [f"- {_md(n)}" for n in report.notes])
                   + "\n")
    out.append(reproduce_markdown(report))
    return "\n".join(out)


def validation_markdown(v) -> str:
    out = [f"### Validation: {_md(v.status)}\n"]
    info = [f"provider {_md(v.provider)} ({_md(v.device or '–')})", f"inputs {_md(v.inputs or '–')}"]
    if v.shapes:
        info.append("shapes " + "; ".join(", ".join(f"{_md(k)} {'x'.join(map(str, s or [])) or 'scalar'}"
                                                    for k, s in m.items()) for m in v.shapes))
    out.append(" · ".join(info) + "\n")
    if v.reason:
        out.append(f"Skipped: {_md(v.reason)}\n")
    if v.outputs:
        out.append("| output | dtype | max abs | mean abs | median abs | p99 abs | max rel | cosine "
                   "| NaN/Inf ref→opt | atol / rtol | result |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---|---|---|")
        for name, s in v.outputs.items():
            nan_inf = (f"{s.nan.reference}/{s.inf.reference if s.inf else 0} → "
                       f"{s.nan.optimized}/{s.inf.optimized if s.inf else 0}") if s.nan else "–"
            result = "pass" if s.passed else f"FAIL ({'?' if s.mismatches is None else s.mismatches} off)"
            if s.judged_by == "fp32-reference":
                result += " vs fp32"
            if s.error:
                result = f"FAIL: {s.error}"
            out.append(f"| {_code(name)} | {_md(s.dtype or '–')} | {_num(s.max_abs)} "
                       f"| {_num(s.mean_abs)} | {_num(s.median_abs)} | {_num(s.p99_abs)} "
                       f"| {_num(s.max_rel)} | {_num(s.cosine, '.6f')} | {nan_inf} "
                       f"| {_num(s.atol, 'g')} / {_num(s.rtol, 'g')} "
                       f"| {_status_icon(s.passed)} {_md(result)} |")
        out.append("")
    if v.rolled_back:
        trials = v.bisection.trials if v.bisection else "?"
        out.append(f"**Rolled back** ({len(v.rolled_back)}; found in {trials} trials):\n")
        out += [f"- {_code(r.key)} ({_md(r.rule)}) replacing {_md(', '.join(r.replaced))}: {_md(r.effect)}"
                for r in v.rolled_back]
        out.append("")
    return "\n".join(out) + "\n"


def rules_markdown(report: Report) -> str:
    out = []
    if report.rules:
        out.append("### Rules\n")
        out.append("| rule | attempts | matches | hits | time (ms) |\n|---|---:|---:|---:|---:|")
        out.append("\n".join(f"| {_md(name)} | {s.attempts} | {s.matches} | {s.hits} | {_ms(s.time_s)} |"
                             for name, s in report.rules.items()) + "\n")
    if report.passes:
        out.append("### Passes\n")
        out.append("| pass | runs | modified | time (ms) |\n|---|---:|---:|---:|")
        out.append("\n".join(f"| {_md(name)} | {s.runs} | {s.modified} | {_ms(s.time_s)} |"
                             for name, s in report.passes.items()) + "\n")
    if not out:
        return ""
    out.append(f"{report.iterations} rounds; "
               + ("fixed point reached" if report.reached_fixed_point else "**no fixed point**") + "\n")
    return "\n".join(out) + "\n"


def reproduce_markdown(report: Report) -> str:
    command = " ".join(shlex.quote(str(a)) for a in report.command)
    return ("<details><summary>Reproduce</summary>\n\n"
            f"fuser {_md(report.fuser_version)}, report schema {_md(report.schema_version)}\n\n"
            f"```\n{command}\n```\n\nOptions:\n\n```json\n{json.dumps(to_json(report.options), indent=1)}\n```\n"
            "</details>\n")


# ---------------------------------------------------------------------------------------------- JUnit XML

def to_junit(report: Report) -> str:
    """JUnit XML: suites fuser.rules, fuser.validation, fuser.report.audit (those that apply)."""
    report = as_saved(report)
    root = ET.Element("testsuites", name="fuser")
    v = report.validation
    rolled_by_rule: dict[str, list] = {}
    for r in v.rolled_back if v else ():
        rolled_by_rule.setdefault(r.rule, []).append(r)
    near_by_rule: dict[str, list] = {}
    for m in report.near_misses:
        near_by_rule.setdefault(m.rule, []).append(m)

    suite = _suite(root, "fuser.rules")
    for name, s in report.rules.items():
        case = _case(suite, "fuser.rules", name, s.time_s)
        lines = [f"attempts {s.attempts}, matches {s.matches}, hits {s.hits}"]
        lines += [f"not fused at '{m.at}': {m.reason}" for m in near_by_rule.get(name, [])]
        if name in rolled_by_rule:
            keys = ", ".join(r.key for r in rolled_by_rule[name])
            failure = ET.SubElement(case, "failure", message=f"validation rolled back {keys}", type="rolled-back")
            failure.text = "\n".join(f"{r.key} replacing {', '.join(r.replaced)}: {r.effect}"
                                     for r in rolled_by_rule[name])
        ET.SubElement(case, "system-out").text = "\n".join(lines)

    if v:
        suite = _suite(root, "fuser.validation")
        if v.status == "skipped" or not v.outputs:
            case = _case(suite, "fuser.validation", "validation", v.time_s)
            if v.status == "failed":
                ET.SubElement(case, "failure", message=v.summary, type="validation")
            else:
                ET.SubElement(case, "skipped", message=v.summary)
        for name, s in v.outputs.items():
            case = _case(suite, "fuser.validation", f"output {name}", None)
            detail = (f"max abs {_num(s.max_abs)}, mean abs {_num(s.mean_abs)}, p99 abs {_num(s.p99_abs)}, "
                      f"max rel {_num(s.max_rel)}, cosine {_num(s.cosine, '.6f')}, atol {_num(s.atol, 'g')}, "
                      f"rtol {_num(s.rtol, 'g')}")
            if not s.passed:
                ET.SubElement(case, "failure", message=s.error or f"{s.mismatches} elements off",
                              type="numerics").text = detail
            ET.SubElement(case, "system-out").text = detail

    audit = report.sections.get("audit")
    if audit:
        suite = _suite(root, "fuser.report.audit")
        for c in audit.checks:
            case = _case(suite, "fuser.report.audit", c.name, None)
            if not c.passed:
                ET.SubElement(case, "failure", message=c.message, type=c.kind or "expectation")
            else:
                ET.SubElement(case, "system-out").text = c.message

    for s in root:
        s.set("tests", str(len(s)))
        s.set("failures", str(sum(1 for c in s if c.find("failure") is not None)))
        s.set("skipped", str(sum(1 for c in s if c.find("skipped") is not None)))
        s.set("errors", "0")
    root.set("tests", str(sum(int(s.get("tests")) for s in root)))
    root.set("failures", str(sum(int(s.get("failures")) for s in root)))
    root.set("time", f"{report.time_s:.3f}")
    ET.indent(root)
    return printable('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n")


def _suite(root: ET.Element, name: str) -> ET.Element:
    return ET.SubElement(root, "testsuite", name=name)


def _case(suite: ET.Element, classname: str, name: str, time_s) -> ET.Element:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name)
    case.set("time", f"{time_s or 0:.6f}")
    return case


# ---------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:10px;vertical-align:middle}
.before{background:#9ab}.after{background:#2a7}
.ok{color:#080}.bad{color:#b00;font-weight:bold}
"""


def histogram_html(report: Report, width_px: int = 300) -> str:
    rows = histogram_rows(report)
    if not rows:
        return "<p>no ops</p>"
    top = max(max(b, a) for _, b, a in rows) or 1
    out = ["<table class='hist'><tr><th>op</th><th>before</th><th>after</th><th>Δ</th><th>chart</th></tr>"]
    for op, b, a in rows:
        bars = (f"<span class='bar before' style='width:{round(width_px * b / top)}px' title='before {b}'></span><br>"
                f"<span class='bar after' style='width:{round(width_px * a / top)}px' title='after {a}'></span>")
        out.append(f"<tr><td>{html.escape(op)}</td><td class='n'>{b}</td><td class='n'>{a}</td>"
                   f"<td class='n'>{a - b:+d}</td><td>{bars}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def to_html(report: Report) -> str:
    report = as_saved(report)
    e = html.escape
    i, o = report.input, report.output
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fuser report</title><style>{_CSS}</style>"
             f"</head><body><h1>fuser report: {e(str((i and i.path) or 'model'))}</h1>"]
    v = report.validation
    if v:
        cls = "ok" if v.status in ("passed", "rolled-back") else "bad"
        parts.append(f"<p class='{cls}'>validation {e(v.status)}: {e(v.summary)}</p>")
    audit = report.sections.get("audit")
    if audit:
        parts.append(f"<p class='{'ok' if audit.passed else 'bad'}'>audit {'passed' if audit.passed else 'failed'}</p>"
                     "<ul>")
        parts += [f"<li class='{'ok' if c.passed else 'bad'}'>{e(c.name)}: {e(c.message)}</li>" for c in audit.checks]
        parts.append("</ul>")
    parts.append("<h2>Before / after</h2><table><tr><th></th><th>before</th><th>after</th></tr>")
    for label, key in (("file", "path"), ("sha256", "sha256"), ("size (bytes)", "size_bytes"), ("opset", "opset"),
                       ("nodes", "nodes")):
        before, after = (str(getattr(m, key)) if m else "" for m in (i, o))
        parts.append(f"<tr><td>{label}</td><td>{e(before)}</td><td>{e(after)}</td></tr>")
    parts.append("</table>")
    counts = report.fusion_counts
    parts.append("<h2>Fusions</h2><p>" + (", ".join(f"{e(k)} {n}" for k, n in counts.items()) or "nothing") + "</p>")
    parts.append("<h2>Op histogram</h2>")
    parts.append(histogram_html(report))
    if report.near_misses:
        parts.append("<h2>Near misses</h2><table><tr><th>rule</th><th>at</th><th>reason</th></tr>")
        parts += [f"<tr><td>{e(m.rule)}</td><td>{e(m.at)}</td><td>{e(m.reason)}</td></tr>" for m in report.near_misses]
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
