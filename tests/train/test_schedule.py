"""epoch_schedule: which plan epoch and batch order each training epoch uses."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from oocstore.errors import UsageError
from oocstore.plan import PlanReader
from oocstore.store import Store
from oocstore.train import epoch_schedule
from oocstore.samplers import sample_plan


@pytest.fixture(scope="module")
def reader(small_store_template, tmp_path_factory):
    path = tmp_path_factory.mktemp("sched") / "s"
    shutil.copytree(small_store_template, path)
    with Store(path, readonly=False) as store:
        sample_plan(store, fanouts="3,3", batch_size=100, epochs=3, seed=9, name="p")
    store = Store(path)
    yield PlanReader(store, "p")
    store.close()


def test_cycle_replays_in_sampled_order(reader):
    n = reader.num_batches(0)
    for e in range(8):
        plan_epoch, order = epoch_schedule(reader, e, reuse="cycle")
        assert plan_epoch == e % 3
        np.testing.assert_array_equal(order, np.arange(n))


def test_shuffle_permutes_only_replays_deterministically(reader):
    n = reader.num_batches(0)
    firsts = [epoch_schedule(reader, e, reuse="shuffle")[1] for e in range(3)]
    for order in firsts:  # first pass over each plan epoch: as sampled (== fresh sampling)
        np.testing.assert_array_equal(order, np.arange(n))
    replays = [epoch_schedule(reader, e, reuse="shuffle")[1] for e in range(3, 9)]
    for order in replays:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
    assert len({tuple(o) for o in replays}) == len(replays)  # a new order every epoch
    again = epoch_schedule(reader, 5, reuse="shuffle")[1]
    np.testing.assert_array_equal(again, replays[2])
    other_seed = epoch_schedule(reader, 5, reuse="shuffle", seed=10)[1]
    assert not np.array_equal(other_seed, again)


@pytest.mark.parametrize("kwargs,match", [
    (dict(train_epoch=-1), "training epoch -1"), (dict(train_epoch=1, reuse="random"),
                                                  "reuse 'random' is not one of cycle, shuffle"),
])
def test_refuses_bad_arguments(reader, kwargs, match):
    with pytest.raises(UsageError, match=match):
        epoch_schedule(reader, **kwargs)
