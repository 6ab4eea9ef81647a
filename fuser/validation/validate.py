"""Numerics validation: run the original and the optimized model on the same inputs and compare every output.

Both models run on the same engine (`fuser.validation.engines`): onnxruntime with its own graph optimizations OFF,
or, where onnxruntime cannot run the original (bfloat16/float8/int4 inputs, an op or op version it has no
kernel for, an opset newer than it knows), onnx's reference evaluator; the report names the engine. The
inputs are the user's or fuser's random ones (`fuser.validation.inputs`); when the original fails on the first guess
of its dynamic dims, other guesses are tried and the report says which shapes were used. A model that
draws random numbers without a seed, or that neither engine runs, is not validated, and the report says
why in one line. Per output the report gets (`OutputStats`, in the report's `ValidationSection`):

    max / mean / median / p99 absolute error      |opt - ref|
    max / mean / median / p99 relative error      |opt - ref| / |ref|, over elements where ref != 0
    cosine similarity, NaN and Inf counts on both sides, mismatch count, the worst element

An output passes when every element satisfies `|opt - ref| <= atol * scale + rtol * |ref|` (numpy's
`isclose`, NaN equal to NaN, Inf equal to the same Inf), where `scale` is the output's largest finite
magnitude (at least 1): rounding error grows with the values a network carries, so an element near zero
in an output whose values reach 1500 (ResNet-50 logits) may differ by 1e-3 after an exact re-association
such as a BatchNorm folded into its Conv — measured: 2 of 53 exact folds failed a plain `isclose`. `atol` and `rtol` default per dtype (`DEFAULT_TOLERANCE`:
fp32 1e-4, fp16 1e-2; fp16's for float outputs under `--precision fp16`, which computes in fp16);
`--atol/--rtol` change them for all outputs, `--atol NAME:VALUE` for one.
Integer and bool outputs must match exactly. A sequence output (or an optional, a map) is compared
tensor by tensor with its element type's tolerance; its structure (length, shapes, presence) must match.

Low precision: a fused fp16 or bf16 op (LayerNormalization) is usually *more* accurate than the decomposed
ops it replaced, so it can differ from the original by more than the output's tolerance while being closer
to the truth. When a model computes in fp16 or bf16 and an output fails the direct comparison, both models
are judged against an fp32 copy of the original: the output passes if the optimized model is no further
from the fp32 reference than the original is (`max` and `mean` absolute error, within `FP32_SLACK` plus atol).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .engines import ENGINES, CannotLoad, open_session
from ..errors import ModelError, first_line
from .input_constraints import infer_value_types
from .inputs import alternative_feed_sets, describe, feed_sets
from ..model_io import LoadedModel

DEFAULT_TOLERANCE = {  # (atol, rtol) by output element type; other types must match exactly
    TensorProto.FLOAT: 1e-4,
    TensorProto.FLOAT16: 1e-2,
    TensorProto.BFLOAT16: 2e-2,
    TensorProto.DOUBLE: 1e-7,
}
_LOW_NP = (np.dtype(np.float16), np.dtype(helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)))
FP32_SLACK = 1.1  # the optimized model may be 10% further from the fp32 reference than the original was
PROVIDERS = ("cpu", "cuda")


class ValidationFailed(ModelError):
    """The optimized model's outputs differ from the original's and could not be fixed by rolling back.

    Carries the report (with its `validation` section filled) so `fuser audit` can still write it.
    """

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class CannotValidate(Exception):
    """The original model cannot be run (custom ops, unknown shapes...): validation is skipped."""


# ------------------------------------------------------------------------------ the report's validation section
# Field metadata is the report codec's (fuser/report/codec.py): OPTIONAL fields are left out when they do not apply;
# a STATISTIC may also be null (NaN, or no finite element to measure).
OPTIONAL = {"omit_default": True}
STATISTIC = {"omit_default": True, "null": True}


@dataclass
class CountPair:
    reference: int
    optimized: int


@dataclass
class Worst:
    """The element furthest off: its flat index and both values (NaN and infinities as text)."""

    index: int
    reference: float | str | None
    optimized: float | str | None


@dataclass
class Fp32Reference:
    """Both models' errors against an fp32 copy of the original (low-precision models)."""

    max_abs_original: float | None
    max_abs_optimized: float | None
    mean_abs_original: float | None
    mean_abs_optimized: float | None


@dataclass(kw_only=True)
class OutputStats:
    """One output compared on every input set (see the module docstring); `passed` is the verdict."""

    dtype: str | None = field(default=None, metadata=OPTIONAL)
    atol: float | None = field(default=None, metadata=OPTIONAL)
    rtol: float | None = field(default=None, metadata=OPTIONAL)
    shape: list[int] | None = field(default=None, metadata=OPTIONAL)
    elements: int | None = field(default=None, metadata=OPTIONAL)
    nan: CountPair | None = field(default=None, metadata=OPTIONAL)
    inf: CountPair | None = field(default=None, metadata=OPTIONAL)
    scale: float | None = field(default=None, metadata=OPTIONAL)
    mismatches: int | None = field(default=None, metadata=STATISTIC)
    max_abs: float | None = field(default=None, metadata=STATISTIC)
    mean_abs: float | None = field(default=None, metadata=STATISTIC)
    median_abs: float | None = field(default=None, metadata=STATISTIC)
    p99_abs: float | None = field(default=None, metadata=STATISTIC)
    max_rel: float | None = field(default=None, metadata=STATISTIC)
    mean_rel: float | None = field(default=None, metadata=STATISTIC)
    median_rel: float | None = field(default=None, metadata=STATISTIC)
    p99_rel: float | None = field(default=None, metadata=STATISTIC)
    cosine: float | None = field(default=None, metadata=STATISTIC)
    worst: Worst | None = field(default=None, metadata=OPTIONAL)
    passed: bool
    judged_by: Literal["tolerance", "fp32-reference"] | None = field(default=None, metadata=OPTIONAL)
    fp32_reference: Fp32Reference | None = field(default=None, metadata=OPTIONAL)
    error: str | None = field(default=None, metadata=OPTIONAL)  # why it could not be compared


@dataclass
class RolledBack:
    """A rewrite that changed the outputs and was rolled back, with what it did to them."""

    rule: str
    family: str
    key: str
    root: str
    replaced: list[str]
    created_ops: list[str] = field(default_factory=list)
    effect: str = ""


@dataclass
class Bisection:
    trials: int  # re-runs of the optimization the search took
    rewrites: int
    culprits: list[str]


@dataclass
class FirstAttempt:
    """The comparison that failed before the rollback."""

    error: str | None
    failed_outputs: dict[str, OutputStats]


InputShapes = dict[str, list[int] | list[list[int]] | None]  # a tensor's shape, a sequence's shapes, or absent


@dataclass(kw_only=True)
class ValidationSection:
    """The report's `validation`: what ran both models on which inputs, each output's statistics, and the rewrites
    rolled back (docs/report.md). `status` is passed, rolled-back, failed (the run stopped) or skipped (`reason`)."""

    status: Literal["passed", "failed", "rolled-back", "skipped"]
    summary: str
    reason: str | None = field(default=None, metadata=OPTIONAL)
    provider: Literal["cpu", "cuda"] = "cpu"
    engine: Literal["onnxruntime", "reference"] | None = field(default=None, metadata=OPTIONAL)
    device: str | None = field(default=None, metadata=OPTIONAL)
    inputs: str | None = field(default=None, metadata=OPTIONAL)  # where the inputs came from
    shapes: list[InputShapes]
    outputs: dict[str, OutputStats]
    rolled_back: list[RolledBack]
    error: str | None = field(default=None, metadata=OPTIONAL)
    first_attempt: FirstAttempt | None = field(default=None, metadata=OPTIONAL)
    bisection: Bisection | None = field(default=None, metadata=OPTIONAL)
    notes: list[str] = field(default_factory=list, metadata=OPTIONAL)
    time_s: float | None = field(default=None, metadata={**OPTIONAL, "digits": 6})


@dataclass
class Result:
    """One comparison of an optimized model against the original, on every input set."""

    passed: bool
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    error: str | None = None  # the optimized model could not be loaded or run

    def failed_outputs(self) -> list[str]:
        return [k for k, v in self.outputs.items() if not v.passed]


def tolerance_for(name: str, elem_type: int | None, options) -> tuple[float, float]:
    if getattr(options, "precision", "fp32") == "fp16" and elem_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
        elem_type = TensorProto.FLOAT16  # --precision fp16 computes in fp16 even where the outputs stay fp32
    default = DEFAULT_TOLERANCE.get(elem_type, 0.0)
    atol = options.atol if getattr(options, "atol", None) is not None else default
    rtol = options.rtol if getattr(options, "rtol", None) is not None else default
    per = (getattr(options, "tolerances", None) or {}).get(name, {})
    return float(per.get("atol", atol)), float(per.get("rtol", rtol))


RANDOM_OPS = {"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}


class Validator:
    """Compares optimized models against one original; the original runs once, here, at construction.

    The original runs on the first engine that can (onnxruntime, then onnx.reference) and, with random
    inputs, on the first guess of its dynamic dims that it accepts (`fuser.validation.inputs.alternative_feed_sets`);
    every optimized model then runs on that engine with those inputs.
    """

    def __init__(self, loaded: LoadedModel, options):
        self.loaded = loaded
        self.options = options
        self.provider = getattr(options, "provider", "cpu")
        self.notes: list[str] = []
        self.guessed: str | None = None  # the shapes used, when the first guess of the dynamic dims did not run
        random_op = unseeded_random_op(loaded.model)
        if random_op:
            raise CannotValidate(f"the model draws random numbers ({random_op} without a seed), so its outputs "
                                 "differ from run to run and there is nothing to compare")
        try:
            first = feed_sets(loaded.model, options)
        except ModelError as exc:  # inputs fuser cannot make (maps, unknown types): skip, do not fail the run
            raise CannotValidate(str(exc)) from None
        self.engine, self.device, self.feeds, self.source, self.reference = self._run_original(first)
        self.elem_types = computed_in(loaded.model)
        for name, t in self.elem_types.items():
            declared = next(elem_type_of(o.type) for o in loaded.model.graph.output if o.name == name)
            if t != declared:
                self.notes.append(f"output '{name}' is computed in {TensorProto.DataType.Name(t).lower()}: compared "
                                  "with that type's tolerance")
        self._fp32_reference: list[dict[str, np.ndarray]] | None | bool = False  # False: not computed yet

    def _guesses(self, first):
        yield first
        seen = {_shapes_text(first[0])}
        for sets, source in alternative_feed_sets(self.loaded.model, self.options):
            if _shapes_text(sets) not in seen:
                seen.add(_shapes_text(sets))
                yield sets, source

    def _run_original(self, first):
        failures: list[str] = []
        loaded_somewhere = False
        path = self.loaded.path if self.loaded.path is not None and self.loaded.has_external_data else None
        for engine in ENGINES:
            if engine == "onnxruntime" and not _onnxruntime_takes(first[0]):
                failures.append("onnxruntime cannot take the inputs' types (bfloat16, float8, int4) from numpy")
                continue
            try:
                session = open_session(engine, self.loaded.model, self.loaded.base_dir, self.provider, path=path,
                                       loaded=self.loaded)
            except CannotLoad as exc:
                failures.append(f"{engine} cannot load the model ({exc})")
                continue
            tried: list[tuple[list, str]] = []
            loaded_somewhere = True
            try:
                for sets, source in self._guesses(first):
                    try:
                        outputs = [session.run(f) for f in sets]
                    except Exception as exc:  # noqa: BLE001 - this guess does not run; try the next
                        tried.append((sets, first_line(exc)))
                        continue
                    if session.note:
                        self.notes.append(session.note)
                    if failures:
                        self.notes.append(f"validated with {engine}: {'; '.join(failures)}")
                    if tried:
                        self.notes.append(f"the original model failed on inputs {_shapes_text(tried[0][0])} "
                                          f"({tried[0][1]}); validation used {_shapes_text(sets)}")
                        self.guessed = f"{_shapes_text(sets)} (the first guess, {_shapes_text(tried[0][0])}, did not run)"
                    return engine, session.device, sets, source, outputs
            finally:
                session.close()
            more = f", nor on {len(tried) - 1} other guesses of its dynamic dims" if len(tried) > 1 else ""
            failures.append(f"{engine} could not run the original model on inputs {_shapes_text(tried[0][0])} "
                            f"({tried[0][1]}){more}")
        hint = "; give shapes with --input-shape or data with --inputs" if loaded_somewhere else ""
        raise CannotValidate("; ".join(failures) + hint)

    def shapes(self) -> list[InputShapes]:
        return [describe(f) for f in self.feeds]

    def _open(self, model: onnx.ModelProto):
        return open_session(self.engine, model, self.loaded.base_dir, self.provider, loaded=self.loaded)

    def check(self, model: onnx.ModelProto) -> Result:
        try:
            session = self._open(model)
        except CannotLoad as exc:
            return Result(False, error=f"{self.engine} could not load the optimized model: {exc}")
        try:
            actual = [session.run(f) for f in self.feeds]
        except Exception as exc:  # noqa: BLE001 - the optimized model fails where the original ran
            return Result(False, error=f"{self.engine} could not run the optimized model: {first_line(exc)}")
        finally:
            session.close()
        outputs = {}
        for name in self.reference[0]:
            atol, rtol = tolerance_for(name, self.elem_types.get(name), self.options)
            if any(name not in a for a in actual):
                outputs[name] = OutputStats(passed=False, error=f"the optimized model has no output '{name}'")
                continue
            outputs[name] = compare([r[name] for r in self.reference], [a[name] for a in actual], atol, rtol)
        failed = [k for k, v in outputs.items() if not v.passed]
        if failed and _computes_low_precision(self.loaded.model):
            self._judge_by_fp32(failed, actual, outputs)
        return Result(all(v.passed for v in outputs.values()), outputs)

    def _judge_by_fp32(self, failed: list[str], actual: list[dict], outputs: dict[str, OutputStats]) -> None:
        """Low precision: pass outputs that are no further from an fp32 reference than the original's."""
        if self._fp32_reference is False:
            self._fp32_reference = self._run_fp32()
        if not self._fp32_reference:
            return
        for name in failed:
            stats = outputs[name]
            if stats.error is not None or any(name not in r for r in self._fp32_reference):
                continue
            truth = [r[name] for r in self._fp32_reference]
            orig = _abs_errors([r[name] for r in self.reference], truth)
            opt = _abs_errors([a[name] for a in actual], truth)
            if orig is None or opt is None:
                continue
            ok = (opt.max() <= FP32_SLACK * orig.max() + stats.atol
                  and opt.mean() <= FP32_SLACK * orig.mean() + stats.atol)
            stats.fp32_reference = Fp32Reference(_f(orig.max()), _f(opt.max()), _f(orig.mean()), _f(opt.mean()))
            if ok:
                stats.passed = True
                stats.judged_by = "fp32-reference"

    def _run_fp32(self) -> list[dict[str, np.ndarray]] | None:
        try:
            session = self._open(upcast_to_fp32(self.loaded.model, self.loaded.base_dir))
            try:
                return [session.run({k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype in _LOW_NP
                                         else v) for k, v in f.items()}) for f in self.feeds]
            finally:
                session.close()
        except Exception as exc:  # noqa: BLE001 - no fp32 reference: the direct comparison stands
            self.notes.append(f"no fp32 reference for the low-precision model ({first_line(exc)})")
            return None


def computed_in(model: onnx.ModelProto) -> dict[str, int | None]:
    """Each output's element type, or the lowest float precision its value passes through when that is lower.

    An fp32 output cast from a bf16 computation carries bf16's precision: comparing it at fp32's would
    reject any reordering of the bf16 arithmetic, exact or not.
    """
    declared = {o.name: elem_type_of(o.type) for o in model.graph.output}
    if not _computes_low_precision(model) or not any(t in (TensorProto.FLOAT, TensorProto.DOUBLE)
                                                     for t in declared.values()):
        return declared
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    types.update({name: elem for name, (elem, _) in infer_value_types(model).items()})
    producer = {out: n for n in g.node for out in n.output}
    out = {}
    for name, elem in declared.items():
        if elem not in (TensorProto.FLOAT, TensorProto.DOUBLE):
            out[name] = elem
            continue
        lowest, todo, seen = elem, [name], {name}
        while todo:
            value = todo.pop()
            t = types.get(value)
            if t in LOW_PRECISION and DEFAULT_TOLERANCE[t] > DEFAULT_TOLERANCE.get(lowest, 0.0):
                lowest = t
            node = producer.get(value)
            for src in (node.input if node is not None else ()):
                if src and src not in seen:
                    seen.add(src)
                    todo.append(src)
        out[name] = lowest
    return out


def unseeded_random_op(model: onnx.ModelProto) -> str | None:
    """The first op that draws random numbers without a `seed` (in the graph, subgraphs or functions)."""
    todo = [model.graph.node, *(f.node for f in model.functions)]
    while todo:
        for node in todo.pop():
            if node.domain in ("", "ai.onnx") and node.op_type in RANDOM_OPS and \
                    not any(a.name == "seed" for a in node.attribute):
                return node.op_type
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    todo.append(a.g.node)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    todo.extend(g.node for g in a.graphs)
    return None


def elem_type_of(tp: onnx.TypeProto) -> int | None:
    """The tensor element type of a value: itself, or inside a sequence / optional."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return tp.tensor_type.elem_type
    if kind == "sequence_type":
        return elem_type_of(tp.sequence_type.elem_type)
    if kind == "optional_type":
        return elem_type_of(tp.optional_type.elem_type)
    return None


def _onnxruntime_takes(feed_sets: list[dict]) -> bool:
    def ok(v) -> bool:
        if v is None:
            return True
        if isinstance(v, list):
            return all(ok(x) for x in v)
        return np.asarray(v).dtype.kind != "V"
    return all(ok(v) for f in feed_sets for v in f.values())


def _shapes_text(feed_sets: list[dict]) -> str:
    def one(v) -> str:
        if v is None:
            return "absent"
        if isinstance(v, list):
            return f"sequence of {len(v)}" + (f" x {one(v[0])}" if v else "")
        return "x".join(map(str, np.shape(v))) or "scalar"
    return "; ".join(", ".join(f"{k}:{one(v)}" for k, v in f.items()) or "none" for f in feed_sets)


def _abs_errors(values: list, truth: list) -> np.ndarray | None:
    try:
        a = np.concatenate([_as_float(x).ravel() for v in values for x in _flatten(v)[1]] or [np.zeros(0)])
        t = np.concatenate([_as_float(x).ravel() for v in truth for x in _flatten(v)[1]] or [np.zeros(0)])
    except (TypeError, ValueError):
        return None
    if a.shape != t.shape or a.size == 0:
        return None
    finite = np.isfinite(a) & np.isfinite(t)
    return np.abs(a[finite] - t[finite]) if finite.any() else None


def _g(x) -> str:
    return "nan" if x is None else f"{x:.3g}"


def _f(x) -> float | None:
    """A JSON-safe float (NaN and Inf become None)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _flatten(value) -> tuple[tuple, list[np.ndarray]]:
    """A value's structure (a tensor's shape, a sequence's length, an absent optional) and its tensors."""
    if value is None:
        return ("absent",), []
    if isinstance(value, dict):  # a map (ai.onnx.ml): compared key by key
        keys = sorted(value, key=str)
        parts = [_flatten(value[k]) for k in keys]
        return ("map", tuple(map(str, keys)), tuple(p[0] for p in parts)), [a for p in parts for a in p[1]]
    if isinstance(value, (list, tuple)):
        parts = [_flatten(v) for v in value]
        return ("sequence", tuple(p[0] for p in parts)), [a for p in parts for a in p[1]]
    array = np.asarray(value)
    return ("tensor", array.shape), [array]


def _describe_structure(structure: tuple) -> str:
    if structure[0] == "absent":
        return "no value (an absent optional)"
    if structure[0] == "tensor":
        return f"shape {list(structure[1])}"
    if structure[0] == "sequence":
        return f"a sequence of {len(structure[1])} ({', '.join(_describe_structure(s) for s in structure[1][:4])}" \
               f"{', ...' if len(structure[1]) > 4 else ''})"
    return f"a map with keys {list(structure[1])[:8]}"


def _as_float(x: np.ndarray) -> np.ndarray:
    """float64 for comparison; a complex array as its real and imaginary parts side by side."""
    if x.dtype.kind == "c":
        return np.stack([x.real, x.imag], axis=-1).astype(np.float64)
    return x.astype(np.float64)


def _is_integer(dtype: np.dtype) -> bool:
    return dtype.kind in "biu" or (dtype.kind == "V" and dtype.name.startswith(("int", "uint")))


def compare(reference: list, actual: list, atol: float, rtol: float) -> OutputStats:
    """Statistics of one output over all input sets (see the module docstring); `passed` is the verdict.

    A sequence (or a map, an optional) is compared tensor by tensor; its structure must match exactly.
    """
    flat_ref = [_flatten(x) for x in reference]
    flat_act = [_flatten(x) for x in actual]
    first = next((arrays[0] for _, arrays in flat_ref if arrays), None)
    stats = OutputStats(passed=False, dtype=str(first.dtype) if first is not None else "none", atol=atol, rtol=rtol)
    if flat_ref and flat_ref[0][0][0] == "tensor":
        stats.shape = list(flat_ref[0][0][1])
    for (rs, _), (as_, _) in zip(flat_ref, flat_act):
        if rs != as_:
            stats.error = f"{_describe_structure(as_)} instead of {_describe_structure(rs)}"
            return stats
    r_raw = [x for _, arrays in flat_ref for x in arrays]
    actual = [x for _, arrays in flat_act for x in arrays]
    if any(x.dtype.kind in "OSU" for x in r_raw):  # strings: equality only
        stats.passed = all(np.array_equal(x, np.asarray(y)) for x, y in zip(r_raw, actual))
        stats.elements = int(sum(x.size for x in r_raw))
        stats.mismatches = 0 if stats.passed else None
        return stats
    r = np.concatenate([_as_float(x).ravel() for x in r_raw]) if r_raw else np.zeros(0)
    a = np.concatenate([_as_float(np.asarray(x)).ravel() for x in actual]) if actual else np.zeros(0)
    stats.elements = int(r.size)
    stats.nan = CountPair(int(np.isnan(r).sum()), int(np.isnan(a).sum()))
    stats.inf = CountPair(int(np.isinf(r).sum()), int(np.isinf(a).sum()))
    exact = bool(r_raw) and all(_is_integer(x.dtype) for x in r_raw)
    finite_ref = np.abs(r[np.isfinite(r)])
    stats.scale = scale = max(1.0, float(finite_ref.max())) if finite_ref.size else 1.0
    close = (r == a) if exact else np.isclose(a, r, rtol=rtol, atol=atol * scale, equal_nan=True)
    if exact:
        close |= np.isnan(r) & np.isnan(a)
    stats.mismatches = mismatches = int(r.size - int(close.sum()))
    finite = np.isfinite(r) & np.isfinite(a)
    err = np.abs(a[finite] - r[finite])
    ref_abs = np.abs(r[finite])
    if err.size:
        stats.max_abs, stats.mean_abs = _f(err.max()), _f(err.mean())
        stats.median_abs, stats.p99_abs = _f(np.median(err)), _f(np.percentile(err, 99))
        nonzero = ref_abs > 0
        if nonzero.any():
            rel = err[nonzero] / ref_abs[nonzero]
            stats.max_rel, stats.mean_rel = _f(rel.max()), _f(rel.mean())
            stats.median_rel, stats.p99_rel = _f(np.median(rel)), _f(np.percentile(rel, 99))
        na, nr = np.linalg.norm(a[finite]), np.linalg.norm(r[finite])
        if na == 0 and nr == 0:
            stats.cosine = 1.0
        elif na == 0 or nr == 0:
            stats.cosine = 0.0
        else:
            stats.cosine = _f(np.dot(a[finite] / na, r[finite] / nr))  # normalized first: no overflow
    elif r.size == 0:
        stats.max_abs = 0.0
    if mismatches:
        bad = np.flatnonzero(~close)
        diff = np.where(np.isfinite(a[bad]) & np.isfinite(r[bad]), np.abs(a[bad] - r[bad]), np.inf)
        k = int(bad[int(np.argmax(diff))])
        stats.worst = Worst(k, _f(r[k]) if np.isfinite(r[k]) else str(r[k]),
                            _f(a[k]) if np.isfinite(a[k]) else str(a[k]))
    stats.passed = mismatches == 0
    return stats


LOW_PRECISION = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _computes_low_precision(model: onnx.ModelProto) -> bool:
    """Whether the model computes in fp16 or bf16 somewhere (initializers, inputs/outputs, Casts)."""
    g = model.graph
    if any(t.data_type in LOW_PRECISION for t in g.initializer):
        return True
    if any(v.type.tensor_type.elem_type in LOW_PRECISION for v in (*g.input, *g.output, *g.value_info)):
        return True
    return any(n.op_type == "Cast" and any(a.name == "to" and a.i in LOW_PRECISION for a in n.attribute)
               for n in g.node)


def upcast_to_fp32(model: onnx.ModelProto, base_dir: Path | None = None) -> onnx.ModelProto:
    """A copy of `model` computing in fp32 wherever it computed in fp16 or bf16 (their reference)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _upcast_graph(out.graph, base_dir)
    return out


def _upcast_tensor(t: onnx.TensorProto, base_dir: Path | None) -> None:
    if t.data_type not in LOW_PRECISION:
        return
    array = numpy_helper.to_array(t, str(base_dir) if base_dir else "").astype(np.float32)
    t.CopyFrom(numpy_helper.from_array(array, t.name))


def _upcast_graph(g: onnx.GraphProto, base_dir: Path | None) -> None:
    for t in g.initializer:
        _upcast_tensor(t, base_dir)
    for v in (*g.input, *g.output):
        if v.type.tensor_type.elem_type in LOW_PRECISION:
            v.type.tensor_type.elem_type = TensorProto.FLOAT
    del g.value_info[:]
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                _upcast_tensor(a.t, base_dir)
            elif a.type == onnx.AttributeProto.GRAPH:
                _upcast_graph(a.g, base_dir)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _upcast_graph(sub, base_dir)
            elif a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i in LOW_PRECISION:
                a.i = TensorProto.FLOAT


def summarize(status: str, result: Result | None, n_sets: int, rolled_back: list[RolledBack] = (),
              total_rewrites: int = 0, engine: str = "onnxruntime", guessed: str | None = None) -> str:
    """The validation section's one-line summary; it names the engine when it is not onnxruntime, and the
    shapes when the first guess of the dynamic dims did not run."""
    if result is None:
        return status
    n = len(result.outputs)
    worst = max((v.max_abs or 0.0 for v in result.outputs.values()), default=0.0)
    sets = (f"{n_sets} input set{'s' if n_sets != 1 else ''}" + (f" of shapes {guessed}" if guessed else "")
            + (" with onnx.reference" if engine == "reference" else ""))
    if status == "passed":
        return f"passed: {n} output{'s' if n != 1 else ''} within tolerance on {sets} (max abs error {worst:.3g})"
    if status == "rolled-back":
        keys = ", ".join(r.key for r in rolled_back)
        return (f"rolled back {len(rolled_back)} of {total_rewrites} rewrites that changed the outputs ({keys}); "
                f"the rest pass on {sets} (max abs error {worst:.3g})")
    return f"failed: {describe_failure(result)}"


def describe_failure(result: Result) -> str:
    if result.error:
        return result.error
    parts = []
    for name in result.failed_outputs():
        s = result.outputs[name]
        if s.error is not None:
            parts.append(f"output '{name}': {s.error}")
        else:
            parts.append(f"output '{name}': {s.mismatches} of {s.elements} elements off "
                         f"(max abs error {_g(s.max_abs)}, atol {s.atol:g}, rtol {s.rtol:g}"
                         + (f", NaN {s.nan.optimized} vs {s.nan.reference}"
                            if s.nan and s.nan.optimized != s.nan.reference else "") + ")")
    return "; ".join(parts[:4]) + (f"; and {len(parts) - 4} more outputs" if len(parts) > 4 else "")


def environment() -> dict:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "threads": os.cpu_count()}


__all__ = ["DEFAULT_TOLERANCE", "CannotValidate", "OutputStats", "Result", "ValidationFailed", "ValidationSection",
           "Validator", "compare", "elem_type_of", "tolerance_for", "upcast_to_fp32"]
