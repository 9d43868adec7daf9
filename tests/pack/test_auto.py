"""pack.auto.choose_options: the options ``oocstore pack`` packs with, chosen inside a budget
by the cost model or given by hand, and the prediction reported for them."""

from __future__ import annotations

import pytest

from helpers import sampled_store
from oocstore import Store
from oocstore.errors import BudgetError, UsageError
from oocstore.pack.auto import choose_options, prediction, queue_reserve
from oocstore.pack.costmodel import Bandwidths, choose_split
from oocstore.plan import PlanReader


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return sampled_store(tmp_path_factory.mktemp("auto") / "s",
                         dict(fanouts="4,3", batch_size=128, epochs=2, name="p"),
                         nodes=2000, feat_dim=16, avg_degree=5.0)


def test_inside_a_budget_the_cost_models_choice_is_used(store):
    with Store(store) as s:
        plan = PlanReader(s, "p")
        choice = choose_options(s, plan, cpu_budget=4 << 20, probe_disk=False,
                                policy="belady", copy="rescans", window_bytes=1 << 20)
        # Every batch is packed here: no base-array reads, no queue to leave room for.
        expected, predicted, _ = choose_split(s, plan, cpu_budget=4 << 20, bw=Bandwidths(),
                                              policy="belady")
    assert choice.auto and not choice.probed and choice.bandwidths == Bandwidths()
    o = choice.options
    assert (o.cpu_cache, o.gpu_cache, o.segment_batches, o.max_disk_blowup) == (
        expected.cpu_cache, expected.gpu_cache, expected.segment_batches,
        expected.max_disk_blowup)
    assert (o.policy, o.copy, o.window_bytes, o.cpu_budget) == ("belady", "rescans", 1 << 20,
                                                                4 << 20)
    assert choice.predicted == predicted
    with Store(store) as s:
        assert prediction(s, "p", choice) == predicted  # no second cost-model run


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory):
    """1 KiB rows (2 MiB of features): a cache of a few hundred KiB leaves most rows to
    the base array."""
    return sampled_store(tmp_path_factory.mktemp("wide") / "s",
                         dict(fanouts="4,3", batch_size=64, epochs=1, name="p"),
                         nodes=2000, feat_dim=256, avg_degree=5.0)


def _floor(s, plan, cap: float = 0.5) -> int:
    from oocstore.pack import PackOptions
    from oocstore.pack.layout import plan_layout

    return plan_layout(s, plan, PackOptions(max_disk_blowup=cap)).min_working_set["cpu"]


def test_with_base_array_reads_the_cache_leaves_the_read_queue_its_room(wide_store):
    """A split that leaves rows to the base array sizes its cache inside the budget less
    the loader's deep base-read queue (else the cache takes every byte and the loader
    reads with the required few reads in flight); the pack is still checked against the
    whole budget, and the loader gets the deepest queue."""
    from oocstore.budget import MemoryBudget
    from oocstore.pack import pack_plan
    from oocstore.tiers import TieredReader
    from oocstore.workingset import MAX_BASE_READS_IN_FLIGHT

    with Store(wide_store) as s:
        plan = PlanReader(s, "p")
        reserve = queue_reserve(s)
        budget = _floor(s, plan) + 2 * reserve
        choice = choose_options(s, plan, cpu_budget=budget, max_disk_blowup=0.5,
                                probe_disk=False)
        full, _, _ = choose_split(s, plan, cpu_budget=budget, max_disk_blowup=0.5,
                                  bw=Bandwidths())
        reserved, _, _ = choose_split(s, plan, cpu_budget=budget - reserve,
                                      max_disk_blowup=0.5, bw=Bandwidths())
    assert reserve == (MAX_BASE_READS_IN_FLIGHT - 8) * 8192  # 1 KiB rows: 8 KiB slots
    assert choice.options.cpu_cache == reserved.cpu_cache < full.cpu_cache
    assert choice.options.cpu_budget == budget
    with Store(wide_store, readonly=False) as s:
        meta = pack_plan(s, "p", name="q", options=choice.options)
        assert meta.min_working_set["base_read_bytes"] > 0
    with Store(wide_store) as s:
        with TieredReader(s, "q", budget=MemoryBudget(cpu=budget)) as r:
            assert r.base.threads == MAX_BASE_READS_IN_FLIGHT


def test_a_budget_too_small_for_the_read_queue_still_packs(wide_store):
    """Between the floor and the floor plus the queue's room, the split is made in the
    whole budget (the loader then reads with the required reads in flight)."""
    with Store(wide_store) as s:
        plan = PlanReader(s, "p")
        budget = _floor(s, plan, cap=0) + queue_reserve(s) // 4  # no segment buffer
        with pytest.raises(BudgetError):
            choose_split(s, plan, cpu_budget=budget - queue_reserve(s), max_disk_blowup=0.5,
                         bw=Bandwidths())
        choice = choose_options(s, plan, cpu_budget=budget, max_disk_blowup=0.5,
                                probe_disk=False)
    assert choice.options.cpu_budget == budget


def test_given_sizes_are_used_as_given_and_predicted_from_their_layout(store):
    with Store(store) as s:
        plan = PlanReader(s, "p")
        choice = choose_options(s, plan, cpu_cache=64 << 10, cpu_budget=4 << 20,
                                segment_batches=2)
        assert not choice.auto and not choice.probed and choice.predicted is None
        o = choice.options
        assert (o.cpu_cache, o.gpu_cache, o.segment_batches, o.cpu_budget) == (
            64 << 10, 0, 2, 4 << 20)
        assert o.window_bytes == type(o)().window_bytes  # the default pack memory
        predicted = prediction(s, "p", choice)
        assert predicted["seconds"] > 0


def test_without_a_budget_nothing_is_chosen(store):
    with Store(store) as s:
        choice = choose_options(s, PlanReader(s, "p"))
    assert not choice.auto and choice.options.cpu_cache == 0 == choice.options.gpu_cache


def test_bad_values_are_refused_before_packing(store):
    with Store(store) as s, pytest.raises(UsageError):
        choose_options(s, PlanReader(s, "p"), cpu_cache=0, window_bytes=0)


def test_without_a_policy_the_faster_predicted_one_is_taken(wide_store):
    from oocstore.pack.auto import AUTO_POLICIES

    with Store(wide_store) as s:
        plan = PlanReader(s, "p")
        budget = _floor(s, plan) + 4 * queue_reserve(s)
        each = {p: choose_options(s, plan, cpu_budget=budget, max_disk_blowup=0.5,
                                  probe_disk=False, policy=p) for p in AUTO_POLICIES}
        choice = choose_options(s, plan, cpu_budget=budget, max_disk_blowup=0.5,
                                probe_disk=False, policy=None)
        given = choose_options(s, plan, cpu_cache=64 << 10, policy=None)
    best = min(AUTO_POLICIES, key=lambda p: each[p].predicted["mean_epoch_s"])
    assert choice.options == each[best].options and choice.options.policy == best
    assert given.options.policy == "static"
