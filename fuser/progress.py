"""What a long run tells whoever watches it: which stage it is in, and each step within the stage.

The stage (fuser/stage.py) says when it starts optimizing, validating, writing and building; the pass manager,
the rollback search and the TensorRT builder (fuser/trt/build.py, through its progress monitor) report steps:

    progress.stage("validating (onnxruntime on cpu)")
    progress.step("trial 3 with 12 of 25 rewrites")
    progress.step("Timing tactics", done=2, total=6)     # a step of known count: a bar can fill

`Progress` itself shows nothing. The command line shows a live display on a terminal and one line per stage
otherwise (fuser/cli/progress.py); a library caller may pass any callable of one string instead, which is told every
stage and step as a line of text.
"""

from __future__ import annotations

from collections.abc import Callable


class Progress:
    """Receives a run's stages and steps; this one ignores them (subclass it to show them)."""

    def stage(self, text: str) -> None:
        """A stage starts (`optimizing model.onnx (161 nodes)`); its steps follow."""

    def step(self, text: str, done: int | None = None, total: int | None = None) -> None:
        """A step of the current stage; `done` of `total` when the stage knows how many there are."""

    def __call__(self, text: str) -> None:  # where a plain `Callable[[str], None]` is expected (the pass manager)
        self.step(text)


class Lines(Progress):
    """Each stage, and each step that says something new, as one line of text given to `emit` (what a plain callable
    passed as `progress` gets)."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit = emit
        self.last = None

    def stage(self, text: str) -> None:
        self._say(text)

    def step(self, text: str, done: int | None = None, total: int | None = None) -> None:
        self._say(text)  # a builder phase reports each of its steps: one line for the phase

    def _say(self, text: str) -> None:
        if text != self.last:
            self.last = text
            self.emit(text)


def as_progress(progress: Progress | Callable[[str], None] | None) -> Progress:
    """A Progress from what a caller passed: a Progress, a callable of one string, or None (nothing shown)."""
    if progress is None:
        return Progress()
    if isinstance(progress, Progress):
        return progress
    if not callable(progress):
        raise TypeError(f"progress must be a fuser.progress.Progress or a callable of one str, "
                        f"not {type(progress).__name__}")
    return Lines(progress)
