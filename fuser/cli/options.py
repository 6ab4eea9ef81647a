"""Option groups: one decorator per group of related flags, shared by the subcommands that need them.

Each group turns its flags into fields of `fuser.Options` (see `options_from`), so the report records
exactly the configuration that ran.
"""

from __future__ import annotations

import click

from fuser.rule import TARGETS


def _csv(ctx, param, value):
    items: list[str] = []
    for v in value or ():
        items.extend(s.strip() for s in v.split(",") if s.strip())
    return tuple(items)


def rule_options(f):
    """Which rules run and what the output may contain."""
    f = click.option("--rules", multiple=True, callback=_csv, metavar="NAMES",
                     help="Run only these rules or families (comma-separated; see `fuser rules`).")(f)
    f = click.option("--skip-rules", multiple=True, callback=_csv, metavar="NAMES",
                     help="Do not run these rules or families.")(f)
    f = click.option("--target", type=click.Choice(TARGETS), default="generic", show_default=True,
                     help="Where the model goes: tensorrt and generic get standard ONNX ops only.")(f)
    f = click.option("--target-opset", type=int, default=None,
                     help="Highest opset fuser may upgrade the model to (default: the model's or 21).")(f)
    f = click.option("--no-upgrade", is_flag=True,
                     help="Never raise the model's opset; rules that need a newer one are skipped.")(f)
    f = click.option("--max-iterations", type=click.IntRange(1, 100), default=8, show_default=True,
                     help="Cap on fixed-point rounds of the pass pipeline.")(f)
    return f


def output_options(f):
    """Where results go."""
    f = click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
                     help="Write the JSON report here.")(f)
    f = click.option("--external-data/--no-external-data", default=None,
                     help="Store weights in OUT.data beside the output (default: as the input did; "
                          "forced on past 2 GB).")(f)
    f = click.option("--progress/--no-progress", default=None,
                     help="Print progress to stderr (default: on for models over 5000 nodes).")(f)
    return f


def options_from(kw: dict):
    """Build `fuser.Options` from the parsed flags of the groups above (and remove them from kw)."""
    from fuser.errors import UsageError
    from fuser.options import Options

    try:
        return Options(
            target=kw.pop("target"), rules=kw.pop("rules"), skip_rules=kw.pop("skip_rules"),
            target_opset=kw.pop("target_opset"), allow_upgrade=not kw.pop("no_upgrade"),
            max_iterations=kw.pop("max_iterations"), external_data=kw.pop("external_data"),
            progress=bool(kw.pop("progress")),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
