"""The whole stage in one library call: load -> passes -> validate (rollback) -> save -> build -> report.

    result = fuser.stage.run("model.onnx", Options(target="tensorrt"), output="model.opt.onnx",
                             build=BuildOptions(), engine="model.plan", report_path="report.json")
    result.model, result.report, result.build      # onnx.ModelProto, Report, BuildResult (None without a build)

    model, report = fuser.optimize("model.onnx")                 # in memory
    report = fuser.optimize_file("in.onnx", "out.onnx")         # the model written atomically

`fuser optimize` and `fuser audit` are this call plus their flags and printing, and `fuser.optimize` /
`fuser.optimize_file` are thin wrappers: a library user gets what the command line does, the same report, the same
files, the same errors. In order:

1. the rules are loaded (fuser's, installed plugins', the files of `rules_from`: fuser/rule_loading.py) and unknown
   rule names refused, before the model is read; the model is read (external data stays on disk);
2. every path the run writes (the model and its data file, the engine, the timing cache and its key, the report,
   and the caller's own files, given as a `plan`) is checked by one OutputPlan before any work, and a single-file
   output too big for protobuf's 2 GB is refused;
3. the passes run to a fixed point, onnx.checker checks the result, and validation compares it with the original,
   rolling back the rewrites that changed the outputs (fuser/validation/rollback.py);
4. the model is written atomically, the engine built from it, the report written last.

A rule loaded from outside fuser that raises in its check or rewrite stops the run (`UserRuleError`, exit 1, naming
the rule and where it came from); nothing is written.

When validation fails (`ValidationFailed`, a model error) nothing is written but the report, which says why; the
exception carries it too.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from . import assembly
from .errors import ModelError, UsageError, first_line
from .graph import Graph
from .model_io import (PROTOBUF_LIMIT, LoadedModel, from_proto, iter_tensors, load_model, save_model, stored_size,
                       uses_external_data)
from .options import Options
from .outputs import OutputPlan, model_companions, write_atomic
from .pass_manager import PassManager, RunContext
from .progress import Progress, as_progress
from .rule import Rule, RuleFailed
from .rule_loading import RuleLibrary
from .report import ModelSummary, Report
from .report.formats import render
from .trt import BuildOptions, BuildResult, build_engine, plan_build_outputs
from .validation.validate import ValidationFailed

ModelLike = str | os.PathLike | onnx.ModelProto | LoadedModel


@dataclass(frozen=True)
class Flags:
    """How the caller names the stage's outputs in its errors (the command line: its flags)."""

    output: str = "output"
    report: str = "report"
    engine: str = "engine"


@dataclass
class StageResult:
    model: onnx.ModelProto
    report: Report
    build: BuildResult | None = None  # the engine and the builder's log, when one was built


def run(model: ModelLike, options: Options | None = None, *, output: str | os.PathLike | None = None,
        report_path: str | os.PathLike | None = None, build: BuildOptions | None = None,
        engine: str | os.PathLike | None = None, plan: OutputPlan | None = None, flags: Flags = Flags(),
        passes=None, progress=None) -> StageResult:
    """Optimize `model` (a path, ModelProto or LoadedModel) and, as asked, write it to `output` (with its external
    data beside it when needed), build an engine with `build` (written to `engine` if given) and write the JSON
    report to `report_path`. `plan`: the caller's own reads and writes, checked with the stage's before any work.
    `passes` replaces the default pipeline (tests and custom pipelines). `progress` (a fuser.progress.Progress, or a
    callable of one str) is told each stage as it starts and each step within it."""
    options = options or Options()
    progress = as_progress(progress)
    library = rules = None
    if passes is None:  # rules that do not load and unknown rule names: usage errors before the model is read
        library = assembly.rule_library(options.rules_from, options.plugins)
        rules = assembly.select_rules(options.rules, options.skip_rules, options.target, library.rules)
        passes = assembly.default_passes(options, rules)
    loaded = load(model)
    output = Path(output) if output is not None else None
    plan = plan or OutputPlan()
    plan.read_model(loaded)
    plan.read("the --inputs data", options.inputs_path)
    plan.write(flags.output, output, *model_companions(output, options.external_data))
    plan.write(flags.report, report_path)
    if build is not None:
        plan_build_outputs(plan, build, flags.engine, engine)
    plan.check()
    if output is not None and options.external_data is False and stored_size(loaded) >= PROTOBUF_LIMIT:
        raise UsageError(f"{loaded.path or 'the model'} holds {stored_size(loaded) / 2**30:.2f} GiB with its "
                         "weights; a single ONNX file cannot exceed protobuf's 2 GB limit: drop --no-external-data")
    try:
        optimized, report, _ = _run_validated(loaded, options, passes, progress)
    except ValidationFailed as exc:  # nothing was written; the report still says why
        if exc.report is not None and library is not None:
            _record_rule_sources(exc.report, library, rules)
        if report_path is not None and exc.report is not None:
            write_atomic(report_path, render(exc.report, "json").encode())
        raise
    except RuleFailed as exc:  # a user's rule names itself (exit 1); one of fuser's is a bug in fuser
        blamed = library.blame(exc) if library is not None else None
        if blamed is None:
            raise
        raise blamed from exc
    if library is not None:
        _record_rule_sources(report, library, rules)
    if output is not None:
        progress.stage(f"writing {output}")
        written = save_model(loaded, optimized, output, external_data=options.external_data)
        report.output = ModelSummary.of(optimized, written[0])
        report.output_files = [str(p) for p in written]
    built = None
    if build is not None:
        built = build_engine(output if output is not None else optimized, build, engine, progress=progress)
        report.build = built.section()
    if report_path is not None:
        write_atomic(report_path, render(report, "json").encode())
    return StageResult(optimized, report, built)


def optimize(model: ModelLike, options: Options | None = None, passes=None, *, progress=None,
             **option_values) -> tuple[onnx.ModelProto, Report]:
    """Optimize a model (path, ModelProto or LoadedModel) in memory; returns the new model and the report.

    `options` or keyword arguments (`target="tensorrt"`, `rules=("layernorm",)`...) choose what runs;
    `passes` replaces the default pipeline (tests and custom pipelines).
    """
    result = run(model, options or Options(**option_values), passes=passes, progress=progress)
    return result.model, result.report


def optimize_file(src: str | os.PathLike | LoadedModel, dst: str | os.PathLike, options: Options | None = None,
                  passes=None, *, progress=None) -> Report:
    """Optimize the file `src` (or a model loaded from one) into `dst` (external data written beside `dst`
    when needed). A `dst` that would replace one of the input's files is refused before any work."""
    return run(src, options, output=dst, passes=passes, progress=progress).report


def load(model: ModelLike) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, onnx.ModelProto):
        return from_proto(model)
    return load_model(model)


def _record_rule_sources(report: Report, library: RuleLibrary, rules: list[Rule]) -> None:
    """Where each rule the run chose came from, and a note naming the rules from outside fuser."""
    report.rule_sources = {r.name: library.sources[r.name] for r in rules}
    outside: dict[str, list[str]] = {}
    for r in rules:
        if library.sources[r.name].origin != "built-in":
            outside.setdefault(library.sources[r.name].describe(), []).append(r.name)
    for where, names in outside.items():
        report.note(f"rules from {where}: {', '.join(names)}")


def _run_validated(loaded: LoadedModel, options: Options, passes,
                   progress: Progress) -> tuple[onnx.ModelProto, Report, Graph]:
    """`_run`, then numerics validation (on by default): rewrites that change the outputs are rolled back."""
    start = time.perf_counter()
    summary = ModelSummary.of(loaded.model, loaded.path)  # hashed once, not once per rollback trial
    progress.stage(f"optimizing {loaded.path or 'the model'} ({len(loaded.model.graph.node)} nodes)")
    first = _run(loaded, options, passes, progress, summary)
    if not options.validate:
        return first
    from .validation.rollback import validate_run

    def rerun(disabled: frozenset[str]):  # a rollback trial: its passes are not steps of their own
        return _run(loaded, replace(options, validate=False), passes, Progress(), summary, disabled)

    progress.stage("validating: both models on the same inputs")
    optimized, report, graph = validate_run(loaded, options, first, rerun, progress)
    report.time_s = time.perf_counter() - start
    return optimized, report, graph


def _run(loaded: LoadedModel, options: Options, passes, progress: Progress | None,
         input_summary: ModelSummary | None = None, disabled: frozenset[str] = frozenset()
         ) -> tuple[onnx.ModelProto, Report, Graph]:
    """One optimization of `loaded`; the rewrites whose keys are in `disabled` (rolled back) are not made."""
    start = time.perf_counter()
    report = Report(options=options)
    report.input = input_summary or ModelSummary.of(loaded.model, loaded.path)
    graph = Graph(loaded)
    ctx = RunContext(options=options, report=report, max_opset=options.max_opset_for(graph.opset()),
                     allow_upgrade=options.allow_upgrade, disabled=disabled, progress=as_progress(progress))
    manager = PassManager(passes if passes is not None else assembly.default_passes(options), options.max_iterations)
    graph = manager.run(graph, ctx)
    optimized = graph.to_model()
    problem = _checker_problem(optimized)
    if problem:
        input_problem = _checker_problem(loaded.model)
        if input_problem is None:
            raise ModelError(f"fuser produced a model that fails onnx.checker ({problem}); the input was "
                             "left untouched and nothing was written — please report this")
        report.warnings.append(f"the input already fails onnx.checker: {input_problem}")
    report.output = ModelSummary.of(optimized)
    report.time_s = time.perf_counter() - start
    return optimized, report, graph


def _checker_problem(model: onnx.ModelProto) -> str | None:
    """onnx.checker's first complaint, or None.

    Large tensors are checked as empty placeholders (type kept, no bytes): without `full_check` the checker
    never looks at their values, and serializing them cost 0.6 s on BERT-base; external ones would
    otherwise be looked for relative to the current folder.
    """
    placeholder = onnx.ModelProto()
    placeholder.CopyFrom(model)
    for t in iter_tensors(placeholder):
        if uses_external_data(t) or len(t.raw_data) > 4096:
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
            t.ClearField("raw_data")
            del t.dims[:]
            t.dims.append(0)
    try:
        onnx.checker.check_model(placeholder)
    except onnx.checker.ValidationError as exc:
        return first_line(exc)
    except Exception as exc:  # the checker can also fail on sizes; treat as "could not check"
        return f"{type(exc).__name__}: {exc}"[:300]
    return None
