"""fuser bench on the CPU provider (CI has no GPU): result structure, input shapes, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from fuser.bench import bench_shapes, benchmark, format_table, input_specs_of, make_feeds, pipeline_summary, row
from fuser.bench.pipeline import run_pipeline
from fuser.bench.session import SessionConfig, make_session
from fuser.cli import main
from fuser.errors import FuserError, UsageError

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo.onnx"


def _cuda_works() -> bool:
    try:
        benchmark(DEMO, provider="cuda", warmup=0, iters=1, e2e=False)
        return True
    except FuserError:
        return False


def test_cpu_result_structure():
    r = benchmark(DEMO, provider="cpu", ort_opt="off", batch=2, warmup=2, iters=5)
    assert r["provider"] == "cpu" and r["ort_opt"] == "off" and r["batch"] == 2
    assert r["cuda_graph"] is False and r["pipelined"] is False
    assert r["input_shapes"] == {"x": [2, 3, 16, 16]}
    assert r["session_providers"] == ["CPUExecutionProvider"]
    lat = r["latency"]
    assert lat["n"] == 5 and 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] <= lat["max_ms"]
    assert r["median_ms"] == lat["median_ms"] and r["p90_ms"] == lat["p90_ms"]
    assert r["throughput_per_s"] == pytest.approx(2 * 1000.0 / r["median_ms"])
    assert r["e2e"]["n"] == 5
    assert r["outputs_max_rel_diff"] == 0.0
    assert sum(r["placement"]["nodes"].values()) > 0
    json.dumps(r)  # JSON-ready


def test_ort_levels_change_placement():
    off = benchmark(DEMO, provider="cpu", ort_opt="off", warmup=0, iters=2, e2e=False)
    on = benchmark(DEMO, provider="cpu", ort_opt="all", warmup=0, iters=2, e2e=False)
    assert sum(on["placement"]["nodes"].values()) < sum(off["placement"]["nodes"].values())


def test_input_shape_and_batch_with_ids_and_mask(tmp_path):
    # ids and mask share the symbolic dims; --input-shape pins seq, --batch replaces axis 0
    nodes = [helper.make_node("Cast", ["input_ids"], ["idf"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["idf", "mf"], ["y"])]
    graph = helper.make_graph(nodes, "t", [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "ids.onnx"
    onnx.save(model, path)
    r = benchmark(path, provider="cpu", batch=4, warmup=0, iters=2, input_shapes={"input_ids": (1, 32)})
    assert r["input_shapes"] == {"input_ids": [4, 32], "attention_mask": [4, 32]}
    with pytest.raises(UsageError, match="not an input"):
        benchmark(path, provider="cpu", warmup=0, iters=1, input_shapes={"nope": (1, 2)})


def test_generated_inputs_follow_validation_rules():
    from fuser.validation.inputs import InputSpec

    specs = [InputSpec("input_ids", TensorProto.INT64, ("b", "s")), InputSpec("attention_mask", TensorProto.INT64,
                                                                              ("b", "s"))]
    feeds = make_feeds(specs, {"input_ids": (2, 64), "attention_mask": (2, 64)}, seed=0, vocab_size=50)
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 50
    assert set(np.unique(feeds["attention_mask"])) <= {0, 1} and (feeds["attention_mask"][:, 0] == 1).all()


def test_cuda_unavailable_is_a_clear_error():
    if _cuda_works():
        pytest.skip("CUDA works here")
    with pytest.raises(FuserError) as info:
        benchmark(DEMO, provider="cuda", warmup=0, iters=1)
    msg = str(info.value)
    assert msg.startswith("--provider cuda:") and "--provider cpu" in msg
    assert "\n" not in msg


def test_cuda_only_options_are_usage_errors():
    with pytest.raises(UsageError, match="needs --provider cuda"):
        benchmark(DEMO, provider="cpu", cuda_graph=True)
    with pytest.raises(UsageError, match="needs --provider cuda"):
        benchmark(DEMO, provider="cpu", pipelined=True)
    with pytest.raises(UsageError, match="--ort-opt"):
        benchmark(DEMO, provider="cpu", ort_opt="max")


def test_cli_table_and_json(tmp_path):
    out = tmp_path / "sub" / "bench.json"
    out.parent.mkdir()  # fuser never creates output folders (tests/test_output_paths.py)
    res = CliRunner().invoke(main, ["bench", str(DEMO), "--provider", "cpu", "--ort-opt", "off,all", "--batch", "1,8",
                                    "--warmup", "1", "--iters", "3", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "median ms" in res.output and "thru/s" in res.output
    doc = json.loads(out.read_text())
    got = [(r["ort_opt"], r["batch"]) for r in doc["results"]]
    assert got == [("off", 1), ("off", 8), ("all", 1), ("all", 8)]
    for r in doc["results"]:
        assert {"provider", "ort_opt", "cuda_graph", "batch", "median_ms", "p90_ms", "throughput_per_s"} <= set(r)


def test_cli_cuda_error_is_one_line_not_a_traceback():
    if _cuda_works():
        pytest.skip("CUDA works here")
    res = CliRunner().invoke(main, ["bench", str(DEMO), "--provider", "cuda", "--iters", "1"])
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    assert "fuser: error: --provider cuda:" in res.output


def test_cli_missing_model_is_usage_error(tmp_path):
    res = CliRunner().invoke(main, ["bench", str(tmp_path / "none.onnx"), "--provider", "cpu"])
    assert res.exit_code == 2 and "no such file" in res.output


def test_format_table_shows_errors():
    text = format_table([{"model": "m.onnx", "provider": "cuda", "ort_opt": "off", "cuda_graph": True,
                          "pipelined": False, "batch": 1, "error": "graph capture refused"}])
    assert "error: graph capture refused" in text


class _FakeCuda:
    """CudaRuntime's interface on the host: copies are plain memmoves, events and streams are tokens."""

    H2D, D2H = 1, 2
    version = 0

    def __init__(self):
        import ctypes
        self._ctypes, self._keep, self.lib = ctypes, [], self
        self.copies = 0

    def stream(self):
        return 1

    def event(self, timing=True):
        return 1

    def pinned(self, nbytes):
        buf = self._ctypes.create_string_buffer(max(nbytes, 1))
        self._keep.append(buf)
        return self._ctypes.addressof(buf)

    def copy_async(self, dst, src, nbytes, kind, stream):
        self.copies += 1
        self._ctypes.memmove(dst, src, nbytes)

    def record(self, event, stream):
        pass

    def wait(self, event):
        pass

    def elapsed_ms(self, start, end):
        return 0.5

    def sync(self, stream):
        pass

    def cudaFreeHost(self, ptr):
        pass

    def cudaEventDestroy(self, ev):
        pass


def _input_sets_and_references(batch: int, count: int):
    """`count` generated input sets for the demo model and a plain CPU session's outputs for each."""
    sess = make_session(ort, str(DEMO), SessionConfig("cpu", "off", False, {}))
    specs = input_specs_of(sess)
    sets = [make_feeds(specs, bench_shapes(specs, None, batch), seed, 100) for seed in range(count)]
    refs = [dict(zip([o.name for o in sess.get_outputs()], sess.run(None, f))) for f in sets]
    return sets, refs


def test_pipeline_bookkeeping_on_the_host():
    """The two-lane loop's buffers, lanes and result slots line up: every input set gets its own outputs back."""
    sets, refs = _input_sets_and_references(batch=2, count=3)
    assert not np.allclose(refs[0]["y"], refs[1]["y"])
    rt = _FakeCuda()
    res = run_pipeline(ort, rt, str(DEMO), SessionConfig("cpu", "off", False, {}), sets, warmup=2, iters=7, batch=2,
                       references=refs)
    assert res["copies"] == "cudart"
    for key, lanes, threads in (("one_lane", 1, 1), ("two_lanes", 2, 1), ("two_lanes_two_threads", 2, 2)):
        x = res[key]
        assert (x["lanes"], x["host_threads"], x["batches"]) == (lanes, threads, 7)
        assert x["outputs_max_rel_diff"] < 1e-6 and x["outputs_checked"] >= 3
        assert x["in_flight_median_ms"] == 0.5 and x["throughput_per_s"] > 0
    # one input and one output copy per batch: warm-up max(2, 2 * lanes) + 7 timed, three loops
    assert rt.copies == 2 * ((2 + 7) + (4 + 7) + (4 + 7))
    text = pipeline_summary({"model": "demo.onnx", "batch": 2, "cuda_graph": False, "pipeline": res})
    assert "2 lanes/2 threads" in text


class _StaleDownloads(_FakeCuda):
    """Loses every device -> host copy: the pipeline must notice that its outputs are not the plain run's."""

    def copy_async(self, dst, src, nbytes, kind, stream):
        if kind == self.H2D:
            super().copy_async(dst, src, nbytes, kind, stream)


def test_pipeline_check_catches_wrong_outputs():
    sets, refs = _input_sets_and_references(batch=1, count=2)
    res = run_pipeline(ort, _StaleDownloads(), str(DEMO), SessionConfig("cpu", "off", False, {}), sets, warmup=1,
                       iters=4, batch=1, references=refs)
    assert res["two_lanes"]["outputs_max_rel_diff"] > 0.1


class _FailsOffMainThread(_FakeCuda):
    def copy_async(self, dst, src, nbytes, kind, stream):
        import threading
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("copy refused in a worker thread")
        super().copy_async(dst, src, nbytes, kind, stream)


def test_pipeline_loop_failure_is_recorded_not_fatal():
    sets, refs = _input_sets_and_references(batch=1, count=2)
    res = run_pipeline(ort, _FailsOffMainThread(), str(DEMO), SessionConfig("cpu", "off", False, {}), sets,
                       warmup=1, iters=4, batch=1, references=refs)
    assert "copy refused" in res["two_lanes_two_threads"]["error"]
    assert res["two_lanes"]["outputs_max_rel_diff"] < 1e-6
    r = row({"model": "demo.onnx", "provider": "cuda", "batch": 1, "pipelined": True, "pipeline": res})
    assert r["pipelined"] in ("1L1T", "2L1T")
    assert "failed" in pipeline_summary({"model": "demo.onnx", "batch": 1, "cuda_graph": False, "pipeline": res})


def test_runs_without_the_pipeline_dependencies():
    """benchmarks/gpu_bench.py loads fuser.bench without fuser/__init__ on the GPU machine: the runner must not
    import the pipeline (networkx, click, jsonschema are blocked here; importing them would fail)."""
    root = DEMO.parent.parent
    code = textwrap.dedent(f"""
        import sys
        for blocked in ("networkx", "click", "jsonschema"):
            sys.modules[blocked] = None
        sys.path.insert(0, {str(root / "benchmarks")!r})
        import gpu_bench
        bench = gpu_bench.import_bench()
        r = bench.benchmark({str(DEMO)!r}, provider="cpu", warmup=0, iters=2)
        print(bench.format_table([r]).splitlines()[-1])
        loaded = sorted(m for m in sys.modules if m.startswith("fuser."))
        assert not any(m.split(".")[1] in ("pipeline", "graph", "cli", "passes", "rules") for m in loaded), loaded
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("demo.onnx  cpu")
