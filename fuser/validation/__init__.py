"""Validation: run the original and the optimized model and prove their outputs agree.

    inputs.py, input_constraints.py   inputs that make sense to what consumes them (or the user's own data)
    engines.py                        running a model: onnxruntime, or onnx.reference where onnxruntime cannot
    validate.py                       the comparison, per output and dtype, and the report's validation section
    rollback.py                       bisection: find and roll back exactly the rewrites that changed the outputs

Kept free of imports here so `fuser.bench` can use `inputs` on a machine without the rest of fuser's needs.
"""
