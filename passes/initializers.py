"""Merge initializers with identical contents (same type, dims and bytes) into one.

    W_a = W_b = [0.1, 0.2, ...]   ->   every user of W_b reads W_a

Exporters repeat constants (one copy of the same scale, mask or position table per layer); after
merging, CSE can merge the nodes that read them. Contents are compared by SHA-256 of their bytes, read
only for initializers that share a type and dims with another. Never merged: initializers that are
also graph inputs (a caller may override them), graph outputs, and names read by subgraphs.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import defaultdict

import onnx
import onnx.numpy_helper

from fuser.graph import Graph
from fuser.model_io import external_ends, external_sha256, uses_external_data
from fuser.pass_manager import PassResult

from .sections import CleanupSection

_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {name: (tensor, digest)}


def _digest(graph: Graph, name: str) -> str | None:
    t = graph.initializers[name]
    cache = _DIGESTS.setdefault(graph, {})
    hit = cache.get(name)
    if hit is not None and hit[0] is t:  # the same proto object (held here, so its id is never reused)
        return hit[1]
    digest = _content_digest(graph, name, t)
    cache[name] = (t, digest)
    return digest


def _content_digest(graph: Graph, name: str, t: onnx.TensorProto) -> str | None:
    if uses_external_data(t):  # streamed from disk: never held in memory (models over 2 GB)
        return external_sha256(graph.loaded, t)
    if t.HasField("raw_data"):
        data = t.raw_data
    elif t.data_type == onnx.TensorProto.STRING:
        data = b"\0".join(len(s).to_bytes(8, "little") + s for s in t.string_data)
    else:
        data = onnx.numpy_helper.to_array(t).tobytes()
    return None if data is None else hashlib.sha256(data).hexdigest()


def _fingerprint(graph: Graph, name: str) -> bytes:
    """The first and last 256 bytes: tensors that differ there cannot be equal, so only real
    candidates are hashed in full (BERT-base's 48 equal-shaped 768x768 weights all differ at once)."""
    t = graph.initializers[name]
    if uses_external_data(t):
        return external_ends(graph.loaded, t, 256)
    if not t.HasField("raw_data"):
        return b""  # no cheap view of the bytes: hash in full
    return t.raw_data[:256] + t.raw_data[-256:]


def _split_by_fingerprint(graph: Graph, groups):
    for names in groups:
        if len(names) < 2:
            continue
        by_print: dict[bytes, list[str]] = defaultdict(list)
        for name in names:
            by_print[_fingerprint(graph, name)].append(name)
        yield from by_print.values()


class InitializerDedup:
    name = "dedup-initializers"
    requires = ()

    def run(self, graph: Graph, ctx) -> PassResult:
        protected = graph.subgraph_refs() | set(graph.input_names)
        cache = _DIGESTS.get(graph)
        if cache:  # forget tensors that were removed or replaced
            _DIGESTS[graph] = {n: hit for n, hit in cache.items() if graph.initializers.get(n) is hit[0]}
        by_type: dict[tuple, list[str]] = defaultdict(list)
        for name, t in graph.initializers.items():
            if graph.is_constant(name) and (graph.uses(name) or graph.is_graph_output(name)):
                by_type[(t.data_type, tuple(t.dims))].append(name)
        merged = saved = 0
        for names in _split_by_fingerprint(graph, by_type.values()):
            if len(names) < 2:
                continue
            first: dict[str, str] = {}
            for name in names:
                digest = _digest(graph, name)
                if digest is None:
                    continue
                kept = first.setdefault(digest, name)
                if kept == name or name in protected or graph.is_graph_output(name):
                    continue
                saved += graph.constant_nbytes(name)
                graph.replace_all_uses(name, kept)
                graph.remove_initializer(name)
                merged += 1
        if merged:
            section = ctx.report.section(CleanupSection)
            section.initializers_merged += merged
            section.initializer_bytes_saved += saved
        return PassResult(merged > 0)
