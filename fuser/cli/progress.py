"""The commands' progress display, on stderr (stdout keeps the summary): on a terminal a live line with a spinner,
the stage, a bar (filling when the stage knows its step count, the builder's phases), the current step and the
elapsed time, erased when the command ends, so a failure still leaves one line. Redirected it is quiet (a log or a
CI job gets the summary, or the one error line), or with --progress one line per stage; --no-progress: nothing.

    with Display(wanted=None) as progress:       # None: live on a terminal, else quiet
        result = stage.run(model, options, progress=progress)

rich draws it: its display redraws from a thread of its own, so the spinner and the clock keep moving through a
13 s onnxruntime run or a builder phase that reports seldom (click's progressbar redraws only when it is updated),
and it falls back to plain text where stderr is not a terminal.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, Progress as Bars, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column

from fuser.progress import Progress
from fuser.report.formats import printable


class Display(Progress):
    """Stages and steps on stderr. `wanted` (the --progress/--no-progress flag): None, live on a terminal and quiet
    elsewhere; True, live on a terminal and one line per stage elsewhere; False, nothing."""

    def __init__(self, wanted: bool | None = None):
        console = Console(stderr=True)
        self.live = wanted is not False and console.is_terminal
        self.lines = wanted is True and not self.live
        self.bars = Bars(SpinnerColumn(),
                         TextColumn("{task.description}", markup=False,
                                    table_column=Column(no_wrap=True, overflow="ellipsis", ratio=3)),
                         BarColumn(bar_width=20),
                         TextColumn("{task.fields[step]}", markup=False,
                                    table_column=Column(no_wrap=True, overflow="ellipsis", ratio=2)),
                         TimeElapsedColumn(), console=console, transient=True, expand=True) if self.live else None
        self.task = None

    def __enter__(self) -> Display:
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bars is not None:
            self.bars.stop()  # erases the live line (also on an error or Ctrl-C), restores the cursor

    def stage(self, text: str) -> None:
        text = printable(text)
        if self.lines:
            click.echo(f"fuser: {text}", err=True)
        if self.bars is not None:
            if self.task is not None:
                self.bars.remove_task(self.task)
            self.task = self.bars.add_task(text, total=None, step="")

    def step(self, text: str, done: int | None = None, total: int | None = None) -> None:
        if self.bars is not None and self.task is not None:
            self.bars.update(self.task, step=printable(text), completed=done or 0, total=total)
