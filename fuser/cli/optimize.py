"""`fuser optimize IN.onnx [-o OUT.onnx]`: the stage (fuser/stage.py) with its flags, and a short account of what
it did."""

from __future__ import annotations

from pathlib import Path

import click

from fuser import stage
from fuser.report.formats import printable
from fuser.report.terminal import build_summary, optimize_summary

from .build import trt_build_options
from .options import (model_file, options_from, output_options, precision_options, rule_options, shape_options,
                      validation_options)
from .progress import Display

FLAGS = stage.Flags(output="-o", report="--report", engine="--engine")


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
    wanted = kw["progress"]  # --progress / --no-progress / neither (None)
    options = options_from(kw)
    model = model_file(model)  # the default output is named after it
    output = output or default_output(model)
    engine = (engine or output.parent / (output.stem + ".plan")) if build_engine_too else None
    with Display(wanted) as progress:
        result = stage.run(model, options, output=output, report_path=report_path,
                           build=build_options if build_engine_too else None, engine=engine, flags=FLAGS,
                           progress=progress)
    click.echo(printable(optimize_summary(result.report, model, output)))
    if result.report.build is not None:
        click.echo(printable(build_summary(result.report.build)))
