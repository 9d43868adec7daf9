"""Random Gaussian scenes for tests, the crash harness and benchmarks (deterministic for a
seed): no input file needed, any size and SH degree; and a streamed training segment
that needs no cameras or renderer (:func:`synthetic_streamer`, :func:`synthetic_step`)."""

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


def synthetic_streamer(scene, *, steps: int = 12, window: int = 4, stride: int = 3,
                       cpu_slots: int = 2):
    """A :class:`~oocstore.gs.stream.Streamer` over a plan without cameras: view ``v``
    sees blocks ``v .. v + window - 1`` (mod the block count) and step ``s`` shows view
    ``s * stride``, so blocks keep leaving and re-entering the device. The device holds
    the view's blocks and one more, the CPU tier ``cpu_slots`` blocks: dirty blocks are
    written back to the scene before any checkpoint. Drive it with
    :func:`synthetic_step`; the result is the same byte for byte on every run."""
    from ..budget import BudgetAccountant, MemoryBudget
    from .adam import AdamConfig
    from .stream import Streamer, TrainPlan, block_bytes, step_batch_bytes
    from samplers.views import belady_block_schedule

    nb = scene.num_blocks
    vis = [np.arange(v, v + window) % nb for v in range(nb)]
    views = (np.arange(steps) * stride) % nb
    bb = block_bytes(scene)
    counts = scene.block_counts
    batch = max(step_batch_bytes(int(counts[vis[v]].sum()), scene) for v in views)
    device = (window + 1) * bb + batch
    plan = TrainPlan(views, vis, belady_block_schedule(views, vis, bb, device - batch))
    loads = max(len(st.load) for st in plan.schedule.steps)
    cpu = (3 * loads + 2 + cpu_slots) * bb  # prefetch (depth 2), 2 write-backs, the tier
    adam = AdamConfig()
    return Streamer(scene, plan, device="cpu", device_budget=device, adam=adam,
                    accountant=BudgetAccountant(MemoryBudget(gpu=device, cpu=cpu)),
                    lr=adam.column_lrs(scene.sh_degree, 3.0))


def synthetic_step(store) -> None:
    """One step of ``store`` (any training mode) with a fixed function of the parameters
    as the gradient instead of a rendering loss; every row takes the Adam step."""
    import torch

    b = store.begin_step()
    b.params.grad = torch.sin(3 * b.params.detach() + b.ids[:, None].float())
    store.end_step(b, torch.ones(len(b.ids), dtype=torch.bool))
