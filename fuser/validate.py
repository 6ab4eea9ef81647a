"""Numerics validation: run the original and the optimized model with onnxruntime and compare every output.

Both models run with onnxruntime's own graph optimizations OFF (otherwise onnxruntime fuses the original
itself and the comparison proves nothing), on the CPU provider unless CUDA is asked for and usable, on
the same input sets (see `fuser.inputs`). Per output the report gets:

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
Integer and bool outputs must match exactly.

Low precision: a fused fp16 op (LayerNormalization) is usually *more* accurate than the decomposed ops it
replaced, so it can differ from the original by more than fp16's tolerance while being closer to the
truth. When a model computes in fp16 and an output fails the direct comparison, both models are judged
against an fp32 copy of the original: the output passes if the optimized model is no further from the
fp32 reference than the original is (`max` and `mean` absolute error, within `FP32_SLACK` plus atol).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import ModelError
from .inputs import describe, feed_sets
from .model_io import LoadedModel, iter_tensors, uses_external_data

DEFAULT_TOLERANCE = {  # (atol, rtol) by output element type; other types must match exactly
    TensorProto.FLOAT: 1e-4,
    TensorProto.FLOAT16: 1e-2,
    TensorProto.BFLOAT16: 2e-2,
    TensorProto.DOUBLE: 1e-7,
}
FP32_SLACK = 1.1  # the optimized model may be 10% further from the fp32 reference than the original was
PROVIDERS = ("cpu", "cuda")
INLINE_LIMIT = 2**31 - 1 - (1 << 20)  # bigger models go to onnxruntime through a temporary file
_CUDA_UNUSABLE = False  # set once a CUDA session silently fell back to CPU
_CUDA_PRELOADED = False


class ValidationFailed(ModelError):
    """The optimized model's outputs differ from the original's and could not be fixed by rolling back.

    Carries the report (with its `validation` section filled) so `fuser audit` can still write it.
    """

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class CannotValidate(Exception):
    """The original model cannot be run (custom ops, unknown shapes...): validation is skipped."""


@dataclass
class Result:
    """One comparison of an optimized model against the original, on every input set."""

    passed: bool
    outputs: dict[str, dict] = field(default_factory=dict)
    error: str | None = None  # the optimized model could not be loaded or run

    def failed_outputs(self) -> list[str]:
        return [k for k, v in self.outputs.items() if not v.get("passed")]

    def worst(self) -> tuple[str, dict] | None:
        failed = self.failed_outputs()
        if not failed:
            return None
        name = max(failed, key=lambda k: self.outputs[k].get("max_abs") or float("inf"))
        return name, self.outputs[name]


def tolerance_for(name: str, elem_type: int | None, options) -> tuple[float, float]:
    if getattr(options, "precision", "fp32") == "fp16" and elem_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
        elem_type = TensorProto.FLOAT16  # --precision fp16 computes in fp16 even where the outputs stay fp32
    default = DEFAULT_TOLERANCE.get(elem_type, 0.0)
    atol = options.atol if getattr(options, "atol", None) is not None else default
    rtol = options.rtol if getattr(options, "rtol", None) is not None else default
    per = (getattr(options, "tolerances", None) or {}).get(name, {})
    return float(per.get("atol", atol)), float(per.get("rtol", rtol))


def _session_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # or ORT fuses the original itself
    so.log_severity_level = 3
    return so


def providers_for(provider: str) -> tuple[list, str | None]:
    """onnxruntime providers for `provider`, and a note when the one asked for is not available."""
    import onnxruntime as ort

    if provider == "cuda":
        if _CUDA_UNUSABLE:
            return ["CPUExecutionProvider"], "CUDA was asked for but could not be used here; validated on CPU"
        if "CUDAExecutionProvider" in ort.get_available_providers():
            _preload_cuda(ort)
            # tf32 off: both models must be computed at the precision their types say
            return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"], None
        return ["CPUExecutionProvider"], "CUDA was asked for but onnxruntime has no CUDA provider; validated on CPU"
    return ["CPUExecutionProvider"], None


def _preload_cuda(ort) -> None:
    """Load CUDA/cuDNN from the nvidia-* wheels if that is where they are (onnxruntime >= 1.21), quietly."""
    global _CUDA_PRELOADED
    if _CUDA_PRELOADED or not hasattr(ort, "preload_dlls"):
        return
    _CUDA_PRELOADED = True
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            ort.preload_dlls()
        except Exception:  # missing libraries: the CUDA session then falls back to CPU, with a note
            pass


class Session:
    """An onnxruntime session for a model held in memory whose external weights live in `base_dir`."""

    def __init__(self, model: onnx.ModelProto, base_dir: Path | None, provider: str, path: Path | None = None,
                 loaded: LoadedModel | None = None):
        import onnxruntime as ort

        self.note: str | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        providers, self.note = providers_for(provider)
        so = _session_options()
        external = any(uses_external_data(t) for t in iter_tensors(model))
        if path is not None:
            source = str(path)  # onnxruntime reads (and maps) external data next to the file itself
        elif model.ByteSize() < INLINE_LIMIT:
            if external and base_dir is not None:
                so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(base_dir))
            source = model.SerializeToString()
        else:  # too big for one protobuf: write it with its weights to a temporary folder
            from .model_io import save_model

            from .outputs import interrupts_held

            with interrupts_held():  # an interrupt lands before or after, never inside (leaking the folder)
                self._tmp = tempfile.TemporaryDirectory(prefix="fuser-validate-")
            target = Path(self._tmp.name) / "model.onnx"
            save_model(loaded or LoadedModel(model, None, base_dir), model, target, external_data=True)
            source = str(target)
        try:
            self.sess = ort.InferenceSession(source, so, providers=providers)
        except Exception as exc:
            if provider == "cuda" and "use_tf32" in str(exc):
                self.sess = ort.InferenceSession(source, so, providers=["CUDAExecutionProvider",
                                                                        "CPUExecutionProvider"])
            else:
                raise
        if provider == "cuda" and self.note is None and self.sess.get_providers()[0] != "CUDAExecutionProvider":
            global _CUDA_UNUSABLE
            _CUDA_UNUSABLE = True  # onnxruntime already said why on stderr; ask once per process
            self.note = "CUDA was asked for but could not be used here; validated on CPU"
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        types = {i.name: i.type for i in self.sess.get_inputs()}
        feeds = {k: (v.astype(np.float16) if types[k] == "tensor(float16)" and v.dtype == np.float32 else v)
                 for k, v in feeds.items() if k in types}  # --fp16-io: the original's fp32 inputs, rounded
        return dict(zip(self.output_names, self.sess.run(None, feeds)))

    def close(self) -> None:
        self.sess = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


class Validator:
    """Compares optimized models against one original; the original runs once, here, at construction."""

    def __init__(self, loaded: LoadedModel, options):
        self.loaded = loaded
        self.options = options
        self.provider = getattr(options, "provider", "cpu")
        self.notes: list[str] = []
        try:
            self.feeds, self.source = feed_sets(loaded.model, options)
        except ModelError as exc:  # inputs fuser cannot make (sequences, bfloat16): skip, do not fail the run
            raise CannotValidate(str(exc)) from None
        path = loaded.path if loaded.path is not None and loaded.has_external_data else None
        try:
            session = Session(loaded.model, loaded.base_dir, self.provider, path=path, loaded=loaded)
            if session.note:
                self.notes.append(session.note)
            self.device = session.sess.get_providers()[0]
            self.reference = [session.run(f) for f in self.feeds]
        except Exception as exc:
            shapes = "; ".join(", ".join(f"{k}:{'x'.join(map(str, v)) or 'scalar'}" for k, v in describe(f).items())
                               for f in self.feeds)
            raise CannotValidate(f"onnxruntime could not run the original model on inputs {shapes} "
                                 f"({_first_line(exc)}); give shapes with --input-shape or data with --inputs"
                                 ) from None
        finally:
            if "session" in locals():
                session.close()
        self.elem_types = {o.name: o.type.tensor_type.elem_type for o in loaded.model.graph.output}
        self._fp32_reference: list[dict[str, np.ndarray]] | None | bool = False  # False: not computed yet

    def shapes(self) -> list[dict[str, list[int]]]:
        return [describe(f) for f in self.feeds]

    def check(self, model: onnx.ModelProto) -> Result:
        try:
            session = Session(model, self.loaded.base_dir, self.provider, loaded=self.loaded)
        except Exception as exc:
            return Result(False, error=f"onnxruntime could not load the optimized model: {_first_line(exc)}")
        try:
            actual = [session.run(f) for f in self.feeds]
        except Exception as exc:
            return Result(False, error=f"onnxruntime could not run the optimized model: {_first_line(exc)}")
        finally:
            session.close()
        outputs = {}
        for name in self.reference[0]:
            atol, rtol = tolerance_for(name, self.elem_types.get(name), self.options)
            if any(name not in a for a in actual):
                outputs[name] = {"passed": False, "error": f"the optimized model has no output '{name}'"}
                continue
            outputs[name] = compare([r[name] for r in self.reference], [a[name] for a in actual], atol, rtol)
        failed = [k for k, v in outputs.items() if not v["passed"]]
        if failed and _computes_fp16(self.loaded.model):
            self._judge_by_fp32(failed, actual, outputs)
        return Result(all(v["passed"] for v in outputs.values()), outputs)

    def _judge_by_fp32(self, failed: list[str], actual: list[dict], outputs: dict[str, dict]) -> None:
        """Low precision: pass outputs that are no further from an fp32 reference than the original's."""
        if self._fp32_reference is False:
            self._fp32_reference = self._run_fp32()
        if not self._fp32_reference:
            return
        for name in failed:
            stats = outputs[name]
            if "error" in stats or any(name not in r for r in self._fp32_reference):
                continue
            truth = [r[name] for r in self._fp32_reference]
            orig = _abs_errors([r[name] for r in self.reference], truth)
            opt = _abs_errors([a[name] for a in actual], truth)
            if orig is None or opt is None:
                continue
            ok = (opt.max() <= FP32_SLACK * orig.max() + stats["atol"]
                  and opt.mean() <= FP32_SLACK * orig.mean() + stats["atol"])
            stats["fp32_reference"] = {"max_abs_original": _f(orig.max()), "max_abs_optimized": _f(opt.max()),
                                       "mean_abs_original": _f(orig.mean()), "mean_abs_optimized": _f(opt.mean())}
            if ok:
                stats["passed"] = True
                stats["judged_by"] = "fp32-reference"

    def _run_fp32(self) -> list[dict[str, np.ndarray]] | None:
        try:
            model = upcast_fp16(self.loaded.model, self.loaded.base_dir)
            session = Session(model, self.loaded.base_dir, self.provider)
            try:
                return [session.run({k: (v.astype(np.float32) if v.dtype == np.float16 else v)
                                     for k, v in f.items()}) for f in self.feeds]
            finally:
                session.close()
        except Exception as exc:
            self.notes.append(f"no fp32 reference for the fp16 model ({_first_line(exc)})")
            return None


def _abs_errors(values: list[np.ndarray], truth: list[np.ndarray]) -> np.ndarray | None:
    try:
        a = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values])
        t = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in truth])
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


def compare(reference: list[np.ndarray], actual: list[np.ndarray], atol: float, rtol: float) -> dict:
    """Statistics of one output over all input sets (see the module docstring); `passed` is the verdict."""
    stats: dict = {"dtype": str(np.asarray(reference[0]).dtype), "shape": list(np.shape(reference[0])),
                   "atol": atol, "rtol": rtol}
    for r, a in zip(reference, actual):
        if np.shape(r) != np.shape(a):
            stats.update(passed=False, error=f"shape {list(np.shape(a))} instead of {list(np.shape(r))}")
            return stats
    r_raw = [np.asarray(x) for x in reference]
    if any(x.dtype.kind in "OSU" for x in r_raw):  # strings: equality only
        equal = all(np.array_equal(x, np.asarray(y)) for x, y in zip(r_raw, actual))
        stats.update(elements=int(sum(x.size for x in r_raw)), mismatches=0 if equal else None, passed=equal)
        return stats
    r = np.concatenate([x.astype(np.float64).ravel() for x in r_raw]) if r_raw else np.zeros(0)
    a = np.concatenate([np.asarray(x).astype(np.float64).ravel() for x in actual]) if actual else np.zeros(0)
    stats["elements"] = int(r.size)
    stats["nan"] = {"reference": int(np.isnan(r).sum()), "optimized": int(np.isnan(a).sum())}
    stats["inf"] = {"reference": int(np.isinf(r).sum()), "optimized": int(np.isinf(a).sum())}
    exact = r_raw[0].dtype.kind in "biu"
    finite_ref = np.abs(r[np.isfinite(r)])
    scale = max(1.0, float(finite_ref.max())) if finite_ref.size else 1.0
    stats["scale"] = scale
    close = (r == a) if exact else np.isclose(a, r, rtol=rtol, atol=atol * scale, equal_nan=True)
    if exact:
        close |= np.isnan(r) & np.isnan(a)
    mismatches = int(r.size - int(close.sum()))
    stats["mismatches"] = mismatches
    finite = np.isfinite(r) & np.isfinite(a)
    err = np.abs(a[finite] - r[finite])
    ref_abs = np.abs(r[finite])
    if err.size:
        stats.update(max_abs=_f(err.max()), mean_abs=_f(err.mean()), median_abs=_f(np.median(err)),
                     p99_abs=_f(np.percentile(err, 99)))
        nonzero = ref_abs > 0
        if nonzero.any():
            rel = err[nonzero] / ref_abs[nonzero]
            stats.update(max_rel=_f(rel.max()), mean_rel=_f(rel.mean()), median_rel=_f(np.median(rel)),
                         p99_rel=_f(np.percentile(rel, 99)))
        else:
            stats.update(max_rel=None, mean_rel=None, median_rel=None, p99_rel=None)
        na, nr = np.linalg.norm(a[finite]), np.linalg.norm(r[finite])
        if na == 0 and nr == 0:
            stats["cosine"] = 1.0
        elif na == 0 or nr == 0:
            stats["cosine"] = 0.0
        else:
            stats["cosine"] = _f(np.dot(a[finite], r[finite]) / (na * nr))
    else:
        stats.update(max_abs=0.0 if r.size == 0 else None, mean_abs=None, median_abs=None, p99_abs=None,
                     max_rel=None, mean_rel=None, median_rel=None, p99_rel=None, cosine=None)
    if mismatches:
        bad = np.flatnonzero(~close)
        diff = np.where(np.isfinite(a[bad]) & np.isfinite(r[bad]), np.abs(a[bad] - r[bad]), np.inf)
        k = int(bad[int(np.argmax(diff))])
        stats["worst"] = {"index": k, "reference": _f(r[k]) if np.isfinite(r[k]) else str(r[k]),
                          "optimized": _f(a[k]) if np.isfinite(a[k]) else str(a[k])}
    stats["passed"] = mismatches == 0
    return stats


def _computes_fp16(model: onnx.ModelProto) -> bool:
    g = model.graph
    if any(t.data_type == TensorProto.FLOAT16 for t in g.initializer):
        return True
    if any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in (*g.input, *g.output, *g.value_info)):
        return True
    return any(n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)
               for n in g.node)


def upcast_fp16(model: onnx.ModelProto, base_dir: Path | None = None) -> onnx.ModelProto:
    """A copy of `model` computing in fp32 wherever it computed in fp16 (the reference for fp16 models)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _upcast_graph(out.graph, base_dir)
    return out


def _upcast_tensor(t: onnx.TensorProto, base_dir: Path | None) -> None:
    if t.data_type != TensorProto.FLOAT16:
        return
    array = numpy_helper.to_array(t, str(base_dir) if base_dir else "").astype(np.float32)
    t.CopyFrom(numpy_helper.from_array(array, t.name))


def _upcast_graph(g: onnx.GraphProto, base_dir: Path | None) -> None:
    for t in g.initializer:
        _upcast_tensor(t, base_dir)
    for v in (*g.input, *g.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16:
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
            elif a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.FLOAT


def summarize(status: str, result: Result | None, n_sets: int, rolled_back: list[dict] = (),
              total_rewrites: int = 0) -> str:
    """The validation section's one-line summary."""
    if result is None:
        return status
    n = len(result.outputs)
    worst = max((v.get("max_abs") or 0.0 for v in result.outputs.values()), default=0.0)
    sets = f"{n_sets} input set{'s' if n_sets != 1 else ''}"
    if status == "passed":
        return f"passed: {n} output{'s' if n != 1 else ''} within tolerance on {sets} (max abs error {worst:.3g})"
    if status == "rolled-back":
        keys = ", ".join(r["key"] for r in rolled_back)
        return (f"rolled back {len(rolled_back)} of {total_rewrites} rewrites that changed the outputs ({keys}); "
                f"the rest pass on {sets} (max abs error {worst:.3g})")
    return f"failed: {describe_failure(result)}"


def describe_failure(result: Result) -> str:
    if result.error:
        return result.error
    parts = []
    for name in result.failed_outputs():
        s = result.outputs[name]
        if "error" in s:
            parts.append(f"output '{name}': {s['error']}")
        else:
            parts.append(f"output '{name}': {s['mismatches']} of {s['elements']} elements off "
                         f"(max abs error {_g(s.get('max_abs'))}, "
                         f"atol {s['atol']:g}, rtol {s['rtol']:g}"
                         + (f", NaN {s['nan']['optimized']} vs {s['nan']['reference']}"
                            if s.get("nan") and s["nan"]["optimized"] != s["nan"]["reference"] else "") + ")")
    return "; ".join(parts[:4]) + (f"; and {len(parts) - 4} more outputs" if len(parts) > 4 else "")


def environment() -> dict:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "threads": os.cpu_count()}


__all__ = ["DEFAULT_TOLERANCE", "CannotValidate", "Result", "Session", "ValidationFailed", "Validator",
           "compare", "tolerance_for", "upcast_fp16"]
