"""Two CPU processes under torchrun (gloo): per-rank packing, DDP training through the
loader, `oocstore train` under torchrun. One launch; the ranks' reports are checked here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, make_synthetic
from oocstore.store import Store
from oocstore.samplers.neighbor import sample_plan

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    store = make_synthetic(root / "s", nodes=3000, feat_dim=16, avg_degree=8.0)
    sample_plan(store, fanouts="5,5", batch_size=128, epochs=2, world_size=2)
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(WORKER), str(store), str(out)],
        capture_output=True, text=True, timeout=240, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return store, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_each_rank_reads_its_own_shard(reports):
    _, (r0, r1) = reports
    assert (r0["plan"], r1["plan"]) == ("train.rank0", "train.rank1")
    assert r0["world_size"] == r1["world_size"] == 2


def test_every_training_seed_seen_exactly_once_per_epoch_across_ranks(reports):
    store, ranks = reports
    with Store(store) as s:
        train = np.sort(s.split("train"))
    for epoch in range(2):
        per_rank = [r["seeds"][epoch] for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) > 1  # equal batch counts
        seen = np.sort(np.concatenate([np.concatenate(b) for b in per_rank]))
        np.testing.assert_array_equal(seen, train)
    # epochs are reshuffled: rank 0's first batch differs between epochs
    assert ranks[0]["seeds"][0][0] != ranks[0]["seeds"][1][0]


def test_parameters_identical_across_ranks_after_every_step(reports):
    _, ranks = reports
    steps = sum(len(e) for e in ranks[0]["seeds"])
    for r in ranks:
        assert len(r["param_diffs"]) == steps
        assert max(r["param_diffs"]) == 0.0
    # the ranks computed on different data, so identical parameters mean the gradients
    # were averaged (DDP), not merely equal initialisations
    assert ranks[0]["losses"] != ranks[1]["losses"]


def test_train_under_torchrun_rank0_prints_reduced_json(reports):
    store, (r0, r1) = reports
    assert r0["train_exit"] == r1["train_exit"] == 0
    assert r1["train_stdout"] == ""  # only rank 0 prints
    summary = json.loads(r0["train_stdout"].strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["plan"] == "train"
    assert 0.4 < summary["test_acc"] <= 1 and 0 < summary["val_acc"] <= 1
    assert [x["plan"] for x in summary["ranks"]] == ["train.rank0", "train.rank1"]
    assert summary["bytes_read"] == sum(x["bytes_read"] for x in summary["ranks"]) > 0
    with Store(store) as s:
        n_train, n_test = s.split("train").size, s.split("test").size
        plans = dict(s.items("plan/"))
    assert [e["seeds"] for e in summary["epochs"]] == [n_train] * 3  # summed over the ranks
    # the test accuracy is over the whole test split: one evaluation shard per rank
    shards = [plans[f"plan/test-eval.rank{r}"] for r in range(2)]
    assert [m["shard_rank"] for m in shards] == [0, 1]
    assert sum(m["num_seeds"] for m in shards) == n_test


def test_resume_under_torchrun_continues_every_rank(reports):
    _, (r0, r1) = reports
    assert r0["resume_exit"] == r1["resume_exit"] == 0 and r1["resume_stdout"] == ""
    first = json.loads(r0["train_stdout"].strip().splitlines()[-1])
    resumed = json.loads(r0["resume_stdout"].strip().splitlines()[-1])
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2, 3]
    assert resumed["epochs"][:3] == first["epochs"]
