"""The batched copy: rows of the base feature array into the pack files, reading the
base array only sequentially.

The base feature array is scanned in large aligned ``O_DIRECT`` reads; rows are scattered
into an output window held in memory (``window_bytes``), and rows of later windows go to
per-window buckets in a temporary file, each assembled into a window after the scan
(:func:`copy_rows`, which also describes the one-scan-per-window alternative). Windows are
appended to the pack files by a writer thread while the next one is assembled.

Memory: ``window_bytes``, four :data:`_SCAN_BYTES` copy buffers and 12 bytes per output
row (16 while ``"auto"`` weighs both window orders).
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numba
import numpy as np

from ..errors import UsageError
from ..store import ALIGN, Store
from ..store.files import DirectReader, aligned_empty, raise_disk_error
from ..store.format import align_down, align_up, aligned_span
from .options import COPY_STRATEGIES

ProgressFn = Callable[[int], None]

#: Base-array read size during packing (large sequential O_DIRECT requests).
_SCAN_BYTES = 32 << 20

#: Relative cost of writing a byte vs reading one sequentially, used by the "auto" copy
#: strategy to weigh bucket traffic (written, then read back) against extra base scans
#: (read only). SSDs write more slowly than they read (measured here: ~360 MB/s writes,
#: ~650 MB/s O_DIRECT reads).
WRITE_COST = 1.8


@numba.njit(cache=True, nogil=True)
def _window_order(ids, window_rows, scan_rows, order, offsets):
    """Group each output window's positions by base chunk (a stable counting sort).

    For window ``w`` (positions ``[w0, w1)``, ``w0 = w * window_rows``): ``order[w0 + i]``
    is the window-local position of its ``i``-th row in chunk order, and its rows of base
    chunk ``c`` (base rows ``[c * scan_rows, (c + 1) * scan_rows)``) are ``i`` in
    ``[offsets[w, c], offsets[w, c + 1])``. The one scan of the base array visits the
    chunks in order and, per window, finds its rows there without searching; a window's
    bucket holds its rows in this same order."""
    total = ids.shape[0]
    nchunks = offsets.shape[1] - 1
    pos = np.empty(nchunks, dtype=np.int64)
    for w in range(offsets.shape[0]):
        w0 = w * window_rows
        w1 = min(total, w0 + window_rows)
        for c in range(nchunks + 1):
            offsets[w, c] = 0
        for p in range(w0, w1):
            offsets[w, ids[p] // scan_rows + 1] += 1
        for c in range(nchunks):
            offsets[w, c + 1] += offsets[w, c]
            pos[c] = offsets[w, c]
        for p in range(w0, w1):
            c = ids[p] // scan_rows
            order[w0 + pos[c]] = p - w0
            pos[c] += 1


@numba.njit(cache=True, nogil=True, parallel=True)
def _scatter_rows(src, lo, ids, order, a, b, out):
    """``out[order[i]] = src[ids[order[i]] - lo]`` for ``i`` in ``[a, b)`` (one window's
    ``ids`` / ``order``; rows as words of any unsigned type, see :func:`_word_view`).
    One pass on numba threads, where numpy's ``out[o] = src[n]`` goes through a temporary
    on one core; the explicit word loop is ~2x numba's row-slice assignment on uint8
    rows (bench/pack_speed.py)."""
    w = src.shape[1]
    for i in numba.prange(a, b):
        dst = order[i]
        row = ids[dst] - lo
        for j in range(w):
            out[dst, j] = src[row, j]


@numba.njit(cache=True, nogil=True, parallel=True)
def _gather_rows(src, lo, ids, order, a, b, out):
    """``out[i - a] = src[ids[order[i]] - lo]`` for ``i`` in ``[a, b)``: the rows of one
    window found in one base chunk, packed contiguously for its bucket."""
    w = src.shape[1]
    for i in numba.prange(a, b):
        row = ids[order[i]] - lo
        for j in range(w):
            out[i - a, j] = src[row, j]


@numba.njit(cache=True, nogil=True, parallel=True)
def _place_rows(src, order, a, b, out):
    """``out[order[i]] = src[i - a]`` for ``i`` in ``[a, b)``: bucket rows (chunk order)
    back to their window positions."""
    w = src.shape[1]
    for i in numba.prange(a, b):
        dst = order[i]
        for j in range(w):
            out[dst, j] = src[i - a, j]


def _word_view(rows: np.ndarray, row_bytes: int) -> np.ndarray:
    """``rows`` (C-contiguous, ``row_bytes`` per row, word-aligned) as ``[n, words]`` of the
    widest unsigned integer dividing ``row_bytes``."""
    word = next(w for w in (8, 4, 2, 1) if row_bytes % w == 0)
    return rows.view(np.uint8).reshape(-1, row_bytes).view(f"u{word}")


class _InOrder:
    """Jobs run one after another on one named thread, at most ``depth`` unfinished: a
    caller that alternates ``depth`` buffers waits here before refilling one that a job
    may still be reading. A job's exception is re-raised (with its traceback) by the
    :meth:`wait` that collects it."""

    def __init__(self, pool: ThreadPoolExecutor, depth: int):
        self.pool, self.depth, self.pending = pool, depth, deque()

    def submit(self, fn, *args) -> None:
        self.wait(self.depth - 1)
        self.pending.append(self.pool.submit(fn, *args))

    def wait(self, keep: int = 0) -> None:
        while len(self.pending) > keep:
            self.pending.popleft().result()


def _pwrite_all(fd: int, data: np.ndarray, offset: int, path: Path) -> None:
    mv = memoryview(data).cast("B")
    try:
        while len(mv):
            n = os.pwrite(fd, mv, offset)
            mv, offset = mv[n:], offset + n
    except OSError as err:
        raise_disk_error(err, path)


def _pread_all(fd: int, buf: np.ndarray, offset: int, path: Path) -> None:
    mv = memoryview(buf).cast("B")
    while len(mv):
        n = os.preadv(fd, [mv], offset)
        if n == 0:
            raise OSError(f"short read of copy bucket {path} at byte {offset}: it was "
                          "truncated while packing; run the pack again")
        mv, offset = mv[n:], offset + n


def _read_rows(reader: DirectReader, fmeta, path: Path, lo: int, hi: int,
               raw: np.ndarray) -> int:
    """Read base rows [lo, hi) into ``raw`` (one aligned O_DIRECT request); returns where
    row ``lo`` starts in it."""
    rb = fmeta.row_bytes
    start = fmeta.offset + lo * rb
    astart = align_down(start)
    aend = align_up(fmeta.offset + hi * rb)
    got = reader.read_into(raw[:aend - astart], astart)
    if got < start - astart + (hi - lo) * rb:
        raise OSError(f"short read of {path} at byte {start}: the feature file "
                      "is truncated; run `oocstore verify`")
    return start - astart


def _append_window(targets, bounds: np.ndarray, w0: int, w1: int, out: np.ndarray) -> None:
    """Hand the output rows [w0, w1) (in ``out``) to the writers whose ranges overlap."""
    for t, (writer, _) in enumerate(targets):
        s0, s1 = max(w0, int(bounds[t])), min(w1, int(bounds[t + 1]))
        if s1 > s0:
            writer.append(out[s0 - w0:s1 - w0])


def _copy_rescans(store: Store, fmeta, targets, bounds: np.ndarray, all_ids: np.ndarray,
                  order: np.ndarray, offsets: np.ndarray, window_rows: int, scan_rows: int,
                  progress: ProgressFn | None) -> int:
    """The ``"rescans"`` copy (see :func:`copy_rows`): per window, scan the base chunks
    holding its rows, scatter them in, write the window. One read-ahead stream runs over
    every (window, chunk) pair, so the next window's first read is in flight while a
    window is written. Returns the number of scans (windows)."""
    rb = fmeta.row_bytes
    d = fmeta.shape[1] if len(fmeta.shape) > 1 else 1
    total, nwin, num_rows = all_ids.size, offsets.shape[0], fmeta.shape[0]
    path = store.file_path(fmeta)
    buf_bytes = aligned_span(ALIGN - 1, scan_rows * rb)[1]
    raws = [aligned_empty(buf_bytes), aligned_empty(buf_bytes)]
    window = np.empty((min(total, window_rows), d), dtype=fmeta.np_dtype)
    steps = [(w, int(c)) for w in range(nwin)
             for c in np.flatnonzero(offsets[w, 1:] > offsets[w, :-1])]

    def span(c: int) -> tuple[int, int]:
        return c * scan_rows, min(num_rows, (c + 1) * scan_rows)

    with DirectReader(path) as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="oocstore-pack-read") as rpool:
        pending = rpool.submit(_read_rows, reader, fmeta, path, *span(steps[0][1]), raws[0])
        for k, (w, c) in enumerate(steps):
            w0, w1 = w * window_rows, min(total, (w + 1) * window_rows)
            lo, hi = span(c)
            skip = pending.result()  # re-raises a failed read here, with its traceback
            if k + 1 < len(steps):
                pending = rpool.submit(_read_rows, reader, fmeta, path, *span(steps[k + 1][1]),
                                       raws[(k + 1) % 2])
            src = _word_view(raws[k % 2][skip:skip + (hi - lo) * rb], rb)
            _scatter_rows(src, lo, all_ids[w0:w1], order[w0:w1], offsets[w, c],
                          offsets[w, c + 1], _word_view(window[:w1 - w0], rb))
            if k + 1 == len(steps) or steps[k + 1][0] != w:
                _append_window(targets, bounds, w0, w1, window[:w1 - w0])
                if progress:
                    progress((w1 - w0) * rb)
    return nwin


def writeback_free_bytes() -> int:
    """Dirty page-cache bytes a temporary file can hold without the kernel starting to
    write them back: half the background writeback threshold (``vm.dirty_background_bytes``,
    or ``vm.dirty_background_ratio`` % of available memory), the other half left to the
    pack's own output. Bucket data consumed and truncated below it never reaches the disk.
    ``0`` where /proc does not say (every bucket byte counted as written)."""
    try:
        vm = Path("/proc/sys/vm")
        fixed = int((vm / "dirty_background_bytes").read_text())
        if fixed > 0:
            return fixed // 2
        ratio = int((vm / "dirty_background_ratio").read_text())
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f
                         if line.startswith("MemAvailable:"))
        return avail * ratio // 100 // 2
    except (OSError, ValueError, StopIteration):
        return 0


def bucket_passes(offsets: np.ndarray, scan_rows: int, row_bytes: int, num_rows: int,
                  pass_bytes: int) -> tuple[list[tuple[int, int]], int]:
    """Windows ``[wa, wb)`` of each scan of the ``"buckets"`` copy, and its cost in
    weighted bytes moved besides the output. A pass scans the base chunks its windows
    touch, fills window ``wa`` directly and buckets the rest.

    One pass writes every bucket byte; when those exceed what the page cache holds
    without writeback (``pass_bytes``, :func:`writeback_free_bytes`), the excess goes to
    disk and is read back. Passes whose buckets stay within ``pass_bytes`` avoid that at
    the price of one more base scan each: they are used when the extra scans read fewer
    bytes than the writeback they avoid would move (weighted by ``1 + WRITE_COST``)."""
    nwin = offsets.shape[0]
    rows_of = (offsets[:, -1] - offsets[:, 0]).astype(np.int64)
    touched = offsets[:, 1:] > offsets[:, :-1]
    chunk_bytes = np.full(touched.shape[1], scan_rows * row_bytes, dtype=np.int64)
    if chunk_bytes.size:
        chunk_bytes[-1] = (num_rows - (touched.shape[1] - 1) * scan_rows) * row_bytes

    def cost(passes):
        scans = sum(int(chunk_bytes[touched[a:b].any(axis=0)].sum()) for a, b in passes)
        spill = sum(max(0, int(rows_of[a + 1:b].sum()) * row_bytes - max(pass_bytes, 0))
                    for a, b in passes)
        return scans + int(spill * (1 + WRITE_COST))

    best = [(0, nwin)], cost([(0, nwin)])
    if pass_bytes <= 0 or nwin <= 2:
        return best
    passes, wa = [], 0
    while wa < nwin:
        wb, held = wa + 1, 0
        while wb < nwin and held + rows_of[wb] * row_bytes <= pass_bytes:
            held += int(rows_of[wb]) * row_bytes
            wb += 1
        passes.append((wa, wb))
        wa = wb
    c = cost(passes)
    return (passes, c) if c < best[1] else best


def copy_rows(store: Store, fmeta, targets, *, window_bytes: int, strategy: str = "auto",
              progress: ProgressFn | None = None, pass_bytes: int | None = None) -> int:
    """Append ``features[ids]`` to each ``(writer, ids)`` of ``targets``, reading the base
    array only sequentially (never a random read); returns the number of base scans.

    The output (the targets' ids, concatenated) is cut into windows held in memory. When
    it fits one window of ``window_bytes``, rows are scattered straight into it during
    one scan. Otherwise there are two ways, picked by ``strategy``:

    ``"rescans"``
        one scan per window of ``window_bytes``, reading only the base chunks that hold
        rows of that window; each window is written (buffered, so the disk writes it back
        while the next scan reads). Disk traffic: output + scans x touched base chunks.
    ``"buckets"``
        windows are ``window_bytes / 2`` (two buffers: one is written while the next is
        filled), grouped into passes (:func:`bucket_passes`; usually one). A pass is one
        scan: it scatters its first window directly and appends every other window's rows
        to its *bucket*: a region of one temporary ``packs/copy-buckets-*.tmp`` file, in
        chunk order. Each window is then assembled from its bucket (one sequential read)
        and appended to the writers. Windows lie in the file last-to-first so a consumed
        one is truncated away: its dirty pages not yet written back are dropped unwritten,
        which is why passes keep their buckets within ``pass_bytes`` (default
        :func:`writeback_free_bytes`) when one more base scan costs less than the
        writeback that avoids. Disk traffic: output + passes x touched base chunks + 2 x
        the bucket bytes written back. The file is removed at the end; after a crash the
        store's orphan cleanup removes it (``*.tmp``).
    ``"auto"``
        whichever moves fewer bytes besides the output: the rescans' reads against the
        buckets' scans plus their bucket bytes written back (weighted by ``1 +
        WRITE_COST``: written, then read back). Rescans win when the windows are few (a
        large ``window_bytes`` relative to the output), buckets when the output is many
        times the memory.

    Threads: ``oocstore-pack-read`` reads ahead (base chunks, then bucket pieces: two
    buffers of ``_SCAN_BYTES``); ``oocstore-pack-write`` writes bucket pieces (two
    staging buffers of ``_SCAN_BYTES``), then windows (crc32 + write) while the next one
    is assembled. Memory: ``window_bytes`` + 4 x ``_SCAN_BYTES`` + 12 bytes per row (16 while
    ``"auto"`` weighs both window orders)."""
    if strategy not in COPY_STRATEGIES:
        raise UsageError(f"copy strategy {strategy!r}: use one of {', '.join(COPY_STRATEGIES)}")
    rb = fmeta.row_bytes
    all_ids = np.concatenate([np.asarray(ids, dtype=np.int64) for _, ids in targets]) \
        if targets else np.zeros(0, np.int64)
    bounds = np.cumsum([0] + [len(ids) for _, ids in targets])
    total = all_ids.size
    if total == 0:
        return 0
    scan_rows = max(1, _SCAN_BYTES // rb)
    num_rows = fmeta.shape[0]
    nchunks = -(-num_rows // scan_rows)
    full_rows = max(1, window_bytes // rb)
    order_dtype = np.int32 if full_rows < 2 ** 31 else np.int64
    if pass_bytes is None:
        pass_bytes = writeback_free_bytes()

    def window_order(window_rows: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.empty(total, dtype=order_dtype)
        offsets = np.empty((-(-total // window_rows), nchunks + 1), dtype=np.int64)
        _window_order(all_ids, window_rows, scan_rows, order, offsets)
        return order, offsets

    window_rows = full_rows if total <= full_rows else max(1, full_rows // 2)
    rescans = None  # (order, offsets, bytes read) of one scan per full window
    if total > full_rows and strategy != "buckets":
        order, offsets = window_order(full_rows)
        if strategy == "rescans":
            return _copy_rescans(store, fmeta, targets, bounds, all_ids, order, offsets,
                                 full_rows, scan_rows, progress)
        rescans = (order, offsets,
                   int((offsets[:, 1:] > offsets[:, :-1]).sum()) * scan_rows * rb)
    order_b, offsets_b = window_order(window_rows)
    passes, bucket_cost = bucket_passes(offsets_b, scan_rows, rb, num_rows, pass_bytes)
    if rescans is not None and rescans[2] < bucket_cost:
        return _copy_rescans(store, fmeta, targets, bounds, all_ids, *rescans[:2],
                             full_rows, scan_rows, progress)
    del rescans  # its window order (4 bytes per row) is not needed any more
    _BucketCopy(store, fmeta, targets, bounds, all_ids, order_b, offsets_b, window_rows,
                scan_rows, passes, progress).run()
    return len(passes)



class _BucketCopy:
    """The ``"buckets"`` copy (see :func:`copy_rows`): per pass, one scan of the base
    chunks its windows touch (:meth:`scan_pass`: the first window straight into its
    buffer, the others into their buckets), then each other window assembled from its
    bucket (:meth:`assemble_window`).

    Buffers: two windows (one is written while the next is filled), two scan buffers
    (read ahead; reused for bucket pieces once the scan is over) and two staging buffers
    of bucket pieces (one is written while the next is gathered). The ``oocstore-pack-read``
    thread reads ahead; the ``oocstore-pack-write`` thread runs ``writes`` in order."""

    def __init__(self, store: Store, fmeta, targets, bounds: np.ndarray, all_ids: np.ndarray,
                 order: np.ndarray, offsets: np.ndarray, window_rows: int, scan_rows: int,
                 passes: list[tuple[int, int]], progress: ProgressFn | None):
        self.fmeta, self.targets, self.bounds = fmeta, targets, bounds
        self.all_ids, self.order, self.offsets = all_ids, order, offsets
        self.scan_rows, self.passes, self.progress = scan_rows, passes, progress
        rb = self.rb = fmeta.row_bytes
        d = self.d = fmeta.shape[1] if len(fmeta.shape) > 1 else 1
        total, nwin, self.num_rows = all_ids.size, offsets.shape[0], fmeta.shape[0]
        self.path = store.file_path(fmeta)
        buf_bytes = aligned_span(ALIGN - 1, scan_rows * rb)[1]
        self.raws = [aligned_empty(buf_bytes), aligned_empty(buf_bytes)]
        self.windows = [np.empty((min(total, window_rows), d), dtype=fmeta.np_dtype)
                        for _ in range(1 if nwin == 1 else 2)]
        self.bucketed = any(b - a > 1 for a, b in passes)
        self.staging = [np.empty((scan_rows, d), dtype=fmeta.np_dtype) for _ in range(2)] \
            if self.bucketed else []
        self.nstaged = 0
        self.win_lo = [w * window_rows for w in range(nwin + 1)]
        self.win_lo[-1] = total
        # Bucket region of window w (first byte): per pass, its windows after the first
        # are stored last-to-first from the start of the file.
        self.region = [0] * nwin
        for wa, wb in passes:
            for w in range(wb - 2, wa, -1):
                self.region[w] = self.region[w + 1] + (self.win_lo[w + 2] - self.win_lo[w + 1]) * rb
        self.bucket_fd, self.bucket_path = -1, None
        if self.bucketed:
            (store.path / "packs").mkdir(exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="copy-buckets-", suffix=".tmp",
                                        dir=store.path / "packs")
            self.bucket_fd, self.bucket_path = fd, Path(name)

    def run(self) -> None:
        # The pools exit (waiting for in-flight jobs) before the reader and the bucket close.
        try:
            with DirectReader(self.path) as self.reader, \
                    ThreadPoolExecutor(1, thread_name_prefix="oocstore-pack-read") as self.rpool, \
                    ThreadPoolExecutor(1, thread_name_prefix="oocstore-pack-write") as wpool:
                self.writes = _InOrder(wpool, depth=2)
                for wa, wb in self.passes:
                    self.scan_pass(wa, wb)
                    for w in range(wa + 1, wb):
                        self.assemble_window(w)
                self.writes.wait()
        finally:
            if self.bucket_fd >= 0:
                os.close(self.bucket_fd)
                self.bucket_path.unlink(missing_ok=True)

    def _read_chunk(self, c: int, raw: np.ndarray):
        lo, hi = c * self.scan_rows, min(self.num_rows, (c + 1) * self.scan_rows)
        return self.rpool.submit(_read_rows, self.reader, self.fmeta, self.path, lo, hi, raw)

    def _write_window(self, w: int, out: np.ndarray) -> None:
        _append_window(self.targets, self.bounds, self.win_lo[w], self.win_lo[w + 1], out)

    def scan_pass(self, wa: int, wb: int) -> None:
        """One scan: window ``wa`` straight into its buffer (window ``wa - 2``, which used
        it, is written: at most the last job, window ``wa - 1``, still runs), the pass's
        other windows into their buckets; then window ``wa`` is queued for writing."""
        rb, scan_rows, win_lo, offsets = self.rb, self.scan_rows, self.win_lo, self.offsets
        self.writes.wait(1)
        first = self.windows[wa % 2][:win_lo[wa + 1] - win_lo[wa]]
        out0 = _word_view(first, rb)
        ids0 = self.all_ids[win_lo[wa]:win_lo[wa + 1]]
        order0 = self.order[win_lo[wa]:win_lo[wa + 1]]
        chunks = np.flatnonzero((offsets[wa:wb, 1:] - offsets[wa:wb, :-1]).sum(axis=0))
        pending = self._read_chunk(int(chunks[0]), self.raws[0])
        for k, c in enumerate(chunks):
            lo, hi = int(c) * scan_rows, min(self.num_rows, int(c + 1) * scan_rows)
            skip = pending.result()  # re-raises a failed read here, with its traceback
            if k + 1 < len(chunks):
                pending = self._read_chunk(int(chunks[k + 1]), self.raws[(k + 1) % 2])
            src = _word_view(self.raws[k % 2][skip:skip + (hi - lo) * rb], rb)
            _scatter_rows(src, lo, ids0, order0, offsets[wa, c], offsets[wa, c + 1], out0)
            for w in range(wa + 1, wb):
                self._bucket_rows(src, lo, w, int(c))
            if self.progress:
                self.progress((hi - lo) * rb)
        self.writes.wait()  # every bucket piece is in the file before any is read
        self.writes.submit(self._write_window, wa, first)

    def _bucket_rows(self, src: np.ndarray, lo: int, w: int, c: int) -> None:
        """Append window ``w``'s rows found in base chunk ``c`` (``src``, first row
        ``lo``) to its bucket, in pieces of at most a staging buffer."""
        w0, w1 = self.win_lo[w], self.win_lo[w + 1]
        a, b = int(self.offsets[w, c]), int(self.offsets[w, c + 1])
        for a1 in range(a, b, self.scan_rows):
            b1 = min(b, a1 + self.scan_rows)
            st = self.staging[self.nstaged % 2]
            self.writes.wait(1)  # the job that used this staging buffer is done
            _gather_rows(src, lo, self.all_ids[w0:w1], self.order[w0:w1], a1, b1,
                         _word_view(st, self.rb))
            self.writes.submit(_pwrite_all, self.bucket_fd, st[:b1 - a1],
                               self.region[w] + a1 * self.rb, self.bucket_path)
            self.nstaged += 1

    def assemble_window(self, w: int) -> None:
        """Window ``w`` from its bucket, read ahead in pieces (into the scan buffers, free
        until the next pass); the consumed bucket is truncated away and the window queued
        for writing."""
        rb, scan_rows, d = self.rb, self.scan_rows, self.d
        views = [r.view(self.fmeta.np_dtype)[:scan_rows * d].reshape(-1, d) for r in self.raws]
        w0, w1 = self.win_lo[w], self.win_lo[w + 1]
        n = w1 - w0
        out = self.windows[w % 2][:n]
        self.writes.wait(1)  # window w - 2, which used this buffer, is written
        pieces = [(a, min(n, a + scan_rows)) for a in range(0, n, scan_rows)]
        pending = self.rpool.submit(_pread_all, self.bucket_fd, views[0][:pieces[0][1]],
                                    self.region[w], self.bucket_path)
        out_words = _word_view(out, rb)
        for k, (a, b) in enumerate(pieces):
            pending.result()
            if k + 1 < len(pieces):
                na, nb = pieces[k + 1]
                pending = self.rpool.submit(_pread_all, self.bucket_fd,
                                            views[(k + 1) % 2][:nb - na],
                                            self.region[w] + na * rb, self.bucket_path)
            _place_rows(_word_view(views[k % 2][:b - a], rb), self.order[w0:w1], a, b, out_words)
        # Consumed: drop it (and, unwritten, its dirty pages) from the file.
        os.ftruncate(self.bucket_fd, self.region[w])
        self.writes.submit(self._write_window, w, out)
        if self.progress:
            self.progress(n * rb)
