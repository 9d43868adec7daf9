"""pack.auto.choose_options: the options ``oocstore pack`` packs with, chosen inside a budget
by the cost model or given by hand, and the prediction reported for them."""

from __future__ import annotations

import pytest

from helpers import make_synthetic
from oocstore import Store
from oocstore.errors import UsageError
from oocstore.pack.auto import choose_options, prediction
from oocstore.pack.costmodel import Bandwidths, choose_split
from oocstore.plan import PlanReader
from oocstore.samplers import sample_plan


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = make_synthetic(tmp_path_factory.mktemp("auto") / "s", nodes=2000, feat_dim=16,
                          avg_degree=5.0)
    sample_plan(path, fanouts="4,3", batch_size=128, epochs=2, name="p")
    return path


def test_inside_a_budget_the_cost_models_choice_is_used(store):
    with Store(store) as s:
        plan = PlanReader(s, "p")
        choice = choose_options(s, plan, cpu_budget=4 << 20, probe_disk=False,
                                policy="belady", copy="rescans", window_bytes=1 << 20)
        expected, predicted, _ = choose_split(s, plan, cpu_budget=4 << 20, bw=Bandwidths())
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
