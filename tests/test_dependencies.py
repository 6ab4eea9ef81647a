"""pyproject's dependencies are honest: a hard dependency is a distribution the installed code imports.

The imports of fuser/, passes/ and rules/ are read with `ast` (at module level or lazily inside a function; not
under `if TYPE_CHECKING:`), mapped to the installed distribution that ships each module (from the installed
files' records, so `google.protobuf` is protobuf and `onnxruntime` is whichever build is installed), and compared
with the requirements pyproject selects on this machine. An unused requirement or an undeclared import fails.

fuser also runs one file of onnxruntime by path (fuser/facts.py: tools/symbolic_shape_infer.py,
onnxruntime's symbolic shape engine). What that file imports beyond onnxruntime's own requirements (sympy, an
onnxruntime extra since 1.2x) is fuser's dependency too: without it the engine silently does not run and shape
folding proves less (DAB-DETR: 2533 nodes instead of 2265).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

ROOT = Path(__file__).resolve().parent.parent
INSTALLED_CODE = ("fuser", "passes", "rules")  # what the wheel ships (passes/ and rules/ as fuser.passes/.rules)
FIRST_PARTY = {"fuser", "passes", "rules", "__future__"}
# onnxruntime-gpu and onnxruntime ship the same `onnxruntime` module; the markers choose one (tested below)
SAME_MODULE = {"onnxruntime-gpu": "onnxruntime"}


def _canonical(name: str) -> str:
    name = name.lower().replace("_", "-").replace(".", "-")
    return SAME_MODULE.get(name, name)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(folders, root: Path = ROOT) -> dict[str, set[str]]:
    """Third-party modules imported anywhere in the .py files under root/folder -> the files that import them.

    Git-ignored content is not ours: hidden folders (benchmarks/.venv) and benchmarks/cache are skipped."""
    return imports_of([path for folder in folders for path in sorted((root / folder).rglob("*.py"))
                       if not any(part.startswith(".") or part == "cache"
                                  for part in path.relative_to(root / folder).parts[:-1])], root)


def imports_of(paths, root: Path) -> dict[str, set[str]]:
    """Third-party modules the files import -> the files (relative to root) that import them.

    A module is named by its top-level package, except under a namespace package (`google.protobuf`)."""
    found: dict[str, set[str]] = {}

    def visit(node, path):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, path)
            return
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] in sys.stdlib_module_names or parts[0] in FIRST_PARTY:
                continue
            module = ".".join(parts[:2]) if parts[0] == "google" else parts[0]
            found.setdefault(module, set()).add(str(path.relative_to(root)))
        for child in ast.iter_child_nodes(node):
            visit(child, path)

    for path in paths:
        visit(ast.parse(path.read_text(), str(path)), path)
    return found


def distribution_of(module: str, importers=()) -> str:
    """The installed distribution (its canonical name) whose RECORD lists the module's file."""
    return _canonical(_installed_distribution(module, importers).metadata["Name"])


def _installed_distribution(module: str, importers=()) -> importlib.metadata.Distribution:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, \
        f"{module} is not installed; {', '.join(sorted(importers)) or 'fuser'} imports it (pip install -e '.[test]')"
    origin = Path(spec.origin).resolve()
    for dist in importlib.metadata.distributions():
        for f in dist.files or ():
            if f.name == origin.name and Path(dist.locate_file(f)).resolve() == origin:
                return dist
    raise AssertionError(f"no installed distribution records {origin} (module {module})")


def hard_requirements(env: dict | None = None) -> set[str]:
    """pyproject's [project] dependencies whose environment marker selects them (here, or in `env`)."""
    out = set()
    for text in _pyproject()["project"]["dependencies"]:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            out.add(_canonical(req.name))
    return out


def borrowed_imports() -> dict[str, set[str]]:
    """Modules imported by the onnxruntime file fuser runs by path that onnxruntime itself does not require."""
    source = (ROOT / "fuser" / "facts.py").read_text()
    assert '"tools" / "symbolic_shape_infer.py"' in source, "fuser/facts.py no longer runs that file: update this"
    ort = _installed_distribution("onnxruntime")
    path = Path(ort.locate_file("onnxruntime/tools/symbolic_shape_infer.py"))
    ort_requires = {_canonical(req.name) for req in map(Requirement, ort.requires or ())
                    if req.marker is None or req.marker.evaluate({"extra": ""})}
    return {m: files for m, files in imports_of([path], path.parents[2]).items()
            if distribution_of(m, files) not in ort_requires | {"onnxruntime"}}


def test_hard_dependencies_are_exactly_what_the_installed_code_imports():
    modules = {**imported_modules(INSTALLED_CODE), **borrowed_imports()}
    imported = {}
    for module, files in modules.items():
        imported.setdefault(distribution_of(module, files), set()).update(files)
    declared = hard_requirements()
    unused = declared - set(imported)
    missing = {dist: sorted(files) for dist, files in imported.items() if dist not in declared}
    assert not unused, f"pyproject requires {sorted(unused)}, which fuser/, passes/ and rules/ never import " \
                       "(make it an extra, or remove it)"
    assert not missing, f"imported but not a dependency in pyproject: {missing}"


def test_the_scan_sees_lazy_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("from typing import TYPE_CHECKING\nimport numpy\nif TYPE_CHECKING:\n"
                              "    import networkx\nelse:\n    import click\n"
                              "def f():\n    from google.protobuf import message\n    import os.path\n")
    assert set(imported_modules(["pkg"], tmp_path)) == {"numpy", "click", "google.protobuf"}
    assert distribution_of("google.protobuf") == "protobuf"
    assert distribution_of("numpy") == "numpy"


PLATFORMS = {  # (sys_platform, platform_system, platform_machine) -> has onnxruntime-gpu wheels
    ("linux", "Linux", "x86_64"): True,
    ("win32", "Windows", "AMD64"): True,
    ("linux", "Linux", "aarch64"): False,
    ("darwin", "Darwin", "arm64"): False,
    ("darwin", "Darwin", "x86_64"): False,
    ("win32", "Windows", "ARM64"): False,
}


@pytest.mark.parametrize("platform", PLATFORMS, ids=lambda p: f"{p[1]}-{p[2]}")
def test_onnxruntime_gpu_only_where_it_has_wheels(platform):
    sys_platform, system, machine = platform
    env = {**default_environment(), "sys_platform": sys_platform, "platform_system": system,
           "platform_machine": machine}
    selected = []
    for text in _pyproject()["project"]["dependencies"]:
        req = Requirement(text)
        if req.name in ("onnxruntime", "onnxruntime-gpu") and (req.marker is None or req.marker.evaluate(env)):
            selected.append(req.name)
    assert selected == (["onnxruntime-gpu"] if PLATFORMS[platform] else ["onnxruntime"])


def test_bench_extra_is_what_the_benchmarks_import():
    """The `bench` extra holds the peers benchmarks/ compares against: each one is imported there."""
    extra = {_canonical(Requirement(t).name) for t in _pyproject()["project"]["optional-dependencies"]["bench"]}
    modules = {_canonical(m) for m in imported_modules(["benchmarks"])}
    assert extra <= modules, f"the bench extra lists {sorted(extra - modules)}, which benchmarks/ never imports"


def test_every_subpackage_is_shipped():
    """A folder with an __init__.py under fuser/ (or passes/, rules/) that the wheel's package list misses would
    import here, from the source tree, and fail once installed."""
    setuptools = _pyproject()["tool"]["setuptools"]
    shipped = {Path(setuptools["package-dir"][name]) for name in setuptools["packages"]}
    folders = {init.parent.relative_to(ROOT) for top in INSTALLED_CODE for init in (ROOT / top).rglob("__init__.py")}
    assert folders - shipped == set()
