"""Models with external data: weights stay on disk unless a rule needs them, outputs carry them along."""

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto as T, helper

from fuser.cli import main
from fuser.model_io import load_model
from fuser.options import Options
from fuser.pipeline import _run

from builders import const, make_model, run

F = T.FLOAT


def external_model(tmp_path, n=4096):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             const("three", 3.0), const("zero", 0.0), const("six", 6.0),
             helper.make_node("Add", ["h", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
             helper.make_node("Div", ["c", "six"], ["y"])]
    model = make_model(nodes, [("x", F, [2, 64])], [("y", F, [2, n // 64])],
                       [("w", rng.standard_normal((64, n // 64)).astype(np.float32))])
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def test_weights_are_not_read_unless_a_rule_needs_them(tmp_path):
    path = external_model(tmp_path)
    _, report, graph = _run(load_model(path), Options(), None, None)
    assert report.fusion_counts() == {"hsigmoid": 1}
    assert "w" not in graph._const_cache  # the MatMul weight was never loaded


def test_optimize_writes_external_data_beside_the_output(tmp_path):
    path = external_model(tmp_path)
    out = tmp_path / "out" / "model.opt.onnx"
    out.parent.mkdir()
    result = CliRunner().invoke(main, ["optimize", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out.parent / "model.opt.onnx.data").stat().st_size >= 4096 * 4
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    expected = run(onnx.load(path), {"x": x})[0]
    actual = run(onnx.load(out), {"x": x})[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
    assert [n.op_type for n in onnx.load(out).graph.node] == ["MatMul", "HardSigmoid"]


def test_no_external_data_inlines_small_weights(tmp_path):
    path = external_model(tmp_path)
    out = tmp_path / "inline.onnx"
    result = CliRunner().invoke(main, ["optimize", str(path), "-o", str(out), "--no-external-data"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "inline.onnx.data").exists()
    model = onnx.load(out, load_external_data=False)
    assert all(t.data_location == T.DEFAULT for t in model.graph.initializer)


def test_over_2gb_without_external_data_is_refused_without_reading_it(tmp_path):
    """A sparse 2.1 GB weights file: refusing must not read (or write) it."""
    n = (2**31 + 2**26) // 4
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big.bin", "wb") as f:
        f.truncate(n * 4)
    tensor = onnx.TensorProto(name="w", data_type=F, dims=[n], data_location=T.EXTERNAL)
    for k, v in (("location", "big.bin"), ("offset", "0"), ("length", str(n * 4))):
        e = tensor.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", F, [n])], [helper.make_tensor_value_info("y", F, [n])],
                              [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    (src / "big.onnx").write_bytes(model.SerializeToString())
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["optimize", str(src / "big.onnx"), "-o", str(out), "--no-external-data"])
    assert result.exit_code == 2 and "2 GB" in result.output
    assert not out.exists()
