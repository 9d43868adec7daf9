"""Same commands and seeds -> bit-identical stores and plans, whatever the thread count."""

from __future__ import annotations

import os

from helpers import run_oocstore, tree_bytes


def _build_and_sample(root, threads: int):
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
    out = root / f"t{threads}"
    r = run_oocstore("ingest", "synthetic", str(out), "--nodes", "3000", "--avg-degree", "8",
                     "--feat-dim", "8", "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    for args in (["--fanouts", "5,4,3", "--batch-size", "96", "--epochs", "2", "--seed", "11"],
                 ["--fanouts", "all,2", "--batch-size", "200", "--split", "val"]):
        r = run_oocstore("sample", str(out), *args, "--quiet", env=env)
        assert r.returncode == 0, r.stderr
    return out


def test_plans_identical_across_thread_counts(tmp_path):
    one = tree_bytes(_build_and_sample(tmp_path, 1))
    two = tree_bytes(_build_and_sample(tmp_path, 2))
    assert sorted(one) == sorted(two)
    assert any(k.startswith("plans/") for k in one)
    for name in one:
        assert one[name] == two[name], f"{name} differs between 1 and 2 threads"
