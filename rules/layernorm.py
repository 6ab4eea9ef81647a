"""LayerNorm: the decomposed layer normalization exporters emit -> LayerNormalization (opset 17).

    mean = ReduceMean(x, axes)                  axes: the last k axes of x, keepdims=1 (attribute or input)
    d    = Sub(x, mean)
    std  = Sqrt(Add(ReduceMean(Pow(d, 2) | Mul(d, d), axes), eps))
    n    = Div(d, std) | Mul(d, Reciprocal(std)) | Mul(d, Div(1, std))

    Add(Mul(n, γ), β)  ->  LayerNormalization(x, γ, β, axis=-k, epsilon=eps, stash_type=1)
    Mul(n, γ), Add(n, β), n  ->  the same, with β = 0 and/or γ = 1 written as initializers

Mixed precision (x is fp16/bf16 and the statistics are computed wider, then cast back to T before the
affine), with n_w the normalization above computed in the wider type, in the two places exporters cast:

    on x:  Cast(x, to=float) -> mean, d, variance ...      (HF-style `.to(float32)` ... `.to(input_dtype)`)
    on d:  d = Sub(x, mean) in T -> Cast(d, to=double)...  (TorchScript's LayerNorm of a .half() model)

    Add(Mul(Cast(n_w, to=T), γ), β)  ->  LayerNormalization(x, γ, β, stash_type=1) in T
    (and without γ and/or β)

This is LayerNormalization's own definition with stash_type=1 (statistics in fp32, cast back to T, then
the affine in T), so the fused op is as exact as the graph for an fp16/bf16 output (statistics in
double for an fp32 input are refused: fp32 would be less precise). When the affine runs in fp32 and the
cast back follows it (torch.autocast: Cast(Add(Mul(n32, γ32), β32), to=T)), moving the affine to T
would add roundings the graph does not have (~1% in bf16): that form fuses as Cast(x) ->
LayerNormalization in fp32 -> Cast(T), which is exact; the plain rules below do that by themselves.

Conditions (each refusal is a near miss with its reason): both ReduceMeans reduce the same trailing
axes of x; the mean is of the tensor it is subtracted from; eps is a constant; γ/β are constants that
vary along the normalized axes only (shape = the normalized dims, maybe broadcast, maybe with
leading 1s), and become arrays of exactly the normalized shape in x's dtype.

Why four rules (tiers): the engine visits a rule's candidates in graph order, so within one rule the
bare normalization (root Div) would be fused before the Mul(γ) and Add(β) that follow it. The family
is split by how much of the tail {γ, β, cast back} a form absorbs, largest first; a larger form that
is refused (say γ varies along a non-normalized axis) leaves the smaller forms free to fuse the
normalization alone. RMSNorm (rules/rmsnorm.py) reuses the helpers below.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from onnx import TensorProto

from fuser.facts import GraphFacts
from fuser.graph import attribute
from fuser.matcher import Match
from fuser.pattern import Const, Pattern, Var, op
from fuser.rule import Refusal, Rule

FLOAT, DOUBLE = TensorProto.FLOAT, TensorProto.DOUBLE
# element types a fused normalization may take; stash_type=1 (fp32 statistics) is at least as precise
NORM_DTYPES = {TensorProto.FLOAT: np.dtype(np.float32), TensorProto.FLOAT16: np.dtype(np.float16),
               TensorProto.BFLOAT16: np.dtype(ml_dtypes.bfloat16)}
_DTYPE_NAMES = {DOUBLE: "double"}


# ------------------------------------------------------------------ patterns shared with RMSNorm
def inverse(t: Pattern, rms: Pattern) -> Pattern:
    """t / rms in the spellings exporters use."""
    return (op.Div(t, rms) | op.Mul(t, op.Reciprocal(rms))
            | op.Mul(t, op.Div(Const(1.0, name="one"), rms)))


def square(t: Pattern) -> Pattern:
    return op.Pow(t, Const(2.0, name="exponent")) | op.Mul(t, t)


def _is_upcast(to) -> bool:
    return to in (FLOAT, DOUBLE)


def upcast(v: Pattern, node_name: str | None = None) -> Pattern:
    """Cast(v, to=float|double): the entry of wide statistics in a mixed-precision graph."""
    return op.Cast(v, to=_is_upcast, _name=node_name)


def cast_back(p: Pattern) -> Pattern:
    """The cast back to x's type (checked: its `to` must be x's element type)."""
    return op.Cast(p, _name="cast_back")


def _normalized(x_sub: Pattern, x_mean: Pattern, cast_d: bool = False) -> Pattern:
    """n = (x - mean) / sqrt(var + eps); x_mean is matched apart so a mean of another tensor is a near miss.

    cast_d: the difference is cast up before the variance (TorchScript's fp16 LayerNorm: Cast(d, double)).
    """
    mean = op.ReduceMean(x_mean, Const(name="axes"), keepdims=1)
    d = op.Sub(x_sub, mean, _name="sub")  # one object: Pow/Mul and Div must use the same Sub
    if cast_d:
        d = upcast(d, "cast_in")
    var = op.ReduceMean(square(d), Const(name="var_axes"), keepdims=1)
    return inverse(d, op.Sqrt(op.Add(var, Var("eps"))))


# ------------------------------------------------------------------------- shared analysis
@dataclass
class Norm:
    """What the check found and the rewrite builds from."""

    x: str
    axis: int  # first normalized axis, negative (-k)
    eps: float
    dtype: np.dtype  # x's dtype: the fused op's input, scale, bias and output
    scale: np.ndarray
    bias: np.ndarray


def trailing_axes(facts: GraphFacts, x: str, axes_list: list[np.ndarray], emits: str = "LayerNormalization"
                  ) -> tuple[int, list | None] | Refusal:
    """(k, x's shape) when every `axes` is the same set of the last k axes of x; else why not."""
    shape = facts.shape(x)
    rank = len(shape) if shape is not None else None
    sets = []
    for axes in axes_list:
        flat = np.asarray(axes).reshape(-1)
        if flat.size == 0 or flat.dtype.kind not in "iu":
            return Refusal(f"reduces over axes {flat.tolist()}, not a list of trailing axes")
        vals = [int(v) for v in flat]
        if rank is None:
            if any(v >= 0 for v in vals):
                return Refusal(f"reduces over axes {vals} and the rank of '{x}' is unknown, so it is not known "
                               "whether they are its trailing axes")
        else:
            if any(not -rank <= v < rank for v in vals):
                return Refusal(f"reduces over axes {vals}, out of range for '{x}' of rank {rank}")
            vals = [v - rank if v >= 0 else v for v in vals]
        sets.append(sorted(set(vals)))
    if any(s != sets[0] for s in sets[1:]):
        return Refusal("the reductions use different axes "
                       f"({', '.join(str(np.asarray(a).tolist()) for a in axes_list)})")
    k = len(sets[0])
    if sets[0] != list(range(-k, 0)):
        where = f"of rank {rank}" if rank is not None else "of unknown rank"
        return Refusal(f"reduces over axes {np.asarray(axes_list[0]).reshape(-1).tolist()}, which are not the "
                       f"trailing axes of '{x}' ({where}); {emits} normalizes the last axes only")
    return k, shape


def scalar_reason(m: Match, names: tuple[str, ...], rank: int | None) -> Refusal | None:
    """Constants that must be one-element and not raise the rank of the result (eps, exponent...)."""
    for name in names:
        if not m.has(name):
            continue
        value = m.const(name)
        if value is None:
            return Refusal(f"{name} is not a constant ('{m[name]}')")
        if value.size != 1:
            return Refusal(f"{name} must be a single value, got shape {list(value.shape)}")
        if value.ndim > max(1, rank or 0):
            return Refusal(f"{name} of shape {list(value.shape)} would broadcast the result to a higher rank")
    return None


def affine_param(label: str, value: np.ndarray, norm_dims: list, rank: int | None, dtype: np.dtype
                 ) -> np.ndarray | Refusal:
    """γ or β as the fused op takes it: exactly the normalized shape, in dtype; else why not."""
    k = len(norm_dims)
    shape = list(value.shape)
    if value.ndim > (rank if rank is not None else k):
        limit = "the input" if rank is not None else "the normalized axes (the input's rank is unknown)"
        return Refusal(f"{label} of shape {shape} has more dims than {limit}, so it could broadcast the output")
    lead, tail = shape[:max(0, value.ndim - k)], [1] * max(0, k - value.ndim) + shape[max(0, value.ndim - k):]
    norm_desc = [d if isinstance(d, int) else "?" for d in norm_dims]
    if any(d != 1 for d in lead):
        return Refusal(f"{label} of shape {shape} does not broadcast over the normalized axes only (normalized "
                       f"shape {norm_desc}): it varies along a non-normalized axis")
    target = []
    for t, n in zip(tail, norm_dims):
        if isinstance(n, int):
            if t not in (1, n):
                return Refusal(f"{label} of shape {shape} does not broadcast over the normalized axes only "
                               f"(normalized shape {norm_desc})")
            target.append(n)
        elif t > 1:
            target.append(t)  # the dim is symbolic; the constant tells its size
        else:
            return Refusal(f"{label} of shape {shape} would have to be expanded to the normalized shape "
                           f"{norm_desc}, whose size is not known statically")
    # a valid model multiplies γ with a value of x's dtype, so the astype never rounds
    return np.ascontiguousarray(np.broadcast_to(value.reshape(tail), target).astype(dtype))


def affine_params(m: Match, norm_dims: list, rank: int | None, dtype: np.dtype
                  ) -> tuple[np.ndarray, np.ndarray] | Refusal:
    """(scale, bias) for the fused op: γ and β of the match, or ones / zeros where one is missing."""
    found = {}
    for label, name in (("γ", "gamma"), ("β", "beta")):
        if m.has(name):
            found[name] = affine_param(label, m.const(name), norm_dims, rank, dtype)
            if isinstance(found[name], Refusal):
                return found[name]
    if len(found) < 2:
        # a symbolic normalized dim may be sized by the parameter that is present
        present = next(iter(found.values()), None)
        dims = [d if isinstance(d, int) else (present.shape[i] if present is not None else None)
                for i, d in enumerate(norm_dims)]
        if any(d is None for d in dims):
            return Refusal(f"the normalized shape {['?' if d is None else d for d in dims]} is not static, so "
                           "the missing γ/β cannot be written as ones/zeros")
        found.setdefault("gamma", np.ones(dims, dtype=dtype))
        found.setdefault("beta", np.zeros(dims, dtype=dtype))
    return found["gamma"], found["beta"]


def norm_dtype(m: Match, x: str, mixed: bool) -> np.dtype | Refusal:
    """The fused op's dtype (x's): from the graph, else from the cast back or the eps constant."""
    elem = m.facts.elem_type(x)
    back = attribute(m.node("cast_back"), "to") if m.has("cast_back") else None
    if elem is None:
        elem = back if mixed else _elem_of(m.const("eps"))
    if mixed and back is not None and back != elem:
        return Refusal(f"the statistics are cast back to type {back}, not to the input's type {elem}")
    if elem not in NORM_DTYPES:
        name = _DTYPE_NAMES.get(elem, f"element type {elem}")
        return Refusal(f"the input is {name}: only fp32/fp16/bf16 fuse (the fused statistics are fp32)")
    if mixed and elem == FLOAT and attribute(m.node("cast_in"), "to") == DOUBLE:
        return Refusal("the fp32 input's statistics are computed in double; the fused statistics would be fp32")
    return NORM_DTYPES[elem]


def _elem_of(array: np.ndarray | None) -> int | None:
    if array is None:
        return None
    for elem, dtype in NORM_DTYPES.items():
        if array.dtype == dtype:
            return elem
    return None


def statistics_reason(m: Match) -> Refusal | None:
    """The input the mean is taken of must be the one it is subtracted from."""
    if m["x_mean"] != m["x"]:
        return Refusal(f"the mean is taken of '{m['x_mean']}' but subtracted from '{m['x']}': not a "
                       "normalization of one tensor")
    return None


# ---------------------------------------------------------------------------- the LN rule
def analyze(m: Match) -> Norm | Refusal:
    """The check: everything the rewrite needs, or why this match must not fuse."""
    reason = statistics_reason(m)
    if reason:
        return reason
    x = m["x"]
    axes = trailing_axes(m.facts, x, [m.const("axes"), m.const("var_axes")])
    if isinstance(axes, Refusal):
        return axes
    return normalization(m, x, axes)


def normalization(m: Match, x: str, axes: tuple) -> Norm | Refusal:
    """The common tail of LayerNorm and RMSNorm: constants, dtype and affine parameters over `axes`."""
    k, shape = axes
    rank = len(shape) if shape is not None else None
    reason = scalar_reason(m, ("eps", "exponent", "one"), rank)
    if reason:
        return reason
    dtype = norm_dtype(m, x, m.has("cast_in"))
    if isinstance(dtype, Refusal):
        return dtype
    norm_dims = list(shape[-k:]) if shape is not None else [None] * k
    params = affine_params(m, norm_dims, rank, dtype)
    if isinstance(params, Refusal):
        return params
    eps = float(np.asarray(m.const("eps"), dtype=np.float64).reshape(-1)[0])
    return Norm(x, -k, eps, dtype, *params)


def _rewrite(m: Match, b, n: Norm) -> str:
    return b.op("LayerNormalization", n.x, b.const(n.scale, "scale"), b.const(n.bias, "bias"),
                axis=n.axis, epsilon=n.eps, stash_type=1)


_plain = _normalized(Var("x"), Var("x_mean"))
_mixed = (_normalized(upcast(Var("x"), "cast_in"), upcast(Var("x_mean")))  # one Cast node or two: both fine
          | _normalized(Var("x"), Var("x_mean"), cast_d=True))
_gamma, _beta = Const(name="gamma"), Const(name="beta")


def _ln_rule(name: str, pattern: Pattern, spellings: tuple[str, ...], doc: str) -> Rule:
    return Rule(name=name, family="layernorm", emits="LayerNormalization", min_opset=17, pattern=pattern,
                check=analyze, rewrite=_rewrite, spellings=spellings, doc=doc)


_NORM = ("n = d / Sqrt(ReduceMean(Pow(d, 2) | Mul(d, d)) + eps), d = Sub(x, ReduceMean(x)); "
         "/ as Div, Mul(Reciprocal) or Mul(Div(1, ·))")

LAYERNORM_TIERS: list[Rule] = [
    _ln_rule("layernorm-mixed", op.Add(op.Mul(cast_back(_mixed), _gamma), _beta),
             ("Add(Mul(Cast(n_w, to=T), γ), β)",
              "n_w = n computed on Cast(x, to=float|double), or with d = Cast(Sub(x, mean), to=float|double)", _NORM),
             "mixed precision: x (fp16/bf16) -> fp32 statistics -> Cast(T) -> Mul(γ) -> Add(β) -> "
             "LayerNormalization(x, γ, β, stash_type=1)"),
    _ln_rule("layernorm",
             op.Add(op.Mul(_plain, _gamma), _beta) | op.Mul(cast_back(_mixed), _gamma)
             | op.Add(cast_back(_mixed), _beta),
             ("Add(Mul(n, γ), β)", "mixed precision with only γ or only β", _NORM),
             "ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul(γ)/Add(β) -> LayerNormalization(x, γ, β)"),
    _ln_rule("layernorm-partial",
             op.Mul(_plain, _gamma) | op.Add(_plain, _beta) | cast_back(_mixed),
             ("Mul(n, γ) (β = 0)", "Add(n, β) (γ = 1)", "Cast(n_w, to=T) (mixed precision, no γ/β)", _NORM),
             "LayerNorm with only γ or only β -> LayerNormalization(x, γ | 1, β | 0)"),
    _ln_rule("layernorm-bare", _plain, (_NORM,),
             "LayerNorm without γ and β -> LayerNormalization(x, 1, 0)"),
]
