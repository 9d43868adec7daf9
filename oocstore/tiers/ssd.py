"""Rows on disk, read with O_DIRECT: packed segments, and single rows of the base array.

:class:`SegmentTier` serves the pack's SSD tier. A segment (the distinct cold rows of a
few consecutive batches) is fetched with one contiguous request, widened to 4 KiB
boundaries, into an aligned buffer; batches of that segment then gather from it.

:class:`BaseRowTier` is the fallback for rows no segment covers: each row is one small
aligned read (a whole 4 KiB page for a 512 B row — the read amplification that packing
exists to avoid), several in flight. On Linux they are submitted with native AIO from
the calling thread in one numba call that releases the GIL (``tiers/aio.py``: no thread
wake-up per row, the requests of a batch reach the block layer together, in file order);
elsewhere, or where the kernel refuses AIO, from a thread pool whose tasks each read a
group of rows in one numba call that releases the GIL (``pread`` bound by name).

**Checksums on read.** With ``verify=True`` (the default) :class:`SegmentTier` checks a
segment before its rows are used and raises :class:`~oocstore.errors.ChecksumError`
naming the file, the segment (and its first batch) on a mismatch: corrupt bytes are
never returned. A pack records the CRC-32 of every segment's exact bytes
(``segment_crc``), so the check is one CRC over the buffer just read — no extra I/O
(cost: ``bench/verify_cost.py``); a segment read ahead is checked on a thread of its own
while the next read runs, and its error raised when the segment is loaded. Packs written
before segment checksums existed are checked against the file's 4 MiB chunk checksums
instead: segments are not aligned to chunks, so the parts of a boundary chunk outside
the segment are read through a small scratch buffer (:data:`VERIFY_SCRATCH`, a fixed
overhead outside the budget); a chunk that passed once is remembered, so a sequential
epoch reads each boundary chunk's tail twice at most and CRCs every byte once. Rows read
one by one through :class:`BaseRowTier` are not checked on read (a 512 B row would cost
a 4 MiB chunk read); ``oocstore verify`` checks them.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np


from ..errors import ChecksumError
from ..store import ALIGN, ArrayMeta
from ..store.files import DirectReader, aligned_empty, checksum
from ..store.format import align_down, align_up, aligned_span  # noqa: F401 (aligned_span: re-export)
from .aio import EVENT_WORDS, IOCB_WORDS, aio_read_rows, close_context, open_context
from .base import Tier
from .memory import gather_rows


class SegmentTier(Tier):
    """The packed rows file; ``load(segment)`` then ``gather(slots, out)``."""

    name = "ssd"

    def __init__(self, path: Path, rows_meta: ArrayMeta, segments: np.ndarray, *,
                 direct: bool = True, read_ahead: bool | int = True,
                 checksums: list[int] | None = None, verify: bool = True,
                 segment_crcs: np.ndarray | None = None):
        super().__init__()
        self.meta = rows_meta
        self.segments = np.asarray(segments, dtype=np.int64)  # [S, 3]: first row, rows, batch
        # Checksum verification on read: per-segment CRCs where the pack has them, else
        # the file's chunk checksums.
        self._seg_crcs = None
        if verify and segment_crcs is not None and rows_meta.nbytes:
            if len(segment_crcs) != len(self.segments):
                raise ChecksumError(
                    f"pack file {path}: the pack lists {len(segment_crcs)} segment checksums "
                    f"for {len(self.segments)} segments: the pack is damaged; re-pack")
            self._seg_crcs = np.asarray(segment_crcs, dtype=np.uint32)
            checksums = None  # not needed
        self._chunk_verify = bool(verify and checksums is not None and rows_meta.nbytes)
        #: whether segment reads are checked (by segment CRC or by chunk checksums)
        self.verify = self._chunk_verify or self._seg_crcs is not None
        if self._chunk_verify and len(checksums) != rows_meta.num_chunks:
            raise ChecksumError(
                f"pack file {path}: the catalog lists {len(checksums)} checksums for "
                f"{rows_meta.num_chunks} chunks: the catalog is damaged; re-pack")
        self._sums = list(checksums) if self._chunk_verify else []
        self._verified = np.zeros(rows_meta.num_chunks if self._chunk_verify else 0, dtype=bool)
        self._scratch = aligned_empty(VERIFY_SCRATCH) if self._chunk_verify else None
        self.verify_bytes = 0  # bytes read only to complete boundary chunks
        self.row_bytes = rows_meta.row_bytes
        self.dim = rows_meta.shape[1] if len(rows_meta.shape) > 1 else 1
        self.reader = DirectReader(path, direct=direct)
        largest = int(self.segments[:, 1].max()) if len(self.segments) else 0
        self.buffer_bytes = (largest * self.row_bytes + 2 * ALIGN) if largest else 0
        self._buf = aligned_empty(self.buffer_bytes) if largest else None
        # Read-ahead: spare buffers filled by I/O threads, issued in order, while the current
        # segment is being assembled, so disk and CPU work overlap. ``read_ahead``: True
        # (one spare) or the number of spares; with two, the disk keeps reading while the
        # consumer is held up for a whole batch (a busy machine), not only during assembly.
        self.ahead = (1 if read_ahead is True else max(0, int(read_ahead))) if largest else 0
        self.read_ahead = self.ahead > 0
        self._free = [aligned_empty(self.buffer_bytes) for _ in range(self.ahead)]
        #: the buffers a move between current (``_buf``), pending and spare (``_free``)
        #: is under way for (see :meth:`_finish_move`)
        self._moving: tuple = ()
        # Reads ahead run on up to READ_THREADS threads: two pending segments (a spare
        # buffer and the released current one) are read at once, in any order.
        self._pending: deque = deque()  # (segment, future, buffer), in the order issued
        self._start_threads()
        self.current = -1
        self._rows = np.zeros((0, self.dim), dtype=rows_meta.np_dtype)
        self.reads = 0

    def _start_threads(self) -> None:
        """Start the I/O and checksum threads (none without read-ahead) of this process."""
        self._pool = ThreadPoolExecutor(min(READ_THREADS, self.ahead + 1),
                                        thread_name_prefix="oocstore-ssd") \
            if self.read_ahead else None
        # A segment read ahead is checked against its CRC by a thread of its own while the
        # I/O threads go on to the next read and the consumer assembles: the check then
        # costs neither the disk nor the consumer any time (it only needs a free core).
        self._check_pool = ThreadPoolExecutor(1, thread_name_prefix="oocstore-ssd-crc") \
            if self.read_ahead and self._seg_crcs is not None else None
        # The second halves of segment reads (see _read): a pool of their own, so that
        # a read never waits for a task queued behind it in its own pool.
        self._split_pool = ThreadPoolExecutor(min(READ_THREADS, self.ahead + 1),
                                              thread_name_prefix="oocstore-ssd-half") \
            if SPLIT_MIN and self.buffer_bytes >= SPLIT_MIN else None
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        """In a forked child (a data-loader worker), the parent's threads do not exist:
        reads they had pending never finish here, so their buffers are spares again (a
        segment is read again when loaded) and this process starts threads of its own."""
        if self._pid == os.getpid():
            return
        while self._pending:
            self._free.append(self._pending.popleft()[2])
        self._start_threads()

    @property
    def nbytes(self) -> int:
        return self.buffer_bytes * (1 + self.ahead)

    @property
    def num_rows(self) -> int:
        return int(self._rows.shape[0])

    @property
    def direct(self) -> bool:
        return self.reader.direct

    @property
    def current_rows(self) -> np.ndarray:
        """``[rows, D]`` view of the loaded segment (empty before the first load)."""
        return self._rows

    def _read(self, segment: int, buf: np.ndarray) -> tuple[int, int]:
        """Read ``segment`` into ``buf`` (the transfer only: :meth:`_verify` checks it);
        returns (bytes transferred, bytes of the request). A segment of at least
        :data:`SPLIT_MIN` bytes is read as two requests in flight together, its second
        half on a thread of its own: this machine's virtual disk moves more bytes with two
        requests in flight than with one (the same bytes, the same single buffer)."""
        first, count = int(self.segments[segment, 0]), int(self.segments[segment, 1])
        offset = self.meta.offset + first * self.row_bytes
        start, length = aligned_span(offset, count * self.row_bytes)
        if self._split_pool is not None and length >= SPLIT_MIN:
            half = align_up(length // 2)
            second = self._split_pool.submit(self.reader.read_into, buf[half:length],
                                             start + half)
            try:
                got = self.reader.read_into(buf[:half], start)
            finally:
                rest = _result_through(second)  # the buffer is in use until both are in
            if got == half:
                got += rest
        else:
            got = self.reader.read_into(buf[:length], start)
        need = offset - start + count * self.row_bytes
        if got < need:
            raise OSError(f"short read of {self.reader.path} (segment {segment}, byte {offset}): "
                          "the pack file is truncated; run `oocstore verify` and re-pack")
        return got, length

    def _read_ahead(self, segment: int, buf: np.ndarray):
        """An I/O thread's task: read ``segment`` into ``buf``, then hand its CRC check to
        the checksum thread. Returns (bytes transferred, bytes of the request, the
        check's future or ``None`` where the consumer checks it: chunk checksums)."""
        got, length = self._read(segment, buf)
        check = self._check_pool.submit(self._check_segment, segment, buf) \
            if self._check_pool is not None else None
        return got, length, check

    def _check_segment(self, segment: int, buf: np.ndarray) -> None:
        """Compare ``segment``'s bytes in ``buf`` with its recorded CRC-32."""
        first, count = int(self.segments[segment, 0]), int(self.segments[segment, 1])
        offset = self.meta.offset + first * self.row_bytes
        lo = offset - align_down(offset)
        if checksum(memoryview(buf)[lo:lo + count * self.row_bytes]) != \
                int(self._seg_crcs[segment]):
            self._fail(segment, None, offset, offset + count * self.row_bytes,
                       "segment checksum mismatch")

    def _view(self, segment: int, buf: np.ndarray) -> np.ndarray:
        """``segment``'s ``[rows, D]`` view of ``buf``."""
        first, count = int(self.segments[segment, 0]), int(self.segments[segment, 1])
        offset = self.meta.offset + first * self.row_bytes
        return np.frombuffer(buf, dtype=self.meta.np_dtype, count=count * self.dim,
                             offset=offset - align_down(offset)).reshape(count, self.dim)

    def _verify(self, segment: int, buf: np.ndarray, got: int) -> np.ndarray:
        """Check ``segment`` (just read into ``buf``) and return its ``[rows, D]`` view.
        Runs in the consumer's thread after the next segment's read was issued, so the
        CRC overlaps that read instead of delaying it."""
        if self._seg_crcs is not None:
            self._check_segment(segment, buf)
        elif self._chunk_verify:
            first, count = int(self.segments[segment, 0]), int(self.segments[segment, 1])
            offset = self.meta.offset + first * self.row_bytes
            self._check(segment, buf, align_down(offset), got, offset - self.meta.offset,
                        count * self.row_bytes)
        return self._view(segment, buf)

    def _check(self, segment: int, buf: np.ndarray, start: int, got: int, lo: int,
               nbytes: int) -> None:
        """Verify the checksum chunks covering data bytes ``[lo, lo + nbytes)``; ``buf``
        holds file bytes ``[start, start + got)``."""
        m = self.meta
        cb = m.chunk_bytes
        for c in range(lo // cb, (lo + nbytes - 1) // cb + 1):
            if self._verified[c]:
                continue
            c_lo, c_hi = m.offset + c * cb, m.offset + min((c + 1) * cb, m.nbytes)
            crc, pos = 0, c_lo
            while pos < c_hi:
                if start <= pos < start + got:  # already in the segment buffer
                    end = min(c_hi, start + got)
                    crc = checksum(memoryview(buf)[pos - start:end - start], crc)
                else:  # outside the segment: read through the scratch buffer
                    a = align_down(pos)
                    stop = min(c_hi, start) if pos < start else c_hi
                    n = min(stop - pos, VERIFY_SCRATCH - (pos - a))
                    want = align_up(pos - a + n)
                    have = self.reader.read_into(self._scratch[:want], a)
                    if have < pos - a + n:
                        self._fail(segment, c, c_lo, c_hi, "the file is truncated")
                    self.verify_bytes += want
                    end = pos + n
                    crc = checksum(memoryview(self._scratch)[pos - a:pos - a + n], crc)
                pos = end
            if crc != self._sums[c]:
                self._fail(segment, c, c_lo, c_hi, "checksum mismatch")
            self._verified[c] = True

    def _fail(self, segment: int, chunk: int | None, lo: int, hi: int, what: str) -> None:
        first_batch = int(self.segments[segment, 2]) if self.segments.shape[1] > 2 else -1
        where = f"chunk {chunk} (bytes {lo}..{hi})" if chunk is not None else f"bytes {lo}..{hi}"
        raise ChecksumError(
            f"pack file {self.reader.path}: {what} in {where} read "
            f"for segment {segment} (from plan batch row {first_batch}): the pack is corrupt; "
            "run `oocstore verify` and re-pack (`oocstore pack ... --overwrite`)")

    def prefetch(self, segments, skip: int = -1) -> None:
        """Start reading ``segments`` (one, or several in the order they will be loaded)
        into free spare buffers; no-op without read-ahead, for ``-1``, the current
        segment, ``skip``, one already pending, or when no spare buffer is free."""
        if not self.read_ahead:
            return
        self._after_fork()
        self._finish_move()
        for seg in ([segments] if isinstance(segments, (int, np.integer)) else segments):
            seg = int(seg)
            if seg < 0 or seg == self.current or seg == skip or \
                    any(p[0] == seg for p in self._pending) or int(self.segments[seg, 1]) == 0:
                continue
            if not self._free:
                return
            buf = self._free.pop()
            self._pending.append((seg, self._pool.submit(self._read_ahead, seg, buf), buf))

    def load(self, segment: int, then=-1) -> None:
        """Make ``segment`` current (one O_DIRECT read unless it already is or was read
        ahead), then start reading ``then`` (a segment, or the next few in order) ahead
        before checking ``segment``, so the disk is not idle while the CRC runs."""
        if segment == self.current:
            self.prefetch(then)
            return
        self._after_fork()  # (the split-read threads exist without read-ahead too)
        self._finish_move()
        count = int(self.segments[segment, 1])
        # Reads issued ahead for segments that are not loaded next (batches read out of
        # order) are waited for and their buffers reused; a failed one is not an error
        # here (the read is repeated if its segment is loaded). A read leaves _pending
        # only once it is waited for: interrupted (Ctrl-C) while waiting, it stays there
        # (its buffer is still being written), and is waited for again next time.
        while self._pending and self._pending[0][0] != segment:
            _, future, buf = self._pending[0]
            try:
                _settle(future)
            except BaseException:  # a read that failed with a bug's error: raised once
                if not _in_use(future):  # (else interrupted while waiting: still pending)
                    self._spare_settled(buf)
                raise
            self._spare_settled(buf)
        if self._pending:
            _, future, buf = self._pending[0]
            try:
                got, length, check = future.result()  # re-raises a failed read here
                if check is not None:
                    check.result()  # and a checksum mismatch (ChecksumError) here
            except BaseException:  # the check is submitted only after a good read
                if not _in_use(future):  # (else the read goes on into buf: still pending)
                    self._spare_settled(buf)
                raise
            self._moving = (buf, self._buf)
            self._pending.popleft()
            self.current = -1
            old, self._buf = self._buf, buf
            if old is not None:
                self._free.append(old)  # the old current segment's buffer is a spare
            self._moving = ()
            self.prefetch(then, skip=segment)
            rows = self._view(segment, buf) if check is not None else \
                self._verify(segment, buf, got)
            self._account(segment, rows, length, count)
            return
        if count == 0:  # every row of these batches is in a memory tier
            self._rows = np.zeros((0, self.dim), dtype=self.meta.np_dtype)
            self.current = segment
            self.prefetch(then)
            return
        if self._buf is None:  # released: no read is pending, so every spare is free
            buf = self._free[-1]
            self._moving = (buf,)
            self._free.pop()
            self._buf = buf
            self._moving = ()
        # no segment is current from here: the read overwrites the current segment's
        # buffer, and one that fails or is interrupted (Ctrl-C) part-way leaves neither
        # segment's rows in it
        self.current = -1
        self._rows = self._rows[:0]
        got, length = self._read(segment, self._buf)
        self.prefetch(then, skip=segment)
        self._account(segment, self._verify(segment, self._buf, got), length, count)

    def release(self, then=()) -> None:
        """The caller is done with the current segment's rows (copied what it needed):
        its buffer becomes a spare now and the reads of ``then`` (the segments loaded next,
        in order) start in it, so the disk reads on while the caller finishes its batch
        instead of waiting for the next :meth:`load` to free a buffer. Loading the same
        segment again reads it again. No-op without read-ahead."""
        if not self.read_ahead or self._buf is None:
            return
        self._finish_move()
        self.current = -1
        self._rows = self._rows[:0]
        buf = self._buf
        self._moving = (buf,)
        self._buf = None
        self._free.append(buf)
        self._moving = ()
        self.prefetch(then)

    def _spare_settled(self, buf) -> None:
        """The first pending read (into ``buf``), waited for, is done with: ``buf`` is a
        spare."""
        self._moving = (buf,)
        self._pending.popleft()
        self._free.append(buf)
        self._moving = ()

    def _finish_move(self) -> None:
        """Finish a move of segment buffers that an interrupt (Ctrl-C) stopped half-way:
        each buffer of ``_moving`` (each one no read writes any more: a read ahead leaves
        ``_pending`` only once it was waited for) ends up exactly one of current,
        pending or spare, never lost (a spare gone for good) and never both current and
        spare (the next read ahead would overwrite the current segment's rows). A
        buffer a move does not name is never touched: one lost between a read ahead's
        submission and its entry in ``_pending`` may still be written, and stays out
        of use until the tier closes."""
        for buf in self._moving:
            if buf is None:
                continue
            spare = [i for i, b in enumerate(self._free) if b is buf]
            if buf is self._buf or any(p[2] is buf for p in self._pending):
                for i in reversed(spare):
                    del self._free[i]
            elif not spare:
                self._free.append(buf)
            elif len(spare) > 1:
                for i in reversed(spare[1:]):
                    del self._free[i]
        self._moving = ()

    def _account(self, segment: int, rows: np.ndarray, length: int, count: int) -> None:
        self.bytes_read += length
        self.useful_bytes += count * self.row_bytes
        self.reads += 1
        self._rows = rows
        self.current = segment

    def _gather(self, slots: np.ndarray, out: np.ndarray) -> None:
        if slots.size:
            gather_rows(self._rows, slots, out)

    def close(self) -> None:
        """Wait for the reads issued ahead, stop the threads, close the file and free the
        buffers. A read ahead that failed with anything but an ``OSError`` (a bug, an
        interrupt) is raised here, after everything is shut down all the same."""
        try:
            if self.read_ahead:
                self._after_fork()
            while self._pending:
                _, future, _ = self._pending.popleft()
                _settle(future)  # closing: nobody will use the read
        finally:
            try:
                self._stop_threads()
            finally:
                # also when stopping the threads was interrupted (Ctrl-C): the file and
                # the buffers are released all the same (a thread still reading holds
                # its own buffer; one that starts after this finds the file closed)
                self._pending.clear()
                self.reader.close()
                self._buf = self._scratch = None  # free the segment buffers now
                self._free, self._moving = [], ()
                self._rows = self._rows[:0].copy()
                self.current = -1

    def _stop_threads(self) -> None:
        """Shut the pools down, waiting for reads still pending. A pool is forgotten only
        once its shutdown returned: after an interrupted one, ``close`` again waits for
        what is left."""
        for name in ("_pool", "_check_pool", "_split_pool"):
            pool = getattr(self, name)
            if pool is not None and self._pid == os.getpid():
                pool.shutdown(wait=True)
            setattr(self, name, None)


def _in_use(future) -> bool:
    """Whether a read issued ahead, or its checksum check, may still use its buffer."""
    if not future.done():
        return True
    if future.exception() is not None:
        return False
    check = future.result()[2]
    return check is not None and not check.done()


def _result_through(future):
    """``future.result()`` of a read into a buffer, waited for through an interrupt
    (Ctrl-C) of the waiting thread: whoever catches the interrupt may reuse the buffer
    at once, so the interrupt is raised only once the read has stopped writing it."""
    interrupt = None
    while True:
        try:
            future.exception()  # waits; the read's own error is raised by result() below
            break
        except BaseException as exc:  # an interrupt: raised below, once the read is done
            interrupt = exc
    if interrupt is not None:
        raise interrupt
    return future.result()


def _settle(future) -> None:
    """Wait for a read issued ahead and its checksum check (so its buffer is no longer in
    use), ignoring their errors: the read is repeated if its segment is loaded."""
    try:
        _, _, check = future.result()
        if check is not None:
            check.result()
    except OSError:  # ChecksumError too
        pass


#: Segment reads in flight at once (when that many are pending). Two 6 MB O_DIRECT reads
#: at once move 1.4-1.6x the bytes of one at a time on this machine's virtual disk
#: (bench/results/gnn_loaders_a_bandwidth_2026-12-03.txt); a segment is one request, so
#: more threads only help with more spare buffers.
READ_THREADS = 2

#: Segment reads of at least this many bytes are split in two requests read at once
#: (0: never). Two requests in flight moved 1.2-1.6x the bytes of one on this machine's
#: virtual disk (bench/results/gnn_loaders_a_bandwidth_2026-12-03.txt and
#: bench/results/gnn_loaders_a_bandwidth_2026-12-03_overlap.txt).
SPLIT_MIN = 2 << 20

#: Scratch buffer for the parts of a boundary checksum chunk outside a segment (1 MiB:
#: large enough for full-speed O_DIRECT reads, small next to any segment buffer).
VERIFY_SCRATCH = 1 << 20

#: Row reads in flight at once for the base-array fallback (threads issuing preadv).
DEFAULT_IO_THREADS = 8
#: Rows each thread reads per task.
ROWS_PER_TASK = 16
#: Native AIO: completions collected before the free slots are submitted again (more
#: requests per ``io_submit``, fewer wake-ups of the reading thread).
AIO_WAIT_FOR = 1
#: Native AIO: scratch units (one row's worst-case span each) one request may span, so
#: rows whose pages touch are read together (``tiers/aio.py``). On dblp (6,556 B rows,
#: node ids with locality) a fifth of a batch's rows share a page with the next one.
AIO_MAX_RUN_UNITS = 8


def base_read_buffer_bytes(row_bytes: int, threads: int = DEFAULT_IO_THREADS) -> int:
    """Scratch memory of :class:`BaseRowTier` (charged to the CPU budget)."""
    _, span = aligned_span(ALIGN - 1, row_bytes)
    return threads * span


_pread = numba.types.ExternalFunction(
    "pread", numba.types.intp(numba.types.int32, numba.types.intp, numba.types.intp,
                              numba.types.int64))


@numba.njit(nogil=True, cache=True)
def _pread_rows(fd, base_offset, row_bytes, ids, scratch, out):
    """Row ``ids[i]`` of the array at ``base_offset`` into ``out[i]`` (bytes), each with
    one aligned ``pread`` through ``scratch``; returns the bytes transferred, or
    ``-(i + 1)`` at the first row that came back short (the caller retries it the slow
    way, which names the error)."""
    moved = 0
    addr = scratch.ctypes.data
    for i in range(ids.shape[0]):
        off = base_offset + ids[i] * row_bytes
        start = off // 4096 * 4096
        length = (off + row_bytes + 4095) // 4096 * 4096 - start
        if length > scratch.shape[0]:
            return -(i + 1)
        got = _pread(fd, addr, length, start)
        lo = off - start
        if got < lo + row_bytes:
            return -(i + 1)
        for j in range(row_bytes):
            out[i, j] = scratch[lo + j]
        moved += length
    return moved


def _drop_context(ctx: int, pid: int) -> None:
    """Destroy ``ctx`` in the process ``pid`` that opened it only: in a forked child the
    number may name a context the child opened since."""
    if os.getpid() == pid:
        close_context(ctx)


class BaseRowTier(Tier):
    """Rows of the base feature array read one by one; slots are node ids."""

    name = "base"

    def __init__(self, path: Path, meta: ArrayMeta, *, threads: int = DEFAULT_IO_THREADS,
                 direct: bool = True):
        super().__init__()
        self.meta = meta
        self.row_bytes = meta.row_bytes
        self.dim = meta.shape[1] if len(meta.shape) > 1 else 1
        self.reader = DirectReader(path, direct=direct)
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0  # the process whose threads the pool holds
        _, self.span = aligned_span(ALIGN - 1, self.row_bytes)  # worst case per row
        self.group = ROWS_PER_TASK
        # Native AIO (tiers/aio.py): ``threads`` reads in flight from the calling thread,
        # in the same scratch the threads would hold; opened on first use.
        self.use_aio = True
        self._aio: tuple | None = None
        self._requests = np.zeros(1, np.int64)  # read requests made by native AIO
        self._aio_lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return base_read_buffer_bytes(self.row_bytes, self.threads)  # one scratch per thread

    @property
    def num_rows(self) -> int:
        return int(self.meta.shape[0])

    def _read_group(self, ids: np.ndarray, out: np.ndarray) -> int:
        scratch = aligned_empty(self.span)
        if out.flags.c_contiguous and out.dtype == self.meta.np_dtype and self.reader.fd >= 0:
            # The whole group in one GIL-free call: a training loop in the same process
            # keeps the interpreter while these threads read.
            moved = _pread_rows(self.reader.fd, self.meta.offset, self.row_bytes,
                                np.ascontiguousarray(ids, dtype=np.int64), scratch,
                                out.reshape(out.shape[0], -1).view(np.uint8))
            if moved >= 0:
                self.useful_bytes += ids.size * self.row_bytes
                return int(moved)
            # A short read or an error: the row-by-row path below says which.
        moved = 0
        for i, v in enumerate(ids):
            offset = self.meta.offset + int(v) * self.row_bytes
            start, length = aligned_span(offset, self.row_bytes)
            got = self.reader.read_into(scratch[:length], start)
            if got < offset - start + self.row_bytes:
                raise OSError(f"short read of {self.reader.path} at byte {offset}: the feature "
                              "file is truncated; run `oocstore verify`")
            out[i] = np.frombuffer(scratch, dtype=self.meta.np_dtype, count=self.dim,
                                   offset=offset - start)
            moved += length
        self.useful_bytes += ids.size * self.row_bytes  # int += is atomic enough under the GIL
        return moved

    def gather_at(self, slots: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        """Row ``slots[i]`` into ``out[positions[i]]`` (the batch's rows in place: no
        temporary batch of base rows), bounds-checked like :meth:`gather`."""
        slots = np.asarray(slots, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        if slots.shape != positions.shape:
            raise ValueError(f"base tier: {slots.size} slots for {positions.size} positions")
        if slots.size:
            lo, hi = int(slots.min()), int(slots.max())
            if lo < 0 or hi >= self.num_rows:
                bad = lo if lo < 0 else hi
                raise IndexError(f"{self.name} tier: slot {bad} outside 0..{self.num_rows - 1}")
            if int(positions.min()) < 0 or int(positions.max()) >= out.shape[0]:
                raise IndexError(f"{self.name} tier: a position outside the {out.shape[0]} rows "
                                 "of the batch")
            if not self._gather_aio(slots, out, positions):
                tmp = np.empty((slots.size, *out.shape[1:]), dtype=out.dtype)
                self._gather_threads(slots, tmp)
                out[positions] = tmp
        self.hits += int(slots.size)

    def _gather_aio(self, slots: np.ndarray, out: np.ndarray, positions: np.ndarray) -> bool:
        """Read with native AIO where it is open (or can be); False: use the threads.
        Only with O_DIRECT: on a buffered file ``io_submit`` reads synchronously, one
        request at a time, where the threads keep several in flight."""
        if not (self.use_aio and self.reader.direct and self.reader.fd >= 0
                and out.flags.c_contiguous and out.dtype == self.meta.np_dtype):
            return False
        with self._aio_lock:
            if self._aio is not None and self._aio[-1] != os.getpid():
                # A forked child: the kernel context is the parent's (io_submit here
                # fails) and the scratch is shared memory the parent still reads into.
                # Leave both to the parent and open this process's own.
                self._aio = None
            if self._aio is None:
                ctx = open_context(self.threads)
                if ctx is None:
                    self.use_aio = False
                    return False
                depth = self.threads
                # Destroyed by close, or when the tier is collected unclosed (contexts
                # count against the machine-wide fs.aio-max-nr).
                self._aio_done = weakref.finalize(self, _drop_context, ctx, os.getpid())
                self._aio = (ctx, aligned_empty(depth * self.span),
                             np.zeros((depth, IOCB_WORDS), np.uint64), np.zeros(depth, np.uint64),
                             np.zeros((depth, EVENT_WORDS), np.int64),
                             np.zeros((depth, 4), np.int64), os.getpid())
            ctx, scratch, iocbs, ptrs, events, runs, _ = self._aio
            order = np.argsort(slots, kind="stable")  # file order
            word = next(w for w in (8, 4, 2, 1) if self.row_bytes % w == 0)
            wtype = np.dtype(f"u{word}")
            moved = aio_read_rows(ctx, self.reader.fd, self.meta.offset, self.row_bytes,
                                  slots[order], positions[order],
                                  out.reshape(out.shape[0], -1).view(np.uint8).view(wtype),
                                  scratch.view(wtype), self.span, iocbs, ptrs, events,
                                  runs, self._requests, AIO_WAIT_FOR,
                                  min(self.threads, AIO_MAX_RUN_UNITS))
            if moved < 0:
                # Reads may still be in flight into the scratch: destroying the context
                # waits for them. The threaded path reads the batch again and names
                # any error.
                self._close_aio()
                self.use_aio = False
                return False
            self.bytes_read += int(moved)
            self.useful_bytes += slots.size * self.row_bytes
            return True

    def stats(self) -> dict:
        """The tier's counters, plus ``requests``: the reads native AIO made (rows whose
        pages touch share one)."""
        return {**super().stats(), "requests": int(self._requests[0])}

    def _close_aio(self) -> None:
        if self._aio is not None:
            self._aio_done()  # runs once, and only in the process that opened it
            self._aio = None

    def _gather(self, slots: np.ndarray, out: np.ndarray) -> None:
        if not slots.size:
            return
        if not self._gather_aio(slots, out, np.arange(slots.size, dtype=np.int64)):
            self._gather_threads(slots, out)

    def _gather_threads(self, slots: np.ndarray, out: np.ndarray) -> None:
        groups = [(slots[i:i + self.group], out[i:i + self.group])
                  for i in range(0, slots.size, self.group)]
        if len(groups) == 1 or self.threads <= 1:
            self.bytes_read += sum(self._read_group(s, o) for s, o in groups)
            return
        if self._pool is not None and self._pool_pid != os.getpid():
            self._pool = None  # a forked child: the parent's threads do not exist here
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="oocstore-base")
            self._pool_pid = os.getpid()
        self.bytes_read += sum(self._pool.map(lambda g: self._read_group(*g), groups))

    def close(self) -> None:
        """Stop the read threads, then close the file; the file is closed (and the aio
        context destroyed) also when stopping the threads is interrupted (Ctrl-C)."""
        try:
            if self._pool is not None:
                if self._pool_pid == os.getpid():
                    self._pool.shutdown(wait=True)
                self._pool = None
        finally:
            try:
                with self._aio_lock:
                    self._close_aio()
            finally:
                self.reader.close()
