"""`oocstore sample` and `oocstore inspect` on plans; bad input gives one line and exit 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from oocstore.cli import main
from oocstore.errors import ChecksumError, StoreExistsError, UsageError
from oocstore.plan import PlanReader
from oocstore.store import Store
from oocstore.samplers import sample_plan


@pytest.fixture
def store(rmat_store, tmp_path):
    path = tmp_path / "g"
    shutil.copytree(rmat_store, path)
    return path


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_sample_then_inspect(store, capsys):
    rc, out, _ = _run(capsys, "sample", store, "--fanouts", "4,3", "--batch-size", "256",
                      "--epochs", "2", "--seed", "1", "--quiet")
    assert rc == 0 and out == ""
    rc, out, _ = _run(capsys, "sample", store, "--fanouts", "all", "--batch-size", "512",
                      "--split", "test")
    assert rc == 0 and "test: split test, fanouts all" in out
    rc, out, _ = _run(capsys, "inspect", store)
    assert rc == 0 and "plans (2):" in out and "train: split train, fanouts 4,3" in out
    assert "unique nodes" in out and "of features" in out
    rc, out, _ = _run(capsys, "inspect", store, "--json")
    info = json.loads(out)
    p = info["plans"]["train"]
    assert p["fanouts"] == [4, 3] and p["epochs"] == 2 and p["seed"] == 1
    assert p["stats"]["total_batches"] == sum(p["batches_per_epoch"])
    assert info["plans"]["test"]["shuffle"] is False


def test_overwrite(store, capsys):
    assert _run(capsys, "sample", store, "--fanouts", "3", "--batch-size", "100", "--quiet")[0] == 0
    rc, _, err = _run(capsys, "sample", store, "--fanouts", "3", "--batch-size", "100")
    assert rc == 2 and "--overwrite" in err and err.count("\n") == 1
    with Store(store, readonly=False) as s:
        with pytest.raises(StoreExistsError, match="already has a plan 'train'"):
            sample_plan(s, fanouts="3", batch_size=100)
    assert _run(capsys, "sample", store, "--fanouts", "5", "--batch-size", "50", "--epochs", "1",
                "--overwrite", "--quiet")[0] == 0
    with Store(store) as s:
        r = PlanReader(s, "train")
        assert r.meta.fanouts == (5,) and r.meta.batch_size == 50 and r.num_epochs == 1
        files = sorted(p.name for p in (store / "plans").iterdir())
    assert len(files) == 3, files  # the superseded plan's files are gone


@pytest.mark.parametrize("argv, match", [
    (["--fanouts", "15,0"], "'0' is not a positive integer"),
    (["--fanouts", "a,3"], "'a' is not a positive integer"),
    (["--fanouts", "-1"], "'all' for the full"),
    (["--fanouts", "3", "--batch-size", "0"], "--batch-size 0"),
    (["--fanouts", "3", "--split", "nosuch"], "no such split .*it has: test, train, val"),
    (["--fanouts", "3", "--name", "a/b"], "plan name 'a/b'"),
    (["--fanouts", "3", "--epochs", "0"], "--epochs 0"),
])
def test_bad_input_one_line_exit_2(store, capsys, argv, match):
    if "--batch-size" not in argv:
        argv = [*argv, "--batch-size", "64"]
    rc, out, err = _run(capsys, "sample", store, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("oocstore: error: ") and err.count("\n") == 1
    import re
    assert re.search(match, err), err


def test_bad_input_library(store):
    with Store(store, readonly=False) as s:
        n = s.graph.num_nodes
        with pytest.raises(UsageError, match=f"seed node {n} is out of range 0..{n - 1}"):
            sample_plan(s, fanouts="3", batch_size=4, seeds=np.array([1, n]), name="x")
        with pytest.raises(UsageError, match="seed node -2"):
            sample_plan(s, fanouts="3", batch_size=4, seeds=np.array([-2]), name="x")
        with pytest.raises(UsageError, match="repeat"):
            sample_plan(s, fanouts="3", batch_size=4, seeds=np.array([1, 1]), name="x")
        with pytest.raises(UsageError, match="is empty"):
            sample_plan(s, fanouts="3", batch_size=4, seeds=np.array([], dtype=np.int64), name="x")
        with pytest.raises(UsageError, match="fanouts="):
            sample_plan(s, fanouts=[2.5], batch_size=4)
        with pytest.raises(UsageError, match="batch_size=True"):
            sample_plan(s, fanouts="3", batch_size=True)
        meta = sample_plan(s, fanouts="3", batch_size=4, seeds=np.array([3, 1, 2]), name="custom")
        assert meta.split == "custom" and meta.batches_per_epoch == (1, 1, 1, 1)


def test_damaged_graph_is_refused(store, capsys):
    with Store(store) as s:
        path = s.file_path(s.array_meta("graph/indices"))
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="graph/indices.*checksum mismatch.*restore"):
        sample_plan(store, fanouts="3", batch_size=64)
    rc, _, err = _run(capsys, "sample", store, "--fanouts", "3", "--batch-size", "64")
    assert rc == 2 and "checksum" in err and err.count("\n") == 1
    with Store(store) as s:
        assert not list(s.items("plan/"))  # nothing was committed
