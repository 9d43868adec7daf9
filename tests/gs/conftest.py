"""Fixtures for scene tests: small synthetic Gaussian scenes and cameras."""

from __future__ import annotations

import numpy as np
import pytest

from oocstore.gs.scene import Scene
from oocstore.gs.synthetic import random_cameras, random_params


def make_params(n: int, sh_degree: int = 1, *, seed: int = 0, extent: float = 4.0) -> np.ndarray:
    """``n`` random Gaussians in a ``extent``-wide cube: params [n, P] float32."""
    return random_params(n, sh_degree, seed=seed, extent=extent)


def make_cameras(params: np.ndarray, n: int = 8, *, width: int = 64, height: int = 48, seed: int = 0):
    return random_cameras(params, n, width=width, height=height, seed=seed)


@pytest.fixture
def small_scene(tmp_path):
    """A 2,000-Gaussian SH-degree-1 scene in blocks of 256 (8 blocks), opened for writing."""
    params = make_params(2000, 1)
    scene = Scene.create(tmp_path / "scene", None, params, 1, make_cameras(params), block_size=256)
    try:
        yield scene, params
    finally:
        scene.close()
