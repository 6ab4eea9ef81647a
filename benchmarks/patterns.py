"""Count fusion-family instances in an ONNX graph by its structure, independently of fuser's matcher.

    from patterns import count_patterns
    counts = count_patterns(onnx.load(path, load_external_data=False))

Used by compare_peers.py (what each tool left decomposed) and rule_coverage.py (instances found in the input,
instances left in fuser's output). The walks here are deliberately simple and written from the exporters' spellings
in shared/FINDINGS.md, not from fuser's rules/, so that they are an independent check:

    ln_decomposed       Sqrt whose input is Add(ReduceMean(Pow(d, 2) | Mul(d, d)), eps) with d = Sub(x, ReduceMean(x)),
                        Casts skipped anywhere on the chain (the fp16 export computes the statistics in float64);
                        also without the Add (a tool that drops a tiny eps as "Add 0")
    rms_decomposed      the same Sqrt anchor where the squared value is not a centered Sub (RMSNorm)
    hswish_hsig_mul     HardSigmoid(alpha 1/6, beta 0.5) whose output feeds Mul(x, .) with x the HardSigmoid's input
    hswish_clip         Add(x, 3) -> relu6 -> (Div 6 | Mul 1/6) and Mul(x, .), in either order
    hsigmoid_clip       Add(x, 3) -> relu6 -> (Div 6 | Mul 1/6) not multiplied by x afterwards
                        (relu6 = Clip(0, 6) | Min(Relu(.), 6) | Min(Max(., 0), 6), bounds as inputs or attributes)
    bn                  BatchNormalization nodes;  bn_after_conv: those whose input comes from a Conv/ConvTranspose
    conv_affine         Conv/ConvTranspose whose only consumer is Mul/Add (either operand) or Div/Sub (constant second)
                        with a constant that broadcasts over the output channels only ([C,1,1], [1,C,1,1], scalar)
    canonical ops       LayerNormalization, HardSwish, HardSigmoid (hsigmoid_native: not part of a hswish pair),
                        BatchNormalization, Pow, Shape
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

SIXTH = 1.0 / 6.0


class GraphView:
    """Producers, consumers and small constant values of a ModelProto's main graph (external data never read)."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.nodes = list(graph.node)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_outputs = {o.name for o in graph.output}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        self._cache: dict[str, np.ndarray | None] = {}

    # constants ---------------------------------------------------------------------------------------------
    def is_const(self, value: str) -> bool:
        if value in self.initializers:
            return True
        node = self.producer.get(value)
        return node is not None and node.op_type == "Constant"

    def const_shape(self, value: str) -> tuple[int, ...] | None:
        if value in self.initializers:
            return tuple(self.initializers[value].dims)
        array = self.const(value)
        return None if array is None else tuple(array.shape)

    def const(self, value: str, max_elements: int = 4096) -> np.ndarray | None:
        """The constant's value if it is small and stored inline; None otherwise."""
        if value in self._cache:
            return self._cache[value]
        array = None
        tensor = self.initializers.get(value)
        if tensor is None:
            node = self.producer.get(value)
            if node is not None and node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        tensor = attr.t
                    elif attr.name in ("value_float", "value_int"):
                        array = np.array(onnx.helper.get_attribute_value(attr))
                    elif attr.name in ("value_floats", "value_ints"):
                        array = np.array(list(onnx.helper.get_attribute_value(attr)))
        if tensor is not None and array is None:
            external = tensor.data_location == onnx.TensorProto.EXTERNAL
            if not external and int(np.prod(tensor.dims, dtype=np.int64)) <= max_elements:
                try:
                    array = numpy_helper.to_array(tensor)
                except Exception:  # noqa: BLE001 - an odd tensor is simply "not a known constant"
                    array = None
        self._cache[value] = array
        return array

    def scalar(self, value: str) -> float | None:
        array = self.const(value, max_elements=1)
        if array is None or array.size != 1:
            return None
        return float(np.asarray(array, dtype=np.float64).reshape(-1)[0])

    # walking -----------------------------------------------------------------------------------------------
    def prod(self, value: str, skip_cast: bool = True) -> onnx.NodeProto | None:
        node = self.producer.get(value)
        while skip_cast and node is not None and node.op_type == "Cast":
            node = self.producer.get(node.input[0])
        return node

    def source(self, value: str) -> str:
        """The value behind any Casts."""
        node = self.producer.get(value)
        while node is not None and node.op_type == "Cast":
            value = node.input[0]
            node = self.producer.get(value)
        return value

    def uses(self, value: str, skip_cast: bool = True) -> list[onnx.NodeProto]:
        out = []
        for node in self.consumers.get(value, []):
            if skip_cast and node.op_type == "Cast":
                out.extend(self.uses(node.output[0], True))
            else:
                out.append(node)
        return out


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _close(value: float | None, target: float, tol: float = 1e-3) -> bool:
    return value is not None and abs(value - target) <= tol * max(1.0, abs(target))


def _other(node: onnx.NodeProto, value: str) -> str | None:
    """The other input of a binary node, given one of them."""
    ins = list(node.input)
    if len(ins) != 2 or value not in ins:
        return None
    return ins[1] if ins[0] == value else ins[0]


# LayerNorm -----------------------------------------------------------------------------------------------------
def _layernorm_anchor(g: GraphView, sqrt: onnx.NodeProto) -> str | None:
    """'ln' / 'rms' when the Sqrt is the anchor of a decomposed (RMS)Norm, else None."""
    add = g.prod(sqrt.input[0])
    if add is None:
        return None
    var = None
    no_eps = add.op_type == "ReduceMean"
    if no_eps:  # eps removed (onnxscript's add_0 rule drops Add(var, 1e-12))
        var = add
    elif add.op_type == "Add":
        for a, b in (add.input, reversed(add.input)):
            node = g.prod(a)
            if node is not None and node.op_type == "ReduceMean" and g.scalar(g.source(b)) is not None:
                var = node
    if var is None:
        return None
    square = g.prod(var.input[0])
    if square is None:
        return None
    if square.op_type == "Pow" and _close(g.scalar(g.source(square.input[1])), 2.0) or square.op_type == "Mul" and g.source(square.input[0]) == g.source(square.input[1]):
        base = square.input[0]
    else:
        return None
    if not any(n.op_type in ("Div", "Reciprocal", "Mul") for n in g.uses(sqrt.output[0])):
        return None
    sub = g.prod(base)
    if sub is not None and sub.op_type == "Sub":
        mean = g.prod(sub.input[1])
        if mean is not None and mean.op_type == "ReduceMean" and g.source(mean.input[0]) == g.source(sub.input[0]):
            return "ln-noeps" if no_eps else "ln"
    return "rms"


# hswish / hsigmoid -----------------------------------------------------------------------------------------------
def _relu6_input(g: GraphView, node: onnx.NodeProto) -> str | None:
    """If `node` is the last node of a relu6 (Clip 0..6, Min(Relu, 6), Min(Max(., 0), 6)), its input value."""
    if node.op_type == "Clip":
        if g.opset is not None and g.opset < 11:
            lo, hi = attr(node, "min", None), attr(node, "max", None)
        else:
            lo = g.scalar(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            hi = g.scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return node.input[0] if _close(lo, 0.0) and _close(hi, 6.0) else None
    if node.op_type == "Min" and len(node.input) == 2:
        for a, b in (node.input, reversed(node.input)):
            if not _close(g.scalar(b), 6.0):
                continue
            inner = g.producer.get(a)
            if inner is None:
                continue
            if inner.op_type == "Relu":
                return inner.input[0]
            if inner.op_type == "Max" and len(inner.input) == 2:
                for c, d in (inner.input, reversed(inner.input)):
                    if _close(g.scalar(d), 0.0):
                        return c
    return None


def _is_sixth(g: GraphView, node: onnx.NodeProto, value: str) -> bool:
    """node divides `value` by 6 or multiplies it by 1/6."""
    other = _other(node, value)
    if other is None:
        return False
    if node.op_type == "Div" and node.input[0] == value:
        return _close(g.scalar(other), 6.0)
    if node.op_type == "Mul":
        return _close(g.scalar(other), SIXTH)
    return False


def _hard_chains(g: GraphView) -> tuple[int, int]:
    """(hswish_clip, hsigmoid_clip) instances."""
    hswish = hsigmoid = 0
    for node in g.nodes:
        inner = _relu6_input(g, node)
        if inner is None:
            continue
        add = g.producer.get(inner)
        if add is None or add.op_type != "Add" or len(add.input) != 2:
            continue
        x = None
        for a, b in (add.input, reversed(add.input)):
            if _close(g.scalar(b), 3.0) and not g.is_const(a):
                x = a
        if x is None:
            continue
        r6 = node.output[0]
        kind = None
        for use in g.consumers.get(r6, []):
            after = g.consumers.get(use.output[0], [])
            if _is_sixth(g, use, r6):  # relu6 / 6 first
                gated = [u for u in after if u.op_type == "Mul" and _other(u, use.output[0]) == x]
                kind = "hswish" if gated else "hsigmoid"
            elif (use.op_type == "Mul" and _other(use, r6) == x  # x * relu6 first, then / 6
                  and any(_is_sixth(g, u, use.output[0]) for u in after)):
                kind = "hswish"
            if kind:
                break
        if kind == "hswish":
            hswish += 1
        elif kind == "hsigmoid":
            hsigmoid += 1
    return hswish, hsigmoid


def _hsigmoid_mul_pairs(g: GraphView) -> tuple[int, int]:
    """(HardSigmoid(1/6, 0.5) -> Mul(x, .) pairs, HardSigmoid nodes not in such a pair)."""
    pairs = alone = 0
    for node in g.nodes:
        if node.op_type != "HardSigmoid":
            continue
        alpha, beta = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
        x = node.input[0]
        paired = _close(alpha, SIXTH) and _close(beta, 0.5) and any(
            use.op_type == "Mul" and _other(use, node.output[0]) == x for use in g.consumers.get(node.output[0], []))
        if paired:
            pairs += 1
        else:
            alone += 1
    return pairs, alone


# Conv + BN / affine ----------------------------------------------------------------------------------------------
def _conv_channels(g: GraphView, conv: onnx.NodeProto) -> int | None:
    if len(conv.input) < 2:
        return None
    shape = g.const_shape(conv.input[1])
    if not shape:
        return None
    if conv.op_type == "Conv":
        return shape[0]
    return shape[1] * int(attr(conv, "group", 1))  # ConvTranspose: W is [C_in, C_out/group, ...]


def _per_channel(shape: tuple[int, ...] | None, channels: int | None, rank: int) -> bool:
    if shape is None:
        return False
    if int(np.prod(shape, dtype=np.int64)) == 1:
        return True
    if channels is None:
        return False
    dims = list(shape)
    while dims and dims[0] == 1 and len(dims) > rank - 1:
        dims.pop(0)
    return len(dims) == rank - 1 and dims[0] == channels and all(d == 1 for d in dims[1:])


def _conv_affine(g: GraphView) -> int:
    count = 0
    for conv in g.nodes:
        if conv.op_type not in ("Conv", "ConvTranspose") or len(conv.output) != 1:
            continue
        out = conv.output[0]
        uses = g.consumers.get(out, [])
        if len(uses) != 1 or out in g.graph_outputs:
            continue
        use = uses[0]
        if use.op_type not in ("Mul", "Add", "Div", "Sub") or len(use.input) != 2:
            continue
        other = _other(use, out)
        if other is None or not g.is_const(other):
            continue
        if use.op_type in ("Div", "Sub") and use.input[0] != out:
            continue
        wshape = g.const_shape(conv.input[1]) if len(conv.input) > 1 else None
        rank = len(wshape) if wshape else 4
        if _per_channel(g.const_shape(other), _conv_channels(g, conv), rank):
            count += 1
    return count


def count_patterns(model: onnx.ModelProto) -> dict[str, int]:
    g = GraphView(model)
    ops = Counter(node.op_type for node in g.nodes)
    ln = Counter(_layernorm_anchor(g, n) for n in g.nodes if n.op_type == "Sqrt")
    hsw_clip, hsig_clip = _hard_chains(g)
    pairs, alone = _hsigmoid_mul_pairs(g)
    bn_after_conv = sum(1 for n in g.nodes if n.op_type == "BatchNormalization"
                        and (g.producer.get(n.input[0]) is not None
                             and g.producer[n.input[0]].op_type in ("Conv", "ConvTranspose")))
    return {
        "nodes": len(g.nodes),
        "LayerNormalization": ops["LayerNormalization"],
        "HardSwish": ops["HardSwish"],
        "HardSigmoid": ops["HardSigmoid"],
        "BatchNormalization": ops["BatchNormalization"],
        "Pow": ops["Pow"],
        "Shape": ops["Shape"],
        "ln_decomposed": ln["ln"] + ln["ln-noeps"],
        "ln_eps_dropped": ln["ln-noeps"],
        "rms_decomposed": ln["rms"],
        "hswish_hsig_mul": pairs,
        "hsigmoid_native": alone,
        "hswish_clip": hsw_clip,
        "hsigmoid_clip": hsig_clip,
        "bn_after_conv": bn_after_conv,
        "conv_affine": _conv_affine(g),
        "contrib_ops": sum(1 for n in g.nodes if n.domain not in ("", "ai.onnx")),
    }


def left_decomposed(counts: dict[str, int]) -> dict[str, int]:
    """Instances still in decomposed form, per family (what 'every instance fused' requires to be 0)."""
    return {
        "layernorm": counts["ln_decomposed"],
        "hswish": counts["hswish_hsig_mul"] + counts["hswish_clip"],
        "hsigmoid": counts["hsigmoid_clip"],
        "conv-bn": counts["bn_after_conv"],
        "conv-elementwise": counts["conv_affine"],
    }


def op_counts(model: onnx.ModelProto, ops=("Shape", "Gather", "Concat", "Reshape", "Unsqueeze", "Slice")) -> dict:
    counter = Counter(node.op_type for node in model.graph.node)
    return {op: counter[op] for op in ops}


# Shape tensors ------------------------------------------------------------------------------------------------
# Inputs that TensorRT treats as shape tensors (0-D or 1-D only in TensorRT <= 8.4).
SHAPE_SLOTS = {"Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Tile": (1,), "Pad": (1,),
               "Slice": (1, 2, 3, 4), "Range": (0, 1, 2), "Unsqueeze": (1,), "Squeeze": (1,), "Resize": (3,),
               "TopK": (1,), "OneHot": (1,), "Split": (1,), "ReduceMean": (1,), "ReduceSum": (1,),
               "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,)}
INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}


def shape_tensor_stats(model: onnx.ModelProto) -> dict:
    """Shape tensors left in the graph: non-constant integer values that feed a shape input (Reshape's shape, Pad's
    pads, Slice's starts...) directly or through integer arithmetic. `nd` counts those of rank >= 2 (what torch's
    F.pad export builds with Reshape(., [-1, 2]) and TensorRT <= 8.4 rejected), `unknown_rank` those shape
    inference could not type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - fall back to what the file declares
        inferred = model
    info = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        rank = len(tt.shape.dim) if tt.HasField("shape") else None
        info[vi.name] = (tt.elem_type, rank)
    g = GraphView(model)
    stack = [node.input[i] for node in g.nodes for i in SHAPE_SLOTS.get(node.op_type, ())
             if i < len(node.input) and node.input[i]]
    seen: set[str] = set()
    while stack:
        value = stack.pop()
        if value in seen or g.is_const(value) or value not in g.producer:
            continue
        elem, _ = info.get(value, (None, None))
        if elem is not None and elem != 0 and elem not in INT_TYPES:
            continue
        seen.add(value)
        node = g.producer[value]
        if node.op_type in ("Shape", "Size"):
            continue
        stack.extend(i for i in node.input if i)
    ranks = [info.get(v, (None, None))[1] for v in seen]
    return {"shape_values": len(seen), "nd": sum(1 for r in ranks if r is not None and r >= 2),
            "unknown_rank": sum(1 for r in ranks if r is None),
            "nd_values": sorted(v for v in seen if (info.get(v, (None, None))[1] or 0) >= 2)[:10]}


if __name__ == "__main__":  # python benchmarks/patterns.py MODEL.onnx ...
    import json
    import sys

    for path in sys.argv[1:]:
        counts = count_patterns(onnx.load(path, load_external_data=False))
        print(path, json.dumps(counts))
