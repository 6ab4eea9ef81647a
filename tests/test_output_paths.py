"""Every path a command writes is planned and checked together, before any work (fuser/outputs.py).

- No output may be the input model, one of its external data files, another input (--inputs, --baseline,
  a report being audited) or another output of the same run, including an output's companions: OUT.data
  beside a model output and FILE.meta.json beside a timing cache. Refused with exit 2, nothing written.
- An existing output must be a regular file (or a symlink to one): directories, character devices
  (`-o /dev/null` as root: tested on a device node made like /dev/null, never on the real one), FIFOs,
  sockets and symlinks to them are refused, and stay what they were.
- A missing output folder is refused on every flag, before any work (nothing is created).
- A refused or failed run leaves the previous output exactly as it was (OUT.data a directory included).

Every case runs the real command line and checks every file under the test folder byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T, helper

from fuser.cli import main

from builders import make_model

F = T.FLOAT
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def external_model(folder: Path, name: str, value: float) -> Path:
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [1, 1024])], [("y", F, [1, 1024])],
                       [("w", np.full((1, 1024), value, np.float32))])
    path = folder / name
    onnx.save(model, path, save_as_external_data=True, location=name + ".data", size_threshold=0)
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """An input with external data, the previous output of a run (with its data), a timing cache, a report."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    model = external_model(src, "model.onnx", 1.0)
    previous = external_model(out, "out.onnx", 2.0)
    (out / "t.cache").write_bytes(b"cache")
    (out / "t.cache.meta.json").write_text("{}")
    np.savez(src / "inputs.npz", x=np.zeros((1, 1024), np.float32))
    (out / "base.json").write_text('{"fusion_counts": {}}')
    os.link(model, out / "hard.onnx")  # the input under another name
    (out / "link.onnx").symlink_to(model)
    return {"hard": out / "hard.onnx", "link": out / "link.onnx",
            "model": model, "data": src / "model.onnx.data", "default": src / "model.opt.onnx",
            "out": previous, "outdata": out / "out.onnx.data", "cache": out / "t.cache",
            "meta": out / "t.cache.meta.json", "npz": src / "inputs.npz", "base": out / "base.json",
            "new": out / "new.json", "plan": out / "e.plan"}


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under root: its kind and, for files, its bytes' digest."""
    entries = {}
    for p in sorted(root.rglob("*")):
        mode = os.lstat(p).st_mode
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(mode) else None
        entries[str(p.relative_to(root))] = (stat.S_IFMT(mode), digest)
    return entries


def invoke(args: list[str]):
    result = CliRunner().invoke(main, args)
    assert "Traceback" not in result.output, result.output
    return result


def expect_refused(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("fuser: error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


FAST_BUILD = ["--opt-level", "0"]
FAST_BENCH = ["--provider", "cpu", "--warmup", "0", "--iters", "1"]

# (command line with {names} from the `files` fixture, what the refused path would have destroyed)
COLLISIONS = [
    ("optimize {model} -o {out} --report {model}", "the input model"),
    ("optimize {model} -o {out} --report {data}", "the input's external data"),
    ("optimize {model} -o {out} --report {out}", "the optimized model"),
    ("optimize {model} -o {out} --report {outdata}", "the optimized model's data file"),
    ("optimize {model} -o {hard}", "the input model (a hard link to it)"),
    ("optimize {model} -o {link}", "the input model (a symlink to it)"),
    ("optimize {model} --report {default}", "the default output"),
    ("optimize {model} -o {out} --inputs {npz} --report {npz}", "the --inputs data"),
    ("optimize {model} -o {out} --build --engine {model}", "the input model"),
    ("optimize {model} -o {out} --build --engine {out}", "the optimized model"),
    ("optimize {model} -o {out} --build --engine {outdata}", "the optimized model's data file"),
    ("optimize {model} -o {out} --build --timing-cache {out}", "the optimized model"),
    ("optimize {model} -o {out} --build --timing-cache {cache} --report {meta}", "the timing cache key"),
    ("audit {model} --json {model}", "the input model"),
    ("audit {model} --markdown {data}", "the input's external data"),
    ("audit {model} --junit {model}", "the input model"),
    ("audit {model} --html {model}", "the input model"),
    ("audit {model} --format json -o {model}", "the input model"),
    ("audit {model} --save-model {model}", "the input model"),
    ("audit {model} --save-model {data}", "the input's external data"),
    ("audit {model} --save-model {out} --json {out}", "the saved model"),
    ("audit {model} --save-model {out} --json {outdata}", "the saved model's data file"),
    ("audit {model} --json {new} --markdown {new}", "the other report"),
    ("audit {model} --baseline {base} --json {base}", "the baseline"),
    ("audit {base} --json {base}", "the audited report"),
    ("build {model} -o {model}", "the input model"),
    ("build {model} -o {data}", "the input's external data"),
    ("build {model} -o {plan} --timing-cache {model}", "the input model"),
    ("build {model} -o {plan} --report {model}", "the input model"),
    ("build {model} -o {plan} --report {plan}", "the engine"),
    ("build {model} -o {plan} --timing-cache {plan}", "the engine"),
    ("build {model} -o {meta} --timing-cache {cache}", "the timing cache key"),
    ("bench {model} --json {model}", "the input model"),
    ("bench {model} --json {data}", "the input's external data"),
]


@pytest.mark.parametrize("line, victim", COLLISIONS, ids=[f"{c.split()[0]}:{v}:{i}" for i, (c, v) in
                                                          enumerate(COLLISIONS)])
def test_an_output_over_an_input_or_another_output_is_refused_before_any_work(files, tmp_path, line, victim):
    args = [part.format(**files) for part in line.split()]
    args += FAST_BUILD if args[0] == "build" or "--build" in args else []
    args += FAST_BENCH if args[0] == "bench" else []
    before = snapshot(tmp_path)
    expect_refused(invoke(args))
    assert snapshot(tmp_path) == before, f"{victim} (or another file) was changed by a refused run"


# ------------------------------------------------------------------------------ special files
def _fifo(path: Path):
    os.mkfifo(path)


def _socket(path: Path):
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the socket file stays


def _char_device(path: Path):
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is


def _directory(path: Path):
    path.mkdir()


def _link_to(make):
    def link(path: Path):
        target = path.with_name(path.name + ".target")
        make(target)
        path.symlink_to(target)
    return link


SPECIAL = {"directory": _directory, "fifo": _fifo, "socket": _socket, "char-device": _char_device,
           "link-to-fifo": _link_to(_fifo), "link-to-directory": _link_to(_directory),
           "link-to-char-device": _link_to(_char_device)}
FLAGS = ["optimize {model} -o {target}", "optimize {model} -o {out} --report {target}",
         "audit {model} --json {target}", "audit {model} --save-model {target}",
         "build {model} -o {target}", "build {model} -o {plan} --timing-cache {target}",
         "bench {model} --json {target}"]


@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("line", FLAGS, ids=[" ".join(f.split()[:1] + f.split()[-2:-1]) for f in FLAGS])
def test_special_files_are_refused_as_outputs_and_left_alone(files, tmp_path, line, kind):
    if "char-device" in kind and not IS_ROOT:
        pytest.skip("making a device node needs root")
    target = tmp_path / "out" / "special"
    SPECIAL[kind](target)
    args = [part.format(**files, target=target) for part in line.split()]
    args += FAST_BUILD if args[0] == "build" else []
    args += FAST_BENCH if args[0] == "bench" else []
    before = snapshot(tmp_path)
    expect_refused(invoke(args), str(target))
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------ missing folders
MISSING = ["optimize {model} -o {nope}", "optimize {model} -o {out} --report {nope}",
           "optimize {model} -o {out} --build --engine {nope}",
           "optimize {model} -o {out} --build --timing-cache {nope}",
           "audit {model} --json {nope}", "audit {model} --markdown {nope}", "audit {model} --junit {nope}",
           "audit {model} --html {nope}", "audit {model} --format md -o {nope}", "audit {model} --save-model {nope}",
           "build {model} -o {nope}", "build {model} -o {plan} --report {nope}",
           "build {model} -o {plan} --timing-cache {nope}", "bench {model} --json {nope}"]


@pytest.mark.parametrize("line", MISSING)
def test_a_missing_output_folder_is_refused_on_every_flag_before_any_work(files, tmp_path, line):
    nope = tmp_path / "nope" / "deeper" / "file"
    args = [part.format(**files, nope=nope) for part in line.split()]
    args += FAST_BUILD if args[0] == "build" or "--build" in args else []
    args += FAST_BENCH if args[0] == "bench" else []
    before = snapshot(tmp_path)
    expect_refused(invoke(args), "does not exist")
    assert snapshot(tmp_path) == before, "a refused run wrote (or created) something"


def test_an_output_folder_that_is_a_file_is_refused(files, tmp_path):
    before = snapshot(tmp_path)
    expect_refused(invoke(["optimize", str(files["model"]), "-o", str(files["out"]), "--report",
                           str(files["npz"] / "r.json")]), "not a folder")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------ the previous output
def test_data_file_that_is_a_directory_keeps_the_previous_output(files, tmp_path):
    """OUT.data is a directory: refused before any work; the previous OUT (inline here) is kept."""
    out = tmp_path / "out" / "inline.onnx"
    onnx.save(onnx.load(files["out"]), out)  # an earlier inline output
    (tmp_path / "out" / "inline.onnx.data").mkdir()
    before = snapshot(tmp_path)
    expect_refused(invoke(["optimize", str(files["model"]), "-o", str(out)]), "inline.onnx.data")
    assert snapshot(tmp_path) == before


def test_outputs_that_differ_are_all_written(files, tmp_path):
    """The plan refuses only real conflicts: a run with every output flag set to its own file succeeds."""
    out = tmp_path / "out"
    result = invoke(["optimize", str(files["model"]), "-o", str(out / "o.onnx"), "--report", str(out / "r.json"),
                     "--inputs", str(files["npz"])])
    assert result.exit_code == 0, result.output
    assert (out / "o.onnx").is_file() and (out / "o.onnx.data").is_file() and (out / "r.json").is_file()
    result = invoke(["audit", str(files["model"]), "--json", str(out / "a.json"), "--markdown", str(out / "a.md"),
                     "--save-model", str(out / "s.onnx"), "--baseline", str(files["base"])])
    assert result.exit_code == 0, result.output
    assert all((out / name).is_file() for name in ("a.json", "a.md", "s.onnx", "s.onnx.data"))


def test_a_symlink_to_a_regular_file_is_replaced_and_its_target_kept(files, tmp_path):
    """Writing is a rename: an output that is a symlink becomes the new file; the file it pointed at is
    never written through."""
    target = tmp_path / "out" / "kept.json"
    target.write_text("keep me")
    link = tmp_path / "out" / "r.json"
    link.symlink_to(target)
    result = invoke(["optimize", str(files["model"]), "-o", str(tmp_path / "out" / "o.onnx"), "--report", str(link)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == "keep me" and not link.is_symlink() and '"fusion_counts"' in link.read_text()


def test_the_guarantees_name_tests_that_exist():
    """docs/guarantees.md names the tests behind each promise: each named test is in its file."""
    import re

    root = Path(__file__).resolve().parent.parent
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", (root / "docs" / "guarantees.md").read_text())
    assert len(named) > 30
    missing = [f"{file}::{name}" for file, name in named
               if not re.search(rf"^def {name}\(", (root / file).read_text(), re.MULTILINE)]
    assert missing == []
