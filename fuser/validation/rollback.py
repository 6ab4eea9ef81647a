"""Validate an optimization and, when it changed the outputs, roll back exactly the rewrites that did it.

Every applied rewrite has a stable key (`rule@root-value`); the run context's `disabled` keys make the
engine skip those instances. A *trial* re-runs the whole optimization from the original with every rewrite disabled
except an *enabled* set, and validates the result. The search is adaptive group testing:

    search(group, kept):                      # kept: rewrites known to pass together
        if trial(kept + group) passes: keep the whole group
        elif group is one rewrite:     it is a culprit
        else: search(first half, kept), then search(second half, kept grown by the first)

It finds every culprit (several independent ones, and a rewrite that only breaks in combination with
kept ones), costs about 2·c·log2(n) trials for c culprits among n rewrites, and ends on a trial that
passed, whose model is the one returned. Rewrites that appear only when others are disabled (a
HardSigmoid where the HardSwish was rolled back) are held off during the search and tried afterwards
the same way. If the optimization fails validation with *every* rewrite disabled, a non-fusion pass
changed the numerics: that is an error (nothing is written), never a silent wrong model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from ..errors import FuserError
from .validate import (Bisection, CannotValidate, FirstAttempt, Result, RolledBack, ValidationFailed,
                       ValidationSection, Validator, describe_failure, summarize)

MAX_EMERGENT_ROUNDS = 3

Run = tuple[onnx.ModelProto, object, object]  # (model, Report, Graph), as stage._run returns


@dataclass
class Trial:
    enabled: frozenset[str]
    result: Result
    run: Run | None  # kept only for passing trials (the candidate final model)


class Bisector:
    """Runs trials (cached by enabled set) and searches for culprits among rewrite keys."""

    def __init__(self, validator: Validator, rerun: Callable[[frozenset[str]], Run], universe: set[str],
                 progress: Callable[[str], None]):
        self.validator = validator
        self.rerun = rerun
        self.universe = set(universe)
        self.progress = progress
        self.runs = 0
        self.cache: dict[frozenset[str], Trial] = {}
        self.fusions: dict[str, object] = {}  # key -> Fusion, first seen
        self.last_pass: Trial | None = None
        self.culprits: list[str] = []
        self.culprit_effect: dict[str, str] = {}

    def trial(self, enabled: frozenset[str]) -> Trial:
        if enabled in self.cache:
            return self.cache[enabled]
        while True:
            disabled = frozenset(self.universe - enabled)
            self.runs += 1
            self.progress(f"rollback trial {self.runs}: {len(enabled)} of {len(self.universe)} rewrites kept")
            try:
                run = self.rerun(disabled)
            except FuserError as exc:
                trial = Trial(enabled, Result(False, error=f"the optimization failed: {exc}"), None)
                break
            for f in run[1].fusions:
                self.fusions.setdefault(f.key, f)
            emergent = {f.key for f in run[1].fusions} - self.universe
            if not emergent:
                result = self.validator.check(run[0])
                trial = Trial(enabled, result, run if result.passed else None)
                break
            self.universe |= emergent  # held off now, tried after the search
        self.cache[enabled] = trial
        if trial.result.passed:
            if self.last_pass is not None and self.last_pass is not trial:
                self.last_pass.run = None  # only the newest passing model is kept in memory
            self.last_pass = trial
        return trial

    def search(self, group: list[str], kept: frozenset[str]) -> frozenset[str]:
        if not group:
            return kept
        trial = self.trial(kept | frozenset(group))
        if trial.result.passed:
            return kept | frozenset(group)
        if len(group) == 1:
            self.culprits.append(group[0])
            self.culprit_effect[group[0]] = describe_failure(trial.result)
            return kept
        mid = len(group) // 2
        kept = self.search(group[:mid], kept)
        return self.search(group[mid:], kept)


def validate_run(loaded, options, first: Run, rerun: Callable[[frozenset[str]], Run],
                 progress: Callable[[str], None] | None = None) -> Run:
    """Validate `first` (the optimization's result); roll back culprits when it fails; fill report.validation.

    `rerun(disabled)` re-runs the optimization from the original with those rewrite keys disabled.
    Raises ValidationFailed (a ModelError) under `strict`, or when no rollback makes the outputs match.
    """
    progress = progress or (lambda msg: None)
    start = time.perf_counter()
    model, report, _ = first
    strict = getattr(options, "strict", False)
    progress("running the original model")
    try:
        validator = Validator(loaded, options)
    except CannotValidate as exc:
        report.validation = ValidationSection(status="skipped", summary=f"skipped: {exc}", reason=str(exc),
                                              provider=getattr(options, "provider", "cpu"), outputs={}, shapes=[],
                                              rolled_back=[], time_s=time.perf_counter() - start)
        if strict:
            raise ValidationFailed(f"validation could not run (--strict): {exc}", report) from None
        report.warnings.append(f"validation skipped: {exc}")
        return first
    progress("running the optimized model")
    result = validator.check(model)
    if result.passed:
        report.validation = _section("passed", validator, result, options, start)
        return first
    if strict:
        report.validation = _section("failed", validator, result, options, start)
        raise ValidationFailed(f"validation failed (--strict): {describe_failure(result)}; nothing was written "
                               "(run without --strict to find and roll back the rewrites responsible)", report)
    keys = list(dict.fromkeys(f.key for f in report.fusions))
    if not keys:
        report.validation = _section("failed", validator, result, options, start)
        raise ValidationFailed(f"the optimized model's outputs differ from the original's and no fusion was "
                               f"applied: a non-fusion pass changed the numerics ({describe_failure(result)}); "
                               "nothing was written — " + _non_fusion_hint(options), report)
    bisector = Bisector(validator, rerun, set(keys), progress)
    for f in report.fusions:
        bisector.fusions.setdefault(f.key, f)
    bisector.cache[frozenset(keys)] = Trial(frozenset(keys), result, None)
    baseline = bisector.trial(frozenset())
    if not baseline.result.passed:
        report.validation = _section("failed", validator, baseline.result, options, start,
                                     first_attempt=result, bisection=_bisection(bisector))
        raise ValidationFailed(f"the optimized model's outputs differ from the original's even with all "
                               f"{len(keys)} fusions rolled back, so a non-fusion pass (folding, clean-up) changed "
                               f"the numerics ({describe_failure(baseline.result)}); nothing was written — "
                               + _non_fusion_hint(options), report)
    kept = bisector.search(keys, frozenset())
    tried = set(keys)
    for _ in range(MAX_EMERGENT_ROUNDS):
        emergent = [k for k in bisector.fusions if k in bisector.universe and k not in tried]
        if not emergent:
            break
        tried |= set(emergent)
        kept = bisector.search(emergent, kept)
    final = bisector.trial(kept)  # cached: the search ends on a passing trial
    if final.run is None:  # evicted (cannot happen with the search above, but never return a stale model)
        bisector.cache.pop(kept, None)
        final = bisector.trial(kept)
    final_model, final_report, final_graph = final.run
    rolled_back = [_culprit(bisector.fusions[k], bisector.culprit_effect.get(k, "")) for k in bisector.culprits]
    final_report.options = report.options  # the user's options: rerunning them redoes this rollback
    final_report.command = report.command
    final_report.validation = _section("rolled-back", validator, final.result, options, start,
                                       rolled_back=rolled_back, first_attempt=result,
                                       bisection=_bisection(bisector), total=len(bisector.fusions))
    for r in rolled_back:
        final_report.warnings.append(
            f"rewrite {r.key} ({r.rule} replacing {', '.join(r.replaced[:4])}"
            f"{', ...' if len(r.replaced) > 4 else ''}) changed the outputs and was rolled back: {r.effect}")
    return final_model, final_report, final_graph


def _non_fusion_hint(options) -> str:
    if getattr(options, "precision", "fp32") != "fp32":
        return (f"the {options.precision} conversion changes the numerics by design: loosen --atol/--rtol, "
                "keep sensitive ops in fp32 (--keep-fp32), or pass --no-validate")
    return "please report this"


def _culprit(fusion, effect: str) -> RolledBack:
    return RolledBack(fusion.rule, fusion.family, fusion.key, fusion.root, list(fusion.replaced),
                      list(fusion.created_ops), effect)


def _bisection(b: Bisector) -> Bisection:
    return Bisection(trials=b.runs, rewrites=len(b.fusions), culprits=list(b.culprits))


def _section(status: str, validator: Validator, result: Result, options, start: float, *,
             rolled_back: list[RolledBack] = (), first_attempt: Result | None = None,
             bisection: Bisection | None = None, total: int = 0) -> ValidationSection:
    return ValidationSection(
        status=status,
        summary=summarize(status, result, len(validator.feeds), rolled_back, total, validator.engine,
                          validator.guessed),
        provider=getattr(options, "provider", "cpu"), engine=validator.engine, device=validator.device,
        inputs=validator.source, shapes=validator.shapes(), outputs=result.outputs, rolled_back=list(rolled_back),
        error=result.error or None,
        first_attempt=None if first_attempt is None else FirstAttempt(
            first_attempt.error, {k: first_attempt.outputs[k] for k in first_attempt.failed_outputs()}),
        bisection=bisection, notes=list(validator.notes), time_s=time.perf_counter() - start)
