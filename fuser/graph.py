"""The graph every pass and rule works on: ONNX nodes with producer/consumer indices and a networkx view.

Nodes are ONNX `NodeProto`s under integer ids; edges are tensors, from a producer's output slot to a
consumer's input slot. Plain dicts answer the questions rules ask millions of times (who produces this
value, who consumes it, is it constant) in O(1); the networkx `MultiDiGraph` view (`Graph.nx`) is
built from them when a graph algorithm is wanted (topological order when the order was broken, cycle
reports, reachability, dominance) and dropped on the next edit, so matching stays linear in graph size.

Constants are initializers or `Constant` nodes. Their numpy values are read lazily: an initializer
stored as external data is read from disk only when a rule asks for its value, so a model over 2 GB
is optimized without its weights in memory. `to_model()` writes the edits back to a new `ModelProto`
(the input proto is never modified).

Every edit bumps `version`; `graph.facts` (fuser/facts.py), the one source of shapes, element types
and schemas, re-infers on the first question after one. Code that edits the protos directly (pinning
an input's dims, retyping value_info) calls `touch()`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import networkx as nx
import numpy as np
import onnx
import onnx.numpy_helper
from onnx import helper

from .errors import ModelError
from .facts import GraphFacts
from .model_io import LoadedModel, external_info, resolve_location, uses_external_data

Use = tuple[int, int]  # (node id, input or output slot)


class Graph:
    """Mutable view of one ONNX main graph (subgraphs of If/Loop are kept opaque, as node attributes)."""

    def __init__(self, loaded: LoadedModel):
        # A copy keeps the caller's proto untouched; external weights are only references in it.
        model = onnx.ModelProto()
        model.CopyFrom(loaded.model)
        _normalize_default_domain(model)
        self.loaded = loaded
        self.model = model
        g = model.graph
        self.nodes: dict[int, onnx.NodeProto] = {}
        self.order: dict[int, tuple[float, int]] = {}  # sort key: (position of the node it replaced, seq)
        self.producers: dict[str, Use] = {}
        self.consumers: dict[str, list[Use]] = {}
        self.by_op: dict[str, set[int]] = {}
        self.implicit_uses: dict[str, set[int]] = {}  # outer values read by name inside If/Loop/Scan bodies
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.input_names: list[str] = [v.name for v in g.input]
        self.output_names: list[str] = [v.name for v in g.output]
        self._graph_inputs = set(self.input_names)
        # Before IR 4 every initializer had to be listed as an input too; those are constants, not inputs.
        self._legacy_ir = model.ir_version < 4
        self._initializer_inputs = self._graph_inputs & set(self.initializers)
        self._graph_outputs = set(self.output_names)
        self._const_cache: dict[str, np.ndarray] = {}
        self._ids = itertools.count()
        self._seq = itertools.count()
        self._names: set[str] = set()
        self._nx: nx.MultiDiGraph | None = None
        self._node_names: set[str] | None = None
        self.version = 0  # bumped by every edit: what `facts` was inferred from is then out of date
        self.opsets: dict[str, int] = {imp.domain or "": imp.version for imp in model.opset_import}
        for position, node in enumerate(g.node):
            self._index_node(next(self._ids), node, (float(position), 0))
        self._check_unique_values()
        self._order_valid = False  # True while the order keys are known to be a topological order
        self.topological_order()
        self.facts = GraphFacts(self)

    # ---------------------------------------------------------------- queries
    def node(self, nid: int) -> onnx.NodeProto:
        return self.nodes[nid]

    def __contains__(self, nid: int) -> bool:
        return nid in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def producer(self, value: str) -> Use | None:
        return self.producers.get(value)

    def producer_node(self, value: str) -> onnx.NodeProto | None:
        use = self.producers.get(value)
        return self.nodes[use[0]] if use else None

    def uses(self, value: str) -> list[Use]:
        return self.consumers.get(value, [])

    def read_by_subgraph(self, value: str) -> bool:
        """Is `value` read by name inside a subgraph (an implicit use the consumer index cannot see)?"""
        return bool(self.implicit_uses.get(value))

    def subgraph_refs(self) -> set[str]:
        return {v for v, users in self.implicit_uses.items() if users}

    def is_graph_output(self, value: str) -> bool:
        return value in self._graph_outputs

    def nodes_of_type(self, op_type: str) -> list[int]:
        """Ids of the nodes of one op type, in graph order (a snapshot: safe to edit while iterating)."""
        return sorted(self.by_op.get(op_type, ()), key=self.order.__getitem__)

    def opset(self, domain: str = "") -> int:
        if domain in ("", "ai.onnx"):
            return self.opsets.get("", self.opsets.get("ai.onnx", 1))
        return self.opsets.get(domain, 0)

    def is_constant(self, value: str) -> bool:
        if value in self.initializers:
            # an initializer that is also an input can be overridden at run time (IR >= 4)
            return self._legacy_ir or value not in self._graph_inputs
        use = self.producers.get(value)
        return use is not None and self.nodes[use[0]].op_type == "Constant" and not self.nodes[use[0]].domain

    def constant(self, value: str) -> np.ndarray | None:
        """The numpy value of a constant value, read (from external data too) on first request."""
        if not value or not self.is_constant(value):
            return None
        cached = self._const_cache.get(value)
        if cached is not None:
            return cached
        if value in self.initializers:
            array = self._read_tensor(self.initializers[value])
        else:
            array = _constant_node_value(self.nodes[self.producers[value][0]], self)
        if array is not None:
            self._const_cache[value] = array
        return array

    def constant_nbytes(self, value: str) -> int:
        """Size of a constant without reading it (for budgets)."""
        t = self.initializers.get(value)
        if t is None:
            arr = self.constant(value)
            return 0 if arr is None else arr.nbytes
        n = int(np.prod(t.dims)) if t.dims else 1
        return n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize

    @property
    def nx(self) -> nx.MultiDiGraph:
        """networkx view: node id -> {'node': NodeProto}; edges carry value name and both slots."""
        if self._nx is None:
            view = nx.MultiDiGraph()
            view.add_nodes_from((nid, {"node": n}) for nid, n in self.nodes.items())
            view.add_edges_from(
                (self.producers[v][0], nid, {"value": v, "src_slot": self.producers[v][1], "dst_slot": slot})
                for v, uses in self.consumers.items() if v in self.producers for nid, slot in uses)
            self._nx = view
        return self._nx

    def topological_order(self) -> list[int]:
        """Node ids in a topological order (the original order where edits kept it valid)."""
        order = sorted(self.nodes, key=self.order.__getitem__)
        if self._order_valid or self._is_sorted(order):
            self._order_valid = True
            return order
        order = self._sort_or_report_cycle()
        self._order_valid = True
        return order

    def reaches(self, src_value: str, dst_value: str) -> bool:
        """Does `dst_value` depend on `src_value`?"""
        a, b = self.producers.get(src_value), self.producers.get(dst_value)
        if b is None:
            return False
        if a is None:  # a graph input or constant: does any consumer reach dst?
            return any(u == b[0] or nx.has_path(self.nx, u, b[0]) for u, _ in self.uses(src_value))
        return nx.has_path(self.nx, a[0], b[0])

    # ------------------------------------------------------------------ edits
    def fresh_name(self, hint: str) -> str:
        name, k = hint, 0
        while name in self._names or name in self.initializers or name in self._graph_inputs:
            k += 1
            name = f"{hint}_{k}"
        self._names.add(name)
        return name

    def add_node(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, *,
                 name: str | None = None, domain: str = "", before: int | None = None,
                 doc: str = "", **attrs) -> int:
        """Add a node; `before` is the id of the node it is placed ahead of in graph order."""
        if isinstance(outputs, int):
            base = name or op_type
            outputs = [self.fresh_name(f"{base}_out{i}" if outputs > 1 else f"{base}_out") for i in range(outputs)]
        self._names.update(outputs)
        node = helper.make_node(op_type, list(inputs), list(outputs),
                                name=self.fresh_node_name(name or op_type), domain=domain or None,
                                doc_string=doc or None, **attrs)
        key = self.order[before][0] if before is not None else float("inf")
        nid = next(self._ids)
        self._index_node(nid, node, (key, next(self._seq)))
        self._order_valid = False
        return nid

    def fresh_node_name(self, hint: str) -> str:
        if self._node_names is None:  # built on the first new node: most runs never need it
            self._node_names = {n.name for n in self.nodes.values() if n.name}
        name, k = hint, 0
        while name in self._node_names:
            k += 1
            name = f"{hint}_{k}"
        self._node_names.add(name)
        return name

    def add_initializer(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh_name(hint)
        self.set_initializer(name, array)
        return name

    def remove_node(self, nid: int) -> onnx.NodeProto:
        node = self.nodes.pop(nid)
        self.order.pop(nid)
        self.by_op[node.op_type].discard(nid)
        for slot, value in enumerate(node.input):
            uses = self.consumers.get(value)
            if uses:
                uses.remove((nid, slot))
                if not uses:
                    del self.consumers[value]
        for value in node.output:
            if self.producers.get(value, (None,))[0] == nid:
                del self.producers[value]
                self._const_cache.pop(value, None)
        for value in _outer_names(node):
            self.implicit_uses.get(value, set()).discard(nid)
        self._nx = None
        self.version += 1
        return node

    def set_input(self, nid: int, slot: int, value: str) -> None:
        node = self.nodes[nid]
        old = node.input[slot]
        uses = self.consumers.get(old)
        if uses:
            uses.remove((nid, slot))
            if not uses:
                del self.consumers[old]
        node.input[slot] = value
        if value:
            self.consumers.setdefault(value, []).append((nid, slot))
        self._nx = None
        self._order_valid = False
        self.version += 1

    def replace_all_uses(self, old: str, new: str) -> None:
        """Point every consumer of `old` at `new`; a graph output named `old` is renamed or bridged."""
        for nid, slot in list(self.uses(old)):
            self.set_input(nid, slot, new)
        if old in self._graph_outputs:
            self._keep_output_name(old, new)

    def substitute(self, old: str, new: str) -> None:
        """Make `new` take the place of `old` (whose producer is gone), keeping the name `old` if possible.

        Keeping names keeps the value_info, graph output names and downstream references unchanged.
        """
        if self._renamable(old, new) and new not in self._graph_inputs:
            self.rename(new, old)
        else:
            self.replace_all_uses(old, new)

    def _keep_output_name(self, old: str, new: str) -> None:
        """Graph outputs keep their names: rename `new`'s producer output, or bridge with Identity."""
        if self._renamable(old, new):
            self.rename(new, old)
        else:
            self.add_node("Identity", [new], [old], name=f"{old}_identity")

    def _renamable(self, old: str, new: str) -> bool:
        return old not in self.producers and new in self.producers and new not in self._graph_outputs

    def rename(self, value: str, name: str) -> None:
        """Give the node output `value` the name `name` (unused so far): its producer's slot and every use."""
        nid, slot = self.producers.pop(value)
        for cnid, cslot in list(self.uses(value)):
            self.set_input(cnid, cslot, name)
        self.nodes[nid].output[slot] = name
        self.producers[name] = (nid, slot)
        self._names.add(name)
        self._nx = None
        self.version += 1

    def set_initializer(self, name: str, array: np.ndarray) -> None:
        """Make `name` an initializer holding `array`, keeping the name (its producer must be gone)."""
        self.initializers[name] = onnx.numpy_helper.from_array(np.asarray(array), name)
        self._const_cache[name] = np.asarray(array)
        self._names.add(name)
        self.version += 1

    def remove_initializer(self, name: str) -> None:
        self.initializers.pop(name, None)
        self._const_cache.pop(name, None)
        self.version += 1

    def set_opset(self, version: int, domain: str = "") -> None:
        self.opsets[domain] = version
        self.version += 1

    def touch(self) -> None:
        """Say that the protos were edited directly (input dims pinned, value types changed)."""
        self.version += 1

    # ------------------------------------------------------------ write-back
    def to_model(self) -> onnx.ModelProto:
        """A new, topologically sorted ModelProto holding the graph as edited."""
        out = onnx.ModelProto()
        src = self.model
        for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
            setattr(out, field, getattr(src, field))
        out.metadata_props.extend(src.metadata_props)
        out.functions.extend(src.functions)
        out.training_info.extend(src.training_info)
        for domain, version in sorted(self.opsets.items()):
            out.opset_import.add(domain=domain, version=version)
        # An upgraded opset may need a newer IR; IR < 4 models are written as IR 4 with their weights
        # as plain initializers rather than inputs (new weights could not be written otherwise).
        needed = helper.find_min_ir_version_for(list(out.opset_import), ignore_unknown=True)
        out.ir_version = max(out.ir_version, needed, 4 if self._legacy_ir else 0)
        g, sg = out.graph, src.graph
        g.name, g.doc_string = sg.name, sg.doc_string
        g.metadata_props.extend(sg.metadata_props)
        g.node.extend(self.nodes[nid] for nid in self.topological_order())
        used = self.consumers.keys() | self._graph_outputs | self.subgraph_refs()
        overridable = set() if self._legacy_ir else self._initializer_inputs
        kept = {name for name in self.initializers if name in used or name in overridable}
        g.initializer.extend(self.initializers[name] for name in self.initializers if name in kept)
        g.sparse_initializer.extend(sg.sparse_initializer)
        g.input.extend(v for v in sg.input if v.name not in self._initializer_inputs
                       or (v.name in kept and not self._legacy_ir))
        g.output.extend(sg.output)
        live = set(self.producers)
        g.value_info.extend(v for v in sg.value_info if v.name in live)
        g.quantization_annotation.extend(sg.quantization_annotation)
        return out

    def skeleton(self, small_bytes: int = 4096) -> onnx.ModelProto:
        """The graph for shape inference: nodes, inputs, outputs and small constants; weights and Constant
        values larger than `small_bytes` (or stored externally) appear as typed inputs, so nothing big is
        copied or read. No value_info: every shape is derived from the inputs (exporters' value_info can
        be stale)."""
        src = self.model.graph
        inputs = list(src.input)
        declared = {v.name for v in inputs}
        small = []
        for name, t in self.initializers.items():
            if not self.uses(name) and not self.is_graph_output(name):
                continue
            if uses_external_data(t) or self.constant_nbytes(name) > small_bytes:
                if name not in declared:
                    inputs.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
            else:
                small.append(t)
        nodes = []
        for nid in self.topological_order():
            node = self.nodes[nid]
            big = _big_constant(node, small_bytes)
            if big is None:
                nodes.append(node)
            else:
                inputs.append(helper.make_tensor_value_info(node.output[0], big.data_type, list(big.dims)))
        g = helper.make_graph(nodes, src.name or "graph", inputs, list(src.output), small)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(self.opsets.items())])
        model.ir_version = max(self.model.ir_version, 4)
        model.functions.extend(self.model.functions)
        return model

    # -------------------------------------------------------------- internals
    def _index_node(self, nid: int, node: onnx.NodeProto, key: tuple[float, int]) -> None:
        self.nodes[nid] = node
        self.order[nid] = key
        self.by_op.setdefault(node.op_type, set()).add(nid)
        consumers, producers = self.consumers, self.producers
        for slot, value in enumerate(list(node.input)):
            if value:
                uses = consumers.get(value)
                if uses is None:
                    consumers[value] = [(nid, slot)]
                else:
                    uses.append((nid, slot))
        for slot, value in enumerate(list(node.output)):
            if value:
                producers[value] = (nid, slot)
        for value in _outer_names(node):
            self.implicit_uses.setdefault(value, set()).add(nid)
        self._nx = None
        self.version += 1

    def _check_unique_values(self) -> None:
        produced = sum(1 for n in self.nodes.values() for v in n.output if v)
        if produced != len(self.producers):
            seen: dict[str, str] = {}
            for n in self.nodes.values():
                for v in n.output:
                    if v and v in seen:
                        raise ModelError(f"value '{v}' is produced twice (by '{seen[v]}' and '{n.name}'): "
                                         "ONNX values must have exactly one producer")
                    seen[v] = n.name
        for v in self.producers:
            if v in self.initializers or v in self._graph_inputs:
                raise ModelError(f"value '{v}' is produced by node '{self.producer_node(v).name}' but is also "
                                 "a graph input or initializer: duplicate value names")
        if len(self._graph_outputs) != len(self.output_names):
            dup = next(n for n in self.output_names if self.output_names.count(n) > 1)
            raise ModelError(f"graph output '{dup}' is listed twice: duplicate output names")
        self._names.update(self.initializers, self._graph_inputs, self.producers)

    def _is_sorted(self, order: Iterable[int]) -> bool:
        seen: set[str] = set(self.initializers) | self._graph_inputs | {""}
        for nid in order:
            node = self.nodes[nid]
            for v in node.input:
                if v not in seen and v in self.producers:
                    return False
            seen.update(node.output)
        return True

    def _sort_or_report_cycle(self) -> list[int]:
        try:
            order = list(nx.lexicographical_topological_sort(self.nx, key=self.order.__getitem__))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(self.nx)
            names = " -> ".join(self.nodes[u].name or self.nodes[u].op_type for u, *_ in cycle)
            raise ModelError(f"the graph has a cycle: {names}; ONNX graphs must be acyclic") from None
        for position, nid in enumerate(order):
            self.order[nid] = (float(position), 0)
        return order

    def _read_tensor(self, tensor: onnx.TensorProto) -> np.ndarray:
        if uses_external_data(tensor):
            location = external_info(tensor).get("location", "")
            resolve_location(self.loaded.base_dir, location, tensor.name)  # refuses escapes
            return onnx.numpy_helper.to_array(tensor, base_dir=str(self.loaded.base_dir))
        return onnx.numpy_helper.to_array(tensor)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies a node holds as attributes (If branches, Loop and Scan bodies)."""
    found: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads without defining them, through any depth of nested bodies: values of the
    scopes around it. Iterative: a model may nest bodies deeper than Python's recursion limit."""
    order: list[tuple[onnx.GraphProto, int]] = []  # every nested body with its parent's index, parents first
    stack = [(graph, -1)]
    while stack:
        g, parent = stack.pop()
        order.append((g, parent))
        stack.extend((sub, len(order) - 1) for n in g.node for sub in subgraphs(n))
    nested: list[set[str]] = [set() for _ in order]  # what each body's children read from outside them
    outer: set[str] = set()
    for k in range(len(order) - 1, -1, -1):  # children before parents
        g, parent = order[k]
        defined = {v.name for v in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
        defined |= {t.values.name for t in g.sparse_initializer}
        used = {v for n in g.node for v in n.input if v} | {v.name for v in g.output} | nested[k]
        outer = used - defined
        if parent >= 0:
            nested[parent] |= outer
    return outer


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read without defining them: values of the enclosing graph."""
    bodies = subgraphs(node)
    return set().union(*map(outer_names, bodies)) if bodies else set()


def all_nodes(model: onnx.ModelProto):
    """Every node of the model: main graph, local functions, and the bodies nested in either (iterative)."""
    stack = [list(model.graph.node)] + [list(f.node) for f in model.functions]
    while stack:
        for node in stack.pop():
            yield node
            bodies = subgraphs(node)
            if bodies:
                stack.extend(list(b.node) for b in bodies)


def _normalize_default_domain(model: onnx.ModelProto) -> None:
    """`ai.onnx` is another spelling of the default domain: make it "" everywhere (imports of the model
    and of its functions, node domains), so one import is written back and rules match its nodes."""
    for imports in [model.opset_import] + [f.opset_import for f in model.functions]:
        spelled = [imp for imp in imports if imp.domain == "ai.onnx"]
        for imp in spelled:
            if any(other.domain == "" for other in imports):
                imports.remove(imp)
            else:
                imp.domain = ""
    for node in all_nodes(model):
        if node.domain == "ai.onnx":
            node.domain = ""


def _big_constant(node: onnx.NodeProto, small_bytes: int) -> onnx.TensorProto | None:
    """The tensor of a Constant node holding more than `small_bytes` (or external data), else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or not node.output or not node.output[0]:
        return None
    t = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
    if t is None or not t.data_type:
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:  # a type numpy has no dtype for: its size cannot be told cheaply, leave the node
        return None
    return t if uses_external_data(t) or int(np.prod(t.dims, dtype=np.int64)) * itemsize > small_bytes else None


def _constant_node_value(node: onnx.NodeProto, graph: Graph) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return graph._read_tensor(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The Python value of a node attribute, or `default` when absent."""
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default
