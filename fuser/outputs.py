"""Every file fuser writes: planned and checked before any work, then written atomically.

Why one module: a path given to any output flag could name the input, its weights, another output of the
same run or a device, and each command used to check (or not) on its own. Here:

- `OutputPlan`: a command lists what it reads and what it will write (with companions such as OUT.data
  and a timing cache's key file), and `check()` refuses, with a usage error before any work, an output
  that is an input or another output, whose folder is missing, or that exists and is not a regular file
  (a directory, device, FIFO or socket, or a symlink to one).
- `write_atomic`: the one way fuser writes a file: a hidden temporary file beside it, flushed to disk,
  renamed over it. `swap_in` renames several temporary files into place under a lock on their folder,
  restoring the previous files if a rename fails. A failed write is a `WriteError` (exit 1) and leaves
  the previous file as it was.
- `temporary_file` / `temporary_folder`: creation and the clean-up guard are one step for Ctrl-C and
  SIGTERM (they are held while a temporary file is made), so an interrupt never leaves one behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError, WriteError

_INTERRUPTS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


# ------------------------------------------------------------------------------ the plan
@dataclass
class OutputPlan:
    """What one run reads and writes; `check()` refuses every conflict before the run does any work."""

    reads: list[tuple[str, Path]] = field(default_factory=list)  # (what, path)
    writes: list[tuple[str, Path]] = field(default_factory=list)

    def read(self, what: str, path: str | os.PathLike | None) -> None:
        if path is not None:
            self.reads.append((what, Path(path)))

    def read_model(self, loaded, what: str = "the input model") -> None:
        """The model file and every external data file it reads (a `model_io.LoadedModel`)."""
        from .model_io import external_files

        self.read(what, loaded.path)
        for data in external_files(loaded):
            self.read(f"{what}'s external data", data)

    def write(self, flag: str, path: str | os.PathLike | None, *companions: tuple[str, Path]) -> None:
        """An output of `flag` and the files written with it, e.g. ("OUT.data", out.with_name(...))."""
        if path is None:
            return
        self.writes.append((flag, Path(path)))
        for name, companion in companions:
            self.writes.append((f"{flag} ({name})", Path(companion)))

    def check(self) -> None:
        seen: list[tuple[str, Path]] = []
        for flag, path in self.writes:
            _check_writable(flag, path)
            for what, source in self.reads:
                if _same_file(path, source):
                    raise UsageError(f"{flag} {path} is {what}, one of the input's files: refusing to "
                                     "overwrite the input; choose another path")
            for other, earlier in seen:
                if _same_file(path, earlier):
                    raise UsageError(f"{flag} and {other} are the same file ({path}): give each output "
                                     "its own path")
            seen.append((flag, path))


def model_companions(path: Path | None, external_data: bool | None) -> tuple[tuple[str, Path], ...]:
    """The files a model output may bring along: OUT.data, unless external data is off."""
    return () if path is None or external_data is False else (("its data file", data_file(Path(path))),)


def data_file(path: Path) -> Path:
    """Where a model output's external data goes: OUT.data beside OUT."""
    return path.parent / (path.name + ".data")


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}


def _check_writable(flag: str, path: Path) -> None:
    """The folder exists and is writable; an existing output is a regular file (symlinks followed)."""
    folder = path.parent
    if not folder.exists():
        raise UsageError(f"{flag} {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: {folder} is not a folder")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:  # a new file (or a dangling symlink, replaced by the new file)
        mode = None
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror}") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        hint = f"; give a file name, e.g. {path / 'out.onnx'}" if stat.S_ISDIR(mode) else ""
        link = " (through a symlink)" if path.is_symlink() else ""
        raise UsageError(f"{flag} {path} is {kind}{link}, not a regular file: fuser only replaces files{hint}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write in folder {folder} (permission denied)")


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same resolved path, or the same inode (hard links, case folding)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ------------------------------------------------------------------------------ interrupts
class _HeldInterrupts:
    """Ctrl-C and SIGTERM recorded instead of raised, then delivered by `release()`.

    Signal masks cannot do this: onnxruntime's threads leave SIGTERM unblocked, and Python runs a handler
    in the main thread whichever thread the signal reached. So the Python handlers are swapped instead;
    only the main thread runs them, so other threads need nothing.
    """

    def __init__(self):
        self.previous: dict[int, object] = {}
        self.pending: list[int] = []
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            for sig in _INTERRUPTS:
                if callable(signal.getsignal(sig)):  # SIG_DFL/SIG_IGN never raise inside Python code
                    self.previous[sig] = signal.signal(sig, self._hold)
        except BaseException:
            self.release()
            raise

    def _hold(self, signum, frame) -> None:
        self.pending.append(signum)

    def release(self) -> None:
        """Restore the handlers and run the one for a signal that came meanwhile (it raises, usually)."""
        handlers = dict(self.previous)
        while self.previous:
            sig, handler = self.previous.popitem()
            signal.signal(sig, handler)
        while self.pending:
            signum = self.pending.pop(0)
            self.pending.clear()  # one interrupt is enough
            handlers[signum](signum, None)


@contextlib.contextmanager
def interrupts_held():
    """Ctrl-C and SIGTERM wait until the block ends (for steps that must not be cut in two)."""
    held = _HeldInterrupts()
    try:
        yield
    finally:
        held.release()


@contextlib.contextmanager
def _made_safely(create, remove):
    """`create()`, with the guard that calls `remove(made)` armed before an interrupt can land."""
    held = _HeldInterrupts()
    try:
        made = create()
        try:
            held.release()  # an interrupt that came during creation is raised here, inside the guard
            yield made
        finally:
            remove(made)
    finally:
        held.release()


@contextlib.contextmanager
def temporary_file(path: Path):
    """A new hidden file `.NAME.*.tmp` beside `path`, open for binary writing: yields (file, its path).

    The file is removed when the block ends unless it was renamed away (by `swap_in`). Its mode is what
    a plain `open(path, "w")` would give: the current file's mode, else 0666 minus the umask.
    """
    def create():
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        return fd, Path(name)

    def remove(made):
        _unlink_quietly(made[1])

    try:
        with _made_safely(create, remove) as (fd, name):
            with os.fdopen(fd, "wb") as file:
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, _mode_for(path))  # mkstemp makes files private
                yield file, name
    except OSError as exc:
        raise WriteError(_write_failure(path, exc)) from None


@contextlib.contextmanager
def temporary_folder(prefix: str):
    """A new temporary folder (for files that must exist only while a step runs), removed afterwards."""
    with _made_safely(lambda: Path(tempfile.mkdtemp(prefix=prefix)),
                      lambda made: shutil.rmtree(made, ignore_errors=True)) as folder:
        yield folder


# ------------------------------------------------------------------------------ writing
def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never a part of either."""
    path = Path(path)
    with temporary_file(path) as (file, temporary):
        file.write(data)
        finish(file)
        swap_in([(temporary, path)])
    return path


def finish(file) -> None:
    """Flush a temporary file to disk: after the rename, the new content survives a crash."""
    file.flush()
    os.fsync(file.fileno())


def swap_in(moves: list[tuple[Path, Path]]) -> None:
    """Rename each (temporary, final) into place: all or nothing, the previous files kept on failure.

    One file is one atomic rename. Several files that belong together (a graph and its data, a timing
    cache and its key) cannot be swapped in one step, so, under an exclusive lock on their folder, the
    previous files are first renamed to hidden backups in the order given (put the graph first: a
    previous graph must never be left reading new data), the new files renamed in in reverse order (the
    data before the graph that names it), then the backups removed. If a rename fails, what was moved is
    moved back. Concurrent runs writing the same files take turns on the lock, so each leaves a
    consistent set. Interrupts wait meanwhile.
    """
    first = moves[0][1]
    try:
        if len(moves) == 1:
            os.replace(*moves[0])
            return
        with interrupts_held(), _folder_lock(first.parent):
            _swap_together(moves)
    except OSError as exc:
        raise WriteError(_write_failure(first, exc)) from None


def _swap_together(moves: list[tuple[Path, Path]]) -> None:
    backups: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for _, final in moves:
            if final.is_dir() and not final.is_symlink():
                raise IsADirectoryError(21, "Is a directory", str(final))
            if os.path.lexists(final):
                backup = final.with_name(f".{final.name}.{secrets.token_hex(4)}.old.tmp")
                os.rename(final, backup)
                backups.append((backup, final))
        for temporary, final in reversed(moves):
            os.rename(temporary, final)
            placed.append(final)
    except OSError:
        for final in placed:
            _unlink_quietly(final)
        for backup, final in reversed(backups):
            with contextlib.suppress(OSError):
                os.rename(backup, final)
        raise
    for backup, _ in backups:
        _unlink_quietly(backup)


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive flock on the folder itself: no lock file to leave behind. The renames made under it
    are flushed to disk (fsync of the folder) before it is released."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): renames are still atomic one by one
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
        with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
            os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


def _mode_for(path: Path) -> int:
    """The mode `open(path, "w")` would leave: the existing file's, else 0666 minus the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _write_failure(path: Path, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"cannot write {path}: {reason}; the previous file (if any) is unchanged"


def _unlink_quietly(path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
