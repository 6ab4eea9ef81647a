"""Rules from outside fuser: files the user names and installed packages, checked like fuser's own.

    fuser optimize model.onnx --rules-from my_rules.py       fuser.optimize(model, rules_from=["my_rules.py"])
    [project.entry-points."fuser.rules"]  mish = "my_pkg.rules:RULES"   (on unless --no-plugins / plugins=False)

A rules file is a Python file; its rules are its module-level `RULES` (a list of `fuser.rule.Rule`, in the order
they run) or, when it has none, every module-level `Rule` in the order the file defines them. An entry point of the
group `fuser.rules` loads a Rule, a list of them, or a module read like a file. They run after fuser's own rules:
installed plugins (by distribution, then entry-point name), then files in the order given.

Loading a rule runs its code, so it happens only where the user chose it: a file named on the command line or in
the call (never one found beside a model), or a package the user installed. A file is read once, hashed, and run
from those very bytes (no `__pycache__` is written beside it); its module is named after the hash, so the same
content is run once per process. Every rule is checked before any work (a name that `--rules` and `--expect` can
spell and no other rule has, a pattern whose root is an op, callables, targets fuser knows): each problem is one
UsageError naming the file or the package.

`RuleSource` is where each rule of a run came from; the report keeps one per rule (`Report.rule_sources`), so a
saved report says which rule set ran and an audit knows the families of rules that did not fire.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.metadata
import importlib.util
import os
import re
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import FuserError, UsageError, first_line
from .pattern import Pattern
from .rule import TARGETS, Rule, RuleFailed

ENTRY_POINT_GROUP = "fuser.rules"
NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")  # what `--rules a,b` and `--expect NAME>=N` can spell
_MODULE_PREFIX = "fuser_rules_from_"


@dataclass(frozen=True)
class RuleSource:
    """Where a rule came from: fuser itself, a file the user named (its path and sha256), or an installed package
    (its distribution, version and entry point)."""

    family: str
    origin: Literal["built-in", "file", "plugin"] = "built-in"
    path: str | None = field(default=None, metadata={"omit_default": True})
    sha256: str | None = field(default=None, metadata={"omit_default": True,
                                                       "schema": {"pattern": "^[0-9a-f]{64}$"}})
    distribution: str | None = field(default=None, metadata={"omit_default": True})
    version: str | None = field(default=None, metadata={"omit_default": True})
    entry_point: str | None = field(default=None, metadata={"omit_default": True})

    def describe(self) -> str:
        if self.origin == "file":
            return f"{self.path} (sha256 {self.sha256[:12]})"
        if self.origin == "plugin":
            return f"plugin {self.distribution} {self.version} (entry point '{self.entry_point}')"
        return "fuser (built in)"


@dataclass
class RuleLibrary:
    """The rules a run may choose from, in the order they run, and where each came from."""

    rules: list[Rule]
    sources: dict[str, RuleSource]

    def blame(self, failure: RuleFailed) -> UserRuleError | None:
        """The error that names a rule from outside fuser whose code failed (None: one of fuser's own)."""
        source = self.sources.get(failure.rule)
        if source is None or source.origin == "built-in":
            return None
        return UserRuleError(f"{failure} (the rule is from {source.describe()}); fix it, or skip it: "
                             f"--skip-rules {failure.rule} / skip_rules=('{failure.rule}',)")


class UserRuleError(FuserError):
    """A rule from outside fuser failed on the model (its check or rewrite raised, its rewrite returned something
    else than value names or built a node onnx.checker refuses): the run stops, naming it (exit 1)."""


def library(builtin: Iterable[Rule], rules_from: Iterable[str | os.PathLike] = (), plugins: bool = True
            ) -> RuleLibrary:
    """fuser's rules, then the installed plugins' (unless `plugins` is False), then those of each file in
    `rules_from`; a UsageError before any work for a file or a plugin that cannot be loaded or a rule that
    is not well-formed or clashes with another."""
    lib = RuleLibrary([], {})
    for rule in builtin:
        _add(lib, rule, RuleSource(rule.family))
    for rule, source in _plugin_rules() if plugins else ():
        _add(lib, rule, source)
    seen: dict[Path, str] = {}
    for path in rules_from:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise UsageError(f"rules file {os.fspath(path)} is given twice (also as {seen[resolved]})")
        seen[resolved] = os.fspath(path)
        rules, digest = load_file(path)
        for rule in rules:
            _add(lib, rule, RuleSource(rule.family, "file", os.fspath(path), digest))
    return lib


def load_file(path: str | os.PathLike) -> tuple[list[Rule], str]:
    """The rules a Python file defines and the sha256 of the bytes that ran."""
    where = f"rules file {os.fspath(path)}"
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{where}: no such file")
    if not p.is_file():
        raise UsageError(f"{where}: not a file")
    if p.suffix != ".py":
        raise UsageError(f"{where}: not a Python file (.py)")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"{where}: cannot be read ({first_line(exc)})") from None
    digest = hashlib.sha256(data).hexdigest()
    module = sys.modules.get(_MODULE_PREFIX + digest) or _run_module(_MODULE_PREFIX + digest, p, data, where)
    return module_rules(module, where), digest


class _BytesLoader(importlib.abc.SourceLoader):
    """Runs the bytes already read and hashed (no second read of the file, no bytecode cache written)."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data = path, data

    def get_filename(self, fullname: str) -> str:
        return str(self.path)

    def get_data(self, path: str) -> bytes:
        return self.data


def _run_module(name: str, path: Path, data: bytes, where: str) -> types.ModuleType:
    loader = _BytesLoader(path, data)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader, origin=str(path)))
    sys.modules[name] = module  # dataclasses and typing look their module up while it runs
    try:
        loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise UsageError(f"{where}: importing it raised {type(exc).__name__}: {first_line(exc)}") from None
    return module


def module_rules(module: types.ModuleType, where: str) -> list[Rule]:
    """A module's `RULES`, or else its module-level Rule objects in the order it defines them."""
    if "RULES" in vars(module):
        rules = vars(module)["RULES"]
        if isinstance(rules, Rule) or not isinstance(rules, (list, tuple)):
            raise UsageError(f"{where}: RULES must be a list of fuser.rule.Rule objects, not {type(rules).__name__}")
        what = "RULES"
    else:
        rules = [v for k, v in vars(module).items() if isinstance(v, Rule) and not k.startswith("_")]
        what = "the module"
    if not rules:
        raise UsageError(f"{where}: defines no rules (a module-level RULES = [...] of fuser.rule.Rule objects, "
                         "or Rule objects at module level)")
    for k, rule in enumerate(rules):
        if not isinstance(rule, Rule):
            raise UsageError(f"{where}: item {k} of {what} is a {type(rule).__name__}, not a fuser.rule.Rule")
    return list(rules)


def _plugin_rules() -> list[tuple[Rule, RuleSource]]:
    """The rules of every installed entry point of the group `fuser.rules`, by distribution then name."""
    found = []
    points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                    key=lambda ep: (_dist(ep)[0], ep.name))
    for ep in points:
        dist, version = _dist(ep)
        where = f"plugin {dist} {version} (entry point '{ep.name}' = {ep.value})"
        try:
            loaded = ep.load()
        except (Exception, SystemExit) as exc:
            raise UsageError(f"{where}: loading it raised {type(exc).__name__}: {first_line(exc)} "
                             "(turn plugins off with --no-plugins / plugins=False)") from None
        if isinstance(loaded, types.ModuleType):
            rules = module_rules(loaded, where)
        elif isinstance(loaded, Rule):
            rules = [loaded]
        elif isinstance(loaded, (list, tuple)) and loaded and all(isinstance(r, Rule) for r in loaded):
            rules = list(loaded)
        else:
            raise UsageError(f"{where}: loads a {type(loaded).__name__}; an entry point of '{ENTRY_POINT_GROUP}' "
                             "names a Rule, a list of Rules or a module")
        found += [(r, RuleSource(r.family, "plugin", distribution=dist, version=version, entry_point=ep.name))
                  for r in rules]
    return found


def _dist(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"] or dist.name, dist.version


def _add(lib: RuleLibrary, rule: Rule, source: RuleSource) -> None:
    """Append `rule`, checked; a clash with a rule already in `lib` is a UsageError naming both sources."""
    where = {"built-in": "", "file": f"rules file {source.path}: "}.get(source.origin, f"{source.describe()}: ")
    problem = well_formed(rule)
    if problem:
        raise UsageError(f"{where}rule {rule.name!r}: {problem}")
    for other in lib.rules:
        theirs = lib.sources[other.name]
        if rule.name == other.name or (rule.name == other.family and rule.family != other.family):
            clash = "rule" if rule.name == other.name else "family"
            raise UsageError(f"{where}rule '{rule.name}' has the name of the {clash} '{rule.name}' of "
                             f"{'fuser' if theirs.origin == 'built-in' else theirs.describe()}: rename it")
        if rule.family == other.name and rule.family != other.family:
            raise UsageError(f"{where}rule '{rule.name}' has the family '{rule.family}', the name of a rule of "
                             f"{'fuser' if theirs.origin == 'built-in' else theirs.describe()}: rename it")
    lib.rules.append(rule)
    lib.sources[rule.name] = source


def well_formed(rule: Rule) -> str | None:
    """What is wrong with `rule` as a declaration (None: nothing): checked at load, not on the first match."""
    for label, value in (("name", rule.name), ("family", rule.family)):
        if not isinstance(value, str) or not NAME.match(value):
            return (f"its {label} {value!r} must be letters, digits, '_', '-' or '.' "
                    "(it is typed in --rules and --expect)")
    if not isinstance(rule.pattern, Pattern):
        return f"its pattern is a {type(rule.pattern).__name__}, not a fuser.pattern pattern (op.Add(x, 1.0)...)"
    if not rule.pattern.root_ops():
        return (f"the root of its pattern ({rule.pattern.describe()}) must be an op, or alternatives of ops: "
                "matching starts at the nodes of the root op")
    if not callable(rule.rewrite):
        return "its rewrite is not callable (m, builder, analysis) -> value name"
    if rule.check is not None and not callable(rule.check):
        return "its check is not callable (m) -> Refusal | analysis"
    if not isinstance(rule.min_opset, int) or rule.min_opset < 1:
        return f"its min_opset {rule.min_opset!r} is not an opset number"
    if not rule.targets or isinstance(rule.targets, str) or not set(rule.targets) <= set(TARGETS):
        return f"its targets {rule.targets!r} must be some of {', '.join(TARGETS)}"
    if not all(isinstance(t, str) for t in (rule.emits, rule.doc, *rule.spellings)) or isinstance(rule.spellings, str):
        return "its emits and doc are text, its spellings a tuple of texts"
    return None
