"""Every built-in :class:`~oocstore.tiers.Tier` passes the shipped conformance suite
(:class:`oocstore.testing.TierConformance`, the contract in tiers/base.py): each gets a
subclass that builds the tier and its oracle (the rows slot ``i`` must return, as a plain
in-memory array) and states what its counters should read.

Disk tiers also run with ``direct=False`` (DirectReader's buffered fallback).
"""

from __future__ import annotations

import numpy as np
import pytest

from oocstore.store import ALIGN, Store
from oocstore.testing import TierConformance
from oocstore.tiers import BaseRowTier, MemoryTier, SegmentTier
from oocstore.tiers.ssd import aligned_span

N, D = 997, 12  # 48-byte rows: segments and rows straddle 4 KiB pages
DTYPE = np.float32
#: [first row, rows, first batch] -- odd starts, one segment of a single row, one large
SEGMENTS = np.array([[0, 100, 0], [100, 1, 1], [101, 333, 2], [434, 563, 3]], dtype=np.int64)


@pytest.fixture(scope="module")
def disk_store(tmp_path_factory):
    """A store holding ``features`` [N, D] and ``rows`` [N, D] (distinct contents)."""
    path = tmp_path_factory.mktemp("conformance") / "s"
    rng = np.random.default_rng(7)
    feats = rng.standard_normal((N, D)).astype(DTYPE)
    rows = rng.standard_normal((N, D)).astype(DTYPE)
    with Store.create(path) as store:
        with store.transaction() as txn:
            txn.write_array("features", feats)
            txn.write_array("rows", rows, subdir="packs")
    store = Store(path)
    yield store, feats, rows
    store.close()


# -- the tiers ---------------------------------------------------------------------------

class TestMemoryTier(TierConformance):
    def make(self, request):
        rows = np.random.default_rng(5).standard_normal((N, D)).astype(DTYPE)
        return MemoryTier(rows, name="cpu"), rows

    def test_name_is_configurable(self):
        t = MemoryTier(np.zeros((2, D), DTYPE), name="gpu")
        with pytest.raises(IndexError, match="^gpu tier: slot 2 outside 0..1"):
            t.gather(np.array([2]), np.empty((1, D), DTYPE))


class TestDeviceTier(TierConformance):
    """The GPU tier's tensor on the CPU device (the same code runs on CUDA)."""

    def make(self, request):
        import torch

        from oocstore.tiers.device import DeviceTier

        rows = np.random.default_rng(6).standard_normal((N, D)).astype(DTYPE)
        return DeviceTier(rows, torch.device("cpu")), rows


class TestSegmentTier(TierConformance):
    """After ``load(segment)`` the slots are the rows of that segment."""

    disk = True
    direct = True

    @pytest.fixture(params=[1, 2, 3], ids=["seg1-one-row", "seg2-unaligned", "seg3-last"])
    def tier(self, request, disk_store):
        store, _, rows = disk_store
        meta = store.array_meta("rows")
        tier = SegmentTier(store.file_path(meta), meta, SEGMENTS, direct=self.direct)
        seg = request.param
        first, count = int(SEGMENTS[seg, 0]), int(SEGMENTS[seg, 1])
        loaded = tier.stats()
        tier.load(seg)
        _, span = aligned_span(meta.offset + first * meta.row_bytes, count * meta.row_bytes)
        s = tier.stats()
        # one load = one aligned request for the segment's rows
        assert s["bytes_read"] - loaded["bytes_read"] == span
        assert s["useful_bytes"] - loaded["useful_bytes"] == count * meta.row_bytes
        assert tier.reads == 1 and tier.direct is (self.direct and tier.reader.direct)
        tier.load(seg)  # already current: no second read
        assert tier.reads == 1 and tier.stats() == s
        tier.oracle = rows[first:first + count]
        yield tier
        tier.close()

    def test_switching_segments_serves_the_new_one(self, tier, disk_store):
        _, _, rows = disk_store
        for seg in (0, 3, 1, 2):
            tier.load(seg)
            first, count = int(SEGMENTS[seg, 0]), int(SEGMENTS[seg, 1])
            out = np.empty((count, D), dtype=DTYPE)
            tier.gather(np.arange(count)[::-1], out)
            np.testing.assert_array_equal(out, rows[first:first + count][::-1])

    def test_before_any_load_every_slot_is_out_of_range(self, disk_store):
        store, _, _ = disk_store
        meta = store.array_meta("rows")
        t = SegmentTier(store.file_path(meta), meta, SEGMENTS, direct=self.direct)
        try:
            with pytest.raises(IndexError, match="^ssd tier: slot 0 outside"):
                t.gather(np.array([0]), np.empty((1, D), DTYPE))
        finally:
            t.close()


class TestSegmentTierBuffered(TestSegmentTier):
    """DirectReader's buffered fallback (``direct=False``) passes the same suite."""

    direct = False

    def test_fallback_is_reported(self, tier):
        assert tier.direct is False
        assert tier.reader.fallback_reason == "buffered reads were asked for (direct=False)"


class TestBaseRowTier(TierConformance):
    """Slots are node ids of the base feature array; each row is one widened read, except
    that native AIO reads rows whose pages touch with one request (a shared page once)."""

    disk = True
    direct = True

    @pytest.fixture(params=[1, 4], ids=["1-thread", "4-threads"])
    def tier(self, request, disk_store):
        store, feats, _ = disk_store
        meta = store.array_meta("features")
        tier = BaseRowTier(store.file_path(meta), meta, threads=request.param, direct=self.direct)
        tier.oracle = feats
        yield tier
        tier.close()

    def expected_io(self, tier, slots):
        rb = tier.row_bytes
        if not (tier.use_aio and tier.reader.direct):
            read = sum(aligned_span(tier.meta.offset + int(v) * rb, rb)[1] for v in slots)
            return read, slots.size * rb
        # Runs of rows in file order: a row joins while it starts no later than the page
        # after the run's last one and the run fits min(threads, 8) scratch units.
        limit = min(tier.threads, 8) * tier.span
        read, first, end = 0, None, None
        for v in np.sort(slots):
            lo, n = aligned_span(tier.meta.offset + int(v) * rb, rb)
            if first is not None and lo <= end and lo + n - first <= limit:
                end = max(end, lo + n)
                continue
            read += 0 if first is None else end - first
            first, end = lo, lo + n
        return read + end - first, slots.size * rb

    def test_spans_are_one_or_two_pages_per_row(self, tier):
        assert tier.span in (ALIGN, 2 * ALIGN)


class TestBaseRowTierBuffered(TestBaseRowTier):
    direct = False

    def test_fallback_is_reported(self, tier):
        assert tier.reader.direct is False and tier.reader.fallback_reason
