"""Fixtures for scene tests: small synthetic Gaussian scenes and cameras."""

from __future__ import annotations

import numpy as np
import pytest

from oocstore.gs import layout
from oocstore.gs.cameras import orbit_cameras
from oocstore.gs.scene import Scene


def make_params(n: int, sh_degree: int = 1, *, seed: int = 0, extent: float = 4.0) -> np.ndarray:
    """``n`` random Gaussians in a ``extent``-wide cube: params [n, P] float32."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, layout.param_width(sh_degree))).astype(np.float32)
    p[:, layout.MEANS] = rng.uniform(-extent / 2, extent / 2, size=(n, 3))
    p[:, layout.LOG_SCALES] = rng.uniform(-5, -3, size=(n, 3))
    return p


def make_cameras(params: np.ndarray, n: int = 8, *, width: int = 64, height: int = 48, seed: int = 0):
    return orbit_cameras(params[:, layout.MEANS], n, width=width, height=height, seed=seed)


@pytest.fixture
def small_scene(tmp_path):
    """A 2,000-Gaussian SH-degree-1 scene in blocks of 256 (8 blocks), opened for writing."""
    params = make_params(2000, 1)
    scene = Scene.create(tmp_path / "scene", None, params, 1, make_cameras(params), block_size=256)
    try:
        yield scene, params
    finally:
        scene.close()
