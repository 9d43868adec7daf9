"""Base-array row reads: native AIO and the thread pool give the same rows, rows land in
place in the batch, a failed AIO read falls back to the path that names the error, a
deeper read queue is charged only where the budget has room, and a depth-0 loader leaves
the caller's numba thread count alone."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from helpers import packed_synthetic

from oocstore import Store
from oocstore.budget import MemoryBudget
from oocstore.loader import NodeLoader
from oocstore.pack import PackOptions
from oocstore.tiers import BaseRowTier, TieredReader
from oocstore.tiers.aio import close_context, open_context
from oocstore.tiers.ssd import base_read_buffer_bytes
from oocstore.workingset import MAX_BASE_READS_IN_FLIGHT


def _aio_available() -> bool:
    ctx = open_context(4)
    if ctx is None:
        return False
    close_context(ctx)
    return True


needs_aio = pytest.mark.skipif(not _aio_available(), reason="no Linux native AIO here")


@pytest.fixture(scope="module")
def feats_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "s"
    rng = np.random.default_rng(3)
    # 1,500 B rows: rows straddle pages, and their offsets are 4 B (not 8 B) multiples.
    feats = rng.standard_normal((3000, 375)).astype(np.float32)
    with Store.create(path) as store:
        with store.transaction() as txn:
            txn.write_array("features", feats)
    store = Store(path)
    yield store, feats
    store.close()


@needs_aio
@pytest.mark.parametrize("threads", [1, 3, 8])
def test_aio_and_threads_read_the_same_rows_in_place(feats_store, threads):
    store, feats = feats_store
    meta = store.array_meta("features")
    rng = np.random.default_rng(threads)
    ids = rng.integers(0, feats.shape[0], 700)  # repeats and any order
    pos = rng.permutation(900)[:700]
    outs = []
    for aio in (True, False):
        tier = BaseRowTier(store.file_path(meta), meta, threads=threads)
        if not tier.reader.direct:
            pytest.skip(f"no O_DIRECT here ({tier.reader.fallback_reason}): AIO is not used")
        tier.use_aio = aio
        out = np.full((900, feats.shape[1]), -1.0, dtype=np.float32)
        tier.gather_at(ids, out, pos)
        assert tier.use_aio is aio and (tier._aio is not None) is aio
        st = tier.stats()
        assert st["hits"] == 700 and st["useful_bytes"] == 700 * meta.row_bytes
        assert st["bytes_read"] >= st["useful_bytes"]
        tier.close()
        outs.append(out)
    assert np.array_equal(outs[0][pos], feats[ids])
    assert np.array_equal(outs[0], outs[1])
    untouched = np.setdiff1d(np.arange(900), pos)
    assert (outs[0][untouched] == -1.0).all()


@needs_aio
def test_a_short_aio_read_falls_back_and_names_the_file(tmp_path):
    feats = np.arange(200 * 375, dtype=np.float32).reshape(200, 375)
    with Store.create(tmp_path / "s") as store:
        with store.transaction() as txn:
            txn.write_array("features", feats)
    with Store(tmp_path / "s") as store:
        meta = store.array_meta("features")
        path = store.file_path(meta)
        with open(path, "r+b") as f:  # the last rows are gone
            f.truncate(meta.offset + 100 * meta.row_bytes)
        tier = BaseRowTier(path, meta, threads=4)
        out = np.empty((3, 375), dtype=np.float32)
        with pytest.raises(OSError, match="truncated"):
            tier.gather_at(np.array([1, 150, 2]), out, np.arange(3))
        assert tier.use_aio is False and tier._aio is None  # the context was dropped
        tier.gather_at(np.array([1, 2]), out[:2], np.arange(2))  # the rows that are there
        assert np.array_equal(out[:2], feats[[1, 2]])
        tier.close()


def test_buffered_reads_keep_the_threads(feats_store):
    """Without O_DIRECT, io_submit would read one request at a time: the threads stay."""
    store, feats = feats_store
    meta = store.array_meta("features")
    tier = BaseRowTier(store.file_path(meta), meta, threads=4, direct=False)
    out = np.empty((50, feats.shape[1]), dtype=np.float32)
    tier.gather_at(np.arange(50) * 7, out, np.arange(50)[::-1])
    assert tier._aio is None
    assert np.array_equal(out[::-1], feats[np.arange(50) * 7])
    tier.close()


def test_gather_at_checks_slots_and_positions(feats_store):
    store, feats = feats_store
    meta = store.array_meta("features")
    tier = BaseRowTier(store.file_path(meta), meta, threads=2)
    out = np.empty((4, feats.shape[1]), dtype=np.float32)
    with pytest.raises(IndexError, match="slot 3000"):
        tier.gather_at(np.array([0, 3000]), out, np.array([0, 1]))
    with pytest.raises(IndexError, match="position"):
        tier.gather_at(np.array([0, 1]), out, np.array([0, 4]))
    tier.close()


@pytest.fixture(scope="module")
def fallback_store(tmp_path_factory):
    s = packed_synthetic(tmp_path_factory.mktemp("fallback") / "s", {
        "fb": PackOptions(cpu_cache=100 * 64, max_disk_blowup=0)})
    yield s
    s.close()


def test_a_deeper_base_read_queue_only_where_the_budget_has_room(fallback_store):
    store = fallback_store
    mws = store.get("pack/fb")["min_working_set"]
    assert mws["base_read_bytes"] > 0
    slot = base_read_buffer_bytes(64, 1)
    with TieredReader(store, "fb", io_threads=8) as r:  # unlimited: the deepest queue
        queue = [c for c in r._charges if c.what.startswith("base-row read queue")]
        assert r.base.threads == MAX_BASE_READS_IN_FLIGHT
        assert queue and queue[0].nbytes == (MAX_BASE_READS_IN_FLIGHT - 8) * slot
        batches = [r.read_batch(0, b).copy() for b in range(r.num_batches(0))]
    # At the floor: no room, no queue, the same rows.
    with NodeLoader(store, pack="fb", budget=MemoryBudget(cpu=mws["cpu"])) as loader:
        assert loader.reader.base.threads == 8
        assert not any("queue" in c.what for c in loader.accountant._holders["cpu"])
        assert loader.accountant.peak("cpu") == mws["cpu"]
        for b, batch in zip(range(len(loader)), loader):
            assert np.array_equal(batch.x.numpy(), batches[b])


def test_a_depth_0_loader_keeps_the_callers_numba_threads(fallback_store):
    store = fallback_store
    before = numba.get_num_threads()
    feats = np.asarray(store.array("features"))
    with NodeLoader(store, pack="fb", prefetch=0) as loader:
        for batch in loader:
            assert numba.get_num_threads() == before
            assert np.array_equal(batch.x.numpy(), feats[batch.input_nodes])


@needs_aio
def test_a_forked_child_reads_with_its_own_aio_context(feats_store):
    """The parent's kernel context does not exist in a forked child (``io_submit`` there
    fails) and the parent's scratch is shared memory it still reads into: the child
    opens its own context and scratch, keeps AIO and reads the right rows, and the
    parent's context still works afterwards."""
    import os

    store, feats = feats_store
    meta = store.array_meta("features")
    tier = BaseRowTier(store.file_path(meta), meta, threads=4)
    if not tier.reader.direct:
        pytest.skip(f"no O_DIRECT here ({tier.reader.fallback_reason}): AIO is not used")
    out = np.empty((20, feats.shape[1]), dtype=np.float32)
    tier.gather_at(np.arange(20), out, np.arange(20))
    parent_scratch = tier._aio[1]  # held: its address is not reused in the child
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only when AIO kept working with new buffers
        ok = False
        try:
            ids = np.arange(20) * 11
            tier.gather_at(ids, out, np.arange(20))
            ok = (tier.use_aio and tier._aio is not None
                  and tier._aio[1].ctypes.data != parent_scratch.ctypes.data
                  and np.array_equal(out, feats[ids]))
            tier.close()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ids = np.arange(20) * 13
    tier.gather_at(ids, out, np.arange(20))
    assert tier.use_aio and np.array_equal(out, feats[ids])
    tier.close()


@needs_aio
def test_a_tier_dropped_without_close_destroys_its_aio_context(feats_store):
    """Contexts count against the machine-wide ``fs.aio-max-nr``: a reader the caller
    forgets to close gives its context back when it is collected."""
    import ctypes
    import gc

    store, feats = feats_store
    meta = store.array_meta("features")
    tier = BaseRowTier(store.file_path(meta), meta, threads=2)
    if not tier.reader.direct:
        pytest.skip(f"no O_DIRECT here ({tier.reader.fallback_reason}): AIO is not used")
    out = np.empty((5, feats.shape[1]), dtype=np.float32)
    tier.gather_at(np.arange(5), out, np.arange(5))
    ctx = tier._aio[0]
    tier.reader.close()
    del tier
    gc.collect()
    libc = ctypes.CDLL(None, use_errno=True)
    # io_destroy of a context that is gone fails; 0 means it was still open (and this
    # call has now destroyed it).
    assert libc.syscall(207, ctypes.c_ulong(ctx)) == -1


def test_a_forked_child_reads_with_its_own_thread_pool(feats_store):
    """The parent's I/O threads do not exist in a forked child: a child handing reads to
    the parent's pool would wait forever; it starts its own."""
    import os
    import signal

    store, feats = feats_store
    meta = store.array_meta("features")
    tier = BaseRowTier(store.file_path(meta), meta, threads=4, direct=False)  # the pool
    out = np.empty((100, feats.shape[1]), dtype=np.float32)
    tier.gather_at(np.arange(100), out, np.arange(100))
    assert tier._pool is not None
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only when the rows came back, in time
        ok = False
        try:
            signal.alarm(5)
            ids = np.arange(100) * 7
            tier.gather_at(ids, out, np.arange(100))
            ok = np.array_equal(out, feats[ids])
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    tier.gather_at(np.arange(100) * 3, out, np.arange(100))
    assert np.array_equal(out, feats[np.arange(100) * 3])
    tier.close()


@needs_aio
def test_rows_whose_pages_touch_are_read_by_one_request(feats_store):
    """1,500 B rows: neighbours share a page. Read one by one, 100 consecutive rows cost
    100 requests of one or two pages (about 2.7x the row bytes); read as runs of adjacent
    rows, each page once, in requests of at most 8 scratch units (8 KiB each)."""
    store, feats = feats_store
    meta = store.array_meta("features")
    tier = BaseRowTier(store.file_path(meta), meta, threads=8)
    if not tier.reader.direct:
        pytest.skip(f"no O_DIRECT here ({tier.reader.fallback_reason}): AIO is not used")
    ids = np.arange(500, 600)[::-1].copy()  # any order: read in file order
    out = np.empty((100, feats.shape[1]), dtype=np.float32)
    tier.gather_at(ids, out, np.arange(100))
    assert np.array_equal(out, feats[ids])
    st = tier.stats()
    first, end = meta.offset + 500 * meta.row_bytes, meta.offset + 600 * meta.row_bytes
    span = (end + 4095) // 4096 - first // 4096  # pages of the 100 rows
    # Every run's pages once; a page at a run boundary at most twice.
    assert span * 4096 <= st["bytes_read"] <= span * 4096 + st["requests"] * 4096
    assert st["requests"] <= -(-span * 4096 // (8 * tier.span)) + 2
    # Rows far apart stay one request each.
    tier.gather_at(np.array([0, 1000, 2000]), out[:3], np.arange(3))
    assert tier.stats()["requests"] == st["requests"] + 3
    assert np.array_equal(out[:3], feats[[0, 1000, 2000]])
    tier.close()


def test_close_interrupted_in_its_pool_shutdown_still_closes_the_file(feats_store,
                                                                       monkeypatch):
    """Ctrl-C while ``close`` stops the read threads: the file is closed all the same, and
    a second ``close`` waits for the threads and closes nothing twice."""
    import os

    store, feats = feats_store
    meta = store.array_meta("features")
    tier = BaseRowTier(store.file_path(meta), meta, threads=3)
    tier.use_aio = False
    ids = np.arange(0, 3000, 7)
    out = np.zeros((ids.size, feats.shape[1]), dtype=np.float32)
    tier.gather_at(ids, out, np.arange(ids.size))
    np.testing.assert_array_equal(out, feats[ids])
    pool, fd = tier._pool, tier.reader.fd
    assert pool is not None  # (several groups of rows: read on the pool's threads)
    shutdown = pool.shutdown

    def interrupted(wait=True, **kw):
        shutdown(wait=False)
        raise KeyboardInterrupt

    monkeypatch.setattr(pool, "shutdown", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tier.close()
    assert tier.reader.fd < 0
    with pytest.raises(OSError):
        os.fstat(fd)
    monkeypatch.undo()
    tier.close()
    assert tier._pool is None and not any(t.is_alive() for t in pool._threads)


def test_a_close_interrupted_after_the_file_closed_never_closes_it_again(feats_store,
                                                                          monkeypatch):
    """Ctrl-C right after the descriptor is closed: a second ``close`` does not close
    that number again (by then it may be another file's)."""
    import os

    import oocstore.store.files as files

    store, _ = feats_store
    meta = store.array_meta("features")
    tier = BaseRowTier(store.file_path(meta), meta, threads=1)
    real, closed = os.close, []

    def interrupted(fd):
        real(fd)
        closed.append(fd)
        if len(closed) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tier.close()
    tier.close()
    monkeypatch.undo()
    assert len(closed) == 1 and tier.reader.fd < 0
