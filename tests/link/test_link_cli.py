"""The link commands from the command line: they work, and bad input is one line, exit
status 2, and leaves the store byte-identical."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from helpers import tree_bytes
from oocstore.cli import main
from oocstore.ingest import build_store
from oocstore.ingest.common import GraphSource


def _refused(capsys, store, argv, match):
    before = tree_bytes(store, skip=())
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("oocstore") and ": error: " in err[0], err
    assert re.search(match, err[0]), err[0]
    after = tree_bytes(store, skip=())
    after.pop("catalog.lmdb/lock.mdb", None)
    before.pop("catalog.lmdb/lock.mdb", None)
    assert after == before


SAMPLE = ["--task", "link", "--fanouts", "3", "--batch-size", "32", "--quiet"]


@pytest.mark.parametrize("extra, match", [
    (["--neg-ratio", "0"], r"--neg-ratio 0 is not an integer >= 1"),
    (["--neg-ratio", "-2"], r"--neg-ratio -2 is not an integer >= 1"),
    (["--neg-ratio", "two"], r"--neg-ratio two is not an integer >= 1"),
    (["--neg-ratio", "1.5"], r"--neg-ratio 1.5 is not an integer"),
    ([], r"--task link needs --neg-ratio"),
    (["--neg-ratio", "1", "--edge-split", "0.5,0.2,0.2"], r"sums to 0.9, not 1"),
    (["--neg-ratio", "1", "--edge-split", "1.2,-0.1,-0.1"], r"has a negative part"),
    (["--neg-ratio", "1", "--edge-split", "0.9,0.1"], r"is not three numbers"),
    (["--neg-ratio", "1", "--edge-split", "0,0.5,0.5"], r"leaves no training edges"),
    (["--neg-ratio", "1", "--neg-sampler", "zipf"], r"invalid choice"),
    (["--neg-ratio", "100000000000"], r"--neg-ratio 100000000000 is more than the \d+ nodes"),
    (["--neg-ratio", "1", "--eval-negatives", "100000000"],
     r"--eval-negatives 100000000 is more than the \d+ nodes"),
])
def test_bad_sample_options_are_refused(capsys, link_store, extra, match):
    _refused(capsys, link_store, ["sample", str(link_store), *SAMPLE, "--name", "x", *extra],
             match)


def test_an_existing_split_with_other_options_needs_overwrite(capsys, link_store):
    _refused(capsys, link_store, ["sample", str(link_store), *SAMPLE, "--neg-ratio", "1",
                                  "--edge-split", "0.8,0.1,0.1", "--name", "x"],
             r"already has an edge split.*--overwrite")
    assert main(["sample", str(link_store), *SAMPLE, "--neg-ratio", "1", "--edge-split",
                 "0.8,0.1,0.1", "--name", "x", "--overwrite"]) == 0
    # The old plan was sampled on the replaced split: training it is refused.
    _refused(capsys, link_store, ["train", str(link_store), "--task", "link", "--plan", "link",
                                  "--epochs", "1", "--in-memory", "--quiet"],
             r"sampled on another edge split.*--overwrite")


def test_a_store_without_edges_to_hold_out(capsys, tmp_path):
    src = GraphSource(num_nodes=20, src=np.arange(20), dst=np.arange(20), directed=False,
                      features=[np.ones((20, 2), np.float32)], feat_dim=2,
                      labels=np.zeros(20, np.int64), splits={"train": np.arange(10)},
                      where="self-loops")
    store = build_store(tmp_path / "loops", src)
    _refused(capsys, store, ["sample", str(store), *SAMPLE, "--neg-ratio", "1"],
             r"no edges to hold out|0 edge\(s\).*to hold out")


def test_train_task_and_plan_kind_must_agree(capsys, link_store):
    assert main(["sample", str(link_store), "--fanouts", "3", "--batch-size", "64",
                 "--epochs", "1", "--name", "nodeplan", "--quiet"]) == 0
    _refused(capsys, link_store, ["train", str(link_store), "--task", "link", "--plan",
                                  "nodeplan", "--epochs", "1", "--quiet"],
             r"plan 'nodeplan' .* is a node-classification plan.*without --task link")
    _refused(capsys, link_store, ["train", str(link_store), "--plan", "link", "--epochs", "1",
                                  "--quiet"],
             r"plan 'link' .* is a link-prediction plan: train it with --task link")
    _refused(capsys, link_store, ["train", str(link_store), "--task", "link", "--model", "gat",
                                  "--epochs", "1", "--quiet"], r"--model: not available")


def test_train_task_link_json(capsys, link_template):
    assert main(["train", str(link_template), "--task", "link", "--epochs", "1", "--hidden",
                 "8", "--in-memory", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["task"] == "link" and out["plan"] == "link" and out["in_memory"]
    assert 0.0 <= out["test"]["auc"] <= 1.0 and "mrr" in out["val"]


def test_an_unnamed_plan_is_never_a_link_plan(capsys, link_store):
    """Node training and packing without --plan: the link plan is not picked implicitly
    for node classification (and the message says why none fits)."""
    _refused(capsys, link_store, ["train", str(link_store), "--epochs", "1", "--quiet"],
             r"no 'train' plan for node classification \(it has: link \(train\)\)")
    assert main(["sample", str(link_store), "--fanouts", "3", "--batch-size", "64",
                 "--epochs", "1", "--name", "nodeplan", "--quiet"]) == 0
    from oocstore.plan import default_plan, newest_plan
    from oocstore.store import Store

    with Store(link_store) as store:
        assert default_plan(store) == "nodeplan"
        assert newest_plan(store, None, task="link").name == "link"


@pytest.mark.parametrize("extra,match", [
    (["--weight-decay", "-1"], r"--weight-decay -1.0: give a finite value >= 0"),
    (["--lr", "inf"], r"--lr inf: give a finite learning rate > 0"),
])
def test_bad_optimizer_options_of_link_training_are_refused(capsys, link_store, extra, match):
    """Refused with the other options, not by Adam with a traceback."""
    _refused(capsys, link_store, ["train", str(link_store), "--task", "link", "--plan", "link",
                                  "--epochs", "1", "--in-memory", "--quiet", *extra], match)
