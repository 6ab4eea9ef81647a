"""Raising a model's default-domain opset when a rewrite needs it — validated, and never past onnxruntime.

A rule declares the opset its emitted ops need (LayerNormalization 17, HardSwish 14). When the model
is older and upgrades are allowed, the whole model is converted with `onnx.version_converter` to
exactly that opset and checked; when conversion fails, the rule is skipped with the reason recorded.
"""

from __future__ import annotations

import onnx
import onnx.version_converter

from .graph import Graph
from .model_io import LoadedModel, MAX_OPSET


def upgrade(graph: Graph, opset: int, ctx) -> Graph | None:
    """A new Graph at `opset`, or None (and a note) when the upgrade is not possible."""
    have = graph.opset()
    report = ctx.report
    if opset in ctx.upgrades_failed or opset > MAX_OPSET:
        ctx.allow_upgrade = False
        return None
    try:
        converted = onnx.version_converter.convert_version(graph.to_model(), opset)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises many types; any failure means: do not upgrade
        ctx.upgrades_failed.add(opset)
        ctx.allow_upgrade = False
        report.note(f"could not upgrade opset {have} -> {opset} ({str(exc).splitlines()[0][:200]}); "
                    "rules that need it were skipped")
        return None
    report.note(f"upgraded opset {have} -> {opset} (needed by a fusion)")
    return Graph(LoadedModel(converted, graph.loaded.path, graph.loaded.base_dir))
