"""Mish: x * tanh(softplus(x)) -> Mish(x) (opset 18), a rule written outside fuser.

    Mul(x, Tanh(Softplus(x)))              -> Mish(x)   (PyTorch nn.Mish exported below opset 18)
    Mul(x, Tanh(Log(Add(Exp(x), 1))))      -> Mish(x)   (softplus spelled out: tf2onnx, Darknet converters)

Load it with `fuser optimize model.onnx --rules-from examples/rules/mish.py`, or
`fuser.optimize(model, rules_from=["examples/rules/mish.py"])`. docs/writing-rules.md walks through it;
test_mish.py beside it is its test.
"""

from fuser.pattern import Var, op
from fuser.rule import Rule

x = Var("x")
softplus = op.Softplus(x) | op.Log(op.Add(op.Exp(x), 1.0))  # Add commutes: 1 + exp(x) matches too

MISH = Rule(
    name="mish",
    family="mish",
    emits="Mish",
    min_opset=18,  # Mish entered ONNX at opset 18: older models are upgraded, or get a near miss saying why
    pattern=op.Mul(x, op.Tanh(softplus)),  # Mul commutes: tanh(softplus(x)) * x matches too
    rewrite=lambda m, b, _: b.op("Mish", m["x"]),
    spellings=("x * tanh(softplus(x))", "x * tanh(log(1 + exp(x)))"),
    doc="x * tanh(softplus(x)) -> Mish(x)",
)

RULES = [MISH]
