"""fuser: an ONNX graph rewriting and fusion compiler.

    import fuser
    model, report = fuser.optimize("model.onnx", target="tensorrt")
"""

__version__ = "0.1.0"

from .errors import FuserError, ModelError, UsageError  # noqa: E402
from .options import Options  # noqa: E402
from .stage import optimize, optimize_file  # noqa: E402

__all__ = ["FuserError", "ModelError", "Options", "UsageError", "optimize", "optimize_file", "__version__"]
