"""The staging ring (reuse only after the copy that read a slot is done), the device
charges of a CUDA loader, and the ring path of the tiered reader on the CPU."""

import gc
import queue
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.tiers import TieredReader
from oocstore.tiers.staging import (CUDA_BLOCK_SLACK, StagingRing, choose_depth,
                                    device_batch_bytes, device_batches_held, device_charges)


class FakeEvent:
    """A copy's completion, set by the test (or by a fake copy engine)."""

    def __init__(self):
        self._done = threading.Event()
        self.waited = 0

    def query(self):
        return self._done.is_set()

    def synchronize(self):
        self.waited += 1
        self._done.wait()

    def complete(self):
        self._done.set()


def test_slots_come_round_robin_and_a_slot_is_reused_only_after_its_copy():
    ring = StagingRing(2, rows=4, feat_dim=3, dtype=np.float32)
    assert ring.nbytes == 2 * 4 * 3 * 4 and not ring.pinned
    s0, v0 = ring.acquire(4)
    v0[:] = 1
    e0 = FakeEvent()
    ring.release(s0, e0)
    s1, v1 = ring.acquire(2)
    assert (s0, s1) == (0, 1) and v1.shape == (2, 3) and v1.flags.c_contiguous
    assert not np.shares_memory(v0, v1)
    e1 = FakeEvent()
    ring.release(s1, e1)
    assert ring.in_flight() == 2
    # Slot 0 comes round again while its copy is pending: acquire waits on that copy.
    threading.Timer(0.05, e0.complete).start()
    t0 = time.perf_counter()
    s2, v2 = ring.acquire(4)
    assert s2 == 0 and e0.waited == 1 and time.perf_counter() - t0 >= 0.04
    assert ring.stats()["waits"] == 1 and ring.stats()["wait_s"] > 0
    assert e1.waited == 0  # only the slot being reused is waited for
    ring.release(s2)  # no event: free at once
    e1.complete()
    s3, _ = ring.acquire(1)
    assert s3 == 1 and e1.waited == 0  # already complete: no wait
    ring.release(s3)
    assert ring.stats()["acquires"] == 4 and ring.stats()["waits"] == 1
    ring.close()


def test_a_held_slot_is_never_handed_out_twice_and_sizes_are_checked():
    ring = StagingRing(1, rows=4, feat_dim=2, dtype=np.float16)
    slot, _ = ring.acquire(3)
    with pytest.raises(RuntimeError, match="still held"):
        ring.acquire(1)
    ring.release(slot)
    with pytest.raises(RuntimeError, match="not held"):
        ring.release(slot)
    with pytest.raises(ValueError, match="largest batch"):
        ring.acquire(5)
    with pytest.raises(ValueError, match="at least one slot"):
        StagingRing(0, rows=1, feat_dim=1, dtype=np.float32)
    ring.close()


def test_kept_objects_live_until_the_copy_is_done():
    ring = StagingRing(1, rows=2, feat_dim=2, dtype=np.float32)

    class Index:
        pass

    idx = Index()
    ref = weakref.ref(idx)
    slot, _ = ring.acquire(2)
    ev = FakeEvent()
    ring.release(slot, ev, keep=(idx,))
    del idx
    gc.collect()
    assert ref() is not None  # the copy may still read it
    ev.complete()
    slot, _ = ring.acquire(2)
    gc.collect()
    assert ref() is None
    ring.release(slot)
    ring.close()


def test_close_waits_for_copies_in_flight_and_is_idempotent():
    ring = StagingRing(3, rows=2, feat_dim=2, dtype=np.float32)
    events = []
    for _ in range(3):
        slot, _ = ring.acquire(2)
        events.append(FakeEvent())
        ring.release(slot, events[-1])
    for e in events:
        threading.Timer(0.02, e.complete).start()
    ring.close()
    assert all(e.query() and e.waited == 1 for e in events)
    ring.close()
    assert ring.closed
    with pytest.raises(RuntimeError, match="closed"):
        ring.acquire(1)


@pytest.mark.parametrize("slots", [1, 2, 4])
def test_asynchronous_copies_never_see_a_slot_overwritten(slots):
    """A fake copy engine (one worker: copies complete in issue order, like one CUDA
    stream) copies each slot some time after it was released; every copy must see
    exactly the batch that was staged for it."""
    rng = np.random.default_rng(slots)
    ring = StagingRing(slots, rows=64, feat_dim=8, dtype=np.float32)
    work: queue.Queue = queue.Queue()
    results = {}

    def engine():
        while True:
            item = work.get()
            if item is None:
                return
            b, view, ev = item
            time.sleep(float(rng.uniform(0, 0.002)))  # the copy takes a while
            results[b] = view.copy()
            ev.complete()

    t = threading.Thread(target=engine)
    t.start()
    expected = {}
    for b in range(40):
        n = int(rng.integers(1, 65))
        slot, view = ring.acquire(n)
        view[:] = b + rng.random((n, 8), dtype=np.float32)
        expected[b] = view.copy()
        ev = FakeEvent()
        work.put((b, view, ev))
        ring.release(slot, ev)
    work.put(None)
    t.join()
    ring.close()
    for b, rows in expected.items():
        np.testing.assert_array_equal(results[b], rows)


def test_device_charges_count_every_batch_on_the_device():
    rows, rb, seeds = 10_000, 512, 1024
    per = device_batch_bytes(rows, rb, seeds)
    assert per == rows * rb + seeds * 8 + CUDA_BLOCK_SLACK  # both multiples of 512 here
    assert device_batches_held(0) == 2 and device_batches_held(4) == 7
    # No GPU tier on the device: only the batches.
    items = device_charges(largest_batch_rows=rows, row_bytes=rb, max_seeds=seeds, prefetch=2,
                           gpu_tier_rows=0)
    assert len(items) == 1 and items[0][1] == 5 * per and "5 device batches" in items[0][0]
    # A GPU tier on the device: the reader already charged one batch's rows; the gather
    # scratch is bounded by the smaller of the batch and the tier.
    items = dict(device_charges(largest_batch_rows=rows, row_bytes=rb, max_seeds=seeds,
                                prefetch=0, gpu_tier_rows=300, already_charged=rows * rb))
    assert items["2 device batches (1 being read + 1 with the training loop)"] == 2 * per - rows * rb
    # 300 x 8 B of indices round up to 2560 B (the allocator's 512 B granularity)
    assert items["gpu-tier gather scratch"] == 300 * rb + 2 * 2560 + CUDA_BLOCK_SLACK
    assert items["allocator rounding of the gpu tier"] == CUDA_BLOCK_SLACK


def test_choose_depth_takes_the_largest_that_fits():
    assert choose_depth(lambda d: d <= 2, None, 4) == 2
    assert choose_depth(lambda d: True, None, 4) == 4
    assert choose_depth(lambda d: False, None, 4) == 0
    assert choose_depth(lambda d: False, 3, 4) == 3  # explicit: the caller charges it


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    from helpers import opened, policy_packs, sampled_store

    packs = policy_packs({"static": "static", "belady": "belady"}, gpu_cache=300 * 64,
                         cpu_cache=500 * 64, max_disk_blowup=64)
    yield from opened(sampled_store(tmp_path_factory.mktemp("staging") / "s",
                                    dict(fanouts="4,4", batch_size=200, epochs=2, seed=0),
                                    packs=packs, nodes=3000, avg_degree=8), readonly=False)


@pytest.mark.parametrize("policy", ["static", "belady"])
def test_ring_path_on_the_cpu_gives_exactly_the_oracle_rows(packed, policy):
    feats = torch.from_numpy(np.array(packed.array("features")))
    acct = BudgetAccountant(MemoryBudget())
    with TieredReader(packed, policy, device="cpu", gpu_tier_on_device=True,
                      accountant=acct) as reader:
        m = reader.meta
        ring = StagingRing(2, m.largest_batch_rows, m.feat_dim, m.dtype)
        held = []
        for b in range(reader.num_batches(0)):
            x, event = reader.read_batch_async(0, b, ring)
            assert event is None
            ids = torch.from_numpy(reader.plan.input_nodes(0, b))
            assert torch.equal(x, feats[ids])
            held.append((x, ids))
        # x owns its memory: later batches staged in the same slots leave it unchanged.
        for x, ids in held:
            assert torch.equal(x, feats[ids])
        x = reader.read_batch_tensor(1, 0, ring=ring)
        assert torch.equal(x, feats[torch.from_numpy(reader.plan.input_nodes(1, 0))])
        assert reader.stats()["tiers"]["gpu"]["hits"] > 0
        assert ring.stats()["acquires"] == reader.num_batches(0) + 1
        ring.close()


def test_a_failed_read_hands_its_slot_back(packed, monkeypatch):
    with TieredReader(packed, "static", device="cpu", gpu_tier_on_device=True) as reader:
        m = reader.meta
        ring = StagingRing(1, m.largest_batch_rows, m.feat_dim, m.dtype)

        def failing(epoch, batch, out=None):
            raise OSError("disk read failed")

        monkeypatch.setattr(reader, "read_batch", failing)
        with pytest.raises(OSError, match="disk read failed"):
            reader.read_batch_async(0, 0, ring)
        monkeypatch.undo()
        x, _ = reader.read_batch_async(0, 0, ring)  # the one slot is free again
        assert x.shape[0] == reader.plan.input_nodes(0, 0).shape[0]
        ring.close()


class _InterruptedClaim(set):
    """A ring's held-slot set whose first ``add`` (the claim of a slot) is followed by a
    ``KeyboardInterrupt``: Ctrl-C between the ring handing a slot out and the producer
    holding its number."""

    fired = False

    def add(self, slot):
        super().add(slot)
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def test_an_interrupt_right_after_a_slot_is_claimed_hands_it_back(packed):
    """Ctrl-C just as ``read_batch_async`` (and ``stage_to_device``) acquires its slot:
    the slot is handed back all the same, so the ring does not refuse every later batch
    with 'slot still held' when it comes round."""
    from oocstore.tiers.staging import stage_to_device

    with TieredReader(packed, "static", device="cpu", gpu_tier_on_device=True) as reader:
        m = reader.meta
        ring = StagingRing(1, m.largest_batch_rows, m.feat_dim, m.dtype)
        ring._held = _InterruptedClaim()
        with pytest.raises(KeyboardInterrupt):
            reader.read_batch_async(0, 0, ring)
        assert not ring._held
        x, _ = reader.read_batch_async(0, 0, ring)  # the one slot is free again
        feats = torch.from_numpy(np.array(packed.array("features")))
        assert torch.equal(x, feats[torch.from_numpy(reader.plan.input_nodes(0, 0))])
        ring.close()
    ring = StagingRing(1, 4, 3, np.float32)
    ring._held = _InterruptedClaim()
    with pytest.raises(KeyboardInterrupt):
        stage_to_device(ring, 2, lambda view: view.fill(1), "cpu", None)
    assert not ring._held
    k, view = ring.acquire(2)
    assert k == 0 and view.shape == (2, 3)
    ring.release(k)
    ring.close()


def test_release_new_hands_back_only_slots_claimed_since():
    ring = StagingRing(3, rows=2, feat_dim=1, dtype=np.float32)
    first, _ = ring.acquire(1)
    before = ring.held()
    assert before == {first}
    ring.release_new(before)  # nothing claimed since: nothing changes
    assert ring.held() == {first}
    second, _ = ring.acquire(1)
    ring.release_new(before)
    assert ring.held() == {first} and second != first
    ring.release(first)
    assert ring.held() == frozenset()
    ring.close()


def test_an_interrupt_just_before_the_slot_is_released_hands_it_back(packed):
    """Ctrl-C after ``read_batch_async`` has built the batch, just as it hands its slot
    back: the slot is free all the same (the ring does not refuse every later batch with
    'slot still held' when it comes round)."""
    with TieredReader(packed, "static", device="cpu", gpu_tier_on_device=True) as reader:
        m = reader.meta
        ring = StagingRing(1, m.largest_batch_rows, m.feat_dim, m.dtype)
        release = ring.release

        def interrupted(*args, **kw):
            ring.release = release
            raise KeyboardInterrupt

        ring.release = interrupted
        with pytest.raises(KeyboardInterrupt):
            reader.read_batch_async(0, 0, ring)
        assert not ring._held
        x, _ = reader.read_batch_async(0, 0, ring)  # the one slot is free again
        feats = torch.from_numpy(np.array(packed.array("features")))
        assert torch.equal(x, feats[torch.from_numpy(reader.plan.input_nodes(0, 0))])
        ring.close()
