"""A new view order every epoch: the same views, another tour, deterministic by seed."""

from __future__ import annotations

import numpy as np

from oocstore.samplers.views import epoch_orders, mean_consecutive_jaccard, view_order


def _strip_sets(v=24, width=5):
    return [np.arange(i, i + width) for i in range(v)]  # neighbours share blocks


def test_each_epoch_is_a_permutation_and_the_first_is_view_order():
    vis = _strip_sets()
    views = epoch_orders(vis, 3 * len(vis) + 5, seed=7, randomness=0.1)
    assert len(views) == 3 * len(vis) + 5
    for e in range(3):
        assert sorted(views[e * 24:(e + 1) * 24].tolist()) == list(range(24))
    assert np.array_equal(views[:24], view_order(vis, seed=7, randomness=0.1))


def test_epochs_differ_and_stay_local_and_repeat_for_a_seed():
    vis = _strip_sets()
    a = epoch_orders(vis, 96, seed=3, randomness=0.1)
    assert np.array_equal(a, epoch_orders(vis, 96, seed=3, randomness=0.1))
    assert not np.array_equal(a, epoch_orders(vis, 96, seed=4, randomness=0.1))
    tours = [a[i:i + 24] for i in range(0, 96, 24)]
    assert len({t.tobytes() for t in tours}) > 1  # not the same tour every epoch
    rand = mean_consecutive_jaccard(np.random.default_rng(0).permutation(24), vis)
    for t in tours:  # each epoch keeps the locality of a local order
        assert mean_consecutive_jaccard(t, vis) > rand
