"""Everything a run of fuser can be asked to do, in one dataclass the report records verbatim.

The CLI's option groups and the library call `fuser.optimize(..., **options)` both fill this, so a
report's `options` section reproduces the run exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .model_io import MAX_OPSET
from .rule import TARGETS

DEFAULT_MAX_OPSET = 21  # upgrades go only as far as a rule needs; RMSNormalization (23) is opt-in


@dataclass
class Options:
    target: str = "generic"  # generic | tensorrt | onnxruntime: which ops the output may contain
    rules: tuple[str, ...] = ()  # rule names or families to run (empty: all)
    skip_rules: tuple[str, ...] = ()
    target_opset: int | None = None  # the highest default-domain opset fuser may upgrade to
    allow_upgrade: bool = True
    max_iterations: int = 8  # cap on fixed-point rounds of the pass pipeline
    external_data: bool | None = None  # None: as the input had it (forced on past 2 GB)
    progress: bool = False
    disabled: frozenset[str] = field(default_factory=frozenset)  # rewrite keys rolled back by validation

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"unknown target '{self.target}' (choose from {', '.join(TARGETS)})")
        if self.target_opset is not None and not 1 <= self.target_opset <= MAX_OPSET:
            raise ValueError(f"target opset {self.target_opset} is outside 1..{MAX_OPSET}, the range "
                             "onnxruntime runs")

    def max_opset_for(self, model_opset: int) -> int:
        if self.target_opset is not None:
            return self.target_opset
        return max(model_opset, DEFAULT_MAX_OPSET)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["disabled"] = sorted(self.disabled)
        d["rules"], d["skip_rules"] = list(self.rules), list(self.skip_rules)
        return d
