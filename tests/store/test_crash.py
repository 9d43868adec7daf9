"""Crash safety: SIGKILL an ingest or a transaction at chosen steps of the commit
protocol, then check that the store holds exactly the previous or the new committed
state, verifies clean, and that the next writer succeeds and clears the leftovers.

The kill points are hit deterministically by a driver script that runs the CLI (or a
transaction) in a subprocess after wrapping one library function so that it kills its
own process before or after the real call. One test also kills a real
``python -m oocstore ingest`` after fixed delays.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from oocstore.store import Store
from oocstore.store.verify import verify_store

from helpers import REPO, run_oocstore, tree_bytes

NODES, DIM = 3000, 16
SEED_OLD, SEED_NEW = 1, 2

DRIVER = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    from oocstore.store import catalog, files, store as store_mod

    mode, point, out, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    kind, _, arg = point.partition(":")

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, name, *, before=False, when=lambda *a, **k: True):
        real = getattr(owner, name)
        def wrapper(*a, **k):
            if before and when(*a, **k):
                die()
            result = real(*a, **k)
            if not before and when(*a, **k):
                die()
            return result
        setattr(owner, name, wrapper)

    calls = [0]
    def nth_call(*a, **k):
        calls[0] += 1
        return calls[0] == int(arg)

    if kind == "write":          # after the n-th append to any data file (a .tmp on disk)
        wrap(files.ArrayFileWriter, "write", when=nth_call)
    elif kind == "finish":       # after a data file got its final name, before the commit
        wrap(files.ArrayFileWriter, "finish",
             when=lambda self: self.final_path.name.startswith(arg))
    elif kind == "commit":       # right after the catalog transaction committed
        wrap(catalog.Catalog, "commit")
    elif kind == "install":      # before / after a new store is moved into place
        wrap(store_mod, "_install", before=arg == "before")
    elif kind == "exchange":     # after the atomic swap, before the old store is removed
        wrap(store_mod, "_rename_exchange")
    elif kind == "superseded":   # after the commit, before superseded files are deleted
        wrap(store_mod.Transaction, "_collect_superseded", before=True)
    elif kind != "none":
        raise SystemExit(f"unknown point {point}")

    if mode == "ingest":
        from oocstore.cli import main
        sys.exit(main(["ingest", "synthetic", out, "--nodes", "%(nodes)d", "--feat-dim",
                       "%(dim)d", "--avg-degree", "4", "--seed", str(seed), "--overwrite",
                       "--quiet"]))
    else:                        # replace the features of an existing store
        from oocstore.store import Store
        with Store(out, readonly=False) as s:
            old = s.array("features")
            with s.transaction() as txn:
                w = txn.array_writer("features", "float32", (old.shape[1],))
                for lo in range(0, old.shape[0], 1000):
                    w.append(np.asarray(old[lo:lo + 1000]) * 2)
                w.close()
                txn.put("note", "features doubled")
''') % {"nodes": NODES, "dim": DIM}


def _state(path):
    """What a reader sees: catalog entries and every array's bytes."""
    with Store(path) as s:
        assert verify_store(s) == [], f"damage in {path}"
        return s.catalog.dump(), {n: s.array(n).tobytes() for n in sorted(s.arrays)}


def _referenced_only(path):
    with Store(path) as s:
        named = {m.file for m in s.arrays.values()}
    return set(tree_bytes(path)) == named


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    for name, seed in (("old", SEED_OLD), ("new", SEED_NEW)):
        r = run_oocstore("ingest", "synthetic", str(root / name), "--nodes", str(NODES),
                         "--feat-dim", str(DIM), "--avg-degree", "4", "--seed", str(seed), "--quiet")
        assert r.returncode == 0, r.stderr
    (root / "driver.py").write_text(DRIVER)
    r = subprocess.run([sys.executable, str(root / "driver.py"), "replace", "none",
                        str(root / "old"), "0"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    # "old" is now the replaced state; rebuild the unreplaced one for the replace tests.
    (root / "old").rename(root / "replaced")
    r = run_oocstore("ingest", "synthetic", str(root / "old"), "--nodes", str(NODES),
                     "--feat-dim", str(DIM), "--avg-degree", "4", "--seed", str(SEED_OLD), "--quiet")
    assert r.returncode == 0, r.stderr
    return {"root": root, **{k: _state(root / k) for k in ("old", "new", "replaced")}}


def _drive(refs, mode, point, out, seed):
    return subprocess.run([sys.executable, str(refs["root"] / "driver.py"), mode, point,
                           str(out), str(seed)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


INGEST_POINTS = ["write:1", "write:3", "finish:features", "finish:graph-indices",
                 "finish:split-val", "commit", "install:before", "install:after"]


@pytest.mark.parametrize("point", INGEST_POINTS)
def test_kill_new_ingest(refs, tmp_path, point):
    out = tmp_path / "out"
    r = _drive(refs, "ingest", point, out, SEED_NEW)
    assert r.returncode == -signal.SIGKILL, r.stderr
    if point == "install:after":
        assert _state(out) == refs["new"]
    else:
        assert not out.exists()
        # the crash left its staging directory behind
        assert [p.is_dir() for p in tmp_path.glob(".out.*.partial")] == [True]
    r = _drive(refs, "ingest", "none", out, SEED_NEW)  # the next ingest cleans up
    assert r.returncode == 0, r.stderr
    assert _state(out) == refs["new"] and _referenced_only(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("point", ["write:2", "finish:labels", "commit", "install:before",
                                   "exchange", "install:after"])
def test_kill_overwriting_ingest(refs, tmp_path, point):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(refs["root"] / "old", out)
    r = _drive(refs, "ingest", point, out, SEED_NEW)
    assert r.returncode == -signal.SIGKILL, r.stderr
    expect = "new" if point in ("exchange", "install:after") else "old"
    assert _state(out) == refs[expect]
    r = _drive(refs, "ingest", "none", out, SEED_NEW)
    assert r.returncode == 0, r.stderr
    assert _state(out) == refs["new"] and _referenced_only(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("point, expect", [
    ("write:1", "old"), ("write:3", "old"), ("finish:features", "old"), ("commit", "replaced"),
    ("superseded", "replaced")])
def test_kill_transaction_replacing_array(refs, tmp_path, point, expect):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(refs["root"] / "old", out)
    r = _drive(refs, "replace", point, out, 0)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _state(out) == refs[expect]
    assert not _referenced_only(out)  # the crash left an orphan (.tmp, new or old .bin)
    with Store(out, readonly=False) as s:  # the next transaction removes it
        v = s.version
        with s.transaction() as txn:
            txn.put("after-crash", True)
        assert s.version == v + 1
    assert _referenced_only(out)
    assert _state(out)[1] == refs[expect][1]


@pytest.mark.parametrize("delay", [0.15, 0.4, 0.8, 1.6])
def test_kill_real_cli_after_fixed_delays(tmp_path, delay):
    """SIGKILL a real ``python -m oocstore ingest`` at wall-clock points (where it lands
    varies with the machine; the guarantee must hold wherever it does)."""
    out = tmp_path / "big"
    args = [sys.executable, "-m", "oocstore", "ingest", "synthetic", str(out), "--nodes",
            "120000", "--feat-dim", "64", "--avg-degree", "8", "--quiet"]
    p = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    if out.exists():
        with Store(out) as s:
            assert s.version == 1 and verify_store(s) == []
            assert s.array("features").shape == (120000, 64)
    r = subprocess.run(args + ["--overwrite"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    with Store(out) as s:
        assert verify_store(s) == [] and s.meta.source["nodes"] == 120000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]
    assert _referenced_only(out)
