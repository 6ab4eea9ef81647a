"""Runs that write the same output at the same time never mix their files.

An output with external data is two files, OUT and OUT.data, that cannot be replaced in one step. fuser
swaps them under an exclusive lock on the output's folder (flock), so whichever run swaps last leaves
its own graph with its own data, and no run leaves anything else behind (no temporary or backup file).

Each writer's model is unique (its weights hold its number, and their count differs per writer), so a
graph paired with another writer's data is caught: onnxruntime computes the wrong numbers or fails.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T, helper

from fuser.model_io import load_model, save_model

from builders import make_model

F = T.FLOAT
ENV = {**os.environ, "PYTHONSAFEPATH": "1"}


def writer_model(i: int) -> onnx.ModelProto:
    """y = x + w, with w = i everywhere; writers differ in the width (so in their data's layout) too."""
    n = 4096 + 64 * i
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [1, n])], [("y", F, [1, n])],
                       [("w", np.full((1, n), float(i), np.float32))])
    model.graph.name = f"writer{i}"
    return model


def which_writer(out: Path) -> int:
    """The writer whose graph OUT is, after checking that OUT.data is that writer's data."""
    i = int(onnx.load(out, load_external_data=False).graph.name.removeprefix("writer"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    n = session.get_inputs()[0].shape[1]
    y = session.run(None, {"x": np.zeros((1, n), np.float32)})[0]
    assert np.all(y == i), f"the graph of writer {i} reads another run's data"
    return i


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in ("out.onnx", "out.onnx.data"))


def _save_many(i: int, src: str, out: str, rounds: int, barrier) -> None:
    loaded = load_model(src)
    try:
        for _ in range(rounds):
            barrier.wait(timeout=60)
            save_model(loaded, loaded.model, out, external_data=True)
            barrier.wait(timeout=60)  # the checker looks at OUT between the two waits
    except BaseException:
        barrier.abort()  # fail the test now, not at a timeout
        raise


def test_many_concurrent_writers_leave_one_consistent_pair(tmp_path):
    writers, rounds = 6, 30
    sources = []
    for i in range(writers):
        folder = tmp_path / f"src{i}"
        folder.mkdir()
        onnx.save(writer_model(i), folder / "m.onnx", save_as_external_data=True, location="m.data",
                  size_threshold=0)
        sources.append(str(folder / "m.onnx"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.onnx"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(writers + 1)
    procs = [context.Process(target=_save_many, args=(i, sources[i], str(out), rounds, barrier))
             for i in range(writers)]
    for p in procs:
        p.start()
    try:
        seen = set()
        for r in range(rounds):
            barrier.wait(timeout=60)  # all writers start together
            barrier.wait(timeout=60)  # all writers are done
            seen.add(which_writer(out))
            assert leftovers(out_dir) == [], f"round {r}: files left behind"
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert len(seen) > 1, "the writers never raced"


def test_concurrent_command_line_runs_leave_one_consistent_pair(tmp_path):
    """The same through the real command line: several `fuser optimize -o OUT` started at once. (Process
    start-up spreads these runs out, so this one checks the command's path end to end; the test above,
    with writers released together, is the one that caught the race on the old code, every time.)"""
    writers, rounds = 4, 1
    sources = []
    for i in range(writers):
        path = tmp_path / f"m{i}.onnx"
        onnx.save(writer_model(i), path, save_as_external_data=True, location=f"m{i}.data", size_threshold=0)
        sources.append(path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.onnx"
    for _ in range(rounds):
        procs = [subprocess.Popen([sys.executable, "-m", "fuser", "optimize", str(src), "-o", str(out),
                                   "--no-validate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
                 for src in sources]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()[-2000:]
        which_writer(out)
        assert leftovers(out_dir) == []
