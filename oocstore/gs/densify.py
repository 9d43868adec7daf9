"""Densification: clone / split / prune, block by block, like gsplat's default strategy.

Statistics (:class:`GradStats`): for every Gaussian id, the sum of the norms of its
view-space positional gradient (``means2d.grad`` scaled by half the image size, as gsplat
does) over the steps that rendered it, and how many steps did. They live in host memory,
8 bytes per id (:meth:`GradStats.nbytes`), and are reset after each refinement.

At a refinement (:func:`densify_scene`), every block is read, transformed by the pure
function :func:`densify_block`, and written back through the scene's log-structured
writer; one commit makes the new scene visible. For each Gaussian with
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
``writer.allocate_ids`` (``scene.next_id``).

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


def _quat_rot(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                    axis=1).reshape(-1, 3, 3)


@dataclass
class Decision:
    """Which rows of a block to clone, split and prune (bool [n] each; disjoint)."""

    clone: np.ndarray
    split: np.ndarray
    prune: np.ndarray


def decide(records: np.ndarray, avg_grad: np.ndarray, sh_degree: int, scene_scale: float,
           cfg: DensifyConfig, *, grow: bool = True, prune_large: bool = True) -> Decision:
    p = layout.param_width(sh_degree)
    prm = records[:, :p]
    smax = np.exp(prm[:, layout.LOG_SCALES]).max(axis=1) if len(prm) else np.zeros(0)
    opa = 1 / (1 + np.exp(-prm[:, layout.OPACITY][:, 0].astype(np.float64)))
    prune = opa < cfg.prune_opa
    if prune_large:
        prune |= smax > cfg.prune_scale3d * scene_scale
    high = (avg_grad >= cfg.grow_grad2d) & ~prune & grow
    small = smax <= cfg.grow_scale3d * scene_scale
    return Decision(high & small, high & ~small, prune)


def densify_block(ids: np.ndarray, records: np.ndarray, decision: Decision, new_ids: np.ndarray,
                  sh_degree: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``decision`` to one block's rows -> the block's new ``(ids, records)``.

    ``new_ids`` must hold ``clone.sum() + split.sum()`` fresh ids (clones first, then the
    second sample of each split, in row order). Order of the output: the kept and split
    rows in their original order, then the clones, then the second split samples.
    """
    p = layout.param_width(sh_degree)
    c, s, pr = decision.clone, decision.split, decision.prune
    if np.any((c & s) | (c & pr) | (s & pr)):
        raise UsageError("clone, split and prune masks must be disjoint")
    need = int(c.sum() + s.sum())
    if len(new_ids) != need:
        raise UsageError(f"densify_block needs {need} new ids, got {len(new_ids)}")
    keep = ~pr
    out_ids = [ids[keep]]
    rec = records[keep].copy()
    # splits, in place: first sample keeps the id; second sample appended with a new id
    srows = np.flatnonzero(s[keep])
    second = np.zeros((0, records.shape[1]), dtype=np.float32)
    if len(srows):
        prm = rec[srows, :p]
        scale = np.exp(prm[:, layout.LOG_SCALES])
        rot = _quat_rot(prm[:, layout.QUATS].astype(np.float64))
        samples = rng.standard_normal((2, len(srows), 3)) * scale[None]
        moved = prm[None, :, layout.MEANS] + np.einsum("nij,knj->kni", rot, samples)
        new = np.zeros((2, len(srows), records.shape[1]), dtype=np.float32)
        new[:, :, :p] = prm[None]
        new[:, :, layout.MEANS] = moved
        new[:, :, layout.LOG_SCALES] = prm[None, :, layout.LOG_SCALES] - np.log(1.6)
        rec[srows] = new[0]  # moments zeroed
        second = new[1]
    clones = np.zeros((int(c.sum()), records.shape[1]), dtype=np.float32)
    clones[:, :p] = records[c, :p]
    nc = len(clones)
    out_ids += [new_ids[:nc], new_ids[nc:]]
    return np.concatenate(out_ids).astype(np.int64), np.concatenate([rec, clones, second])


#: ``admit(counts [B], bounds [B, 2, 3]) -> None | str``: None when a refined layout fits,
#: else why not (one line).
Admit = Callable[[np.ndarray, np.ndarray], "str | None"]


def _refined_rows(scene, w, stats: GradStats, scene_scale: float, cfg: DensifyConfig,
                  seed: int, grow: bool, prune_large: bool) -> tuple[dict, dict]:
    """Every block's refined (ids, records), compacted; and the counts of what was done
    (``done["changed"]``: the blocks whose rows changed, the only ones to write)."""
    done = {"cloned": 0, "split": 0, "pruned": 0, "new_blocks": 0, "freed_blocks": 0,
            "merged_blocks": 0}
    changed: set[int] = set()
    rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for b in range(scene.num_blocks):
        ids, rec = scene.read_block(b)
        if not len(ids):
            continue
        d = decide(rec, stats.average(ids), scene.sh_degree, scene_scale, cfg, grow=grow,
                   prune_large=prune_large)
        new = w.allocate_ids(int(d.clone.sum() + d.split.sum())) if grow else np.zeros(0, np.int64)
        ids2, rec2 = densify_block(ids, rec, d, new, scene.sh_degree,
                                   np.random.default_rng([seed, b]))
        done["cloned"] += int(d.clone.sum())
        done["split"] += int(d.split.sum())
        done["pruned"] += int(d.prune.sum())
        rows[b] = (ids2, rec2)
        if d.clone.any() or d.split.any() or d.prune.any():
            changed.add(b)
    _compact(rows, scene.meta.block_size, done, changed)
    done["changed"] = changed
    return rows, done


def refined_layout(scene, rows: dict) -> tuple[np.ndarray, np.ndarray]:
    """(counts [B'], bounds [B', 2, 3]) of the scene once ``rows`` are written the way
    :func:`densify_scene` writes them (overflow rows into new blocks at the end)."""
    from .blocks import block_bounds_of

    cap = scene.block_capacity
    nb = scene.num_blocks
    counts, bounds = [], []
    extra_counts, extra_bounds = [], []
    for b in range(nb):
        ids2, rec2 = rows.get(b, (np.zeros(0, np.int64), None))
        if not len(ids2):
            counts.append(0)
            bounds.append(block_bounds_of(np.zeros((0, scene.param_width), np.float32)))
            continue
        counts.append(min(cap, len(ids2)))
        bounds.append(block_bounds_of(rec2[:cap]))
        for lo in range(cap, len(ids2), cap):
            extra_counts.append(len(ids2[lo:lo + cap]))
            extra_bounds.append(block_bounds_of(rec2[lo:lo + cap]))
    return (np.array(counts + extra_counts, dtype=np.int64),
            np.stack(bounds + extra_bounds).astype(np.float32))


def densify_scene(scene, stats: GradStats, scene_scale: float, cfg: DensifyConfig,
                  seed: int, *, prune_large: bool = True, admit: Admit | None = None) -> dict:
    """Refine every block of ``scene`` (one commit); returns counts of what was done.

    ``admit`` (see the module docstring) vets the refined layout before anything is
    written; ``prune_large`` turns the too-large pruning on."""
    cap = scene.block_capacity
    nb = scene.num_blocks
    with scene.writer() as w:
        growth, why = "done", None
        rows, done = _refined_rows(scene, w, stats, scene_scale, cfg, seed, True, prune_large)
        if admit is not None:
            why = admit(*refined_layout(scene, rows))
            if why is not None:
                growth = "refused"
                rows, done = _refined_rows(scene, w, stats, scene_scale, cfg, seed, False,
                                           prune_large)
                if admit(*refined_layout(scene, rows)) is not None:
                    growth = "skipped"
                    rows = None
                    done = dict.fromkeys(done, 0)
                    done["changed"] = set()
        changed = done.pop("changed")
        done["growth"] = growth
        done["blocks_written"] = 0
        if why is not None:
            done["refused_because"] = why
        if rows is not None and changed:
            for b in sorted(changed):  # unchanged blocks keep their files
                ids2, rec2 = rows.get(b, (np.zeros(0, np.int64), None))
                if not len(ids2):
                    if scene.block_counts[b]:
                        w.free_block(b)
                        done["freed_blocks"] += 1
                    continue
                w.write_block(b, ids2[:cap], rec2[:cap])
                done["blocks_written"] += 1
                for lo in range(cap, len(ids2), cap):
                    w.new_block(ids2[lo:lo + cap], rec2[lo:lo + cap])
                    done["new_blocks"] += 1
            w.commit()
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


def _compact(rows: dict, block_size: int, done: dict, changed: set | None = None) -> None:
    """Merge each block into its predecessor (in block order) when both fit one block_size
    (both are then ``changed``)."""
    prev = None
    for b in sorted(rows):
        ids, rec = rows[b]
        if prev is not None and len(rows[prev][0]) + len(ids) <= block_size and len(ids):
            pi, pr = rows[prev]
            rows[prev] = (np.concatenate([pi, ids]), np.concatenate([pr, rec]))
            rows[b] = (np.zeros(0, np.int64), rec[:0])
            done["merged_blocks"] += 1
            if changed is not None:
                changed.update((prev, b))
            continue
        if len(ids):
            prev = b
