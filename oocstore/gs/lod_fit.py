"""Fitting the merged nodes of a level-of-detail hierarchy to their leaves.

The merge rules of :mod:`oocstore.gs.lod` (moment matching, coverage-keeping opacity,
coverage-weighted colour) set each interior node from its children alone; how the node
*looks* where a cut selects it (blended with its neighbours, behind or in front of
other nodes, at a fraction of a pixel to a few pixels) is not part of the rule, so a
cut matches the leaves' render only to 35-45 dB on aerial views. The fit closes that
part of the gap the way Hierarchical 3DGS optimises its hierarchy: for each training
view, the leaves-only render is the target (computed once per view), the view's cut is
rendered with the interior nodes' opacity, colour (SH DC) and scales as variables, and a masked Adam step (only the interior nodes of that cut step; leaves
never change) lowers the mean squared error. Views are visited in a seeded random order,
one per step; several thresholds may be fitted in turn (each step's cut uses the next).

It runs on the hierarchy in memory, before ``gs-lod build`` writes the scene (so the
scene is written once, through its ordinary commit: an interrupted fit leaves no
output, and the source is only read). The cameras are rendered at gs-train's CPU size
(:data:`oocstore.gs.train.CPU_MAX_SIZE`; the cut depends on the focal length in
pixels), and the held-out views of a synthetic run (every 8th from view 0) or the
scene's test views are not fitted.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..errors import UsageError
from . import layout
from .lod import DEFAULT_LOD_PIXELS, check_lod_pixels

DEFAULT_FIT_STEPS = 200


def check_fit_steps(value, param: str = "fit_steps") -> int:
    """``value`` as an integer >= 0 (0: no fit), or a UsageError naming ``param`` (the
    command line writes its flag in)."""
    text = str(value).strip()
    try:
        v = int(text)
    except (TypeError, ValueError):
        v = None
    if v is None or isinstance(value, bool) or (isinstance(value, float) and value != v):
        raise UsageError(f"{param}={value!r} is not a whole number: pass how many steps fit "
                         f"the merged nodes to their leaves (e.g. {DEFAULT_FIT_STEPS}; 0: no fit)")
    if v < 0:
        raise UsageError(f"{param}={value!r} must be >= 0 (e.g. {DEFAULT_FIT_STEPS}; 0: no fit)")
    return v


def fit_config(steps=None, pixels=None) -> "FitConfig":
    """The fit of ``gs-lod build --fit-steps STEPS --fit-pixels PX[,PX]`` (None: the
    defaults), every value checked (a UsageError naming the flag)."""
    n = DEFAULT_FIT_STEPS if steps is None else check_fit_steps(steps)
    if pixels is None:
        return FitConfig(steps=n)
    pxs = []
    for part in str(pixels).split(","):
        px = check_lod_pixels(part.strip(), "fit_pixels")
        if px <= 0:
            raise UsageError(f"fit_pixels={pixels!r}: every threshold must be > 0 (0 is the "
                             f"leaves: nothing to fit; e.g. {DEFAULT_LOD_PIXELS:g})")
        pxs.append(px)
    return FitConfig(steps=n, lod_pixels=tuple(pxs))


@dataclass(frozen=True)
class FitConfig:
    """The fit's settings: ``steps`` (one view each), the thresholds whose cuts are
    fitted (in turn), Adam's learning rates per group (``scales`` 0: scales kept) and
    the view order's seed."""

    steps: int = DEFAULT_FIT_STEPS
    lod_pixels: tuple = (DEFAULT_LOD_PIXELS,)
    opacity_lr: float = 0.05
    color_lr: float = 0.02
    scales_lr: float = 0.005
    seed: int = 0

    def __post_init__(self) -> None:
        check_fit_steps(self.steps, "steps")
        if not self.lod_pixels:
            raise UsageError("lod_pixels is empty: the fit needs at least one threshold")
        for px in self.lod_pixels:
            if check_lod_pixels(px, "lod_pixels") <= 0:
                raise UsageError(f"lod_pixels={px!r} must be > 0 (0 is the leaves: nothing "
                                 "to fit)")
        for k in ("opacity_lr", "color_lr", "scales_lr"):
            if not getattr(self, k) >= 0:
                raise UsageError(f"fit learning rate {k}={getattr(self, k)!r} must be >= 0")

    def columns(self) -> list[tuple[int, float]]:
        """(parameter column, learning rate) of every fitted column."""
        cols = [(layout.OPACITY.start, self.opacity_lr)]
        cols += [(layout.SH_START + c, self.color_lr) for c in range(3)]
        if self.scales_lr > 0:
            cols += [(c, self.scales_lr) for c in range(layout.LOG_SCALES.start,
                                                         layout.LOG_SCALES.stop)]
        return cols


def fit_cameras(cams):
    """The cameras at gs-train's CPU render size (the size the cut is fitted at)."""
    from .train import CPU_MAX_SIZE

    w, h = cams.width, cams.height
    f = min(1.0, CPU_MAX_SIZE[0] / w, CPU_MAX_SIZE[1] / h)
    size = (max(1, int(w * f)), max(1, int(h * f)))
    return cams if size == (w, h) else cams.resized(*size)


def fit_views(n: int, test_views=None) -> np.ndarray:
    """The views fitted: all but ``test_views`` (default: gs-train's synthetic held-out
    views, every 8th from view 0)."""
    from .train import GsTrainConfig, split_views

    if test_views is None:
        return split_views(n, GsTrainConfig().holdout)[0] if n >= 2 else np.arange(n)
    return np.setdiff1d(np.arange(n, dtype=np.int64), np.asarray(test_views, dtype=np.int64))


def _render(params: np.ndarray | object, sh_degree: int, cams, v: int):
    import torch

    from .render import render_on

    p = params if isinstance(params, torch.Tensor) else torch.from_numpy(params)
    return render_on(p, sh_degree, torch.from_numpy(cams.viewmats[v]),
                     torch.from_numpy(cams.Ks[v]), cams.width, cams.height).image


def cut_rows(hier, cams, v: int, lod_pixels: float) -> np.ndarray:
    """Indices into ``hier``'s nodes of view ``v``'s cut (every node, no block test: the
    rasterizer drops what the view does not see)."""
    from oocstore.samplers.views import lod_cut

    leaf = hier.is_leaf
    if lod_pixels == 0:
        return np.flatnonzero(leaf)
    return np.flatnonzero(lod_cut(hier, cams.viewmats[v], cams.Ks[v], lod_pixels,
                                  is_leaf=leaf))


def cut_psnr(params: np.ndarray, hier, sh_degree: int, cams, views, lod_pixels: float,
             targets: dict | None = None) -> dict:
    """{view: PSNR of its cut's render against its leaves' render} (dB)."""
    import torch

    from .losses import psnr

    out = {}
    with torch.no_grad():
        for v in views:
            v = int(v)
            ref = (targets or {}).get(v)
            if ref is None:
                ref = _render(params[cut_rows(hier, cams, v, 0.0)], sh_degree, cams, v)
            img = _render(params[cut_rows(hier, cams, v, lod_pixels)], sh_degree, cams, v)
            out[v] = float(psnr(img.clamp(0, 1), ref.clamp(0, 1)))
    return out


def _visits(views: np.ndarray, cfg: FitConfig) -> Iterator[tuple[int, float]]:
    """``(view, threshold)`` of each of ``cfg.steps`` steps: rounds of the views in a seeded
    random order, each round at the next of ``cfg.lod_pixels`` (drawn a round at a time:
    no array of ``steps`` entries)."""
    g = np.random.default_rng(cfg.seed)
    for t in range(0, cfg.steps, len(views)):
        px = float(cfg.lod_pixels[(t // len(views)) % len(cfg.lod_pixels)])
        for v in g.permutation(views)[:cfg.steps - t]:
            yield int(v), px


def fit_interior(params: np.ndarray, hier, sh_degree: int, cams, views, cfg: FitConfig, *,
                 progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, dict]:
    """``params`` [N, P] (every node of ``hier``, a :class:`~oocstore.gs.lod.Hierarchy`
    in the same order) with the interior nodes' fitted columns optimised so that each
    of ``views``' cuts renders like its leaves (module docstring); ``params`` itself is
    not changed. Returns ``(fitted params, report)``: the loss at the first and last
    visit of every view, steps and seconds."""
    import torch

    t0 = time.perf_counter()
    views = np.asarray(views, dtype=np.int64)
    out = np.array(params, dtype=np.float32, copy=True)
    report = {"steps": cfg.steps, "views": len(views),
              "lod_pixels": [float(p) for p in cfg.lod_pixels]}
    if cfg.steps == 0 or not len(views) or bool(hier.is_leaf.all()):
        report.update(seconds=0.0, fitted_nodes=0)
        return out, report
    # targets and cuts of the (view, threshold) pairs visited only (fewer steps than views:
    # not all of them); the first len(lod_pixels) rounds of views visit every pair
    visits = list(dict.fromkeys(itertools.islice(_visits(views, cfg),
                                                 len(views) * len(cfg.lod_pixels))))
    with torch.no_grad():
        targets = {v: _render(out[cut_rows(hier, cams, v, 0.0)], sh_degree, cams, v)
                   for v in dict.fromkeys(v for v, _ in visits)}
    interior = ~hier.is_leaf
    cols = cfg.columns()
    col_idx = torch.tensor([c for c, _ in cols])
    lr = torch.tensor([r for _, r in cols], dtype=torch.float32)
    # the interior nodes any visited cut holds; the cuts are not kept (one can hold most
    # of a large scene's nodes): each step finds its own again, far cheaper than its render
    fitted = np.zeros(len(out), dtype=bool)
    for key in visits:
        rows = cut_rows(hier, cams, *key)
        fitted[rows[interior[rows]]] = True
    fit_rows = np.flatnonzero(fitted)
    slot = np.full(len(out), -1, dtype=np.int64)
    slot[fit_rows] = np.arange(len(fit_rows))
    theta = torch.from_numpy(out[fit_rows][:, col_idx.numpy()].copy())
    m, s = torch.zeros_like(theta), torch.zeros_like(theta)
    b1, b2, eps = 0.9, 0.999, 1e-15
    first: dict = {}
    last: dict = {}
    for t, (v, px) in enumerate(_visits(views, cfg), 1):
        rows = cut_rows(hier, cams, v, px)
        pos = np.flatnonzero(interior[rows])
        sl = torch.from_numpy(slot[rows[pos]])
        var = theta[sl].clone().requires_grad_(True)
        p = torch.from_numpy(out[rows])
        p[torch.from_numpy(pos)[:, None], col_idx[None, :]] = var
        loss = torch.mean((_render(p, sh_degree, cams, v) - targets[v]) ** 2)
        loss.backward()
        with torch.no_grad():  # masked Adam: only this cut's interior rows step
            gr = var.grad
            m[sl] = b1 * m[sl] + (1 - b1) * gr
            s[sl] = b2 * s[sl] + (1 - b2) * gr * gr
            mh = m[sl] / (1 - b1 ** t)
            sh = s[sl] / (1 - b2 ** t)
            theta[sl] = theta[sl] - lr * mh / (sh.sqrt() + eps)
        key = (v, px)
        first.setdefault(key, float(loss.detach()))
        last[key] = float(loss.detach())
        if progress:
            progress(1)
    out[np.ix_(fit_rows, col_idx.numpy())] = theta.numpy()
    op = layout.OPACITY.start
    lo, hi = math.log(1e-4 / (1 - 1e-4)), math.log(0.9999 / (1 - 0.9999))
    out[fit_rows, op] = np.clip(out[fit_rows, op], lo, hi)
    report.update(fitted_nodes=int(len(fit_rows)), seconds=time.perf_counter() - t0,
                  mse_first=float(np.mean(list(first.values()))),
                  mse_last=float(np.mean(list(last.values()))))
    return out, report
