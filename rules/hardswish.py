"""HardSwish: x * relu6(x + 3) / 6 in every spelling exporters emit -> HardSwish(x) (opset 14).

    Mul(x, Div(relu6(Add(x, 3)), 6))             -> HardSwish(x)   (Div after the gate)
    Div(Mul(x, relu6(Add(x, 3))), 6)             -> HardSwish(x)   (Div after the Mul: YOLOv5, timm)
    Mul(x, Mul(relu6(Add(x, 3)), 1/6)), Mul(Mul(x, relu6(Add(x, 3))), 1/6)
    Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))  -> HardSwish(x)   (PyTorch nn.Hardswish, opset <= 13)

relu6 is Clip(0, 6), Min(Relu(.), 6) or Min(Max(., 0), 6) (tf2onnx). The gate must be applied to the
same tensor it is computed from; `y * hsigmoid(x)` is only a HardSigmoid.
"""

from __future__ import annotations

from fuser.pattern import Var, op
from fuser.rule import Rule

from .common import hard_sigmoid_gate, shifted_relu6

x = Var("x")
_r6 = shifted_relu6(x)

HARDSWISH = Rule(
    name="hardswish",
    family="hswish",
    emits="HardSwish",
    min_opset=14,
    pattern=(op.Mul(x, hard_sigmoid_gate(x)) | op.Div(op.Mul(x, _r6), 6.0)
             | op.Mul(op.Mul(x, _r6), 1 / 6)),
    rewrite=lambda m, b, _: b.op("HardSwish", m["x"]),
    spellings=(
        "x * (relu6(x + 3) / 6)", "(x * relu6(x + 3)) / 6", "x * relu6(x + 3) * (1/6)",
        "x * HardSigmoid(x, 1/6, 0.5)", "relu6 = Clip(0, 6) | Min(Relu, 6) | Min(Max(0), 6)",
    ),
    doc="x * relu6(x + 3) / 6 -> HardSwish(x)",
)
