"""`fuser optimize IN.onnx [-o OUT.onnx]`: the main job, with a short account of what it did."""

from __future__ import annotations

import os
from pathlib import Path

import click

from fuser.assembly import select_rules
from fuser.model_io import load_model
from fuser.outputs import OutputPlan, model_companions, write_atomic
from fuser.pipeline import optimize_file
from fuser.report_formats import printable, render
from fuser.validate import ValidationFailed

from fuser.trt import build_engine, plan_build_outputs

from .build import summary as build_summary
from .build import trt_build_options
from .options import (model_file, options_from, output_options, precision_options, rule_options, shape_options,
                      validation_options)

PROGRESS_NODES = 5000


def default_output(src: Path) -> Path:
    return src.with_name(src.stem + ".opt.onnx")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output file (default: MODEL.opt.onnx beside the input).")
@rule_options
@validation_options
@shape_options
@precision_options
@output_options
@click.option("--build", "build_engine_too", is_flag=True,
              help="Then build a TensorRT(-RTX) engine from the result (optimize -> validate -> build).")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="Engine file for --build (default: OUTPUT with suffix .plan).")
@trt_build_options
def optimize(model: Path, output: Path | None, report_path: Path | None, build_engine_too: bool,
             engine: Path | None, build_options, **kw):
    """Fuse and clean MODEL, check it, and write the result atomically (and build an engine with --build)."""
    progress_flag = kw["progress"]
    options = options_from(kw)
    select_rules(options.rules, options.skip_rules, options.target)  # unknown names fail before loading
    loaded = load_model(model_file(model))
    output = output or default_output(model)
    engine = (engine or output.parent / (output.stem + ".plan")) if build_engine_too else None
    plan = OutputPlan()  # every file this run writes, checked before any work
    plan.read_model(loaded)
    plan.read("the --inputs data", options.inputs_path)
    plan.write("-o", output, *model_companions(output, options.external_data))
    plan.write("--report", report_path)
    if build_engine_too:
        plan_build_outputs(plan, build_options, "--engine", engine)
    plan.check()
    if progress_flag is None:
        options.progress = _node_count_hint(model) > PROGRESS_NODES
    try:
        report = optimize_file(loaded, output, options, progress=_echo_progress if options.progress else None)
    except ValidationFailed as exc:  # nothing was written; the report still says why
        if report_path and exc.report is not None:
            write_atomic(report_path, render(exc.report.to_dict(), "json").encode())
        raise
    built = None
    if build_engine_too:
        built = build_engine(output, build_options, engine)
        report.build = built.to_dict()
    if report_path:
        write_atomic(report_path, render(report.to_dict(), "json").encode())
    click.echo(printable(summary(report, model, output)))
    if built is not None:
        click.echo(printable(build_summary(built)))


def _node_count_hint(path: Path) -> int:
    """A cheap guess of node count from file size (exact counts need parsing, done later anyway)."""
    try:
        return os.path.getsize(path) // 200
    except OSError:
        return 0


def _echo_progress(msg: str) -> None:
    click.echo(f"fuser: {msg}", err=True)


def summary(report, src, dst) -> str:
    """What the run did, in a few lines: node counts, fusions per family, near misses, notes."""
    i, o = report.input, report.output
    lines = [f"fuser {src} -> {dst}",
             f"  nodes {i.nodes} -> {o.nodes}   opset {i.opset} -> {o.opset}   {report.time_s:.2f} s"]
    counts = report.fusion_counts()
    lines.append("  fused: " + (", ".join(f"{fam} {n}" for fam, n in counts.items()) if counts else "nothing"))
    shown = report.to_dict()["near_misses"]
    for miss in shown[:5]:
        lines.append(f"  not fused: {miss['rule']} at '{miss['at']}': {miss['reason']}")
    if len(shown) > 5:
        lines.append(f"  ... and {len(shown) - 5} more near misses (see --report)")
    folding = report.extra.get("folding")
    if folding and (folding["folded"] or folding["shape_values_folded"] or folding["skipped"]
                    or folding["not_folded"]):
        lines.append(f"  folded: {folding['folded']} nodes ({folding['bytes_added']:+d} bytes), "
                     f"{folding['shape_values_folded']} shape values; {len(folding['skipped'])} folds skipped, "
                     f"{len(folding['not_folded'])} Shape/Size nodes stay dynamic")
        for entry in (folding["skipped"] + folding["not_folded"])[:3]:
            lines.append(f"  not folded: '{entry['node']}': {entry['reason']}")
    precision = report.extra.get("precision")
    if precision:
        lines.append(f"  fp16: {precision['converted_initializers']} initializers converted, "
                     f"{precision['casts_inserted']} casts, {len(precision['kept_fp32'])} nodes kept fp32, "
                     f"{len(precision['overflow_kept'])} overflowing constants kept fp32")
    lines += [f"  note: {n}" for n in report.notes]
    lines += [f"  warning: {w}" for w in report.warnings]
    if report.validation:
        lines.append(f"  validation: {report.validation.get('summary', report.validation.get('status'))}")
    return "\n".join(lines)
