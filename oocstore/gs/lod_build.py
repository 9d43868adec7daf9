"""Writing a scene with its level-of-detail hierarchy (``oocstore gs-lod build``): the
hierarchy itself (merging, layout, the cut) lives in :mod:`oocstore.gs.lod`, which the
scene store reads; this module joins the two (so neither imports the other back)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import UsageError
from ..store import Store
from . import layout
from .lod import (Hierarchy, LodMeta, build_hierarchy, in_cut, layout_order, leaf_ids,
                  node_table)
from .scene import PhotoSource, Scene


def build_lod_scene(src, out, *, cell: float | None = None, block_size: int | None = None,
                    overwrite: bool = False, progress: Callable[[str], None] | None = None,
                    cameras=None, fit=None, fit_progress: Callable[[int], None] | None = None):
    """Write the scene ``src`` (an open :class:`~oocstore.gs.scene.Scene`) with its
    hierarchy to a new scene at ``out`` (format version 2): the leaves keep their ids
    and parameters, interior nodes get new ids; every Adam moment starts at zero. A
    ``src`` with a hierarchy is rebuilt from its leaves (after training has moved them;
    its merged nodes are dropped). ``src`` is only read. ``cameras`` replace the
    source's (not for a scene with photographs). ``fit`` (a
    :class:`~oocstore.gs.lod_fit.FitConfig`; None or 0 steps: none) fits the merged
    nodes' opacity and colour to the leaves' renders of the training views before the
    scene is written (:mod:`oocstore.gs.lod_fit`; ``fit_progress(1)`` per step); the
    written ``scene/lod`` records its ``fit_steps``. Returns the new scene, open."""
    if cameras is not None and src.has_images:
        raise UsageError(f"scene {src.path} holds photographs: its cameras are theirs")
    # before the hierarchy and the fit (minutes to hours): what Scene.create refuses
    Store.check_new_path(out, overwrite=overwrite)
    block_size = src.meta.block_size if block_size is None else int(block_size)
    if not 1 <= block_size <= 1 << 20:
        raise UsageError(f"block_size={block_size} must be 1..1048576")
    lids, lparams = src.read_params()
    if src.lod_meta is not None:  # a rebuild: the leaves only
        keep = in_cut(lids, leaf_ids(src))
        lids, lparams = lids[keep], lparams[keep]
    prm, par, level, centers, radius, size, cell = build_hierarchy(lparams, cell=cell,
                                                                   progress=progress)
    ids = np.concatenate([lids, src.next_id + np.arange(len(prm) - len(lids))])
    hier = Hierarchy(ids, par, level, np.zeros(0), np.zeros(0), centers, radius, size)
    cams = src.cameras if cameras is None else cameras
    fit_steps = 0 if fit is None else fit.steps
    if fit_steps:
        from .lod_fit import fit_cameras, fit_interior, fit_views

        views = fit_views(len(cams), src.test_views if src.has_images else None)
        prm, report = fit_interior(prm, hier, src.sh_degree, fit_cameras(cams), views, fit,
                                   progress=fit_progress)
        if not len(views):  # every view held out: nothing was fitted, none recorded
            fit_steps = 0
        if progress:
            progress(f"fit {report['fitted_nodes']:,} merged nodes over {len(views)} views: "
                     f"MSE {report.get('mse_first', 0):.3g} -> {report.get('mse_last', 0):.3g}")
    order = layout_order(hier.keys, prm[:, layout.MEANS], block_size)
    nodes = node_table(ids, par, level, order, block_size)
    spheres = np.concatenate([centers, radius[:, None], size[:, None]],
                             axis=1)[order].astype(np.float32)
    meta = LodMeta(nodes=len(ids), leaves=len(lids), levels=int(level.max()) + 1,
                   cell=float(cell), fit_steps=int(fit_steps))
    photos = None
    if src.has_images:
        photos = PhotoSource(src.images_meta, (src.read_image(v) for v in range(src.num_images)))
    spare = ((src.meta.block_capacity - 0.5) / block_size - 1
             if block_size == src.meta.block_size else 0.25)
    return Scene.create(out, None, prm, src.sh_degree, cams, block_size, spare, moments=src.meta.moments,
                        ids=ids, overwrite=overwrite, source={"lod_of": str(src.path)},
                        photos=photos, order=order, lod=(meta, nodes, spheres))


# -- reading and checking ----------------------------------------------------------------
