"""The TensorRT build stage: ONNX model in, engine file and build report out (TensorRT or TensorRT-RTX)."""

from fuser.trt.build import BuildOptions, BuildResult, build_engine, plan_build_outputs
from fuser.trt.profiles import parse_profile

__all__ = ["BuildOptions", "BuildResult", "build_engine", "parse_profile", "plan_build_outputs"]
