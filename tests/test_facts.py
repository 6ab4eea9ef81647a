"""graph.facts: the one source of shapes, element types and op schemas that every pass and rule asks.

What it promises: answers come from the constants, the graph inputs and onnx's inference of the graph as
edited, never from an exporter's value_info (which can be stale); an edit makes the next question
re-infer; a snapshot keeps the answers of its first question while its pass edits; schemas are read at
the graph's opset.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper

import fuser
from builders import make_model, ops, run
from fuser.graph import Graph
from fuser.model_io import from_proto

F = T.FLOAT


def stale(model: onnx.ModelProto, name: str, elem: int, dims: list) -> onnx.ModelProto:
    """The model with a value_info for `name` that does not hold (what an exporter leaves after an edit)."""
    model.graph.value_info.append(helper.make_tensor_value_info(name, elem, dims))
    return model


def test_a_stale_value_info_does_not_size_a_flatten():
    """x is [N, C, H] with C, H dynamic; a stale value_info says Relu's output is [N, 5, 7]. Reshape(r, [0, 35])
    would fail on every input whose C * H is not 35: the rule must use what inference proves ([0, -1])."""
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Flatten", ["r"], ["y"], axis=1)],
                       [("x", F, ["N", "C", "H"])], [("y", F, ["N", "K"])])
    model = stale(model, "r", F, ["N", 5, 7])
    optimized, _ = fuser.optimize(model, target="tensorrt", validate=False)
    assert ops(optimized) == ["Relu", "Reshape"]
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(optimized, {"x": x})[0], run(model, {"x": x})[0])


def test_a_stale_rank_does_not_make_a_reduction_look_trailing():
    """A LayerNorm over axis 1 of a rank-3 tensor, with a stale value_info claiming rank 2 (so axis 1 would
    look like the last): fusing it as LayerNormalization(axis=-1) would normalize the wrong axis."""
    nodes = [helper.make_node("Relu", ["x_in"], ["x"]),
             helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1]),
             helper.make_node("Sub", ["x", "mean"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["std"]),
             helper.make_node("Div", ["d", "std"], ["y"])]
    model = make_model(nodes, [("x_in", F, ["B", "S", "E"])], [("y", F, ["B", "S", "E"])],
                       [("eps", np.array(1e-5, np.float32))])
    model = stale(model, "x", F, ["B", 4])
    optimized, report = fuser.optimize(model, validate=False)
    assert "LayerNormalization" not in ops(optimized)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(run(optimized, {"x_in": x})[0], run(model, {"x_in": x})[0], atol=1e-5)
    assert any("rank" in m.reason or "trailing" in m.reason for m in report.near_misses if m.family == "layernorm")


def chain_graph(n: int = 3) -> Graph:
    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"], name=f"relu{i}") for i in range(n)]
    return Graph(from_proto(make_model(nodes, [("v0", F, ["N", 4])], [(f"v{n}", F, ["N", 4])])))


def test_an_edit_makes_the_next_question_re_infer_and_a_snapshot_keeps_its_answers():
    g = chain_graph()
    snap = g.facts.snapshot()
    assert snap.shape("v2") == ["N", 4] and g.facts.shape("v2") == ["N", 4]
    version = g.version
    nid = g.add_node("Transpose", ["v3"], ["t"], perm=[1, 0])
    assert g.version > version
    assert g.facts.shape("t") == [4, "N"] and g.facts.elem_type("t") == F  # the live facts see the edit
    assert snap.shape("t") is None and snap.shape("v2") == ["N", 4]  # the snapshot: as at its first question
    g.remove_node(nid)
    assert g.facts.shape("t") is None


def test_a_pass_that_edits_as_it_asks_infers_once(monkeypatch):
    """A snapshot asked about every value while the graph is edited between questions: one inference."""
    import fuser.facts

    runs = []
    infer = fuser.facts.infer_model
    monkeypatch.setattr(fuser.facts, "infer_model", lambda model: runs.append(1) or infer(model))
    g = chain_graph(50)
    snap = g.facts.snapshot()
    for i in range(1, 50):
        assert snap.shape(f"v{i}") == ["N", 4]
        g.add_initializer(f"w{i}", np.ones(4, np.float32))  # an edit between two questions
    assert len(runs) == 1
    assert g.facts.shape("v1") == ["N", 4] and len(runs) == 2  # the live facts re-infer after the edits


def test_constants_and_inputs_are_told_without_inference(monkeypatch):
    import fuser.facts

    monkeypatch.setattr(fuser.facts, "infer_model", lambda model: pytest.fail("inference ran"))
    nodes = [helper.make_node("Constant", [], ["c"], value_ints=[1, 2, 3]),
             helper.make_node("Constant", [], ["h"], value=onnx.numpy_helper.from_array(np.zeros((2, 5), np.float16))),
             helper.make_node("Cast", ["c"], ["y"], to=F)]
    g = Graph(from_proto(make_model(nodes, [("x", T.INT32, ["B"])], [("y", F, [3])], [("w", np.ones((7, 2), np.int8))])))
    assert (g.facts.shape("c"), g.facts.elem_type("c")) == ([3], T.INT64)
    assert (g.facts.shape("h"), g.facts.elem_type("h")) == ([2, 5], T.FLOAT16)
    assert (g.facts.shape("w"), g.facts.elem_type("w")) == ([7, 2], T.INT8)
    assert g.facts.elem_type("x") == T.INT32 and g.facts.elem_type("y", infer=False) is None


def test_schemas_are_read_at_the_graphs_opset():
    for opset, since in ((13, 13), (18, 18)):
        g = Graph(from_proto(make_model([helper.make_node("ReduceMean", ["x"], ["y"])], [("x", F, [2, 3])],
                                        [("y", F, [1, 1])], opset=opset)))
        node = g.node(g.nodes_of_type("ReduceMean")[0])
        assert g.facts.schema(node).since_version == since and g.facts.signature(node).since == since
        assert g.facts.attribute_default(node, "keepdims") == 1
