"""Densification keeps ids, moments and block indices consistent (property-based)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oocstore.errors import UsageError
from oocstore.gs import layout
from oocstore.gs.cameras import Cameras
from oocstore.gs.densify import (DensifyConfig, Decision, GradStats, densify_block, densify_scene)
from oocstore.gs.scene import Scene

DEG = 0
P = layout.param_width(DEG)
KEEP, CLONE, SPLIT, PRUNE = range(4)


def cameras() -> Cameras:
    vm = np.eye(4)[None].copy()
    vm[0, 2, 3] = 5
    K = np.array([[[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]]])
    return Cameras(vm, K, 16, 16)


def rows_for(kinds: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Records whose thresholds make ``decide`` pick the given kind per row, and the
    gradient each row gets."""
    g = np.random.default_rng(seed)
    n = len(kinds)
    k = np.array(kinds)
    rec = np.zeros((n, 3 * P), dtype=np.float32)
    rec[:, layout.MEANS] = g.uniform(-1, 1, (n, 3))
    rec[:, layout.QUATS] = g.normal(size=(n, 4))
    rec[:, layout.LOG_SCALES] = math.log(0.05)
    rec[k == CLONE, layout.LOG_SCALES] = math.log(0.001)
    rec[:, layout.OPACITY] = 0.0
    rec[k == PRUNE, layout.OPACITY] = -10.0
    rec[:, layout.SH_START:P] = g.normal(size=(n, P - layout.SH_START))
    rec[:, P:] = g.uniform(0.1, 1, (n, 2 * P))  # non-zero moments
    grad = np.where((k == CLONE) | (k == SPLIT), 1.0, 0.0)
    return rec, grad


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=st.lists(st.sampled_from([KEEP, KEEP, CLONE, SPLIT, PRUNE]), min_size=1, max_size=60),
       block_size=st.integers(2, 12), seed=st.integers(0, 1000))
def test_densify_scene_matches_an_in_memory_oracle(kinds, block_size, seed):
    rec, grad = rows_for(kinds, seed)
    n = len(kinds)
    with tempfile.TemporaryDirectory() as d:
        scene = Scene.create(Path(d) / "s", None, rec[:, :P], DEG, cameras(), block_size=block_size,
                             spare=0.25)
        try:
            # give every record its moments (create zeroes them), in each block
            with scene.writer() as w:
                for b in range(scene.num_blocks):
                    ids, _ = scene.read_block(b)
                    w.write_block(b, ids, rec[ids])
                w.commit()
            stats = GradStats(scene.next_id)
            stats.add(np.arange(n), np.stack([grad, np.zeros(n)], 1) * 2 / 16,
                      np.ones(n, dtype=bool), 16, 16)
            first_new = scene.next_id
            if all(x == PRUNE for x in kinds):  # an emptied scene: refused, nothing written
                version = scene.version
                with pytest.raises(UsageError, match=f"would prune all {n} Gaussians"):
                    densify_scene(scene, stats, 1.0, DensifyConfig(), seed)
                assert scene.version == version and scene.num_gaussians == n
                assert scene.next_id == first_new
                return
            done = densify_scene(scene, stats, 1.0, DensifyConfig(), seed)
        finally:
            scene.close()
        with Scene.open(Path(d) / "s") as scene:  # what was committed
            blocks = [scene.read_block(b) for b in range(scene.num_blocks)]
            counts = scene.block_counts
            cap = scene.block_capacity
            next_id = scene.next_id
    k = np.array(kinds)
    # block index: each block's count matches its rows and fits its capacity
    assert all(len(i) == c <= cap for (i, _), c in zip(blocks, counts))
    ids = np.concatenate([b[0] for b in blocks])
    recs = np.concatenate([b[1] for b in blocks])
    assert len(np.unique(ids)) == len(ids)  # ids unique across blocks
    by_id = {int(i): r for i, r in zip(ids, recs)}
    # the oracle: who survives, who is new
    n_new = int(((k == CLONE) | (k == SPLIT)).sum())
    expect_old = set(np.flatnonzero(k != PRUNE).tolist())
    new_ids = set(range(first_new, first_new + n_new))
    assert set(by_id) == expect_old | new_ids and next_id == first_new + n_new
    assert done["cloned"] == (k == CLONE).sum() and done["split"] == (k == SPLIT).sum()
    assert done["pruned"] == (k == PRUNE).sum()
    for i in expect_old:
        r = by_id[i]
        if k[i] in (KEEP, CLONE):  # untouched: parameters and moments
            np.testing.assert_array_equal(r, rec[i])
        else:  # split, first sample: same id, smaller scales, zeroed moments
            np.testing.assert_allclose(r[layout.LOG_SCALES], rec[i, layout.LOG_SCALES] - math.log(1.6),
                                       rtol=1e-6)
            assert not np.any(r[P:])
    # new records: zeroed moments; clones copy a parent's parameters exactly
    parents = {tuple(rec[i, :P]) for i in np.flatnonzero(k == CLONE)}
    clones = [by_id[i] for i in new_ids if tuple(by_id[i][:P]) in parents]
    assert len(clones) == (k == CLONE).sum()
    assert all(not np.any(by_id[i][P:]) for i in new_ids)


def test_densify_block_rejects_overlapping_masks():
    rec = np.zeros((2, 3 * P), dtype=np.float32)
    both = np.array([True, False])
    with pytest.raises(UsageError, match="disjoint"):
        densify_block(np.arange(2), rec, Decision(both, both, ~both), np.arange(2, 4), DEG,
                      np.random.default_rng(0))
    with pytest.raises(UsageError, match="needs 1 new ids"):
        densify_block(np.arange(2), rec, Decision(both, ~both & False, ~both & False),
                      np.arange(5, 8), DEG, np.random.default_rng(0))


def test_grad_stats_average_and_growth():
    s = GradStats(3)
    s.add(np.array([0, 4]), np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([True, True]), 2, 2)
    s.add(np.array([0]), np.array([[0.0, 0.0]]), np.array([True]), 2, 2)
    np.testing.assert_allclose(s.average(np.array([0, 4, 1])), [2.5, 1.0, 0.0])
    assert len(s.grad) == 5 and s.nbytes == 40


def test_a_densification_that_would_prune_every_gaussian_is_refused():
    """An emptied scene leaves the training step nothing to render: refused before
    anything is written (the prune-only pass would empty it too)."""
    rec, grad = rows_for([PRUNE] * 5, 0)
    with tempfile.TemporaryDirectory() as d:
        with Scene.create(Path(d) / "s", None, rec[:, :P], DEG, cameras(), block_size=2) as scene:
            version, nb = scene.version, scene.num_blocks
            with pytest.raises(UsageError, match="would prune all 5 Gaussians.*--prune-opa"):
                densify_scene(scene, GradStats(scene.next_id), 1.0, DensifyConfig(), 0,
                              admit=lambda c, b: None if c.sum() else "empty")
            assert scene.version == version and scene.num_gaussians == 5
            assert scene.num_blocks == nb
