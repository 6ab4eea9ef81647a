"""Models built to fool the rules and the graph walks (issue 11): each test failed before its fix.

- constants one ulp away from a rule's value (fp16, bf16, float attributes) must not fuse;
- a fused op is never emitted for an element type its schema does not accept at the emitted opset;
- `ai.onnx` is the default domain; local functions and subgraph bodies survive an opset upgrade;
- a 100,000-node chain goes through `fuser optimize` with validation (no recursion anywhere);
- a fold whose size is unknown until computed is bounded before it allocates.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper, numpy_helper

import fuser
from builders import make_model, ops, optimize_and_compare

F, H, BF = T.FLOAT, T.FLOAT16, T.BFLOAT16
NP = {F: np.float32, H: np.float16, BF: ml_dtypes.bfloat16}


def hardswish_model(elem=F, divisor=6.0, opset=13, domain="", shape=(2, 8)):
    """y = x * clip(x + 3, 0, 6) / divisor in `elem`; the constants are initializers of that type."""
    dtype = NP.get(elem) or helper.tensor_dtype_to_np_dtype(elem)
    nodes = [helper.make_node("Add", ["x", "three"], ["a"], domain=domain),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"], domain=domain),
             helper.make_node("Mul", ["x", "c"], ["m"], domain=domain),
             helper.make_node("Div", ["m", "divisor"], ["y"], domain=domain)]
    consts = {"three": 3, "zero": 0, "six": 6, "divisor": divisor}
    inits = [numpy_helper.from_array(np.asarray(v, dtype=dtype), k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "hswish", [helper.make_tensor_value_info("x", elem, list(shape))],
                              [helper.make_tensor_value_info("y", elem, list(shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)])
    model.ir_version = 8
    return model


# ---------------------------------------------------------------- 1. constants matched exactly
@pytest.mark.parametrize("elem,divisor,opset", [(H, 6.0234, None), (BF, 6.1875, 22)], ids=["fp16", "bf16"])
def test_a_divisor_a_few_ulps_from_six_is_not_hardswish(elem, divisor, opset):
    """fp16 6.0234375 (0.4% off) and bf16 6.1875 (3% off) used to fuse: within 4 ulps of 6."""
    near, _ = fuser.optimize(hardswish_model(elem, divisor), target_opset=opset, validate=False)
    assert "HardSwish" not in ops(near)
    exact, _ = fuser.optimize(hardswish_model(elem, 6.0), target_opset=opset, validate=False)
    assert ops(exact) == ["HardSwish"]


@pytest.mark.parametrize("attr", ["alpha", "beta"])
def test_hardsigmoid_attributes_one_float32_ulp_off_do_not_make_a_hardswish(attr):
    exact = {"alpha": np.float32(1 / 6), "beta": np.float32(0.5)}
    off = dict(exact, **{attr: np.nextafter(exact[attr], np.float32(1))})
    for attrs, fuses in ((exact, True), (off, False)):
        nodes = [helper.make_node("HardSigmoid", ["x"], ["g"], alpha=float(attrs["alpha"]), beta=float(attrs["beta"])),
                 helper.make_node("Mul", ["x", "g"], ["y"])]
        model = make_model(nodes, [("x", F, [2, 8])], [("y", F, [2, 8])], opset=14)
        optimized, _ = optimize_and_compare(model)
        assert (ops(optimized) == ["HardSwish"]) is fuses, attrs
