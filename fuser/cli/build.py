"""`fuser build MODEL.onnx -o MODEL.plan`: build a TensorRT or TensorRT-RTX engine and summarize the build.

The TensorRT options are one group (`trt_build_options`) so that any command that builds (`fuser optimize --build`)
takes the same flags and receives them as one BuildOptions.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from fuser.model_io import load_model
from fuser.outputs import OutputPlan, write_atomic
from fuser.report import to_json
from fuser.report.formats import printable
from fuser.report.terminal import build_summary
from fuser.trt import BuildOptions, build_engine, parse_profile, plan_build_outputs

from .options import model_file
from .progress import Display

_FILE = click.Path(dir_okay=False, path_type=Path)
_OUT = click.Path(path_type=Path)  # outputs are checked by the run's OutputPlan, one rule for every flag

_OPTIONS = (
    click.option("--profile", "profiles", multiple=True, metavar="NAME:MIN,OPT,MAX[;NAME:...]",
                 help="One optimization profile; repeat for more. Shapes like 1x3x224x224; one shape means "
                      "min = opt = max; ';' separates the inputs of one profile."),
    click.option("--timing-cache", type=_OUT, help="Timing cache: created when missing, reused when it was made "
                                                    "by the same backend version for the same GPU/targets."),
    click.option("--opt-level", type=click.IntRange(0, 5), help="Builder optimization level (default 3)."),
    click.option("--refit", is_flag=True, help="Build a refittable engine."),
    click.option("--version-compatible", is_flag=True, help="Build a version-compatible engine (TensorRT only)."),
    click.option("--hardware-compat", type=click.Choice(["none", "ampere_plus", "same_compute_capability"]),
                 help="Hardware-compatibility level (TensorRT only)."),
    click.option("--tactic-sources", metavar="A,B | +A,-B",
                 help="Exactly these tactic sources, or changes (+/-) to the default set."),
    click.option("--max-aux-streams", type=click.IntRange(0, 2**31 - 1), help="Most auxiliary streams per engine."),
    click.option("--workspace", "workspace_mib", type=click.IntRange(1, (2**63 - 1) >> 20), metavar="MiB",
                 help="Workspace memory-pool limit."),
    click.option("--compute-capability", "compute_capabilities", multiple=True, metavar="X.Y",
                 help="TensorRT-RTX target GPU (7.5, 8.0, 8.6, 8.9, 12.0, 12.1 or current); repeat for several. "
                      "Default: portable to 8.0 and later."),
    click.option("--fp16", is_flag=True, help="Allow fp16 kernels (TensorRT; RTX takes types from the graph)."),
    click.option("--bf16", is_flag=True, help="Allow bf16 kernels (TensorRT; RTX takes types from the graph)."),
    click.option("--tf32/--no-tf32", default=None, help="Allow or forbid tf32 for fp32 math (default: the backend's)."),
)


_OPTION_FIELDS = ("timing_cache", "opt_level", "refit", "version_compatible", "hardware_compat", "tactic_sources",
                  "max_aux_streams", "workspace_mib", "compute_capabilities", "fp16", "bf16", "tf32")


def trt_build_options(command):
    """Add the TensorRT build options to a click command, which receives them as `build_options: BuildOptions`."""

    @functools.wraps(command)
    def with_build_options(*args, profiles, **kwargs):
        fields = {name: kwargs.pop(name) for name in _OPTION_FIELDS}
        fields["compute_capabilities"] = tuple(fields["compute_capabilities"])
        options = BuildOptions(profiles=tuple(parse_profile(text) for text in profiles), **fields)
        return command(*args, build_options=options, **kwargs)

    for option in reversed(_OPTIONS):
        with_build_options = option(with_build_options)
    return with_build_options


@click.command()
@click.argument("model", type=_FILE)
@click.option("-o", "--output", type=_OUT, help="Engine file to write (default: MODEL with suffix .plan).")
@trt_build_options
@click.option("--report", type=_OUT, help="Write the build report (options, layers, log, warnings) as JSON.")
def build(model: Path, output: Path | None, build_options: BuildOptions, report: Path | None) -> None:
    """Build a TensorRT engine from MODEL (TensorRT when installed, else TensorRT-RTX)."""
    output = output or model_file(model).with_suffix(".plan")
    plan = OutputPlan()  # every file this run writes, checked before any work
    plan.read_model(load_model(model, check_opset=False))
    plan_build_outputs(plan, build_options, "-o", output)
    plan.write("--report", report)
    plan.check()
    with Display() as progress:
        section = build_engine(model, build_options, output, progress=progress).section()
    if report:
        write_atomic(report, (json.dumps(to_json(section), indent=1) + "\n").encode())
    click.echo(printable(build_summary(section)))
