"""Everything a run of fuser can be asked to do, in one dataclass the report records verbatim.

The CLI's option groups and the library call `fuser.optimize(..., **options)` both fill this, so a
report's `options` section reproduces the run exactly. Only what a user asks for: the state of a run
(rewrites rolled back, upgrades that failed) lives in its `pass_manager.RunContext`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .model_io import MAX_OPSET
from .rule import TARGETS

DEFAULT_MAX_OPSET = 21  # upgrades go only as far as a rule needs; RMSNormalization (23) is opt-in


@dataclass
class Options:
    target: str = "generic"  # generic | tensorrt | onnxruntime: which ops the output may contain
    rules: tuple[str, ...] = ()  # rule names or families to run (empty: all)
    skip_rules: tuple[str, ...] = ()
    rules_from: tuple[str, ...] = ()  # Python files whose rules run after fuser's own (fuser/rule_loading.py)
    plugins: bool = True  # also the rules of installed packages (entry points of the group fuser.rules)
    target_opset: int | None = None  # the highest default-domain opset fuser may upgrade to
    allow_upgrade: bool = True
    max_iterations: int = 8  # cap on fixed-point rounds of the pass pipeline
    external_data: bool | None = None  # None: as the input had it (forced on past 2 GB)
    progress: bool = False
    # numerics validation (fuser/validate.py, fuser/rollback.py): on by default
    validate: bool = True
    strict: bool = False  # fail instead of rolling back the rewrites that changed the outputs
    atol: float | None = None  # None: by output dtype (fp32 1e-4, fp16 1e-2; validate.DEFAULT_TOLERANCE)
    rtol: float | None = None
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)  # per output: {"atol": x, "rtol": y}
    provider: str = "cpu"  # cpu | cuda: where onnxruntime runs both models
    inputs_path: str | None = None  # user inputs: a .npz or a folder of input_N.pb (else seeded random)
    validation_shapes: tuple[dict[str, tuple[int, ...]], ...] = ()  # several input sets, one shape map each
    seed: int = 0
    vocab_size: int = 100  # random integer ids are drawn from [0, vocab_size)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # dynamic dims, by input name
    # folding (passes/constant_folding.py, passes/shape_inference.py): input_shapes pins the graph's dims
    keep_dynamic: bool = False  # leave the graph inputs' dynamic dims as they are, even with input_shapes
    fold_budget_bytes: int = 1 << 20  # a folded tensor may add at most this many bytes (else it stays an op)
    # fp16 in the graph (passes/precision.py): runs once after fusion and clean-up
    precision: str = "fp32"  # fp32 | fp16
    keep_fp32: tuple[str, ...] = ()  # op types or node names that stay fp32 under precision fp16
    fp16_io: bool = False  # convert graph inputs/outputs too (default: keep their types, Cast at the boundary)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"unknown target '{self.target}' (choose from {', '.join(TARGETS)})")
        if self.target_opset is not None and not 1 <= self.target_opset <= MAX_OPSET:
            raise ValueError(f"target opset {self.target_opset} is outside 1..{MAX_OPSET}, the range "
                             "onnxruntime runs")
        if self.provider not in ("cpu", "cuda"):
            raise ValueError(f"unknown provider '{self.provider}' (choose from cpu, cuda)")
        for name, value in (("atol", self.atol), ("rtol", self.rtol)):
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, not {value}")
        if self.fold_budget_bytes < 0:
            raise ValueError(f"fold budget must be >= 0 bytes, not {self.fold_budget_bytes}")
        if self.seed < 0:
            raise ValueError(f"--seed {self.seed}: the seed of the random inputs must be >= 0")
        if self.vocab_size < 1:
            raise ValueError(f"vocab size must be >= 1, not {self.vocab_size}")
        if self.precision not in ("fp32", "fp16"):
            raise ValueError(f"unknown precision '{self.precision}' (choose from fp32, fp16)")
        self.keep_fp32 = tuple(self.keep_fp32)
        if isinstance(self.rules_from, (str, os.PathLike)):  # one file, not its characters
            self.rules_from = (self.rules_from,)
        self.rules_from = tuple(os.fspath(p) for p in self.rules_from)

    def max_opset_for(self, model_opset: int) -> int:
        """The highest opset this run may raise the model to.

        For the onnxruntime target the model's own opset: onnxruntime's optimizer fuses LayerNorm itself,
        and raising BERT-base from opset 12 to 17 made its CUDA graph 2% slower (ORT then splits the
        attention-output MatMul+Add into Gemm+Reshapes; benchmarks/results/gpu_bench.md). `--target-opset`
        still raises it on request.
        """
        if self.target_opset is not None:
            return self.target_opset
        if self.target == "onnxruntime":
            return model_opset
        return max(model_opset, DEFAULT_MAX_OPSET)
