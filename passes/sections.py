"""The report sections the folding and clean-up passes share; each pass adds to its section through
`ctx.report.section(FoldingSection)` (created on the first use of a run).

    folding   constant_folding.py, shape_inference.py (shape folding), shape_tensors.py
    cleanup   cse.py, noop.py, initializers.py

Field metadata is the report codec's (fuser/report/codec.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class FoldSkipped:
    """A fold not done: a result over the budget, a node that cannot be evaluated."""

    node: str
    op: str
    reason: str


@dataclass
class NotFolded:
    """A Shape or Size node left in the graph, and the dynamic dims it depends on."""

    node: str
    value: str
    reason: str


@dataclass
class FoldingSection:
    """What folding computed ahead of time, what it left, and why (a fold over its budget, a dynamic dim)."""

    key: ClassVar[str] = "folding"

    folded: int = 0  # nodes replaced by their constant results
    bytes_added: int = 0  # bytes of constants added, less the bytes of those no longer used
    shape_values_folded: int = 0  # Shape/Size results (and the chains on them) made constants
    skipped: list[FoldSkipped] = field(default_factory=list)
    not_folded: list[NotFolded] = field(default_factory=list)
    pinned_dims: dict[str, int] = field(default_factory=dict, metadata={"omit_default": True})  # --input-shape
    nd_shape_chains_rewritten: int = 0  # shape_tensors.py
    reshape_targets_rewritten: int = 0

    def summary(self) -> list[str]:
        """The lines `fuser optimize` prints."""
        if not (self.folded or self.shape_values_folded or self.skipped or self.not_folded):
            return []
        lines = [f"folded: {self.folded} nodes ({self.bytes_added:+d} bytes), {self.shape_values_folded} shape values; "
                 f"{len(self.skipped)} folds skipped, {len(self.not_folded)} Shape/Size nodes stay dynamic"]
        lines += [f"not folded: '{entry.node}': {entry.reason}" for entry in (self.skipped + self.not_folded)[:3]]
        return lines


@dataclass
class CleanupSection:
    """What the clean-up passes removed: merged duplicates, no-op nodes by op type, merged initializers."""

    key: ClassVar[str] = "cleanup"

    cse_merged: int = 0
    noop_removed: dict[str, int] = field(default_factory=dict)
    initializers_merged: int = 0
    initializer_bytes_saved: int = 0
