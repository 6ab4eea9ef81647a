"""Regenerate tests/golden/light_histograms.json: what fuser makes of each of onnx's bundled light models.

    python tests/golden/regenerate.py           # rewrite the file; review the diff like code

For every `onnx/backend/test/data/light/light_*.onnx` shipped with the installed onnx package, the file
records the optimized model's default-domain opset, its op histogram (op type -> count) and the fusions
applied per family. tests/test_light_corpus.py compares a fresh run with it, so any change in what fires
on these real networks shows up in review; run this script only when that change is intended.
"""

from __future__ import annotations

import collections
import json
import sys
from dataclasses import fields
from pathlib import Path

import onnx

import fuser
from fuser.options import Options

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
GOLDEN = Path(__file__).with_name("light_histograms.json")
# Numerics validation is off: the corpus test compares with the stored expected outputs itself, and a
# rollback would hide a wrong rewrite behind a correct output.
OPTIONS = {"validate": False} if "validate" in {f.name for f in fields(Options)} else {}


def light_models() -> list[str]:
    """Names (`light_resnet50`...) of the light models the installed onnx ships, with an expected output."""
    return sorted(p.stem for p in LIGHT_DIR.glob("light_*.onnx") if p.with_name(p.stem + "_output_0.pb").exists())


def optimize_light(name: str):
    """(optimized ModelProto, Report) for one light model, with the corpus options."""
    return fuser.optimize(LIGHT_DIR / f"{name}.onnx", **OPTIONS)


def summary(model: onnx.ModelProto, report) -> dict:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    ops = collections.Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                              for n in model.graph.node)
    return {"opset": opset, "ops": dict(sorted(ops.items())), "fusions": dict(sorted(report.fusion_counts.items()))}


def current() -> dict:
    return {"onnx_version": onnx.__version__,
            "models": {name: summary(*optimize_light(name)) for name in light_models()}}


def main() -> int:
    data = current()
    old = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"models": {}}
    GOLDEN.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    changed = [n for n in data["models"] if old["models"].get(n) != data["models"][n]]
    gone = [n for n in old["models"] if n not in data["models"]]
    print(f"wrote {GOLDEN} ({len(data['models'])} models; changed: {', '.join(changed) or 'none'}"
          f"{'; removed: ' + ', '.join(gone) if gone else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
