"""What a run did, as typed data: the report the stage, the passes and the rules fill.

The core of a run is here (models before and after, pass and rule statistics, fusions, near misses, notes); each
stage owns its section type (`validation`: fuser/validate.py, `build`: fuser/trt/build.py) and each pass that reports
more owns its own (passes/sections.py, passes/precision.py), kept in `Report.sections` under the type's `key`:

    report.section(FoldingSection).folded += 3        # a pass adds to its section, created on first use

`codec.to_json(report)` is the JSON document (schema: fuser/schema/report.schema.json, version `SCHEMA_VERSION`);
`read_report(data, sections)` reads one back into these types. Every format renders from the typed Report.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import onnx

from .. import __version__
from ..options import Options
from ..rule import Fusion, NearMiss, RuleStats
from ..rule_loading import RuleSource
from ..trt.build import BuildSection
from ..validation.validate import ValidationSection
from .codec import FieldError, from_json

SCHEMA_VERSION = "1.1"
S = TypeVar("S")


@dataclass
class PassStats:
    """How often a pass ran, how often it changed the graph, and its time."""

    runs: int = 0
    modified: int = 0
    time_s: float = field(default=0.0, metadata={"digits": 6})


@dataclass
class ModelSummary:
    """A model before or after: its file (null in memory), opset, node count and op histogram."""

    path: str | None
    sha256: str | None = field(metadata={"schema": {"pattern": "^[0-9a-f]{64}$"}})
    size_bytes: int | None
    opset: int
    nodes: int
    ops: dict[str, int]  # non-default domains as domain.Op

    @staticmethod
    def of(model: onnx.ModelProto, path: str | Path | None = None) -> ModelSummary:
        opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
        ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                      for n in model.graph.node)
        digest = size = None
        if path is not None and Path(path).is_file():
            size = Path(path).stat().st_size
            digest = file_sha256(path)
        return ModelSummary(str(path) if path else None, digest, size, opset, len(model.graph.node),
                            dict(sorted(ops.items())))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Report:
    """One run of fuser. Read back from JSON, a list it did not record is None (`fusions`: the audit cannot count
    a rule's rewrites then); `fusion_counts` is the one field every report has."""

    schema_version: str = field(default=SCHEMA_VERSION, metadata={"schema": {"const": SCHEMA_VERSION}})
    fuser_version: str = __version__
    command: list[str] = field(default_factory=lambda: list(sys.argv))  # the argv that reproduces the run
    options: Options = field(default_factory=Options)
    input: ModelSummary | None = None
    output: ModelSummary | None = None
    time_s: float = field(default=0.0, metadata={"digits": 6})
    iterations: int = 0
    reached_fixed_point: bool = True
    passes: dict[str, PassStats] = field(default_factory=dict)
    rules: dict[str, RuleStats] = field(default_factory=dict)
    # each rule the run chose: its family, and fuser's own, a file (path, sha256) or a plugin (distribution, version)
    rule_sources: dict[str, RuleSource] = field(default_factory=dict, metadata={"omit_default": True})
    fusion_counts: dict[str, int] = field(default_factory=dict, metadata={"required": True})  # rewrites per family
    fusions: list[Fusion] | None = field(default_factory=list, metadata={"null": False})
    near_misses: list[NearMiss] = field(default_factory=list)  # never where the same rule fired later
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    validation: ValidationSection | None = None  # None: --no-validate
    build: BuildSection | None = None  # None: no engine was built
    output_files: list[str] = field(default_factory=list, metadata={"omit_default": True})
    sections: dict[str, Any] = field(default_factory=dict, metadata={"sections": True})  # the passes', the audit's

    def pass_stats(self, name: str) -> PassStats:
        return self.passes.setdefault(name, PassStats())

    def rule_stats(self, name: str) -> RuleStats:
        return self.rules.setdefault(name, RuleStats())

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def add_fusions(self, fusions: Iterable[Fusion]) -> None:
        """Record applied rewrites: they are counted per family, and near misses where they fired go."""
        self.fusions.extend(fusions)
        hit = {(f.rule, f.root) for f in self.fusions}
        self.near_misses = [m for m in self.near_misses if (m.rule, m.at) not in hit]
        self.fusion_counts = dict(sorted(Counter(f.family for f in self.fusions).items()))

    def add_near_miss(self, miss: NearMiss) -> None:
        if any(m.rule == miss.rule and m.at == miss.at for m in self.near_misses):
            return
        if any(f.rule == miss.rule and f.root == miss.at for f in self.fusions):
            return
        self.near_misses.append(miss)

    def section(self, kind: type[S]) -> S:
        """This run's section of type `kind` (named `kind.key` in the JSON), created empty on first use."""
        if kind.key not in self.sections:
            self.sections[kind.key] = kind()
        return self.sections[kind.key]

    def set_section(self, section: Any) -> None:
        self.sections[type(section).key] = section


def read_report(data: Any, sections: Iterable[type] = ()) -> Report:
    """A report document (parsed JSON) as a Report; `sections` are the section types it may hold beyond the core
    (unknown ones are ignored). Raises FieldError naming the first field that does not fit."""
    if isinstance(data, Mapping):
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, str) and version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise FieldError("schema_version", f"version {version} is not {SCHEMA_VERSION.split('.')[0]}.x, "
                                               "the report format this fuser reads")
    return from_json(Report, data, {kind.key: kind for kind in sections})
