"""Rules users write (issue 13): loaded from a file (`--rules-from`, `rules_from=`) or an installed package (entry
points of the group `fuser.rules`), they run, are listed, selected, reported and audited like fuser's own; every way
loading or running one can fail is one line and exit 2 (loading) or 1 (a rule that raises on the model).

The rule under test is the documented example, examples/rules/mish.py; plugins are real distributions (a
`*.dist-info` folder with entry_points.txt) on sys.path, found by importlib.metadata as an installed package is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import make_model, ops, random_feeds, run
from click.testing import CliRunner
from onnx import TensorProto as T, helper

import fuser
from fuser.cli import main
from fuser.rule_loading import UserRuleError
from test_bad_input import digest

F = T.FLOAT
ROOT = Path(__file__).resolve().parent.parent
MISH = ROOT / "examples" / "rules" / "mish.py"


def mish_model(opset: int = 13, softplus: bool = True) -> onnx.ModelProto:
    """x * tanh(softplus(x)) as PyTorch exports nn.Mish below opset 18 (or with softplus spelled Log(1 + Exp))."""
    if softplus:
        sp = [helper.make_node("Softplus", ["x"], ["sp"], name="softplus")]
    else:
        sp = [helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Add", ["one", "e"], ["e1"]),
              helper.make_node("Log", ["e1"], ["sp"])]
    nodes = [*sp, helper.make_node("Tanh", ["sp"], ["t"], name="tanh"),
             helper.make_node("Mul", ["t", "x"], ["y"], name="mul")]
    return make_model(nodes, [("x", F, [2, 8])], [("y", F, [2, 8])], [("one", np.array(1.0, np.float32))],
                      opset=opset)


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "mish.onnx"
    onnx.save(mish_model(), path)
    return path


def cli(*args, input_path: Path | None = None):
    """`fuser ARGS`, in process; the input model untouched and never a traceback."""
    before = digest(input_path) if input_path else None
    result = CliRunner().invoke(main, [str(a) for a in args])
    if input_path:
        assert digest(input_path) == before, "the input model was modified"
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


def one_error(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("fuser: error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


# ------------------------------------------------------------------------------ a file's rules run

def test_a_rule_from_a_file_fires_is_reported_and_gated_by_audit(tmp_path, model_path):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = cli("optimize", model_path, "-o", out, "--rules-from", MISH, "--report", report, input_path=model_path)
    assert result.exit_code == 0, result.output
    assert "mish 1" in result.output and f"rules from {MISH}" in result.output
    assert ops(onnx.load(out)) == ["Mish"]
    saved = json.loads(report.read_text())
    assert saved["fusion_counts"] == {"mish": 1} and saved["options"]["rules_from"] == [str(MISH)]
    assert saved["rule_sources"]["mish"] == {"family": "mish", "origin": "file", "path": str(MISH),
                                             "sha256": hashlib.sha256(MISH.read_bytes()).hexdigest()}
    assert saved["rule_sources"]["hardswish"] == {"family": "hswish", "origin": "built-in"}

    passed = cli("audit", model_path, "--rules-from", MISH, "--expect", "mish>=1", input_path=model_path)
    assert passed.exit_code == 0 and "PASS mish>=1" in passed.output, passed.output
    failed = cli("audit", model_path, "--rules-from", MISH, "--expect", "mish>=2", input_path=model_path)
    assert failed.exit_code == 1 and "FAIL mish>=2: mish: 1 fusion, expected >=2" in failed.output, failed.output
    assert cli("audit", report, "--expect", "mish==1").exit_code == 0  # the saved report knows the rule

    # without it, the family is unknown to the audit; a run that loaded it but did not fire counts 0
    one_error(cli("audit", model_path, "--expect", "mish>=1"), 2, "no rule or family is named 'mish'")
    relu = tmp_path / "relu.onnx"
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [2])], [("y", F, [2])]), relu)
    assert cli("optimize", relu, "-o", tmp_path / "r2.onnx", "--rules-from", MISH, "--report", report).exit_code == 0
    zero = cli("audit", report, "--expect", "mish>=1")
    assert zero.exit_code == 1 and "FAIL mish>=1: mish: 0 fusions" in zero.output, zero.output


def test_rules_and_skip_rules_select_a_loaded_rule_and_fuser_rules_lists_it(tmp_path, model_path):
    only = cli("optimize", model_path, "-o", tmp_path / "a.onnx", "--rules-from", MISH, "--rules", "mish")
    assert only.exit_code == 0 and ops(onnx.load(tmp_path / "a.onnx")) == ["Mish"], only.output
    skipped = cli("optimize", model_path, "-o", tmp_path / "b.onnx", "--rules-from", MISH, "--skip-rules", "mish")
    assert skipped.exit_code == 0 and ops(onnx.load(tmp_path / "b.onnx")) == ["Softplus", "Tanh", "Mul"]
    one_error(cli("optimize", model_path, "--rules", "mish"), 2, "unknown rule or family: mish")

    listed = cli("rules", "-v", "--rules-from", MISH)
    assert listed.exit_code == 0, listed.output
    line = next(x for x in listed.output.splitlines() if x.startswith("mish "))
    assert "emits Mish (opset >= 18)" in line and f"[from {MISH} (sha256 " in line
    assert "- x * tanh(log(1 + exp(x)))" in listed.output
    assert "[from" not in next(x for x in listed.output.splitlines() if x.startswith("hardswish "))


def test_the_library_call_takes_the_same_option():
    model = mish_model(softplus=False)
    optimized, report = fuser.optimize(model, rules_from=str(MISH))  # one file, or a list of them
    assert ops(optimized) == ["Mish"] and report.options.rules_from == (str(MISH),)
    assert report.rule_sources["mish"].origin == "file" and report.validation.status == "passed"
    feeds = random_feeds(model)
    np.testing.assert_allclose(run(optimized, feeds)[0], run(model, feeds)[0], atol=1e-5)
    _, plain = fuser.optimize(model, validate=False)
    assert "mish" not in plain.rule_sources and plain.fusion_counts == {}


def test_near_misses_of_a_loaded_rule_name_the_option_and_the_flag():
    _, report = fuser.optimize(mish_model(), rules_from=[MISH], allow_upgrade=False, validate=False)
    assert [m.reason for m in report.near_misses if m.rule == "mish"] == [
        "emits Mish, which needs opset 18; the model has opset 13 and upgrades are disabled "
        "(--no-upgrade / allow_upgrade=False)"]
    _, report = fuser.optimize(mish_model(), rules_from=[MISH], target_opset=17, validate=False)
    assert [m.reason for m in report.near_misses if m.rule == "mish"] == [
        "emits Mish, which needs opset 18; the target opset is 17 (raise it: --target-opset 18 / target_opset=18)"]


def test_a_module_without_rules_list_offers_its_public_rules_in_order(tmp_path):
    path = write(tmp_path, "two.py", """
        from fuser.pattern import Var, op
        from fuser.rule import Rule
        x = Var("x")
        NEG_NEG = Rule(name="neg-neg", family="double-negation", pattern=op.Neg(op.Neg(x)),
                       rewrite=lambda m, b, _: b.op("Identity", m["x"]))
        _HELPER = Rule(name="helper", family="helper", pattern=op.Abs(x), rewrite=lambda m, b, _: m["x"])
        ABS_ABS = Rule(name="abs-abs", family="abs", pattern=op.Abs(op.Abs(x)),
                       rewrite=lambda m, b, _: b.op("Abs", m["x"]))
    """)
    library = fuser.assembly.rule_library([path], plugins=False)
    assert [r.name for r in library.rules if library.sources[r.name].origin == "file"] == ["neg-neg", "abs-abs"]
    model = make_model([helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
                        helper.make_node("Abs", ["b"], ["c"]), helper.make_node("Abs", ["c"], ["y"])],
                       [("x", F, [3])], [("y", F, [3])])
    optimized, report = fuser.optimize(model, rules_from=[path])
    assert report.fusion_counts == {"abs": 1, "double-negation": 1} and ops(optimized) == ["Abs"]


# ------------------------------------------------------------------------------ installed plugins

def plugin(folder: Path, package: str, value: str, source: str, version: str = "1.2") -> Path:
    """A distribution `package` as pip would leave it in site-packages: the package and its dist-info with one
    entry point `mish = VALUE` in the group fuser.rules."""
    write(folder, f"{package}/__init__.py", source)
    info = folder / f"{package}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[fuser.rules]\nmish = {value}\n")
    return folder


MISH_PACKAGE = MISH.read_text()  # the example rule file, installed as a package


@pytest.mark.parametrize("value", ["{p}:RULES", "{p}:MISH", "{p}"])
def test_an_installed_plugin_fires_and_plugins_can_be_turned_off(tmp_path, monkeypatch, model_path, value):
    package = "fuser_test_plugin_" + re.sub(r"\W", "_", tmp_path.name)  # one per case: modules stay imported
    monkeypatch.syspath_prepend(str(plugin(tmp_path / "site", package, value.format(p=package), MISH_PACKAGE)))
    optimized, report = fuser.optimize(model_path)
    assert ops(optimized) == ["Mish"] and report.fusion_counts == {"mish": 1}
    assert report.rule_sources["mish"].origin == "plugin"
    assert (report.rule_sources["mish"].distribution, report.rule_sources["mish"].version) == (package, "1.2")
    assert f"rules from plugin {package} 1.2 (entry point 'mish'): mish" in report.notes

    off, report = fuser.optimize(model_path, plugins=False)
    assert ops(off) == ["Softplus", "Tanh", "Mul"] and "mish" not in report.rule_sources
    listed = cli("rules")
    assert f"[from plugin {package} 1.2 (entry point 'mish')]" in listed.output, listed.output
    assert "mish" not in cli("rules", "--no-plugins").output


def test_a_plugin_runs_in_the_real_command(tmp_path, model_path):
    site = plugin(tmp_path / "site", "fuser_test_plugin_cli", "fuser_test_plugin_cli:RULES", MISH_PACKAGE, "0.3")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "fuser", "audit", str(model_path), "--expect", "mish==1",
                           "--json", str(tmp_path / "r.json")], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["rule_sources"]["mish"] == {"family": "mish", "origin": "plugin",
                                             "distribution": "fuser_test_plugin_cli", "version": "0.3",
                                             "entry_point": "mish"}
    off = subprocess.run([sys.executable, "-m", "fuser", "audit", str(model_path), "--no-plugins", "--expect",
                          "mish==1"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert off.returncode == 2 and "no rule or family is named 'mish'" in off.stderr, off.stderr


def test_a_plugin_that_fails_to_load_is_one_line_and_no_plugins_gets_past_it(tmp_path, monkeypatch, model_path):
    monkeypatch.syspath_prepend(str(plugin(tmp_path / "site", "fuser_test_plugin_broken",
                                           "fuser_test_plugin_broken:RULES", "import no_such_module_here\n")))
    one_error(cli("optimize", model_path, "-o", tmp_path / "o.onnx", input_path=model_path), 2,
              "plugin fuser_test_plugin_broken 1.2 (entry point 'mish' = fuser_test_plugin_broken:RULES)",
              "ModuleNotFoundError: No module named 'no_such_module_here'", "--no-plugins / plugins=False")
    one_error(cli("rules"), 2, "fuser_test_plugin_broken")
    ok = cli("optimize", model_path, "-o", tmp_path / "o.onnx", "--no-plugins", input_path=model_path)
    assert ok.exit_code == 0, ok.output


def test_a_plugin_naming_something_else_than_rules_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin(tmp_path / "site", "fuser_test_plugin_odd", "fuser_test_plugin_odd:VALUE",
                                           "VALUE = 42\n")))
    one_error(cli("rules"), 2, "loads a int; an entry point of 'fuser.rules' names a Rule, a list of Rules or a module")


@pytest.mark.parametrize("how", ["console-script", "python -P -m", "library"])
def test_a_plugin_planted_beside_the_model_is_never_loaded(tmp_path, model_path, how):
    """A `*.dist-info` with a fuser.rules entry point in the model's folder (the current folder too) is not an
    installed package: only sys.path is searched, and neither safe way to run fuser puts the folder on it."""
    from test_untrusted import _console_script, _python_env

    marker = tmp_path / "pwned"
    plugin(model_path.parent, "planted_rules", "planted_rules:RULES",
           f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n" + MISH_PACKAGE)
    if how == "library":
        optimized, _ = fuser.optimize(model_path)
        assert "Mish" not in ops(optimized) and not marker.exists()
        return
    script = _console_script() if how == "console-script" else None
    if how == "console-script" and script is None:
        pytest.skip("the `fuser` console script is not installed")
    cmd = [script] if script else [sys.executable, "-P", "-m", "fuser"]
    proc = subprocess.run([*cmd, "optimize", model_path.name, "-o", str(tmp_path / "out.onnx")], capture_output=True,
                          text=True, cwd=model_path.parent, env=_python_env())
    assert proc.returncode == 0, proc.stderr
    assert "fused: nothing" in proc.stdout, proc.stdout
    assert not marker.exists(), "a plugin planted beside the model was loaded"


# ------------------------------------------------------------------------------ loading errors: exit 2, one line

RULE = """
from fuser.pattern import Var, op
from fuser.rule import Rule
x = Var("x")
"""


@pytest.mark.parametrize("name, source, fragments", [
    ("raises.py", "x = 1 / 0\n", ("importing it raised ZeroDivisionError: division by zero",)),
    ("syntax.py", "def f(:\n", ("importing it raised SyntaxError",)),
    ("exits.py", "import sys\nsys.exit(3)\n", ("importing it raised SystemExit: 3",)),
    ("empty.py", "X = 1\n", ("defines no rules",)),
    ("notalist.py", RULE + "RULES = Rule\n", ("RULES must be a list of fuser.rule.Rule objects, not type",)),
    ("item.py", RULE + "RULES = ['mish']\n", ("item 0 of RULES is a str, not a fuser.rule.Rule",)),
    ("clash.py", RULE + "R = Rule(name='hardswish', family='mine', pattern=op.Neg(x), "
                        "rewrite=lambda m, b, _: m['x'])\n",
     ("rule 'hardswish' has the name of the rule 'hardswish' of fuser: rename it",)),
    ("family.py", RULE + "R = Rule(name='hswish', family='mine', pattern=op.Neg(x), rewrite=lambda m, b, _: m['x'])\n",
     ("rule 'hswish' has the name of the family 'hswish' of fuser",)),
    ("root.py", RULE + "R = Rule(name='bare', family='mine', pattern=x, rewrite=lambda m, b, _: m['x'])\n",
     ("rule 'bare': the root of its pattern (x) must be an op",)),
    ("name.py", RULE + "R = Rule(name='my rule', family='mine', pattern=op.Neg(x), rewrite=lambda m, b, _: m['x'])\n",
     ("its name 'my rule' must be letters, digits",)),
    ("targets.py", RULE + "R = Rule(name='t', family='t', pattern=op.Neg(x), rewrite=lambda m, b, _: m['x'], "
                          "targets=('tensorrt', 'tflite'))\n", ("its targets ('tensorrt', 'tflite') must be some of",)),
    ("rewrite.py", RULE + "R = Rule(name='r', family='r', pattern=op.Neg(x), rewrite='Identity')\n",
     ("its rewrite is not callable",)),
])
def test_a_rules_file_that_cannot_load_is_a_usage_error(tmp_path, model_path, name, source, fragments):
    path = write(tmp_path, name, source)
    out = tmp_path / "out.onnx"
    line = one_error(cli("optimize", model_path, "-o", out, "--rules-from", path, input_path=model_path), 2,
                     f"rules file {path}", *fragments)
    assert not out.exists()
    with pytest.raises(fuser.UsageError) as raised:
        fuser.optimize(model_path, rules_from=[path])
    assert str(raised.value) in line
    one_error(cli("rules", "--rules-from", path), 2, *fragments)


@pytest.mark.parametrize("make, fragment", [
    (lambda d: d / "missing.py", "no such file"),
    (lambda d: d, "not a file"),
    (lambda d: write(d, "rules.txt", "RULES = []\n"), "not a Python file (.py)"),
])
def test_a_rules_path_that_is_not_a_python_file_is_a_usage_error(tmp_path, model_path, make, fragment):
    one_error(cli("optimize", model_path, "--rules-from", make(tmp_path), input_path=model_path), 2, fragment)


def test_clashes_between_files_and_a_file_given_twice_are_usage_errors(tmp_path, model_path):
    again = write(tmp_path, "again.py", MISH.read_text())
    one_error(cli("optimize", model_path, "--rules-from", MISH, "--rules-from", again), 2,
              f"rules file {again}", "rule 'mish' has the name of the rule 'mish' of " + str(MISH))
    one_error(cli("optimize", model_path, "--rules-from", MISH, "--rules-from", MISH), 2,
              f"rules file {MISH} is given twice")


def test_rules_are_not_loaded_from_a_saved_report_audit(tmp_path, model_path):
    report = tmp_path / "r.json"
    assert cli("optimize", model_path, "-o", tmp_path / "o.onnx", "--report", report).exit_code == 0
    one_error(cli("audit", report, "--rules-from", MISH), 2, "--rules-from needs a model, not a report")


# ------------------------------------------------------------------------------ a rule that fails on the model

FAILING = RULE + """
def broken_check(m):
    return 1 / 0

RULES = [
    Rule(name="check-raises", family="broken", pattern=op.Tanh(x), check=broken_check,
         rewrite=lambda m, b, _: m["x"]),
    Rule(name="rewrite-raises", family="broken", pattern=op.Tanh(x), rewrite=lambda m, b, _: m["nope"]),
    Rule(name="rewrite-returns-junk", family="broken", pattern=op.Tanh(x), rewrite=lambda m, b, _: 42),
    Rule(name="builds-invalid", family="broken", pattern=op.Tanh(x),
         rewrite=lambda m, b, _: b.op("Tanh", m["x"], alpha=1.0)),
]
"""


@pytest.mark.parametrize("rule, fragment", [
    ("check-raises", "rule 'check-raises' raised ZeroDivisionError in its check at node 'tanh': division by zero"),
    ("rewrite-raises", "rule 'rewrite-raises' raised KeyError in its rewrite at node 'tanh': ('v', 'nope')"),
    ("rewrite-returns-junk", "rule 'rewrite-returns-junk': its rewrite returned int '42' at node 'tanh'"),
    ("builds-invalid", "rule 'builds-invalid': its rewrite at node 'tanh' built a node onnx.checker refuses: "
                       "Tanh: Unrecognized attribute: alpha for operator Tanh"),
])
def test_a_loaded_rule_that_fails_on_the_model_stops_the_run_naming_it(tmp_path, model_path, rule, fragment):
    path = write(tmp_path, "failing.py", FAILING)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    one_error(cli("optimize", model_path, "-o", out, "--report", report, "--rules-from", path, "--rules", rule,
                  input_path=model_path), 1, fragment, f"(the rule is from {path} (sha256 ",
              f"skip it: --skip-rules {rule} / skip_rules=('{rule}',)")
    assert not out.exists() and not report.exists()
    with pytest.raises(UserRuleError, match="fix it, or skip it"):
        fuser.optimize(model_path, rules_from=[path], rules=(rule,))
    skipped = cli("optimize", model_path, "-o", out, "--rules-from", path, "--skip-rules", "broken")
    assert skipped.exit_code == 0, skipped.output
