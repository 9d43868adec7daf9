"""Densification of a scene with a level-of-detail hierarchy (:mod:`oocstore.gs.lod`).

The 3DGS rules (:func:`oocstore.gs.densify.decide`, :func:`~oocstore.gs.densify.densify_block`)
decide on the **leaves only**: merged nodes are never cloned, split or pruned. A clone's
copy and a split's two halves take the original leaf's parent (a root leaf's stay roots);
a pruned leaf leaves its parent. The hierarchy is then **rebuilt locally**
(:func:`~oocstore.gs.lod.rebuild_local`): every ancestor of a changed leaf is merged again
from its current children, with zeroed moments, and one left without children is removed;
the other merged nodes keep their trained rows. The nodes are laid out again
(:func:`~oocstore.gs.lod.layout_order`, blocks of ``block_size``) and the node table
rewritten.

**Budget.** The rebuilt layout goes to the caller's ``admit`` before anything is written,
as for a scene without a hierarchy, with a third argument: ``admit(counts, bounds,
hierarchy)``, the rebuilt :class:`~oocstore.gs.lod.Hierarchy` (blocks and rows as they
will be written), whose cuts decide what the following segments load. Growth refused ->
the leaves are pruned only -> refused again: nothing is written (``growth`` ``"done"``,
``"refused"``, ``"skipped"``). Pruning every leaf (which would remove every merged node
too) is refused before anything is written, as an emptied scene without a hierarchy is.

**One commit.** The changed blocks, the node table and spheres and the ``scene/lod``
entry are staged in one :class:`~oocstore.gs.writer.SceneWriter` and made visible by its
single catalog commit: an interruption before it leaves the previous scene (blocks and
hierarchy) as it was. Blocks whose rows come out identical keep their files.

**Memory.** The rebuild holds every node's record in host memory (the layout is global:
a node may move to any block), and its copies: the records as read, the refined leaves,
the rebuilt nodes, the merge's float64 intermediates, and a prune-only retry beside the
refused proposal. :func:`host_bytes` bounds the peak at :data:`HOST_FACTOR` x
``scene.num_gaussians x scene.record_bytes`` (measured with tracemalloc on 26,398 nodes:
6.1x for a refinement that grew, 6.7x for one refused and retried with pruning only);
``gs-train`` charges it to the host budget before it starts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import FormatError
from . import layout
from .refine import decide, densify_block, refuse_emptying
from .lod import (LOD_KEY, NODES_ARRAY, SPHERES_ARRAY, Hierarchy, LodMeta, layout_order,
                  node_table, rebuild_local)


#: Peak host memory of :func:`densify_lod_scene` over the scene's float32 records.
HOST_FACTOR = 8


def host_bytes(scene) -> int:
    """Host memory a densification of ``scene`` holds at its peak (see the module
    docstring)."""
    return HOST_FACTOR * scene.num_gaussians * scene.record_bytes


#: What :func:`_write` counts (0 in the summary of a refinement that wrote nothing).
WRITE_COUNTS = ("blocks_written", "new_blocks", "freed_blocks")


def _read_nodes(scene, h) -> np.ndarray:
    """Every node's record [N, W] in the hierarchy's order (its block and row)."""
    parts, start = [], np.zeros(scene.num_blocks + 1, dtype=np.int64)
    ids_all = []
    for b in range(scene.num_blocks):
        ids, rec = scene.read_block(b)
        ids_all.append(ids)
        parts.append(rec)
        start[b + 1] = start[b] + len(ids)
    ids_all = np.concatenate(ids_all) if ids_all else np.zeros(0, np.int64)
    pos = start[h.block] + h.row
    if len(pos) != len(ids_all) or not np.array_equal(ids_all[pos], h.ids):
        raise FormatError(f"scene {scene.path}: level-of-detail hierarchy is damaged: its node "
                          "table does not match the ids stored in the blocks; run `oocstore "
                          "verify`, rebuild it with `oocstore gs-lod build`")
    return np.concatenate(parts)[pos]


def _refine(scene, h, rec, stats, args, w, grow: bool):
    """The rebuilt hierarchy after the leaves' refinement, and what was done."""
    scene_scale, cfg, seed, prune_large = args
    leaves = np.flatnonzero(h.is_leaf)
    d = decide(rec[leaves], stats.average(h.ids[leaves]), scene.sh_degree, scene_scale, cfg,
               grow=grow, prune_large=prune_large)
    n = int(d.clone.sum() + d.split.sum())
    new_ids = w.allocate_ids(n) if n else np.zeros(0, np.int64)
    ids2, rec2 = densify_block(h.ids[leaves], rec[leaves], d, new_ids, scene.sh_degree,
                               np.random.default_rng([seed, 0]))
    kept = leaves[~d.prune]
    rec = rec.copy()
    rec[kept] = rec2[:len(kept)]
    keep = np.ones(len(h.ids), dtype=bool)
    keep[leaves[d.prune]] = False
    changed = np.zeros(len(h.ids), dtype=bool)
    changed[leaves[d.split]] = True
    new_parent = np.concatenate([h.parent[leaves[d.clone]], h.parent[leaves[d.split]]])
    rb = rebuild_local(h, rec, scene.param_width, keep, changed, ids2[len(kept):],
                       rec2[len(kept):], new_parent)
    done = {"cloned": int(d.clone.sum()), "split": int(d.split.sum()),
            "pruned": int(d.prune.sum()), "remerged_nodes": rb.remerged,
            "removed_nodes": rb.removed, **dict.fromkeys(WRITE_COUNTS, 0)}
    return rb, done


def _layout(scene, rb):
    """``(order, (counts [B'], bounds [B', 2, 3], hierarchy))`` of the rebuilt nodes in
    blocks of ``block_size`` (B' at least the scene's block count: the blocks past the
    new layout empty; the hierarchy with each node's block and row)."""
    from .blocks import block_bounds_of

    bs = scene.meta.block_size
    order = layout_order(rb.keys, rb.records[:, layout.MEANS], bs)
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    hier = Hierarchy(rb.ids, rb.parent, rb.level, pos // bs, pos % bs, rb.centers, rb.radius,
                     rb.size)
    nb = -(-len(order) // bs)
    empty = block_bounds_of(np.zeros((0, scene.param_width), np.float32))
    counts, bounds = [], []
    for k in range(max(nb, scene.num_blocks)):
        sel = order[k * bs:(k + 1) * bs]
        counts.append(len(sel))
        bounds.append(block_bounds_of(rb.records[sel, :scene.param_width]) if len(sel)
                      else empty)
    return order, (np.array(counts, dtype=np.int64), np.stack(bounds).astype(np.float32), hier)


def _write(scene, w, rb, order) -> dict:
    """Stage the blocks (unchanged ones keep their files), the node table, the spheres
    and the ``scene/lod`` entry in ``w`` (not committed)."""
    bs, old_blocks = scene.meta.block_size, scene.num_blocks
    nb = -(-len(order) // bs)
    out = dict.fromkeys(WRITE_COUNTS, 0)
    for k in range(nb):
        sel = order[k * bs:(k + 1) * bs]
        ids, rec = rb.ids[sel], rb.records[sel]
        if k < old_blocks:
            ids0, rec0 = scene.read_block(k)
            if np.array_equal(ids0, ids) and np.array_equal(rec0, rec):
                continue
            w.write_block(k, ids, rec)
            out["blocks_written"] += 1
        else:
            if w.new_block(ids, rec) != k:  # blocks are added at the end, in order
                raise RuntimeError(f"scene {scene.path}: a new block is not block {k}")
            out["new_blocks"] += 1
    for k in range(nb, old_blocks):
        if scene.block_counts[k]:
            w.free_block(k)
            out["freed_blocks"] += 1
    nodes = node_table(rb.ids, rb.parent, rb.level, order, bs)
    spheres = np.concatenate([rb.centers, rb.radius[:, None], rb.size[:, None]],
                             axis=1)[order].astype(np.float32)
    fields = {f.name for f in dataclasses.fields(LodMeta)}
    old = LodMeta(**{k: v for k, v in scene.lod_meta.items() if k in fields})
    has_child = np.zeros(len(rb.ids), dtype=bool)
    has_child[rb.parent[rb.parent >= 0]] = True
    meta = dataclasses.replace(old, nodes=len(rb.ids), leaves=int((~has_child).sum()),
                               levels=int(rb.level.max(initial=0)) + 1)
    w.write_array(NODES_ARRAY, nodes)
    w.write_array(SPHERES_ARRAY, spheres)
    w.put(LOD_KEY, meta.to_dict())
    return out


def densify_lod_scene(scene, stats, scene_scale: float, cfg, seed: int, *,
                      prune_large: bool = True, admit=None) -> dict:
    """:func:`oocstore.gs.densify.densify_scene` for a scene with a hierarchy (see the
    module docstring): one commit; returns counts of what was done."""
    args = (scene_scale, cfg, seed, prune_large)
    scene.hierarchy(what="densification")  # refused before the lock without one
    with scene.writer() as w:
        # read again under the lock: opening the writer reloads the scene, and another
        # process may have committed a rebuilt hierarchy since this one was cached
        h = scene.hierarchy(what="densification")
        rec = _read_nodes(scene, h)
        growth, why = "done", None
        rb, done = _refine(scene, h, rec, stats, args, w, True)
        # pruning does not depend on growth: the prune-only pass would empty it too
        refuse_emptying(scene.path, int(h.is_leaf.sum()), len(rb.ids), "leaves", cfg)
        order, proposal = _layout(scene, rb)
        if admit is not None:
            why = admit(*proposal)
            if why is not None:
                growth = "refused"
                rb, done = _refine(scene, h, rec, stats, args, w, False)
                order, proposal = _layout(scene, rb)
                if admit(*proposal) is not None:
                    growth, rb = "skipped", None
                    done = dict.fromkeys(done, 0)
        if rb is not None and (done["cloned"] or done["split"] or done["pruned"]):
            done.update(_write(scene, w, rb, order))
            w.commit()
        done["growth"] = growth
        if why is not None:
            done["refused_because"] = why
    stats.resize(scene.next_id)
    stats.reset()
    return done
