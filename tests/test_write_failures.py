"""Writing an output can fail (disk full, file too large, an I/O error at any step): one line, exit 1, no
partial or temporary file, and the previous output (OUT and OUT.data) exactly as it was.

- A real full disk: a 256 KiB tmpfs (needs root and mount; skipped elsewhere).
- A real EFBIG: the run's file-size limit (RLIMIT_FSIZE) below the output's size, in a subprocess.
- An I/O error at *every* step of a write (each fsync, rename and in-kernel copy, one run per step), for
  an inline and an external-data output and for a report: each run either fails cleanly or succeeds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper

from builders import make_model

F = T.FLOAT
ENV = {**os.environ, "PYTHONSAFEPATH": "1"}


def weights_model(n: int, value: float) -> onnx.ModelProto:
    return make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [1, n])], [("y", F, [1, n])],
                      [("w", np.full((1, n), value, np.float32))])


def files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def fuser(*args, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "fuser", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300, preexec_fn=limit if limit_bytes else None)


def expect_write_error(proc: subprocess.CompletedProcess, *fragments):
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fuser: error:"), proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_disk_full_keeps_the_previous_output(tmp_path, tiny_disk, external):
    src = tmp_path / "big.onnx"
    onnx.save(weights_model(128 * 1024, 1.0), src, **({"save_as_external_data": True, "location": "big.data",
                                                       "size_threshold": 0} if external else {}))
    out = tiny_disk / "out.onnx"
    onnx.save(weights_model(1024, 2.0), out, save_as_external_data=True, location="out.onnx.data", size_threshold=0)
    before = files(tiny_disk)
    expect_write_error(fuser("optimize", src, "-o", out, "--no-validate", "--no-progress"), "No space left", str(out))
    assert files(tiny_disk) == before and sorted(os.listdir(tiny_disk)) == ["out.onnx", "out.onnx.data"]


def test_disk_full_for_a_report_keeps_the_previous_report(tmp_path, tiny_disk):
    src = tmp_path / "m.onnx"
    onnx.save(weights_model(16, 1.0), src)
    report = tiny_disk / "r.json"
    report.write_text('{"previous": true}')
    (tiny_disk / "filler").write_bytes(b"\0" * (256 * 1024 - 8192))  # leaves less than a report needs
    before = files(tiny_disk)
    proc = fuser("optimize", src, "-o", tmp_path / "o.onnx", "--report", report)
    expect_write_error(proc, "No space left", str(report))
    assert files(tiny_disk) == before


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_file_too_large_keeps_the_previous_output(tmp_path, external):
    src = tmp_path / "big.onnx"
    onnx.save(weights_model(256 * 1024, 1.0), src, **({"save_as_external_data": True, "location": "big.data",
                                                       "size_threshold": 0} if external else {}))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.onnx"
    onnx.save(weights_model(1024, 2.0), out)
    before = files(out_dir)
    expect_write_error(fuser("optimize", src, "-o", out, "--no-validate", "--no-progress", limit_bytes=512 * 1024),
                       "File too large", str(out))
    assert files(out_dir) == before


# ------------------------------------------------------------------- an I/O error at every step
FAIL_AT = textwrap.dedent("""
    import atexit, errno, os, sys
    k, count_file, calls = int(sys.argv[1]), sys.argv[2], [0]
    atexit.register(lambda: open(count_file, "w").write(str(calls[0])))  # how many steps the run made

    def failing(real):
        def step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                raise OSError(errno.EIO, "Input/output error (injected)")
            return real(*args, **kwargs)
        return step

    for name in ("replace", "rename", "fsync", "copy_file_range"):
        if hasattr(os, name):
            setattr(os, name, failing(getattr(os, name)))
    sys.argv = ["fuser", *sys.argv[3:]]
    from fuser.cli import main
    main()
""")


@pytest.mark.parametrize("kind", ["inline", "external-data", "report"])
def test_an_io_error_at_every_write_step_keeps_the_previous_output(tmp_path, kind):
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = src_dir / "model.onnx"
    external = {"save_as_external_data": True, "size_threshold": 0}
    onnx.save(weights_model(2048, 1.0), src, **({**external, "location": "model.onnx.data"}
                                               if kind == "external-data" else {}))
    out = out_dir / "out.onnx"
    script = tmp_path / "fail_at.py"
    script.write_text(FAIL_AT)
    count = tmp_path / "steps"
    args = ["optimize", src, "-o", out, "--no-validate", "--no-progress"]
    args += ["--report", out_dir / "r.json"] if kind == "report" else []
    outcomes = set()
    for k in range(1, 40):
        for p in out_dir.iterdir():
            p.unlink()
        onnx.save(weights_model(512, 2.0), out, **({**external, "location": "out.onnx.data"}
                                                    if kind == "external-data" else {}))
        if kind == "report":
            (out_dir / "r.json").write_text('{"previous": true}')
        before = files(out_dir)
        proc = subprocess.run([sys.executable, str(script), str(k), str(count), *map(str, args)],
                              capture_output=True, text=True, env=ENV, timeout=120)
        assert not [p for p in out_dir.iterdir() if p.name.startswith(".")], f"step {k}: a temporary file was left"
        if proc.returncode == 0:  # the failing step was one fuser works around, or there was no step k
            outcomes.add("written")
            assert files(out_dir) != before
            if k > int(count.read_text()):
                break
            continue
        expect_write_error(proc, "Input/output error")
        if kind == "report" and files(out_dir)["out.onnx"] != before["out.onnx"]:  # the model was written first
            assert files(out_dir)["r.json"] == before["r.json"], f"step {k}: the previous report was changed"
            outcomes.add("report kept")
        else:
            assert files(out_dir) == before, f"step {k}: the previous output was changed by a failed run"
            outcomes.add("kept")
    else:
        pytest.fail("the run never completed")
    assert "written" in outcomes and "kept" in outcomes, outcomes
    if kind == "report":
        assert "report kept" in outcomes, outcomes
    assert onnx.load(out).graph.input[0].type.tensor_type.shape.dim[1].dim_value == 2048
