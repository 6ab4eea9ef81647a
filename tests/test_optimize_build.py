"""The whole chain on real TensorRT-RTX builds: optimize -> validate -> build, and audit gating on build warnings."""

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from fuser.cli import main
from fuser.trt.backend import ENV_VAR

pytest.importorskip("tensorrt_rtx")
DEMO = Path(__file__).resolve().parents[1] / "models" / "demo.onnx"
PROFILES = ["--profile", "x:1x3x16x16,2x3x16x16,4x3x16x16", "--profile", "x:8x3x16x16,8x3x16x16,16x3x16x16"]


@pytest.fixture(autouse=True)
def rtx_backend(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "tensorrt_rtx")


def layers(tmp_path, model, *args):
    report = tmp_path / f"{model.stem}.json"
    result = CliRunner().invoke(main, ["build", str(model), "-o", str(tmp_path / f"{model.stem}.plan"),
                                       "--opt-level", "0", "--report", str(report), *PROFILES, *args])
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


def test_bundled_model_builds_with_two_profiles_and_a_reused_timing_cache(tmp_path):
    out, engine, report = tmp_path / "demo.opt.onnx", tmp_path / "demo.plan", tmp_path / "report.json"
    args = ["optimize", str(DEMO), "-o", str(out), "--build", "--engine", str(engine), "--opt-level", "0",
            "--timing-cache", str(tmp_path / "timing.cache"), "--report", str(report), *PROFILES]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert engine.stat().st_size > 0 and (tmp_path / "timing.cache").exists()
    build = json.loads(report.read_text())["build"]
    assert build["timing_cache"]["status"] == "created"
    assert len(build["options"]["profiles"]) == 2
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert json.loads(report.read_text())["build"]["timing_cache"]["status"] == "loaded"
    # fusion shows in TensorRT: the optimized bundled model has far fewer network layers than the input
    fused_layers = build["network"]["layer_count"]
    raw_layers = layers(tmp_path, DEMO)["network"]["layer_count"]
    assert fused_layers < raw_layers / 2, (fused_layers, raw_layers)


def test_audit_fails_on_the_fp16_layernorm_warning_only_when_unfused(tmp_path):
    from test_trt_build import layernorm_fp16

    model = tmp_path / "ln16.onnx"
    onnx.save(layernorm_fp16(fused=False), model)
    base = ["audit", str(model), "--build", "--opt-level", "0", "--expect-no-warning", "layernorm-fp16"]
    unfused = CliRunner().invoke(main, base + ["--skip-rules", "layernorm"])
    assert unfused.exit_code == 1
    assert "FAIL no-warning layernorm-fp16" in unfused.output
    fused = CliRunner().invoke(main, base + ["--expect", "layernorm>=1"])
    assert fused.exit_code == 0, fused.output
    assert "PASS no-warning layernorm-fp16" in fused.output
