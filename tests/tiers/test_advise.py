"""``TieredReader.advise``: a batch's disk reads (plan record, tier / slot entries, its
segment) start together before any is waited for; advice never skips a checksum."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from helpers import flip_bits
from oocstore import Store
from oocstore.errors import ChecksumError
from oocstore.tiers.reader import TieredReader


def test_advise_starts_the_batch_reads(store):
    feats = np.asarray(store.array("features"))
    with TieredReader(store, "p") as r:
        seg = int(r.batch_segment[r.batch_row(0, 0)])
        assert seg >= 0 and r.segments.read_ahead
        records = r.plan._records
        for rows in (r._tier, r._slot, records):
            assert not rows._advised.any() and not rows._checked.any()
        r.advise(0, 0)
        # the segment is being read on an I/O thread, the tables' first chunks fetched
        assert [p[0] for p in r.segments._pending][:1] == [seg]
        for rows in (r._tier, r._slot, records):
            assert rows._advised[0] and not rows._checked[0]
        r.advise(0, 0)  # twice: nothing more is issued
        assert [p[0] for p in r.segments._pending].count(seg) == 1
        np.testing.assert_array_equal(r.read_batch(0, 0), feats[r.plan.input_nodes(0, 0)])
        assert r.segments.reads == 1  # the read issued by advise (then released)
        for rows in (r._tier, r._slot):
            assert rows._checked[0]
        for b in range(1, r.num_batches(0)):
            r.advise(0, b)
            np.testing.assert_array_equal(r.read_batch(0, b), feats[r.plan.input_nodes(0, b)])
        assert r.segments.reads == r.num_batches(0)  # each segment read once


def test_an_advised_chunk_is_still_checked(store, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(store.path, copy)
    meta = store.array_meta("pack/p/slot")
    flip_bits(copy / store.file_path(meta).relative_to(store.path), meta.offset + 5, 0x04)
    with Store(copy) as s, TieredReader(s, "p") as r:
        r.advise(0, 0)
        assert r._slot._advised[0]
        with pytest.raises(ChecksumError, match=r"pack/p/slot.*chunk 0"):
            r.read_batch(0, 0)


def test_a_checked_chunk_drops_its_advice_and_the_check_asks_for_it_again(store,
                                                                          monkeypatch):
    """Advice is used up by the check that reads the chunk: its flag is cleared then.
    The check asks for the whole chunk again even where it was advised before (long
    before, perhaps: its pages may have left the cache since), instead of reading it in
    synchronous pieces."""
    import os

    from oocstore.checked_read import CheckedRows

    calls = []
    real = os.posix_fadvise

    def fadvise(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED:
            calls.append(offset)
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    name = "pack/p/slot"
    want = np.asarray(store.array(name))
    rows = CheckedRows(store, name, fix="re-pack")
    try:
        offset = rows.meta.offset
        rows.advise(0, 1)
        assert rows._advised[0] and calls == [offset]
        np.testing.assert_array_equal(rows.read(0, 1), want[:1])
        assert rows._checked[0] and not rows._advised[0]
        assert calls.count(offset) == 2  # advised, then asked again by the check
        rows.advise(0, 1)  # a checked chunk: nothing to advise
        assert not rows._advised[0] and calls.count(offset) == 2
    finally:
        rows.close()
