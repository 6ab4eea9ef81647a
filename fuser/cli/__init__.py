"""The `fuser` command: one click group, one module per subcommand, option groups shared in options.py.

Every failure the user can act on is a `FuserError` and becomes one line on stderr with its exit code
(1 model error, 2 usage error); anything else is a bug, reported as one line with exit code 3 (set
FUSER_DEBUG=1 for the traceback). Nothing here ever prints a traceback by default.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from fuser import __version__
from fuser.errors import FuserError, first_line

INTERNAL_ERROR = 3


def _interrupt_on_sigterm():
    """Make SIGTERM (`kill`, a CI timeout) interrupt like Ctrl-C: the KeyboardInterrupt unwinds through the
    atomic writers, which remove their temporary files. Returns the handler to restore (None: none set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    return signal.SIG_DFL if previous is None else previous


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        previous = _interrupt_on_sigterm()
        try:
            return self._invoke(ctx)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FuserError as exc:
            click.echo(f"fuser: error: {_one_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except MemoryError as exc:  # the machine, not a bug: inputs or a model too big for it
            click.echo(f"fuser: error: out of memory: {_one_line(exc) or 'an allocation failed'}", err=True)
            sys.exit(FuserError.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: exit code 130
            click.echo("fuser: interrupted; nothing was written", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug in fuser: one line, not a traceback
            if os.environ.get("FUSER_DEBUG"):
                raise
            detail = _one_line(first_line(exc)) if str(exc).strip() else ""
            click.echo(f"fuser: internal error: {type(exc).__name__}: {detail} "
                       "(please report it; FUSER_DEBUG=1 shows the traceback)", err=True)
            sys.exit(INTERNAL_ERROR)


def _one_line(exc: BaseException | str) -> str:
    """The message on one printable line: libraries (protobuf, TensorRT) put line breaks in theirs, and names
    from a model or a report may hold control characters or unpaired surrogates."""
    from fuser.report.formats import printable

    return printable(" ".join(line.strip() for line in str(exc).splitlines() if line.strip()))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fuser")
def main():
    """fuser: fuse, fold and validate ONNX graphs before TensorRT or onnxruntime builds."""


def _register() -> None:
    from .audit import audit
    from .bench import bench
    from .build import build
    from .optimize import optimize
    from .rules import rules

    main.add_command(optimize)
    main.add_command(rules)
    main.add_command(build)
    main.add_command(audit)
    main.add_command(bench)


_register()
