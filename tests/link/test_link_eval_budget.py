"""train --task link out of core: evaluation reads its features within the CPU budget
(O_DIRECT row reads into buffers charged to the loader's accountant, not a memory map),
and a budget that cannot hold one evaluation batch is refused before training."""

from __future__ import annotations

import re

import pytest

from helpers import copy_of, make_synthetic, tree_bytes
from oocstore.budget import BudgetAccountant
from oocstore.cli import main
from oocstore.errors import BudgetError
from oocstore.pack import PackOptions, pack_plan
from oocstore.samplers.link import sample_link_plan
from oocstore.store import Store
from oocstore.train.link import (LinkTrainConfig, _check_split, link_plan, max_eval_rows,
                                 run_link_training)
from oocstore.train.link_eval import eval_chunk_bytes

from linkopts import LINK


@pytest.fixture(scope="module")
def wide_eval(tmp_path_factory):
    """A plan whose training batches are small (batch size 8, one layer) beside an
    evaluation batch of thousands of endpoints: the loader fits in less than one
    evaluation batch needs. Returns (store, that batch's bytes, the loader's floor)."""
    from oocstore.tiers.reader import load_pack

    path = make_synthetic(tmp_path_factory.mktemp("wide") / "s", nodes=3000, avg_degree=4.0,
                          feat_dim=128)
    with Store(path, readonly=False) as store:
        sample_link_plan(store, name="link", **{**LINK, "fanouts": "2", "batch_size": 64,
                                                "epochs": 1})
        pack_plan(store, "link", name="link", options=PackOptions(max_disk_blowup=100.0))
    with Store(path) as store:
        meta = link_plan(store, "link")
        need = eval_chunk_bytes(max_eval_rows(_check_split(store, meta), meta),
                                store.array_meta("features").row_bytes)
        floor = load_pack(store, "link").min_working_set["cpu"]
    assert floor < need  # what the tests below rely on
    return path, need, floor


def _charges(monkeypatch) -> list[tuple[str, int]]:
    """Every cpu charge made to a budget accountant: (what, bytes)."""
    seen: list[tuple[str, int]] = []
    orig = BudgetAccountant.charge

    def spy(self, tier, nbytes, what, **kw):
        if tier == "cpu":
            seen.append((what, int(nbytes)))
        return orig(self, tier, nbytes, what, **kw)

    monkeypatch.setattr(BudgetAccountant, "charge", spy)
    return seen


def test_evaluation_features_are_charged_and_peak_stays_in_budget(link_template, monkeypatch):
    budget = 1 << 20
    seen = _charges(monkeypatch)

    array = Store.array

    def no_feature_mmap(self, name):  # out of core, no feature read through a memory map
        assert name != "features", "the features' memory map read out of core"
        return array(self, name)

    monkeypatch.setattr(Store, "array", no_feature_mmap)
    s = run_link_training(link_template, "link",
                          LinkTrainConfig(epochs=2, hidden=16, cpu_budget=budget))
    evals = [n for what, n in seen if what == "link evaluation feature rows"]
    assert len(evals) >= 3  # validation after each epoch and the test
    assert s["eval_bytes_read"] > 0
    assert max(evals) <= s["cpu_peak_charged"] <= budget


def test_a_budget_below_one_evaluation_batch_is_refused(wide_eval):
    path, need, floor = wide_eval
    with pytest.raises(BudgetError, match=rf"give cpu_budget={need} or more"):
        run_link_training(path, "link", LinkTrainConfig(epochs=1, hidden=8, cpu_budget=need - 1))


def test_the_minimum_named_is_enough(wide_eval):
    path, need, floor = wide_eval
    s = run_link_training(path, "link", LinkTrainConfig(epochs=1, hidden=8, cpu_budget=need))
    assert s["eval_bytes_read"] > 0 and s["cpu_peak_charged"] <= need
    mem = run_link_training(path, "link", LinkTrainConfig(epochs=1, hidden=8, in_memory=True))
    assert s["test"] == mem["test"] and s["val"] == mem["val"]


def test_cli_refuses_before_training_and_writes_nothing(capsys, wide_eval, tmp_path):
    path, need, floor = wide_eval
    store = copy_of(path, tmp_path / "s")
    before = tree_bytes(store, skip=())
    rc = main(["train", str(store), "--task", "link", "--epochs", "1", "--cpu-budget",
               str(need - 1), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": error: " in err[0], err
    assert re.search(rf"cannot hold one link evaluation batch.*--cpu-budget {need} or more,"
                     rf" or use --in-memory", err[0]), err[0]
    after = tree_bytes(store, skip=())
    after.pop("catalog.lmdb/lock.mdb", None)
    before.pop("catalog.lmdb/lock.mdb", None)
    assert after == before


def test_a_python_caller_reads_the_parameter_it_passed(wide_eval):
    from oocstore.errors import BudgetError
    from oocstore.train.link_eval import check_eval_budget

    path, need, floor = wide_eval
    with pytest.raises(BudgetError) as e:
        check_eval_budget(path, 4096, 1000, 512)
    assert "cpu_budget=" in str(e.value) and "in_memory=True" in str(e.value)
    assert "--" not in str(e.value)
