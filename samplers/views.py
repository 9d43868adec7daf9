"""Offline view sampling for Gaussian-splatting scenes: what each view sees, in which
order to visit the views, and the block load/evict schedule that order implies.

- :func:`visible_blocks`: frustum culling of block bounding boxes. Each of the five
  frustum planes (near, left, right, top, bottom; no far plane) is turned into world
  coordinates and a box is culled only when its corner farthest along the plane's
  inward normal is still outside. That test is *conservative*: it never culls a box
  that meets the frustum (it may keep a few that do not, near the frustum's edges).
  Together with block bounds padded by 3x the largest scale, a block holding a
  Gaussian that projects into the image is always reported visible.
- :func:`view_order`: a tour through the views that keeps consecutive visibility sets
  similar (Jaccard distance): greedy nearest neighbour from a seeded start, improved by
  2-opt (an open path: a zero-distance dummy node closes it into a cycle). ``randomness``
  in [0, 1] cuts that tour at each edge with that probability and shuffles the pieces,
  so about that fraction of transitions are random jumps (0: fully local, 1: a random
  permutation), since fully local orders cost a little quality.
  :func:`epoch_orders` draws a new such tour every epoch (deterministic by seed).
- :func:`belady_block_schedule`: the order makes the future known, so the working set
  follows Belady's rule: load what the step needs, and when the budget is short, evict
  the resident blocks (not needed now) whose next use is farthest away. With equal
  block sizes this makes the fewest loads possible (the tests compare with brute force
  on small cases); with unequal sizes it is a good heuristic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from oocstore.errors import BudgetError, UsageError
from oocstore.units import format_size


# -- visibility ---------------------------------------------------------------------------

def _frustum_planes(viewmat: np.ndarray, K: np.ndarray, width: int, height: int,
                    near: float) -> tuple[np.ndarray, np.ndarray]:
    """World-space planes (normals [5, 3], offsets [5]); inside: n . x + d >= 0."""
    vm = np.asarray(viewmat, dtype=np.float64)
    k = np.asarray(K, dtype=np.float64)
    r, t = vm[:3, :3], vm[:3, 3]
    ez = np.array([0.0, 0.0, 1.0])
    normals_c = np.stack([ez, k[0], width * ez - k[0], k[1], height * ez - k[1]])
    offsets_c = np.array([-near, 0.0, 0.0, 0.0, 0.0])
    normals_w = normals_c @ r  # (R^T n)^T for each row
    offsets_w = normals_c @ t + offsets_c
    return normals_w, offsets_w


def visible_blocks(bounds: np.ndarray, viewmat: np.ndarray, K: np.ndarray, width: int,
                   height: int, near: float = 0.01) -> np.ndarray:
    """Indices (int64, ascending) of the blocks whose box ``bounds`` [B, 2, 3] (min, max)
    may appear in the view; empty boxes (min > max) are never visible."""
    bounds = np.asarray(bounds, dtype=np.float64)
    if bounds.ndim != 3 or bounds.shape[1:] != (2, 3):
        raise UsageError(f"block bounds have shape {bounds.shape}, expected [B, 2, 3]")
    lo, hi = bounds[:, 0], bounds[:, 1]
    keep = np.all(lo <= hi, axis=1)
    normals, offsets = _frustum_planes(viewmat, K, width, height, near)
    for n, d in zip(normals, offsets):
        far_corner = np.where(n >= 0, hi, lo)  # the corner farthest inside this plane
        # An axis the plane does not depend on adds nothing, even where the box is
        # infinite along it (inf * 0 would be NaN); the other infinite terms of one box
        # all have the same sign, so an unbounded box stays visible, an empty one not.
        far_corner = np.where(n == 0, 0.0, far_corner)
        keep &= far_corner @ n + d >= 0
    return np.flatnonzero(keep).astype(np.int64)


def visibility_sets(scene_or_bounds, cameras, *, near: float = 0.01) -> list[np.ndarray]:
    """Visible blocks of every camera: a :class:`~oocstore.gs.scene.Scene` (or bounds
    [B, 2, 3]) against ``cameras`` (anything with ``viewmats``, ``Ks``, ``width``,
    ``height``; defaults to the scene's own cameras when None)."""
    if hasattr(scene_or_bounds, "block_bounds"):
        bounds = scene_or_bounds.block_bounds
        if cameras is None:
            cameras = scene_or_bounds.cameras
    else:
        bounds = scene_or_bounds
    return [visible_blocks(bounds, cameras.viewmats[v], cameras.Ks[v], cameras.width,
                           cameras.height, near) for v in range(len(cameras.viewmats))]


# -- view order ---------------------------------------------------------------------------

def jaccard_distances(vis_sets: Sequence[np.ndarray]) -> np.ndarray:
    """[V, V] float64: 1 - |A & B| / |A | B| (0 between two empty sets)."""
    from scipy import sparse

    v = len(vis_sets)
    if v == 0:
        return np.zeros((0, 0))
    nb = 1 + max((int(s.max()) for s in vis_sets if len(s)), default=0)
    rows = np.concatenate([np.full(len(s), i) for i, s in enumerate(vis_sets)])
    cols = np.concatenate([np.asarray(s, dtype=np.int64) for s in vis_sets])
    a = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(v, nb))
    inter = (a @ a.T).toarray()
    size = np.array([len(s) for s in vis_sets], dtype=np.float64)
    union = size[:, None] + size[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(union > 0, inter / union, 1.0)
    return 1.0 - sim


def mean_consecutive_jaccard(order: Sequence[int], vis_sets: Sequence[np.ndarray]) -> float:
    """Mean Jaccard similarity of consecutive views' visibility sets along ``order``."""
    order = np.asarray(order)
    if len(order) < 2:
        return 1.0
    sims = []
    for a, b in zip(order[:-1], order[1:]):
        sa, sb = vis_sets[a], vis_sets[b]
        union = len(np.union1d(sa, sb))
        sims.append(len(np.intersect1d(sa, sb)) / union if union else 1.0)
    return float(np.mean(sims))


def _greedy(dist: np.ndarray, start: int) -> np.ndarray:
    v = len(dist)
    seen = np.zeros(v, dtype=bool)
    order = np.empty(v, dtype=np.int64)
    cur = start
    for i in range(v):
        order[i] = cur
        seen[cur] = True
        if i + 1 < v:
            d = np.where(seen, np.inf, dist[cur])
            cur = int(np.argmin(d))
    return order


def _two_opt_path(dist: np.ndarray, order: np.ndarray, max_passes: int) -> np.ndarray:
    """Improve an open path by 2-opt moves (best move per position, first-improvement
    over positions), treating it as a cycle through a zero-distance dummy node."""
    v = len(order)
    if v < 4:
        return order
    d = np.zeros((v + 1, v + 1))
    d[:v, :v] = dist
    tour = np.append(order, v)  # dummy last
    m = len(tour)
    for _ in range(max_passes):
        improved = False
        for i in range(m - 2):
            a, b = tour[i], tour[i + 1]
            j = np.arange(i + 2, m if i > 0 else m - 1)
            if len(j) == 0:
                continue
            c, dd = tour[j], tour[(j + 1) % m]
            delta = d[a, c] + d[b, dd] - d[a, b] - d[c, dd]
            k = int(np.argmin(delta))
            if delta[k] < -1e-12:
                jj = int(j[k])
                tour[i + 1:jj + 1] = tour[i + 1:jj + 1][::-1].copy()
                improved = True
        if not improved:
            break
    cut = int(np.flatnonzero(tour == v)[0])
    return np.concatenate([tour[cut + 1:], tour[:cut]]).astype(np.int64)


def view_order(vis_sets: Sequence[np.ndarray], seed=0, randomness: float = 0.1, *,
               max_passes: int = 20, dist: np.ndarray | None = None) -> np.ndarray:
    """A permutation of the views (int64) keeping consecutive visibility sets similar;
    see the module docstring for ``randomness``. Deterministic for a seed (an int or a
    sequence of ints, as ``numpy.random.default_rng`` takes). ``dist``: the views'
    :func:`jaccard_distances`, when the caller has them already."""
    if not (isinstance(randomness, (int, float)) and 0.0 <= randomness <= 1.0):
        raise UsageError(f"randomness {randomness!r} must lie in [0, 1] (0: fully local order, "
                         "1: random order)")
    v = len(vis_sets)
    rng = np.random.default_rng(seed)
    if v <= 1:
        return np.arange(v, dtype=np.int64)
    if randomness >= 1.0:
        return rng.permutation(v).astype(np.int64)
    dist = jaccard_distances(vis_sets) if dist is None else dist
    order = _greedy(dist, int(rng.integers(v)))
    order = _two_opt_path(dist, order, max_passes)
    if randomness > 0:
        cuts = np.flatnonzero(rng.random(v - 1) < randomness) + 1
        pieces = np.split(order, cuts)
        order = np.concatenate([pieces[i] for i in rng.permutation(len(pieces))])
    return order


def epoch_orders(vis_sets: Sequence[np.ndarray], steps: int, seed: int = 0,
                 randomness: float = 0.1) -> np.ndarray:
    """``steps`` views (int64 indices into ``vis_sets``): a new :func:`view_order` every
    epoch -- the same locality, a different tour (another start, other cuts) -- so a
    long run does not repeat one order's random jumps and hard transitions. Epoch 0 uses
    ``seed``, epoch ``e`` the seed ``(seed, e)``: deterministic for a seed."""
    v = len(vis_sets)
    if steps <= 0 or v == 0:
        return np.zeros(0, dtype=np.int64)
    dist = jaccard_distances(vis_sets) if 1.0 > randomness and v > 1 else None
    parts, have, epoch = [], 0, 0
    while have < steps:
        order = view_order(vis_sets, seed if epoch == 0 else (seed, epoch), randomness, dist=dist)
        parts.append(order)
        have += len(order)
        epoch += 1
    return np.concatenate(parts)[:steps]


# -- schedule -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ScheduleStep:
    view: int
    load: np.ndarray  # blocks to bring into the working set before the step (int64)
    evict: np.ndarray  # blocks to drop first, to make room (int64)
    resident_bytes: int  # working-set bytes during the step


@dataclass(frozen=True)
class BlockSchedule:
    steps: list[ScheduleStep]
    budget_bytes: int
    peak_bytes: int
    loads: int
    bytes_loaded: int
    min_bytes: int = 0  # the largest single view's visible bytes (the least budget that works)
    views: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.steps)


def belady_block_schedule(order: Sequence[int], vis_sets: Sequence[np.ndarray], block_bytes,
                          budget_bytes: int) -> BlockSchedule:
    """Per step of ``order``: the blocks to evict, then load, so that the view's visible
    blocks are resident and resident bytes never exceed ``budget_bytes``.

    ``block_bytes``: bytes of one block (an int) or of each block (an array [B]).
    Raises :class:`BudgetError` naming the view and the minimum when one view's visible
    blocks alone exceed the budget.
    """
    order = np.asarray(order, dtype=np.int64)
    nviews = len(vis_sets)
    if len(order) and (order.min() < 0 or order.max() >= nviews):
        raise UsageError(f"view order names views outside 0..{nviews - 1}")
    nb = 1 + max((int(np.max(s)) for s in vis_sets if len(s)), default=-1)
    if np.ndim(block_bytes) == 0:
        sizes = np.full(nb, int(block_bytes), dtype=np.int64)
    else:
        sizes = np.asarray(block_bytes, dtype=np.int64)
        if len(sizes) < nb:
            raise UsageError(f"block_bytes lists {len(sizes)} blocks but the views see block "
                             f"{nb - 1}")
    need_bytes = np.array([int(sizes[np.asarray(s, dtype=np.int64)].sum()) for s in vis_sets],
                          dtype=np.int64)
    min_bytes = int(need_bytes[order].max()) if len(order) else 0
    if len(order) and min_bytes > budget_bytes:
        worst = int(order[np.argmax(need_bytes[order])])
        raise BudgetError(
            f"view {worst} alone sees {len(vis_sets[worst])} blocks = {format_size(min_bytes)}, "
            f"more than the device budget {format_size(budget_bytes)}: raise the budget to at "
            f"least {format_size(min_bytes)} ({min_bytes} bytes), or use smaller blocks")
    # next_use[s] for every block: positions of its uses, consumed as the steps go by
    uses: dict[int, list[int]] = {}
    for s, v in enumerate(order):
        for b in vis_sets[v]:
            uses.setdefault(int(b), []).append(s)
    ptr = {b: 0 for b in uses}
    inf = len(order) + 1
    resident: set[int] = set()
    used = 0
    steps, peak, loads, loaded = [], 0, 0, 0
    for s, v in enumerate(order):
        need = {int(b) for b in vis_sets[v]}
        missing = sorted(need - resident)
        extra = int(sizes[missing].sum()) if missing else 0
        evict: list[int] = []
        if used + extra > budget_bytes:
            cand = [b for b in resident if b not in need]

            def next_use(b: int) -> int:
                u, p = uses[b], ptr[b]
                return u[p] if p < len(u) else inf

            cand.sort(key=lambda b: (-next_use(b), b))
            for b in cand:
                if used + extra <= budget_bytes:
                    break
                evict.append(b)
                resident.discard(b)
                used -= int(sizes[b])
        resident.update(missing)
        used += extra
        for b in need:  # this use is consumed
            ptr[b] += 1
        peak = max(peak, used)
        loads += len(missing)
        loaded += extra
        steps.append(ScheduleStep(int(v), np.array(missing, dtype=np.int64),
                                  np.array(sorted(evict), dtype=np.int64), used))
    return BlockSchedule(steps, int(budget_bytes), peak, loads, loaded, min_bytes, order)


# -- level of detail ------------------------------------------------------------------------

def camera_centre(viewmat: np.ndarray) -> np.ndarray:
    """World position of a world-to-camera matrix's camera (float64 [3])."""
    vm = np.asarray(viewmat, dtype=np.float64)
    return -vm[:3, :3].T @ vm[:3, 3]


def lod_expanded(centers: np.ndarray, radius: np.ndarray, size: np.ndarray, is_leaf: np.ndarray,
                 cam: np.ndarray, fx: float, lod_pixels: float, near: float = 0.01) -> np.ndarray:
    """[N] bool: interior nodes whose ``size`` projects to at least ``lod_pixels`` pixels
    at their bounding sphere's nearest distance to the camera at ``cam`` (focal length
    ``fx`` pixels); see :mod:`oocstore.gs.lod`. ``lod_pixels`` 0 expands every one."""
    d = np.linalg.norm(np.asarray(centers, dtype=np.float64) - cam, axis=1) - radius
    return ~is_leaf & (fx * size >= lod_pixels * np.maximum(d, near))


def lod_cut(hier, viewmat: np.ndarray, K: np.ndarray, lod_pixels: float, *,
            near: float = 0.01, is_leaf: np.ndarray | None = None) -> np.ndarray:
    """[N] bool over ``hier``'s nodes (:class:`oocstore.gs.lod.Hierarchy`): the view's
    cut, every node whose parent is expanded (or that is a root) and that is not
    expanded itself. One node of every root-to-leaf path (spheres nest, sizes grow
    towards the root)."""
    leaf = hier.is_leaf if is_leaf is None else is_leaf
    fx = float(max(K[0][0], K[1][1]))
    exp = lod_expanded(hier.centers, hier.radius, hier.size, leaf, camera_centre(viewmat), fx,
                       lod_pixels, near)
    par = hier.parent
    parent_exp = np.ones(len(par), dtype=bool)
    has = par >= 0
    parent_exp[has] = exp[par[has]]
    return parent_exp & ~exp


@dataclass(frozen=True)
class LodView:
    """One view's cut in the store: the ``ids`` of its nodes in ``blocks`` (sorted),
    the ``blocks`` (int64) that hold them among the view's visible blocks, and per block
    the ``prefix`` rows that hold them."""

    ids: np.ndarray
    blocks: np.ndarray
    prefix: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.prefix.sum())


def lod_working_set(hier, cut: np.ndarray, vis: np.ndarray) -> LodView:
    """The blocks of ``vis`` (a view's visible blocks) holding nodes of ``cut`` ([N]
    bool), the prefix of each that holds them, and those nodes' ids."""
    vis = np.asarray(vis, dtype=np.int64)
    nb = int(max(hier.block.max(initial=-1), vis.max(initial=-1))) + 1
    seen = np.zeros(nb, dtype=bool)
    seen[vis] = True
    sel = cut & seen[hier.block]
    prefix = np.zeros(nb, dtype=np.int64)
    np.maximum.at(prefix, hier.block[sel], hier.row[sel] + 1)
    blocks = np.flatnonzero(prefix).astype(np.int64)
    return LodView(np.sort(hier.ids[sel]), blocks, prefix[blocks])


def lod_views(hier, cameras, vis_sets: Sequence[np.ndarray], views, lod_pixels: float, *,
              near: float = 0.01) -> dict:
    """{view: :class:`LodView`} for ``views`` (cameras at the render size: the cut
    depends on the focal length in pixels)."""
    leaf = hier.is_leaf
    out = {}
    for v in np.unique(np.asarray(views, dtype=np.int64)):
        v = int(v)
        cut = lod_cut(hier, cameras.viewmats[v], cameras.Ks[v], lod_pixels, near=near,
                      is_leaf=leaf)
        out[v] = lod_working_set(hier, cut, vis_sets[v])
    return out
