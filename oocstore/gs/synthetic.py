"""Random Gaussian scenes for tests, the crash harness and benchmarks (deterministic for a
seed): no input file needed, any size and SH degree."""

from __future__ import annotations

import os

import numpy as np

from . import layout
from .cameras import orbit_cameras


def random_params(n: int, sh_degree: int = 1, *, seed: int = 0,
                  extent: float = 4.0) -> np.ndarray:
    """``n`` random Gaussians in an ``extent``-wide cube: params float32 [n, P], scales
    e^-5..e^-3, every other parameter standard normal."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, layout.param_width(sh_degree))).astype(np.float32)
    p[:, layout.MEANS] = rng.uniform(-extent / 2, extent / 2, size=(n, 3))
    p[:, layout.LOG_SCALES] = rng.uniform(-5, -3, size=(n, 3))
    return p


def random_cameras(params: np.ndarray, n: int = 8, *, width: int = 64, height: int = 48,
                   seed: int = 0):
    """``n`` orbit cameras around ``params``' means."""
    return orbit_cameras(params[:, layout.MEANS], n, width=width, height=height, seed=seed)


def random_scene(path: str | os.PathLike, n: int, sh_degree: int = 1, *, block_size: int = 256,
                 views: int = 8, seed: int = 0, moments: str = "float32",
                 overwrite: bool = False):
    """Create a scene of ``n`` random Gaussians at ``path``; returns it open for writing."""
    from .scene import Scene

    params = random_params(n, sh_degree, seed=seed)
    return Scene.create(path, None, params, sh_degree, random_cameras(params, views, seed=seed),
                        block_size=block_size, moments=moments, overwrite=overwrite,
                        source={"kind": "random", "seed": seed})
