"""Rows on disk, read with O_DIRECT: packed segments, and single rows of the base array.

:class:`SegmentTier` serves the pack's SSD tier. A segment (the distinct cold rows of a
few consecutive batches) is fetched with one contiguous request, widened to 4 KiB
boundaries, into an aligned buffer; batches of that segment then gather from it.

:class:`BaseRowTier` is the fallback for rows no segment covers: each row is one small
aligned read (a whole 4 KiB page for a 512 B row — the read amplification that packing
exists to avoid), issued from a thread pool so several are in flight.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..store import ALIGN, ArrayMeta
from ..store.files import DirectReader, aligned_empty
from .base import Tier
from .memory import gather_rows


def aligned_span(offset: int, nbytes: int) -> tuple[int, int]:
    """``(start, length)`` of the 4 KiB-aligned request covering [offset, offset + nbytes)."""
    lo = offset // ALIGN * ALIGN
    hi = -(-(offset + nbytes) // ALIGN) * ALIGN
    return lo, hi - lo


class SegmentTier(Tier):
    """The packed rows file; ``load(segment)`` then ``gather(slots, out)``."""

    name = "ssd"

    def __init__(self, path: Path, rows_meta: ArrayMeta, segments: np.ndarray, *,
                 direct: bool = True, read_ahead: bool = True):
        super().__init__()
        self.meta = rows_meta
        self.segments = np.asarray(segments, dtype=np.int64)  # [S, 3]: first row, rows, batch
        self.row_bytes = rows_meta.row_bytes
        self.dim = rows_meta.shape[1] if len(rows_meta.shape) > 1 else 1
        self.reader = DirectReader(path, direct=direct)
        largest = int(self.segments[:, 1].max()) if len(self.segments) else 0
        self.buffer_bytes = (largest * self.row_bytes + 2 * ALIGN) if largest else 0
        self._buf = aligned_empty(self.buffer_bytes) if largest else None
        # Read-ahead: a second buffer filled by one I/O thread while the current segment
        # is being assembled, so disk and CPU work overlap.
        self.read_ahead = bool(read_ahead and largest)
        self._spare = aligned_empty(self.buffer_bytes) if self.read_ahead else None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="oocstore-ssd") \
            if self.read_ahead else None
        self._pending = None  # (segment, future, buffer)
        self.current = -1
        self._rows = np.zeros((0, self.dim), dtype=rows_meta.np_dtype)
        self.reads = 0

    @property
    def nbytes(self) -> int:
        return self.buffer_bytes * (2 if self.read_ahead else 1)

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

    def _read(self, segment: int, buf: np.ndarray) -> tuple[np.ndarray, int]:
        """Read ``segment`` into ``buf``; returns (rows view, bytes transferred)."""
        first, count = int(self.segments[segment, 0]), int(self.segments[segment, 1])
        offset = self.meta.offset + first * self.row_bytes
        start, length = aligned_span(offset, count * self.row_bytes)
        got = self.reader.read_into(buf[:length], start)
        need = offset - start + count * self.row_bytes
        if got < need:
            raise OSError(f"short read of {self.reader.path} (segment {segment}, byte {offset}): "
                          "the pack file is truncated; run `oocstore verify` and re-pack")
        rows = np.frombuffer(buf, dtype=self.meta.np_dtype, count=count * self.dim,
                             offset=offset - start).reshape(count, self.dim)
        return rows, length

    def prefetch(self, segment: int) -> None:
        """Start reading ``segment`` into the spare buffer (no-op without read-ahead)."""
        if not self.read_ahead or segment < 0 or segment == self.current:
            return
        if self._pending is not None:
            return  # one read ahead at a time: the spare buffer is in use
        if int(self.segments[segment, 1]) == 0:
            return
        self._pending = (segment, self._pool.submit(self._read, segment, self._spare), self._spare)

    def load(self, segment: int) -> None:
        """Make ``segment`` current (one O_DIRECT read unless it already is or was read
        ahead)."""
        if segment == self.current:
            return
        first, count = int(self.segments[segment, 0]), int(self.segments[segment, 1])
        if self._pending is not None:
            seg, future, buf = self._pending
            self._pending = None
            rows, length = future.result()  # re-raises a failed read here
            if seg == segment:
                self._spare, self._buf = self._buf, buf
                self._account(segment, rows, length, count)
                return
        if count == 0:  # every row of these batches is in a memory tier
            self._rows = np.zeros((0, self.dim), dtype=self.meta.np_dtype)
            self.current = segment
            return
        rows, length = self._read(segment, self._buf)
        self._account(segment, rows, length, count)

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
        if self._pending is not None:
            try:
                self._pending[1].result()
            except OSError:
                pass  # closing: nobody will use the read
            self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.reader.close()
        self._buf = self._spare = None  # free the segment buffers now
        self._rows = self._rows[:0].copy()
        self.current = -1


#: Row reads in flight at once for the base-array fallback (threads issuing preadv).
DEFAULT_IO_THREADS = 8
#: Rows each thread reads per task.
ROWS_PER_TASK = 16


def base_read_buffer_bytes(row_bytes: int, threads: int = DEFAULT_IO_THREADS) -> int:
    """Scratch memory of :class:`BaseRowTier` (charged to the CPU budget)."""
    _, span = aligned_span(ALIGN - 1, row_bytes)
    return threads * span


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
        _, self.span = aligned_span(ALIGN - 1, self.row_bytes)  # worst case per row
        self.group = ROWS_PER_TASK

    @property
    def nbytes(self) -> int:
        return base_read_buffer_bytes(self.row_bytes, self.threads)  # one scratch per thread

    @property
    def num_rows(self) -> int:
        return int(self.meta.shape[0])

    def _read_group(self, ids: np.ndarray, out: np.ndarray) -> int:
        scratch = aligned_empty(self.span)
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

    def _gather(self, slots: np.ndarray, out: np.ndarray) -> None:
        if not slots.size:
            return
        groups = [(slots[i:i + self.group], out[i:i + self.group])
                  for i in range(0, slots.size, self.group)]
        if len(groups) == 1 or self.threads <= 1:
            self.bytes_read += sum(self._read_group(s, o) for s, o in groups)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="oocstore-base")
        self.bytes_read += sum(self._pool.map(lambda g: self._read_group(*g), groups))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.reader.close()
