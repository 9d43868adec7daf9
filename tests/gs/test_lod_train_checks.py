"""Training with a level-of-detail cut refuses a node table that puts a cut's node where
its id is not stored (as rendering does), instead of training without the node."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.errors import FormatError
from oocstore.gs.adam import AdamConfig
from oocstore.gs.lod import NODES_ARRAY
from oocstore.gs.lod_build import build_lod_scene
from oocstore.gs.scene import Scene
from oocstore.gs.stream import AllOnDevice, Streamer, TrainPlan
from oocstore.gs.train import train_steps
from oocstore.samplers.views import lod_views, view_order, visibility_sets
from oocstore.store import Store

from test_stream import DEG, H, STEPS, W, stream_plan, strip_scene

LOD_PX = 3.0


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """A scene whose node table claims some cut nodes in the next block (a valid row
    there, so the table's own checks pass): a cut then names blocks that lack them."""
    root = tmp_path_factory.mktemp("lodcraft")
    src, cams = strip_scene(root / "src")
    build_lod_scene(src, root / "scene").close()
    src.close()
    with Store(root / "scene", readonly=False) as store:
        nodes = np.array(store.array(NODES_ARRAY))
        with Scene.open(root / "scene", readonly=True) as scene:
            counts = np.asarray(scene.block_counts)
        nxt = (nodes[:, 3] + 1) % len(counts)
        moved = nodes[:, 4] < counts[nxt]
        moved[1::2] = False  # half of them: most cuts keep some nodes where they are
        nodes[moved, 3] = nxt[moved]
        with store.transaction() as txn:
            txn.write_array(NODES_ARRAY, nodes)
    return root / "scene", cams


def _train(path, cams, mode):
    with Scene.open(path) as scene:
        h = scene.hierarchy()  # the table's structure is valid
        vis_full = visibility_sets(scene.block_bounds, cams)
        cuts = lod_views(h, cams, vis_full, range(len(cams)), LOD_PX)
        vis = [cuts[v].blocks for v in range(len(cams))]
        views = np.resize(view_order(vis, seed=0, randomness=0.1), STEPS)
        adam = AdamConfig()
        kw = dict(device="cpu", adam=adam, lr=adam.column_lrs(DEG, 3.0),
                  accountant=BudgetAccountant(MemoryBudget(gpu=None, cpu=None)))
        if mode == "stream":
            budget = 4 * scene.block_capacity * scene.record_bytes
            plan = stream_plan(scene, cams, vis, views, budget)
            kw["device_budget"] = budget
            cls = Streamer
        else:
            plan, cls = TrainPlan(views, vis), AllOnDevice
        plan.lod_cuts = {v: lv.ids for v, lv in cuts.items()}
        if mode == "stream":
            prefix: dict = {}
            for lv in cuts.values():
                for b, k in zip(lv.blocks.tolist(), lv.prefix.tolist()):
                    prefix[b] = max(prefix.get(b, 0), k)
            plan.lod_prefix = prefix
        targets = {v: torch.zeros(H, W, 3) for v in range(len(cams))}
        with cls(scene, plan, **kw) as store:
            train_steps(store, DEG, cams, targets, len(views), device="cpu")


@pytest.mark.parametrize("mode", ["stream", "all"])
def test_a_cut_whose_nodes_are_not_in_its_blocks_is_refused_by_training(crafted, tmp_path,
                                                                        mode):
    import shutil

    path = tmp_path / "scene"
    shutil.copytree(crafted[0], path)
    with pytest.raises(FormatError, match="level-of-detail hierarchy is damaged: a view's "
                                          "cut has [0-9]+ nodes, their blocks' prefixes hold"):
        _train(path, crafted[1], mode)
