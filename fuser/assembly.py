"""Which passes and rules run for a target: the one place where fuser's core meets its libraries.

The core (graph, facts, pattern, matcher, rule engine, pass manager, opset) knows nothing of the passes
in `passes/` or the rules in `rules/`; they import the core, never the other way round. This module,
and only it, imports both and puts them together; the pipeline, the CLI and the audit ask it
(tests/test_imports.py proves both halves by reading the imports).

    default_passes(options)   fuser's pipeline, in the order that matters
    rule_library(rules_from, plugins)   fuser's rules and the user's (files, installed plugins), with their sources
    select_rules(names, skip, target, pool)   the rules a run uses
    all_rules()               fuser's own rules, in the order they run
    report_sections()         the report section types the passes write (for the schema and saved reports)
"""

from __future__ import annotations

from . import passes, rules
from .errors import UsageError
from .rule import Rule
from .rule_loading import RuleLibrary, library


def all_rules() -> list[Rule]:
    """fuser's own rules, in the order they run (see rules/__init__.py for why that order)."""
    return list(rules.ALL_RULES)


def rule_library(rules_from=(), plugins: bool = True) -> RuleLibrary:
    """fuser's rules, then the installed plugins' (unless `plugins` is False), then those of the files
    `rules_from`: loading runs their code, so only what the user named or installed (fuser/rule_loading.py)."""
    return library(all_rules(), rules_from, plugins)


def select_rules(names=(), skip=(), target: str = "generic", pool: list[Rule] | None = None) -> list[Rule]:
    """Rules to run: `names` (rule names or families; empty = all) minus `skip`, valid for `target`."""
    pool = all_rules() if pool is None else pool
    known = {r.name for r in pool} | {r.family for r in pool}
    unknown = [n for n in (*names, *skip) if n not in known]
    if unknown:
        raise UsageError(f"unknown rule or family: {', '.join(unknown)} (see `fuser rules`)")
    chosen = [r for r in pool if not names or r.name in names or r.family in names]
    return [r for r in chosen if r.name not in skip and r.family not in skip and target in r.targets]


def default_passes(options, fusion_rules: list[Rule] | None = None) -> list:
    """fuser's pipeline. Fusion rules first: an `x * 1` removed before the LayerNorm rule runs would hide
    the LayerNorm's scale. Then folding of constants and static shape chains, the ND-shape-tensor
    rewrites, and clean-up (CSE, no-ops, duplicate initializers, dead code); later rounds of the fixed
    point run fusion again on the cleaned graph. `--precision fp16` adds PrecisionPass, a `final` pass:
    the pass manager runs it once after the fixed point, so fusion never sees (or folds in) fp16.
    `fusion_rules`: what the fusion pass runs (default: fuser's own rules, chosen by the options)."""
    if fusion_rules is None:
        fusion_rules = select_rules(options.rules, options.skip_rules, options.target)
    return [
        passes.FusionPass(fusion_rules),
        passes.ConstantFolding(),
        passes.ShapeFolding(),
        passes.ShapeTensorRewrite(),
        passes.CommonSubexpressionElimination(),
        passes.NoOpElimination(),  # after fusion, never before: see passes/noop.py
        passes.InitializerDedup(),
        passes.DeadCodeElimination(),
        *([passes.PrecisionPass()] if getattr(options, "precision", "fp32") == "fp16" else []),  # final: once, last
    ]


def report_sections() -> tuple[type, ...]:
    """The typed report sections the passes own (folding, cleanup, fp16): what the schema and a saved
    report's reader must know besides the core's own sections."""
    return passes.REPORT_SECTIONS
