"""What onnxruntime's optimizer makes of BERT-base when only the opset changes (CPU EP, no GPU needed).

The unfused export (benchmarks/cache/bert_base_op12.onnx, opset 12) is raised in place to opsets 13..17 with
fuser.opset.upgrade_in_place (no fusion, no folding: every node keeps its meaning), then each version, and the
fused model of `fuser optimize` if given, goes through onnxruntime with ORT_ENABLE_EXTENDED and the free-dimension
overrides fuser.bench uses (batch 8, sequence 128). Prints the op counts of the optimized graphs as a markdown table.
On onnxruntime 1.31.1 the CPU EP's optimized graphs have the same structure as the CUDA EP's that
benchmarks/gpu_fused_bert.py dumps on the GPU (CUDA keeps the pooler's Gemm + Tanh, CPU fuses them: one node less).

    python benchmarks/ort_opset_probe.py [--fused /tmp/fused_bert/bert.new.opt.onnx]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuser.graph import Graph
from fuser.model_io import load_model
from fuser.opset import upgrade_in_place

BERT = ROOT / "benchmarks" / "cache" / "bert_base_op12.onnx"
COLUMNS = ("MatMul", "Gemm", "Reshape", "SkipLayerNormalization", "Gelu", "BiasGelu", "Attention", "Expand",
           "GreaterOrEqual", "And")


def optimized(path: Path, tmp: Path, tag: str) -> onnx.ModelProto:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    so.add_free_dimension_override_by_name("batch", 8)
    so.add_free_dimension_override_by_name("sequence", 128)
    so.optimized_model_filepath = str(tmp / f"{tag}.onnx")
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{tag}.weights")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(so.optimized_model_filepath, load_external_data=False)


def row(label: str, m: onnx.ModelProto) -> str:
    c = collections.Counter(n.op_type for n in m.graph.node)
    with_bias = sum(1 for n in m.graph.node if n.op_type == "SkipLayerNormalization" and len(n.input) > 4
                    and n.input[4])
    cells = [str(len(m.graph.node))] + [str(c[k]) for k in COLUMNS[:4]] + [str(with_bias)] + \
        [str(c[k]) for k in COLUMNS[4:]]
    return f"| {label} | " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fused", help="also a fused model (fuser optimize output)")
    p.add_argument("--opsets", default="12,13,14,15,16,17")
    a = p.parse_args()
    ort.set_default_logger_severity(3)
    print("| model (ORT_ENABLE_EXTENDED, CPU EP, batch 8 x 128 pinned) | nodes | " + " | ".join(COLUMNS[:4])
          + " | SkipLN with bias | " + " | ".join(COLUMNS[4:]) + " |")
    print("|---|" + "---|" * (len(COLUMNS) + 2))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for v in (int(x) for x in a.opsets.split(",")):
            src = BERT
            if v != 12:
                g = Graph(load_model(str(BERT)))
                if not upgrade_in_place(g, 12, v):
                    print(f"| unfused, opset {v} | not exact in place |")
                    continue
                src = tmp / f"bert.op{v}.onnx"
                onnx.save(g.to_model(), str(src))
            print(row(f"unfused, opset {v}" + (" in place" if v != 12 else ""), optimized(src, tmp, f"o{v}")),
                  flush=True)
        if a.fused:
            print(row(f"fused ({Path(a.fused).name})", optimized(Path(a.fused), tmp, "fused")))


if __name__ == "__main__":
    main()
