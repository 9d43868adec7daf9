"""Densification: clone / split / prune, block by block, like gsplat's default strategy.

Statistics (:class:`GradStats`): for every Gaussian id, the sum of the norms of its
view-space positional gradient (``means2d.grad`` scaled by half the image size, as gsplat
does) over the steps that rendered it, and how many steps did. They live in host memory,
8 bytes per id (:meth:`GradStats.nbytes`), and are reset after each refinement.

At a refinement (:func:`densify_scene`), every block is read and transformed by the pure
function :func:`densify_block`; the blocks that changed are written back through the
scene's log-structured writer (the others keep their files); one commit makes the new
scene visible. It runs out of core, in two passes holding one block (or one merge group)
at a time (:class:`_Refinement`). For each Gaussian with
``avg grad >= grow_grad2d``:

* **clone** when its largest scale is ``<= grow_scale3d x scene_scale``: a copy with a new
  id and zeroed moments is added (the original keeps its id and moments);
* **split** otherwise: two samples drawn from the Gaussian (means + R (s * N(0, 1))),
  scales divided by 1.6; the first keeps the id, the second gets a new one, both with
  zeroed moments.

Gaussians with opacity ``< prune_opa`` or (with ``prune_large``, which the trainer
turns on only after the first opacity reset, as gsplat does) largest scale
``> prune_scale3d x scene_scale`` are **pruned** (removed). Blocks keep their spare capacity for growth; a block that
outgrows ``block_capacity`` keeps the first ``block_capacity`` rows and the rest go to
new blocks (``writer.new_block``); blocks left empty are freed, and neighbouring blocks
(consecutive ids: Morton order) whose rows fit in one ``block_size`` are merged
(**compaction** of pruned space). Ids stay unique and stable; new ids come from
``writer.allocate_ids`` (``scene.next_id``). A refinement that would prune every
Gaussian is refused (UsageError naming ``prune_opa``) before anything is written: an
empty scene leaves the next training step nothing to render.

**Growth inside the budget.** Before anything is written, the refined layout (every
block's row count and bounds) goes to the caller's ``admit`` check -- the trainer's
budget check of the next training segment against it. A layout that does not fit is
refined again with pruning only (no clone, no split); if that does not fit either, the
refinement writes nothing. The summary says which (``growth`` is ``"done"``,
``"refused"`` or ``"skipped"``, with ``refused_because``).

**Opacity reset** (:func:`reset_opacity_scene`): every opacity is clamped to at most
``value`` (gsplat: twice the pruning threshold) and its two Adam moments are zeroed, one
block at a time, one commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from oocstore.errors import UsageError

from . import layout
from .refine import Decision, decide, densify_block  # noqa: F401 (re-exported rules)
from .refine import refuse_emptying


@dataclass(frozen=True)
class DensifyConfig:
    """gsplat DefaultStrategy's thresholds (scene-relative scales)."""

    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_opa: float = 0.005
    prune_scale3d: float = 0.1

    def __post_init__(self) -> None:
        for k in ("grow_grad2d", "grow_scale3d", "prune_opa", "prune_scale3d"):
            if not getattr(self, k) >= 0:
                raise UsageError(f"densify threshold {k}={getattr(self, k)!r} must be >= 0")


class GradStats:
    """Accumulated view-space gradient norms and visible counts, indexed by Gaussian id."""

    def __init__(self, next_id: int):
        self.grad = np.zeros(next_id, dtype=np.float32)
        self.count = np.zeros(next_id, dtype=np.int32)

    @property
    def nbytes(self) -> int:
        return self.grad.nbytes + self.count.nbytes

    def add(self, ids: np.ndarray, means2d_grad: np.ndarray, visible: np.ndarray,
            width: int, height: int) -> None:
        """Accumulate one step: ``means2d_grad`` [M, 2] of the step's rows ``ids`` [M]."""
        ids = np.asarray(ids, dtype=np.int64)
        g = np.asarray(means2d_grad, dtype=np.float32) * np.array([width / 2, height / 2],
                                                                  dtype=np.float32)
        vis = np.asarray(visible, dtype=bool)
        if len(ids) and ids.max() >= len(self.grad):
            self.resize(int(ids.max()) + 1)
        np.add.at(self.grad, ids[vis], np.linalg.norm(g[vis], axis=1))
        np.add.at(self.count, ids[vis], 1)

    def resize(self, next_id: int) -> None:
        if next_id > len(self.grad):
            self.grad = np.concatenate([self.grad, np.zeros(next_id - len(self.grad), np.float32)])
            self.count = np.concatenate([self.count, np.zeros(next_id - len(self.count), np.int32)])

    def average(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        known = ids < len(self.grad)
        out = np.zeros(len(ids), dtype=np.float32)
        c = self.count[ids[known]]
        out[known] = np.where(c > 0, self.grad[ids[known]] / np.maximum(c, 1), 0)
        return out

    def reset(self) -> None:
        self.grad[:] = 0
        self.count[:] = 0


#: ``admit(counts [B], bounds [B, 2, 3]) -> None | str``: None when a refined layout fits,
#: else why not (one line). With a level-of-detail hierarchy a third argument follows:
#: the rebuilt hierarchy (:mod:`oocstore.gs.lod_densify`).
Admit = Callable[[np.ndarray, np.ndarray], "str | None"]


@dataclass
class _BlockPlan:
    """Pass one's record of a block: its new ids, refined row count, the (count, bounds)
    of each ``block_capacity`` chunk of its refined rows, whether anything changed."""

    new_ids: np.ndarray
    count: int
    chunks: list
    changed: bool


class _Refinement:
    """Two passes over the blocks, one block (or one merge group) in memory at a time.

    Pass one (:meth:`plan`) refines every block to count rows and bound each chunk, then
    forgets the rows; merges follow from the counts alone. Pass two (:meth:`write`)
    refines each changed block again -- the same decision, new ids and seeded samples, so
    the same rows -- and writes it (a merge group: concatenated into its first block, the
    others freed; an overgrown block: its first ``block_capacity`` rows, the rest into new
    blocks). Memory: one block's refined rows, or one merge group's (<= ``block_size``).
    """

    def __init__(self, scene, w, stats, scene_scale, cfg, seed, grow, prune_large):
        self.scene, self.w, self.stats = scene, w, stats
        self.args = (scene_scale, cfg, seed, grow, prune_large)
        self.cap = scene.block_capacity
        self.plans: dict[int, _BlockPlan] = {}
        self.into: dict[int, int] = {}  # merged block -> the block it merges into
        self.size: dict[int, int] = {}  # rows of every block after merging
        self.done = {"cloned": 0, "split": 0, "pruned": 0, "new_blocks": 0, "freed_blocks": 0,
                     "merged_blocks": 0, "blocks_written": 0}

    def _refine(self, b: int, new_ids=None):
        scene_scale, cfg, seed, grow, prune_large = self.args
        ids, rec = self.scene.read_block(b)
        d = decide(rec, self.stats.average(ids), self.scene.sh_degree, scene_scale, cfg,
                   grow=grow, prune_large=prune_large)
        if new_ids is None:
            n = int(d.clone.sum() + d.split.sum())
            new_ids = self.w.allocate_ids(n) if n else np.zeros(0, np.int64)
        ids2, rec2 = densify_block(ids, rec, d, new_ids, self.scene.sh_degree,
                                   np.random.default_rng([seed, b]))
        return d, new_ids, ids2, rec2

    def plan(self) -> "_Refinement":
        from .blocks import block_bounds_of

        for b in range(self.scene.num_blocks):
            if not self.scene.block_counts[b]:
                continue
            d, new_ids, ids2, rec2 = self._refine(b)
            self.done["cloned"] += int(d.clone.sum())
            self.done["split"] += int(d.split.sum())
            self.done["pruned"] += int(d.prune.sum())
            chunks = [(len(ids2[lo:lo + self.cap]), block_bounds_of(rec2[lo:lo + self.cap]))
                      for lo in range(0, len(ids2), self.cap)]
            self.plans[b] = _BlockPlan(new_ids, len(ids2), chunks,
                                       bool(d.clone.any() or d.split.any() or d.prune.any()))
        # compaction: a block merges into its predecessor (block order) while both fit one
        # block_size
        prev, block_size = None, self.scene.meta.block_size
        for b in sorted(self.plans):
            n = self.plans[b].count
            if prev is not None and n and self.size[prev] + n <= block_size:
                self.into[b] = prev
                self.size[prev] += n
                self.plans[b].changed = self.plans[prev].changed = True
                self.done["merged_blocks"] += 1
                continue
            self.size[b] = n
            if n:
                prev = b
        return self

    def layout(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts [B'], bounds [B', 2, 3]) once written (spilled rows in new blocks at
        the end, in block order)."""
        from .blocks import block_bounds_of

        empty = block_bounds_of(np.zeros((0, self.scene.param_width), np.float32))
        counts, bounds, extra = [], [], []
        for b in range(self.scene.num_blocks):
            p = self.plans.get(b)
            if p is None or b in self.into or not p.count:
                counts.append(0)
                bounds.append(empty)
                continue
            members = [b] + [m for m, t in self.into.items() if t == b]
            if len(members) > 1:
                box = np.stack([self.plans[m].chunks[0][1] for m in members])
                counts.append(self.size[b])
                bounds.append(np.stack([box[:, 0].min(0), box[:, 1].max(0)]))
                continue
            counts.append(p.chunks[0][0])
            bounds.append(p.chunks[0][1])
            extra += p.chunks[1:]
        counts += [c for c, _ in extra]
        bounds += [bb for _, bb in extra]
        return np.array(counts, dtype=np.int64), np.stack(bounds).astype(np.float32)

    def write(self) -> None:
        w, cap = self.w, self.cap
        for b in sorted(self.plans):  # unchanged blocks keep their files
            p = self.plans[b]
            if not p.changed or b in self.into:
                continue
            members = [b] + sorted(m for m, t in self.into.items() if t == b)
            parts = [self._refine(m, self.plans[m].new_ids)[2:] for m in members]
            ids2 = np.concatenate([i for i, _ in parts])
            rec2 = np.concatenate([r for _, r in parts])
            for m in members[1:]:
                w.free_block(m)
                self.done["freed_blocks"] += 1
            if not len(ids2):
                w.free_block(b)
                self.done["freed_blocks"] += 1
                continue
            w.write_block(b, ids2[:cap], rec2[:cap])
            self.done["blocks_written"] += 1
            for lo in range(cap, len(ids2), cap):
                w.new_block(ids2[lo:lo + cap], rec2[lo:lo + cap])
                self.done["new_blocks"] += 1


def densify_scene(scene, stats: GradStats, scene_scale: float, cfg: DensifyConfig,
                  seed: int, *, prune_large: bool = True, admit: Admit | None = None) -> dict:
    """Refine every block of ``scene`` (one commit); returns counts of what was done.
    A scene with a level-of-detail hierarchy refines its leaves and rebuilds the
    hierarchy locally (:mod:`oocstore.gs.lod_densify`).

    ``admit`` (see the module docstring) vets the refined layout before anything is
    written; ``prune_large`` turns the too-large pruning on. Out of core: see
    :class:`_Refinement`."""
    if getattr(scene, "lod_meta", None) is not None:
        from .lod_densify import densify_lod_scene

        return densify_lod_scene(scene, stats, scene_scale, cfg, seed,
                                 prune_large=prune_large, admit=admit)
    with scene.writer() as w:
        growth, why = "done", None
        ref = _Refinement(scene, w, stats, scene_scale, cfg, seed, True, prune_large).plan()
        refuse_emptying(scene.path, scene.num_gaussians,
                        sum(p.count for p in ref.plans.values()), "Gaussians", cfg)
        if admit is not None:
            why = admit(*ref.layout())
            if why is not None:
                growth = "refused"
                ref = _Refinement(scene, w, stats, scene_scale, cfg, seed, False,
                                  prune_large).plan()
                if admit(*ref.layout()) is not None:
                    growth = "skipped"
                    ref = None
        done = dict.fromkeys(_Refinement(scene, w, stats, 0, cfg, 0, 0, 0).done, 0) \
            if ref is None else ref.done
        if ref is not None and any(p.changed for p in ref.plans.values()):
            ref.write()
            w.commit()
        done["growth"] = growth
        if why is not None:
            done["refused_because"] = why
    stats.resize(scene.next_id)
    stats.reset()
    return done


def reset_opacity_scene(scene, value: float) -> int:
    """Clamp every opacity to at most ``value`` and zero its Adam moments (one commit);
    returns how many Gaussians were clamped."""
    if not 0 < value < 1:
        raise UsageError(f"opacity reset value {value!r} must lie in (0, 1)")
    p = scene.param_width
    col = layout.OPACITY.start
    cap_logit = float(np.log(value / (1 - value)))
    clamped = 0
    with scene.writer() as w:
        for b in range(scene.num_blocks):
            ids, rec = scene.read_block(b)
            if not len(ids):
                continue
            rec = rec.copy()
            clamped += int((rec[:, col] > cap_logit).sum())
            rec[:, col] = np.minimum(rec[:, col], cap_logit)
            rec[:, p + col] = 0.0
            rec[:, 2 * p + col] = 0.0
            w.write_block(b, ids, rec)
        w.commit()
    return clamped
