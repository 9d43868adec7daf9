"""Per-Gaussian frustum culling: which rows of a view's candidate blocks a step renders.

Blocks stay the unit of disk I/O and of the host tiers; the device gets only the
Gaussians that can appear in the view. :func:`in_frustum` keeps a Gaussian when the
sphere of radius ``CULL_SIGMAS x`` its largest scale around its mean meets the view's
frustum widened by ``CULL_PIXELS`` pixels on every side (near plane: ``near``). Its
geometry (means, log-scales; 10 of the 11 geometry columns) is all it reads.

Why it is exact (never drops a Gaussian the rasterizer would draw,
:func:`oocstore.gs.render.project`): the rasterizer draws a Gaussian when its centre is
in front of ``near`` and its opacity-aware box ``m +- sqrt(2 ln(255 o) (S + 0.3))``
meets the image, ``S`` a diagonal entry of ``J W R diag(s) (J W R diag(s))^T``. With
``o <= 1`` the half-size is at most ``sqrt(2 ln 255) (|J_row| s_max + sqrt(0.3))``
pixels: 3.33 sigma plus 1.83 px. In homogeneous form the left-edge test ``u + e > 0``
reads ``fx x + cx z + e z > 0``, and ``e z <= 3.33 s_max fx sqrt(1 + t^2) + 1.83 z``
with ``t`` the rasterizer's clamped ``x / z`` (``|t| <= cx / fx + 0.15 W / fx``). Since
``1 + (a + 0.15 W / fx)^2 <= 2.25 (1 + a^2)`` for ``a = cx / fx`` (it holds for principal
points in the middle 60 % of the image and fields of view up to about 150 degrees),
the sigma part is at most 1.5 x the sphere term ``3.33 s_max |(fx, 0, cx)|`` of the
plane test; likewise for the other edges. So ``CULL_SIGMAS = 1.5 x 3.33`` and
``CULL_PIXELS = 3`` (1.83 rounded up, plus one for ``>`` against ``>=`` and rounding)
keep every drawn Gaussian. A camera outside those bounds (a principal point far off
centre, as a crop gives, or a very wide view) gets a wider margin, worked out per view by
:func:`_sigma_scale`. ``tests/gs/test_cull.py`` checks that against the
rasterizer on random cameras with Gaussians crowding the frustum's edges (and that
3.34 sigma with 1.9 px, the bare box, does drop some).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .layout import LOG_SCALES, MEANS

#: Sphere radius in largest scales: 1.5 x sqrt(2 ln 255) (the rasterizer's 3.33-sigma
#: opacity-aware box, with the 1.5 factor for its perspective Jacobian; module docstring).
CULL_SIGMAS = 1.5 * math.sqrt(2.0 * math.log(255.0))
#: Pixels the image is widened by on every side: the 0.3 px dilation's 1.83 px, rounded up,
#: plus one.
CULL_PIXELS = 3.0
#: Geometry columns of a parameter row: means, quats, log-scales, opacity (what culling and
#: projection need; SH colours follow them).
GEOMETRY_WIDTH = 11


def frustum_planes(viewmat, K, width: int, height: int, near: float,
                   pixels: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World-space planes of the view's frustum widened by ``pixels`` on every side:
    (normals [5, 3], offsets [5], lengths [5]), inside ``n . x + d >= 0``; ``lengths`` are
    the camera-space normals' lengths (to turn a distance into the plane's units). Planes:
    near, left, right, top, bottom (no far plane)."""
    vm = np.asarray(viewmat, dtype=np.float64)
    k = np.asarray(K, dtype=np.float64)
    r, t = vm[:3, :3], vm[:3, 3]
    ez = np.array([0.0, 0.0, 1.0])
    normals_c = np.stack([ez, k[0] + pixels * ez, (width + pixels) * ez - k[0],
                          k[1] + pixels * ez, (height + pixels) * ez - k[1]])
    offsets_c = np.array([-near, 0.0, 0.0, 0.0, 0.0])
    lengths = np.linalg.norm(np.stack([ez, k[0], width * ez - k[0], k[1],
                                       height * ez - k[1]]), axis=1)
    return normals_c @ r, normals_c @ t + offsets_c, lengths * _sigma_scale(k, width, height)


def _sigma_scale(k: np.ndarray, width: int, height: int) -> float:
    """How much more than :data:`CULL_SIGMAS` this camera needs (at least 1). The margin
    of an edge plane must cover ``3.33 sqrt(1 + t^2)`` largest scales, ``t`` within the
    rasterizer's clamp of ``x / z`` (or ``y / z``), against the plane's
    ``sqrt(1 + a^2)`` (``a``: the edge's distance from the principal point over the
    focal length). ``CULL_SIGMAS`` covers that ratio up to 1.5, which holds for principal
    points near the middle and moderate fields of view; a principal point far off centre
    (a crop) or a very wide view needs more, worked out here per camera."""
    need = 1.0
    for f, c, size in ((k[0, 0], k[0, 2], width), (k[1, 1], k[1, 2], height)):
        lim_neg, lim_pos = c / f + 0.15 * size / f, (size - c) / f + 0.15 * size / f
        t = max(abs(lim_neg), abs(lim_pos))
        for a in (c / f, (size - c) / f):
            need = max(need, math.sqrt(1 + t * t) / math.sqrt(1 + a * a))
    return max(1.0, need / 1.5)


def in_frustum(params: torch.Tensor,  # [N, >= 11] parameter rows (geometry first)
               viewmat, K, width: int, height: int, near: float = 0.01) -> torch.Tensor:
    """[N] bool: the rows that may appear in the view (a superset of the rasterizer's
    ``radii > 0``; see the module docstring)."""
    n, d, lengths = frustum_planes(viewmat, K, width, height, near, CULL_PIXELS)
    dev = params.device
    means = params[:, MEANS].to(torch.float64)
    radius = CULL_SIGMAS * torch.exp(params[:, LOG_SCALES].to(torch.float64).amax(dim=1))
    normals = torch.as_tensor(n, dtype=torch.float64, device=dev)  # [5, 3]
    offsets = torch.as_tensor(d, dtype=torch.float64, device=dev)
    reach = torch.as_tensor(lengths, dtype=torch.float64, device=dev)
    dist = means @ normals.T + offsets  # [N, 5], in each plane's units
    return torch.all(dist + radius[:, None] * reach >= 0, dim=1)


def culled_counts(scene, cameras, vis_sets, views, *, near: float = 0.01,
                  block_fn=None, cuts: dict | None = None) -> np.ndarray:
    """Per view of ``views`` [V]: how many Gaussians of its visible blocks pass
    :func:`in_frustum` with the scene as stored now ([V] int64). Reads each block once;
    ``block_fn(b, rec) -> rec``, when given, transforms a block's records first (a
    change about to be written, such as the synthetic student). ``cuts`` ({view: sorted
    ids}): count only the rows of each view's level-of-detail cut."""
    views = np.asarray(views, dtype=np.int64)
    out = np.zeros(len(views), dtype=np.int64)
    seen_by: dict[int, list[int]] = {}
    for i, v in enumerate(views):
        for b in vis_sets[v]:
            seen_by.setdefault(int(b), []).append(i)
    planes = {}
    for v in np.unique(views):
        v = int(v)
        n, d, lengths = frustum_planes(cameras.viewmats[v], cameras.Ks[v], cameras.width,
                                       cameras.height, near, CULL_PIXELS)
        planes[v] = (n, d, lengths)
    for b in sorted(seen_by):
        ids, rec = scene.read_block(b)
        if block_fn is not None:
            rec = block_fn(b, rec)
        if not len(rec):
            continue
        # every view seeing the block at once: the same arithmetic as in_frustum (float64)
        who = seen_by[b]
        vs = [int(views[i]) for i in who]
        normals = np.concatenate([planes[v][0] for v in vs])  # [5 Vb, 3]
        offsets = np.concatenate([planes[v][1] for v in vs])
        reach = np.concatenate([planes[v][2] for v in vs])
        means = rec[:, MEANS].astype(np.float64)
        radius = CULL_SIGMAS * np.exp(rec[:, LOG_SCALES].astype(np.float64).max(axis=1))
        ok = (means @ normals.T + offsets + radius[:, None] * reach) >= 0  # [n, 5 Vb]
        inside = ok.reshape(len(rec), len(vs), 5).all(axis=2)  # [n, Vb]
        if cuts is not None:
            from .lod import in_cut

            inside &= np.stack([in_cut(ids, cuts[v]) for v in vs], axis=1)
        kept = inside.sum(axis=0)
        np.add.at(out, np.asarray(who), kept)
    return out
