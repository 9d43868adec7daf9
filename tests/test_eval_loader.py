"""Evaluation loaders that share the training loader's budget (NodeLoader.eval_loader),
and what a training script reads off the store and the loader."""

import threading

import numpy as np
import pytest
import torch

from helpers import opened, sampled_store
from oocstore.budget import MemoryBudget
from oocstore.errors import UsageError
from oocstore.loader import NodeLoader
from oocstore.pack import PackOptions

BUDGET = MemoryBudget(cpu="8MiB")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    plans = [dict(fanouts="4,3", batch_size=128, epochs=2, seed=0, name="train"),
             dict(fanouts="4,3", batch_size=128, split="val", name="val-eval")]
    packs = {"train": ("train", PackOptions(cpu_cache=300 * 64)),
             "val-eval": ("val-eval", PackOptions(cpu_cache=100 * 64))}
    yield from opened(sampled_store(tmp_path_factory.mktemp("eval") / "s", *plans, packs=packs,
                                    nodes=3000, avg_degree=6, classes=5))


def test_store_and_loader_describe_the_model_to_build(store):
    labels = np.asarray(store.array("labels"))
    assert store.num_classes == int(labels.max()) + 1 == 5
    assert store.feature_dim == 16 and store.num_nodes == 3000
    with NodeLoader(store, "train", budget=BUDGET) as loader:
        assert loader.num_layers == loader.plan.num_layers == 2
        assert tuple(loader.plan.meta.fanouts) == (4, 3)


def _batches(loader):
    return [(b.index, b.seeds.copy(), b.x.clone(), b.y.clone()) for b in loader]


def _held(store, plan):
    with NodeLoader(store, plan, budget=MemoryBudget(cpu="1GiB"), prefetch=1) as loader:
        return loader.accountant.charged("cpu")


@pytest.fixture(scope="module")
def tight(store):
    """A budget that holds either loader (prefetch 1) but not both at once."""
    train, val = _held(store, "train"), _held(store, "val-eval")
    return MemoryBudget(cpu=max(train, val) + min(train, val) // 2)


def test_eval_loader_reads_the_eval_plan_and_takes_turns_in_the_budget(store, tight):
    feats = np.asarray(store.array("features"))
    with NodeLoader(store, "train", budget=tight, prefetch=1) as loader:
        first = _batches(loader)
        held = loader.accountant.charged("cpu")
        assert held > 0
        with loader.eval_loader("val") as val:
            # no room beside the training loader: its buffers were handed back first
            assert loader.accountant.charged("cpu") == 0
            assert val.plan_name == "val-eval" and val.budget == loader.budget
            seen = []
            for b in val:
                assert torch.equal(b.x, torch.from_numpy(feats[b.input_nodes]))
                seen.append(b.seeds)
            np.testing.assert_array_equal(np.sort(np.concatenate(seen)), store.split("val"))
            assert val.accountant.charged("cpu") > 0
            # training again: val lends its memory back, training reopens where it was
            second = _batches(loader)
            assert val.accountant.charged("cpu") == 0
            assert loader.accountant.charged("cpu") == held
            assert sum(1 for _ in val) == len(val)  # and val reopens in turn
            assert loader.accountant.charged("cpu") == 0
        with NodeLoader(store, "train", budget=tight, prefetch=1) as ref:
            want = [_batches(ref) for _ in range(2)]
            assert ref.stats()["bytes_read"] > 0
            for got, exp in zip((first, second), want):
                assert [g[0] for g in got] == [e[0] for e in exp]
                for g, e in zip(got, exp):
                    np.testing.assert_array_equal(g[1], e[1])
                    assert torch.equal(g[2], e[2]) and torch.equal(g[3], e[3])
            # counters add up over the loader's openings
            assert loader.stats()["bytes_read"] == ref.stats()["bytes_read"]
            assert loader.stats()["hit_rate"] == ref.stats()["hit_rate"]


def test_eval_loader_opens_beside_the_training_loader_where_the_budget_has_room(store):
    budget = MemoryBudget(cpu=_held(store, "train") + _held(store, "val-eval") + 4096)
    with NodeLoader(store, "train", budget=budget, prefetch=1) as loader:
        held = loader.accountant.charged("cpu")
        with loader.eval_loader("val") as val:
            assert val.budget.cpu == budget.cpu - held  # what training leaves
            for _ in range(2):
                assert sum(b.num_seeds for b in val) == store.split("val").size
                assert len(_batches(loader)) == len(loader)
                # nothing was closed and re-opened: both hold their buffers throughout
                assert loader.accountant.charged("cpu") == held
                assert val.accountant.charged("cpu") > 0
                assert held + val.accountant.charged("cpu") <= budget.cpu
            assert not loader._reads_before and not val._reads_before


def test_evaluation_mid_epoch_resumes_the_training_epoch(store, tight):
    with NodeLoader(store, "train", budget=tight, prefetch=1) as ref:
        want = [b.index for b in ref]
    with NodeLoader(store, "train", budget=tight, prefetch=1) as loader:
        got = []
        for b in loader:
            got.append(b.index)
            if len(got) == 3:
                break
        with loader.eval_loader("val") as val:
            assert loader.accountant.charged("cpu") == 0  # it had to lend its memory
            assert sum(b.num_seeds for b in val) == store.split("val").size
        got += [b.index for b in loader]
    assert got == want


def test_lend_budget_frees_the_loaders_memory_and_the_epoch_goes_on_where_it_was(store, tight):
    with NodeLoader(store, "train", budget=tight, prefetch=1) as ref:
        want = _batches(ref)
    with NodeLoader(store, "train", budget=tight, prefetch=1) as loader:
        got = []
        for b in loader:
            got.append((b.index, b.seeds.copy(), b.x.clone(), b.y.clone()))
            if len(got) == 2:
                break
        held, read = loader.accountant.charged("cpu"), loader.stats()["bytes_read"]
        assert held > 0 and read > 0
        loader.lend_budget()
        assert loader.accountant.charged("cpu") == 0  # the memory is the caller's now
        assert loader.stats()["bytes_read"] == read  # its counters are kept
        loader.lend_budget()  # lending twice is the same as once
        assert loader.accountant.charged("cpu") == 0
        loader.take_turn()
        assert loader.accountant.charged("cpu") == held
        got += _batches(loader)
        assert loader.stats()["bytes_read"] > read  # and go on counting
    assert [g[0] for g in got] == [w[0] for w in want]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g[1], w[1])
        assert torch.equal(g[2], w[2]) and torch.equal(g[3], w[3])
    loader.lend_budget()  # closed: nothing to lend, no error


def test_assembly_counters_keep_counting_across_lend_budget(store, tight, monkeypatch):
    """The reader's assembly counters (batches shared with the helper thread, its
    blocks, the wait) are those of every opening of the loader, as ``bytes_read`` is: a
    re-open after ``lend_budget`` does not start them again from zero."""
    import oocstore.tiers.reader as reader_mod

    monkeypatch.setattr(reader_mod, "_cores", lambda: 2)  # a helper thread on any machine
    with NodeLoader(store, "train", budget=tight, prefetch=1) as loader:
        for i, _ in enumerate(loader):
            if i == 5:
                break
        first = loader.stats()["assembly"]
        assert first["threads"] == 2 and first["batches"] > 0
        loader.lend_budget()
        assert loader.stats()["assembly"] == first  # kept while lent
        loader.take_turn()
        next(iter(loader))  # one batch more: fewer than before the re-open
        after = loader.stats()["assembly"]
    assert after["threads"] == 2
    for k in ("batches", "helper_blocks", "wait_s"):
        assert after[k] >= first[k], k
    assert after["batches"] > first["batches"]


@pytest.mark.parametrize("prefetch", [0, 1])
def test_lend_budget_inside_the_loop_goes_on_with_the_next_batch(store, tight, prefetch):
    """``lend_budget`` (or an evaluation loader) inside ``for batch in loader``: the same
    loop goes on with the next batch, re-opened where it was, to the end of the epoch
    (it used to wait forever on the stopped pipeline)."""
    with NodeLoader(store, "train", budget=tight, prefetch=prefetch) as ref:
        want = _batches(ref)
    got, lent, done = [], [], threading.Event()

    def run(loader):
        for b in loader:
            got.append((b.index, b.seeds.copy(), b.x.clone(), b.y.clone()))
            if len(got) in (2, 3):
                loader.lend_budget()
                lent.append(loader.accountant.charged("cpu"))
        done.set()

    with NodeLoader(store, "train", budget=tight, prefetch=prefetch) as loader:
        t = threading.Thread(target=run, args=(loader,), daemon=True)
        t.start()
        assert done.wait(60), "the loop did not go on after lend_budget"
        assert loader.epoch == 1 and loader._start == 0
    assert lent == [0, 0]  # the memory was the caller's each time
    assert [g[0] for g in got] == [w[0] for w in want]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g[1], w[1])
        assert torch.equal(g[2], w[2]) and torch.equal(g[3], w[3])


def test_missing_eval_plan_names_the_commands_that_make_it(store):
    with NodeLoader(store, "train", budget=BUDGET) as loader:
        with pytest.raises(UsageError, match=r"no packed evaluation plan 'test-eval'.*"
                           r"`oocstore train .* --epochs 1 --cpu-budget 8388608`.*"
                           r"`oocstore sample .* --split test --name test-eval --fanouts 4,3 "
                           r"--batch-size 128`"):
            loader.eval_loader("test")
        # the refusal left the training loader as it was
        assert loader.accountant.charged("cpu") > 0
        assert len(_batches(loader)) == len(loader)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device (torch.cuda.is_available() is False here)")
def test_eval_loader_takes_turns_in_a_gpu_budget(store):
    """On CUDA the turns are decided by the device budget too: with room on the host
    but not on the device for both loaders' batches, opening one frees the other's."""
    feats = np.asarray(store.array("features"))

    def held(plan):
        with NodeLoader(store, plan, device="cuda", prefetch=1,
                        budget=MemoryBudget(cpu="1GiB", gpu="1GiB")) as one:
            return one.accountant.charged("cpu"), one.accountant.charged("gpu")

    (tc, tg), (vc, vg) = held("train"), held("val-eval")
    assert tg > 0 and vg > 0
    budget = MemoryBudget(cpu=tc + vc + 4096, gpu=max(tg, vg) + min(tg, vg) // 2)
    with NodeLoader(store, "train", device="cuda", budget=budget, prefetch=1) as loader:
        for b in loader:
            assert torch.equal(b.x.cpu(), torch.from_numpy(feats[b.input_nodes]))
        with loader.eval_loader("val") as val:
            assert loader.accountant.charged("gpu") == 0
            for b in val:
                assert torch.equal(b.x.cpu(), torch.from_numpy(feats[b.input_nodes]))
            for b in loader:
                assert torch.equal(b.x.cpu(), torch.from_numpy(feats[b.input_nodes]))
            assert val.accountant.charged("gpu") == 0
            assert loader.accountant.charged("gpu") == tg
