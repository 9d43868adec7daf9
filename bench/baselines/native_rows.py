"""Baseline: feature rows read one by one with ``O_DIRECT`` from native code.

A Ginex-style loader reads every cache miss as one 4 KiB-aligned row read. Issued from
Python threads (``oocstore.tiers.ssd.BaseRowTier``), each read costs a trip through the
interpreter and the GIL, and the reads per second top out far below what the disk serves
at a deep queue (about 15-40 k/s against 80-90 k/s at 4 KiB QD32 here). This reader keeps
Python out of the per-row path: a numba function compiled with ``nogil=True`` calls libc's
``pread`` directly (through ctypes, which numba lowers to a plain C call) for a whole
share of the rows, and ``depth`` threads run it at once, so up to ``depth`` reads are in
flight (the queue depth) while Python only starts and joins the threads once per batch.

Only numpy and numba are needed: ``pread`` from ``depth`` native threads reaches the
disk's queue depth without an io_uring binding.
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ALIGN = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_pread = _libc.pread
# the buffer goes as an address (size_t): the same register as a pointer on every ABI
# numba targets, and numba passes integers to C without conversion rules
_pread.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_long)
_pread.restype = ctypes.c_ssize_t

_KERNEL = None


def _kernel():
    """The per-thread read loop, compiled once per process."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        pread = _pread

        @numba.njit(nogil=True, cache=False)
        def read_rows(fd, ids, out, scratch, base_offset, row_bytes, lo, hi, result):
            """Rows ``ids[lo:hi]`` into ``out[lo:hi]`` (uint8, one row per line): one
            aligned ``pread`` each into ``scratch`` (this thread's), then the row's bytes
            copied out. ``result[0]`` = bytes read; ``result[1]`` = failing index + 1."""
            addr = scratch.ctypes.data
            moved = 0
            for i in range(lo, hi):
                off = base_offset + ids[i] * row_bytes
                start = off // 4096 * 4096
                length = (off + row_bytes + 4095) // 4096 * 4096 - start
                got = pread(fd, addr, length, start)
                if got < off - start + row_bytes:
                    result[1] = i + 1
                    break
                moved += got
                d = off - start
                for j in range(row_bytes):
                    out[i, j] = scratch[d + j]
            result[0] = moved

        _KERNEL = read_rows
    return _KERNEL


class NativeRowReader:
    """``gather(ids, out)``: ``out[k] = row ids[k]`` of a row-major array stored at
    ``offset`` in ``path``, each row one ``O_DIRECT`` ``pread`` from native code, ``depth``
    reads in flight. Counts ``bytes_read`` (aligned bytes the disk served), ``useful_bytes``
    and ``reads``."""

    def __init__(self, path: Path, *, offset: int, row_bytes: int, depth: int = 32,
                 direct: bool = True):
        if depth < 1:
            raise ValueError(f"depth {depth}: give at least 1 read in flight")
        self.path = Path(path)
        flags = os.O_RDONLY | (getattr(os, "O_DIRECT", 0) if direct else 0)
        try:
            self.fd = os.open(self.path, flags)
            self.direct = bool(flags & getattr(os, "O_DIRECT", 0))
        except OSError:  # a filesystem without O_DIRECT (tmpfs): buffered, and said so
            self.fd = os.open(self.path, os.O_RDONLY)
            self.direct = False
        self.offset, self.row_bytes, self.depth = int(offset), int(row_bytes), int(depth)
        span = -(-(ALIGN - 1 + row_bytes) // ALIGN) * ALIGN
        self._scratch = [self._aligned(span) for _ in range(depth)]
        self._pool = ThreadPoolExecutor(depth, thread_name_prefix="native-rows") \
            if depth > 1 else None
        self.bytes_read = self.useful_bytes = self.reads = 0
        self._read = _kernel()
        one = np.zeros((1, row_bytes), np.uint8)
        self._read(self.fd, np.zeros(1, np.int64), one, self._scratch[0], self.offset,
                   self.row_bytes, 0, 1, np.zeros(2, np.int64))  # compile now, not timed

    @staticmethod
    def _aligned(n: int) -> np.ndarray:
        import mmap

        return np.frombuffer(mmap.mmap(-1, n), dtype=np.uint8)

    @property
    def nbytes(self) -> int:
        """The scratch buffers (what a budget charges this reader)."""
        return sum(s.nbytes for s in self._scratch)

    def gather(self, ids: np.ndarray, out: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        n = ids.size
        if n == 0:
            return
        o = out.reshape(n, -1).view(np.uint8)
        if o.shape[1] != self.row_bytes or not o.flags.c_contiguous:
            raise ValueError(f"out: {n} contiguous rows of {self.row_bytes} bytes expected")
        k = min(self.depth, n)
        bounds = np.linspace(0, n, k + 1).astype(np.int64)
        res = np.zeros((k, 2), np.int64)

        def one(t: int) -> None:
            self._read(self.fd, ids, o, self._scratch[t], self.offset, self.row_bytes,
                       int(bounds[t]), int(bounds[t + 1]), res[t])

        if self._pool is None or k == 1:
            for t in range(k):
                one(t)
        else:
            list(self._pool.map(one, range(k)))
        bad = res[:, 1].max()
        if bad:
            raise OSError(f"short read of {self.path} at row {int(ids[bad - 1])}: the feature "
                          "file is truncated; run `oocstore verify`")
        self.bytes_read += int(res[:, 0].sum())
        self.useful_bytes += n * self.row_bytes
        self.reads += n

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
