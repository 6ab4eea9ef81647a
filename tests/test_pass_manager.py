"""The pass manager: fixed point, iteration cap, statistics, preconditions; and Graph write-back."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper

import fuser
from fuser.errors import ModelError
from fuser.graph import Graph
from fuser.model_io import from_proto
from fuser.pass_manager import PassResult

from builders import make_model, ops, run

F = T.FLOAT


def relu_chain(n):
    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"], name=f"relu{i}") for i in range(n)]
    return make_model(nodes, [("v0", F, [2])], [(f"v{n}", F, [2])])


class RemoveOneRelu:
    """Removes one Relu per run (Relu(Relu(x)) == Relu(x)): reaches a fixed point after n - 1 runs."""

    name = "remove-one-relu"
    requires = ()

    def run(self, graph, ctx):
        for nid in graph.nodes_of_type("Relu"):
            node = graph.node(nid)
            src = graph.producer(node.input[0])
            if src and graph.node(src[0]).op_type == "Relu":
                graph.remove_node(nid)
                graph.substitute(node.output[0], node.input[0])
                return PassResult(True)
        return PassResult(False)


class AlwaysModified:
    name = "always"
    requires = ()

    def run(self, graph, ctx):
        return PassResult(True)


class NeedsCheckerValid:
    name = "picky"
    requires = ("checker-valid",)

    def run(self, graph, ctx):
        return PassResult(False)


def test_runs_to_a_fixed_point_and_counts():
    model = relu_chain(4)
    optimized, report = fuser.optimize(model, passes=[RemoveOneRelu()])
    assert ops(optimized) == ["Relu"]
    stats = report.passes["remove-one-relu"]
    assert (stats.runs, stats.modified) == (4, 3)  # three removals, then one run that changed nothing
    assert report.iterations == 4 and report.reached_fixed_point
    x = np.array([-1.0, 2.0], np.float32)
    assert np.array_equal(run(optimized, {"v0": x})[0], run(model, {"v0": x})[0])


def test_iteration_cap_stops_and_says_so():
    _, report = fuser.optimize(relu_chain(2), passes=[AlwaysModified()], max_iterations=3)
    assert report.iterations == 3 and not report.reached_fixed_point
    assert report.passes["always"].runs == 3
    assert any("fixed point" in n for n in report.notes)


def test_precondition_is_checked_before_the_pass_runs():
    model = relu_chain(2)
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ModelError, match="picky.*checker-valid"):
        fuser.optimize(model, passes=[NeedsCheckerValid()])


def test_rule_statistics_are_reported():
    _, report = fuser.optimize(relu_chain(3))
    assert set(report.rules) >= {"hardswish", "hardsigmoid"}
    assert report.rules["hardswish"].hits == 0
    assert "fusion" in report.passes and "dead-code" in report.passes


def test_input_proto_is_never_modified():
    model = relu_chain(4)
    before = model.SerializeToString()
    fuser.optimize(model, passes=[RemoveOneRelu()])
    assert model.SerializeToString() == before


def test_graph_view_answers_producer_consumer_and_constant_queries():
    nodes = [helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.float32(2.0))),
             helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
             helper.make_node("Relu", ["m"], ["y"], name="relu"), helper.make_node("Neg", ["m"], ["z"], name="neg")]
    g = Graph(from_proto(make_model(nodes, [("x", F, [2])], [("y", F, [2]), ("z", F, [2])])))
    mul = g.producer("m")[0]
    assert g.node(mul).name == "mul"
    assert sorted(g.node(n).name for n, _ in g.uses("m")) == ["neg", "relu"]
    assert g.is_constant("c") and float(g.constant("c")) == 2.0 and not g.is_constant("x")
    assert g.is_graph_output("y") and not g.is_graph_output("m")
    assert g.nx.number_of_nodes() == 4 and g.nx.number_of_edges() == 3
    assert g.reaches("x", "z") and not g.reaches("y", "z")
    order = [g.node(n).op_type for n in g.topological_order()]
    assert order.index("Mul") < order.index("Relu")


def test_unsorted_input_is_sorted_on_write_back():
    nodes = [helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Neg", ["x"], ["a"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2])],
                              [helper.make_tensor_value_info("y", F, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    out = Graph(from_proto(model)).to_model()
    assert ops(out) == ["Neg", "Relu"]
    onnx.checker.check_model(out, full_check=True)


def test_values_read_only_inside_a_subgraph_are_kept():
    """An If branch reads 'hidden' by name: dead-code elimination and write-back must keep it."""
    branch = helper.make_graph([helper.make_node("Identity", ["hidden"], ["out"])], "then", [],
                               [helper.make_tensor_value_info("out", F, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["w"], ["out2"])], "else", [],
                              [helper.make_tensor_value_info("out2", F, [2])])
    nodes = [helper.make_node("Neg", ["x"], ["hidden"], name="producer"),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)]
    model = make_model(nodes, [("x", F, [2]), ("cond", T.BOOL, [])], [("y", F, [2])],
                       [("w", np.ones(2, np.float32))])
    g = Graph(from_proto(model))
    assert g.read_by_subgraph("hidden") and g.read_by_subgraph("w")
    optimized, _ = fuser.optimize(model)
    onnx.checker.check_model(optimized, full_check=True)
    assert "Neg" in ops(optimized) and [t.name for t in optimized.graph.initializer] == ["w"]
    feeds = {"x": np.array([1.0, -2.0], np.float32), "cond": np.array(True)}
    np.testing.assert_array_equal(run(optimized, feeds)[0], [-1.0, 2.0])
