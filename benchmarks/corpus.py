#!/usr/bin/env python3
"""Benchmark model corpus: random-weight ONNX exports of real models, cached on disk, deterministic.

    python benchmarks/corpus.py                      # export everything not cached yet
    python benchmarks/corpus.py --list               # names, specs, cached or not
    python benchmarks/corpus.py --only bert_base_op12 --only 'mobilenet_*'
    python benchmarks/corpus.py --force --only gpt2  # re-export even if cached

Run it in the benchmark's own environment (``bash benchmarks/setup_env.sh`` creates benchmarks/.venv).

Every torch model is built from its config / constructor with random weights (``torch.manual_seed(0)``; nothing is ever
downloaded: HF_HUB_OFFLINE=1), put in eval mode and exported with the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``). Each export runs in its own subprocess (one crash or hang cannot take the
others down), is written atomically to ``<out>/NAME.onnx``, loaded once in onnxruntime (CPU, graph optimizations off)
and compared with the torch output on two input shapes (the export shape and a second one on the dynamic axes).
``<out>/manifest.json`` records, per model: opset, inputs/outputs, node count, size, sha256, torch/transformers/onnx
versions, timings, check errors and notes on how it was exported.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# Never reach a model hub, whatever code path asks for it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "cache"
MANIFEST = "manifest.json"
SEED = 0
MANIFEST_VERSION = 1


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Entry:
    name: str
    kind: str  # "torch" | "light" | "synthetic"
    description: str
    build: Callable[..., dict]  # build(out_dir: Path, name: str) -> manifest entry (without common fields)
    tags: list[str] = field(default_factory=list)


REGISTRY: dict[str, Entry] = {}


def register(name: str, kind: str, description: str, tags: list[str] | None = None):
    def deco(fn):
        REGISTRY[name] = Entry(name, kind, description, fn, tags or [])
        return fn

    return deco


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "torchvision", "transformers", "onnx", "onnxruntime", "numpy"):
        if mod in ("torch", "torchvision", "transformers") and mod not in sys.modules:
            continue  # only record the frameworks that built this model
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    return out


def _dim(d) -> int | str | None:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param"):
        return d.dim_param
    return None


def describe_io(model) -> tuple[list[dict], list[dict]]:
    import onnx

    inits = {i.name for i in model.graph.initializer}

    def one(vi):
        t = vi.type.tensor_type
        return {
            "name": vi.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else None,
            "shape": [_dim(d) for d in t.shape.dim] if t.HasField("shape") else None,
        }

    return ([one(v) for v in model.graph.input if v.name not in inits], [one(v) for v in model.graph.output])


def model_facts(path: Path) -> dict[str, Any]:
    """Facts read back from the written file (without loading external data)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        ops[key] = ops.get(key, 0) + 1
    ext_files = sorted(
        {
            e.value
            for t in m.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data
            if e.key == "location"
        }
    )
    inputs, outputs = describe_io(m)
    size = path.stat().st_size
    ext = []
    for f in ext_files:
        p = path.parent / f
        ext.append({"file": f, "size_bytes": p.stat().st_size, "sha256": sha256_file(p)})
        size += p.stat().st_size
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    dtypes = sorted({onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in m.graph.initializer})
    return {
        "file": path.name,
        "opset": opset,
        "ir_version": m.ir_version,
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "nodes": len(m.graph.node),
        "op_counts": dict(sorted(ops.items())),
        "initializers": len(m.graph.initializer),
        "initializer_dtypes": dtypes,
        "inputs": inputs,
        "outputs": outputs,
        "size_bytes": size,
        "sha256": sha256_file(path),
        "external_data": ext,
    }


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    # The check is about the graph as written: no onnxruntime rewrites.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def max_abs_err(ref, got) -> dict[str, float]:
    import numpy as np

    out = {}
    for name, r, g in zip(ref["names"], ref["values"], got):
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64)
        if r.shape != g.shape:
            raise RuntimeError(f"output {name}: shape {g.shape} from onnxruntime, {r.shape} from the reference")
        if not np.isfinite(g).all():
            raise RuntimeError(f"output {name}: onnxruntime produced non-finite values")
        out[name] = float(np.max(np.abs(r - g))) if r.size else 0.0
        out[name + ":ref_max_abs"] = float(np.max(np.abs(r))) if r.size else 0.0
    return out


@contextlib.contextmanager
def atomic_path(final: Path):
    """Yield a temporary path beside ``final``; move it into place only on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_p = Path(tmp)
    try:
        yield tmp_p
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_p, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(tmp_p, final)
    finally:
        if tmp_p.exists():
            tmp_p.unlink()


# --------------------------------------------------------------------------------------------------------------------
# torch exports
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class TorchSpec:
    model: Any
    args: tuple  # sample inputs used for export (torch tensors)
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    opset: int
    extra_args: list[tuple] = field(default_factory=list)  # more inputs (other sizes on the dynamic axes) to check
    export_kwargs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    post_check: Callable[[Any], list[str]] | None = None  # onnx.ModelProto -> extra notes (raise to fail)
    context: Callable[[], Any] | None = None  # context manager factory entered around the reference run and export


def realistic_constants(model, seed: int = SEED + 100) -> list[str]:
    """Make the degenerate constants of a fresh random init look like trained ones, in place, deterministically.

    A fresh init has BatchNorm weight=1 / bias=0 / running_mean=0 / running_var=1, LayerNorm gamma=1 / beta=0, zero
    biases, constant layer scales. That is not what deployed models look like, and it distorts a fusion benchmark:
    BN is then (almost) an identity, so a wrong Conv+BN fold goes unseen; onnxsim deletes Mul(1)/Add(0) before its
    LayerNorm fusion (then fuses none); and the exporter de-duplicates equal-valued initializers into Identity nodes.
    So: norm weights ~ 1 + 0.1 N(0,1) (LN) or U(0.5, 1.5) (BN), norm biases and running means ~ 0.1 N(0,1), running
    variances ~ U(0.5, 1.5), every other tensor whose elements are all equal c ~ c + max(0.1|c|, 0.02) N(0,1).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    changed: dict[str, int] = {}
    seen: set[int] = set()
    with torch.no_grad():
        for mname, mod in model.named_modules():
            cls = type(mod).__name__
            is_norm = "Norm" in cls
            is_bn = "BatchNorm" in cls
            tensors = list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
            for tname, t in tensors:
                if t is None or not t.is_floating_point() or t.numel() == 0 or id(t) in seen:
                    continue
                seen.add(id(t))
                shape = t.shape
                n = lambda: torch.randn(shape, generator=g)  # noqa: E731
                u = lambda: torch.rand(shape, generator=g)  # noqa: E731
                if tname == "running_var":
                    v, kind = 0.5 + u(), "bn running_var"
                elif tname == "running_mean":
                    v, kind = 0.1 * n(), "bn running_mean"
                elif is_norm and tname == "weight":
                    v, kind = (0.5 + u(), "bn weight") if is_bn else (1.0 + 0.1 * n(), "norm weight")
                elif is_norm and tname == "bias":
                    v, kind = 0.1 * n(), "norm bias"
                else:
                    flat = t.detach().reshape(-1)
                    if t.numel() < 2 or not bool((flat == flat[0]).all()):
                        continue
                    c = float(flat[0])
                    v, kind = c + max(0.1 * abs(c), 0.02) * n(), "constant tensor"
                t.copy_(v.to(t.dtype))
                changed[kind] = changed.get(kind, 0) + 1
    return [
        "degenerate init constants randomized (realistic_constants, seed %d): %s"
        % (seed, ", ".join(f"{k} x{v}" for k, v in sorted(changed.items())))
    ]


def _torch_outputs(model, args) -> list:
    import torch

    with torch.no_grad():
        out = model(*args)
    if isinstance(out, torch.Tensor):
        out = (out,)
    return [o.detach().float().cpu().numpy() for o in out]


def export_torch(out_dir: Path, name: str, make_spec: Callable[[], TorchSpec]) -> dict:
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    spec = make_spec()
    build_s = time.perf_counter() - t0
    spec.model.eval()
    spec.notes += realistic_constants(spec.model)
    ctx = contextlib.ExitStack()
    if spec.context:
        ctx.enter_context(spec.context())
    with ctx:
        return _export_torch(out_dir, name, spec, build_s)


def _export_torch(out_dir: Path, name: str, spec: TorchSpec, build_s: float) -> dict:
    import torch

    refs = [(spec.args, _torch_outputs(spec.model, spec.args))]
    refs += [(a, _torch_outputs(spec.model, a)) for a in spec.extra_args]

    final = out_dir / f"{name}.onnx"
    kwargs = dict(
        opset_version=spec.opset,
        input_names=spec.input_names,
        output_names=spec.output_names,
        dynamic_axes=spec.dynamic_axes,
        do_constant_folding=True,
        dynamo=False,
    )
    kwargs.update(spec.export_kwargs)
    t0 = time.perf_counter()
    with atomic_path(final) as tmp:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(spec.model, spec.args, str(tmp), **kwargs)
        export_s = time.perf_counter() - t0
        import onnx

        m = onnx.load(str(tmp))
        onnx.checker.check_model(m)
        notes = list(spec.notes)
        if spec.post_check:
            notes += spec.post_check(m)
        del m
        # load + run once in onnxruntime, compare with torch on every checked shape
        t1 = time.perf_counter()
        sess = ort_session(tmp)
        checks = []
        for args, ref in refs:
            feeds = {n: a.detach().cpu().numpy() for n, a in zip(spec.input_names, args)}
            got = sess.run(spec.output_names, feeds)
            checks.append(
                {
                    "inputs": {k: list(v.shape) for k, v in feeds.items()},
                    "max_abs_err": max_abs_err({"names": spec.output_names, "values": ref}, got),
                }
            )
        check_s = time.perf_counter() - t1
        del sess
    shown = {k: v for k, v in kwargs.items() if k not in ("input_names", "output_names", "dynamic_axes")}
    shown = {k: (str(v) if not isinstance(v, (int, float, bool, str, type(None))) else v) for k, v in shown.items()}
    return {
        "export_seconds": round(export_s, 3),
        "build_seconds": round(build_s, 3),
        "check_seconds": round(check_s, 3),
        "checks": checks,
        "export_kwargs": shown,
        "dynamic_axes": {k: {str(a): s for a, s in v.items()} for k, v in spec.dynamic_axes.items()},
        "notes": notes,
    }


def _gen(seed: int = 1):
    import torch

    return torch.Generator().manual_seed(seed)


def _count_ops(m, op: str) -> int:
    return sum(1 for n in m.graph.node if n.op_type == op)


# ---- torchvision ---------------------------------------------------------------------------------------------------
def _torchvision_spec(arch: str, opset: int, notes: list[str] | None = None, **export_kwargs) -> Callable[[], TorchSpec]:
    def make() -> TorchSpec:
        import torch
        import torchvision

        torch.manual_seed(SEED)
        model = getattr(torchvision.models, arch)(weights=None).eval()
        x = torch.randn(1, 3, 224, 224, generator=_gen(1))
        x2 = torch.randn(2, 3, 224, 224, generator=_gen(2))
        return TorchSpec(
            model=model,
            args=(x,),
            extra_args=[(x2,)],
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset=opset,
            export_kwargs=export_kwargs,
            notes=list(notes or []),
        )

    return make


for _arch, _ops in (("mobilenet_v3_small", (12, 14)), ("mobilenet_v3_large", (12, 13, 14))):
    for _op in _ops:
        _hs = "HardSigmoid+Mul" if _op < 14 else "native HardSwish"
        register(
            f"{_arch}_op{_op}",
            "torch",
            f"torchvision {_arch}, weights=None, 1x3x224x224 (dynamic batch), opset {_op}: hswish as {_hs}",
            ["cnn", "hswish"],
        )(lambda out, name, a=_arch, o=_op: export_torch(out, name, _torchvision_spec(a, o)))


def _resnet50_bn_spec() -> TorchSpec:
    import torch

    spec = _torchvision_spec(
        "resnet50",
        13,
        notes=[
            "training=TrainingMode.PRESERVE with the model in eval(): the exporter skips its eval-mode peephole that folds "
            "BatchNormalization into Conv, so BN stays (inference form: 1 output, running statistics)"
        ],
        training=torch.onnx.TrainingMode.PRESERVE,
    )()

    def post(m):
        n_bn = _count_ops(m, "BatchNormalization")
        n_conv = _count_ops(m, "Conv")
        if n_bn == 0:
            raise RuntimeError("no BatchNormalization left in the graph")
        bad = [n.name for n in m.graph.node if n.op_type == "BatchNormalization" and len(n.output) != 1]
        if bad:
            raise RuntimeError(f"BatchNormalization in training form (several outputs): {bad[:3]}")
        return [f"{n_bn} BatchNormalization kept for {n_conv} Conv"]

    spec.post_check = post
    return spec


register(
    "resnet50_bn",
    "torch",
    "torchvision resnet50, weights=None, opset 13, exported with training=PRESERVE in eval mode: BatchNormalization kept",
    ["cnn", "bn"],
)(lambda out, name: export_torch(out, name, _resnet50_bn_spec))

register(
    "efficientnet_b0",
    "torch",
    "torchvision efficientnet_b0, weights=None, opset 13 (SiLU as Sigmoid+Mul)",
    ["cnn"],
)(lambda out, name: export_torch(out, name, _torchvision_spec("efficientnet_b0", 13)))

register(
    "convnext_tiny",
    "torch",
    "torchvision convnext_tiny, weights=None, opset 13: channels-first LayerNorm decomposed between two Transposes",
    ["cnn", "layernorm"],
)(lambda out, name: export_torch(out, name, _torchvision_spec("convnext_tiny", 13)))

@contextlib.contextmanager
def _patched(obj, attr: str, value):
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def _math_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q k^T * scale + mask) v, spelled with plain ops (what the opset-14 SDPA symbolic writes too)."""
    import math

    import torch

    if is_causal or dropout_p or enable_gqa:
        raise NotImplementedError("math SDPA stand-in: is_causal / dropout / GQA not needed here")
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    attn = torch.matmul(q, k.transpose(-2, -1)) * s
    if attn_mask is not None:
        attn = attn.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else attn + attn_mask
    return torch.matmul(torch.softmax(attn, dim=-1), v)


def _vit_spec() -> TorchSpec:
    import torch
    import torch.nn.functional as F

    @contextlib.contextmanager
    def ctx():
        # nn.MultiheadAttention's eval-mode fast path traces to aten::_native_multi_head_attention, which the
        # TorchScript exporter cannot export: turn it off. Its composite path then calls F.scaled_dot_product_attention,
        # whose symbolic needs opset 14: at opset 13, spell it with MatMul/Mul/Softmax/MatMul instead.
        old = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with _patched(F, "scaled_dot_product_attention", _math_sdpa):
                yield
        finally:
            torch.backends.mha.set_fastpath_enabled(old)

    spec = _torchvision_spec("vit_b_16", 13)()
    spec.context = ctx
    spec.notes.append("MHA fast path off (aten::_native_multi_head_attention has no TorchScript ONNX symbolic) and "
                      "F.scaled_dot_product_attention replaced by a MatMul/Mul/Softmax/MatMul stand-in (its symbolic "
                      "needs opset 14)")
    return spec


register(
    "vit_b_16",
    "torch",
    "torchvision vit_b_16, weights=None, opset 13: decomposed LayerNorm, erf GELU",
    ["transformer", "layernorm"],
)(lambda out, name: export_torch(out, name, _vit_spec))


# ---- transformers --------------------------------------------------------------------------------------------------
def _hf_model(model_cls, config):
    """Random init from a config, eager attention, no hub access."""
    model = model_cls._from_config(config, attn_implementation="eager")
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "eager":
        raise RuntimeError(f"attention implementation is {impl!r}, expected 'eager'")
    return model.eval()


def _bert_spec(opset: int, half: bool = False) -> Callable[[], TorchSpec]:
    def make() -> TorchSpec:
        import torch
        from transformers import BertConfig, BertModel

        class BertWrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                o = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           return_dict=True)
                return o.last_hidden_state, o.pooler_output

        torch.manual_seed(SEED)
        cfg = BertConfig()
        model = BertWrap(_hf_model(BertModel, cfg)).eval()
        notes = ["BertConfig() defaults (12 layers, hidden 768), random init, attn_implementation='eager'"]
        if half:
            model = model.half()
            notes.append("fp16 by model.half() before export (torch CPU fp16 kernels); inputs stay int64")

        def inputs(b, s, seed, pad):
            ids = torch.randint(0, cfg.vocab_size, (b, s), generator=_gen(seed), dtype=torch.int64)
            mask = torch.ones(b, s, dtype=torch.int64)
            if pad:
                mask[-1, s - pad:] = 0  # last sequence padded: exercises the mask path
            tt = torch.zeros(b, s, dtype=torch.int64)
            tt[:, s // 2:] = 1
            return ids, mask, tt

        names = ["input_ids", "attention_mask", "token_type_ids"]
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
        axes["pooler_output"] = {0: "batch"}
        return TorchSpec(
            model=model,
            args=inputs(1, 128, 1, 0),
            extra_args=[inputs(2, 32, 2, 8)],
            input_names=names,
            output_names=["last_hidden_state", "pooler_output"],
            dynamic_axes=axes,
            opset=opset,
            notes=notes,
        )

    return make


register(
    "bert_base_op12",
    "torch",
    "transformers BertModel(BertConfig()), random, eager attention, opset 12 (decomposed LayerNorm), "
    "int64 input_ids/attention_mask/token_type_ids 1x128, dynamic batch & sequence",
    ["transformer", "layernorm"],
)(lambda out, name: export_torch(out, name, _bert_spec(12)))
register(
    "bert_base_op17",
    "torch",
    "as bert_base_op12 at opset 17 (native LayerNormalization)",
    ["transformer"],
)(lambda out, name: export_torch(out, name, _bert_spec(17)))
register(
    "bert_base_op12_fp16",
    "torch",
    "bert_base_op12 in fp16 (model.half() before export): decomposed fp16 LayerNorm",
    ["transformer", "layernorm", "fp16"],
)(lambda out, name: export_torch(out, name, _bert_spec(12, half=True)))


def _gpt2_spec() -> TorchSpec:
    import torch
    from transformers import GPT2Config, GPT2Model

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False, return_dict=True).last_hidden_state

    import transformers.masking_utils as mu

    torch.manual_seed(SEED)
    cfg = GPT2Config(use_cache=False)
    model = Wrap(_hf_model(GPT2Model, cfg)).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 64), generator=_gen(1), dtype=torch.int64)
    ids2 = torch.randint(0, cfg.vocab_size, (2, 16), generator=_gen(2), dtype=torch.int64)
    return TorchSpec(
        model=model,
        args=(ids,),
        extra_args=[(ids2,)],
        input_names=["input_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "last_hidden_state": {0: "batch", 1: "sequence"}},
        opset=13,
        # transformers 5 looks for packed sequences in position_ids (torch.diff, which the TorchScript exporter cannot
        # export) whenever no attention_mask is given. GPT2Model's own position_ids are arange(seq): never packed, and
        # the function returns None for them; say so directly.
        context=lambda: _patched(mu, "find_packed_sequence_indices", lambda position_ids: None),
        notes=["GPT2Config() defaults (12 layers, hidden 768), random init, eager attention, use_cache=False",
               "transformers.masking_utils.find_packed_sequence_indices patched to return None (its torch.diff does not "
               "export; GPT2's internal position_ids are never packed)"],
    )


register(
    "gpt2",
    "torch",
    "transformers GPT2Model(GPT2Config()), random, eager attention, use_cache=False, opset 13, input_ids 1x64 dynamic",
    ["transformer", "layernorm"],
)(lambda out, name: export_torch(out, name, _gpt2_spec))

DAB_DETR_SIZE = int(os.environ.get("CORPUS_DAB_DETR_SIZE", "800"))


def _dab_detr_spec() -> TorchSpec:
    import torch
    from transformers import DabDetrConfig, DabDetrForObjectDetection, ResNetConfig

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            o = self.m(pixel_values=pixel_values, return_dict=True)
            return o.logits, o.pred_boxes

    torch.manual_seed(SEED)
    notes = []
    backbone = ResNetConfig(out_features=["stage4"])  # ResNet-50 layout, random init, no pretrained weights
    kw = dict(backbone_config=backbone)
    cfg = None
    # Older transformers take use_pretrained_backbone / use_timm_backbone; 5.x dropped them (a backbone_config given
    # means the transformers ResNet is used, random init). Pass them where accepted.
    try:
        cfg = DabDetrConfig(use_pretrained_backbone=False, use_timm_backbone=False, **kw)
        notes.append("DabDetrConfig(use_pretrained_backbone=False, use_timm_backbone=False, backbone_config=ResNetConfig())")
    except Exception as e:  # noqa: BLE001
        cfg = DabDetrConfig(**kw)
        notes.append(f"DabDetrConfig(backbone_config=ResNetConfig()) (use_*_backbone flags rejected: {type(e).__name__})")
    if getattr(cfg, "use_pretrained_backbone", False):
        raise RuntimeError("config asks for a pretrained backbone")
    model = Wrap(_hf_model(DabDetrForObjectDetection, cfg)).eval()
    s = DAB_DETR_SIZE
    x = torch.randn(1, 3, s, s, generator=_gen(1))
    x2 = torch.randn(2, 3, s, s, generator=_gen(2))
    notes.append(f"pixel_values 1x3x{s}x{s}, dynamic batch; no pixel_mask input (all-ones mask built inside)")
    notes.append("backbone BN is DabDetrFrozenBatchNorm2d: exports as Mul/Add (scale/bias) after Conv")
    return TorchSpec(
        model=model,
        args=(x,),
        extra_args=[(x2,)],
        input_names=["pixel_values"],
        output_names=["logits", "pred_boxes"],
        dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}, "pred_boxes": {0: "batch"}},
        opset=12,
        notes=notes,
    )


register(
    "dab_detr",
    "torch",
    "transformers DabDetrForObjectDetection, random init, ResNet backbone from ResNetConfig() (no pretrained weights), "
    f"eager attention, opset 12, pixel_values 1x3x{DAB_DETR_SIZE}x{DAB_DETR_SIZE}, dynamic batch",
    ["detector", "shape-tensors", "layernorm"],
)(lambda out, name: export_torch(out, name, _dab_detr_spec))


# --------------------------------------------------------------------------------------------------------------------
# onnx's bundled light models
# --------------------------------------------------------------------------------------------------------------------
def light_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.origin:
        raise RuntimeError("onnx is not installed")
    return Path(spec.origin).parent / "backend" / "test" / "data" / "light"


def light_names() -> list[tuple[str, Path]]:
    try:
        d = light_dir()
    except Exception:  # noqa: BLE001
        return []
    out = []
    for p in sorted(d.glob("*.onnx")):
        stem = p.stem[len("light_"):] if p.stem.startswith("light_") else p.stem
        out.append((f"light_{stem}", p))
    return out


def export_light(out_dir: Path, name: str, src: Path) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    final = out_dir / f"{name}.onnx"
    with atomic_path(final) as tmp:
        shutil.copyfile(src, tmp)
        copy_s = time.perf_counter() - t0
        import onnx

        m = onnx.load(str(tmp))
        onnx.checker.check_model(m)
        inputs, _ = describe_io(m)
        t1 = time.perf_counter()
        sess = ort_session(tmp)
        rng = np.random.default_rng(SEED)
        feeds = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
        outs = sess.run(None, feeds)
        for o in outs:
            if not np.isfinite(o).all():
                raise RuntimeError("onnxruntime produced non-finite values")
        check_s = time.perf_counter() - t1
    return {
        "export_seconds": round(copy_s, 3),
        "check_seconds": round(check_s, 3),
        "checks": [{"inputs": {k: list(v.shape) for k, v in feeds.items()}, "max_abs_err": None}],
        "source": f"onnx package: backend/test/data/light/{src.name}",
        "notes": ["copied verbatim from the onnx package; weights are ConstantOfShape fills (that is what 'light' means)"],
    }


for _lname, _lpath in light_names():
    register(_lname, "light", f"onnx bundled light model {_lpath.name} (copied verbatim)", ["light"])(
        lambda out, name, p=_lpath: export_light(out, name, p)
    )


# --------------------------------------------------------------------------------------------------------------------
# big_transformer: > 2 GB, external data, written tensor by tensor (no torch)
# --------------------------------------------------------------------------------------------------------------------
BIG = dict(layers=24, hidden=2048, ffn=8192, eps=1e-5, opset=13, align=4096)


def export_big_transformer(out_dir: Path, name: str) -> dict:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    L, H, F, eps = BIG["layers"], BIG["hidden"], BIG["ffn"], BIG["eps"]
    rng = np.random.default_rng(SEED)
    final = out_dir / f"{name}.onnx"
    data_name = f"{name}.onnx.data"
    final_data = out_dir / data_name
    t0 = time.perf_counter()

    nodes: list = []
    inits: list = []
    offset = 0
    layer_w: list[dict] = []  # offsets, for the numpy reference check

    def constant(out: str, value: float):
        nodes.append(
            helper.make_node(
                "Constant", [], [out], name=out, value=helper.make_tensor(out + "_value", TensorProto.FLOAT, [], [value])
            )
        )
        return out

    tmp_data = out_dir / f".{data_name}.tmp"
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: tmp_data.unlink() if tmp_data.exists() else None)
        f = stack.enter_context(open(tmp_data, "wb"))

        def weight(wname: str, arr: np.ndarray) -> str:
            nonlocal offset
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            pad = (-offset) % BIG["align"]
            if pad:
                f.write(b"\0" * pad)
                offset += pad
            b = arr.tobytes()
            f.write(b)
            t = TensorProto()
            t.name = wname
            t.data_type = TensorProto.FLOAT
            t.dims.extend(arr.shape)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(b)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
            rec = (offset, arr.shape)
            offset += len(b)
            return wname, rec

        def layer_norm(x: str, p: str) -> tuple[str, dict]:
            g, rg = weight(f"{p}.weight", 1.0 + 0.1 * rng.standard_normal(H, dtype=np.float32))
            b, rb = weight(f"{p}.bias", 0.1 * rng.standard_normal(H, dtype=np.float32))
            two = constant(f"/{p}/Constant", 2.0)
            e = constant(f"/{p}/Constant_1", eps)
            n = lambda op, ins, out, **kw: nodes.append(  # noqa: E731
                helper.make_node(op, ins, [f"/{p}/{out}_output_0"], name=f"/{p}/{out}", **kw)
            ) or f"/{p}/{out}_output_0"
            m = n("ReduceMean", [x], "ReduceMean", axes=[-1], keepdims=1)
            d = n("Sub", [x, m], "Sub")
            d2 = n("Pow", [d, two], "Pow")
            v = n("ReduceMean", [d2], "ReduceMean_1", axes=[-1], keepdims=1)
            ve = n("Add", [v, e], "Add")
            s = n("Sqrt", [ve], "Sqrt")
            q = n("Div", [d, s], "Div")
            qg = n("Mul", [q, g], "Mul")
            y = n("Add", [qg, b], "Add_1")
            return y, {"g": rg, "b": rb}

        def linear(x: str, p: str, fan_in: int, fan_out: int) -> tuple[str, dict]:
            w = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
            w *= np.float32(1.0 / np.sqrt(fan_in))
            wn, rw = weight(f"{p}.weight", w)
            del w
            bn, rb = weight(f"{p}.bias", 0.02 * rng.standard_normal(fan_out, dtype=np.float32))
            mm = f"/{p}/MatMul_output_0"
            nodes.append(helper.make_node("MatMul", [x, wn], [mm], name=f"/{p}/MatMul"))
            y = f"/{p}/Add_output_0"
            nodes.append(helper.make_node("Add", [mm, bn], [y], name=f"/{p}/Add"))
            return y, {"w": rw, "b": rb}

        x = "input"
        for i in range(L):
            p = f"layers.{i}"
            h, ln = layer_norm(x, f"{p}/ln")
            a, up = linear(h, f"{p}/fc1", H, F)
            r = f"/{p}/act/Relu_output_0"
            nodes.append(helper.make_node("Relu", [a], [r], name=f"/{p}/act/Relu"))
            c, down = linear(r, f"{p}/fc2", F, H)
            y = f"/{p}/Add_output_0"
            nodes.append(helper.make_node("Add", [x, c], [y], name=f"/{p}/Add"))
            layer_w.append({"ln": ln, "up": up, "down": down})
            x = y
        out, ln_f = layer_norm(x, "ln_f")
        nodes.append(helper.make_node("Identity", [out], ["output"], name="/output/Identity"))
        f.flush()
        os.fsync(f.fileno())
        data_bytes = offset

        graph = helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "sequence", H])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "sequence", H])],
            initializer=inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", BIG["opset"])], producer_name="fuser-benchmarks-corpus"
        )
        model.ir_version = 8  # what torch writes for opset 13-17; onnxruntime 1.31 reads it
        with atomic_path(final) as tmp:
            onnx.save(model, str(tmp))  # small: every weight is external
            # the .onnx is checked against its final data file name: put the data in place first
            f.close()
            os.replace(tmp_data, final_data)
            onnx.checker.check_model(str(tmp))
        export_s = time.perf_counter() - t0

    # onnxruntime check on [1, 8, 2048] against a numpy reference that reads weights through a memmap
    t1 = time.perf_counter()
    x_in = np.random.default_rng(SEED + 1).standard_normal((1, 8, H), dtype=np.float32)
    sess = ort_session(final)
    (got,) = sess.run(["output"], {"input": x_in})
    del sess
    mm = np.memmap(final_data, dtype=np.uint8, mode="r")

    def W(rec):
        off, shape = rec
        n = int(np.prod(shape)) * 4
        return np.frombuffer(mm[off:off + n], dtype=np.float32).reshape(shape).astype(np.float64)

    def ln_ref(x, r):
        m = x.mean(-1, keepdims=True)
        d = x - m
        return d / np.sqrt((d * d).mean(-1, keepdims=True) + eps) * W(r["g"]) + W(r["b"])

    xr = x_in.astype(np.float64)
    for lw in layer_w:
        h = ln_ref(xr, lw["ln"])
        a = np.maximum(h @ W(lw["up"]["w"]) + W(lw["up"]["b"]), 0)
        xr = xr + a @ W(lw["down"]["w"]) + W(lw["down"]["b"])
    ref = ln_ref(xr, ln_f)
    del mm
    err = max_abs_err({"names": ["output"], "values": [ref]}, [got])
    check_s = time.perf_counter() - t1
    return {
        "export_seconds": round(export_s, 3),
        "check_seconds": round(check_s, 3),
        "checks": [{"inputs": {"input": [1, 8, H]}, "max_abs_err": err, "reference": "numpy float64"}],
        "weights_bytes": data_bytes,
        "structure": dict(BIG),
        "notes": [
            f"{L} x [decomposed LayerNorm -> MatMul+Add ({H}->{F}) -> Relu -> MatMul+Add ({F}->{H}) -> residual Add] "
            "+ final LayerNorm; built with onnx.helper + numpy (seed 0), weights streamed tensor by tensor into "
            f"{data_name} ({BIG['align']}-byte aligned offsets); gamma = 1 + 0.1 N(0,1), beta = 0.1 N(0,1)",
        ],
    }


register(
    "big_transformer",
    "synthetic",
    f"synthetic {BIG['layers']}-layer MLP transformer, hidden {BIG['hidden']}, FFN {BIG['ffn']}, decomposed LayerNorm, "
    "opset 13, input [batch, sequence, 2048] float32, ~3 GiB of external data",
    ["big", "external-data", "layernorm"],
)(export_big_transformer)


# --------------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------------
def load_manifest(out: Path) -> dict:
    p = out / MANIFEST
    if p.exists():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            pass
    return {"manifest_version": MANIFEST_VERSION, "models": {}}


def save_manifest(out: Path, man: dict) -> None:
    man["models"] = dict(sorted(man["models"].items()))
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(man, indent=1) + "\n")


def is_cached(out: Path, name: str, man: dict) -> bool:
    e = man["models"].get(name)
    if not e or e.get("status") != "ok":
        return False
    f = out / e["file"]
    if not f.exists() or f.stat().st_size != e.get("onnx_size_bytes", -1):
        return False
    return all((out / x["file"]).exists() and (out / x["file"]).stat().st_size == x["size_bytes"]
               for x in e.get("external_data", []))


def run_one(out: Path, name: str) -> dict:
    """Export one model in this process; return its manifest entry."""
    entry = REGISTRY[name]
    info = entry.build(out, name)
    facts = model_facts(out / f"{name}.onnx")
    res = {
        "name": name,
        "status": "ok",
        "kind": entry.kind,
        "description": entry.description,
        "tags": entry.tags,
        "seed": SEED,
        **facts,
        "onnx_size_bytes": (out / f"{name}.onnx").stat().st_size,
        **info,
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return res


def run_isolated(out: Path, name: str, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as td:
        res_path = Path(td) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--_worker", name,
               "--_result", str(res_path)]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            return {"name": name, "status": "failed", "error": f"timed out after {timeout:.0f} s"}
        if res_path.exists():
            return json.loads(res_path.read_text())
        return {"name": name, "status": "failed", "error": f"worker exited {rc} without a result",
                "seconds": round(time.perf_counter() - t0, 1)}


def worker(out: Path, name: str, result: Path) -> int:
    try:
        res = run_one(out, name)
        rc = 0
    except BaseException as e:  # noqa: BLE001
        traceback.print_exc()
        res = {"name": name, "status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
        rc = 1
    result.write_text(json.dumps(res))
    return rc


def fmt_size(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def worst_err(e: dict) -> str:
    vals = []
    for c in e.get("checks", []):
        for k, v in (c.get("max_abs_err") or {}).items():
            if not k.endswith(":ref_max_abs"):
                vals.append(v)
    return f"{max(vals):.2e}" if vals else "-"


def print_table(rows: list[tuple[dict, str]]) -> None:
    hdr = f"{'name':28s} {'opset':>5s} {'nodes':>6s} {'size':>10s} {'export s':>9s} {'check s':>8s} {'total s':>8s} {'max err':>9s}  status"
    print(hdr)
    print("-" * len(hdr))
    for e, how in rows:
        if e.get("status") == "ok":
            print(f"{e['name']:28s} {e['opset']:>5} {e['nodes']:>6} {fmt_size(e['size_bytes']):>10s} "
                  f"{e.get('export_seconds', 0):>9.1f} {e.get('check_seconds', 0):>8.1f} {e.get('wall_seconds', 0):>8.1f} "
                  f"{worst_err(e):>9s}  {how}")
        else:
            print(f"{e['name']:28s} {'':>5} {'':>6} {'':>10} {'':>9} {'':>8} {'':>8} {'':>9}  FAILED: {e.get('error', '')[:200]}")


def select(names: list[str] | None) -> list[str]:
    if not names:
        return list(REGISTRY)
    out = []
    for pat in names:
        hits = [n for n in REGISTRY if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise SystemExit(f"unknown model {pat!r}; --list shows the names")
        out += [h for h in hits if h not in out]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache directory (default: benchmarks/cache)")
    ap.add_argument("--only", action="extend", nargs="+", metavar="NAME", help="models to export (globs allowed)")
    ap.add_argument("--list", action="store_true", help="list the corpus and what is cached, export nothing")
    ap.add_argument("--force", action="store_true", help="re-export even when cached")
    ap.add_argument("--in-process", action="store_true", help="no subprocess per model (debugging)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per model (default 3600)")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    out = a.out.resolve()

    if a._worker:
        return worker(out, a._worker, a._result)

    names = select(a.only)
    man = load_manifest(out)
    if a.list:
        for n in names:
            e = REGISTRY[n]
            cached = "cached" if is_cached(out, n, man) else "-"
            print(f"{n:28s} {e.kind:9s} {cached:7s} {e.description}")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[dict, str]] = []
    failed = 0
    for n in names:
        if not a.force and is_cached(out, n, man):
            rows.append((man["models"][n], "cached"))
            print(f"[corpus] {n}: cached", flush=True)
            continue
        print(f"[corpus] {n}: exporting ...", flush=True)
        t0 = time.perf_counter()
        if a.in_process:
            try:
                res = run_one(out, n)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                res = {"name": n, "status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
        else:
            res = run_isolated(out, n, a.timeout)
        dt = time.perf_counter() - t0
        if res.get("status") == "ok":
            res["wall_seconds"] = round(dt, 1)  # whole job: process start, imports, build, export, check
            man = load_manifest(out)
            man["models"][n] = res
            save_manifest(out, man)
            print(f"[corpus] {n}: ok, {res['nodes']} nodes, opset {res['opset']}, {fmt_size(res['size_bytes'])}, "
                  f"{dt:.1f} s", flush=True)
            rows.append((res, "exported"))
        else:
            failed += 1
            print(f"[corpus] {n}: FAILED: {res.get('error')}", flush=True)
            rows.append((res, "failed"))
    print()
    print_table(rows)
    print(f"\n{len(rows) - failed} ok, {failed} failed; manifest: {out / MANIFEST}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
