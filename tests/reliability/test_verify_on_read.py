"""Checksums verified on read: a corrupt packed segment raises ChecksumError naming the
file, chunk, segment and batch instead of returning garbage."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import flip_bits
from oocstore import Store
from oocstore.errors import ChecksumError
from oocstore.tiers import TieredReader
from oocstore.tiers.ssd import SegmentTier


def _write_rows(store_path, rows, chunk_bytes):
    with Store(store_path, readonly=False) as s:
        with s.transaction() as txn:
            w = txn.array_writer("t/rows", rows.dtype, rows.shape[1:], chunk_bytes=chunk_bytes,
                                 subdir="packs")
            w.append(rows)
            w.close()


@pytest.mark.parametrize("chunk_bytes", [4096, 12288, 1 << 20])
def test_segment_reads_verify_every_touched_chunk(store_copy, chunk_bytes):
    rng = np.random.default_rng(chunk_bytes)
    rows = rng.standard_normal((5000, 12)).astype(np.float32)  # 48 B rows: unaligned spans
    _write_rows(store_copy, rows, chunk_bytes)
    cuts = np.unique(np.concatenate([[0, 5000], rng.integers(0, 5000, 40)]))
    segs = np.stack([cuts[:-1], np.diff(cuts), np.arange(len(cuts) - 1)], axis=1)
    with Store(store_copy) as s:
        meta = s.array_meta("t/rows")
        path = s.file_path(meta)
        sums = s.checksums("t/rows")
    order = rng.permutation(len(segs))  # random order: prefix and suffix reads both happen
    tier = SegmentTier(path, meta, segs, checksums=sums, read_ahead=False)
    for k in order:
        tier.load(int(k))
        np.testing.assert_array_equal(tier.current_rows, rows[segs[k, 0]:segs[k, 0] + segs[k, 1]])
    assert tier._verified.all()
    tier.close()

    # Flip one bit in the middle of the data: exactly the segments touching its chunk fail.
    bad_byte = 5000 * 48 // 2 + 7
    flip_bits(path, bad_byte, 0x10)
    bad_chunk = bad_byte // chunk_bytes
    for k in range(len(segs)):
        lo, hi = segs[k, 0] * 48, (segs[k, 0] + segs[k, 1]) * 48
        touches = lo // chunk_bytes <= bad_chunk <= (hi - 1) // chunk_bytes
        tier = SegmentTier(path, meta, segs, checksums=sums, read_ahead=False)
        if touches:
            with pytest.raises(ChecksumError, match=rf"{path.name}.*chunk {bad_chunk} .*segment {k}"):
                tier.load(k)
        else:
            tier.load(k)
            np.testing.assert_array_equal(tier.current_rows, rows[segs[k, 0]:segs[k, 0] + segs[k, 1]])
        tier.close()
    # Switched off, the garbage goes through (the point of the default).
    tier = SegmentTier(path, meta, segs, checksums=sums, read_ahead=False, verify=False)
    k = int(np.flatnonzero((segs[:, 0] * 48 <= bad_byte) & (bad_byte < (segs[:, 0] + segs[:, 1]) * 48))[0])
    tier.load(k)
    assert not np.array_equal(tier.current_rows, rows[segs[k, 0]:segs[k, 0] + segs[k, 1]])
    tier.close()


def _corrupt(path, offset):
    flip_bits(path, offset, 0xFF)


def test_tiered_reader_names_batch_and_file(store_copy):
    with Store(store_copy) as s:
        rows = s.array_meta("pack/train/rows")
        path = s.file_path(rows)
        _corrupt(path, rows.nbytes - 5)  # the last segment's rows
        feats = np.asarray(s.array("features"))
        with TieredReader(s, "train") as r:
            with pytest.raises(ChecksumError, match=rf"epoch \d+, batch \d+ of pack 'train'.*"
                                                   rf"{path.name}.*re-pack"):
                for e in range(r.num_epochs):
                    for b in range(r.num_batches(e)):
                        x = r.read_batch(e, b)
                        np.testing.assert_array_equal(x, feats[r.plan.input_nodes(e, b)])


def test_corrupt_cpu_tier_refused_at_load(store_copy):
    with Store(store_copy) as s:
        meta = s.array_meta("pack/train/cpu_rows")
        _corrupt(s.file_path(meta), 100)
        with pytest.raises(ChecksumError, match=r"cpu_rows.*chunk 0"):
            TieredReader(s, "train")
        TieredReader(s, "train", verify_reads=False).close()  # switched off: loads


def test_loader_raises_checksum_error_in_the_training_loop(store_copy):
    from oocstore.loader import NodeLoader

    with Store(store_copy) as s:
        rows = s.array_meta("pack/train/rows")
        path = s.file_path(rows)
        _corrupt(path, rows.nbytes - 5)
        with NodeLoader(s, "train", prefetch=2) as loader:
            with pytest.raises(ChecksumError, match=rf"batch \d+ of pack 'train'.*{path.name}"):
                for e in range(loader.reader.num_epochs):
                    loader.set_epoch(e)
                    for _ in loader:
                        pass
        # Switched off, the loader hands the damaged rows on without a check.
        with NodeLoader(s, "train", prefetch=0, verify_reads=False) as loader:
            assert not loader.reader.verify_reads
            assert sum(1 for _ in loader) == len(loader)


def test_segment_checksums_cover_each_segment_exactly(store_copy):
    import zlib

    with Store(store_copy) as s:
        meta = s.array_meta("pack/train/rows")
        path = s.file_path(meta)
        segs = np.asarray(s.array("pack/train/segments"))
        crcs = np.asarray(s.array("pack/train/segment_crc"))
        packed = np.asarray(s.array("pack/train/rows"))
    rb = meta.row_bytes
    raw = packed.view(np.uint8).reshape(-1)
    assert crcs.dtype == np.uint32 and len(crcs) == len(segs) > 1
    for (first, count, _), crc in zip(segs, crcs):
        assert zlib.crc32(raw[first * rb:(first + count) * rb]) == crc

    # One flipped bit fails exactly its segment, with no extra reads to check it.
    k = len(segs) // 2
    bad = meta.offset + int(segs[k, 0] + segs[k, 1] // 2) * rb + 3
    _corrupt(path, bad)
    tier = SegmentTier(path, meta, segs, checksums=None, segment_crcs=crcs, read_ahead=False)
    for j in range(len(segs)):
        if j == k:
            with pytest.raises(ChecksumError, match=rf"{path.name}: segment checksum mismatch.*"
                                                   rf"segment {k} "):
                tier.load(j)
        else:
            tier.load(j)
            lo = segs[j, 0]
            np.testing.assert_array_equal(tier.current_rows, packed[lo:lo + segs[j, 1]])
    from oocstore.tiers.ssd import aligned_span

    assert tier.verify_bytes == 0  # the check read nothing beyond the segments
    assert tier.bytes_read == sum(aligned_span(meta.offset + int(f) * rb, int(c) * rb)[1]
                                  for j, (f, c, _) in enumerate(segs) if j != k)
    tier.close()


def test_pack_without_segment_checksums_falls_back_to_chunks(store_copy):
    """A pack written before ``segment_crc`` existed is still checked on read."""
    from oocstore.pack.format import pack_key

    with Store(store_copy, readonly=False) as s:
        entry = s.get(pack_key("train"))
        del entry["arrays"]["segment_crc"]
        with s.transaction() as txn:
            txn.put(pack_key("train"), entry)
    with Store(store_copy) as s:
        rows = s.array_meta("pack/train/rows")
        path = s.file_path(rows)
        _corrupt(path, rows.nbytes - 5)
        with TieredReader(s, "train") as r:
            assert r.segments.verify and r.segments._seg_crcs is None
            with pytest.raises(ChecksumError, match=rf"{path.name}: checksum mismatch in chunk"):
                for e in range(r.num_epochs):
                    for b in range(r.num_batches(e)):
                        r.read_batch(e, b)


@pytest.mark.parametrize("ahead", [1, 2])
def test_read_ahead_segment_mismatch_raised_before_its_rows_are_used(store_copy, ahead):
    """A segment read ahead is checked on the checksum thread; its mismatch is raised by
    the load that would make it current (in order, with the current buffer released early
    too), its rows are never exposed, the next segments still load, and close() leaves no
    reader or checksum thread behind."""
    import threading

    with Store(store_copy) as s:
        meta = s.array_meta("pack/train/rows")
        path = s.file_path(meta)
        segs = np.asarray(s.array("pack/train/segments"))
        crcs = np.asarray(s.array("pack/train/segment_crc"))
        packed = np.asarray(s.array("pack/train/rows"))
    k = len(segs) // 2
    assert 0 < k < len(segs) - 1
    _corrupt(path, meta.offset + int(segs[k, 0] + segs[k, 1] // 2) * meta.row_bytes + 3)
    before = {t.ident for t in threading.enumerate()}
    tier = SegmentTier(path, meta, segs, checksums=None, segment_crcs=crcs, read_ahead=ahead)
    assert tier._check_pool is not None
    nxt = lambda j: list(range(j + 1, min(len(segs), j + 2 + ahead)))  # noqa: E731
    for j in range(len(segs)):
        if j == k:
            with pytest.raises(ChecksumError, match=rf"{path.name}: segment checksum mismatch.*"
                                                   rf"segment {k} "):
                tier.load(j, nxt(j))
            assert tier.current != k
            continue
        tier.load(j, nxt(j))
        lo = segs[j, 0]
        np.testing.assert_array_equal(tier.current_rows, packed[lo:lo + segs[j, 1]])
        if j % 2:
            tier.release(nxt(j))
    tier.close()
    left = [t.name for t in threading.enumerate()
            if t.ident not in before and t.name.startswith("oocstore-ssd")]
    assert not left


def test_segment_tier_reads_ahead_in_a_forked_child(store_copy):
    """A child forked while reads ahead were pending (a data-loader worker) has none of
    the parent's I/O or checksum threads: it reads its segments on threads of its own
    instead of waiting forever for the parent's."""
    import os
    import signal
    import time

    with Store(store_copy) as s:
        meta = s.array_meta("pack/train/rows")
        path = s.file_path(meta)
        segs = np.asarray(s.array("pack/train/segments"))
        crcs = np.asarray(s.array("pack/train/segment_crc"))
        packed = np.asarray(s.array("pack/train/rows"))
    tier = SegmentTier(path, meta, segs, checksums=None, segment_crcs=crcs, read_ahead=2)
    tier.load(0, [1, 2])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result is its exit status
        ok = 1
        try:
            for j in range(1, len(segs)):
                tier.load(j, [j + 1, j + 2] if j + 2 < len(segs) else -1)
                lo, n = segs[j, 0], segs[j, 1]
                assert (tier.current_rows == packed[lo:lo + n]).all()
            tier.close()
            ok = 0
        finally:
            os._exit(ok)
    try:
        for _ in range(200):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's segment loads hung")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        tier.close()


def test_load_interrupted_while_a_read_ahead_runs_keeps_its_buffer_busy(store_copy):
    """A load interrupted (Ctrl-C) while its segment is still being read ahead does not
    make that buffer a spare: the read goes on into it, so another read must not get it;
    loading the segment again returns its rows."""
    import signal
    import threading

    with Store(store_copy) as s:
        meta = s.array_meta("pack/train/rows")
        path = s.file_path(meta)
        segs = np.asarray(s.array("pack/train/segments"))
        crcs = np.asarray(s.array("pack/train/segment_crc"))
        packed = np.asarray(s.array("pack/train/rows"))
    tier = SegmentTier(path, meta, segs, checksums=None, segment_crcs=crcs, read_ahead=1)
    go = threading.Event()
    read = tier._read
    tier._read = lambda seg, buf: (seg != 1 or go.wait(10), read(seg, buf))[1]
    tier.load(0, 1)

    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop

    old = signal.signal(signal.SIGALRM, stop)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Stop):
            tier.load(1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    busy = [b for _, _, b in tier._pending]
    assert busy and not any(b is f for b in busy for f in tier._free)
    go.set()
    tier.load(1)
    np.testing.assert_array_equal(tier.current_rows, packed[segs[1, 0]:segs[1, 0] + segs[1, 1]])
    tier.close()
