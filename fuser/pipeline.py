"""`optimize`: load, fuse and clean to a fixed point, check, and report — fuser's main job as a library call.

    model, report = fuser.optimize("model.onnx")                 # -> (onnx.ModelProto, Report)
    report = fuser.optimize_file("in.onnx", "out.onnx")         # also writes the result atomically
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import onnx

from . import assembly
from .errors import ModelError, UsageError
from .graph import Graph
from .model_io import (PROTOBUF_LIMIT, LoadedModel, check_model_output, from_proto, iter_tensors, load_model,
                       save_model, stored_size, uses_external_data)
from .options import Options
from .pass_manager import PassManager, RunContext
from .report import ModelSummary, Report

ModelLike = str | os.PathLike | onnx.ModelProto | LoadedModel


def load(model: ModelLike) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, onnx.ModelProto):
        return from_proto(model)
    return load_model(model)


def optimize(model: ModelLike, options: Options | None = None, passes=None, *, progress=None,
             **option_values) -> tuple[onnx.ModelProto, Report]:
    """Optimize a model (path, ModelProto or LoadedModel); returns the new model and the report.

    `options` or keyword arguments (`target="tensorrt"`, `rules=("layernorm",)`...) choose what runs;
    `passes` replaces the default pipeline (tests and custom pipelines).
    """
    optimized, report, _ = _run_validated(load(model), options or Options(**option_values), passes, progress)
    return optimized, report


def optimize_file(src: str | os.PathLike | LoadedModel, dst: str | os.PathLike, options: Options | None = None,
                  passes=None, *, progress=None) -> Report:
    """Optimize the file `src` (or a model loaded from one) into `dst` (external data written beside `dst`
    when needed). A `dst` that would replace one of the input's files is refused before any work."""
    options = options or Options()
    loaded = src if isinstance(src, LoadedModel) else load_model(src)
    check_model_output(loaded, Path(dst), options.external_data)
    if options.external_data is False and stored_size(loaded) >= PROTOBUF_LIMIT:  # refuse before any work
        raise UsageError(f"{loaded.path or 'the model'} holds {stored_size(loaded) / 2**30:.2f} GiB with its "
                         "weights; a single ONNX file cannot exceed protobuf's 2 GB limit: drop --no-external-data")
    optimized, report, _ = _run_validated(loaded, options, passes, progress)
    written = save_model(loaded, optimized, dst, external_data=options.external_data)
    report.output = ModelSummary.of(optimized, written[0])
    report.extra["output_files"] = [str(p) for p in written]
    return report


def _run_validated(loaded: LoadedModel, options: Options, passes, progress) -> tuple[onnx.ModelProto, Report, Graph]:
    """`_run`, then numerics validation (on by default): rewrites that change the outputs are rolled back."""
    start = time.perf_counter()
    summary = ModelSummary.of(loaded.model, loaded.path)  # hashed once, not once per rollback trial
    first = _run(loaded, options, passes, progress, summary)
    if not options.validate:
        return first
    from dataclasses import replace

    from .rollback import validate_run

    def rerun(disabled: frozenset[str]):
        return _run(loaded, replace(options, validate=False), passes, progress, summary, disabled)

    optimized, report, graph = validate_run(loaded, options, first, rerun, progress)
    report.time_s = time.perf_counter() - start
    return optimized, report, graph


def _run(loaded: LoadedModel, options: Options, passes, progress, input_summary: ModelSummary | None = None,
         disabled: frozenset[str] = frozenset()) -> tuple[onnx.ModelProto, Report, Graph]:
    """One optimization of `loaded`; the rewrites whose keys are in `disabled` (rolled back) are not made."""
    start = time.perf_counter()
    report = Report(options=options.to_dict())
    report.input = input_summary or ModelSummary.of(loaded.model, loaded.path)
    graph = Graph(loaded)
    ctx = RunContext(options=options, report=report, max_opset=options.max_opset_for(graph.opset()),
                     allow_upgrade=options.allow_upgrade, disabled=disabled, progress=progress or (lambda msg: None))
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
        return str(exc).strip().splitlines()[0][:300]
    except Exception as exc:  # the checker can also fail on sizes; treat as "could not check"
        return f"{type(exc).__name__}: {exc}"[:300]
    return None
