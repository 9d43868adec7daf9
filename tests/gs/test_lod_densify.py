"""Densification of a scene with a level-of-detail hierarchy: leaves refined, the
hierarchy rebuilt locally, one commit (oocstore.gs.lod_densify)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from oocstore.gs import layout
from oocstore.gs.densify import DensifyConfig, GradStats, decide, densify_scene
from oocstore.gs.lod import hierarchy_problems, merge_groups
from oocstore.gs.lod_build import build_lod_scene
from oocstore.gs.scene import Scene
from oocstore.samplers.views import lod_cut
from oocstore.store.catalog import Catalog

from test_stream import DEG, strip_scene

P = layout.param_width(DEG)
SCALE = 10.0  # scene scale: leaves (scales 0.08..0.2) below 0.15 clone, above split
CFG = DensifyConfig(grow_grad2d=0.5, grow_scale3d=0.015, prune_opa=0.3)


@pytest.fixture(scope="module")
def lod_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("loddensify")
    src, cams = strip_scene(root / "src")
    scene = build_lod_scene(src, root / "lod")
    src.close()
    g = np.random.default_rng(3)
    with scene.writer() as w:  # trained-looking moments (the build zeroes them)
        for b in range(scene.num_blocks):
            ids, rec = scene.read_block(b)
            rec = rec.copy()
            rec[:, P:] = g.uniform(0.1, 1.0, (len(ids), 2 * P))
            w.write_block(b, ids, rec)
        w.commit()
    h = scene.hierarchy()
    leaves = h.ids[h.is_leaf]
    stats = GradStats(scene.next_id)
    hot = g.choice(leaves, len(leaves) // 8, replace=False)
    stats.grad[hot], stats.count[hot] = 1.0, 1
    scene.close()
    return root / "lod", cams, stats


def _files(path):  # lock.mdb: LMDB's reader table, not the data
    return {p: p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock") and p.name != "lock.mdb"}


def _copy_stats(stats):
    out = GradStats(len(stats.grad))
    out.grad[:], out.count[:] = stats.grad, stats.count
    return out


def _ancestors(parent, nodes):
    out = set()
    for i in nodes:
        j = parent[i]
        while j >= 0 and j not in out:
            out.add(int(j))
            j = parent[j]
    return out


def _rows(scene):
    ids, rec = scene.read_all()
    return dict(zip(ids.tolist(), rec))


def test_densify_refines_leaves_and_rebuilds_the_hierarchy_locally(lod_scene, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(lod_scene[0], path)
    cams = lod_scene[1]
    with Scene.open(path) as scene:
        h0 = scene.hierarchy()
        before = _rows(scene)
        leaves = np.flatnonzero(h0.is_leaf)
        d = decide(np.stack([before[int(i)] for i in h0.ids[leaves]]),
                   lod_scene[2].average(h0.ids[leaves]), DEG, SCALE, CFG)
        first_new = scene.next_id
        done = densify_scene(scene, _copy_stats(lod_scene[2]), SCALE, CFG, seed=5)
        assert scene.hierarchy() is not h0  # the cached hierarchy was read again
    assert done["cloned"] == d.clone.sum() > 0 and done["split"] == d.split.sum() > 0
    assert done["pruned"] == d.prune.sum() > 0 and done["growth"] == "done"
    assert done["remerged_nodes"] > 0
    with Scene.open(path, readonly=True) as scene:
        assert hierarchy_problems(scene.store) == []
        h = scene.hierarchy()
        after = _rows(scene)
        is_leaf = h.is_leaf
        # leaves: pruned gone, one new id per clone and split, each under the original's parent
        pruned = set(h0.ids[leaves[d.prune]].tolist())
        assert not pruned & set(h.ids.tolist())
        new = h.ids[h.ids >= first_new]
        assert len(new) == d.clone.sum() + d.split.sum() and is_leaf[h.ids >= first_new].all()
        pid = dict(zip(h.ids.tolist(), np.where(h.parent >= 0, h.ids[h.parent], -1).tolist()))
        pid0 = dict(zip(h0.ids.tolist(), np.where(h0.parent >= 0, h0.ids[h0.parent], -1).tolist()))
        grown = h0.ids[leaves[d.clone | d.split]]
        assert sorted(pid[int(i)] for i in new) == sorted(pid0[int(i)] for i in grown)
        # untouched interior nodes keep parameters and moments bit for bit
        dirty = {int(h0.ids[j]) for j in _ancestors(h0.parent, leaves[d.clone | d.split | d.prune])}
        interior0 = set(h0.ids[~h0.is_leaf].tolist())
        untouched = interior0 - dirty
        assert untouched and all(np.array_equal(after[i], before[i]) for i in untouched)
        # a re-merged ancestor is merge_groups of its current children; moments zeroed
        index = {int(i): k for k, i in enumerate(h.ids)}
        remerged = dirty & set(h.ids.tolist())
        assert len(remerged) == done["remerged_nodes"]
        for i in remerged:
            kids = np.flatnonzero(h.parent == index[i])
            crec = np.stack([after[int(h.ids[k])] for k in kids])
            want, size = merge_groups(crec[:, :P], np.zeros(len(kids), np.int64), 1, h.size[kids])
            np.testing.assert_allclose(after[i][:P], want[0], rtol=2e-5, atol=2e-6)
            assert not after[i][P:].any()
            assert h.size[index[i]] == pytest.approx(size[0], rel=1e-6)
        # spheres nest, sizes do not grow toward the leaves
        has = np.flatnonzero(h.parent >= 0)
        p = h.parent[has]
        gap = np.linalg.norm(h.centers[has] - h.centers[p], axis=1) + h.radius[has]
        assert (gap <= h.radius[p] * (1 + 1e-5) + 1e-6).all()
        assert (h.size[has] <= h.size[p] * (1 + 1e-6)).all()
        # every camera's cut holds one node of every root-to-leaf path
        for v in range(len(cams)):
            cut = lod_cut(h, cams.viewmats[v], cams.Ks[v], 3.0, is_leaf=is_leaf)
            for leaf in np.flatnonzero(is_leaf):
                path_nodes = [leaf] + sorted(_ancestors(h.parent, [leaf]))
                assert cut[path_nodes].sum() == 1
        # ids stored where the node table says
        for k in range(len(h.ids)):
            ids, _ = scene.read_block(int(h.block[k]))
            assert ids[h.row[k]] == h.ids[k]


def test_a_skipped_densification_writes_nothing(lod_scene, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(lod_scene[0], path)
    files = _files(path)
    seen = []

    def admit(counts, bounds, hier):
        seen.append(int(counts.sum()))
        return "too big"

    with Scene.open(path) as scene:
        done = densify_scene(scene, _copy_stats(lod_scene[2]), SCALE, CFG, seed=5, admit=admit)
    assert done["growth"] == "skipped" and len(seen) == 2 and seen[1] < seen[0]
    assert files == _files(path)
    # the summary has the keys of one that wrote (all 0)
    assert done["blocks_written"] == done["new_blocks"] == done["freed_blocks"] == 0


def test_prune_only_when_growth_is_refused(lod_scene, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(lod_scene[0], path)
    with Scene.open(path) as scene:
        n0 = scene.num_gaussians
        done = densify_scene(scene, _copy_stats(lod_scene[2]), SCALE, CFG, seed=5,
                             admit=lambda c, b, h: None if c.sum() < n0 else "no growth")
        assert done["growth"] == "refused" and done["cloned"] == done["split"] == 0
        assert done["pruned"] > 0 and scene.num_gaussians < n0
        assert hierarchy_problems(scene.store) == []


def test_an_interrupted_densification_leaves_the_scene_byte_identical(lod_scene, tmp_path,
                                                                       monkeypatch):
    path = tmp_path / "s"
    shutil.copytree(lod_scene[0], path)
    files = _files(path)
    real = Catalog.commit

    def crash(self, puts, deletes=frozenset()):
        if "scene/lod" in puts:
            raise OSError("injected: power lost before the catalog commit")
        return real(self, puts, deletes)

    monkeypatch.setattr(Catalog, "commit", crash)
    with Scene.open(path) as scene:
        h0 = scene.hierarchy()
        with pytest.raises(OSError, match="injected"):
            densify_scene(scene, _copy_stats(lod_scene[2]), SCALE, CFG, seed=5)
        h1 = scene.hierarchy()  # the scene object is back at the committed state
        assert np.array_equal(h1.ids, h0.ids) and np.array_equal(h1.block, h0.block)
    assert files == _files(path)
    monkeypatch.setattr(Catalog, "commit", real)
    with Scene.open(path) as scene:  # and it densifies fine afterwards
        assert densify_scene(scene, _copy_stats(lod_scene[2]), SCALE, CFG, seed=5)["split"] > 0
        assert hierarchy_problems(scene.store) == []


def test_a_root_leaf_split_stays_two_roots(tmp_path):
    # one Gaussian: the hierarchy is that leaf alone, a root
    from oocstore.gs.cameras import Cameras

    k = (DEG + 1) ** 2
    params = layout.join_params(np.zeros((1, 3)), np.array([[1.0, 0, 0, 0]]),
                                np.log(np.full((1, 3), 0.2)), np.zeros(1), np.zeros((1, k, 3)))
    cams = Cameras(np.eye(4)[None], np.array([[[20.0, 0, 12], [0, 20, 8], [0, 0, 1]]]), 24, 16)
    src = Scene.create(tmp_path / "src", None, params, DEG, cams, block_size=4)
    scene = build_lod_scene(src, tmp_path / "lod")
    src.close()
    assert scene.hierarchy().parent.tolist() == [-1]
    stats = GradStats(scene.next_id)
    stats.grad[:], stats.count[:] = 1.0, 1
    done = densify_scene(scene, stats, 10.0, DensifyConfig(grow_scale3d=0.01), seed=0)
    assert done["split"] == 1 and done["remerged_nodes"] == 0
    h = scene.hierarchy()
    assert h.parent.tolist() == [-1, -1] and h.is_leaf.all()
    assert hierarchy_problems(scene.store) == [] and scene.lod_meta["leaves"] == 2
    scene.close()


def test_the_rebuilt_layout_vetted_is_the_one_written(lod_scene, tmp_path):
    """Growth that shrinks the block count (heavy pruning): the counts and bounds
    ``admit`` sees are exactly the scene's after the commit, freed blocks included."""
    path = tmp_path / "s"
    shutil.copytree(lod_scene[0], path)
    seen = []
    with Scene.open(path) as scene:
        nb0 = scene.num_blocks
        cfg = DensifyConfig(grow_grad2d=0.5, grow_scale3d=0.015, prune_opa=0.6)
        done = densify_scene(scene, _copy_stats(lod_scene[2]), SCALE, cfg, seed=5,
                             admit=lambda c, b, h: seen.append((c.copy(), b.copy(), h)))
        assert done["growth"] == "done" and done["freed_blocks"] > 0 and len(seen) == 1
        counts, bounds, hier = seen[0]
        assert len(counts) == scene.num_blocks == nb0
        assert np.array_equal(counts, scene.block_counts) and counts[-1] == 0
        np.testing.assert_array_equal(bounds, scene.block_bounds)
        h = scene.hierarchy()  # the hierarchy vetted: the one written, node for node
        def by_id(x):
            o = np.argsort(x.ids)
            pid = np.where(x.parent >= 0, x.ids[np.maximum(x.parent, 0)], -1)
            return [x.ids[o], pid[o], x.level[o], x.block[o], x.row[o]]

        assert all(np.array_equal(a, b) for a, b in zip(by_id(hier), by_id(h)))


def test_a_writer_closed_without_commit_drops_its_staged_arrays(lod_scene, tmp_path):
    from oocstore.gs.lod import NODES_ARRAY

    path = tmp_path / "s"
    shutil.copytree(lod_scene[0], path)
    files = _files(path)
    with Scene.open(path) as scene:
        nodes = np.array(scene.store.array(NODES_ARRAY))
        with scene.writer() as w:
            w.write_array(NODES_ARRAY, nodes[:3])
            w.put("scene/lod", {"nodes": 3})
            extra = [p.name for p in set(_files(path)) - set(files) if p.suffix == ".bin"]
            assert len(extra) == 1 and extra[0].startswith("scene-lod-nodes.")  # staged
        assert scene.lod_meta["nodes"] == len(nodes)
        with pytest.raises(Exception, match="managed by the scene writer"):
            with scene.writer() as w:
                w.put("scene", {})
    assert files == _files(path)


_OTHER_PROCESS = """
import sys
import numpy as np
from oocstore.gs.densify import DensifyConfig, GradStats, densify_scene
from oocstore.gs.scene import Scene
with Scene.open(sys.argv[1]) as scene:
    h = scene.hierarchy()
    stats = GradStats(scene.next_id)
    stats.grad[h.ids[h.is_leaf][::3]], stats.count[:] = 1.0, 1
    cfg = DensifyConfig(grow_grad2d=0.5, grow_scale3d=0.015, prune_opa=0.3)
    assert densify_scene(scene, stats, 10.0, cfg, seed=9)["split"] > 0
"""


def test_a_hierarchy_rebuilt_by_another_process_is_read_again(lod_scene, tmp_path):
    """Another process densified (and rebuilt the hierarchy) after this scene object
    read its hierarchy: the densification works on the committed one, not on the
    cached one (whose node table no longer matches the blocks)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import oocstore

    path = tmp_path / "s"
    shutil.copytree(lod_scene[0], path)
    env = dict(os.environ, PYTHONPATH=str(Path(oocstore.__file__).resolve().parents[1]))
    with Scene.open(path) as scene:
        h0 = scene.hierarchy()  # cached
        subprocess.run([sys.executable, "-c", _OTHER_PROCESS, str(path)], env=env, check=True,
                       timeout=120)
        stats = GradStats(scene.next_id)
        stats.grad[h0.ids[h0.is_leaf]], stats.count[:] = 1.0, 1
        done = densify_scene(scene, stats, SCALE, CFG, seed=5)
        assert done["cloned"] + done["split"] > 0
        assert hierarchy_problems(scene.store) == []
        ids, _ = scene.read_all()
        assert sorted(ids.tolist()) == sorted(scene.hierarchy().ids.tolist())


def test_pruning_every_leaf_is_refused_and_writes_nothing(lod_scene, tmp_path):
    """Every leaf pruned would remove every merged node too (an empty scene, which the
    next training step cannot render): refused before the first write."""
    from oocstore.errors import UsageError

    path = tmp_path / "s"
    shutil.copytree(lod_scene[0], path)
    files = _files(path)
    with Scene.open(path) as scene:
        h0, next_id = scene.hierarchy(), scene.next_id
        leaves = int(h0.is_leaf.sum())
        with pytest.raises(UsageError, match=f"would prune all {leaves} leaves.*--prune-opa"):
            densify_scene(scene, _copy_stats(lod_scene[2]), SCALE,
                          DensifyConfig(grow_grad2d=0.5, grow_scale3d=0.015, prune_opa=1.1),
                          seed=5)
        assert scene.next_id == next_id and len(scene.hierarchy().ids) == len(h0.ids)
    assert files == _files(path)
