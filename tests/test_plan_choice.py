"""Which plan a command uses when none is named, and the refusal to train on held-out
nodes: the loader, ``pack`` and ``train`` default to the most recent training-split
plan (never to a newer ``val`` or ``*-eval`` plan), and training on a plan of an
evaluation split needs ``allow_eval_split`` / ``--allow-eval-split``."""

from __future__ import annotations

import logging

import pytest

from helpers import make_synthetic, tree_bytes
from oocstore.budget import MemoryBudget
from oocstore.cli import main
from oocstore.distributed import default_plan, is_evaluation_split, plans_to_pack, resolve_plan
from oocstore.errors import StoreNotFoundError, UsageError
from oocstore.loader import NodeLoader
from oocstore.pack import PackOptions, pack_plan
from oocstore.store import Store
from oocstore.tiers.reader import list_packs
from oocstore.train.run import TrainConfig, run_training
from oocstore.samplers.neighbor import sample_plan


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A train plan, then (newer) a val plan and a test-eval plan, each packed."""
    path = make_synthetic(tmp_path_factory.mktemp("choice") / "s", nodes=600, avg_degree=5.0)
    sample_plan(path, fanouts="3,2", batch_size=64, epochs=2, name="train")
    sample_plan(path, fanouts="3,2", batch_size=64, split="val", name="val")
    sample_plan(path, fanouts="3,2", batch_size=64, split="test", name="test-eval")
    with Store(path, readonly=False) as s:
        for plan in ("train", "val", "test-eval"):
            pack_plan(s, plan, options=PackOptions(cpu_cache=0))
    return path


def test_evaluation_splits():
    assert is_evaluation_split("val") and is_evaluation_split("test")
    assert not is_evaluation_split("train") and not is_evaluation_split("custom")


def test_default_plan_is_the_newest_training_plan_not_the_newest_plan(store):
    with Store(store) as s:
        assert default_plan(s) == "train"
        assert resolve_plan(s, None) == "train"
        assert plans_to_pack(s, None) == ["train"]
        assert default_plan(s, split=None) == "test-eval"  # the newest of any split


def test_node_loader_without_a_plan_reads_the_training_plan(store):
    with Store(store) as s, NodeLoader(s, device="cpu", budget=MemoryBudget(),
                                       rank=0, world_size=1) as loader:
        assert loader.plan_name == "train" and loader.pack_name == "train"
        assert loader.split == "train"
    # A named evaluation plan is still readable (evaluation loaders name theirs).
    with Store(store) as s, NodeLoader(s, "test-eval", rank=0, world_size=1) as loader:
        assert loader.plan_name == "test-eval" and loader.split == "test"


def test_no_training_plan_is_refused_with_the_fix(tmp_path):
    path = make_synthetic(tmp_path / "s", nodes=300, avg_degree=4.0)
    sample_plan(path, fanouts="2", batch_size=50, split="val", name="val")
    with Store(path) as s:
        with pytest.raises(StoreNotFoundError, match=r"no 'train' plan \(it has: val \(val\)\): "
                                                     r"create one with `oocstore sample"):
            resolve_plan(s, None)
        with pytest.raises(StoreNotFoundError, match="no 'train' plan"):
            NodeLoader(s, rank=0, world_size=1)


def test_pack_without_plan_packs_the_training_plan(store, tmp_path, capsys):
    path = make_synthetic(tmp_path / "p", nodes=400, avg_degree=4.0)
    sample_plan(path, fanouts="2", batch_size=50, name="train")
    sample_plan(path, fanouts="all", batch_size=100, split="val", name="val")  # newer
    assert main(["pack", str(path), "--cpu-cache", "0", "--quiet"]) == 0
    with Store(path) as s:
        assert {m.plan for m in list_packs(s).values()} == {"train"}


@pytest.mark.parametrize("plan,split", [("val", "val"), ("test-eval", "test")])
def test_train_on_an_evaluation_plan_is_refused_before_any_write(store, plan, split, capsys):
    before = tree_bytes(store, skip=())
    rc = main(["train", str(store), "--plan", plan, "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1
    assert f"plan {plan!r}" in err and f"samples the {split!r} split" in err
    assert "--allow-eval-split" in err
    assert tree_bytes(store, skip=()) == before  # nothing written, not even eval plans
    with pytest.raises(UsageError, match=r"allow_eval_split=True"):
        run_training(store, plan, TrainConfig(epochs=1))


def test_train_on_an_evaluation_plan_when_allowed_says_so_once(tmp_path, caplog):
    path = make_synthetic(tmp_path / "s", nodes=400, avg_degree=4.0)
    sample_plan(path, fanouts="2", batch_size=50, name="train")
    sample_plan(path, fanouts="2", batch_size=50, split="val", name="val")
    caplog.set_level(logging.WARNING)
    summary = run_training(path, "val", TrainConfig(epochs=1, hidden=8, in_memory=True,
                                                    allow_eval_split=True))
    assert summary["plan"] == "val"
    warned = [r.getMessage() for r in caplog.records if "allow_eval_split" in r.getMessage()]
    assert warned == ["training on plan 'val' of the 'val' split (allow_eval_split): accuracy "
                      "on that split is no longer a held-out estimate"]


def test_pack_without_plan_packs_new_shards_beside_an_unsharded_plan_of_that_name(tmp_path):
    path = make_synthetic(tmp_path / "p", nodes=400, avg_degree=4.0)
    sample_plan(path, fanouts="2", batch_size=50, name="train")
    with Store(path, readonly=False) as s:
        pack_plan(s, "train", options=PackOptions(cpu_cache=0))
    sample_plan(path, fanouts="2", batch_size=25, world_size=2)  # group 'train', newer
    sample_plan(path, fanouts="all", batch_size=100, split="val", name="val")
    assert main(["pack", str(path), "--cpu-cache", "0", "--quiet"]) == 0
    with Store(path) as s:
        assert sorted(m.plan for m in list_packs(s).values()) == [
            "train", "train.rank0", "train.rank1"]
        assert resolve_plan(s, None, rank=1, world_size=2) == "train.rank1"
        assert resolve_plan(s, None) == "train"
