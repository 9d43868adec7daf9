"""Aligned data files: streaming writer with per-chunk checksums, O_DIRECT reader.

Writers append rows to ``<final>.tmp``; :meth:`ArrayFileWriter.finish` pads the file to
a multiple of :data:`ALIGN`, fsyncs it and renames it to its final name. Nothing refers
to the final name until the catalog transaction commits (see ``store.py``), so a crash
before the commit leaves a file that the next writer removes as an orphan.

:class:`DirectReader` opens with ``O_DIRECT`` so reads bypass the page cache (the point
of an out-of-core store: a benchmark that claims cold reads must not measure RAM).
Where the filesystem refuses ``O_DIRECT`` (tmpfs, some overlay filesystems, macOS) it
falls back to buffered reads with ``POSIX_FADV_RANDOM`` and says so in ``direct``.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from pathlib import Path

import zlib

import numpy as np

try:
    # ISA-L's CRC-32 (carry-less multiply folding): the same checksum as zlib's, about
    # 10x faster here (bench/results/gnn_loaders_a_bandwidth_2026-12-03.txt); both release
    # the GIL on large buffers.
    from isal.isal_zlib import crc32 as _crc32
    CRC32_IMPL = "isal"
except ImportError:  # pragma: no cover - isal is a dependency; zlib computes the same value
    _crc32 = zlib.crc32
    CRC32_IMPL = "zlib"

from ..errors import DiskFullError
from .format import ALIGN, CHUNK_BYTES, align_down, align_up

_O_DIRECT = getattr(os, "O_DIRECT", 0)


def byte_view(data) -> memoryview:
    """A flat byte view of a numpy array (copied only if not contiguous) or bytes-like
    object; empty arrays of any shape work (``memoryview.cast`` refuses zeros in a shape)."""
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    return memoryview(data).cast("B")


def checksum(data, crc: int = 0) -> int:
    """CRC-32 (zlib's polynomial and value) of a bytes-like object or numpy array, without
    copying it (ISA-L where installed: about 20 GB/s on one core here, zlib's own about
    2-3 GB/s). ``crc``: the running value of the bytes before ``data``, for a checksum
    computed in pieces."""
    return _crc32(byte_view(data), crc)


def aligned_empty(nbytes: int, dtype=np.uint8) -> np.ndarray:
    """A zeroed, page-aligned numpy buffer of at least ``nbytes`` (O_DIRECT needs this;
    ``np.empty`` gives no alignment guarantee). Private: a forked child gets its own
    copy-on-write pages, not the parent's buffer."""
    size = max(align_up(nbytes), ALIGN)
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    return np.frombuffer(buf, dtype=np.uint8, count=size).view(dtype)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: errno values that mean "no room left for this write" (EFBIG: the file-size limit).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def raise_disk_error(err: OSError, path: Path) -> None:
    """Re-raise ENOSPC / EFBIG / EDQUOT as :class:`DiskFullError` naming the file; other
    errors (EIO, ...) as an ``OSError`` of the same errno that names the file."""
    if err.errno in DISK_FULL_ERRNOS:
        raise DiskFullError(err.errno, f"disk full while writing {path}: free space on that "
                            "filesystem (or write the store elsewhere) and run the command again; "
                            "the store was left as it was") from err
    if err.errno is not None and err.filename is None:
        raise OSError(err.errno, f"{err.strerror} while writing {path} (the store was left as "
                      "it was; check the disk, e.g. dmesg, then run the command again)",
                      str(path)) from err
    raise err


class WriteFault:
    """A simulated write failure (see :func:`inject_write_fault`): writes through
    :class:`ArrayFileWriter` fail with ``errno`` once ``after_bytes`` bytes in total were
    written; ``at_fsync`` makes the data-file fsync fail instead, ``at_commit`` the
    catalog commit."""

    def __init__(self, after_bytes: int, err: int, *, at_fsync: bool = False,
                 at_commit: bool = False):
        self.after_bytes, self.errno = int(after_bytes), int(err)
        self.at_fsync, self.at_commit = at_fsync, at_commit
        self.written = 0
        self.fired = 0
        self._lock = threading.Lock()

    def room(self, n: int) -> int:
        """Bytes of the next ``n`` that may still be written (claims them)."""
        if self.at_fsync or self.at_commit:
            return n
        with self._lock:
            ok = max(0, min(n, self.after_bytes - self.written))
            self.written += ok
            return ok

    def error(self, what: str) -> OSError:
        self.fired += 1
        return OSError(self.errno, os.strerror(self.errno) + f" (injected at {what})")


_FAULT: WriteFault | None = None


@contextlib.contextmanager
def inject_write_fault(after_bytes: int = 0, err: int = errno.ENOSPC, *, at_fsync: bool = False,
                       at_commit: bool = False):
    """Test hook: inside the block, store writes fail as a full disk (``ENOSPC``) or a
    failing one (``EIO``) would, after ``after_bytes`` bytes; yields the
    :class:`WriteFault` (``fired`` counts the failures raised). For tests and
    ``tools/crash_harness.py``; never active otherwise."""
    global _FAULT
    prev, _FAULT = _FAULT, WriteFault(after_bytes, err, at_fsync=at_fsync, at_commit=at_commit)
    try:
        yield _FAULT
    finally:
        _FAULT = prev


def active_fault() -> WriteFault | None:
    return _FAULT


#: A writer hands its file to writeback every this many bytes (see
#: :meth:`ArrayFileWriter._writeback`).
WRITEBACK_BYTES = 64 << 20
_FADV_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)


class ArrayFileWriter:
    """Append-only writer of one array file, computing a CRC-32 per ``chunk_bytes``."""

    def __init__(self, final_path: Path, *, chunk_bytes: int = CHUNK_BYTES):
        self.final_path = Path(final_path)
        self.tmp_path = self.final_path.with_name(self.final_path.name + ".tmp")
        self.chunk_bytes = chunk_bytes
        self.nbytes = 0
        self.checksums: list[int] = []
        self._crc = 0
        self._in_chunk = 0
        self._wb_lo = 0  # written bytes before this are already handed to writeback
        self._wb_mark = 0
        self._closed = True
        try:
            self.final_path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.tmp_path, "wb", buffering=0)
        except OSError as err:
            raise_disk_error(err, self.final_path)
        self._closed = False

    def write(self, data: np.ndarray | bytes) -> None:
        mv = byte_view(data)
        pos = 0
        n = len(mv)
        while pos < n:
            take = min(n - pos, self.chunk_bytes - self._in_chunk)
            piece = mv[pos:pos + take]
            self._crc = checksum(piece, self._crc)
            self._in_chunk += take
            pos += take
            if self._in_chunk == self.chunk_bytes:
                self.checksums.append(int(self._crc))
                self._crc = 0
                self._in_chunk = 0
        self._write_all(mv)
        self.nbytes += n

    def _write_all(self, mv: memoryview) -> None:
        try:
            fault = _FAULT
            if fault is not None:
                ok = fault.room(len(mv))
                if ok < len(mv):
                    self._f.write(mv[:ok])  # the part that fitted, as a real disk would
                    raise fault.error(f"{self.tmp_path}, byte {self.nbytes + ok}")
            end = self.nbytes + len(mv)
            while len(mv):
                written = self._f.write(mv)
                mv = mv[written:]
        except OSError as err:
            self.abort()
            raise_disk_error(err, self.final_path)
        if end - self._wb_mark >= WRITEBACK_BYTES:
            self._writeback(end)

    def _writeback(self, end: int) -> None:
        """Start writing bytes ``[.., end)`` to disk now and drop the pages of the range
        before, which earlier calls already sent: a large file then streams to disk while
        it is being written instead of piling up dirty pages (the closing fsync stays
        short) or filling the page cache with data nobody reads back soon."""
        if _FADV_DONTNEED is None:
            return
        try:
            os.posix_fadvise(self._f.fileno(), self._wb_lo, end - self._wb_lo, _FADV_DONTNEED)
        except OSError:
            return  # advice only
        self._wb_lo, self._wb_mark = self._wb_mark, end

    def finish(self) -> None:
        """Pad to :data:`ALIGN`, fsync, rename to the final name (not yet committed)."""
        if self._in_chunk:
            self.checksums.append(int(self._crc))
            self._in_chunk = 0
        pad = align_up(self.nbytes) - self.nbytes
        if pad or self.nbytes == 0:
            self._write_all(memoryview(bytes(pad if self.nbytes else ALIGN)))
        try:
            if _FAULT is not None and _FAULT.at_fsync:
                raise _FAULT.error(f"fsync of {self.tmp_path}")
            os.fsync(self._f.fileno())
        except OSError as err:
            self.abort()
            raise_disk_error(err, self.final_path)
        self._f.close()
        self._closed = True
        os.replace(self.tmp_path, self.final_path)

    def abort(self) -> None:
        if not self._closed:
            self._f.close()
            self._closed = True
        for p in (self.tmp_path,):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


class DirectReader:
    """Positional reads of one file, with O_DIRECT where the filesystem allows it.

    ``read_into(buf, offset)`` needs ``buf`` from :func:`aligned_empty` and ``offset`` /
    ``len(buf)`` multiples of :data:`ALIGN` when ``direct`` is true.
    """

    def __init__(self, path: Path, *, direct: bool = True):
        self.path = Path(path)
        self.direct = False
        self.fallback_reason: str | None = None
        fd = -1
        if direct and _O_DIRECT:
            try:
                fd = os.open(self.path, os.O_RDONLY | _O_DIRECT)
                self.direct = True
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                self.fallback_reason = f"O_DIRECT not supported on the filesystem of {self.path}"
        elif direct:
            self.fallback_reason = "O_DIRECT not available on this platform"
        else:
            self.fallback_reason = "buffered reads were asked for (direct=False)"
        if fd < 0:
            fd = os.open(self.path, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def read_into(self, buf: np.ndarray, offset: int) -> int:
        """Fill ``buf`` from ``offset``; returns the bytes read (short only at EOF)."""
        mv = memoryview(buf).cast("B")
        total = 0
        while total < len(mv):
            n = os.preadv(self.fd, [mv[total:]], offset + total)
            if n == 0:
                break
            total += n
        return total

    def read(self, offset: int, nbytes: int) -> np.ndarray:
        """Read ``nbytes`` at any ``offset`` (aligns internally); returns uint8 data."""
        start = align_down(offset)
        end = align_up(offset + nbytes)
        buf = aligned_empty(end - start)
        got = self.read_into(buf[: end - start], start)
        lo = offset - start
        return buf[lo: min(lo + nbytes, got)]

    def close(self) -> None:
        # forgotten before it is closed: a close interrupted (Ctrl-C) right after
        # os.close never closes the number again (another file may have it by then)
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "DirectReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def evict(path: Path) -> None:
    """Drop ``path`` from the page cache (``POSIX_FADV_DONTNEED``); close mmaps first."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
