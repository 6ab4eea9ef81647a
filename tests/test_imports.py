"""The dependency between fuser's core and its libraries runs one way, and in the open (issue 14).

The core (graph, facts, pattern, matcher, rule engine, pass manager, opset...) never imports the passes
in passes/ or the rules in rules/ (shipped as fuser.passes and fuser.rules); they import the core only;
and one module, fuser/assembly.py, puts them together. Read from the source with `ast`: every import
counts, at the top of a module or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ("graph", "facts", "pattern", "matcher", "rule", "pass_manager", "opset", "op_forms", "errors", "options",
        "model_io")
LIBRARIES = ("fuser.passes", "fuser.rules")


def imports(text: str, package: str) -> set[str]:
    """Absolute names of every module `text` imports (relative imports resolved against `package`)."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import passes`
    return {_shipped(name) for name in found}


def _shipped(name: str) -> str:
    """passes/ and rules/ ship as fuser.passes and fuser.rules: one name for both spellings."""
    top = name.split(".")[0]
    return f"fuser.{name}" if top in ("passes", "rules") else name


def of_library(names: set[str]) -> set[str]:
    return {n for n in names if any(n == lib or n.startswith(lib + ".") for lib in LIBRARIES)}


def sources(folder: str, package: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        sub = ".".join(path.relative_to(ROOT / folder).with_suffix("").parts)
        module = package if sub == "__init__" else f"{package}.{sub.removesuffix('.__init__')}"
        yield path, module, (module if path.name == "__init__.py" else module.rsplit(".", 1)[0])


def test_the_scan_sees_lazy_and_relative_imports():
    lazy = "def f():\n    from .passes import default_passes\n    import fuser.rules\n"
    assert of_library(imports(lazy, "fuser")) == {"fuser.passes", "fuser.passes.default_passes", "fuser.rules"}
    assert of_library(imports("from . import rules\n", "fuser")) == {"fuser.rules"}
    assert of_library(imports("from .noop import x\n", "fuser.passes")) == {"fuser.passes.noop", "fuser.passes.noop.x"}
    assert not of_library(imports("from .rule import Rule\nfrom . import rule\n", "fuser"))


@pytest.mark.parametrize("name", CORE)
def test_the_core_never_imports_passes_or_rules(name):
    text = (ROOT / "fuser" / f"{name}.py").read_text()
    assert not of_library(imports(text, "fuser")), f"fuser/{name}.py imports {sorted(of_library(imports(text, 'fuser')))}"


def test_only_the_assembly_module_imports_passes_or_rules():
    importers = {str(path.relative_to(ROOT)) for path, _, package in sources("fuser", "fuser")
                 if of_library(imports(path.read_text(), package))}
    assert importers == {"fuser/assembly.py"}, importers


@pytest.mark.parametrize("folder", ["passes", "rules"])
def test_passes_and_rules_import_only_the_core(folder):
    for path, _, package in sources(folder, f"fuser.{folder}"):
        names = imports(path.read_text(), package)
        fuser_modules = {n.split(".")[1] for n in names if n.startswith("fuser.") and not of_library({n})}
        assert fuser_modules <= set(CORE), f"{path.relative_to(ROOT)} imports {sorted(fuser_modules - set(CORE))}"
