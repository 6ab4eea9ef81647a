"""Models with external data: weights stay on disk unless a rule needs them, outputs carry them along, and
external data is found and confined exactly as onnxruntime does (a Hugging Face cache snapshot works)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T, helper

import fuser
from fuser.cli import main
from fuser.model_io import load_model
from fuser.options import Options
from fuser.stage import _run

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
    assert report.fusion_counts == {"hsigmoid": 1}
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


# ------------------------------------------------------------------ where external data may come from
def _raw_model(location: str, n: int = 1024) -> bytes:
    """y = x + w with w external at `location` (n float32 ones)."""
    w = onnx.TensorProto(name="w", data_type=F, dims=[1, n], data_location=T.EXTERNAL)
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", F, [1, n])],
                              [helper.make_tensor_value_info("y", F, [1, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _ones(path: Path, n: int = 1024) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.ones((1, n), np.float32).tobytes())


def _hf_snapshot(root: Path, data_target: str = "../../blobs/bbb", location: str = "model.onnx.data") -> Path:
    """Hugging Face's cache: snapshots/<rev>/model.onnx -> ../../blobs/<hash>, the data file a symlink too."""
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "snapshots" / "rev").mkdir(parents=True)
    (root / "blobs" / "aaa").write_bytes(_raw_model(location))
    _ones(root / "blobs" / "bbb")
    (root / "snapshots" / "rev" / "model.onnx").symlink_to("../../blobs/aaa")
    (root / "snapshots" / "rev" / "model.onnx.data").symlink_to(data_target)
    return root / "snapshots" / "rev" / "model.onnx"


def _layout(kind: str, root: Path) -> Path:
    """A model (returned) and its external data laid out as `kind` says."""
    if kind == "hugging-face-cache":
        return _hf_snapshot(root)
    if kind == "hf-data-symlink-out-of-blobs":  # the data symlink leaves the folder the model really is in
        _ones(root / "elsewhere" / "secret")
        return _hf_snapshot(root, "../../elsewhere/secret")
    if kind == "hf-data-symlink-to-a-blobs-subfolder":
        _ones(root / "blobs" / "sub" / "ccc")
        return _hf_snapshot(root, "../../blobs/sub/ccc")
    if kind == "hf-location-climbing-into-blobs":
        model = _hf_snapshot(root, location="../../blobs/bbb")
        (model.parent / "model.onnx.data").unlink()
        return model
    if kind == "hf-regular-data-beside-the-model-link":
        model = _hf_snapshot(root)
        (model.parent / "model.onnx.data").unlink()
        _ones(model.parent / "model.onnx.data")  # a regular file beside the link, outside blobs/
        return model
    if kind == "hf-data-symlink-above-the-snapshot":
        _ones(root / "snapshots" / "secret")
        return _hf_snapshot(root, "../secret")
    folder = root / "models"
    folder.mkdir(parents=True)
    model = folder / "model.onnx"
    if kind == "plain":
        model.write_bytes(_raw_model("model.onnx.data"))
        _ones(folder / "model.onnx.data")
    elif kind == "data-symlink-inside-the-folder":
        model.write_bytes(_raw_model("model.onnx.data"))
        _ones(folder / "sub" / "w")
        (folder / "model.onnx.data").symlink_to("sub/w")
    elif kind == "data-symlink-to-a-secret":
        model.write_bytes(_raw_model("model.onnx.data"))
        _ones(root / "secret")
        (folder / "model.onnx.data").symlink_to(root / "secret")
    elif kind == "location-through-a-symlinked-folder":
        model.write_bytes(_raw_model("sub/w"))
        _ones(root / "outside" / "w")
        (folder / "sub").symlink_to(root / "outside")
    elif kind == "location-climbing-out":
        model.write_bytes(_raw_model("../secret"))
        _ones(root / "secret")
    elif kind == "model-reached-through-a-symlinked-folder":
        model.write_bytes(_raw_model("model.onnx.data"))
        _ones(folder / "model.onnx.data")
        (root / "link").symlink_to(folder)
        return root / "link" / "model.onnx"
    else:
        raise ValueError(kind)
    return model


def _onnxruntime_reads(model: Path) -> bool:
    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime refuses it (escapes, missing)
        return False
    return bool(np.all(session.run(None, {"x": np.zeros((1, 1024), np.float32)})[0] == 1))


READ = ["plain", "hugging-face-cache", "hf-data-symlink-to-a-blobs-subfolder", "hf-location-climbing-into-blobs",
        "hf-regular-data-beside-the-model-link", "model-reached-through-a-symlinked-folder",
        "data-symlink-inside-the-folder"]
REFUSED = ["hf-data-symlink-out-of-blobs", "hf-data-symlink-above-the-snapshot", "data-symlink-to-a-secret",
           "location-through-a-symlinked-folder", "location-climbing-out"]


@pytest.mark.parametrize("kind", READ + REFUSED)
def test_external_data_is_found_and_confined_like_onnxruntime_does(tmp_path, kind):
    """fuser reads exactly the layouts onnxruntime 1.31 reads: the location is looked up beside the model path
    as given and must lead (symlinks followed) into that folder or into the folder that really holds the
    model file. So a Hugging Face cache snapshot works, and a symlink to a file anywhere else is refused."""
    model = _layout(kind, tmp_path / "root")
    expected = _onnxruntime_reads(model)
    assert expected == (kind in READ), "onnxruntime changed its rule: revisit fuser's"
    out = tmp_path / "out" / "opt.onnx"
    out.parent.mkdir()
    result = CliRunner().invoke(main, ["optimize", str(model), "-o", str(out)])
    if expected:
        assert result.exit_code == 0, result.output
        assert "validation: passed" in result.output, result.output
        assert _onnxruntime_reads(out)  # the weights were copied beside the output
    else:
        assert result.exit_code == 1 and result.output.startswith("fuser: error:"), result.output
        assert not out.exists()


def test_hugging_face_snapshot_weights_are_read_when_a_rule_needs_them(tmp_path):
    """Folding reads weights through the snapshot's symlink (onnx's own loader refuses symlinks)."""
    root = tmp_path / "cache"
    model = _hf_snapshot(root)
    raw = onnx.load(model, load_external_data=False)
    raw.graph.node.insert(0, helper.make_node("Neg", ["w"], ["nw"]))  # Neg(w) of a constant: folded
    raw.graph.node[1].input[1] = "nw"
    (root / "blobs" / "aaa").write_bytes(raw.SerializeToString())
    optimized, report = fuser.optimize(model)
    assert [n.op_type for n in optimized.graph.node] == ["Add"], report.passes
    assert report.validation.status == "passed"
