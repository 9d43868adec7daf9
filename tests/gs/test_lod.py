"""Level of detail: the hierarchy's merge rules, the cut, the store layout and format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oocstore.errors import FormatError, UsageError
from oocstore.gs import layout
from oocstore.gs.lod_build import build_lod_scene
from oocstore.gs.lod import (LOD_KEY, NODES_ARRAY, build_hierarchy, cut_params,
                             in_cut, leaf_ids, merge_groups, _covariances)
from oocstore.gs.scene import Scene, SceneMeta
from oocstore.gs.train import render_view
from oocstore.samplers.views import (camera_centre, lod_cut, lod_views, lod_working_set,
                                     visibility_sets)

from conftest import make_cameras, make_params


def _paths_hit(h, cut):
    """Per leaf: how many nodes of its root-to-leaf path the cut holds."""
    cur = np.flatnonzero(h.is_leaf)
    hits = np.zeros(len(cur), dtype=np.int64)
    while (cur >= 0).any():
        ok = cur >= 0
        hits[ok] += cut[cur[ok]]
        cur[ok] = h.parent[cur[ok]]
    return hits


@pytest.fixture(scope="module")
def lod_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("lod")
    params = make_params(3000, 1, seed=3)
    src = Scene.create(root / "src", None, params, 1, make_cameras(params, 6), block_size=256)
    out = build_lod_scene(src, root / "lod")
    src.close()
    out.close()
    return root / "src", root / "lod"


def test_merging_two_gaussians_matches_their_moments():
    g = np.random.default_rng(0)
    k = 4
    prm = layout.join_params(g.normal(size=(2, 3)), g.normal(size=(2, 4)),
                             np.log(g.uniform(0.1, 0.5, (2, 3))), g.normal(size=2),
                             g.normal(size=(2, k, 3)))
    merged = merge_groups(prm, np.zeros(2, dtype=np.int64), 1)
    alpha = 1 / (1 + np.exp(-prm[:, 10].astype(np.float64)))
    s = np.sort(np.exp(prm[:, 7:10].astype(np.float64)), axis=1)
    w = alpha * np.pi * s[:, 1] * s[:, 2]
    mu = (w[:, None] * prm[:, :3]).sum(0) / w.sum()
    d = prm[:, :3] - mu
    cov = sum(w[i] * (_covariances(prm)[i] + np.outer(d[i], d[i])) for i in range(2)) / w.sum()
    assert np.allclose(merged[0, :3], mu, atol=1e-5)
    assert np.allclose(_covariances(merged)[0], cov, rtol=1e-4, atol=1e-6)
    assert np.allclose(merged[0, 11:], (w[:, None] * prm[:, 11:]).sum(0) / w.sum(), atol=1e-5)
    # the covered area is kept: opacity x area of the merged one = the sum of the two
    sm = np.sort(np.exp(merged[0, 7:10].astype(np.float64)))
    a = 1 / (1 + np.exp(-float(merged[0, 10])))
    assert a * np.pi * sm[1] * sm[2] == pytest.approx(min((alpha * np.pi * s[:, 1] * s[:, 2]).sum(),
                                                          0.99 * np.pi * sm[1] * sm[2]), rel=1e-4)


def test_hierarchy_nests_spheres_and_ends_in_one_root():
    prm = make_params(2000, 0, seed=1)
    allp, par, level, centers, radius, size, _ = build_hierarchy(prm)
    assert np.array_equal(allp[:2000], prm)
    assert (par[:-1] >= 0).all() and par[-1] == -1  # one root, built last
    has = par >= 0
    assert (level[par[has]] > level[has]).all()
    # every child's sphere inside its parent's
    gap = np.linalg.norm(centers[has] - centers[par[has]], axis=1) + radius[has] - radius[par[has]]
    assert gap.max() <= 1e-9
    assert (size[has] <= size[par[has]]).all()  # sizes grow towards the root
    children = np.bincount(par[has], minlength=len(par))
    assert (children[2000:] >= 2).all()


def test_the_cut_holds_one_node_of_every_path_and_zero_pixels_gives_the_leaves(lod_scene):
    with Scene.open(lod_scene[1], readonly=True) as scene:
        h = scene.hierarchy()
        cams = scene.cameras
        g = np.random.default_rng(0)
        sizes = []
        for v in range(len(cams)):
            for px in (0.0, 0.5, 1.0, 4.0, 64.0):
                vm = cams.viewmats[v].copy()
                vm[:3, 3] *= g.uniform(0.5, 6)  # nearer and farther
                cut = lod_cut(h, vm, cams.Ks[v], px)
                assert (_paths_hit(h, cut) == 1).all()
                if px == 0:
                    assert np.array_equal(cut, h.is_leaf)
                sizes.append(int(cut.sum()))
        assert min(sizes) < 0.2 * max(sizes)  # far / coarse cuts are much smaller


def test_a_cut_is_a_prefix_of_each_block_and_prefix_reads_return_it(lod_scene):
    with Scene.open(lod_scene[1], readonly=True) as scene:
        h = scene.hierarchy()
        keys = h.keys
        counts = scene.block_counts
        # inside every block the rows are sorted by K, coarsest first
        for b in range(scene.num_blocks):
            k = keys[h.block == b][np.argsort(h.row[h.block == b])]
            assert (np.diff(k[np.isfinite(k)]) <= 0).all()
        cams = scene.cameras
        vis = visibility_sets(scene, None)
        vm = cams.viewmats[0].copy()
        vm[:3, 3] *= 4  # far: coarse nodes only
        cut = lod_cut(h, vm, cams.Ks[0], 2.0)
        lv = lod_working_set(h, cut, np.arange(scene.num_blocks))
        # partial reads: most of what the prefixes hold is the cut, and far less than
        # the blocks
        assert len(lv.ids) >= 0.6 * lv.rows and lv.rows < 0.75 * counts[lv.blocks].sum()
        assert len(lv.blocks) < scene.num_blocks
        # the SPT bound: a node's parent is expanded only if fx K >= px * dist(cam, box)
        cam = camera_centre(vm)
        fx = float(cams.Ks[0][0, 0])
        for b, k in zip(lv.blocks, lv.prefix):
            sel = (h.block == b) & cut
            par = h.parent[h.block == b]
            par = par[par >= 0]
            lo = (h.centers[par] - h.radius[par, None]).min(0)
            hi = (h.centers[par] + h.radius[par, None]).max(0)
            dist = np.linalg.norm(np.maximum(0, np.maximum(lo - cam, cam - hi)))
            assert (fx * keys[sel] >= 2.0 * max(dist, 0.01) * (1 - 1e-9)).all()
            ids, rec = scene.read_block(int(b), rows=int(k))
            assert len(ids) == k
            full_ids, full = scene.read_block(int(b))
            assert np.array_equal(ids, full_ids[:k]) and np.array_equal(rec, full[:k])
            assert np.array_equal(np.sort(ids[in_cut(ids, lv.ids)]), np.sort(h.ids[sel]))
        assert len(vis) == len(cams)


def test_rendering_with_zero_lod_pixels_equals_the_scene_without_hierarchy(lod_scene):
    src_path, lod_path = lod_scene
    with Scene.open(src_path, readonly=True) as src, Scene.open(lod_path, readonly=True) as lod:
        cams = src.cameras
        vs, vl = visibility_sets(src, None), visibility_sets(lod, None)
        cuts = lod_views(lod.hierarchy(), cams, vl, range(len(cams)), 0.0)
        coarse = lod_views(lod.hierarchy(), cams, vl, range(len(cams)), 8.0)
        for v in range(len(cams)):
            a = render_view(src, cams, vs[v], v, "cpu")
            b = render_view(lod, cams, vl[v], v, "cpu", cut=cuts[v])
            assert torch.allclose(a, b, atol=1e-5)
            c = render_view(lod, cams, vl[v], v, "cpu", cut=coarse[v])
            assert len(cut_params(lod, coarse[v])) < len(cut_params(lod, cuts[v]))
            assert not torch.allclose(a, c, atol=1e-3)  # the coarse cut differs


def test_format_version_2_for_new_readers_refused_by_version_1(lod_scene):
    from oocstore.store import Store
    from oocstore.store.format import versioned_from_dict

    src_path, lod_path = lod_scene
    with Store(lod_path, readonly=True) as store:
        raw = store.get("scene")
        assert raw["format_version"] == 2 and store.get(LOD_KEY)["nodes"] > 3000
    assert SceneMeta.from_dict(raw).format_version == 2
    with pytest.raises(FormatError, match="format version 2, but this oocstore reads version 1"):
        versioned_from_dict(SceneMeta, raw, kind="scene", version=1, fix="re-create it")
    with Scene.open(src_path, readonly=True) as src:  # a version 1 scene opens as before
        assert src.meta.format_version == 1 and src.lod_meta is None
        with pytest.raises(UsageError, match="gs-lod build"):
            src.hierarchy()


def test_export_writes_the_leaves_only(lod_scene, tmp_path):
    from oocstore.gs.ply import read_ply

    with Scene.open(lod_scene[1], readonly=True) as scene:
        assert scene.export_ply(tmp_path / "x.ply") == 3000
        assert len(leaf_ids(scene)) == 3000
    params, _ = read_ply(tmp_path / "x.ply")[:2]
    assert len(params) == 3000


def test_reading_a_hierarchy_with_a_parent_out_of_range_is_refused():
    from oocstore.gs.lod import read_hierarchy

    class _Store:  # the two arrays and the catalog entry, nothing else
        path = "fake"

        def get(self, key):
            return {} if key == LOD_KEY else None

        def array(self, name):
            return np.array([[0, 5, 0, 0, 0]]) if name == NODES_ARRAY else np.zeros((1, 5))

    with pytest.raises(FormatError, match="parent 5, which is out of range.*oocstore verify"):
        read_hierarchy(_Store())
