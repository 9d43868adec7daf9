"""The densification rules of one group of rows: which Gaussians to clone, split and
prune (:func:`decide`) and the rows that result (:func:`densify_block`), pure functions
shared by the block-by-block refinement (:mod:`oocstore.gs.densify`, whose docstring
states the rules) and the refinement of a level-of-detail scene's leaves
(:mod:`oocstore.gs.lod_densify`)."""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from oocstore.errors import UsageError

from . import layout


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
           cfg, *, grow: bool = True, prune_large: bool = True) -> Decision:
    """The rows to clone, split and prune under ``cfg`` (a
    :class:`~oocstore.gs.densify.DensifyConfig`; the rules: :mod:`oocstore.gs.densify`)."""
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


def refuse_emptying(path, before: int, after: int, what: str, cfg) -> None:
    """Refuse a refinement that would prune every one of the ``before`` Gaussians
    (``what``: "Gaussians", or a hierarchy's "leaves") of a scene: an empty scene has
    nothing left to train or render, and the training step that follows fails. Called
    before anything is written."""
    if before and not after:
        raise UsageError(
            f"scene {path}: densification would prune all {before:,} {what} (opacity below "
            f"prune_opa={cfg.prune_opa} or larger than prune_scale3d={cfg.prune_scale3d} x "
            "the scene scale); nothing was written: lower --prune-opa (or raise "
            "--prune-scale3d)")

