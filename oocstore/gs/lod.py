"""Level of detail: a hierarchy of merged Gaussians in the scene store, and its layout.

**The hierarchy.** The scene's Gaussians are the *leaves*. Interior nodes are built
bottom-up over spatial cells: at level ``k`` the current nodes (leaves, and interior
nodes of lower levels not yet merged) are grouped by the cube of side ``cell * 2**k``
that holds their centre; every cube with two or more nodes becomes one new node, their
parent, and a cube with one node passes it up unchanged. The cell doubles until one
node is left (the root) or :data:`MAX_LEVELS` is reached (then several roots remain).
A parent is a *merged Gaussian*, as in Hierarchical 3DGS: weights ``w = opacity x
area`` (area: pi times the product of the two largest scales), the mean and covariance
moment-matched (``mu = sum w mu_i / sum w``, ``Sigma = sum w (Sigma_i + d_i d_i^T) /
sum w``), scales and rotation from the covariance's eigen-decomposition, SH
coefficients weighted by ``w``, and the opacity that keeps the covered area ``sum
opacity_i area_i / area`` (clamped to 0.005..0.99), with the areas as the rasterizer
draws them where the node is first used (its size 1 px: the 0.3 px dilation included,
:func:`merge_groups`). ``gs-lod build`` then fits the merged nodes' opacity, colour
and scales to renders of their leaves (:mod:`oocstore.gs.lod_fit`).

**The cut.** Every node has a bounding sphere (centre = its mean; leaves: radius = the
largest scale; a parent: the smallest radius around its mean holding its children's
spheres, so spheres nest) and a *size* ``S``: a leaf's is its 1-sigma diameter, twice
its largest scale; a parent's is the larger of its own (merged) 1-sigma diameter and
its children's sizes. A node is *expanded* for a camera when it is interior and its size
projects to at least ``lod_pixels`` pixels at its sphere's nearest distance to the
camera, ``fx S / max(|cam - c| - R, near) >= lod_pixels``. The cut is every node whose
parent is expanded (or that is a root) and that is not expanded itself. Since spheres
nest, a node's nearest distance is never below its parent's and its size never above
it, so an expanded node's parent is expanded: the cut holds exactly one node of every
root-to-leaf path (a proper cut). ``lod_pixels 0`` expands every interior node: the
cut is the leaves.

**The layout (sequential point trees).** A node in block ``b`` is in a cut only if its
parent is expanded, i.e. ``fx K >= lod_pixels max(dist(cam, box_b), near)`` with
``K = S_parent`` (infinite for a root) and ``box_b`` the box around the parent
spheres of the block's nodes. The nodes are ordered by the coarseness ``floor(log2
K)`` (coarsest first), then in Morton order of their means, and cut into blocks of
``block_size``; inside a block they are sorted by ``K``, largest first. So a view's cut
lies in a *prefix* of each block, whose length the view sampler computes offline
(:func:`oocstore.samplers.views.lod_working_set`), and coarse nodes of a region share
blocks: a far view reads a few coarse blocks, not every leaf block.

**In the store** (format version 2; ``docs/SCENE_FORMAT.md``): interior nodes are
ordinary records (so training, checksums and write-back treat them as Gaussians), and

    ``scene/lod``                 LodMeta (node and leaf counts, levels, base cell)
    ``array/scene/lod/nodes``     int64 [N, 5]: id, parent id (-1: root), level, block, row
    ``array/scene/lod/spheres``   float32 [N, 5]: centre x, y, z, radius, size

The spheres are those of the build: training moves Gaussians a little, the cut keeps
the geometry it was built with (rebuild with ``oocstore gs-lod build`` after large
changes). A densification (:mod:`oocstore.gs.lod_densify`) rebuilds the hierarchy
locally (:func:`rebuild_local`): the ancestors of the leaves it changed are merged again
and get new spheres, the others keep theirs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import FormatError, UsageError
from . import layout

LOD_KEY = "scene/lod"
NODES_ARRAY = "scene/lod/nodes"
SPHERES_ARRAY = "scene/lod/spheres"
LOD_FORMAT_VERSION = 2
MAX_LEVELS = 64
DEFAULT_LOD_PIXELS = 1.0
MIN_OPACITY, MAX_OPACITY = 0.005, 0.99
EPS2D_PX = 0.3  # the rasterizer's dilation (oocstore.gs.render.EPS2D), px^2
BUILD_FIX = "build the hierarchy with `oocstore gs-lod build {src} OUT` and use OUT"


@dataclass(frozen=True)
class LodMeta:
    """The hierarchy's facts, stored under ``scene/lod``."""

    nodes: int
    leaves: int
    levels: int
    cell: float
    fit_steps: int = 0  # steps of oocstore.gs.lod_fit run on the merged nodes (0: none)
    format_version: int = LOD_FORMAT_VERSION
    name: str = "lod"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Hierarchy:
    """A scene's hierarchy in memory (see the module docstring): per node its ``ids``,
    ``parent`` (an index into these arrays, -1 for a root), ``level``, ``block`` and
    ``row`` in the store, bounding sphere ``centers`` [N, 3] / ``radius`` [N], and
    ``size`` [N] (see the module docstring)."""

    ids: np.ndarray
    parent: np.ndarray
    level: np.ndarray
    block: np.ndarray
    row: np.ndarray
    centers: np.ndarray
    radius: np.ndarray
    size: np.ndarray

    @property
    def is_leaf(self) -> np.ndarray:
        has_child = np.zeros(len(self.ids), dtype=bool)
        has_child[self.parent[self.parent >= 0]] = True
        return ~has_child

    @property
    def keys(self) -> np.ndarray:
        """``K`` per node: the parent's size (inf for a root)."""
        k = np.full(len(self.ids), np.inf)
        has = self.parent >= 0
        k[has] = self.size[self.parent[has]].astype(np.float64)
        return k


def check_lod_pixels(value, param: str = "lod_pixels") -> float:
    """``value`` as a finite float >= 0 (pixels), or a UsageError naming ``param`` (the
    command line writes its flag in)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{param}={value!r} is not a number: pass the projected size in "
                         f"pixels below which a merged node replaces its children (e.g. "
                         f"{DEFAULT_LOD_PIXELS:g}; 0: leaves only)") from None
    if not math.isfinite(v) or v < 0:
        raise UsageError(f"{param}={value!r} must be a finite number >= 0 (e.g. "
                         f"{DEFAULT_LOD_PIXELS:g}; 0: leaves only)")
    return v


# -- merging -------------------------------------------------------------------------

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _covariances(params: np.ndarray) -> np.ndarray:
    """[N, 3, 3] float64 covariances ``R diag(s^2) R^T`` of parameter rows."""
    q = params[:, layout.QUATS].astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    r = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                  2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                  2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                 axis=1).reshape(-1, 3, 3)
    s2 = np.exp(2.0 * params[:, layout.LOG_SCALES].astype(np.float64))
    return np.einsum("nij,nj,nkj->nik", r, s2, r)


def _quats_of(vecs: np.ndarray) -> np.ndarray:
    """Quaternions (w, x, y, z) [N, 4] of rotation matrices [N, 3, 3] (det +1)."""
    m = vecs
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = np.stack([1 + tr, 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                     1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2],
                     1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], axis=1)
    k = np.argmax(cand, axis=1)  # the numerically safest of the four formulas
    q = np.empty((len(m), 4))
    s = np.sqrt(np.maximum(cand[np.arange(len(m)), k], 1e-300)) * 2
    for case, (a, b, c, d) in enumerate((
            (lambda: s / 4, lambda: (m[:, 2, 1] - m[:, 1, 2]) / s,
             lambda: (m[:, 0, 2] - m[:, 2, 0]) / s, lambda: (m[:, 1, 0] - m[:, 0, 1]) / s),
            (lambda: (m[:, 2, 1] - m[:, 1, 2]) / s, lambda: s / 4,
             lambda: (m[:, 0, 1] + m[:, 1, 0]) / s, lambda: (m[:, 0, 2] + m[:, 2, 0]) / s),
            (lambda: (m[:, 0, 2] - m[:, 2, 0]) / s, lambda: (m[:, 0, 1] + m[:, 1, 0]) / s,
             lambda: s / 4, lambda: (m[:, 1, 2] + m[:, 2, 1]) / s),
            (lambda: (m[:, 1, 0] - m[:, 0, 1]) / s, lambda: (m[:, 0, 2] + m[:, 2, 0]) / s,
             lambda: (m[:, 1, 2] + m[:, 2, 1]) / s, lambda: s / 4))):
        sel = k == case
        if sel.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                q[sel] = np.stack([a(), b(), c(), d()], axis=1)[sel]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _area(log_scales: np.ndarray, dilation: np.ndarray | None = None) -> np.ndarray:
    """pi times the two largest scales (with ``dilation`` added to their squares)."""
    s = np.sort(np.exp(log_scales.astype(np.float64)), axis=1)
    if dilation is None:
        return math.pi * s[:, 1] * s[:, 2]
    return math.pi * np.sqrt((s[:, 1] ** 2 + dilation) * (s[:, 2] ** 2 + dilation))


def merge_groups(params: np.ndarray, group: np.ndarray, ngroups: int,
                 child_size: np.ndarray | None = None):
    """One merged Gaussian [G, P] float32 per group of the rows of ``params`` [n, P]
    (``group`` [n] in 0..G-1; see the module docstring for the rules).

    With ``child_size`` (the rows' sizes) it returns ``(merged, size)``: the merged
    nodes' sizes too, and an opacity that keeps the *rendered* coverage at the scale
    where the node is first drawn (its size 1 px): there the rasterizer's 0.3 px
    dilation widens every sub-pixel child, ``area = pi sqrt((s_a^2 + c)(s_b^2 + c))``
    with ``c = 0.3 size^2``, so many tiny children cover more than their bare areas."""
    from scipy import sparse

    n, p = params.shape
    alpha = _sigmoid(params[:, 10].astype(np.float64))
    area = _area(params[:, layout.LOG_SCALES])
    w = alpha * area + 1e-30
    g = sparse.csr_matrix((w, (group, np.arange(n))), shape=(ngroups, n))
    wsum = np.asarray(g.sum(axis=1)).reshape(-1)
    means_i = params[:, layout.MEANS].astype(np.float64)
    mu = (g @ means_i) / wsum[:, None]
    d = means_i - mu[group]
    cov_i = _covariances(params) + d[:, :, None] * d[:, None, :]
    cov = (g @ cov_i.reshape(n, 9)).reshape(ngroups, 3, 3) / wsum[:, None, None]
    lam, vecs = np.linalg.eigh(cov)
    vecs[np.linalg.det(vecs) < 0, :, 0] *= -1  # a rotation (det +1)
    scales = np.sqrt(np.maximum(lam, 1e-20))
    out = np.empty((ngroups, p), dtype=np.float64)
    out[:, layout.MEANS] = mu
    out[:, layout.QUATS] = _quats_of(vecs)
    out[:, layout.LOG_SCALES] = np.log(scales)
    size = dil = None
    if child_size is not None:
        size = 2.0 * scales.max(axis=1)
        np.maximum.at(size, group, child_size)
        dil = EPS2D_PX * size * size  # world units^2 of 0.3 px^2 where size is 1 px
    cover_i = alpha * (area if dil is None else _area(params[:, layout.LOG_SCALES], dil[group]))
    covered = np.asarray(sparse.csr_matrix((cover_i, (group, np.arange(n))),
                                           shape=(ngroups, n)).sum(axis=1)).reshape(-1)
    a = np.clip(covered / _area(out[:, layout.LOG_SCALES], dil), MIN_OPACITY, MAX_OPACITY)
    out[:, 10] = np.log(a / (1 - a))
    gc = sparse.csr_matrix((cover_i + 1e-30, (group, np.arange(n))), shape=(ngroups, n))
    csum = np.asarray(gc.sum(axis=1)).reshape(-1)
    out[:, layout.SH_START:] = (gc @ params[:, layout.SH_START:].astype(np.float64)) \
        / csum[:, None]
    return out.astype(np.float32) if size is None else (out.astype(np.float32), size)


# -- building --------------------------------------------------------------------------

def default_cell(params: np.ndarray) -> float:
    """The base cell: twice the median leaf scale (about the leaves' spacing), at least
    a millionth of the scene's extent."""
    s = np.exp(params[:, layout.LOG_SCALES].astype(np.float64)).max(axis=1)
    m = params[:, layout.MEANS].astype(np.float64)
    extent = float((m.max(axis=0) - m.min(axis=0)).max()) if len(m) else 1.0
    return max(2.0 * float(np.median(s)) if len(s) else 1.0, 1e-6 * max(extent, 1e-30))


def build_hierarchy(params: np.ndarray, *, cell: float | None = None,
                    progress: Callable[[str], None] | None = None):
    """Interior nodes over the leaves ``params`` [L, P]: returns ``(params [N, P]
    (leaves first, in their order), parent [N] (index, -1 root), level [N],
    centers [N, 3], radius [N], size [N], cell)``."""
    params = np.asarray(params, dtype=np.float32)
    leaves = len(params)
    if leaves == 0:
        raise UsageError("the scene holds no Gaussians: nothing to build a hierarchy over")
    cell = default_cell(params) if cell is None else float(cell)
    if not (math.isfinite(cell) and cell > 0):
        raise UsageError(f"cell={cell!r} must be a positive length (default: twice the "
                         "median Gaussian scale)")
    allp = params
    allc = params[:, layout.MEANS].astype(np.float64)
    allr = np.exp(params[:, layout.LOG_SCALES].astype(np.float64)).max(axis=1)
    alls = 2.0 * allr
    par = np.full(leaves, -1, dtype=np.int64)
    level = np.zeros(leaves, dtype=np.int64)
    live = np.arange(leaves, dtype=np.int64)  # nodes without a parent yet
    origin = allc.min(axis=0)
    for k in range(1, MAX_LEVELS + 1):
        if len(live) <= 1:
            break
        side = cell * 2.0 ** (k - 1)
        key = np.floor((allc[live] - origin) / side).astype(np.int64)
        _, inv, cnt = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        inv = inv.reshape(-1)
        multi = cnt[inv] >= 2
        if not multi.any():
            continue
        members = live[multi]
        groups, ginv = np.unique(inv[multi], return_inverse=True)
        merged, size = merge_groups(allp[members], ginv, len(groups), alls[members])
        c = merged[:, layout.MEANS].astype(np.float64)
        reach = np.linalg.norm(allc[members] - c[ginv], axis=1) + allr[members]
        r = np.zeros(len(groups))
        np.maximum.at(r, ginv, reach)
        new = np.arange(len(allp), len(allp) + len(groups), dtype=np.int64)
        allp = np.concatenate([allp, merged])
        allc = np.concatenate([allc, c])
        allr = np.concatenate([allr, r])
        alls = np.concatenate([alls, size])
        par = np.concatenate([par, np.full(len(groups), -1, dtype=np.int64)])
        par[members] = new[ginv]
        level = np.concatenate([level, np.full(len(groups), k, dtype=np.int64)])
        live = np.concatenate([live[~multi], new])
        if progress:
            progress(f"level {k}: {len(groups):,} nodes, {len(live):,} without a parent")
    return allp, par, level, allc, allr, alls, cell


def layout_order(keys: np.ndarray, means: np.ndarray, block_size: int) -> np.ndarray:
    """The store order of nodes (see "The layout" in the module docstring): coarseness
    bucket ``floor(log2 K)`` descending, Morton order inside a bucket, each run of
    ``block_size`` then sorted by ``K`` descending (stable)."""
    from .blocks import morton_order

    n = len(keys)
    finite = np.isfinite(keys)
    bucket = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    with np.errstate(divide="ignore"):
        bucket[finite] = np.floor(np.log2(np.maximum(keys[finite], 1e-300))).astype(np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[morton_order(means)] = np.arange(n)
    order = np.lexsort((rank, -bucket))
    for lo in range(0, n, block_size):
        run = order[lo:lo + block_size]
        order[lo:lo + block_size] = run[np.argsort(-keys[run], kind="stable")]
    return order


def node_table(ids, parent, level, order, block_size: int) -> np.ndarray:
    """int64 [N, 5] rows ``id, parent id, level, block, row`` in store order."""
    n = len(ids)
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    pid = np.where(parent >= 0, ids[np.maximum(parent, 0)], -1)
    return np.stack([ids, pid, level, pos // block_size, pos % block_size], axis=1)[order]


def read_hierarchy(store, counts: np.ndarray | None = None) -> Hierarchy | None:
    """The hierarchy of the scene in ``store`` (None without one); FormatError when the
    parent links are broken, or (with ``counts``, the live rows per block) a node's block
    or row is not in the scene (:func:`hierarchy_problems` names how)."""
    if store.get(LOD_KEY) is None:
        return None
    nodes = np.array(store.array(NODES_ARRAY), dtype=np.int64)
    spheres = np.array(store.array(SPHERES_ARRAY), dtype=np.float32)
    problems = _table_problems(nodes, spheres)
    if not problems and counts is not None:
        problems = _placement_problems(nodes, counts)
    if problems:
        raise FormatError(f"scene {store.path}: level-of-detail hierarchy is damaged: "
                          f"{problems[0]}; run `oocstore verify`, rebuild it with "
                          "`oocstore gs-lod build`")
    ids = nodes[:, 0]
    srt = np.argsort(ids, kind="stable")
    parent = np.full(len(ids), -1, dtype=np.int64)
    has = nodes[:, 1] >= 0
    parent[has] = srt[np.searchsorted(ids[srt], nodes[has, 1])]
    return Hierarchy(ids, parent, nodes[:, 2], nodes[:, 3], nodes[:, 4],
                     spheres[:, :3].astype(np.float64), spheres[:, 3].astype(np.float64),
                     spheres[:, 4].astype(np.float64))


def _table_problems(nodes: np.ndarray, spheres: np.ndarray) -> list[str]:
    """What is wrong with a node table: shapes, ids, parents out of range, cycles."""
    if nodes.ndim != 2 or nodes.shape[1] != 5 or spheres.shape != (len(nodes), 5):
        return [f"node table of shape {nodes.shape} and spheres {spheres.shape}, expected "
                "[N, 5] and [N, 5]"]
    n = len(nodes)
    ids = nodes[:, 0]
    srt = np.sort(ids)
    if n and bool((srt[1:] == srt[:-1]).any()):
        dup = int(srt[1:][srt[1:] == srt[:-1]][0])
        return [f"node id {dup} appears twice"]
    pid = nodes[:, 1]
    has = pid >= 0
    pos = np.searchsorted(srt, pid[has])
    found = (pos < n) & (srt[np.minimum(pos, max(n - 1, 0))] == pid[has]) if n else pos < 0
    bad = np.flatnonzero(has)[~found]
    neg = np.flatnonzero(pid < -1)
    if len(bad) or len(neg):
        i = int(bad[0]) if len(bad) else int(neg[0])
        return [f"node {int(ids[i])} has parent {int(pid[i])}, which is out of range (not "
                f"one of the {n} node ids)"]
    if not np.isfinite(spheres).all() or (spheres[:, 3:] < 0).any():
        return ["a bounding sphere is not finite or has a negative radius or size"]
    order = np.argsort(ids, kind="stable")
    par = np.full(n, -1, dtype=np.int64)
    par[has] = order[np.searchsorted(ids[order], pid[has])]
    anc = par.copy()  # pointer jumping: after log2(N) + 1 doublings every chain ends
    for _ in range(max(1, int(n).bit_length() + 1)):
        nxt = np.where(anc >= 0, anc[np.maximum(anc, 0)], -1)
        if np.array_equal(nxt, anc):
            break
        anc = nxt
    cyc = np.flatnonzero(anc >= 0)
    if len(cyc):
        return [f"node {int(ids[cyc[0]])}'s parents form a cycle (it never reaches a root)"]
    return []


def _placement_problems(nodes: np.ndarray, counts: np.ndarray) -> list[str]:
    """A node whose block or row is not in the scene (``counts``: live rows per block),
    or whose level is not above its children's (a prefix read would miss it, or read
    past a block)."""
    counts = np.asarray(counts, dtype=np.int64)
    blk, row = nodes[:, 3], nodes[:, 4]
    ok = (blk >= 0) & (blk < len(counts))
    ok[ok] = (row[ok] >= 0) & (row[ok] < counts[blk[ok]])
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        return [f"node {int(nodes[i, 0])} is placed at block {int(blk[i])} row {int(row[i])}, "
                f"which is not in the scene ({len(counts)} blocks)"]
    ids, pid, level = nodes[:, 0], nodes[:, 1], nodes[:, 2]
    has = pid >= 0
    srt = np.argsort(ids, kind="stable")
    plevel = level[srt[np.searchsorted(ids[srt], pid[has])]]
    bad = np.flatnonzero(has)[plevel <= level[has]]
    if len(bad) or (level < 0).any():
        i = int(bad[0]) if len(bad) else int(np.flatnonzero(level < 0)[0])
        return [f"node {int(ids[i])} has level {int(level[i])}, not below its parent's"]
    return []


def hierarchy_problems(store) -> list[str]:
    """For ``oocstore verify``: what is wrong with the scene's hierarchy (parents out of
    range, cycles, a table that does not match the scene's Gaussians or blocks)."""
    raw = store.get(LOD_KEY)
    if raw is None:
        return []
    for name in (NODES_ARRAY, SPHERES_ARRAY):
        if not store.has_array(name):
            return [f"the scene's level-of-detail hierarchy lacks array {name!r}: rebuild "
                    "it with `oocstore gs-lod build`"]
    try:
        nodes = np.array(store.array(NODES_ARRAY), dtype=np.int64)
        spheres = np.array(store.array(SPHERES_ARRAY), dtype=np.float32)
    except (OSError, ValueError) as err:  # a missing or short file: the arrays' check names it
        return [f"level-of-detail hierarchy unreadable ({err}): rebuild it with "
                "`oocstore gs-lod build`"]
    fix = "rebuild it with `oocstore gs-lod build`"
    problems = _table_problems(nodes, spheres)
    counts: dict[int, int] = {}
    for key, v in store.items("scene/block/"):
        if isinstance(v, dict) and key[len("scene/block/"):].isdigit():
            counts[int(key[len("scene/block/"):])] = int(v.get("count", 0))
    if not problems:
        dense = np.zeros(max(counts, default=-1) + 1, dtype=np.int64)
        dense[list(counts)] = list(counts.values())
        problems = _placement_problems(nodes, dense)
    out = [f"level-of-detail hierarchy: {p}: {fix}" for p in problems]
    live = sum(counts.values())
    if not out and isinstance(raw, dict) and not raw.get("nodes") == len(nodes) == live:
        out.append(f"level-of-detail hierarchy: the catalog says {raw.get('nodes')!r} nodes, "
                   f"the table holds {len(nodes)} and the scene's blocks {live}: {fix}")
    return out


# -- using a cut ---------------------------------------------------------------------------

def resolve_lod_pixels(scene, lod_pixels, what: str = "--lod-pixels"):
    """The projected-size threshold a command uses on ``scene``: ``lod_pixels`` checked
    (a number >= 0), or by default :data:`DEFAULT_LOD_PIXELS` for a scene with a
    hierarchy and None (no level of detail) for one without. A value given for a scene
    without a hierarchy is refused with the command that builds one. The hierarchy is
    read (and its structure checked) here, before a command writes anything."""
    if lod_pixels is None:
        if scene.lod_meta is None:
            return None
        scene.hierarchy()
        return DEFAULT_LOD_PIXELS
    value = check_lod_pixels(lod_pixels)
    scene.hierarchy(what=f"{what} {lod_pixels}")
    return value


def in_cut(ids: np.ndarray, cut_ids: np.ndarray) -> np.ndarray:
    """[n] bool: which of ``ids`` are in the sorted ``cut_ids``."""
    if not len(cut_ids):
        return np.zeros(len(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(cut_ids, ids), len(cut_ids) - 1)
    return cut_ids[pos] == ids


def check_cut_rows(scene, cut_size: int, found: int) -> None:
    """Refuse a view's cut of ``cut_size`` nodes whose blocks' rows (the prefixes read)
    hold ``found`` of its ids: the node table puts a node in a block or row where its id
    is not stored, and filtering the rows by id would drop it (or keep a copy) silently."""
    if found != cut_size:
        raise FormatError(f"scene {scene.path}: level-of-detail hierarchy is damaged: a "
                          f"view's cut has {cut_size} nodes, their blocks' prefixes hold "
                          f"{found}; run `oocstore verify`, rebuild it with "
                          "`oocstore gs-lod build`")


def cut_params(scene, lv, width: int | None = None) -> np.ndarray:
    """Parameters [M, width] of a view's cut (a
    :class:`~oocstore.samplers.views.LodView`): the prefix of each of its blocks, read
    with :meth:`Scene.read_block`'s ``rows``, filtered to the cut's ids."""
    width = scene.param_width if width is None else width
    parts = []
    for b, k in zip(lv.blocks, lv.prefix):
        ids, rec = scene.read_block(int(b), rows=int(k))
        parts.append(rec[in_cut(ids, lv.ids), :width])
    check_cut_rows(scene, len(lv.ids), sum(len(p) for p in parts))
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)


def leaf_ids(scene) -> np.ndarray:
    """Sorted ids of the scene's leaves (every Gaussian's id without a hierarchy)."""
    h = scene.hierarchy()
    return np.sort(h.ids[h.is_leaf])


# -- a local rebuild after densification ------------------------------------------------

@dataclass
class Rebuilt:
    """A hierarchy rebuilt locally (:func:`rebuild_local`): per node its ``ids``,
    ``parent`` (index, -1 root), ``level``, full ``records`` [N, W] and bounding sphere
    ``centers`` / ``radius`` / ``size``; ``remerged`` and ``removed`` count the interior
    nodes merged again and dropped."""

    ids: np.ndarray
    parent: np.ndarray
    level: np.ndarray
    records: np.ndarray
    centers: np.ndarray
    radius: np.ndarray
    size: np.ndarray
    remerged: int
    removed: int

    @property
    def keys(self) -> np.ndarray:
        k = np.full(len(self.ids), np.inf)
        has = self.parent >= 0
        k[has] = self.size[self.parent[has]]
        return k


def _ancestors(parent: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """bool [N]: every ancestor of the nodes ``seeds`` (their parents, and theirs...)."""
    mark = np.zeros(len(parent), dtype=bool)
    front = np.unique(parent[seeds])
    front = front[front >= 0]
    while len(front):
        front = front[~mark[front]]
        mark[front] = True
        front = np.unique(parent[front])
        front = front[front >= 0]
    return mark


def rebuild_local(h: Hierarchy, records: np.ndarray, width: int, keep: np.ndarray,
                  changed: np.ndarray, new_ids: np.ndarray, new_records: np.ndarray,
                  new_parent: np.ndarray) -> Rebuilt:
    """The hierarchy ``h`` after a densification of its leaves. ``records`` [N, W] are
    the nodes' current rows (in ``h``'s order; ``width`` parameter columns, then the
    moments), ``keep`` [N] False for a pruned leaf, ``changed`` [N] True for a leaf whose
    parameters changed (a split's first half), ``new_ids`` / ``new_records`` the added
    leaves (a clone's copy, a split's second half) under ``new_parent`` (indices into
    ``h``: the original leaf's parent, -1 for a root leaf's).

    Every ancestor of a pruned, changed or added leaf is merged again from its current
    children (:func:`merge_groups`, as :func:`build_hierarchy` does: its bounding sphere
    holds its children's, its size is at least theirs), level by level from the bottom,
    with zeroed Adam moments; one left without children is removed. Other nodes keep
    their rows and spheres (a changed leaf's sphere follows its parameters)."""
    n, m = len(h.ids), len(new_ids)
    new_params = np.asarray(new_records, dtype=np.float32)[:, :width]
    new_r = np.exp(new_params[:, layout.LOG_SCALES].astype(np.float64)).max(axis=1) \
        if m else np.zeros(0)
    ids = np.concatenate([h.ids, np.asarray(new_ids, dtype=np.int64)])
    parent = np.concatenate([h.parent, np.asarray(new_parent, dtype=np.int64)])
    level = np.concatenate([h.level, np.zeros(m, dtype=np.int64)])
    rec = np.concatenate([records, np.asarray(new_records, dtype=np.float32)])
    centers = np.concatenate([h.centers, new_params[:, layout.MEANS].astype(np.float64)])
    radius = np.concatenate([h.radius, new_r])
    size = np.concatenate([h.size, 2.0 * new_r])
    alive = np.concatenate([np.asarray(keep, dtype=bool), np.ones(m, dtype=bool)])
    ch = np.flatnonzero(changed)
    if len(ch):
        centers[ch] = rec[ch][:, layout.MEANS]
        radius[ch] = np.exp(rec[ch][:, layout.LOG_SCALES].astype(np.float64)).max(axis=1)
        size[ch] = 2.0 * radius[ch]
    seeds = np.concatenate([np.flatnonzero(~alive), ch, np.arange(n, n + m)])
    dirty = _ancestors(parent, seeds.astype(np.int64))
    removed = remerged = 0
    for lv in np.unique(level[dirty]):
        todo = np.flatnonzero(dirty & (level == lv) & alive)
        kids = np.flatnonzero(alive & (parent >= 0))
        kids = kids[dirty[parent[kids]] & (level[parent[kids]] == lv)]
        has = np.zeros(len(parent), dtype=bool)
        has[parent[kids]] = True
        empty = todo[~has[todo]]
        alive[empty] = False
        removed += len(empty)
        todo = todo[has[todo]]
        if not len(todo):
            continue
        group = np.searchsorted(todo, parent[kids])
        merged, sz = merge_groups(rec[kids, :width], group, len(todo), size[kids])
        c = merged[:, layout.MEANS].astype(np.float64)
        reach = np.linalg.norm(centers[kids] - c[group], axis=1) + radius[kids]
        r = np.zeros(len(todo))
        np.maximum.at(r, group, reach)
        rec[todo] = 0.0  # the moments zeroed
        rec[todo, :width] = merged
        centers[todo], radius[todo], size[todo] = c, r, sz
        remerged += len(todo)
    idx = np.flatnonzero(alive)
    where = np.full(len(parent), -1, dtype=np.int64)
    where[idx] = np.arange(len(idx))
    par = parent[idx]
    par = np.where(par >= 0, where[np.maximum(par, 0)], -1)
    return Rebuilt(ids[idx], par, level[idx], rec[idx], centers[idx], radius[idx], size[idx],
                   remerged, removed)
