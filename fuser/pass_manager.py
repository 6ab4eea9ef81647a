"""Ordered passes run to a fixed point, with a cap, statistics, and stated preconditions.

A pass is an object with a `name`, optional `requires` (names of conditions in `CONDITIONS`, checked
before its first run) and `run(graph, ctx) -> PassResult`, which says whether it changed the graph —
that flag is what makes the fixed point cheap: a round in which no pass changed anything ends the loop.
A pass that stopped because the model needs a higher opset (a fusion's op) says so in `needs_opset`;
the manager upgrades the model (see `opset.upgrade`) and runs the round again on the upgraded graph.
A pass with `final = True` is not part of the fixed point: it runs once, after it (fp16 conversion).

`RunContext` is what passes share during one run: the user's options, the report, and the run's own
state — rewrites validation rolled back (`disabled`), whether and how far the opset may still be raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import onnx

from .errors import ModelError, first_line
from .graph import Graph
from .opset import upgrade
from .options import Options
from .report import Report


@dataclass(frozen=True)
class PassResult:
    """What one run of a pass did: changed the graph; stopped because the model needs `needs_opset`."""

    modified: bool
    needs_opset: int | None = None


class Pass(Protocol):
    name: str
    requires: tuple[str, ...]

    def run(self, graph: Graph, ctx: RunContext) -> PassResult: ...


@dataclass
class RunContext:
    """What passes share during one run: the options, the report, and the run's state."""

    options: Options
    report: Report
    max_opset: int  # the highest opset this run may raise the model to
    allow_upgrade: bool = True  # cleared by a failed upgrade
    disabled: frozenset[str] = frozenset()  # rewrite keys (rule@root-value) validation rolled back
    progress: Callable[[str], None] = lambda msg: None
    upgrades_failed: set[int] = field(default_factory=set)

    @property
    def target(self) -> str:
        return self.options.target


def _acyclic(graph: Graph) -> str | None:
    graph.topological_order()  # raises ModelError naming the cycle
    return None


def _checker_valid(graph: Graph) -> str | None:
    try:
        onnx.checker.check_model(graph.to_model())
    except onnx.checker.ValidationError as exc:
        return first_line(exc)
    return None


CONDITIONS: dict[str, Callable[[Graph], str | None]] = {
    "acyclic": _acyclic,
    "checker-valid": _checker_valid,
}


def _check_requires(p: Pass, graph: Graph, checked: set[str]) -> None:
    """Raise when a condition the pass requires does not hold; `checked` skips ones already proven."""
    for condition in p.requires:
        if condition not in checked:
            problem = CONDITIONS[condition](graph)
            if problem:
                raise ModelError(f"pass '{p.name}' needs a {condition} graph: {problem}")
            checked.add(condition)


class PassManager:
    def __init__(self, passes: Sequence[Pass], max_iterations: int = 8):
        self.passes = list(passes)
        self.max_iterations = max_iterations

    def run(self, graph: Graph, ctx: RunContext) -> Graph:
        checked: set[str] = set()
        report = ctx.report
        looped = [p for p in self.passes if not getattr(p, "final", False)]
        for iteration in range(1, self.max_iterations + 1):
            report.iterations = iteration
            changed = False
            for p in looped:
                _check_requires(p, graph, checked)
                stats = report.pass_stats(p.name)
                ctx.progress(f"round {iteration}: {p.name} ({len(graph)} nodes)")
                start = time.perf_counter()
                result = p.run(graph, ctx)
                stats.time_s += time.perf_counter() - start
                stats.runs += 1
                if result.modified:
                    stats.modified += 1
                    changed = True
                if result.needs_opset is not None:
                    upgraded = upgrade(graph, result.needs_opset, ctx)
                    if upgraded is not None:
                        graph = upgraded
                        changed = True
                        checked.clear()
                        break  # restart the round on the upgraded graph
            if not changed:
                report.reached_fixed_point = True
                return self._run_final(graph, ctx)
        report.reached_fixed_point = False
        report.note(f"stopped after {self.max_iterations} rounds without reaching a fixed point "
                    "(raise the cap: --max-iterations / max_iterations=)")
        return self._run_final(graph, ctx)

    def _run_final(self, graph: Graph, ctx: RunContext) -> Graph:
        """Passes marked `final = True` (precision conversion) run once each, in order, after the loop."""
        for p in self.passes:
            if not getattr(p, "final", False):
                continue
            _check_requires(p, graph, set())
            stats = ctx.report.pass_stats(p.name)
            ctx.progress(f"final: {p.name} ({len(graph)} nodes)")
            start = time.perf_counter()
            result = p.run(graph, ctx)
            stats.time_s += time.perf_counter() - start
            stats.runs += 1
            stats.modified += int(result.modified)
        return graph
