"""Training with a level-of-detail cut: a node table that puts a cut's node where its id
is not stored is refused (as rendering refuses it), instead of training without the node;
the SSD read figure counts every row a prefix's write-back reads."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch

from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.errors import FormatError
from oocstore.gs.adam import AdamConfig
from oocstore.gs.lod import NODES_ARRAY
from oocstore.gs.lod_build import build_lod_scene
from oocstore.gs.scene import Scene
from oocstore.gs.stream import AllOnDevice, Streamer, TrainPlan, _CpuBlock
from oocstore.gs.train import train_steps
from oocstore.samplers.views import lod_views, view_order, visibility_sets
from oocstore.store import Store

from test_stream import DEG, H, STEPS, W, stream_plan, strip_scene

LOD_PX = 3.0


def _scene(root):
    src, cams = strip_scene(root / "src")
    build_lod_scene(src, root / "scene").close()
    src.close()
    return root / "scene", cams


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return _scene(tmp_path_factory.mktemp("lodplain"))


def _craft(root, interior_only: bool):
    """A scene whose node table claims some cut nodes in the next block (a valid row
    there, so the table's own checks pass): a cut then names blocks that lack them.
    ``interior_only``: merged nodes only, so the leaves' cuts (the synthetic targets'
    renders) stay whole; else half of all nodes, so most cuts keep some where they are."""
    path, cams = _scene(root)
    with Store(path, readonly=False) as store:
        nodes = np.array(store.array(NODES_ARRAY))
        with Scene.open(path, readonly=True) as scene:
            counts = np.asarray(scene.block_counts)
        nxt = (nodes[:, 3] + 1) % len(counts)
        moved = nodes[:, 4] < counts[nxt]
        if interior_only:
            moved &= nodes[:, 2] > 0
        else:
            moved[1::2] = False
        nodes[moved, 3] = nxt[moved]
        with store.transaction() as txn:
            txn.write_array(NODES_ARRAY, nodes)
    return path, cams


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    return _craft(tmp_path_factory.mktemp("lodcraft"), interior_only=False)


@pytest.fixture(scope="module")
def crafted_interior(tmp_path_factory):
    return _craft(tmp_path_factory.mktemp("lodcraftint"), interior_only=True)


def _plan(scene, cams, mode):
    """The plan of a few steps over the views' cuts, with each block's prefix (stream)."""
    cuts = lod_views(scene.hierarchy(), cams, visibility_sets(scene.block_bounds, cams),
                     range(len(cams)), LOD_PX)
    vis = [cuts[v].blocks for v in range(len(cams))]
    views = np.resize(view_order(vis, seed=0, randomness=0.1), STEPS)
    budget = 4 * scene.block_capacity * scene.record_bytes
    plan = stream_plan(scene, cams, vis, views, budget) if mode == "stream" else \
        TrainPlan(views, vis)
    plan.lod_cuts = {v: lv.ids for v, lv in cuts.items()}
    if mode == "stream":
        prefix: dict = {}
        for lv in cuts.values():
            for b, k in zip(lv.blocks.tolist(), lv.prefix.tolist()):
                prefix[b] = max(prefix.get(b, 0), k)
        plan.lod_prefix = prefix
    return plan, budget


def _store(scene, cams, mode):
    plan, budget = _plan(scene, cams, mode)
    adam = AdamConfig()
    kw = dict(device="cpu", adam=adam, lr=adam.column_lrs(DEG, 3.0),
              accountant=BudgetAccountant(MemoryBudget(gpu=None, cpu=None)))
    if mode == "stream":
        return Streamer(scene, plan, device_budget=budget, **kw)
    return AllOnDevice(scene, plan, **kw)


def _train(path, cams, mode):
    with Scene.open(path) as scene:
        targets = {v: torch.zeros(H, W, 3) for v in range(len(cams))}
        with _store(scene, cams, mode) as store:
            train_steps(store, DEG, cams, targets, len(store.plan.views), device="cpu")


@pytest.mark.parametrize("mode", ["stream", "all"])
def test_a_cut_whose_nodes_are_not_in_its_blocks_is_refused_by_training(crafted, tmp_path,
                                                                        mode):
    path = tmp_path / "scene"
    shutil.copytree(crafted[0], path)
    with pytest.raises(FormatError, match="level-of-detail hierarchy is damaged: a view's "
                                          "cut has [0-9]+ nodes, their blocks' prefixes hold"):
        _train(path, crafted[1], mode)


def test_a_prefix_write_back_counts_the_rows_it_reads(plain, tmp_path):
    """Writing a dirty prefix back reads its whole block (a block is read from its first
    row); the streamer's SSD read figure counts all of it."""
    path = tmp_path / "scene"
    shutil.copytree(plain[0], path)
    with Scene.open(path) as scene:
        counts = np.asarray(scene.block_counts)
        read_block, reads, me = scene.read_block, [], threading.get_ident()

        def spy(blk, rows=None):
            ids, rec = read_block(blk, rows=rows)
            if threading.get_ident() == me:  # not the streamer's prefetch thread
                reads.append(len(ids))
            return ids, rec

        with _store(scene, plain[1], "stream") as store:
            prefix = store.plan.lod_prefix
            b = next(b for b, k in prefix.items() if 0 < k < counts[b])  # a partial prefix
            ids, rec = read_block(b, rows=prefix[b])
            scene.read_block = spy
            before = store.traffic.bytes_ssd_read
            store._write(b, _CpuBlock(ids, rec, True))
            counted = store.traffic.bytes_ssd_read - before
            during = list(reads)
    assert during == [counts[b]]  # the whole block, its prefix included
    assert counted == counts[b] * scene.disk_row_bytes


@pytest.mark.parametrize("mode", ["stream", "all-on-device"])
def test_gs_train_refuses_a_damaged_cut_before_its_first_write(crafted_interior, tmp_path,
                                                               capsys, mode):
    """gs-train matches every used view's cut against its blocks' prefixes before the
    synthetic run writes its student: the refused run leaves the scene byte-identical."""
    from helpers import tree_bytes
    from oocstore.cli import main

    path = tmp_path / "scene"
    shutil.copytree(crafted_interior[0], path)
    before = tree_bytes(path, skip=())
    before.pop("catalog.lmdb/lock.mdb", None)
    assert main(["gs-train", str(path), "--steps", "2", "--mode", mode, "--lod-pixels",
                 str(LOD_PX), "--threads", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "level-of-detail hierarchy is damaged" in err[0], err
    after = tree_bytes(path, skip=())
    after.pop("catalog.lmdb/lock.mdb", None)
    assert after == before
