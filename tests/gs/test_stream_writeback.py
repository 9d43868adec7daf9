"""The streamer's SSD read figure counts every row a dirty block's write-back reads: with
level-of-detail prefix reads, writing a prefix back reads its whole block (the rest of
the block, which no step touched, goes back with it)."""

from __future__ import annotations

import shutil
import threading

import numpy as np

from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.gs.adam import AdamConfig
from oocstore.gs.scene import Scene
from oocstore.gs.stream import Streamer, _CpuBlock

from test_lod_train import lod_setup  # noqa: F401 (the fixture)
from test_stream import DEG, stream_plan


def test_a_prefix_write_back_counts_the_rows_it_reads(lod_setup, tmp_path):  # noqa: F811
    base, cams, vis, plan_views, _, cut_ids, prefix = lod_setup
    path = tmp_path / "scene"
    shutil.copytree(base, path)
    adam = AdamConfig()
    with Scene.open(path) as scene:
        budget = 4 * scene.block_capacity * scene.record_bytes
        plan = stream_plan(scene, cams, vis, plan_views, budget)
        plan.lod_cuts, plan.lod_prefix = cut_ids, prefix
        counts = np.asarray(scene.block_counts)
        b = next(b for b, k in prefix.items() if 0 < k < counts[b])  # a partial prefix
        read_block, reads, me = scene.read_block, [], threading.get_ident()

        def spy(blk, rows=None):
            ids, rec = read_block(blk, rows=rows)
            if threading.get_ident() == me:  # not the streamer's prefetch thread
                reads.append(len(ids))
            return ids, rec

        with Streamer(scene, plan, device="cpu", adam=adam, lr=adam.column_lrs(DEG, 3.0),
                      device_budget=budget,
                      accountant=BudgetAccountant(MemoryBudget(gpu=None, cpu=None))) as store:
            ids, rec = read_block(b, rows=prefix[b])
            scene.read_block = spy
            before = store.traffic.bytes_ssd_read
            store._write(b, _CpuBlock(ids, rec, True))
            counted = store.traffic.bytes_ssd_read - before
            during = list(reads)
    assert during == [counts[b]]  # the whole block, its prefix included
    assert counted == counts[b] * scene.disk_row_bytes
