"""Remove nodes whose outputs nobody uses, and initializers nobody reads.

Rewrites leave behind what fed only the nodes they replaced (the Constant node of an eps, a Shape
that computed a folded size); this pass sweeps them, walking backwards from the dead so a chain of
dead nodes goes in one run.
"""

from __future__ import annotations

from fuser.graph import Graph
from fuser.pass_manager import PassResult


class DeadCodeElimination:
    name = "dead-code"
    requires = ()

    def run(self, graph: Graph, ctx) -> PassResult:
        dead = [nid for nid in graph.nodes if self._is_dead(graph, nid)]
        removed = 0
        while dead:
            nid = dead.pop()
            if nid not in graph or not self._is_dead(graph, nid):
                continue
            inputs = [v for v in graph.node(nid).input if v]
            graph.remove_node(nid)
            removed += 1
            for value in inputs:
                use = graph.producer(value)
                if use is not None and self._is_dead(graph, use[0]):
                    dead.append(use[0])
        unused = [name for name in graph.initializers
                  if not graph.uses(name) and not graph.is_graph_output(name) and name not in graph.input_names
                  and not graph.read_by_subgraph(name)]
        for name in unused:
            graph.remove_initializer(name)
        return PassResult(bool(removed or unused))

    @staticmethod
    def _is_dead(graph: Graph, nid: int) -> bool:
        node = graph.node(nid)
        if node.domain not in ("", "ai.onnx"):
            return False  # a custom op may have effects we cannot see
        return all(not v or (not graph.uses(v) and not graph.is_graph_output(v) and not graph.read_by_subgraph(v))
                   for v in node.output)
