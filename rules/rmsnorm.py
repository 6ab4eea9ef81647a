"""RMSNorm: x / sqrt(mean(x²) + eps) · γ -> RMSNormalization (opset 23, so only with --target-opset >= 23).

    ms = ReduceMean(Pow(x, 2) | Mul(x, x), axes)      axes: the last k axes of x, keepdims=1
    n  = Div(x, Sqrt(Add(ms, eps))) | Mul(x, Reciprocal(Sqrt(·))) | Mul(x, Div(1, Sqrt(·)))

    Mul(n, γ)  ->  RMSNormalization(x, γ, axis=-k, epsilon=eps, stash_type=1)
    n          ->  RMSNormalization(x, 1, ...)                 (ones in x's dtype)

Mixed precision (LLaMA/T5 in fp16/bf16: statistics on Cast(x, to=float), cast once or twice, then
cast back to T before the scale: exactly RMSNormalization's definition with stash_type=1):

    Mul(Cast(n_w, to=T), γ)  |  Cast(n_w, to=T)  ->  RMSNormalization(x, γ | 1, stash_type=1) in T

A scale applied in fp32 before the cast back (Cast(Mul(n32, γ32), to=T)) fuses as Cast(x) ->
RMSNormalization in fp32 -> Cast(T), exact, as for LayerNorm.

The default target opset is 21, so the engine's opset gate leaves these as they are and reports a near
miss ("raise it with --target-opset 23"). RMSNormalization's output type is its scale's type, so the
scale is always written in x's dtype. The rules run after the LayerNorm ones: a LayerNorm's
(x - mean) / sqrt(var + eps) is itself an RMSNorm of x - mean. Tiers as in rules/layernorm.py.
"""

from __future__ import annotations


from fuser.matcher import Match
from fuser.pattern import Const, Pattern, Var, op
from fuser.rule import Refusal, Rule

from .layernorm import Norm, cast_back, inverse, normalization, square, trailing_axes, upcast


def _rms(x_div: Pattern, x_sq: Pattern) -> Pattern:
    mean_square = op.ReduceMean(square(x_sq), Const(name="axes"), keepdims=1)
    return inverse(x_div, op.Sqrt(op.Add(mean_square, Var("eps"))))


def analyze(m: Match) -> Norm | Refusal:
    """The check: everything the rewrite needs, or why this match must not fuse."""
    x = m["x"]
    if m["x_sq"] != x:
        return Refusal(f"the mean square is taken of '{m['x_sq']}' but '{x}' is divided by it: not an RMSNorm "
                       "of one tensor")
    axes = trailing_axes(m.facts, x, [m.const("axes")], "RMSNormalization")
    if isinstance(axes, Refusal):
        return axes
    return normalization(m, x, axes)


def _rewrite(m: Match, b, n: Norm) -> str:
    return b.op("RMSNormalization", n.x, b.const(n.scale, "scale"), axis=n.axis, epsilon=n.eps, stash_type=1)


_plain = _rms(Var("x"), Var("x_sq"))
_mixed = _rms(upcast(Var("x"), "cast_in"), upcast(Var("x_sq")))  # LLaMA casts once, T5 twice: both match
_gamma = Const(name="gamma")


def _rms_rule(name: str, pattern: Pattern, spellings: tuple[str, ...], doc: str) -> Rule:
    return Rule(name=name, family="rmsnorm", emits="RMSNormalization", min_opset=23, pattern=pattern,
                check=analyze, rewrite=_rewrite, spellings=spellings, doc=doc)


_NORM = "n = x / Sqrt(ReduceMean(Pow(x, 2) | Mul(x, x)) + eps); / as Div, Mul(Reciprocal) or Mul(Div(1, ·))"

RMSNORM_TIERS: list[Rule] = [
    _rms_rule("rmsnorm-mixed", op.Mul(cast_back(_mixed), _gamma),
              ("Mul(Cast(n_w, to=T), γ), n_w = n computed on Cast(x, to=float|double)", _NORM),
              "mixed precision: x (fp16/bf16) -> fp32 statistics -> Cast(T) -> Mul(γ) -> "
              "RMSNormalization(x, γ, stash_type=1)"),
    _rms_rule("rmsnorm", op.Mul(_plain, _gamma) | cast_back(_mixed),
              ("Mul(n, γ)", "Cast(n_w, to=T) (mixed precision, no γ)", _NORM),
              "Pow/ReduceMean/Add/Sqrt/Div/Mul(γ) -> RMSNormalization(x, γ)"),
    _rms_rule("rmsnorm-bare", _plain, (_NORM,), "RMSNorm without γ -> RMSNormalization(x, 1)"),
]
