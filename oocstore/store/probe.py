"""Measurements of the disk a store lives on (what benchmarks compare against)."""

from __future__ import annotations

import os
import time
from pathlib import Path

_REQUEST = 8 << 20


def write_speed(directory: str | os.PathLike, nbytes: int) -> float:
    """Bytes/s writing a new file of ``nbytes`` in 8 MiB requests and fsync'ing it (the
    file is deleted afterwards): the disk's sequential write speed, page cache excluded."""
    path = Path(directory) / ".oocstore-write.probe"
    buf = memoryview(os.urandom(_REQUEST))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        left = nbytes
        while left > 0:
            left -= os.write(fd, buf[:min(left, _REQUEST)])
        os.fsync(fd)
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    return nbytes / seconds
