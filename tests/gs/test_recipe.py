"""The training recipe's schedules: 3DGS defaults scaled to --steps, explicit values kept."""

from __future__ import annotations

import numpy as np
import pytest

from oocstore.errors import UsageError
from oocstore.gs import layout
from oocstore.gs.densify import reset_opacity_scene
from oocstore.gs.recipe import PHOTO, resolve
from oocstore.gs.synthetic import random_scene


def test_defaults_are_3dgs_at_30000_steps_and_scale_for_short_runs():
    full = resolve(30_000)
    assert (full.sh_every, full.densify_from, full.densify_until, full.densify_every,
            full.opacity_reset_every) == (1000, 500, 15_000, 100, 3000)
    assert (full.ssim_lambda, full.means_lr, full.means_lr_final, full.grow_grad2d,
            full.prune_opa, full.prune_scale3d) == (0.2, 1.6e-4, 1.6e-6, 2e-4, 0.005, 0.1)
    short = resolve(2000)
    assert (short.sh_every, short.densify_from, short.densify_until, short.densify_every,
            short.opacity_reset_every) == (67, 33, 1000, 7, 210)
    assert resolve(60_000) == full  # longer runs keep 3DGS's counts
    tiny = resolve(10)
    assert tiny.densify_every == 1 and tiny.sh_every == 1  # at least 1
    assert tiny.opacity_reset_every == 30  # 30 refinements per reset, never every step
    assert not any(tiny.reset_after(s) for s in range(1, 10))


def test_explicit_values_are_used_as_given():
    r = resolve(2000, densify_every=100, ssim_lambda=0.0, means_lr_final=None)
    assert r.densify_every == 100 and r.ssim_lambda == 0.0
    assert r.densify_from == 33 and r.means_lr_final == 1.6e-6  # None: not given


def test_synthetic_defaults_are_the_plain_set_up():
    r = resolve(2000, synthetic=True)
    assert r.ssim_lambda == 0 and r.densify_every == 0 and r.opacity_reset_every == 0
    assert r.sh_degree_at(0, 3) == 3 and r.means_lr_at(1999, 2000) == pytest.approx(1.6e-4)
    assert not any(r.refine_after(s) or r.reset_after(s) for s in range(1, 2000))


def test_schedules():
    r = resolve(30_000)
    assert [r.sh_degree_at(i, 3) for i in (0, 999, 1000, 2999, 3000, 29_999)] == [0, 0, 1, 2, 3, 3]
    assert r.sh_degree_at(5000, 1) == 1
    assert r.means_lr_at(0, 30_000) == pytest.approx(1.6e-4)
    assert r.means_lr_at(15_000, 30_000) == pytest.approx(1.6e-5)  # geometric midpoint
    assert r.means_lr_at(30_000, 30_000) == pytest.approx(1.6e-6)
    refines = [s for s in range(1, 30_000) if r.refine_after(s)]
    assert refines[0] == 600 and refines[-1] == 14_900 and np.all(np.diff(refines) == 100)
    assert [s for s in range(1, 30_000) if r.reset_after(s)] == [3000, 6000, 9000, 12_000]
    assert not r.prune_large_after(3000) and r.prune_large_after(3001)
    assert r.reset_value == pytest.approx(0.01)


@pytest.mark.parametrize("bad,match", [(dict(ssim_lambda=1.5), "ssim_lambda=1.5"),
                                       (dict(densify_every=-1), "densify_every=-1"),
                                       (dict(means_lr_final=0.0), "means_lr_final=0"),
                                       (dict(prune_opa=0.7), "prune_opa=0.7"),
                                       (dict(bogus=1), "unknown recipe")])
def test_bad_values_are_refused(bad, match):
    with pytest.raises(UsageError, match=match):
        resolve(100, **bad)


def test_opacity_reset_clamps_and_zeroes_the_opacity_moments(tmp_path):
    scene = random_scene(tmp_path / "s", 600, 1, block_size=128)
    try:
        with scene.writer() as w:  # non-zero moments everywhere
            for b in range(scene.num_blocks):
                ids, rec = scene.read_block(b)
                rec = rec.copy()
                rec[:, scene.param_width:] = 0.5
                w.write_block(b, ids, rec)
            w.commit()
        _, before = scene.read_all()
        n = reset_opacity_scene(scene, PHOTO.reset_value)
        _, after = scene.read_all()
    finally:
        scene.close()
    p, col = layout.param_width(1), layout.OPACITY.start
    opa_before = 1 / (1 + np.exp(-before[:, col]))
    opa_after = 1 / (1 + np.exp(-after[:, col]))
    assert n == int((opa_before > 0.01 + 1e-7).sum()) > 0
    assert np.all(opa_after <= 0.01 + 1e-6)
    low = opa_before <= 0.01
    np.testing.assert_array_equal(after[low, col], before[low, col])
    assert np.all(after[:, p + col] == 0) and np.all(after[:, 2 * p + col] == 0)
    other = np.ones(after.shape[1], bool)
    other[[col, p + col, 2 * p + col]] = False
    np.testing.assert_array_equal(after[:, other], before[:, other])


def test_densification_writes_only_the_blocks_it_changes(tmp_path):
    from oocstore.gs.densify import DensifyConfig, GradStats, densify_scene

    scene = random_scene(tmp_path / "s", 1024, 1, block_size=256)
    try:
        files = {b: scene._files[b] for b in range(scene.num_blocks)}
        ids0, _ = scene.read_block(0)
        stats = GradStats(scene.next_id)
        stats.grad[ids0[:10]] = 1.0  # ten Gaussians of block 0 pass the gradient threshold
        stats.count[ids0[:10]] = 1
        done = densify_scene(scene, stats, 100.0, DensifyConfig(prune_opa=0.0, prune_scale3d=1e9),
                             0, prune_large=False)
        assert done["cloned"] + done["split"] == 10 and done["blocks_written"] == 1
        assert scene.block_counts[0] == 266 and scene.num_gaussians == 1034
        assert scene._files[0] != files[0]
        assert all(scene._files[b] == files[b] for b in range(1, 4))
    finally:
        scene.close()


@pytest.mark.parametrize("seed", [0, 1])
def test_the_layout_vetted_before_a_refinement_is_the_one_written(tmp_path, seed):
    """Splits that spill into new blocks, prunes that empty and merge blocks: the counts and
    bounds ``admit`` sees are exactly the scene's after the commit."""
    from oocstore.gs.densify import DensifyConfig, GradStats, densify_scene

    scene = random_scene(tmp_path / "s", 3000, 1, block_size=128, seed=seed)
    try:
        g = np.random.default_rng(seed)
        with scene.writer() as w:
            for b in range(scene.num_blocks):
                ids, rec = scene.read_block(b)
                rec = rec.copy()
                k = g.random(len(ids))
                if b % 3 != 2:
                    rec[k < 0.8, layout.OPACITY.start] = -10  # pruned: blocks merge
                rec[k > 0.97, layout.LOG_SCALES] = 3  # too large: pruned
                w.write_block(b, ids, rec)
            w.commit()
        stats = GradStats(scene.next_id)
        stats.grad[:] = g.random(len(stats.grad)) * 4e-4
        stats.count[:] = 1
        seen = []
        done = densify_scene(scene, stats, 1.0, DensifyConfig(), 7,
                             admit=lambda c, b: seen.append((c.copy(), b.copy())))
        assert done["merged_blocks"] > 0 and done["new_blocks"] > 0 and done["split"] > 0
        counts, bounds = seen[0]
        np.testing.assert_array_equal(counts, scene.block_counts)
        np.testing.assert_array_equal(bounds, scene.block_bounds)
    finally:
        scene.close()
