"""`fuser bench MODEL.onnx --provider cuda|cpu`: latency and throughput with onnxruntime (see fuser.bench).

    fuser bench model.onnx --provider cuda --ort-opt off,all --batch 1,8 --cuda-graph --json bench.json

`--ort-opt` and `--batch` take comma-separated lists; every combination runs, in order, and becomes one
table row and one entry of the JSON's `results`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import SEED, VOCAB_SIZE, model_file, shape_pins


def _list(cast, choices=None):
    def parse(ctx, param, value):
        items = []
        for part in value or ():
            if not part.strip(", "):
                raise click.BadParameter("an empty list: give at least one value, or leave the flag out")
            for item in part.split(","):
                item = item.strip()
                if not item:
                    continue
                if choices and item not in choices:
                    raise click.BadParameter(f"{item!r} is not one of {', '.join(choices)}")
                try:
                    items.append(cast(item))
                except ValueError:
                    raise click.BadParameter(f"{item!r} is not a valid value") from None
        return tuple(dict.fromkeys(items))
    return parse


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--provider", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="onnxruntime execution provider.")
@click.option("--ort-opt", "ort_opt", multiple=True, default=("off",), show_default=True, metavar="LEVELS",
              callback=_list(str, ("off", "basic", "extended", "all")),
              help="onnxruntime's own graph optimizations: off, basic, extended, all (comma list to sweep).")
@click.option("--cuda-graph/--no-cuda-graph", default=False, show_default=True,
              help="Capture the run as a CUDA graph and replay it (enable_cuda_graph; static shapes).")
@click.option("--pipelined", is_flag=True,
              help="Also run the two-stream pipeline: pinned host buffers, uploads and downloads overlapped "
                   "with compute (cuda only).")
@click.option("--pipeline-copies", type=click.Choice(["cudart", "onnxruntime"]), default="cudart", show_default=True,
              help="Who makes the pipeline's streams, pinned buffers and async copies: libcudart via ctypes, or "
                   "onnxruntime's own API (OrtEpDevice.create_sync_stream, HOST_ACCESSIBLE memory, copy_tensors).")
@click.option("--batch", multiple=True, default=("1",), show_default=True, metavar="N[,N...]",
              callback=_list(int), help="Batch size: axis 0 of every input whose axis 0 is dynamic (comma list).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DIMS",
              help="Shape of an input with dynamic dims, e.g. input_ids:1x128 (repeatable); axis 0 follows --batch.")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True, help="Untimed runs first.")
@click.option("--iters", type=click.IntRange(min=1), default=200, show_default=True, help="Timed runs.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--vocab-size", type=VOCAB_SIZE, default=100, show_default=True,
              help="Random integer ids (inputs named like *ids*) are drawn from [0, VOCAB_SIZE).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write every result (all statistics, placement, settings) here as JSON.")
def bench(model: Path, provider: str, ort_opt: tuple, cuda_graph: bool, pipelined: bool, pipeline_copies: str,
          batch: tuple,
          input_shapes: tuple, warmup: int, iters: int, seed: int, vocab_size: int, json_path: Path | None):
    """Time MODEL with onnxruntime: median / p90 latency and throughput, device-resident IO binding."""
    from fuser.bench import benchmark, format_table, pipeline_summary
    from fuser.model_io import load_model
    from fuser.outputs import OutputPlan, write_atomic

    model_file(model)
    plan = OutputPlan()  # the JSON is checked before any work: never the model, its data, a device
    plan.read_model(load_model(model, check_opset=False))
    plan.write("--json", json_path)
    plan.check()
    shapes = shape_pins("--input-shape", input_shapes)
    results = []
    for level in ort_opt or ("off",):
        for n in batch or (1,):
            results.append(benchmark(model, provider=provider, ort_opt=level, cuda_graph=cuda_graph,
                                     pipelined=pipelined, batch=n, warmup=warmup, iters=iters,
                                     input_shapes=shapes, seed=seed, vocab_size=vocab_size,
                                     pipeline_copies=pipeline_copies))
    click.echo(format_table(results))
    for r in results:
        p = r.get("pipeline")
        if p:
            click.echo(pipeline_summary(r))
    if json_path:
        doc = {"fuser_bench": 1, "results": results}
        write_atomic(json_path, json.dumps(doc, indent=2).encode())
