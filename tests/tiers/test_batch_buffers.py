"""Batch buffers reused by the tiered reader and the loader: the same bytes as fresh
buffers, every batch, deterministic; a batch (or a view or tensor of it) that is still
held is never overwritten; idle buffers stay within what the budget charges."""

import gc

import numpy as np
import pytest
import torch

from helpers import opened, policy_packs, sampled_store
from oocstore.budget import MemoryBudget
from oocstore.loader import NodeLoader
from oocstore.tiers.reader import TieredReader, advise_huge_pages


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    packs = policy_packs({"p": "static", "b": "belady"}, cpu_cache=300 * 64, max_disk_blowup=64)
    yield from opened(sampled_store(tmp_path_factory.mktemp("bufs") / "s",
                                    dict(fanouts="4,4", batch_size=128, epochs=2, seed=0),
                                    packs=packs, nodes=3000, avg_degree=8), readonly=False)


def _oracle(store, reader, epoch):
    feats = np.asarray(store.array("features"))
    return [feats[reader.plan.read_batch(epoch, b).input_nodes]
            for b in range(reader.num_batches(epoch))]


@pytest.mark.parametrize("pack", ["p", "b"])
def test_pooled_batches_equal_fresh_ones_and_held_batches_stay_intact(store, pack):
    with TieredReader(store, pack) as reader:
        for epoch in range(2):
            want = _oracle(store, reader, epoch)
            # dropped at once: buffers are reused, bytes are those of a fresh buffer
            for b, w in enumerate(want):
                x = reader.read_batch(epoch, b)
                assert np.array_equal(x, w)
                if pack == "p":  # (a scheduled tier would replay the epoch for a re-read)
                    fresh = np.empty_like(w)
                    reader.read_batch(epoch, b, out=fresh)
                    assert np.array_equal(fresh, w)
                del x
            assert reader._pool.reused > 0
            # held: every batch, a view of one and a tensor of another survive later reads
            held = [reader.read_batch(epoch, b) for b in range(len(want))]
            view = held[0][1:3]
            tensor = torch.from_numpy(held[1])
            del held[:2]
            gc.collect()
            for b in range(len(want)):  # more reads that could reuse a released buffer
                reader.read_batch(epoch, b)
            assert np.array_equal(view, want[0][1:3])
            assert torch.equal(tensor, torch.from_numpy(want[1]))
            for b, x in enumerate(held, start=2):
                assert np.array_equal(x, want[b])
            del held, view, tensor


def test_idle_buffers_bounded_and_freed_on_close(store):
    with TieredReader(store, "p") as reader:
        reader.keep_batch_buffers(3)
        pool = reader._pool
        assert len(pool._free) == 3 and pool.allocated == 3  # made up front
        held = [reader.read_batch(0, b) for b in range(6)]
        assert pool.allocated == 6
        del held
        gc.collect()
        assert len(pool._free) == 3  # the others were freed, not kept
    assert pool._free == []


def test_loader_batches_exact_with_reused_buffers(store):
    feats = np.asarray(store.array("features"))
    budget = MemoryBudget(cpu=64 << 20)
    with NodeLoader(store, pack="p", budget=budget) as loader:
        keep = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            for i, batch in enumerate(loader):
                assert torch.equal(batch.x, torch.from_numpy(feats[batch.input_nodes]))
                if i % 3 == 0:
                    keep.append((batch.x, feats[batch.input_nodes]))
        assert loader.reader._pool.reused > 0
        assert loader.reader._pool.keep == loader.prefetch + 2
    for x, w in keep:  # batches kept by the training loop were never overwritten
        assert torch.equal(x, torch.from_numpy(w))


def test_huge_page_advice_only_inside_the_array():
    small = np.empty(1000, np.float32)
    assert advise_huge_pages(small) is False  # under two huge pages: nothing to advise
    big = np.zeros((3 << 20) // 4 * 4, np.float32)
    advise_huge_pages(big)  # accepted or not (kernel setting), the contents are kept
    assert not big.any()


def test_two_segments_read_ahead_exact_in_any_order_and_charged(store):
    feats = np.asarray(store.array("features"))
    with TieredReader(store, "p") as reader:  # no budget: both read-ahead buffers taken
        seg = reader.segments
        assert seg.ahead == 2 and seg.nbytes == 3 * seg.buffer_bytes
        order = list(range(reader.num_batches(0))) + [5, 2, 3, 0, 1]  # then out of order
        for b in order:
            want = feats[reader.plan.read_batch(0, b).input_nodes]
            assert np.array_equal(reader.read_batch(0, b), want), b
            # every buffer is the current one (none once released), a spare or filling:
            # none lost or shared
            bufs = [x for x in (seg._buf, *seg._free, *(p[2] for p in seg._pending))
                    if x is not None]
            assert len(bufs) == 3 and len({id(x) for x in bufs}) == 3
    # a budget with room for one spare only takes one
    with TieredReader(store, "p") as probe:
        need = probe.accountant.charged("cpu") - probe.segments.buffer_bytes
    with TieredReader(store, "p", budget=MemoryBudget(cpu=need)) as one:
        assert one.segments.ahead == 1
        for b in range(one.num_batches(0)):
            want = feats[one.plan.read_batch(0, b).input_nodes]
            assert np.array_equal(one.read_batch(0, b), want)
    assert one.accountant.charged("cpu") == 0  # every charge released on close
