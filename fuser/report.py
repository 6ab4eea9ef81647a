"""What a run did, as data: the audit report's core, filled by the pipeline, passes and rules.

`Report.to_dict()` is the JSON document (its schema version is `SCHEMA_VERSION`); other formats
(Markdown, JUnit) render from that dict, never from live objects.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .rule import Fusion, NearMiss, RuleStats

SCHEMA_VERSION = "1.0"


@dataclass
class PassStats:
    runs: int = 0
    modified: int = 0
    time_s: float = 0.0

    def to_dict(self) -> dict:
        return {"runs": self.runs, "modified": self.modified, "time_s": round(self.time_s, 6)}


@dataclass
class ModelSummary:
    path: str | None
    sha256: str | None
    size_bytes: int | None
    opset: int
    nodes: int
    ops: dict[str, int]

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

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Report:
    options: dict = field(default_factory=dict)
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    input: ModelSummary | None = None
    output: ModelSummary | None = None
    passes: dict[str, PassStats] = field(default_factory=dict)
    rules: dict[str, RuleStats] = field(default_factory=dict)
    fusions: list[Fusion] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    iterations: int = 0
    reached_fixed_point: bool = True
    time_s: float = 0.0
    validation: dict | None = None
    build: dict | None = None
    extra: dict = field(default_factory=dict)  # sections added by later stages (folding, fp16...)
    started: float = field(default_factory=time.time)

    def pass_stats(self, name: str) -> PassStats:
        return self.passes.setdefault(name, PassStats())

    def rule_stats(self, name: str) -> RuleStats:
        return self.rules.setdefault(name, RuleStats())

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def add_near_miss(self, miss: NearMiss) -> None:
        if not any(m.rule == miss.rule and m.at == miss.at for m in self.near_misses):
            self.near_misses.append(miss)

    def fusion_counts(self) -> dict[str, int]:
        """Applied rewrites per family (what `--expect layernorm>=35` checks)."""
        return dict(sorted(Counter(f.family for f in self.fusions).items()))

    def to_dict(self) -> dict:
        from . import __version__

        hit_families = {(f.rule, f.root) for f in self.fusions}
        return {
            "schema_version": SCHEMA_VERSION,
            "fuser_version": __version__,
            "command": self.command,
            "options": self.options,
            "input": self.input.to_dict() if self.input else None,
            "output": self.output.to_dict() if self.output else None,
            "time_s": round(self.time_s, 6),
            "iterations": self.iterations,
            "reached_fixed_point": self.reached_fixed_point,
            "passes": {k: v.to_dict() for k, v in self.passes.items()},
            "rules": {k: v.to_dict() for k, v in self.rules.items()},
            "fusion_counts": self.fusion_counts(),
            "fusions": [f.to_dict() for f in self.fusions],
            "near_misses": [m.to_dict() for m in self.near_misses if (m.rule, m.at) not in hit_families],
            "notes": self.notes,
            "warnings": self.warnings,
            "validation": self.validation,
            "build": self.build,
            **self.extra,
        }
