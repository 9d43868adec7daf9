"""Reads of store arrays checked against their recorded chunk checksums.

Readers index memory with some arrays — a plan's index and records, a pack's tier, slot
and insert schedule, its segment tables. A flipped bit in such an array would otherwise
become a wrong row, a wrong edge, an absurd allocation or a write outside a buffer. So
every such array is read only through this module:

* :func:`read_checked` — a whole small array into memory, each chunk's CRC-32 checked on
  the way (segment tables, per-batch offsets, a plan's index);
* :class:`CheckedRows` — rows ``[start, stop)`` of an array too large to hold (plan
  records, tier / slot entries, Belady inserts) with ``pread``; each checksum chunk a
  read touches is checked the first time it is touched (the whole chunk is read once
  and remembered as good), so serving an epoch checks every byte it uses once, with no
  start-up pass and no memory map.

A mismatch raises :class:`~oocstore.errors.ChecksumError` naming the array, its file, the
chunk and the fix. The file's bytes are trusted between the check and later reads of
the same range (the same assumption as everywhere in ``docs/RELIABILITY.md``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ChecksumError, FormatError
from .store import Store
from .store.files import checksum


class ChunkCheck:
    """Streaming comparison of an array's bytes, fed in order, with its chunk CRC-32s."""

    def __init__(self, store: Store, name: str, meta, fix: str = "re-create it (re-pack a pack)"):
        self.path, self.meta, self.fix = store.file_path(meta), meta, fix
        self.sums = store.checksums(name)
        if len(self.sums) != meta.num_chunks:
            raise ChecksumError(f"array {name!r} ({self.path}): the catalog lists "
                                f"{len(self.sums)} checksums for {meta.num_chunks} chunks: "
                                "the catalog is damaged; run `oocstore verify`")
        self.chunk, self.crc, self.fill = 0, 0, 0

    def feed(self, data: np.ndarray) -> None:
        mv, cb = memoryview(data).cast("B"), self.meta.chunk_bytes
        while len(mv):
            take = min(len(mv), cb - self.fill)
            self.crc = checksum(mv[:take], self.crc)
            self.fill += take
            mv = mv[take:]
            if self.fill == cb:
                self._close_chunk()

    def _close_chunk(self) -> None:
        if self.crc != self.sums[self.chunk]:
            lo = self.meta.offset + self.chunk * self.meta.chunk_bytes
            raise ChecksumError(
                f"array {self.meta.name!r} ({self.path}): checksum mismatch in chunk "
                f"{self.chunk} (bytes {lo}..{lo + self.fill}): the file is corrupt; run "
                f"`oocstore verify` and {self.fix}")
        self.chunk, self.crc, self.fill = self.chunk + 1, 0, 0

    def finish(self) -> None:
        if self.fill:
            self._close_chunk()


def _pread_full(fd: int, view: memoryview, offset: int, path: Path, name: str) -> None:
    got = 0
    while got < len(view):
        more = os.preadv(fd, [view[got:]], offset + got)
        if more == 0:
            raise FormatError(f"array {name!r}: file {path} ends at byte {offset + got}, before "
                              f"byte {offset + len(view)}: it is truncated; run `oocstore verify`")
        got += more


def read_checked(store: Store, name: str, *, fix: str) -> np.ndarray:
    """Array ``name`` whole into memory, every chunk's CRC-32 checked (small arrays)."""
    meta = store.array_meta(name)
    out = np.empty(meta.shape, dtype=meta.np_dtype)
    if not meta.nbytes:
        return out
    path = store.file_path(meta)
    check = ChunkCheck(store, name, meta, fix)
    view = memoryview(out.reshape(-1).view(np.uint8))
    fd = os.open(path, os.O_RDONLY)
    try:
        step = meta.chunk_bytes
        for lo in range(0, meta.nbytes, step):
            part = view[lo:lo + step]
            _pread_full(fd, part, meta.offset + lo, path, name)
            check.feed(part)
    finally:
        os.close(fd)
    check.finish()
    return out


#: A scratch size for reads of whole checksum chunks (1 MiB: full-speed sequential reads).
SCRATCH = 1 << 20
#: Scratch buffer of :class:`CheckedRows` (128 KiB). A loader holds one per array it reads
#: per batch (plan records, tier, slot, inserts), charged to its budget for the whole run,
#: and uses it only to check each 4 MiB chunk once (32 buffered reads of it instead of 4:
#: no measurable cost): at 1 MiB the four took 4 MiB of a 28 MiB budget from the cache.
ROWS_SCRATCH = 128 << 10


class CheckedRows:
    """Rows ``[start, stop)`` of array ``name`` via ``pread``, checksum-checked.

    Each chunk a read touches is read whole and compared with its recorded CRC-32 the
    first time (through a scratch buffer of at most :data:`ROWS_SCRATCH` bytes); later
    reads of checked chunks cost only the ``pread``. A range outside the array is refused
    before anything is allocated. ``verify=False`` skips the checksums (the range check
    stays)."""

    def __init__(self, store: Store, name: str, *, fix: str, verify: bool = True):
        self.meta = meta = store.array_meta(name)
        self.name, self.fix = name, fix
        self.path = store.file_path(meta)
        self.row_bytes = meta.row_bytes
        self.rows = meta.shape[0] if meta.shape else 0
        self.verify = bool(verify and meta.nbytes)
        self.sums = np.asarray(store.checksums(name), dtype=np.int64) if self.verify else None
        if self.verify and len(self.sums) != meta.num_chunks:
            raise ChecksumError(f"array {name!r} ({self.path}): the catalog lists "
                                f"{len(self.sums)} checksums for {meta.num_chunks} chunks: "
                                "the catalog is damaged; run `oocstore verify`")
        self._checked = np.zeros(meta.num_chunks if self.verify else 0, dtype=bool)
        self._scratch: np.ndarray | None = None
        self.fd = os.open(self.path, os.O_RDONLY)
        self._advise = self.verify and hasattr(os, "posix_fadvise")
        if self._advise:
            # Every byte is first read by a whole-chunk check (4 MiB requests): the
            # kernel's read-ahead beyond it (up to read_ahead_kb, 8 MiB here) would only
            # read bytes the next check reads again, or that are never used. Chunks
            # touched in order are read ahead one at a time instead (_check_chunk).
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
        self._last_checked = -1
        # chunks the kernel was asked to fetch (POSIX_FADV_WILLNEED) and not yet checked
        self._advised = np.zeros(meta.num_chunks if self._advise else 0, dtype=bool)

    @property
    def scratch_bytes(self) -> int:
        """Memory this reader holds for checking (the scratch buffer)."""
        return min(ROWS_SCRATCH, self.meta.chunk_bytes, self.meta.nbytes) if self.verify else 0

    def advise(self, start: int, stop: int) -> None:
        """Ask the kernel to start fetching the unchecked checksum chunks that rows
        ``[start, stop)`` lie in, each as one large asynchronous request, so that the
        check which reads them later finds them in memory or on the way (several arrays
        advised together are read at once instead of one after the other). Advice only:
        no-op for a range outside the array, without checks, or where the platform has
        no ``posix_fadvise``."""
        if not self._advise or not 0 <= start < stop <= self.rows:
            return
        cb = self.meta.chunk_bytes
        for c in range(start * self.row_bytes // cb, (stop * self.row_bytes - 1) // cb + 1):
            self._will_need(c)

    def _will_need(self, c: int, again: bool = False) -> None:
        """Advise chunk ``c`` unless it is checked or advised already (``again``: even
        if it was advised)."""
        if not self._checked[c] and (again or not self._advised[c]):
            m = self.meta
            os.posix_fadvise(self.fd, m.offset + c * m.chunk_bytes,
                             min(m.chunk_bytes, m.nbytes - c * m.chunk_bytes),
                             os.POSIX_FADV_WILLNEED)
            self._advised[c] = True

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(0, stop - start), *self.meta.shape[1:]), dtype=self.meta.np_dtype)
        self.read_into(out, start, stop)
        return out

    def read_into(self, buf: np.ndarray, start: int, stop: int) -> None:
        """Rows ``[start, stop)`` into ``buf`` (C-contiguous, ``(stop - start) * row_bytes``
        bytes): each checksum chunk they touch is checked the first time, as :meth:`read`."""
        if not 0 <= start <= stop <= self.rows:
            raise FormatError(f"array {self.name!r} ({self.path}): rows {start}..{stop} asked "
                              f"for, but it has {self.rows}: the index that pointed there is "
                              f"damaged; {self.fix}")
        lo, hi = start * self.row_bytes, stop * self.row_bytes
        if hi <= lo:
            return
        if self.verify:
            cb = self.meta.chunk_bytes
            for c in range(lo // cb, (hi - 1) // cb + 1):
                if not self._checked[c]:
                    self._check_chunk(c)
        _pread_full(self.fd, memoryview(buf.reshape(-1).view(np.uint8)), self.meta.offset + lo,
                    self.path, self.name)

    def _check_chunk(self, c: int) -> None:
        cb, m = self.meta.chunk_bytes, self.meta
        n = min(cb, m.nbytes - c * cb)
        if self._scratch is None:
            self._scratch = np.empty(self.scratch_bytes, dtype=np.uint8)
        if self._advise:
            # The whole chunk as one request: read through the scratch without it, each
            # piece would be a synchronous request of its own (read-ahead is off). Asked
            # again where it was advised before: that advice may be long past and its pages
            # dropped from the cache since (pages still cached or on the way are not read
            # twice).
            self._will_need(c, again=True)
        crc, done = 0, 0
        while done < n:
            view = memoryview(self._scratch)[:min(n - done, self._scratch.size)]
            _pread_full(self.fd, view, m.offset + c * cb + done, self.path, self.name)
            crc = checksum(view, crc)
            done += len(view)
        if self._advise:
            self._advised[c] = False  # that advice is used up by this read
        if crc != int(self.sums[c]):
            lo = m.offset + c * cb
            raise ChecksumError(f"array {self.name!r} ({self.path}): checksum mismatch in chunk "
                                f"{c} (bytes {lo}..{lo + n}): the file is corrupt; run "
                                f"`oocstore verify` and {self.fix}")
        self._checked[c] = True
        if self._advise and c + 1 < m.num_chunks and c in (0, self._last_checked + 1):
            # Read in order (an epoch's batches): the kernel fetches the next chunk now,
            # so its check reads memory instead of waiting for the disk.
            self._will_need(c + 1)
        self._last_checked = c

    def close(self) -> None:
        # forgotten before it is closed: a close interrupted (Ctrl-C) right after
        # os.close never closes the number again (another file may have it by then)
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        self._scratch = None

    def __del__(self) -> None:
        self.close()
