"""The TensorRT build stage, with real TensorRT-RTX builds of small inline models (it builds on a CPU-only machine)."""

import importlib
import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from fuser.cli.build import build
from fuser.errors import FuserError, ModelError, UsageError
from fuser.report import to_json
from fuser.trt import BuildOptions, build_engine, parse_profile
from fuser.trt.backend import ENV_VAR, NOT_INSTALLED, load_backend, visible_gpu
from fuser.trt.profiles import ShapeRange

pytest.importorskip("tensorrt_rtx")

FAST = {"opt_level": 0}
TWO_PROFILES = ("x:1x3x16x16,2x3x16x16,4x3x16x16", "x:8x3x16x16,12x3x16x16,16x3x16x16")


@pytest.fixture(autouse=True)
def rtx_backend(monkeypatch):
    """The warnings asserted here are TensorRT-RTX's wording, so use it even where real TensorRT is installed."""
    monkeypatch.setenv(ENV_VAR, "tensorrt_rtx")


def make_model(nodes, inputs, outputs, initializers=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(domain, 1) for domain in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def conv_net():
    """Conv -> Relu -> Conv -> Relu on x[N, 3, 16, 16]: a dynamic batch needs optimization profiles."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3), dtype=np.float32), "w0"),
               numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1), dtype=np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["y"], name="relu1")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])], weights)
    onnx.checker.check_model(model, full_check=True)
    return model


def layernorm_fp16(fused: bool):
    """One fp16 LayerNorm over the last axis of x[2, 8, 16]: the exporter's opset-13 spelling, or opset-17's op."""
    constants = {"two": 2.0, "eps": 1e-5, "gamma": np.ones(16), "beta": np.zeros(16)}
    initializers = [numpy_helper.from_array(np.asarray(value, dtype=np.float16), name)
                    for name, value in constants.items()]
    if fused:
        nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5,
                                  stash_type=1)]
    else:
        nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
                 helper.make_node("Sub", ["x", "mean"], ["d"]),
                 helper.make_node("Pow", ["d", "two"], ["d2"]),
                 helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
                 helper.make_node("Add", ["var", "eps"], ["var_eps"]),
                 helper.make_node("Sqrt", ["var_eps"], ["std"]),
                 helper.make_node("Div", ["d", "std"], ["normed"]),
                 helper.make_node("Mul", ["normed", "gamma"], ["scaled"]),
                 helper.make_node("Add", ["scaled", "beta"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 8, 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 8, 16])], initializers,
                       opset=17 if fused else 13)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def conv_path(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(conv_net(), path)
    return path


def warning_ids(result):
    return [warning.id for warning in result.warnings]


def test_two_profiles_and_a_timing_cache_reused_on_rebuild(tmp_path, conv_path):
    options = BuildOptions(profiles=tuple(map(parse_profile, TWO_PROFILES)), timing_cache=tmp_path / "timing.cache",
                           **FAST)
    first = build_engine(conv_path, options, tmp_path / "conv.plan")

    assert [layer["type"] for layer in first.network_layers] == ["CONVOLUTION", "ACTIVATION"] * 2
    assert all(layer["precision"] == "FLOAT" for layer in first.network_layers)
    assert first.engine_layers and all(layer["name"] for layer in first.engine_layers)
    assert (tmp_path / "conv.plan").stat().st_size == first.engine_size > 0
    assert first.timing_cache.status == "created"
    assert (tmp_path / "timing.cache").stat().st_size == first.timing_cache.bytes_written > 0
    assert json.loads((tmp_path / "timing.cache.meta.json").read_text())["backend"] == "tensorrt_rtx"

    second = build_engine(conv_path, options, tmp_path / "conv.plan")
    assert second.timing_cache.status == "loaded"
    assert isinstance(second.timing_cache.accepted_by_builder, bool)  # False without a CUDA driver
    assert len(second.network_layers) == 4
    assert not list(tmp_path.glob(".*.tmp")), "atomic writes leave no temporary file behind"
    report = json.loads(json.dumps(to_json(second.section())))
    assert report["options"]["profiles"][1]["x"]["max"] == [16, 3, 16, 16]
    assert any(line["phase"] == "parse" for line in report["log"])
    assert any(line["phase"] == "build" for line in report["log"])


def test_timing_cache_of_another_version_is_a_warning_and_is_replaced(tmp_path, conv_path):
    options = BuildOptions(profiles=(parse_profile(TWO_PROFILES[0]),), timing_cache=tmp_path / "t.cache", **FAST)
    build_engine(conv_path, options)
    meta = tmp_path / "t.cache.meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": "0.9"}))

    result = build_engine(conv_path, options)
    assert result.timing_cache.status == "replaced"
    assert "timing-cache-mismatch" in warning_ids(result)
    assert json.loads(meta.read_text())["version"] == result.backend_version


def test_corrupt_timing_cache_is_a_warning_not_a_failure(tmp_path, conv_path):
    options = BuildOptions(profiles=(parse_profile(TWO_PROFILES[0]),), timing_cache=tmp_path / "t.cache", **FAST)
    build_engine(conv_path, options)
    (tmp_path / "t.cache").write_bytes(b"not a timing cache" * 8)

    result = build_engine(conv_path, options)
    assert (result.timing_cache.status, result.timing_cache.accepted_by_builder) == ("loaded", False)
    assert "timing-cache-unusable" in warning_ids(result)


def test_decomposed_fp16_layernorm_warns_and_the_fused_one_does_not():
    decomposed = build_engine(layernorm_fp16(fused=False), BuildOptions(**FAST))
    fused = build_engine(layernorm_fp16(fused=True), BuildOptions(**FAST))

    assert "layernorm-fp16" in warning_ids(decomposed)
    assert "layernorm-fp16" not in warning_ids(fused)
    # measured with TensorRT-RTX 1.7: one LayerNorm is 17 network layers decomposed, 5 fused (opset 17).
    assert (len(decomposed.network_layers), len(fused.network_layers)) == (17, 5)
    assert {layer["precision"] for layer in fused.network_layers} == {"HALF"}


@pytest.mark.parametrize("profile, message", [
    ("x:1x3x16", "input 'x': rank 3 given"),
    ("x:1x4x16x16", "input 'x': dim 1 is fixed at 3"),
    ("image:1x3x16x16", "no input 'image' (inputs: x)"),
    ("x:4x3x16x16,2x3x16x16,8x3x16x16", "input 'x': dim 0 needs min <= opt <= max"),
])
def test_bad_profile_is_a_usage_error_naming_the_input(conv_path, profile, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_engine(conv_path, BuildOptions(profiles=(parse_profile(profile),)))


def test_dynamic_input_without_a_profile_is_a_usage_error(conv_path):
    with pytest.raises(UsageError, match="input 'x' has dynamic dims \\(Nx3x16x16\\)"):
        build_engine(conv_path)


@pytest.mark.parametrize("text", ["x:1x3x16x16,2x3x16x16", "x1x3x16x16", "x:1x3xx16", "x:1x3;x:2x3", ""])
def test_malformed_profile_is_a_usage_error(text):
    with pytest.raises(UsageError):
        parse_profile(text)


def test_parse_profile():
    assert parse_profile("x:1x3,2x3,4x3; input:0:7") == {
        "x": ShapeRange((1, 3), (2, 3), (4, 3)), "input:0": ShapeRange((7,), (7,), (7,))}


@pytest.mark.parametrize("domain, op", [("com.microsoft", "FusedConv"), ("", "NoSuchOp")])
def test_parser_failure_is_a_model_error_naming_the_node(domain, op):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node(op, ["r", "r"], ["y"], domain=domain, name="the_culprit")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                       domains=[domain] if domain else ())
    with pytest.raises(ModelError, match=f"rejected node 'the_culprit' \\(#1, {f'{domain} ' if domain else ''}{op}\\)"):
        build_engine(model)


def test_external_data_beside_the_model_is_found(tmp_path):
    onnx.save(conv_net(), tmp_path / "external.onnx", save_as_external_data=True, location="external.onnx.data",
              size_threshold=0)
    result = build_engine(tmp_path / "external.onnx", BuildOptions(profiles=(parse_profile("x:1x3x16x16"),), **FAST))
    assert len(result.network_layers) == 4


@pytest.mark.skipif(visible_gpu() is not None, reason="refit builds where a GPU is visible")
def test_builder_failure_is_one_model_error_with_the_reason():
    with pytest.raises(ModelError, match="could not build the engine: .*CUDA_SUCCESS.*needs a CUDA driver"):
        build_engine(conv_net(), BuildOptions(profiles=(parse_profile("x:1x3x16x16"),), refit=True, **FAST))


def test_missing_and_unreadable_models(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        build_engine(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        build_engine(tmp_path / "junk.onnx")


def test_rtx_option_handling(conv_path):
    static = BuildOptions(profiles=(parse_profile("x:2x3x16x16"),), **FAST)
    result = build_engine(conv_path, replace(static, fp16=True, compute_capabilities=("8.6",),
                                             tactic_sources="-JIT_CONVOLUTIONS", workspace_mib=64))
    assert warning_ids(result) == ["option-ignored"]
    assert "--fp16/--bf16 are ignored by TensorRT-RTX" in result.warnings[0].lines[0]
    with pytest.raises(UsageError, match="--compute-capability 9.0: TensorRT-RTX targets 7.5, 8.0, 8.6"):
        build_engine(conv_path, replace(static, compute_capabilities=("9.0",)))
    with pytest.raises(UsageError, match="no tactic source 'CUDNN'"):
        build_engine(conv_path, replace(static, tactic_sources="CUDNN"))
    with pytest.raises(UsageError, match="--version-compatible is not available with TensorRT-RTX"):
        build_engine(conv_path, replace(static, version_compatible=True))


def test_backend_choice_and_missing_backend(monkeypatch):
    assert load_backend().name == "tensorrt_rtx"
    monkeypatch.setenv(ENV_VAR, "tensorrt-llm")
    with pytest.raises(UsageError, match="expected one of tensorrt, tensorrt_rtx"):
        load_backend()
    monkeypatch.delenv(ENV_VAR)

    def nothing_installed(name):
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", nothing_installed)
    with pytest.raises(FuserError, match="^no TensorRT backend: pip install 'fuser\\[rtx\\]' or tensorrt$"):
        load_backend()
    assert NOT_INSTALLED == "no TensorRT backend: pip install 'fuser[rtx]' or tensorrt"


def test_cli_build_with_profiles_cache_and_report(tmp_path, conv_path):
    arguments = [str(conv_path), "-o", str(tmp_path / "out.plan"), "--profile", TWO_PROFILES[0], "--profile",
                 TWO_PROFILES[1], "--timing-cache", str(tmp_path / "cli.cache"), "--opt-level", "0",
                 "--report", str(tmp_path / "build.json")]
    first = CliRunner().invoke(build, arguments)
    assert first.exit_code == 0, first.output
    assert "4 network layers" in first.output and "timing cache" in first.output and "created" in first.output
    second = CliRunner().invoke(build, arguments)
    assert second.exit_code == 0 and "loaded" in second.output
    report = json.loads((tmp_path / "build.json").read_text())
    assert report["network"]["layer_count"] == 4 and report["engine"]["size_bytes"] > 0
    assert report["timing_cache"]["status"] == "loaded"


def test_cli_bad_profile_raises_a_usage_error(conv_path):
    result = CliRunner().invoke(build, [str(conv_path), "--profile", "x:1x3x16"])
    assert isinstance(result.exception, UsageError) and "rank 3 given" in str(result.exception)
