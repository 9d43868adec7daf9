"""Conformance suite for every :class:`~oocstore.tiers.Tier` (the contract in tiers/base.py).

:class:`TierConformance` holds the tests; each tier gets a subclass that builds the tier
and the oracle (the rows slot ``i`` must return, as a plain in-memory array) and states
what its counters should read. A new tier passes when a subclass of it does:

* ``gather`` of random (and repeated, and empty) slots equals the oracle rows;
* a slot outside the tier raises ``IndexError`` naming the tier, and leaves ``out`` and
  the counters as they were;
* ``hits`` counts rows gathered; ``bytes_read`` / ``useful_bytes`` add up to what the tier
  moved from storage (0 for memory tiers; 4 KiB-widened spans for O_DIRECT tiers).

Disk tiers also run with ``direct=False`` (DirectReader's buffered fallback).
"""

from __future__ import annotations

import numpy as np
import pytest

from oocstore.store import ALIGN, Store
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


class TierConformance:
    """The tests every tier passes; subclasses implement :meth:`make` (and the counter hooks)."""

    disk = False  # does the tier read from storage (bytes_read > 0)?

    def make(self, request) -> tuple[object, np.ndarray]:
        """``(tier, oracle)``: ``oracle[i]`` is the row slot ``i`` must gather."""
        raise NotImplementedError

    def expected_io(self, tier, slots: np.ndarray) -> tuple[int, int]:
        """(bytes_read, useful_bytes) that gathering ``slots`` adds to the counters."""
        return 0, 0

    @pytest.fixture
    def tier(self, request):
        tier, oracle = self.make(request)
        tier.oracle = oracle
        yield tier
        tier.close()

    # -- gather -----------------------------------------------------------------------
    def test_num_rows_matches_oracle(self, tier):
        assert tier.num_rows == tier.oracle.shape[0] > 0
        assert tier.nbytes >= 0

    def test_random_slots_equal_the_oracle(self, tier):
        rng = np.random.default_rng(1)
        for size in (1, 7, 17, 200, 3 * tier.num_rows):
            slots = rng.integers(0, tier.num_rows, size)
            out = np.empty((size, D), dtype=DTYPE)
            tier.gather(slots, out)
            np.testing.assert_array_equal(out, tier.oracle[slots])

    def test_every_slot_once_in_order(self, tier):
        slots = np.arange(tier.num_rows)
        out = np.empty((slots.size, D), dtype=DTYPE)
        tier.gather(slots, out)
        np.testing.assert_array_equal(out, tier.oracle)

    def test_first_and_last_slot_and_int32_slots(self, tier):
        slots = np.array([tier.num_rows - 1, 0, tier.num_rows - 1], dtype=np.int32)
        out = np.empty((3, D), dtype=DTYPE)
        tier.gather(slots, out)
        np.testing.assert_array_equal(out, tier.oracle[slots])

    def test_empty_gather_is_a_no_op(self, tier):
        before = tier.stats()
        tier.gather(np.zeros(0, dtype=np.int64), np.empty((0, D), dtype=DTYPE))
        assert tier.stats() == before

    # -- out of range ----------------------------------------------------------------
    @pytest.mark.parametrize("where", ["negative", "past_end", "far"])
    def test_out_of_range_slot_raises_index_error_naming_the_tier(self, tier, where):
        bad = {"negative": -1, "past_end": tier.num_rows, "far": 10**12}[where]
        slots = np.array([0, bad, 1], dtype=np.int64)
        out = np.full((3, D), 42.0, dtype=DTYPE)
        before = tier.stats()
        with pytest.raises(IndexError, match=rf"^{tier.name} tier: slot {bad} outside "
                                             rf"0\.\.{tier.num_rows - 1}"):
            tier.gather(slots, out)
        assert (out == 42.0).all()  # nothing written
        assert tier.stats() == before  # nothing counted

    # -- counters --------------------------------------------------------------------
    def test_counters_add_up(self, tier):
        rng = np.random.default_rng(3)
        s0 = tier.stats()
        assert set(s0) >= {"hits", "bytes_read", "useful_bytes", "nbytes"}
        hits, read, useful = s0["hits"], s0["bytes_read"], s0["useful_bytes"]
        for size in (5, 64, 301):
            slots = rng.integers(0, tier.num_rows, size)
            tier.gather(slots, np.empty((size, D), dtype=DTYPE))
            dr, du = self.expected_io(tier, slots)
            hits, read, useful = hits + size, read + dr, useful + du
            s = tier.stats()
            assert (s["hits"], s["bytes_read"], s["useful_bytes"]) == (hits, read, useful)
        if self.disk:
            assert s["bytes_read"] >= s["useful_bytes"] > 0
        else:
            assert s["bytes_read"] == s["useful_bytes"] == 0


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
    """Slots are node ids of the base feature array; each row is one widened read."""

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
        read = sum(aligned_span(tier.meta.offset + int(v) * rb, rb)[1] for v in slots)
        return read, slots.size * rb

    def test_spans_are_one_or_two_pages_per_row(self, tier):
        assert tier.span in (ALIGN, 2 * ALIGN)


class TestBaseRowTierBuffered(TestBaseRowTier):
    direct = False

    def test_fallback_is_reported(self, tier):
        assert tier.reader.direct is False and tier.reader.fallback_reason
