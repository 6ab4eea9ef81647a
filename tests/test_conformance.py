"""Conformance in CI: a vendored subset of the ONNX backend node tests (tests/data/onnx_node_subset, chosen to cover
every op type and every reason validation was skipped before issue 11) and a few models the onnx wheel bundles.

Each model goes through `benchmarks/conformance.py`'s own evaluation, so CI and the full benchmark judge alike:
`fuser.optimize` with the test's inputs (`--inputs` on the test-data folder) and with random inputs; in both,
the model is not refused, validation runs, and fuser's output computes the test's expected outputs (rtol 1e-3,
atol 1e-7, as onnx's backend test). The full run over all 1,951 models is the benchmark
(`python benchmarks/conformance.py`, results in benchmarks/results/conformance.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from conformance import MODES, evaluate  # noqa: E402

SUBSET = Path(__file__).parent / "data" / "onnx_node_subset"
MANIFEST = json.loads((SUBSET / "subset.json").read_text())
WHEEL = Path(onnx.__file__).parent / "backend" / "test" / "data"


def cases() -> list[dict]:
    out = [{"suite": "node", "name": name, "model": str(SUBSET / name / "model.onnx"),
            "data": str(SUBSET / name / "test_data_set_0")} for name in MANIFEST["node"]]
    for name, (suite, *_) in MANIFEST["wheel"].items():
        folder = WHEEL / suite / name
        out.append({"suite": suite, "name": name, "model": str(folder / "model.onnx"),
                    "data": str(folder / "test_data_set_0")})
    return out


def test_the_subset_covers_what_it_promises():
    """Every failure class the subset was chosen for is present, and it stays small."""
    features = {f for fs in MANIFEST["node"].values() for f in fs}
    for needed in ("skipped before: Gather failed on the inputs", "skipped before: GatherElements failed on the inputs",
                   "skipped before: ScatterND failed on the inputs", "skipped before: Reshape failed on the inputs",
                   "input 0-d bool", "input with a declared 0 dim", "input sequence", "input optional",
                   "output sequence", "input bfloat16", "input float8e4m3fn", "input int4", "input string",
                   "no default-domain import", "opset 27", "opset 28", "refused before", "validated with reference"):
        assert needed in features, needed
    assert any("opset 6" in fs for fs in MANIFEST["wheel"].values())
    size = sum(p.stat().st_size for p in SUBSET.rglob("*") if p.is_file())
    assert len(MANIFEST["node"]) >= 200 and size < 5_000_000


@pytest.mark.parametrize("case", cases(), ids=lambda c: c["name"])
def test_validation_runs_and_the_result_is_right(case):
    record = evaluate(case, MODES)
    assert "refused" not in record, record["refused"]
    assert "error" not in record, record["error"]
    for mode in MODES:
        result = record[mode]
        assert result["outcome"] == "optimized", f"{mode}: {result}"
        assert result["validation"] in ("passed", "rolled-back"), f"{mode}: {result.get('skip_reason')}"
        assert result["correct"] == "yes", f"{mode}: {result['correct']}"
