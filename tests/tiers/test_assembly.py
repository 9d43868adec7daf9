"""The batch assembly kernel's streaming-store path, the aligned batch buffers it needs,
assembly shared with a helper thread, the CRC-32 implementation, and segment checksums
checked on the checksum thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import flip_bits
from oocstore.budget import MemoryBudget
from oocstore.errors import ChecksumError, UsageError
from oocstore.store.files import checksum
from oocstore.tiers.assemble import (ALL, BLOCK_ROWS, MEMORY, SEGMENT, AssemblyHelper,
                                     _streamable, assemble_claimed, assemble_rows)
from oocstore.tiers.reader import TieredReader, _aligned_rows, _OutPool
from oocstore.tiers.ssd import SegmentTier


def _case(rng, dim, dtype, n=300, gpu=7, cpu=40, seg=30):
    host = rng.standard_normal((gpu + cpu, dim)).astype(dtype)
    segs = rng.standard_normal((seg, dim)).astype(dtype)
    tier = rng.integers(0, 4, n).astype(np.uint8)
    limit = np.array([gpu, cpu, seg, 1])[tier]
    slot = (rng.integers(0, 1 << 20, n) % limit).astype(np.int32)
    want = np.zeros((n, dim), dtype)
    for i, (t, k) in enumerate(zip(tier, slot)):
        if t == 0:
            want[i] = host[k]
        elif t == 1:
            want[i] = host[gpu + k]
        elif t == 2:
            want[i] = segs[k]
    return tier, slot, host, gpu, segs, want


@pytest.mark.parametrize("dim,dtype,streams", [(128, np.float32, True), (16, np.float32, True),
                                               (24, np.float64, True), (20, np.float32, False)])
def test_streaming_and_plain_copies_equal_numpy(dim, dtype, streams):
    rng = np.random.default_rng(dim)
    tier, slot, host, gpu, segs, want = _case(rng, dim, dtype)
    n = tier.size
    aligned = _aligned_rows(n, dim, dtype)
    assert aligned.ctypes.data % 64 == 0
    # rows of 64-byte multiples into an aligned buffer stream; anything else copies plainly
    assert _streamable(aligned, host, segs) == streams
    # an out one element off the alignment (a view into a larger buffer) copies plainly
    spare = _aligned_rows(n + 1, dim, dtype).reshape(-1)[1:1 + n * dim].reshape(n, dim)
    assert not _streamable(spare, host, segs)
    # (more than one parallel block of rows, and one shorter than a block)
    for out in (aligned, spare):
        out[:] = 0
        counts = assemble_rows(tier, slot, host, gpu, segs, out, True)
        assert counts.tolist() == [*np.bincount(tier, minlength=4).tolist(), 0]
        np.testing.assert_array_equal(out, want)
        short = np.zeros_like(out[:5]) if out is spare else _aligned_rows(5, dim, dtype)
        short[:] = 0  # (base-tier rows are left to the caller)
        assemble_rows(tier[:5], slot[:5], host, gpu, segs, short, True)
        np.testing.assert_array_equal(short, want[:5])


def test_streaming_path_refuses_bad_slots_without_copying():
    rng = np.random.default_rng(1)
    tier, slot, host, gpu, segs, want = _case(rng, 128, np.float32)
    out = _aligned_rows(tier.size, 128, np.float32)
    assert _streamable(out, host, segs)
    for i, bad in ((3, 10**6), (200, -1)):
        tier2, slot2 = tier.copy(), slot.copy()
        tier2[i], slot2[i] = 2, bad
        out[:] = -7
        counts = assemble_rows(tier2, slot2, host, gpu, segs, out, True)
        assert counts[4] == 1
        assert (out[i] == -7).all()  # the bad row was not copied
        keep = np.ones(tier.size, bool)
        keep[i] = False
        np.testing.assert_array_equal(out[keep & (tier2 != 3)], want[keep & (tier2 != 3)])


def test_batch_buffers_are_aligned_for_streaming_stores(store):
    feats = np.asarray(store.array("features"))
    with TieredReader(store, "p") as reader:
        for b in range(reader.num_batches(0)):
            x = reader.read_batch(0, b)
            assert x.ctypes.data % 64 == 0
            assert np.array_equal(x, feats[reader.plan.input_nodes(0, b)])


def test_released_segment_buffer_reads_the_next_segments_at_once(store):
    """After a batch, its segment's buffer takes the next read: with one spare buffer the
    segments of the next two batches are being read while the caller finishes the batch."""
    with TieredReader(store, "p") as probe:
        need = probe.accountant.charged("cpu") - probe.segments.buffer_bytes
    with TieredReader(store, "p", budget=MemoryBudget(cpu=need)) as r:
        seg = r.segments
        assert seg.ahead == 1
        n = r.num_batches(0)
        segs = [int(r.batch_segment[r.batch_row(0, b)]) for b in range(n)]
        assert len(set(segs)) == n >= 4  # a segment per batch
        for b in range(n - 2):
            r.read_batch(0, b)
            assert [p[0] for p in seg._pending] == segs[b + 1:b + 3]
            assert seg._buf is None and seg.current == -1
        r.read_batch(0, n - 2)
        r.read_batch(0, n - 1)
        assert seg.current == segs[n - 1]  # the epoch's last segment stays loaded
        assert seg.reads == n  # every segment read once


@pytest.mark.parametrize("size", [0, 1, 63, 4096, 1 << 20, (1 << 20) + 13])
def test_checksum_is_zlib_crc32(size):
    data = np.random.default_rng(size).integers(0, 256, size + 7, dtype=np.uint8)
    for lo in (0, 7):
        view = data[lo:lo + size]
        assert checksum(view) == zlib.crc32(view.tobytes())
        assert checksum(view, 0x1234) == zlib.crc32(view.tobytes(), 0x1234)
    half = size // 2
    assert checksum(data[half:size], checksum(data[:half])) == zlib.crc32(data[:size].tobytes())


def test_read_ahead_segment_checked_on_its_thread(store, tmp_path):
    """A corrupt segment read ahead fails when it is loaded, naming it; segments around
    it are intact, and one read ahead but never loaded raises nothing."""
    meta = store.array_meta("pack/p/rows")
    segs = np.asarray(store.array("pack/p/segments")).astype(np.int64)
    crcs = np.asarray(store.array("pack/p/segment_crc"))
    packed = np.asarray(store.array("pack/p/rows"))
    path = tmp_path / "rows.bin"
    path.write_bytes(store.file_path(meta).read_bytes())
    k = len(segs) // 2
    flip_bits(path, meta.offset + int(segs[k, 0]) * meta.row_bytes + 5, 0x10)
    tier = SegmentTier(path, meta, segs, checksums=None, segment_crcs=crcs, read_ahead=2)
    assert tier._check_pool is not None
    try:
        for j in range(len(segs)):
            then = list(range(j + 1, min(j + 3, len(segs))))
            if j == k:
                with pytest.raises(ChecksumError, match=rf"segment checksum mismatch.*"
                                                       rf"segment {k} "):
                    tier.load(j, then=then)
                continue
            tier.load(j, then=then)
            lo = segs[j, 0]
            np.testing.assert_array_equal(tier.current_rows, packed[lo:lo + segs[j, 1]])
        # read ahead (corrupt) but skipped: loading another segment raises nothing
        tier.load(k - 1, then=[k])
        assert [p[0] for p in tier._pending] == [k]
        tier.load(k + 1)
        np.testing.assert_array_equal(tier.current_rows,
                                      packed[segs[k + 1, 0]:segs[k + 1, 0] + segs[k + 1, 1]])
    finally:
        tier.close()


def test_warm_up_loads_the_signature_the_reader_calls(store):
    """After ``warm_up`` the reader's first batch loads no other specialization of the
    kernel (numba loads each one on first use: tens of ms inside a timed batch)."""
    code = ("import sys, numpy as np\n"
            "from oocstore import Store\n"
            "from oocstore.tiers.assemble import assemble_rows, warm_up\n"
            "from oocstore.tiers.reader import TieredReader\n"
            "warm_up(np.dtype('float32'))\n"
            "n = len(assemble_rows.signatures)\n"
            "with Store(sys.argv[1]) as s, TieredReader(s, 'p') as r:\n"
            "    r.read_batch(0, 0)\n"
            "print(n, len(assemble_rows.signatures))\n")
    root = Path(__file__).resolve().parents[2]
    got = subprocess.run([sys.executable, "-c", code, str(store.path)], capture_output=True,
                         text=True, cwd=root, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [str(root), *os.environ.get("PYTHONPATH", "").split(os.pathsep)])})
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["1", "1"]


def test_close_shuts_down_after_a_read_ahead_failed_unexpectedly(store, monkeypatch):
    """A read ahead that failed with something other than an ``OSError`` is raised by
    ``close``, but only once the I/O and checksum threads are stopped and the file and
    buffers released (``close`` must not leak them)."""
    meta = store.array_meta("pack/p/rows")
    segs = np.asarray(store.array("pack/p/segments")).astype(np.int64)
    crcs = np.asarray(store.array("pack/p/segment_crc"))
    tier = SegmentTier(store.file_path(meta), meta, segs, checksums=None, segment_crcs=crcs,
                       read_ahead=2)
    pools = [tier._pool, tier._check_pool]
    assert all(p is not None for p in pools)

    def broken(segment, buf):
        raise RuntimeError("read-ahead bug")

    monkeypatch.setattr(tier, "_read_ahead", broken)
    tier.prefetch([0, 1])
    assert len(tier._pending) == 2
    with pytest.raises(RuntimeError, match="read-ahead bug"):
        tier.close()
    assert tier._pool is None and tier._check_pool is None and not tier._pending
    assert all(p._shutdown for p in pools)
    assert tier.reader.fd < 0
    assert tier._buf is None and tier._free == []
    tier.close()  # a second close is a no-op


def _closed(fd: int) -> bool:
    """Whether descriptor ``fd`` is closed (nothing in these tests opens a file meanwhile
    that could take its number)."""
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def _interrupt_shutdown(monkeypatch, pool) -> None:
    """Make ``pool.shutdown`` stop the pool without waiting and raise KeyboardInterrupt
    (Ctrl-C while it waits for the threads)."""
    shutdown = pool.shutdown

    def interrupted(wait=True, **kw):
        shutdown(wait=False)
        raise KeyboardInterrupt

    monkeypatch.setattr(pool, "shutdown", interrupted)


def test_close_interrupted_in_a_pool_shutdown_still_closes_the_file(store, monkeypatch):
    """Ctrl-C while ``close`` waits for the I/O threads: the interrupt goes on, but the
    pack file's descriptor and the segment buffers are released first; a second
    ``close`` waits for the threads left and releases nothing twice."""
    meta = store.array_meta("pack/p/rows")
    segs = np.asarray(store.array("pack/p/segments")).astype(np.int64)
    crcs = np.asarray(store.array("pack/p/segment_crc"))
    tier = SegmentTier(store.file_path(meta), meta, segs, checksums=None, segment_crcs=crcs,
                       read_ahead=2)
    fd = tier.reader.fd
    assert not _closed(fd)
    pools = [tier._pool, tier._check_pool]
    tier.prefetch([0, 1])
    _interrupt_shutdown(monkeypatch, pools[0])
    with pytest.raises(KeyboardInterrupt):
        tier.close()
    assert tier.reader.fd < 0 and _closed(fd)
    assert tier._buf is None and tier._free == [] and not tier._pending
    monkeypatch.undo()
    tier.close()  # again: waits for the threads left, closes nothing twice
    assert tier._pool is None and tier._check_pool is None
    assert all(p._shutdown for p in pools)
    assert not any(t.is_alive() for p in pools for t in p._threads)


def test_reader_close_interrupted_in_the_segment_tier_closes_everything(store, monkeypatch):
    """Ctrl-C while the reader's ``close`` stops the segment reads: the interrupt goes on
    once every file of the reader is closed and every charge released."""
    reader = TieredReader(store, "p")
    reader.read_batch(0, 0)
    files = [reader.segments.reader, reader.base.reader, reader._tier, reader._slot,
             reader.plan._records]
    fds = [f.fd for f in files]
    assert reader.segments._pool is not None and not any(_closed(fd) for fd in fds)
    _interrupt_shutdown(monkeypatch, reader.segments._pool)
    with pytest.raises(KeyboardInterrupt):
        reader.close()
    assert all(f.fd < 0 for f in files) and all(_closed(fd) for fd in fds)
    assert reader.accountant.charged("cpu") == 0
    monkeypatch.undo()
    reader.close()  # again: waits for the threads left
    assert reader.segments._pool is None


@pytest.mark.parametrize("dim,dtype", [(128, np.float32), (20, np.float32)])
def test_assembly_shared_with_a_helper_equals_one_thread(dim, dtype):
    """Blocks copied by the caller and the helper thread make the same batch, and the same
    counts (refused positions too), as the one-thread kernel; batches of one block or
    less stay on the caller's thread."""
    rng = np.random.default_rng(dim + 1)
    helper = AssemblyHelper()
    try:
        for n in (BLOCK_ROWS // 2, 7 * BLOCK_ROWS + 13):
            tier, slot, host, gpu, segs, want = _case(rng, dim, dtype, n=n)
            tier[::97] = 9  # unknown tier: refused, not copied
            slot[5::89] = -3  # negative slot: refused, not copied
            one = _aligned_rows(n, dim, dtype)
            two = _aligned_rows(n, dim, dtype)
            one[:] = 0
            two[:] = 0
            for _ in range(3):  # the helper's thread is reused batch after batch
                counts = helper.assemble(tier, slot, host, gpu, segs, two, True, gpu)
                np.testing.assert_array_equal(
                    counts, assemble_rows(tier, slot, host, gpu, segs, one, True, gpu))
                np.testing.assert_array_equal(two, one)
            assert counts[4] > 0
            ok = (tier < 3) & (slot >= 0)
            np.testing.assert_array_equal(two[ok], want[ok])
    finally:
        helper.close()
    assert helper._thread is None


def test_assembly_after_close_starts_no_thread():
    """A batch assembled after close() (another thread closed the reader while this one
    still reads) is whole, and is copied by the caller alone: no new helper thread is
    left running with nobody to join it."""
    rng = np.random.default_rng(11)
    n = 8 * BLOCK_ROWS + 5
    tier, slot, host, gpu, segs, want = _case(rng, 128, np.float32, n=n)
    helper = AssemblyHelper()
    out = _aligned_rows(n, 128, np.float32)
    helper.assemble(tier, slot, host, gpu, segs, out, True, gpu)
    helper.close()
    before = {t for t in threading.enumerate() if t.name == "oocstore-assemble"}
    out[:] = 0
    counts = helper.assemble(tier, slot, host, gpu, segs, out, True, gpu)
    ok = tier < 3
    np.testing.assert_array_equal(out[ok], want[ok])
    np.testing.assert_array_equal(counts, assemble_rows(tier, slot, host, gpu, segs,
                                                        _aligned_rows(n, 128, np.float32),
                                                        True, gpu))
    assert helper._thread is None
    after = {t for t in threading.enumerate() if t.name == "oocstore-assemble"}
    assert after <= before


def test_a_claimer_that_starts_late_touches_nothing():
    """Once every block is claimed, another call on the same counters (a helper woken
    after the batch was done) copies nothing and adds nothing."""
    rng = np.random.default_rng(3)
    n = 5 * BLOCK_ROWS + 1
    tier, slot, host, gpu, segs, want = _case(rng, 128, np.float32, n=n)
    out = _aligned_rows(n, 128, np.float32)
    ctl = np.zeros(3, dtype=np.int64)
    assert assemble_claimed(tier, slot, host, gpu, segs, out, True, gpu, ALL, ctl) == 6
    assert ctl.tolist()[1:] == [6, 0]
    ok = tier < 3
    np.testing.assert_array_equal(out[ok], want[ok])
    out[:] = -1
    assert assemble_claimed(tier, slot, host, gpu, segs, out, True, gpu, ALL, ctl) == 0
    assert ctl.tolist()[1:] == [6, 0]
    assert (out == -1).all()


def test_helper_keeps_no_reference_to_a_pooled_batch():
    """When ``assemble`` returns, the helper holds nothing of the batch: dropping the batch
    gives its buffer back to the pool at once (else every batch would need a new one)."""
    rng = np.random.default_rng(4)
    n = 9 * BLOCK_ROWS
    tier, slot, host, gpu, segs, want = _case(rng, 128, np.float32, n=n)
    pool = _OutPool(n, 128, np.float32, keep=1)
    helper = AssemblyHelper()
    try:
        for _ in range(20):
            x = pool.take(n)
            helper.assemble(tier, slot, host, gpu, segs, x, True, gpu)
            ok = tier < 3
            np.testing.assert_array_equal(x[ok], want[ok])
            del x
            assert len(pool._free) == 1
        assert pool.allocated == 1
    finally:
        helper.close()


def test_reader_batches_equal_with_one_or_two_assembly_threads(store):
    feats = np.asarray(store.array("features"))
    with pytest.raises(UsageError, match=r"assembly_threads=3: give 1 or 2"):
        TieredReader(store, "p", assembly_threads=3)
    for threads in (1, 2):
        with TieredReader(store, "p", assembly_threads=threads) as reader:
            assert (reader._helper is not None) == (threads == 2)
            for b in range(reader.num_batches(0)):
                np.testing.assert_array_equal(reader.read_batch(0, b),
                                              feats[reader.plan.input_nodes(0, b)])


@pytest.mark.parametrize("read_ahead", [0, 2])
def test_segments_read_as_two_halves_at_once(store, monkeypatch, read_ahead):
    """A segment read split in two requests (the second on a thread of its own) fills
    the buffer exactly as one request does; a file cut inside a segment's second half
    is still refused by name."""
    import oocstore.tiers.ssd as ssd

    meta = store.array_meta("pack/p/rows")
    segs = np.asarray(store.array("pack/p/segments")).astype(np.int64)
    crcs = np.asarray(store.array("pack/p/segment_crc"))
    packed = np.asarray(store.array("pack/p/rows"))
    monkeypatch.setattr(ssd, "SPLIT_MIN", 2 * 4096)
    tier = SegmentTier(store.file_path(meta), meta, segs, checksums=None, segment_crcs=crcs,
                       read_ahead=read_ahead)
    halves = []
    submit = tier._split_pool.submit
    tier._split_pool.submit = lambda *a: halves.append(a[2]) or submit(*a)
    try:
        for j in range(len(segs)):
            tier.load(j, then=list(range(j + 1, min(j + 3, len(segs)))))
            lo = segs[j, 0]
            np.testing.assert_array_equal(tier.current_rows, packed[lo:lo + segs[j, 1]])
        big = int((segs[:, 1] * meta.row_bytes >= 2 * 4096).sum())
        assert big and len(halves) >= big
    finally:
        tier.close()
    assert tier._split_pool is None


def test_a_split_read_of_a_truncated_file_names_it(store, monkeypatch, tmp_path):
    import oocstore.tiers.ssd as ssd

    meta = store.array_meta("pack/p/rows")
    segs = np.asarray(store.array("pack/p/segments")).astype(np.int64)
    k = int(np.argmax(segs[:, 1]))
    end = meta.offset + int(segs[k, 0] + segs[k, 1]) * meta.row_bytes
    path = tmp_path / "rows.bin"
    path.write_bytes(store.file_path(meta).read_bytes()[:end - meta.row_bytes])
    monkeypatch.setattr(ssd, "SPLIT_MIN", 2 * 4096)
    assert segs[k, 1] * meta.row_bytes >= 2 * 4096
    tier = SegmentTier(path, meta, segs, checksums=None, read_ahead=0)
    try:
        with pytest.raises(OSError, match=rf"short read of .*rows.bin \(segment {k},"):
            tier.load(k)
    finally:
        tier.close()


@pytest.mark.parametrize("helper", [False, True])
def test_segment_part_then_memory_part_make_the_whole_batch(helper):
    """The segment's rows first, then the memory tiers' rows (the segment's buffer may be
    overwritten in between: the memory part never reads it), give the one-pass batch,
    and the refused positions of both parts add up to the one pass's."""
    rng = np.random.default_rng(5)
    n = 6 * BLOCK_ROWS + 7
    tier, slot, host, gpu, segs, want = _case(rng, 128, np.float32, n=n)
    tier[3::101] = 7
    slot[np.flatnonzero(tier == 2)[::13]] = 10 ** 6
    whole = _aligned_rows(n, 128, np.float32)
    whole[:] = 0
    full = assemble_rows(tier, slot, host, gpu, segs, whole, True, gpu, ALL)
    h = AssemblyHelper() if helper else None
    run = h.assemble if helper else assemble_rows
    try:
        out = _aligned_rows(n, 128, np.float32)
        out[:] = 0
        first = run(tier, slot, host, gpu, segs, out, True, gpu, SEGMENT)
        assert (out[tier != 2] == 0).all()
        segs[:] = np.nan  # the buffer takes the next read
        second = run(tier, slot, host, gpu, segs, out, True, gpu, MEMORY)
    finally:
        if h is not None:
            h.close()
    np.testing.assert_array_equal(out, whole)
    assert first[:4].tolist() == second[:4].tolist() == full[:4].tolist()
    assert first[4] > 0 and second[4] > 0 and first[4] + second[4] == full[4]


def _interrupted_assembly(monkeypatch, interrupt_wait: bool):
    """A batch the helper takes and copies slowly while the caller is interrupted
    (KeyboardInterrupt) in its own part (``interrupt_wait`` false) or while it waits for
    the helper's blocks; returns the batch buffer and the rows it must hold."""
    import oocstore.tiers.assemble as assemble_mod

    real = assemble_mod.assemble_claimed
    caller = threading.get_ident()
    taken = threading.Event()

    def claimed(*args):
        if threading.get_ident() != caller:  # the helper: takes every block, slowly
            taken.set()
            time.sleep(0.3)
            return real(*args)
        assert taken.wait(10)
        if not interrupt_wait:
            raise KeyboardInterrupt
        return 0  # the helper claims every block: the caller waits for them

    class WaitInterrupted(threading.Event):
        calls = 0

        def wait(self, timeout=None):
            WaitInterrupted.calls += 1
            if WaitInterrupted.calls == 1:
                raise KeyboardInterrupt
            return super().wait(timeout)

    rng = np.random.default_rng(6)
    n = 6 * BLOCK_ROWS
    tier, slot, host, gpu, segs, want = _case(rng, 128, np.float32, n=n)
    out = _aligned_rows(n, 128, np.float32)
    out[:] = 0
    helper = AssemblyHelper()
    helper._start()
    monkeypatch.setattr(assemble_mod, "assemble_claimed", claimed)
    if interrupt_wait:
        monkeypatch.setattr(assemble_mod.threading, "Event", WaitInterrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            helper.assemble(tier, slot, host, gpu, segs, out, True, gpu)
        seen = out.copy()
    finally:
        helper.close()
    return out, seen, want[tier < 3], tier < 3


@pytest.mark.parametrize("interrupt_wait", [False, True])
def test_an_interrupted_caller_returns_only_once_the_helper_let_go(monkeypatch,
                                                                   interrupt_wait):
    """Ctrl-C in the reading thread while the helper copies a batch: the interrupt is
    raised only after the helper's last write (whoever catches it may reuse the batch's
    buffer or the segment's at once), never while the helper still writes."""
    out, seen, want, ok = _interrupted_assembly(monkeypatch, interrupt_wait)
    np.testing.assert_array_equal(seen, out)  # nothing written after the raise
    np.testing.assert_array_equal(seen[ok], want)


def test_an_interrupted_split_read_stops_writing_its_buffer_first(store, monkeypatch):
    """Ctrl-C while the reading thread waits for a segment's second half: the interrupt
    is raised only once that half is in (the next read reuses the same buffer), never
    while it still writes the buffer."""
    import oocstore.tiers.ssd as ssd

    meta = store.array_meta("pack/p/rows")
    segs = np.asarray(store.array("pack/p/segments")).astype(np.int64)
    k = int(np.argmax(segs[:, 1]))
    monkeypatch.setattr(ssd, "SPLIT_MIN", 2 * 4096)
    tier = SegmentTier(store.file_path(meta), meta, segs, checksums=None, read_ahead=0)
    read_into = tier.reader.read_into

    def slow_second_half(buf, offset):
        if threading.current_thread().name.startswith("oocstore-ssd-half"):
            time.sleep(0.3)
        return read_into(buf, offset)

    class Interrupted:  # the reading thread's first wait for the half is interrupted
        def __init__(self, future):
            self.future, self.waits = future, 0

        def _first(self):
            self.waits += 1
            if self.waits == 1:
                raise KeyboardInterrupt

        def result(self, timeout=None):
            self._first()
            return self.future.result(timeout)

        def exception(self, timeout=None):
            self._first()
            return self.future.exception(timeout)

    submit = tier._split_pool.submit
    tier.reader.read_into = slow_second_half
    tier._split_pool.submit = lambda *a: Interrupted(submit(*a))
    try:
        with pytest.raises(KeyboardInterrupt):
            tier.load(k)
        buf = tier._buf  # the buffer the next load reads into
        seen = buf.copy()
        time.sleep(0.5)
        np.testing.assert_array_equal(buf, seen)  # nothing written after the raise
    finally:
        tier.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_helper_that_failed_is_started_again(monkeypatch):
    """An error in the helper's thread (its kernel failed to load, say) ends that thread;
    the batch is still whole (the caller copies every block left), and the next batch
    starts a new helper instead of going on with one thread for the reader's life."""
    import oocstore.tiers.assemble as assemble_mod

    real = assemble_mod.assemble_claimed
    caller = threading.get_ident()
    failed = threading.Event()

    def claimed(*args):
        if threading.get_ident() != caller and not failed.is_set():
            failed.set()
            raise RuntimeError("kernel failed to load")
        if threading.get_ident() == caller:
            assert failed.wait(10)
        return real(*args)

    rng = np.random.default_rng(7)
    n = 64 * BLOCK_ROWS
    tier, slot, host, gpu, segs, want = _case(rng, 128, np.float32, n=n)
    ok = tier < 3
    helper = AssemblyHelper()
    try:
        monkeypatch.setattr(assemble_mod, "assemble_claimed", claimed)
        out = _aligned_rows(n, 128, np.float32)
        helper.assemble(tier, slot, host, gpu, segs, out, True, gpu)
        np.testing.assert_array_equal(out[ok], want[ok])
        helper._thread.join(10)
        first = helper._thread
        assert not first.is_alive()

        def slow_caller(*args):  # leaves blocks to the new helper
            if threading.get_ident() == caller:
                time.sleep(0.2)
            return real(*args)

        monkeypatch.setattr(assemble_mod, "assemble_claimed", slow_caller)
        out[:] = 0
        helper.assemble(tier, slot, host, gpu, segs, out, True, gpu)
        np.testing.assert_array_equal(out[ok], want[ok])
        assert helper._thread is not first and helper._thread.is_alive()
        assert helper.helped > 0
    finally:
        helper.close()


def test_a_batch_offered_while_another_callers_waits_is_assembled_alone():
    """Two threads assembling through one helper: while one caller's batch waits for the
    helper, another caller's batch is copied by that caller alone and the waiting offer
    stays in place (replacing it would leave its caller waiting for a helper that never
    takes it)."""
    rng = np.random.default_rng(12)
    n = 8 * BLOCK_ROWS + 5
    tier, slot, host, gpu, segs, want = _case(rng, 128, np.float32, n=n)
    helper = AssemblyHelper()
    hold = threading.Event()
    busy = threading.Thread(target=hold.wait, name="oocstore-assemble", daemon=True)
    busy.start()  # stands for a helper thread busy with an earlier batch
    helper._thread, helper._pid = busy, os.getpid()
    pending = (None, threading.Event())
    helper._job = pending  # another caller's offer, not taken yet
    try:
        out = _aligned_rows(n, 128, np.float32)
        counts = helper.assemble(tier, slot, host, gpu, segs, out, True, gpu)
        ok = tier < 3
        np.testing.assert_array_equal(out[ok], want[ok])
        assert counts[4] == 0
        assert helper._job is pending
    finally:
        hold.set()
        busy.join()


class _InterruptingCondition(threading.Condition):
    """The helper's condition, raising ``KeyboardInterrupt`` in the caller's thread at one
    point: ``"offer"`` (just after the batch is offered, inside the lock), ``"after_offer"``
    (once the lock is released after the offer, and the helper took the batch) or
    ``"let_go"`` (when the caller next takes the lock, before it has it); once."""

    def __init__(self, lock=None, *, at, caller, taken=None):
        super().__init__(lock)
        self.at, self.caller, self.taken, self.enters = at, caller, taken, 0
        self.fired = False

    def _mine(self) -> bool:
        return threading.get_ident() == self.caller and not self.fired

    def _interrupt(self):
        self.fired = True
        raise KeyboardInterrupt

    def __enter__(self):
        if self._mine():
            self.enters += 1
            if self.at == "let_go" and self.enters == 2:
                self._interrupt()
        return super().__enter__()

    def notify(self, n=1):
        super().notify(n)
        if self._mine() and self.at == "offer":
            self._interrupt()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if self._mine() and self.at == "after_offer" and self.enters == 1:
            assert self.taken.wait(10)
            self._interrupt()


@pytest.mark.parametrize("at", ["offer", "let_go"])
def test_an_interrupt_around_the_offer_withdraws_a_batch_the_helper_did_not_take(at):
    """Ctrl-C in the reading thread just after its batch is offered to the helper, or
    when it comes to withdraw it: the offer is withdrawn all the same (a batch left
    offered would be copied by the helper into a buffer its owner has reused by then,
    and every later batch would find the helper's offer taken)."""
    rng = np.random.default_rng(13)
    n = 8 * BLOCK_ROWS + 5
    tier, slot, host, gpu, segs, want = _case(rng, 128, np.float32, n=n)
    helper = AssemblyHelper()
    hold = threading.Event()
    busy = threading.Thread(target=hold.wait, name="oocstore-assemble", daemon=True)
    busy.start()  # stands for a helper thread busy with an earlier batch
    helper._thread, helper._pid = busy, os.getpid()
    helper._cond = _InterruptingCondition(threading.Lock(), at=at, caller=threading.get_ident())
    try:
        out = _aligned_rows(n, 128, np.float32)
        with pytest.raises(KeyboardInterrupt):
            helper.assemble(tier, slot, host, gpu, segs, out, True, gpu)
        assert helper._job is None  # withdrawn
        out[:] = 0
        helper._cond = threading.Condition(threading.Lock())
        hold.set()
        busy.join()
        helper._thread = None  # the next batch starts a real helper and shares it
        counts = helper.assemble(tier, slot, host, gpu, segs, out, True, gpu)
        ok = tier < 3
        np.testing.assert_array_equal(out[ok], want[ok])
        assert counts[4] == 0 and helper.batches == 1
    finally:
        hold.set()
        helper.close()


def test_an_interrupt_right_after_the_offer_waits_for_the_helper(monkeypatch):
    """Ctrl-C in the reading thread between offering its batch and claiming blocks
    itself, once the helper took the batch: the interrupt is raised only after the
    helper's last write into the batch (whoever catches it may reuse the buffer)."""
    import oocstore.tiers.assemble as assemble_mod

    real = assemble_mod.assemble_claimed
    caller = threading.get_ident()
    taken, finished = threading.Event(), threading.Event()

    def claimed(*args):
        if threading.get_ident() == caller:
            return real(*args)
        taken.set()  # the helper: copies every block, slowly
        time.sleep(0.3)
        try:
            return real(*args)
        finally:
            finished.set()

    rng = np.random.default_rng(14)
    n = 6 * BLOCK_ROWS
    tier, slot, host, gpu, segs, want = _case(rng, 128, np.float32, n=n)
    out = _aligned_rows(n, 128, np.float32)
    out[:] = 0
    helper = AssemblyHelper()
    # the helper's condition only (threading.Event and Thread make conditions too)
    hooked = SimpleNamespace(Lock=threading.Lock, Thread=threading.Thread,
                             Condition=lambda lock: _InterruptingCondition(
                                 lock, at="after_offer", caller=caller, taken=taken))
    with monkeypatch.context() as m:
        m.setattr(assemble_mod, "threading", hooked)
        helper._start()
    monkeypatch.setattr(assemble_mod, "assemble_claimed", claimed)
    try:
        with pytest.raises(KeyboardInterrupt):
            helper.assemble(tier, slot, host, gpu, segs, out, True, gpu)
        assert finished.is_set()  # the helper was done before the interrupt was raised
        ok = tier < 3
        np.testing.assert_array_equal(out[ok], want[ok])  # (it copied the whole batch)
    finally:
        helper.close()


def _sorted_buffers(tier: SegmentTier, buffers: list) -> list[str]:
    """Where each of the tier's segment ``buffers`` (all it made) is: current, pending
    or spare (each exactly once when nothing was lost or listed twice)."""
    where = {id(b): [] for b in buffers}
    for name, bufs in (("current", [tier._buf]), ("pending", [p[2] for p in tier._pending]),
                       ("spare", tier._free)):
        for b in bufs:
            if b is not None:
                where.setdefault(id(b), []).append(name)
    return sorted("+".join(w) or "lost" for w in where.values())


def _segment_tier(store) -> tuple[SegmentTier, list, np.ndarray, np.ndarray]:
    """A tier with two read-ahead buffers, its three buffers, segments and packed rows."""
    meta = store.array_meta("pack/p/rows")
    segs = np.asarray(store.array("pack/p/segments")).astype(np.int64)
    crcs = np.asarray(store.array("pack/p/segment_crc"))
    tier = SegmentTier(store.file_path(meta), meta, segs, checksums=None, segment_crcs=crcs,
                       read_ahead=2)
    return tier, [tier._buf, *tier._free], segs, np.asarray(store.array("pack/p/rows"))


def test_an_interrupt_while_a_skipped_read_ahead_is_waited_for_keeps_it_pending(store,
                                                                                monkeypatch):
    """Ctrl-C while ``load`` waits for a read ahead it skips (batches out of order): that
    read goes on into its buffer, so the buffer stays pending (never a spare the next
    read could take meanwhile, never lost), and the next ``load`` waits for it again."""
    import oocstore.tiers.ssd as ssd

    tier, bufs, segs, packed = _segment_tier(store)
    try:
        full = [s for s in range(len(segs)) if segs[s, 1]]
        a, b = full[:2]
        tier.prefetch([a, b])
        settle, calls = ssd._settle, []

        def interrupted(future):
            calls.append(future)
            if len(calls) == 1:
                raise KeyboardInterrupt
            settle(future)

        monkeypatch.setattr(ssd, "_settle", interrupted)
        with pytest.raises(KeyboardInterrupt):
            tier.load(b)
        assert [p[0] for p in tier._pending] == [a, b]
        assert _sorted_buffers(tier, bufs) == ["current", "pending", "pending"]
        tier.load(b)
        assert len(calls) == 2 and calls[1] is calls[0]  # the same read waited for again
        np.testing.assert_array_equal(tier.current_rows,
                                      packed[segs[b, 0]:segs[b, 0] + segs[b, 1]])
        assert _sorted_buffers(tier, bufs) == ["current", "spare", "spare"]
    finally:
        tier.close()


def test_an_interrupt_after_a_read_ahead_was_waited_for_loses_no_buffer(store):
    """Ctrl-C just after ``load`` takes a finished read ahead off the pending queue: its
    buffer is a spare again by the next ``load`` (not lost for good, which would leave
    the tier one read-ahead buffer short for the rest of its life)."""
    tier, bufs, segs, packed = _segment_tier(store)

    class InterruptedQueue(type(tier._pending)):
        fired = False

        def popleft(self):
            entry = super().popleft()
            if not InterruptedQueue.fired:
                InterruptedQueue.fired = True
                raise KeyboardInterrupt
            return entry

    try:
        tier._pending = InterruptedQueue()
        a = next(s for s in range(len(segs)) if segs[s, 1])
        tier.prefetch([a])
        with pytest.raises(KeyboardInterrupt):
            tier.load(a)
        tier.load(a)
        np.testing.assert_array_equal(tier.current_rows,
                                      packed[segs[a, 0]:segs[a, 0] + segs[a, 1]])
        assert _sorted_buffers(tier, bufs) == ["current", "spare", "spare"]
    finally:
        tier.close()


def test_a_read_ahead_interrupted_as_it_is_submitted_is_never_reused_unawaited(store):
    """Ctrl-C between a read ahead's submission and its entry in the pending queue: its
    buffer may still be written, so it stays out of use (the tier reads on with one
    spare less) instead of becoming a spare the next read ahead would share."""
    tier, bufs, segs, packed = _segment_tier(store)
    submit, started = tier._pool.submit, []

    def interrupted(fn, *args):
        started.append(submit(fn, *args))
        if len(started) == 1:
            raise KeyboardInterrupt
        return started[-1]

    try:
        tier._pool.submit = interrupted
        full = [s for s in range(len(segs)) if segs[s, 1]]
        with pytest.raises(KeyboardInterrupt):
            tier.prefetch([full[0]])
        assert _sorted_buffers(tier, bufs) == ["current", "lost", "spare"]
        for s in full[:4]:
            tier.load(s, then=full[full.index(s) + 1:full.index(s) + 3])
            np.testing.assert_array_equal(tier.current_rows,
                                          packed[segs[s, 0]:segs[s, 0] + segs[s, 1]])
            assert "lost" in _sorted_buffers(tier, bufs)
    finally:
        tier.close()


@pytest.mark.parametrize("read_ahead", [0, 2])
def test_a_read_that_fails_into_the_current_buffer_does_not_leave_its_segment_current(
        store, read_ahead):
    """A segment read into the current segment's buffer (no read ahead for it) that fails
    or is interrupted (Ctrl-C) part-way has overwritten that buffer: loading the segment
    that was current before reads it again instead of serving the overwritten bytes."""
    meta = store.array_meta("pack/p/rows")
    segs = np.asarray(store.array("pack/p/segments")).astype(np.int64)
    packed = np.asarray(store.array("pack/p/rows"))
    tier = SegmentTier(store.file_path(meta), meta, segs, checksums=None,
                       read_ahead=read_ahead)
    a, b = [s for s in range(len(segs)) if segs[s, 1]][:2]
    read_into = tier.reader.read_into

    def torn(buf, offset):  # a read that writes part of the buffer, then is interrupted
        got = read_into(buf, offset)
        buf[:got] = 0xAB
        raise KeyboardInterrupt

    try:
        tier.load(a)
        tier.reader.read_into = torn
        with pytest.raises(KeyboardInterrupt):
            tier.load(b)
        tier.reader.read_into = read_into
        tier.load(a)
        np.testing.assert_array_equal(tier.current_rows,
                                      packed[segs[a, 0]:segs[a, 0] + segs[a, 1]])
    finally:
        tier.close()


def test_a_skipped_read_ahead_that_failed_with_a_bug_is_raised_once(store):
    """A read ahead that ``load`` skips (batches out of order) and that failed with an
    error other than an ``OSError`` (a bug) is raised by that ``load``; its buffer is a
    spare again, so the loads after it do not raise the same error for ever."""
    tier, bufs, segs, packed = _segment_tier(store)
    read = tier._read
    a, b = [s for s in range(len(segs)) if segs[s, 1]][:2]

    def buggy(segment, buf):
        if segment == a:
            raise RuntimeError("a bug in the read")
        return read(segment, buf)

    try:
        tier._read = buggy
        tier.prefetch([a, b])
        with pytest.raises(RuntimeError, match="a bug"):
            tier.load(b)
        tier.load(b)
        np.testing.assert_array_equal(tier.current_rows,
                                      packed[segs[b, 0]:segs[b, 0] + segs[b, 1]])
        assert _sorted_buffers(tier, bufs) == ["current", "spare", "spare"]
    finally:
        tier._read = read
        tier.close()
