"""Errors that reach the user as one clear line, never a traceback.

Exit codes (documented in the README): 0 success, 1 a model error (the model cannot be read,
optimized, validated or built) or an output that cannot be written (disk full), 2 a usage error (bad
option, missing file, an output path that would destroy a file), 3 an internal error (a bug in fuser:
please report it with the command line).
"""


class FuserError(Exception):
    """A failure fuser explains to the user; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ModelError(FuserError):
    """The model itself is unusable: not ONNX, truncated, cyclic, unsupported opset, missing data."""

    exit_code = 1


class UsageError(FuserError):
    """The command was asked for something it cannot do: a missing file, a bad option value."""

    exit_code = 2


class WriteError(FuserError):
    """An output could not be written (disk full, file too large, an I/O error); the previous file is kept."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an exception's message (its type's name when it has none), cut at
    `limit` characters: how a failure from onnx, onnxruntime or the OS is told in one line."""
    for line in str(exc).strip().splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
