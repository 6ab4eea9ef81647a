"""The report in the formats CI tools read, every one rendered from the typed Report (`render(report, fmt)`).

    json      the document itself (codec.to_json); its schema is fuser/schema/report.schema.json
    md        Markdown for a CI job summary (`--markdown "$GITHUB_STEP_SUMMARY"`)
    html      a standalone page (inline CSS and SVG charts, no script, nothing fetched)
    junit     JUnit XML: one test case per rule (fails when validation rolled one of its rewrites back),
              one per validated output, one per audit expectation

Markdown and HTML render the same page (layout.py: before/after, audit, the op histogram and the per-rule chart on
a log scale, validation, passes, near misses by reason, fusions, the passes' sections, build, notes, how to
reproduce), so neither shows less than the other.

A run's report renders exactly as its saved JSON read back would: it goes through the JSON first, so names
protobuf handed back as bytes are text and NaN is null in every format. Names are data from a model or a JSON
file: `printable` writes the characters a file or a terminal cannot take (control characters, unpaired
surrogates, what XML 1.0 forbids) as visible escapes.
"""

from __future__ import annotations

import html
import json
import math
import re
import xml.etree.ElementTree as ET

from .codec import to_json
from .document import Report, read_report
from .layout import Bullets, Chart, Code, Details, Mark, Para, Pre, Section, Strong, Table, layout, num, op_chart

FORMATS = ("json", "md", "junit", "html")
BAR_WIDTH = 20  # characters of a Markdown bar (charts of more than two series: half)

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

def to_markdown(report: Report) -> str:
    page = layout(as_saved(report))
    out = [f"## {_md_inline(page.title)}\n", "  \n".join(_md_inline(line) for line in page.headline) + "\n"]
    for section in page.sections:
        out.append(_md_section(section))
    return "\n".join(out)


def histogram_markdown(report: Report) -> str:
    """The op histogram before/after as a Markdown table with text bars (log scale)."""
    return _md_block(op_chart(as_saved(report)))


def _md(value) -> str:
    """Text safe inside a Markdown table cell."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _code(value) -> str:
    text = _md(value).replace("`", "'")
    return f"`{text}`" if text else ""


def _md_inline(part) -> str:
    if isinstance(part, list):
        return "".join(_md_inline(p) for p in part)
    if isinstance(part, Code):
        return _code(part.text)
    if isinstance(part, Strong):
        return f"**{_md(part.text)}**"
    if isinstance(part, Mark):
        return {True: "✅", False: "❌", None: "⚠️"}[part.ok]
    return _md(part)


def _md_section(section: Section) -> str:
    return f"### {_md(section.title)}\n\n" + "\n".join(_md_block(b) for b in section.blocks)


def _md_table(header: list[str], rows: list[list], numeric=frozenset()) -> str:
    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    lines = [line([_md(h) for h in header]),
             "|" + "|".join("---:" if i in numeric else "---" for i in range(len(header))) + "|"]
    lines += [line([_md_inline(cell) for cell in row]) for row in rows]
    return "\n".join(lines) + "\n"


def _md_block(block) -> str:
    if isinstance(block, Para):
        return _md_inline(block.parts) + "\n"
    if isinstance(block, Table):
        return _md_table(block.header, block.rows, block.numeric)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md_inline(item)}" for item in block.items) + "\n"
    if isinstance(block, Pre):
        fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", block.text)), default=0))
        return f"{fence}{block.lang}\n{block.text}\n{fence}\n"
    if isinstance(block, Details):
        inner = "\n".join(_md_block(b) for b in block.blocks)
        return f"<details><summary>{html.escape(block.summary)}</summary>\n\n{inner}\n</details>\n"
    if isinstance(block, Chart):
        top = max((v for _, values, _ in block.rows for v in values), default=0)
        width = BAR_WIDTH if len(block.series) <= 2 else BAR_WIDTH // 2
        n = len(block.series)
        rows = [[label, *values, *extra, *(f"`{_bar(v, top, width)}`" for v in values)]
                for label, values, extra in block.rows]
        table = _md_table([block.label, *block.series, *block.extra, *block.series], rows,
                          frozenset(range(1, 1 + n + len(block.extra))))
        return table + (f"\n_{_md(block.note)}_\n" if block.note else "")
    raise TypeError(f"no Markdown for {type(block).__name__}")


def _bar(n: int, top: int, width: int = BAR_WIDTH) -> str:
    """A text bar on a log scale: 1 of 1000 shows, 0 is empty."""
    filled = round(width * _log_fraction(n, top))
    if n and not filled:
        filled = 1
    return "█" * filled + "·" * (width - filled)


def _log_fraction(n: int, top: int) -> float:
    """Where n lies between 0 and top on a log scale (log(1 + n)), 0..1."""
    return 0.0 if n <= 0 or top <= 0 else math.log1p(n) / math.log1p(top)


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
        near = near_by_rule.get(name, [])
        lines = [f"attempts {s.attempts}, matches {s.matches}, hits {s.hits}, near misses {len(near)}"]
        lines += [f"not fused at '{m.at}': {m.reason}" for m in near]
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
            detail = (f"max abs {num(s.max_abs)}, mean abs {num(s.mean_abs)}, p99 abs {num(s.p99_abs)}, "
                      f"max rel {num(s.max_rel)}, cosine {num(s.cosine, '.6f')}, atol {num(s.atol, 'g')}, "
                      f"rtol {num(s.rtol, 'g')}")
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
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:72em;padding:0 1em;
color:#1f2328}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:middle}
th{background:#f6f8fa}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.92em}
code{background:#f6f8fa;padding:0 .25em;border-radius:3px}pre{background:#f6f8fa;padding:.6em;white-space:pre-wrap;overflow-wrap:anywhere}
.headline{font-size:1.05em}figure{margin:0}figcaption{color:#59636e;font-size:.9em}
table.chart td{border-width:0 0 1px 0}table.chart td.bars{padding:1px 8px}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:baseline}
details{margin:.5em 0}summary{cursor:pointer}
.ok{color:#1a7f37;font-weight:bold}.bad{color:#cf222e;font-weight:bold}.warn{color:#9a6700;font-weight:bold}
"""
_COLORS = {"before": "#8aa4bf", "after": "#1f883d", "attempts": "#afb8c1", "hits": "#1f883d",
           "near misses": "#d4750b"}
_PALETTE = ("#0969da", "#8250df", "#bf3989")
CHART_PX = 260  # width of the bars


def to_html(report: Report) -> str:
    page = layout(as_saved(report))
    e = html.escape
    parts = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>{e(_text(page.title))}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_html_inline(page.title)}</h1>",
             "<p class='headline'>" + "<br>".join(_html_inline(line) for line in page.headline) + "</p>"]
    for section in page.sections:
        parts.append(f"<section><h2>{e(section.title)}</h2>")
        parts += [_html_block(block) for block in section.blocks]
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _text(part) -> str:
    """Plain text of inline content (the page's <title>)."""
    if isinstance(part, list):
        return "".join(_text(p) for p in part)
    return part.text if isinstance(part, (Code, Strong)) else "" if isinstance(part, Mark) else str(part)


def _html_inline(part) -> str:
    e = html.escape
    if isinstance(part, list):
        return "".join(_html_inline(p) for p in part)
    if isinstance(part, Code):
        return f"<code>{e(part.text)}</code>"
    if isinstance(part, Strong):
        return f"<strong>{e(part.text)}</strong>"
    if isinstance(part, Mark):
        return {True: "<span class='ok' title='passed'>✓</span>", False: "<span class='bad' title='failed'>✗</span>",
                None: "<span class='warn' title='warning'>⚠</span>"}[part.ok]  # no emoji font needed
    return e("" if part is None else str(part))


def _row(cells: list[str], numeric, tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}{' class=n' if i in numeric else ''}>{c}</{tag}>"
                            for i, c in enumerate(cells)) + "</tr>"


def _html_block(block) -> str:
    e = html.escape
    if isinstance(block, Para):
        return f"<p>{_html_inline(block.parts)}</p>"
    if isinstance(block, Table):
        head = _row([e(h) for h in block.header], block.numeric, "th")
        body = "\n".join(_row([_html_inline(c) for c in row], block.numeric) for row in block.rows)
        return f"<table><thead>{head}</thead><tbody>\n{body}\n</tbody></table>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_html_inline(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Pre):
        return f"<pre>{e(block.text)}</pre>"
    if isinstance(block, Details):
        return (f"<details><summary>{e(block.summary)}</summary>\n"
                + "\n".join(_html_block(b) for b in block.blocks) + "\n</details>")
    if isinstance(block, Chart):
        return _html_chart(block)
    raise TypeError(f"no HTML for {type(block).__name__}")


def _color(series: str, index: int) -> str:
    return _COLORS.get(series, _PALETTE[index % len(_PALETTE)])


def _html_chart(chart: Chart) -> str:
    """The chart as a table: label, numbers, extra columns, and one inline SVG of bars per row (a shared log scale,
    so the rows line up as one chart)."""
    e = html.escape
    top = max((v for _, values, _ in chart.rows for v in values), default=0)
    n = len(chart.series)
    numeric = frozenset(range(1, 1 + n + len(chart.extra)))
    legend = " ".join(f"<span class='swatch' style='background:{_color(s, i)}'></span>{e(s)}"
                      for i, s in enumerate(chart.series))
    head = _row([e(chart.label)] + [e(s) for s in chart.series] + [e(x) for x in chart.extra] + [legend], numeric, "th")
    axis = _axis_svg(top)
    rows = [_row([_html_inline(label)] + [str(v) for v in values] + [_html_inline(x) for x in extra]
                 + [_bars_svg(chart.series, values, top)], numeric).replace("<td>" + "<svg", "<td class=bars><svg")
            for label, values, extra in chart.rows]
    axis_row = _row([""] * (1 + n + len(chart.extra)) + [axis], frozenset())
    caption = f"<figcaption>{e(chart.note)}</figcaption>" if chart.note else ""
    return (f"<figure><table class='chart'><thead>{head}{axis_row}</thead><tbody>\n" + "\n".join(rows)
            + f"\n</tbody></table>{caption}</figure>")


def _x(n: int, top: int) -> float:
    """Pixels of a bar for n on the chart's log scale; a bar for 1 is visible next to one for 10 000."""
    width = CHART_PX * _log_fraction(n, top)
    return max(width, 2.0) if n > 0 else 0.0


def _bars_svg(series: list[str], values: list[int], top: int) -> str:
    bar, gap = 7, 2
    height = len(values) * (bar + gap)
    label = ", ".join(f"{s} {v}" for s, v in zip(series, values))
    rects = "".join(f"<rect class='bar {html.escape(s)}' x='0' y='{i * (bar + gap)}' width='{_x(v, top):.1f}' "
                    f"height='{bar}' fill='{_color(s, i)}'><title>{html.escape(s)} {v}</title></rect>"
                    for i, (s, v) in enumerate(zip(series, values)))
    return (f"<svg width='{CHART_PX}' height='{height}' role='img' aria-label='{html.escape(label)}' "
            f"xmlns='http://www.w3.org/2000/svg'>{rects}</svg>")


def _axis_svg(top: int) -> str:
    """Tick marks of the log scale: 1, 10, 100... up to the chart's largest value."""
    ticks, value = [], 1
    while value <= max(top, 1):
        ticks.append(value)
        value *= 10
    marks = "".join(f"<line x1='{_x(t, top):.1f}' x2='{_x(t, top):.1f}' y1='12' y2='16' stroke='#59636e'/>"
                    f"<text x='{_x(t, top):.1f}' y='10' font-size='9' text-anchor='middle' fill='#59636e'>{t:,}</text>"
                    for t in ticks)
    return (f"<svg width='{CHART_PX + 12}' height='16' role='img' aria-label='log scale' "
            f"xmlns='http://www.w3.org/2000/svg'><line x1='0' x2='{CHART_PX}' y1='15.5' y2='15.5' stroke='#afb8c1'/>"
            f"{marks}</svg>")
