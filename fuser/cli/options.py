"""Option groups: one decorator per group of related flags, shared by the subcommands that need them.

Each group turns its flags into fields of `fuser.Options` (see `options_from`), so the report records
exactly the configuration that ran.
"""

from __future__ import annotations

from pathlib import Path

import click

from fuser.rule import TARGETS

INT64_MAX = 2**63 - 1
SEED = click.IntRange(0, INT64_MAX)  # numpy seeds are non-negative
VOCAB_SIZE = click.IntRange(1, INT64_MAX)  # random ids are drawn as int64


def model_file(path: Path) -> Path:
    """`path` when it names an existing file; else the UsageError load_model gives (before any work)."""
    from fuser.errors import UsageError

    if not path.exists():
        raise UsageError(f"no such file: {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not an ONNX file")
    return path


def shape_pins(flag: str, texts) -> dict[str, tuple[int, ...]]:
    """'NAME:DIMS' texts (one flag's values) -> {name: shape}; an input named twice is a usage error."""
    from fuser.errors import UsageError
    from fuser.validation.inputs import parse_shape

    pins: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, shape = parse_shape(text)
        if name in pins:
            raise UsageError(f"{flag}: input '{name}' is given twice")
        pins[name] = shape
    return pins


def _csv(ctx, param, value):
    items: list[str] = []
    for v in value or ():
        names = [s.strip() for s in v.split(",") if s.strip()]
        if not names:  # `--rules "$RULES"` with RULES unset must not mean "every rule"
            raise click.BadParameter("an empty list: give at least one name, or leave the flag out")
        items.extend(names)
    return tuple(items)


def rule_source_options(f):
    """Rules from outside fuser: files the user names, and installed plugins (fuser/rule_loading.py)."""
    f = click.option("--plugins/--no-plugins", default=True, show_default=True,
                     help="Load the rules of installed packages (entry points of the group fuser.rules).")(f)
    f = click.option("--rules-from", "rules_from", multiple=True, metavar="FILE.py",
                     help="Load the rules this Python file defines (its RULES list, or its module-level Rule "
                          "objects), which run after fuser's own; repeatable. The file's code runs: name only "
                          "files you trust (see docs/writing-rules.md).")(f)
    return f


def rule_options(f):
    """Which rules run and what the output may contain."""
    f = rule_source_options(f)
    f = click.option("--rules", multiple=True, callback=_csv, metavar="NAMES",
                     help="Run only these rules or families (comma-separated; see `fuser rules`).")(f)
    f = click.option("--skip-rules", multiple=True, callback=_csv, metavar="NAMES",
                     help="Do not run these rules or families.")(f)
    f = click.option("--target", type=click.Choice(TARGETS), default="generic", show_default=True,
                     help="Where the model goes: tensorrt and generic get standard ONNX ops only; onnxruntime keeps the model's opset unless --target-opset (ORT fuses LayerNorm itself).")(f)
    f = click.option("--target-opset", type=int, default=None,
                     help="Highest opset fuser may upgrade the model to (default: the model's or 21).")(f)
    f = click.option("--no-upgrade", is_flag=True,
                     help="Never raise the model's opset; rules that need a newer one are skipped.")(f)
    f = click.option("--max-iterations", type=click.IntRange(1, 100), default=8, show_default=True,
                     help="Cap on fixed-point rounds of the pass pipeline.")(f)
    return f


def output_options(f):
    """Where results go."""
    f = click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
                     help="Write the JSON report here.")(f)
    f = click.option("--external-data/--no-external-data", default=None,
                     help="Store weights in OUT.data beside the output (default: as the input did; "
                          "forced on past 2 GB).")(f)
    f = click.option("--progress/--no-progress", default=None,
                     help="Progress on stderr: a live line on a terminal (the default), and with --progress "
                          "also one line per stage when stderr is redirected (quiet by default).")(f)
    return f


def validation_options(f):
    """Numerics validation with onnxruntime (on by default) and the inputs it runs on."""
    options = [
        click.option("--validate/--no-validate", default=True, show_default=True,
                     help="Run the original and the optimized model with onnxruntime and compare every output; "
                          "rewrites that change them are found and rolled back."),
        click.option("--strict", is_flag=True,
                     help="Fail (exit 1) when validation fails or cannot run, instead of rolling rewrites back."),
        click.option("--atol", multiple=True, metavar="[OUTPUT:]VALUE",
                     help="Absolute tolerance, for all outputs or (OUTPUT:VALUE, repeatable) one "
                          "(default by dtype: fp32 1e-4, fp16 1e-2)."),
        click.option("--rtol", multiple=True, metavar="[OUTPUT:]VALUE",
                     help="Relative tolerance, like --atol; an element passes when |opt-ref| <= atol*scale + rtol*|ref| (scale: the largest |ref| of the output, at least 1)."),
        click.option("--inputs", "inputs_path", type=click.Path(exists=True), default=None,
                     help="Validate on this data: a .npz of arrays named like the inputs, or a folder of "
                          "input_N.pb tensors (ONNX test data). Default: seeded random inputs."),
        click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DIMS",
                     help="Shape of an input with dynamic dims, e.g. ids:1x128 (repeatable)."),
        click.option("--validate-shape", "validation_shapes", multiple=True, metavar="NAME:DIMS[;NAME:DIMS]",
                     help="Validate on one input set per occurrence, at these shapes (over --input-shape)."),
        click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                     help="Where onnxruntime runs both models (cuda falls back to cpu, with a note, when absent)."),
        click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random inputs."),
        click.option("--vocab-size", type=VOCAB_SIZE, default=100, show_default=True,
                     help="Random integer ids (inputs named like *ids*) are drawn from [0, VOCAB_SIZE)."),
    ]
    for option in reversed(options):  # click lists options in decoration order, innermost first
        f = option(f)
    return f


def _tolerances(flag: str, values) -> tuple[float | None, dict[str, float]]:
    """'1e-3' and 'logits:1e-2' forms -> (global value, {output: value})."""
    from fuser.errors import UsageError

    default, per = None, {}
    for text in values or ():
        name, sep, number = text.rpartition(":")
        try:
            value = float(number)
        except ValueError:
            raise UsageError(f"bad {flag} '{text}': expected VALUE or OUTPUT:VALUE like 1e-3 or logits:1e-2") from None
        if value < 0 or value != value:
            raise UsageError(f"bad {flag} '{text}': a tolerance must be a number >= 0")
        if sep:
            per[name] = value
        else:
            default = value
    return default, per


def _validation_fields(kw: dict) -> dict:
    """Options fields from the flags of `validation_options` (and remove them from kw)."""
    from fuser.validation.inputs import parse_shape_map

    atol, atol_per = _tolerances("--atol", kw.pop("atol"))
    rtol, rtol_per = _tolerances("--rtol", kw.pop("rtol"))
    tolerances: dict[str, dict[str, float]] = {}
    for key, per in (("atol", atol_per), ("rtol", rtol_per)):
        for name, value in per.items():
            tolerances.setdefault(name, {})[key] = value
    return dict(
        validate=kw.pop("validate"), strict=kw.pop("strict"), atol=atol, rtol=rtol, tolerances=tolerances,
        inputs_path=kw.pop("inputs_path"), provider=kw.pop("provider"), seed=kw.pop("seed"),
        vocab_size=kw.pop("vocab_size"),
        input_shapes=shape_pins("--input-shape", kw.pop("input_shapes")),
        validation_shapes=tuple(parse_shape_map(t) for t in kw.pop("validation_shapes")),
    )


def shape_options(f):
    """Folding and shapes: what stays dynamic, how much folding may add (pins come from --input-shape)."""
    f = click.option("--keep-dynamic", is_flag=True,
                     help="Keep every dynamic dim of the graph inputs dynamic, even those given by --input-shape "
                          "(which then only shape validation inputs).")(f)
    f = click.option("--fold-budget", "fold_budget", default=None, metavar="BYTES",
                     help="Largest number of bytes one folded tensor may add to the model, e.g. 4MiB "
                          "(default 1MiB); a bigger Expand/Tile/ConstantOfShape result stays an op.")(f)
    return f


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30}


def parse_bytes(text: str) -> int:
    """'1048576', '512K', '4MiB', '1GB' -> bytes."""
    import re

    from fuser.errors import UsageError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text or "")
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"bad size '{text}': expected BYTES like 1048576, 512K or 4MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _shape_fields(kw: dict) -> dict:
    """Options fields from the flags of `shape_options` (and remove them from kw)."""
    budget = kw.pop("fold_budget")
    fields = {"keep_dynamic": kw.pop("keep_dynamic")}
    if budget is not None:
        fields["fold_budget_bytes"] = parse_bytes(budget)
    return fields


def precision_options(f):
    """fp16 in the graph (strongly typed TensorRT takes precision from the ONNX types)."""
    f = click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
                     help="fp16: convert float32 tensors to float16 after fusion, keeping fp32 islands "
                          "(LayerNorm statistics, overflowing constants, --keep-fp32 ops).")(f)
    f = click.option("--keep-fp32", "keep_fp32", multiple=True, callback=_csv, metavar="OPS_OR_NODES",
                     help="Op types or node names that stay fp32 under --precision fp16, e.g. Softmax,ReduceMean "
                          "(comma-separated, repeatable); Casts are inserted only where fp16 enters or leaves.")(f)
    f = click.option("--fp16-io", is_flag=True,
                     help="Convert graph inputs and outputs to fp16 too (default: keep their types, Cast at the "
                          "boundary).")(f)
    return f


def _precision_fields(kw: dict) -> dict:
    """Options fields from the flags of `precision_options` (and remove them from kw)."""
    from fuser.errors import UsageError

    precision, keep, fp16_io = kw.pop("precision"), kw.pop("keep_fp32"), kw.pop("fp16_io")
    if precision != "fp16" and (keep or fp16_io):
        raise UsageError("--keep-fp32 and --fp16-io need --precision fp16")
    return {"precision": precision, "keep_fp32": keep, "fp16_io": fp16_io}


def options_from(kw: dict):
    """Build `fuser.Options` from the parsed flags of the groups above (and remove them from kw)."""
    from fuser.errors import UsageError
    from fuser.options import Options

    try:
        return Options(
            target=kw.pop("target"), rules=kw.pop("rules"), skip_rules=kw.pop("skip_rules"),
            rules_from=kw.pop("rules_from"), plugins=kw.pop("plugins"),
            target_opset=kw.pop("target_opset"), allow_upgrade=not kw.pop("no_upgrade"),
            max_iterations=kw.pop("max_iterations"), external_data=kw.pop("external_data", None),
            progress=bool(kw.pop("progress", None)),
            **(_validation_fields(kw) if "validate" in kw else {}),
            **(_shape_fields(kw) if "keep_dynamic" in kw else {}),
            **(_precision_fields(kw) if "precision" in kw else {}),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
