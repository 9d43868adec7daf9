"""Per-Gaussian culling never drops a Gaussian the rasterizer draws, and drops the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oocstore.gs import layout
from oocstore.gs.cull import in_frustum
from oocstore.gs.render import project


def _camera(g, width, height):
    """A random world-to-camera matrix and intrinsics (off-centre principal point, narrow
    to very wide fields of view)."""
    q = g.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    vm = np.eye(4)
    vm[:3, :3] = rot
    vm[:3, 3] = g.normal(size=3)
    f = g.uniform(0.3, 3.0) * width
    K = np.array([[f, 0, g.uniform(0.2, 0.8) * width], [0, f * g.uniform(0.8, 1.2),
                                                          g.uniform(0.2, 0.8) * height],
                  [0, 0, 1]])
    return vm, K


def _gaussians_near_the_frustum(g, vm, K, width, height, n):
    """Gaussians placed around the frustum's edges and near plane (in camera space), with
    large, elongated scales and opacities up to 1: the hard cases for a margin."""
    z = np.concatenate([g.uniform(0.02, 8.0, n - n // 8), g.uniform(-0.5, 0.1, n // 8)])
    u = g.uniform(-0.6, 1.6, n) * width
    v = g.uniform(-0.6, 1.6, n) * height
    x = (u - K[0, 2]) * np.abs(z) / K[0, 0]
    y = (v - K[1, 2]) * np.abs(z) / K[1, 1]
    pc = np.stack([x, y, z], 1)
    world = (pc - vm[:3, 3]) @ vm[:3, :3]  # R^T (pc - t)
    log_scales = np.log(g.uniform(1e-3, 0.5, (n, 3)) * g.choice([1, 0.01], (n, 3)))
    prm = layout.join_params(world, g.normal(size=(n, 4)), log_scales, g.uniform(-6, 12, n),
                             g.normal(size=(n, 1, 3)))
    return torch.from_numpy(prm).double()


@pytest.mark.parametrize("seed", range(12))
def test_the_cull_keeps_every_gaussian_the_rasterizer_draws(seed):
    g = np.random.default_rng(seed)
    width, height = int(g.integers(16, 200)), int(g.integers(16, 200))
    vm, K = _camera(g, width, height)
    prm = _gaussians_near_the_frustum(g, vm, K, width, height, 4000)
    radii = project(prm, 0, torch.from_numpy(vm), torch.from_numpy(K), width, height)[3]
    drawn = radii > 0
    kept = in_frustum(prm.float(), vm, K, width, height)
    assert drawn.any() and (~kept).any()
    missed = drawn & ~kept
    assert not missed.any(), f"{int(missed.sum())} drawn Gaussians culled"
    # and it is a cull: most Gaussians far outside the frustum are dropped
    assert int(kept.sum()) < len(kept)


@pytest.mark.parametrize("seed", range(8))
def test_off_centre_and_wide_cameras_keep_every_drawn_gaussian(seed):
    """Principal points outside the middle of the image (crops) and very wide views need
    a wider margin than the default; the cull works it out per camera."""
    g = np.random.default_rng(100 + seed)
    width, height = int(g.integers(16, 200)), int(g.integers(16, 200))
    vm, K = _camera(g, width, height)
    K[0, 0] = K[1, 1] = g.uniform(0.05, 0.3) * width
    K[0, 2] = g.choice([-0.3, 0.0, 1.0, 1.3]) * width
    K[1, 2] = g.choice([-0.3, 0.05, 0.95, 1.3]) * height
    prm = _gaussians_near_the_frustum(g, vm, K, width, height, 4000)
    radii = project(prm, 0, torch.from_numpy(vm), torch.from_numpy(K), width, height)[3]
    kept = in_frustum(prm.float(), vm, K, width, height)
    missed = (radii > 0) & ~kept
    assert not missed.any(), f"{int(missed.sum())} drawn Gaussians culled"


def test_the_cull_drops_gaussians_outside_by_more_than_their_margin():
    vm, K = np.eye(4), np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    means = np.array([[0, 0, 5], [100, 0, 5], [0, 0, -5], [0, -100, 5], [3.3, 0, 5]])
    prm = layout.join_params(means, np.tile([1.0, 0, 0, 0], (5, 1)), np.full((5, 3), np.log(0.1)),
                             np.zeros(5), np.zeros((5, 1, 3)))
    kept = in_frustum(torch.from_numpy(prm), vm, K, 64, 48)
    # in view; far right; behind; far up; just right of the image (x/z = 0.66 > 32/50)
    # but within 1.5 x 3.33 sigma = 0.5: kept
    assert kept.tolist() == [True, False, False, False, True]


def test_culled_counts_match_the_per_view_test(tmp_path):
    from oocstore.gs.cull import culled_counts
    from oocstore.gs.synthetic import random_scene
    from oocstore.samplers.views import visibility_sets

    scene = random_scene(tmp_path / "s", 3000, 1, block_size=256, views=10)
    try:
        cams = scene.cameras
        vis = visibility_sets(scene.block_bounds, cams)
        views = np.arange(len(cams))
        got = culled_counts(scene, cams, vis, views)
        want = []
        for v in views:
            rows = [scene.read_block(int(b))[1] for b in vis[v]]
            prm = torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros(0, 23)
            want.append(int(in_frustum(prm, cams.viewmats[v], cams.Ks[v], cams.width,
                                       cams.height).sum()))
        assert got.tolist() == want
        rows = [int(scene.block_counts[vis[v]].sum()) for v in views]
        assert 0 < sum(want) < sum(rows)  # some rows of the visible blocks are culled
    finally:
        scene.close()
