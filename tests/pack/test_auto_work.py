"""The work behind an automatic split: the same choices as before, with no layout made
twice and no simulation of an empty cache, and each scheduled policy's epochs simulated
side by side with the result of one after the other."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from helpers import sampled_store
from oocstore import Store
from oocstore.pack import PackOptions
from oocstore.pack import auto, costmodel
from oocstore.pack.auto import choose_options, queue_reserve
from oocstore.pack.layout import plan_layout
from oocstore.pack.placement import hot_order, scheduled_epochs
from oocstore.pack.policies import POLICIES
from oocstore.plan import PlanReader


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """The README demo's shape, small: degree 16, fanouts 5,5, two epochs, a budget of
    the minimum working set plus a quarter of the features."""
    return sampled_store(tmp_path_factory.mktemp("demo") / "s",
                         dict(fanouts="5,5", batch_size=256, epochs=2, name="p"),
                         nodes=20000, feat_dim=32, avg_degree=16.0)


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory):
    return sampled_store(tmp_path_factory.mktemp("wide") / "s",
                         dict(fanouts="4,3", batch_size=64, epochs=1, name="p"),
                         nodes=2000, feat_dim=256, avg_degree=5.0)


def _demo_budget(s, plan) -> int:
    floor = plan_layout(s, plan, PackOptions(max_disk_blowup=5)).min_working_set["cpu"]
    return floor + s.array_meta("features").nbytes // 4


def _wide_budget(s, plan) -> int:
    floor = plan_layout(s, plan, PackOptions(max_disk_blowup=0.5)).min_working_set["cpu"]
    return floor + 4 * queue_reserve(s)


# (policy asked, options chosen, prediction) as the cost model chose them when every
# candidate split was laid out (and simulated) on its own: (policy, gpu_cache,
# cpu_cache, segment_batches, max_disk_blowup, cpu_budget), then mean_epoch_s, seconds,
# host_rows, ssd_rows, cpu_inserts, ssd_bytes.
DEMO = {
    None: (("static", 0, 2133504, 1, 5.0, 4988818),
           (0.0388267065, 0.03884018233333333, 184099, 8850, 0, 1421312)),
    "belady": (("belady", 0, 1990400, 1, 5.0, 4988818),
               (0.04116007583333332, 0.039508981333333325, 185119, 7830, 5547, 1286144)),
}
WIDE = {
    None: (("static", 0, 1816576, 4, 0.5, 3528417),
           (0.006865295666666666, 0.006865295666666666, 7931, 78, 0, 110592)),
    "belady": (("belady", 0, 1815552, 4, 0.5, 3528417),
               (0.006866661, 0.006866661, 7930, 79, 0, 114688)),
}


def _check(choice, blowup, expected):
    o, p = choice.options, choice.predicted
    assert (o.policy, o.gpu_cache, o.cpu_cache, o.segment_batches, o.max_disk_blowup,
            o.cpu_budget) == expected[0]
    got = (p["mean_epoch_s"], p["seconds"], p["host_rows"], p["ssd_rows"], p["cpu_inserts"],
           p["ssd_bytes"])
    assert got[2:] == expected[1][2:]
    assert got[:2] == pytest.approx(expected[1][:2], rel=1e-9)


@pytest.mark.parametrize("policy", [None, "belady"])
def test_the_choice_is_the_one_made_by_laying_out_every_candidate(demo_store, wide_store,
                                                                   policy):
    with Store(demo_store) as s:
        plan = PlanReader(s, "p")
        choice = choose_options(s, plan, cpu_budget=_demo_budget(s, plan), max_disk_blowup=5,
                                probe_disk=False, policy=policy)
    assert choice.options.cpu_budget == DEMO[policy][0][5]
    _check(choice, 5.0, DEMO[policy])
    with Store(wide_store) as s:
        plan = PlanReader(s, "p")
        choice = choose_options(s, plan, cpu_budget=_wide_budget(s, plan), max_disk_blowup=0.5,
                                probe_disk=False, policy=policy)
    _check(choice, 0.5, WIDE[policy])


def test_no_split_is_laid_out_twice(demo_store, monkeypatch):
    """Each candidate's last size is laid out once (the fit loop's layout is kept), and
    the chosen split's working set comes from its candidate, not a new layout."""
    seen = Counter()

    def counting(store, plan, options):
        seen[options] += 1
        return plan_layout(store, plan, options)

    monkeypatch.setattr(costmodel, "plan_layout", counting)
    monkeypatch.setattr(auto, "plan_layout", counting)
    with Store(demo_store) as s:
        plan = PlanReader(s, "p")
        budget = _demo_budget(s, plan)
        seen.clear()
        choose_options(s, plan, cpu_budget=budget, max_disk_blowup=5, probe_disk=False,
                       policy="belady")
    twice = {o: n for o, n in seen.items() if n > 1}
    assert seen and not twice


def _plan_arrays(s, plan):
    index = np.asarray(plan.index())
    offs = np.ascontiguousarray(index[:, 0])
    ninput = np.ascontiguousarray(index[:, 3])
    starts = np.concatenate([[0], np.cumsum(plan.meta.batches_per_epoch)]).astype(np.int64)
    n = s.array_meta("features").shape[0]
    return plan.records, offs, ninput, starts, n


def _one_epoch_after_the_other(kernel, data, offs, ninput, starts, node_tier, capacity, init):
    """Every epoch simulated in turn into shared buffers (the reference)."""
    total = int(ninput.sum())
    hit = np.empty(total, np.int32)
    ins_pos, ins_slot = np.empty(total, np.int64), np.empty(total, np.int32)
    ins_count = np.zeros(len(offs), np.int64)
    n_ins = pos0 = 0
    for e in range(len(starts) - 1):
        b0, b1 = int(starts[e]), int(starts[e + 1])
        n_ins = kernel(data, offs, ninput, b0, b1, pos0, node_tier, capacity, init, hit,
                       ins_pos, ins_slot, ins_count, n_ins)
        pos0 += int(ninput[b0:b1].sum())
    return hit, ins_pos[:n_ins], ins_slot[:n_ins], ins_count


@pytest.mark.parametrize("policy", ["belady", "s3fifo", "sieve"])
@pytest.mark.parametrize("capacity", [0, 3000])
def test_epochs_simulated_side_by_side_give_the_sequential_schedule(demo_store, policy,
                                                                    capacity):
    with Store(demo_store) as s:
        plan = PlanReader(s, "p")
        data, offs, ninput, starts, n = _plan_arrays(s, plan)
        order = hot_order(np.asarray(plan.access_counts()))
        node_tier = np.full(n, 2, np.int8)
        node_tier[order[:500]] = 0  # a GPU tier
        init = np.ascontiguousarray(order[500:500 + capacity], dtype=np.int64)
        kernel = POLICIES[policy]._kernel()
        want = _one_epoch_after_the_other(kernel, data, offs, ninput, starts, node_tier,
                                          capacity, init)
        got = scheduled_epochs(kernel, data, offs, ninput, starts, node_tier, capacity, init)
    for w, g in zip(want, got):
        assert w.dtype == g.dtype and np.array_equal(w, g)
    if capacity:
        assert (got[0] >= 0).any() and got[1].size  # the cache served and admitted rows


def test_an_empty_cache_is_not_simulated(demo_store):
    def kernel(*args):
        raise AssertionError("an empty cache was simulated")

    with Store(demo_store) as s:
        plan = PlanReader(s, "p")
        data, offs, ninput, starts, n = _plan_arrays(s, plan)
        hit, ins_pos, ins_slot, ins_count = scheduled_epochs(
            kernel, data, offs, ninput, starts, np.full(n, 2, np.int8), 0,
            np.zeros(0, np.int64))
    assert hit.size == int(ninput.sum()) and (hit == -1).all()
    assert ins_pos.size == ins_slot.size == 0 and not ins_count.any()


def test_epochs_run_one_after_the_other_when_their_scratch_does_not_fit(demo_store,
                                                                        monkeypatch):
    """Each epoch's simulation holds per-node scratch: with room for one epoch's only
    (or the memory available unknown), no epochs run side by side, and the schedule is
    the same."""
    from oocstore.pack import placement

    with Store(demo_store) as s:
        plan = PlanReader(s, "p")
        data, offs, ninput, starts, n = _plan_arrays(s, plan)
        order = hot_order(np.asarray(plan.access_counts()))
        node_tier = np.full(n, 2, np.int8)
        init = np.ascontiguousarray(order[:3000], dtype=np.int64)
        kernel = POLICIES["belady"]._kernel()
        want = _one_epoch_after_the_other(kernel, data, offs, ninput, starts, node_tier,
                                          3000, init)

        def no_threads(*a, **kw):
            raise AssertionError("epochs simulated side by side without the memory")

        monkeypatch.setattr(placement, "ThreadPoolExecutor", no_threads)
        for avail in (24 * n * 4, None):  # a quarter holds the per-node scratch only
            monkeypatch.setattr(placement, "_available_memory", lambda: avail)
            got = scheduled_epochs(kernel, data, offs, ninput, starts, node_tier, 3000, init)
            assert all(np.array_equal(w, g) for w, g in zip(want, got))
    assert placement._side_by_side(100_000_000, 0, 0) * 2_400_000_000 <= \
        max(2_400_000_000, (placement._available_memory() or 0) // 4)
