"""SIGKILL a process in the middle of scene writes: the catalog commit is the only
point where the scene changes, and the scene always opens and verifies afterwards."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_cameras, make_params
from oocstore.gs.scene import Scene
from oocstore.store.verify import verify_store

ROOT = Path(__file__).resolve().parents[2]

# Writes generation g (params[:, 0] = g in every block) and commits it, for g = 1, 2, ...;
# prints "written g" before each commit and "committed g" after it.
CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from oocstore.gs.scene import Scene
    path, stop_after, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    scene = Scene.open(path)
    w = scene.writer()
    g = 0
    while True:
        g += 1
        for b in range(scene.num_blocks):
            ids, rec = scene.read_block(b)
            rec[:, 0] = g
            w.write_block(b, ids, rec)
        print("written", g, flush=True)
        if stop_after == "written":
            time.sleep(60)
        w.commit()
        print("committed", g, flush=True)
        if stop_after == "committed":
            time.sleep(60)
        time.sleep(pause)
""")


@pytest.fixture
def scene_path(tmp_path):
    params = make_params(1200, 1)
    params[:, 0] = 0
    Scene.create(tmp_path / "s", None, params, 1, make_cameras(params), block_size=200).close()
    return tmp_path / "s"


def _spawn(path, stop_after, pause=0.0):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), stop_after, str(pause)],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _wait_for(proc, prefix):
    line = ""
    while not line.startswith(prefix):
        line = proc.stdout.readline()
        assert line, "the writer process exited early"
    return int(line.split()[1])


def _generations(path) -> set:
    with Scene.open(path) as scene:
        assert verify_store(scene.store) == []
        gens = {float(v) for b in range(scene.num_blocks) for v in scene.read_block(b)[1][:, 0]}
        assert scene.num_gaussians == 1200
        # no uncommitted file survives the reopen: one file per block
        assert len(list((path / "scenes").iterdir())) == scene.num_blocks
    return gens


def _kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_kill_before_commit_keeps_previous(scene_path):
    proc = _spawn(scene_path, "written")
    assert _wait_for(proc, "written") == 1
    _kill(proc)
    assert _generations(scene_path) == {0.0}


def test_kill_after_commit_keeps_new(scene_path):
    proc = _spawn(scene_path, "committed")
    assert _wait_for(proc, "committed") == 1
    _kill(proc)
    assert _generations(scene_path) == {1.0}


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.31])
def test_kill_at_any_moment_is_atomic(scene_path, delay):
    proc = _spawn(scene_path, "never")
    last = _wait_for(proc, "committed")
    time.sleep(delay)
    _kill(proc)
    gens = _generations(scene_path)
    assert len(gens) == 1  # every block from the same commit
    assert gens.pop() >= last
