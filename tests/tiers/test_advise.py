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
