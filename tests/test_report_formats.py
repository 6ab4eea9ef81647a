"""Report formats, all rendered from the typed Report: the JSON follows its schema, Markdown shows before/after,
JUnit and HTML render; near misses carry their reasons into every format."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import xml.etree.ElementTree as ET

import jsonschema
import numpy as np
import onnx
import pytest
from builders import const, make_model
from onnx import TensorProto, helper
from test_validate import BROKEN, HSWISH, planted_model, planted_passes

import fuser
from fuser.report.audit import AuditSection, Expectations, check
from fuser.passes import DeadCodeElimination, FusionPass
from fuser.report import SCHEMA_VERSION, ModelSummary, Report, to_json
from fuser.report.formats import histogram_markdown, render, to_junit, to_markdown
from fuser.report.schema import checked_in

F = TensorProto.FLOAT


def n(op_type, inputs, output, name, **attrs):
    return helper.make_node(op_type, inputs, [output], name=name, **attrs)


def layernorm_model(eps_input: bool = False) -> onnx.ModelProto:
    """The TorchScript LayerNorm spelling at opset 13 (eps as a Constant, or as a graph input)."""
    nodes = [const("two", 2.0)] + ([] if eps_input else [const("eps", 1e-5)])
    nodes += [n("ReduceMean", ["x"], "mean", "encoder.0/ReduceMean", axes=[-1], keepdims=1),
              n("Sub", ["x", "mean"], "d", "encoder.0/Sub"), n("Pow", ["d", "two"], "sq", "encoder.0/Pow"),
              n("ReduceMean", ["sq"], "var", "encoder.0/ReduceMean_1", axes=[-1], keepdims=1),
              n("Add", ["var", "eps"], "ve", "encoder.0/Add"), n("Sqrt", ["ve"], "std", "encoder.0/Sqrt"),
              n("Div", ["d", "std"], "nrm", "encoder.0/Div"), n("Mul", ["nrm", "gamma"], "g", "encoder.0/Mul"),
              n("Add", ["g", "beta"], "y", "encoder.0/Add_1")]
    rng = np.random.default_rng(0)
    inits = [("gamma", rng.standard_normal(16).astype(np.float32)),
             ("beta", rng.standard_normal(16).astype(np.float32))]
    inputs = [("x", F, [2, 5, 16])] + ([("eps", F, [])] if eps_input else [])
    return make_model(nodes, inputs, [("y", F, [2, 5, 16])], inits, opset=13)


def hswish(i: int, src: str) -> list:
    return [n("Add", [src, "three"], f"a{i}", f"hs{i}/add"),
            n("Clip", [f"a{i}", "zero", "six"], f"c{i}", f"hs{i}/clip"),
            n("Mul", [src, f"c{i}"], f"m{i}", f"hs{i}/mul"), n("Div", [f"m{i}", "six"], f"h{i}", f"hs{i}/div")]


CONSTS = [const("three", 3.0), const("zero", 0.0), const("six", 6.0)]


@pytest.fixture(scope="module")
def rolled_back_report() -> Report:
    _, report = fuser.optimize(planted_model(), passes=planted_passes())
    expectations = Expectations.from_cli(["hswish>=2", "broken>=3"], ["Pow"], max_error=1e-3)
    report.set_section(AuditSection.of(check(report, expectations)))
    return report


def check_schema(document: dict) -> None:
    """Raise jsonschema.ValidationError when a JSON report does not follow the checked-in schema."""
    jsonschema.validate(document, checked_in(), cls=jsonschema.Draft202012Validator)


def test_schema_matches_report_version():
    assert checked_in()["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    jsonschema.Draft202012Validator.check_schema(checked_in())


def test_reports_validate_against_schema(rolled_back_report):
    check_schema(to_json(rolled_back_report))
    check_schema(json.loads(render(rolled_back_report, "json")))
    _, plain = fuser.optimize(layernorm_model())
    check_schema(to_json(plain))
    _, unvalidated = fuser.optimize(layernorm_model(), validate=False)
    check_schema(to_json(unvalidated))
    broken = dict(to_json(rolled_back_report), fusion_counts={"hswish": "two"})
    with pytest.raises(jsonschema.ValidationError):
        check_schema(broken)
    bad_status = to_json(rolled_back_report)
    bad_status["validation"]["status"] = "ok"
    with pytest.raises(jsonschema.ValidationError):
        check_schema(bad_status)


def test_json_has_no_nan():
    assert to_json({"a": float("nan"), "b": [float("inf"), 1.5]}) == {"a": None, "b": [None, 1.5]}


def test_markdown_before_after_and_sections(rolled_back_report):
    md = to_markdown(rolled_back_report)
    assert "| | before | after |" in md
    i, o = rolled_back_report.input, rolled_back_report.output
    assert f"| nodes | {i.nodes} | {o.nodes} |" in md and f"| opset | {i.opset} | {o.opset} |" in md
    assert "### Op histogram" in md and "| `Clip` | 2 | 0 | -2 |" in md and "| `HardSwish` | 0 | 2 | +2 |" in md
    assert "### Validation: rolled-back" in md and "| `y` | float32 |" in md
    assert "**Rolled back** (2;" in md and "`broken_relu@r1` (broken_relu) replacing relu_b" in md
    assert "| `broken>=3` | ❌ FAIL |" in md and "| `hswish>=2` | ✅ pass |" in md
    assert "### Rules" in md and "| hardswish | " in md and "Reproduce" in md and "```json" in md


def test_histogram_bars():
    report = Report(input=ModelSummary(None, None, None, 13, 6, {"Add": 4, "Mul": 2}),
                    output=ModelSummary(None, None, None, 13, 2, {"Add": 1, "Gelu": 1}))
    md = histogram_markdown(report)
    lines = md.splitlines()
    assert lines[2].startswith("| `Add` | 4 | 1 | -3 | `" + "█" * 20)
    assert "| `Gelu` | 0 | 1 | +1 |" in md and "| `Mul` | 2 | 0 | -2 |" in md
    assert [line.split("|")[1].strip() for line in lines[2:5]] == ["`Add`", "`Mul`", "`Gelu`"]  # biggest change first


def test_small_counts_show_next_to_big_ones():
    """Bars on a log scale: one Relu beside 10 000 Adds is a visible bar in Markdown and in HTML (linear bars drew
    it 0 px wide)."""
    report = Report(input=ModelSummary(None, None, None, 13, 10001, {"Add": 10000, "Relu": 1}),
                    output=ModelSummary(None, None, None, 13, 5001, {"Add": 5000, "Relu": 1}))
    md = {line.split("|")[1].strip(): line for line in histogram_markdown(report).splitlines()[2:4]}
    assert md["`Relu`"].count("█") >= 2 and md["`Add`"].endswith("`" + "█" * 20 + "` | `" + "█" * 18 + "··` |")
    page = render(report, "html")
    widths = {}
    for width, title in re.findall(r"width='([\d.]+)' height='7' fill='[^']*'><title>(\w+ \d+)</title>", page):
        widths[title] = float(width)
    assert widths["before 1"] >= 15 and widths["before 10000"] == 260 and widths["after 5000"] < 260


def test_the_rule_chart_has_attempts_hits_and_near_misses():
    _, report = fuser.optimize(layernorm_model(eps_input=True))
    stats = report.rules["layernorm"]
    near = sum(1 for m in report.near_misses if m.rule == "layernorm")
    assert near and stats.attempts
    md = to_markdown(report)
    row = next(line for line in md.splitlines() if line.startswith("| layernorm |"))
    assert row.startswith(f"| layernorm | {stats.attempts} | {stats.hits} | {near} | {stats.matches} |")
    assert row.count("`") == 6  # three bars: attempts, hits, near misses
    page = render(report, "html")
    assert f"<title>near misses {near}</title>" in page and f"<title>attempts {stats.attempts}</title>" in page


def section_titles(md: str, page: str) -> tuple[list[str], list[str]]:
    """The sections (and folded parts) of a Markdown and of an HTML report, in order."""
    md_titles = re.findall(r"^### (.*)$|<summary>(.*?)</summary>", md, re.M)
    html_titles = re.findall(r"<h2>(.*?)</h2>|<summary>(.*?)</summary>", page)
    return [html.unescape(a or b) for a, b in md_titles], [html.unescape(a or b) for a, b in html_titles]


def test_html_renders_every_section_markdown_has(tmp_path):
    """One page, two syntaxes: the same sections in the same order, for a report with every section (rolled-back
    validation, audit, near misses, folding/clean-up/fp16, a TensorRT build, notes)."""
    from fuser.assembly import default_passes

    fp16 = fuser.Options(precision="fp16")  # the recipe of test_report_types' rich_report
    _, report = fuser.optimize(planted_model(), fp16, passes=[planted_passes()[0], *default_passes(fp16)[1:]])
    report.set_section(AuditSection.of(check(report, Expectations.from_cli(["hswish>=1"], ["Pow"]))))
    _, near = fuser.optimize(layernorm_model(eps_input=True))
    report.near_misses += near.near_misses
    if importlib.util.find_spec("tensorrt_rtx"):
        from fuser.trt import BuildOptions, build_engine

        report.build = build_engine(report_model(tmp_path), BuildOptions(opt_level=0, backend="tensorrt_rtx")).section()
    md, page = to_markdown(report), render(report, "html")
    md_titles, html_titles = section_titles(md, page)
    assert md_titles == html_titles
    expected = ["Before / after", "Audit", "Op histogram", "Validation: rolled-back", "Rules", "Passes",
                f"Near misses ({len(report.near_misses)})", "Fusions"]
    assert [t for t in md_titles if t in expected] == expected
    said = [key.capitalize() for key, section in report.sections.items() if getattr(section, "summary", None)
            and section.summary()]
    assert said and {*said, "Notes", "Reproduce", "Options"} <= set(md_titles)
    if report.build:
        assert "Build" in md_titles
    for text in ("broken_relu@r1", "max abs", "rounds; fixed point reached", "eps is not a constant"):
        assert text in md and text in page, text


def report_model(tmp_path):
    """A small static model for a real engine build."""
    model = make_model([*CONSTS, *hswish(0, "x")], [("x", F, [4, 8])], [("h0", F, [4, 8])], opset=14)
    path = tmp_path / "static.onnx"
    onnx.save(model, path)
    return path


def test_markdown_groups_near_misses_by_reason():
    nodes = [*CONSTS, *hswish(0, "x"), *hswish(1, "h0"), *hswish(2, "h1")]
    model = make_model(nodes, [("x", F, [4, 8])], [("h2", F, [4, 8])], opset=13)
    _, report = fuser.optimize(model, allow_upgrade=False, rules=("hardswish",))
    md = to_markdown(report)
    assert "### Near misses (3)" in md
    assert re.search(r"^\| 3 \| hardswish \| emits HardSwish, which needs opset 14;.* \| `hs0/div` \|$", md, re.M)
    assert "<details><summary>Every near miss (3)</summary>" in md


def test_junit_cases_per_rule_output_and_expectation(rolled_back_report):
    root = ET.fromstring(to_junit(rolled_back_report).split("\n", 1)[1])
    suites = {s.get("name"): s for s in root}
    rules = {c.get("name"): c for c in suites["fuser.rules"]}
    assert rules["broken_relu"].find("failure").get("message").startswith("validation rolled back broken_relu@r")
    assert rules["hardswish"].find("failure") is None
    outputs = {c.get("name"): c for c in suites["fuser.validation"]}
    assert list(outputs) == ["output y"] and outputs["output y"].find("failure") is None
    audit = {c.get("name"): c for c in suites["fuser.report.audit"]}
    assert audit["broken>=3"].find("failure") is not None and audit["hswish>=2"].find("failure") is None
    assert audit["no-op Pow"].find("failure") is None
    assert root.get("failures") == str(sum(int(s.get("failures")) for s in root)) != "0"


def test_html_and_render_dispatch(rolled_back_report):
    page = render(rolled_back_report, "html")
    assert page.startswith("<!doctype html>") and "<h2>Op histogram</h2>" in page
    assert "<rect class='bar after'" in page and "<title>after 2</title>" in page
    assert render(rolled_back_report, "md") == to_markdown(rolled_back_report)
    with pytest.raises(ValueError):
        render(rolled_back_report, "pdf")


# ---------------------------------------------------------------------------- near-miss reasons, every format

def near_misses(model, **options) -> tuple[list[dict], str, str]:
    _, report = fuser.optimize(model, **options)
    d = to_json(report)
    check_schema(d)
    return d["near_misses"], to_markdown(report), to_junit(report)


def test_near_miss_non_constant_eps():
    misses, md, junit = near_misses(layernorm_model(eps_input=True))
    ln = [m for m in misses if m["family"] == "layernorm" and "eps" in m["reason"]]
    assert ln and "not a constant" in ln[0]["reason"] and ln[0]["at"].startswith("encoder.0/")
    assert ln[0]["reason"].replace("|", "\\|") in md and "eps" in junit
    fused, _ = fuser.optimize(layernorm_model())  # the same model with a constant eps fuses
    assert [x.op_type for x in fused.graph.node] == ["LayerNormalization"]


def test_near_miss_value_used_outside_the_match():
    nodes = [*CONSTS, *hswish(0, "x"), n("Relu", ["c0"], "r", "uses_clip"), n("Add", ["h0", "r"], "y", "out")]
    model = make_model(nodes, [("x", F, [4, 8])], [("y", F, [4, 8])], opset=14)
    misses, md, junit = near_misses(model, rules=("hardswish",))
    reasons = [m["reason"] for m in misses if m["rule"] == "hardswish"]
    assert any("'c0'" in r and "used outside the match by 'uses_clip'" in r for r in reasons), reasons
    assert "used outside the match" in md and "used outside the match" in junit


def test_near_miss_opset_with_upgrades_disabled():
    model = make_model([*CONSTS, *hswish(0, "x")], [("x", F, [4, 8])], [("h0", F, [4, 8])], opset=13)
    misses, md, _ = near_misses(model, allow_upgrade=False, rules=("hswish",))
    (miss,) = [m for m in misses if m["rule"] == "hardswish"]
    assert miss["at"] == "hs0/div" and "needs opset 14" in miss["reason"] and "upgrades are disabled" in miss["reason"]
    assert "upgrades are disabled" in md


def test_rolled_back_near_miss_reason():
    _, report = fuser.optimize(planted_model(), passes=[FusionPass([*HSWISH, BROKEN]), DeadCodeElimination()])
    reasons = {m.at: m.reason for m in report.near_misses}
    assert reasons["relu_b"] == "rolled back: this instance changed the outputs in validation"


def markup_of(page: str) -> list[tuple[str, list[str]]]:
    """Every tag of an HTML page with its attribute names, as a browser's tokenizer reads them."""
    from html.parser import HTMLParser

    found = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, [name for name, _ in attrs]))

    Tags().feed(page)
    return found


ATTACK = "<script>alert(1)</script><img src=x onerror=alert(2)>'\"&"


def test_html_is_standalone_and_escapes_every_name():
    """Names from a hostile model (ops, nodes, outputs, rules, the path) never become markup, and the page fetches
    nothing: no script, no external stylesheet, image or font."""
    from fuser.report.audit import report_sections
    from fuser.report import read_report

    _, report = fuser.optimize(layernorm_model(eps_input=True))
    document = to_json(report)
    document["input"]["path"] = f"model{ATTACK}.onnx"
    document["input"]["ops"][f"Op{ATTACK}"] = 3
    document["output"]["ops"][f"Op{ATTACK}"] = 1
    document["near_misses"][0]["at"] = f"node{ATTACK}"
    document["near_misses"][0]["reason"] = f"why{ATTACK}"
    document["rules"][f"rule{ATTACK}"] = {"attempts": 2, "matches": 1, "hits": 0, "time_s": 0.0}
    document["validation"]["outputs"] = {f"y{ATTACK}": document["validation"]["outputs"]["y"]}
    document["notes"].append(f"note{ATTACK}")
    document["command"] = ["fuser", "optimize", f"m{ATTACK}.onnx"]
    hostile = read_report(document, report_sections())
    page = render(hostile, "html")
    tags = markup_of(page)
    assert {tag for tag, _ in tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "br", "section",
                                        "table", "thead", "tbody", "tr", "th", "td", "code", "strong", "span", "ul", "li",
                                        "pre", "details", "summary", "figure", "figcaption", "svg", "rect", "line",
                                        "text"}, tags
    assert not [a for _, attrs in tags for a in attrs if a.startswith("on") or a in ("src", "href")]
    assert "@import" not in page and "url(" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 7  # path, op (title, label), node, reason, ...
    assert re.findall(r"https?://[^'\"]*", page) == ["http://www.w3.org/2000/svg"] * page.count("<svg")
    md = render(hostile, "md")
    outside_code = re.sub(r"(`{3,})[^\n]*\n.*?\n\1", "", md, flags=re.S)  # a fenced block shows text as text
    assert "<script" not in outside_code and "<img" not in outside_code and "&lt;script>" in outside_code
