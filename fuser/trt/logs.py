"""Every line TensorRT logs while parsing and building, and the warnings fuser recognizes in them.

TensorRT keeps one logger per process (a second Builder with another ILogger is told its logger is ignored), so one
forwarding logger is registered per backend module and pointed at the BuildLog of the build in progress; a lock keeps
two builds from writing into each other's log.

A recognized warning has a stable id that reports and `fuser audit --expect-no-warning ID` use. To teach fuser a new
one, add a row to KNOWN_WARNINGS: id, a regex searched in each warning or error line, and what the user should do.
"""

from __future__ import annotations

import contextlib
import re
import threading
from dataclasses import dataclass, field
from types import ModuleType


@dataclass(frozen=True)
class KnownWarning:
    id: str
    pattern: re.Pattern
    explanation: str


KNOWN_WARNINGS = (
    KnownWarning(
        "layernorm-fp16",
        re.compile(r"Detected layernorm nodes in FP16|Running layernorm after self-attention with FP16"),
        "a LayerNorm spelled out as ReduceMean/Sub/Pow/Sqrt/Div runs its statistics in fp16 and can overflow; fuse "
        "it into LayerNormalization (opset 17, stash_type=1), which TensorRT builds as one normalization layer "
        "with fp32 statistics"),
    KnownWarning(
        "timing-cache-unusable",
        re.compile(r"Failed to deserialize timing cache|The timing cache will not be used"
                   r"|^timing cache .* could not be read"),
        "the builder could not read the timing cache and started an empty one; TensorRT-RTX reads timing caches "
        "only with a CUDA driver present (and its engines do not depend on them)"),
    KnownWarning(
        "timing-cache-mismatch",
        re.compile(r"^timing cache .* (was made for|has no readable key)"),
        "the timing cache was made by another TensorRT version or for another GPU; it is replaced by this "
        "build's cache"),
    KnownWarning(
        "cuda-unavailable",
        re.compile(r"cudaError 35|CUDA driver version is insufficient|status == CUDA_SUCCESS"),
        "this step needs a CUDA driver and GPU: TensorRT-RTX builds ahead of time on a CPU, but refit, the "
        "'current' target, reading a timing cache and loading an engine do not"),
    KnownWarning(
        "option-ignored",
        re.compile(r"is unsupported in TensorRT-RTX|(is|are) ignored by TensorRT"),
        "an option this backend does not have was ignored; the engine is built without it"),
    KnownWarning(
        "multi-stream-disabled",
        re.compile(r"Multi stream is disabled"),
        "the builder could not assign auxiliary streams (--max-aux-streams); the engine runs on one stream"),
)

_WARNING_SEVERITIES = ("warning", "error", "internal_error")


@dataclass(frozen=True)
class LogLine:
    severity: str  # verbose, info, warning, error, internal_error
    phase: str  # parse, build, inspect; "fuser" for fuser's own warnings
    text: str


@dataclass
class RecognizedWarning:
    """A warning fuser knows, with what it means and the log lines that said it (the report's build.warnings)."""

    id: str
    explanation: str = ""
    count: int = 0  # how many lines said it
    lines: list[str] = field(default_factory=list)


class BuildLog:
    """The lines of one build, in order; `phase` tags the lines that arrive next."""

    def __init__(self):
        self.lines: list[LogLine] = []
        self.phase = "parse"

    def add(self, severity: str, text: str) -> None:
        self.lines.append(LogLine(severity, self.phase, text))

    def warn(self, text: str) -> None:
        """A warning of fuser's own, recognized like TensorRT's (so its text must match a KNOWN_WARNINGS row)."""
        self.lines.append(LogLine("warning", "fuser", text))

    def errors(self, since: int = 0) -> list[str]:
        return [line.text for line in self.lines[since:] if line.severity in ("error", "internal_error")]

    def recognized(self, since: int = 0) -> list[RecognizedWarning]:
        """Known warnings among the lines from index `since` on, in table order; each line counts once."""
        found: dict[str, RecognizedWarning] = {}
        for line in self.lines[since:]:
            if line.severity not in _WARNING_SEVERITIES:
                continue
            known = next((k for k in KNOWN_WARNINGS if k.pattern.search(line.text)), None)
            if known:
                found.setdefault(known.id, RecognizedWarning(known.id, known.explanation)).lines.append(line.text)
        for warning in found.values():
            warning.count = len(warning.lines)
        return sorted(found.values(), key=lambda w: [k.id for k in KNOWN_WARNINGS].index(w.id))


_loggers: dict[str, object] = {}
_lock = threading.Lock()


def _logger(trt: ModuleType):
    """The process-wide logger of this backend module, created on first use."""
    if trt.__name__ not in _loggers:
        class Forwarder(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.sink: BuildLog | None = None

            def log(self, severity, msg):
                if self.sink is not None:
                    self.sink.add(severity.name.lower(), msg)

        _loggers[trt.__name__] = Forwarder()
    return _loggers[trt.__name__]


@contextlib.contextmanager
def capture(trt: ModuleType):
    """Yield (logger, BuildLog): pass the logger to Builder, OnnxParser and Runtime; their lines land in the log."""
    with _lock:
        logger, log = _logger(trt), BuildLog()
        logger.sink = log
        try:
            yield logger, log
        finally:
            logger.sink = None
