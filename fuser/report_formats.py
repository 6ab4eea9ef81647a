"""The audit report in the formats CI tools read, all rendered from the JSON dict (`Report.to_dict()`).

    json      the document itself; its schema is fuser/schema/report.schema.json (`schema()`, `check_schema()`)
    md        Markdown for a CI job summary (`--markdown "$GITHUB_STEP_SUMMARY"`): before/after table,
              op histogram chart, fusions, validation statistics, rules, near misses, provenance, how to reproduce
    junit     JUnit XML: one test case per rule (fails when validation rolled one of its rewrites back),
              one per validated output, one per audit expectation
    html      a standalone page: the before/after table and the op histogram as a bar chart

Rendering never needs the model or live objects, so a report saved by one run can be rendered later.
Names in a report are data from a model or a JSON file: `printable` writes the characters a file or a
terminal cannot take (control characters, unpaired surrogates, what XML 1.0 forbids) as visible escapes.
"""

from __future__ import annotations

import html
import json
import math
import re
import xml.etree.ElementTree as ET
from importlib import resources

FORMATS = ("json", "md", "junit", "html")
BAR_WIDTH = 20


def schema() -> dict:
    """The JSON Schema of the report (its `schema_version` matches report.SCHEMA_VERSION)."""
    return json.loads(resources.files("fuser").joinpath("schema/report.schema.json").read_text())


def check_schema(report: dict) -> None:
    """Raise jsonschema.ValidationError when `report` does not follow the schema (every field required)."""
    import jsonschema

    jsonschema.validate(report, schema(), cls=jsonschema.Draft202012Validator)


def schema_problem(report: dict) -> str | None:
    """Where a report read from a file breaks the schema ("field validation.outputs.y.max_abs: expected ..."),
    or None. Sections may be missing (an older report, a hand-made baseline): only fusion_counts is required;
    a section that is there must follow the schema, so the audit and the renderers can read it."""
    import jsonschema

    root = {**schema(), "required": ["fusion_counts"]}
    try:
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(root).iter_errors(report))
    except RecursionError:
        return "it is nested too deeply"
    if error is None:
        return None
    field = error.json_path.removeprefix("$").removeprefix(".") or "(top level)"
    if error.validator in ("type", "oneOf"):  # say what is wrong without echoing a whole section
        expected = " or ".join(sorted(_types(error.schema, root)))
        return f"field {field}: expected {expected}, got {_json_type(error.instance)}"
    return f"field {field}: {error.message[:200]}"


def _types(node: dict, root: dict) -> set[str]:
    if "$ref" in node:
        return _types(root["$defs"][node["$ref"].rsplit("/", 1)[-1]], root)
    if "oneOf" in node:
        return set().union(*(_types(branch, root) for branch in node["oneOf"]))
    kind = node.get("type", "any value")
    return {kind} if isinstance(kind, str) else set(kind)


def _json_type(value) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
                       (dict, "object")):
        if isinstance(value, kind):
            return name
    return "null"


_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def printable(text: str) -> str:
    """`text` with control characters (but newline and tab), unpaired surrogates and U+FFFE/U+FFFF written as
    \\xNN / \\uNNNN: safe in XML 1.0, in UTF-8 files and on a terminal."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def render(report: dict, fmt: str) -> str:
    renderers = {"json": to_json, "md": to_markdown, "junit": to_junit, "html": to_html}
    if fmt not in renderers:
        raise ValueError(f"unknown report format '{fmt}' (choose from {', '.join(FORMATS)})")
    return printable(renderers[fmt](_plain(report, json_numbers=False)))


def to_json(report: dict) -> str:
    """Strict JSON (NaN and Inf, which JSON lacks, become null)."""
    return json.dumps(_plain(report, json_numbers=True), indent=2, allow_nan=False) + "\n"


def _plain(value, json_numbers: bool):
    """Text for names protobuf handed back as bytes (not valid UTF-8: written as \\xNN); with json_numbers,
    null for NaN and Inf."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, float) and json_numbers:
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(_plain(k, json_numbers)): _plain(v, json_numbers) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, json_numbers) for v in value]
    return value


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


def histogram_rows(report: dict) -> list[tuple[str, int, int]]:
    before = (report.get("input") or {}).get("ops", {})
    after = (report.get("output") or {}).get("ops", {})
    ops = sorted(set(before) | set(after), key=lambda op: (-max(before.get(op, 0), after.get(op, 0)), op))
    return [(op, before.get(op, 0), after.get(op, 0)) for op in ops]


def histogram_markdown(report: dict) -> str:
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


def before_after_markdown(report: dict) -> str:
    i, o = report.get("input") or {}, report.get("output") or {}
    rows = [
        ("file", _code(i.get("path")) or "–", _code(o.get("path")) or "(in memory)"),
        ("sha256", _code((i.get("sha256") or "")[:16]) or "–", _code((o.get("sha256") or "")[:16]) or "–"),
        ("size", _size(i.get("size_bytes")), _size(o.get("size_bytes"))),
        ("opset", i.get("opset", "–"), o.get("opset", "–")),
        ("nodes", i.get("nodes", "–"), o.get("nodes", "–")),
        ("distinct ops", len(i.get("ops", {})), len(o.get("ops", {}))),
    ]
    lines = ["| | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {b} | {a} |" for name, b, a in rows]
    return "\n".join(lines) + "\n"


def to_markdown(report: dict) -> str:
    out: list[str] = []
    i = report.get("input") or {}
    title = i.get("path") or "model"
    out.append(f"## fuser report: {_code(title)}\n")
    headline = []
    audit = report.get("audit")
    if audit:
        failed = [c for c in audit["checks"] if not c["passed"]]
        headline.append(f"{_status_icon(not failed)} **audit {'passed' if not failed else 'failed'}**: "
                        f"{len(audit['checks']) - len(failed)} of {len(audit['checks'])} expectations met")
    v = report.get("validation")
    if v:
        ok = {"passed": True, "rolled-back": None, "failed": False, "skipped": None}.get(v.get("status"))
        headline.append(f"{_status_icon(ok)} **validation {v.get('status')}**: {_md(v.get('summary', ''))}")
    counts = report.get("fusion_counts", {})
    headline.append("**fused**: " + (", ".join(f"{_md(k)} {n}" for k, n in counts.items()) if counts else "nothing")
                    + f" in {report.get('time_s', 0):.2f} s")
    out.append("  \n".join(headline) + "\n")
    out.append("### Before / after\n")
    out.append(before_after_markdown(report))
    if audit:
        out.append("### Audit\n")
        out.append("| expectation | result | detail |\n|---|---|---|")
        out.append("\n".join(f"| {_code(c['name'])} | {_status_icon(c['passed'])} {'pass' if c['passed'] else 'FAIL'} "
                             f"| {_md(c['message'])} |" for c in audit["checks"]) + "\n")
    out.append("### Op histogram\n")
    out.append(histogram_markdown(report))
    if v:
        out.append(validation_markdown(v))
    out.append(rules_markdown(report))
    near = report.get("near_misses", [])
    if near:
        out.append(f"### Near misses ({len(near)})\n")
        out.append("| rule | at | reason |\n|---|---|---|")
        out.append("\n".join(f"| {_md(m['rule'])} | {_code(m['at'])} | {_md(m['reason'])} |" for m in near) + "\n")
    fusions = report.get("fusions", [])
    if fusions:
        out.append(f"<details><summary>Fused instances ({len(fusions)}) with the nodes they replaced</summary>\n")
        out.append("| key | rule | replaced | created |\n|---|---|---|---|")
        out.append("\n".join(
            f"| {_code(f['key'])} | {_md(f['rule'])} | {_md(', '.join(f['replaced']))} "
            f"| {_md(', '.join(f'{n} ({op})' for n, op in zip(f['created'], f['created_ops'])))} |"
            for f in fusions))
        out.append("\n</details>\n")
    build = report.get("build")
    if build and build.get("warnings"):
        out.append("### Build warnings\n")
        out.append("| id | message |\n|---|---|")
        out.append("\n".join(f"| {_code(w.get('id'))} | {_md(w.get('message') or w.get('text') or '')} |"
                             for w in build["warnings"]) + "\n")
    if report.get("notes") or report.get("warnings"):
        out.append("### Notes\n")
        out.append("\n".join([f"- ⚠️ {_md(w)}" for w in report.get("warnings", [])]
                             + [f"- {_md(n)}" for n in report.get("notes", [])]) + "\n")
    out.append(reproduce_markdown(report))
    return "\n".join(out)


def validation_markdown(v: dict) -> str:
    out = [f"### Validation: {_md(v.get('status'))}\n"]
    info = [f"provider {_md(v.get('provider', '–'))} ({_md(v.get('device', '–'))})",
            f"inputs {_md(v.get('inputs', '–'))}"]
    shapes = v.get("shapes") or []
    if shapes:
        info.append("shapes " + "; ".join(", ".join(f"{_md(k)} {'x'.join(map(str, s)) or 'scalar'}"
                                                    for k, s in m.items()) for m in shapes))
    out.append(" · ".join(info) + "\n")
    if v.get("reason"):
        out.append(f"Skipped: {_md(v['reason'])}\n")
    outputs = v.get("outputs") or {}
    if outputs:
        out.append("| output | dtype | max abs | mean abs | median abs | p99 abs | max rel | cosine "
                   "| NaN/Inf ref→opt | atol / rtol | result |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---|---|---|")
        for name, s in outputs.items():
            nan, inf = s.get("nan") or {}, s.get("inf") or {}
            nan_inf = (f"{nan.get('reference', 0)}/{inf.get('reference', 0)} → "
                       f"{nan.get('optimized', 0)}/{inf.get('optimized', 0)}") if nan else "–"
            result = "pass" if s.get("passed") else f"FAIL ({s.get('mismatches', '?')} off)"
            if s.get("judged_by") == "fp32-reference":
                result += " vs fp32"
            if s.get("error"):
                result = f"FAIL: {s['error']}"
            out.append(f"| {_code(name)} | {_md(s.get('dtype', '–'))} | {_num(s.get('max_abs'))} "
                       f"| {_num(s.get('mean_abs'))} | {_num(s.get('median_abs'))} | {_num(s.get('p99_abs'))} "
                       f"| {_num(s.get('max_rel'))} | {_num(s.get('cosine'), '.6f')} | {nan_inf} "
                       f"| {_num(s.get('atol'), 'g')} / {_num(s.get('rtol'), 'g')} "
                       f"| {_status_icon(bool(s.get('passed')))} {_md(result)} |")
        out.append("")
    rolled = v.get("rolled_back") or []
    if rolled:
        out.append(f"**Rolled back** ({len(rolled)}; found in {v.get('bisection', {}).get('trials', '?')} trials):\n")
        out += [f"- {_code(r['key'])} ({_md(r['rule'])}) replacing {_md(', '.join(r['replaced']))}: "
                f"{_md(r.get('effect', ''))}" for r in rolled]
        out.append("")
    return "\n".join(out) + "\n"


def rules_markdown(report: dict) -> str:
    rules = report.get("rules", {})
    passes = report.get("passes", {})
    out = []
    if rules:
        out.append("### Rules\n")
        out.append("| rule | attempts | matches | hits | time (ms) |\n|---|---:|---:|---:|---:|")
        out.append("\n".join(f"| {_md(name)} | {s.get('attempts', 0)} | {s.get('matches', '–')} | {s.get('hits', 0)} "
                             f"| {_ms(s.get('time_s'))} |" for name, s in rules.items()) + "\n")
    if passes:
        out.append("### Passes\n")
        out.append("| pass | runs | modified | time (ms) |\n|---|---:|---:|---:|")
        out.append("\n".join(f"| {_md(name)} | {s.get('runs', 0)} | {s.get('modified', 0)} | {_ms(s.get('time_s'))} |"
                             for name, s in passes.items()) + "\n")
    if not out:
        return ""
    out.append(f"{report.get('iterations', 0)} rounds; "
               + ("fixed point reached" if report.get("reached_fixed_point", True) else "**no fixed point**") + "\n")
    return "\n".join(out) + "\n"


def reproduce_markdown(report: dict) -> str:
    command = " ".join(_shell_quote(a) for a in report.get("command", []))
    return ("<details><summary>Reproduce</summary>\n\n"
            f"fuser {_md(report.get('fuser_version'))}, report schema {_md(report.get('schema_version'))}\n\n"
            f"```\n{command}\n```\n\nOptions:\n\n```json\n{json.dumps(report.get('options', {}), indent=1)}\n```\n"
            "</details>\n")


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))


# ---------------------------------------------------------------------------------------------- JUnit XML

def to_junit(report: dict) -> str:
    """JUnit XML: suites fuser.rules, fuser.validation, fuser.audit (those that apply)."""
    root = ET.Element("testsuites", name="fuser")
    rolled_by_rule: dict[str, list[dict]] = {}
    v = report.get("validation") or {}
    for r in v.get("rolled_back") or []:
        rolled_by_rule.setdefault(r["rule"], []).append(r)
    near_by_rule: dict[str, list[dict]] = {}
    for m in report.get("near_misses", []):
        near_by_rule.setdefault(m["rule"], []).append(m)

    suite = _suite(root, "fuser.rules")
    for name, s in report.get("rules", {}).items():
        case = _case(suite, "fuser.rules", name, s.get("time_s"))
        lines = [f"attempts {s.get('attempts', 0)}, matches {s.get('matches', '-')}, hits {s.get('hits', 0)}"]
        lines += [f"not fused at '{m['at']}': {m['reason']}" for m in near_by_rule.get(name, [])]
        if name in rolled_by_rule:
            keys = ", ".join(r["key"] for r in rolled_by_rule[name])
            failure = ET.SubElement(case, "failure", message=f"validation rolled back {keys}", type="rolled-back")
            failure.text = "\n".join(f"{r['key']} replacing {', '.join(r['replaced'])}: {r.get('effect', '')}"
                                     for r in rolled_by_rule[name])
        ET.SubElement(case, "system-out").text = "\n".join(lines)

    if v:
        suite = _suite(root, "fuser.validation")
        if v.get("status") == "skipped" or not v.get("outputs"):
            case = _case(suite, "fuser.validation", "validation", v.get("time_s"))
            if v.get("status") == "failed":
                ET.SubElement(case, "failure", message=v.get("summary", "failed"), type="validation")
            else:
                ET.SubElement(case, "skipped", message=v.get("summary", "skipped"))
        for name, s in (v.get("outputs") or {}).items():
            case = _case(suite, "fuser.validation", f"output {name}", None)
            detail = (f"max abs {_num(s.get('max_abs'))}, mean abs {_num(s.get('mean_abs'))}, "
                      f"p99 abs {_num(s.get('p99_abs'))}, max rel {_num(s.get('max_rel'))}, "
                      f"cosine {_num(s.get('cosine'), '.6f')}, atol {_num(s.get('atol'), 'g')}, "
                      f"rtol {_num(s.get('rtol'), 'g')}")
            if not s.get("passed"):
                ET.SubElement(case, "failure", message=s.get("error") or f"{s.get('mismatches')} elements off",
                              type="numerics").text = detail
            ET.SubElement(case, "system-out").text = detail

    audit = report.get("audit")
    if audit:
        suite = _suite(root, "fuser.audit")
        for c in audit["checks"]:
            case = _case(suite, "fuser.audit", c["name"], None)
            if not c["passed"]:
                ET.SubElement(case, "failure", message=c["message"], type=c.get("kind", "expectation"))
            else:
                ET.SubElement(case, "system-out").text = c["message"]

    for s in root:
        s.set("tests", str(len(s)))
        s.set("failures", str(sum(1 for c in s if c.find("failure") is not None)))
        s.set("skipped", str(sum(1 for c in s if c.find("skipped") is not None)))
        s.set("errors", "0")
    root.set("tests", str(sum(int(s.get("tests")) for s in root)))
    root.set("failures", str(sum(int(s.get("failures")) for s in root)))
    root.set("time", f"{report.get('time_s', 0):.3f}")
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


def histogram_html(report: dict, width_px: int = 300) -> str:
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


def to_html(report: dict) -> str:
    e = html.escape
    i, o = report.get("input") or {}, report.get("output") or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fuser report</title><style>{_CSS}</style>"
             f"</head><body><h1>fuser report: {e(str(i.get('path') or 'model'))}</h1>"]
    v = report.get("validation")
    if v:
        cls = "ok" if v.get("status") in ("passed", "rolled-back") else "bad"
        parts.append(f"<p class='{cls}'>validation {e(str(v.get('status')))}: {e(v.get('summary', ''))}</p>")
    audit = report.get("audit")
    if audit:
        parts.append(f"<p class='{'ok' if audit['passed'] else 'bad'}'>audit "
                     f"{'passed' if audit['passed'] else 'failed'}</p><ul>")
        parts += [f"<li class='{'ok' if c['passed'] else 'bad'}'>{e(c['name'])}: {e(c['message'])}</li>"
                  for c in audit["checks"]]
        parts.append("</ul>")
    parts.append("<h2>Before / after</h2><table><tr><th></th><th>before</th><th>after</th></tr>")
    for label, key in (("file", "path"), ("sha256", "sha256"), ("size (bytes)", "size_bytes"), ("opset", "opset"),
                       ("nodes", "nodes")):
        parts.append(f"<tr><td>{label}</td><td>{e(str(i.get(key, '')))}</td><td>{e(str(o.get(key, '')))}</td></tr>")
    parts.append("</table>")
    counts = report.get("fusion_counts", {})
    parts.append("<h2>Fusions</h2><p>" + (", ".join(f"{e(k)} {n}" for k, n in counts.items()) or "nothing") + "</p>")
    parts.append("<h2>Op histogram</h2>")
    parts.append(histogram_html(report))
    near = report.get("near_misses", [])
    if near:
        parts.append("<h2>Near misses</h2><table><tr><th>rule</th><th>at</th><th>reason</th></tr>")
        parts += [f"<tr><td>{e(m['rule'])}</td><td>{e(m['at'])}</td><td>{e(m['reason'])}</td></tr>" for m in near]
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
