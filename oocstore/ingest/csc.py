"""CSC construction out of core: edges streamed in blocks, bounded memory at any edge count.

:func:`~oocstore.ingest.common.build_csc` holds every edge in memory (about 24 bytes per
stored edge at peak): a papers100M-sized graph (a few billion stored edges) needs tens of
GB for its topology alone. :func:`write_csc_streaming` builds the same arrays from edge
blocks in two passes over temporary files:

1. **Spill.** Each block is symmetrised (unless directed), self-loops are dropped, and
   every edge ``src -> dst`` becomes the key ``(dst - lo) * N + src`` of its destination
   range ``[lo, lo + range)``; keys are appended to that range's temporary file. The
   ranges are equal node intervals, sized so that one holds about a quarter of the
   memory bound's worth of keys on average.
2. **Sort.** Ranges are read back one at a time, in node order; each is sorted,
   de-duplicated, counted into ``indptr`` and appended to the ``indices`` array writer,
   so ``indices`` streams to the store in CSC order. A range larger than the bound (a
   hub, or skew) is split further by its per-node counts and read once per part.

Memory: ``memory_bytes`` for one range's keys and their working copies, plus 8 bytes
per node for ``indptr`` and the caller's edge block. Temporary disk: 8 bytes per stored
edge (before de-duplication), deleted as each range is consumed.

The result is identical to :func:`~oocstore.ingest.common.build_csc` for the same
edges (the same keys, sorted and de-duplicated per destination)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import SourceError

#: Default memory bound of the CSC build (one destination range's keys and copies).
DEFAULT_CSC_MEMORY = 256 << 20

#: Bytes per key while one range is processed: the key (8), the de-duplication mask (1),
#: the de-duplicated copy (8), the index column (4) and the count column (8, by node;
#: bounded by the keys), rounded up.
_BYTES_PER_KEY = 32

#: Keys read per step when a range is scanned in parts.
_SCAN_KEYS = 1 << 20


@dataclass
class CscStats:
    num_edges: int  # stored edges (after symmetrising, de-duplication, self-loop removal)
    dropped: int  # input edges (x2 when symmetrised) not stored
    ranges: int  # destination ranges spilled
    split_ranges: int  # ranges that had to be read in parts
    spill_bytes: int  # bytes written to temporary files


def _index_dtype(num_nodes: int) -> np.dtype:
    return np.dtype(np.int32 if num_nodes < 2**31 else np.int64)


def unique_sorted(key: np.ndarray) -> np.ndarray:
    """``key`` sorted (in place) with each value once. A sort and a "differs from the
    previous key" mask: the same result as ``np.unique``, which is ~100x slower on large
    int64 arrays with numpy 2.x (it sorts with a hash fallback)."""
    key.sort()
    if not key.size:
        return key
    keep = np.empty(key.size, dtype=bool)
    keep[0] = True
    np.not_equal(key[1:], key[:-1], out=keep[1:])
    return key[keep]


def csc_from_keys(key: np.ndarray, n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray]:
    """CSC of the edges whose keys ``dst * n_src + src`` are ``key`` (int64, sorted in
    place; duplicates count once): ``indptr`` (int64) over the ``n_dst`` destination
    nodes and the source ids, int32 where ``n_src`` allows, each destination's sources
    in ascending order. What :func:`~oocstore.ingest.common.build_csc` and a
    heterogeneous store's relations are built by in memory."""
    n = max(n_src, 1)
    key = unique_sorted(key)
    counts = np.bincount(key // n, minlength=n_dst) if key.size else \
        np.zeros(n_dst, dtype=np.int64)
    indptr = np.zeros(n_dst + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    del counts
    return indptr, (key % n).astype(_index_dtype(n_src))


def check_edges(src, dst, num_nodes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``src`` / ``dst`` as arrays, checked: one-dimensional, of one shape, every node in
    ``0..num_nodes - 1``."""
    src = np.asarray(src)
    dst = np.asarray(dst)
    if src.shape != dst.shape or src.ndim != 1:
        raise SourceError(f"{where}: edge sources and destinations differ in shape "
                          f"({src.shape} vs {dst.shape})")
    if src.size:
        lo = min(int(src.min()), int(dst.min()))
        hi = max(int(src.max()), int(dst.max()))
        if lo < 0 or hi >= num_nodes:
            bad = lo if lo < 0 else hi
            raise SourceError(f"{where}: edge names node {bad}, outside 0..{num_nodes - 1}: "
                              "fix the edge list or give the right node count")
    return src, dst


def write_csc_streaming(txn, num_nodes: int, blocks: Iterable[tuple[np.ndarray, np.ndarray]], *,
                        directed: bool, where: str, expected_edges: int,
                        memory_bytes: int = DEFAULT_CSC_MEMORY, tmp_dir: str | Path | None = None,
                        indptr_name: str = "graph/indptr", indices_name: str = "graph/indices"
                        ) -> CscStats:
    """Write ``indptr`` / ``indices`` of the CSC of ``blocks`` (``(src, dst)`` pairs of
    arrays) into transaction ``txn``. ``expected_edges``: input edges (before
    symmetrising) the blocks will hold, for sizing the ranges; a wrong guess costs
    speed (ranges read in parts), never memory. ``tmp_dir``: where the spill files go
    (default: the directory of the store being written; for a new store that is its
    staging directory, which is removed with everything in it if the process dies)."""
    n = int(num_nodes)
    if n < 1:
        raise SourceError(f"{where}: a graph needs at least one node")
    if memory_bytes < _BYTES_PER_KEY * 1024:
        raise ValueError(f"memory_bytes {memory_bytes}: give at least {_BYTES_PER_KEY * 1024}")
    limit = memory_bytes // _BYTES_PER_KEY  # keys of one range in memory
    stored = max(1, int(expected_edges) * (1 if directed else 2))
    ranges = max(1, min(n, -(-4 * stored // limit)))  # ~limit/4 keys per range on average
    span = -(-n // ranges)
    ranges = -(-n // span)
    tmp = Path(tempfile.mkdtemp(prefix="oocstore-csc-",
                                dir=tmp_dir if tmp_dir is not None else txn.store.path))
    try:
        n_in, spill = _spill_keys(blocks, tmp, n, span, ranges, directed=directed, where=where)
        indptr = np.zeros(n + 1, dtype=np.int64)
        iw = txn.array_writer(indices_name, _index_dtype(n))
        total, split = _emit_ranges(tmp, ranges, span, n, limit, indptr, iw)
        iw.close()
        np.cumsum(indptr, out=indptr)
        txn.write_array(indptr_name, indptr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dropped = (n_in if directed else 2 * n_in) - total
    return CscStats(num_edges=total, dropped=int(dropped), ranges=ranges, split_ranges=split,
                    spill_bytes=spill)


def _spill_keys(blocks: Iterable[tuple[np.ndarray, np.ndarray]], tmp: Path, n: int, span: int,
                ranges: int, *, directed: bool, where: str) -> tuple[int, int]:
    """Pass 1: the key ``(dst - range start) * n + src`` of every edge of ``blocks`` (both
    directions unless ``directed``; self-loops dropped), appended to the spill file
    ``tmp/<range>.keys`` of its destination's range of ``span`` nodes. Returns the input
    edges and the bytes spilled."""
    n_in = 0
    spill = 0
    files = [open(tmp / f"{r}.keys", "wb") for r in range(ranges)]
    try:
        for src, dst in blocks:
            src, dst = check_edges(src, dst, n, where)
            if not src.size:
                continue
            n_in += src.size
            spill += _spill_block(src, dst, files, n, span, ranges, directed)
    finally:
        for f in files:
            f.close()
    return n_in, spill


def _spill_block(src: np.ndarray, dst: np.ndarray, files: list, n: int, span: int, ranges: int,
                 directed: bool) -> int:
    """Append the keys of one checked block of edges to the range files; returns the bytes
    written."""
    s = src.astype(np.int64, copy=False)
    d = dst.astype(np.int64, copy=False)
    if not directed:
        s, d = np.concatenate([s, d]), np.concatenate([d, s])
    keep = s != d
    s, d = s[keep], d[keep]
    del keep
    r = d // span
    key = (d - r * span) * np.int64(n) + s
    del s, d
    order = np.argsort(r, kind="stable")
    key = key[order]
    bounds = np.searchsorted(r[order], np.arange(ranges + 1))
    del order, r
    for i in range(ranges):
        a, b = int(bounds[i]), int(bounds[i + 1])
        if b > a:
            key[a:b].tofile(files[i])
    return key.nbytes


def _emit_ranges(tmp: Path, ranges: int, span: int, n: int, limit: int, indptr: np.ndarray,
                 iw) -> tuple[int, int]:
    """Pass 2: each range's spill file sorted and de-duplicated into ``indptr`` counts and
    ``iw`` (the indices), in parts where it holds more than ``limit`` keys; each file is
    deleted once read. Returns the edges stored and the ranges read in parts."""
    total = 0
    split = 0
    for i in range(ranges):
        path = tmp / f"{i}.keys"
        count = os.path.getsize(path) // 8
        lo_node = i * span
        width = min(span, n - lo_node)
        if count <= limit:
            total += _emit(np.fromfile(path, dtype=np.int64), 0, width, n, lo_node, indptr, iw)
        else:
            split += 1
            total += _emit_in_parts(path, count, limit, width, n, lo_node, indptr, iw)
        path.unlink()
    return total, split


def _emit(key: np.ndarray, first: int, width: int, n: int, lo_node: int, indptr: np.ndarray,
          iw) -> int:
    """Sort and de-duplicate the keys of destination nodes ``lo_node + first ..
    lo_node + first + width`` (keys relative to ``lo_node``), count them into
    ``indptr[1 + node]`` and append their sources to ``iw``; returns the stored edges."""
    if not key.size:
        return 0
    key = unique_sorted(key)
    node = key // n
    counts = np.bincount(node - first, minlength=width)
    a = lo_node + first + 1
    indptr[a:a + counts.size] = counts
    del node, counts
    iw.append((key % n).astype(iw.dtype))
    return int(key.size)


def _emit_in_parts(path: Path, count: int, limit: int, width: int, n: int, lo_node: int,
                   indptr: np.ndarray, iw) -> int:
    """A range with more keys than fit: count keys per destination node (one scan), cut
    the range into node intervals of at most ``limit`` keys (a node with more stays
    alone), and emit each interval from one further scan."""
    keys = np.memmap(path, dtype=np.int64, mode="r", shape=(count,))
    try:
        per_node = np.zeros(width, dtype=np.int64)
        for a in range(0, count, _SCAN_KEYS):
            per_node += np.bincount(np.asarray(keys[a:a + _SCAN_KEYS]) // n, minlength=width)
        cuts = [0]
        acc = 0
        for v, c in enumerate(per_node.tolist()):
            if acc and acc + c > limit:
                cuts.append(v)
                acc = 0
            acc += c
        cuts.append(width)
        del per_node
        total = 0
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            parts = []
            for a in range(0, count, _SCAN_KEYS):
                k = np.asarray(keys[a:a + _SCAN_KEYS])
                sel = k[(k >= lo * n) & (k < hi * n)]
                if sel.size:
                    parts.append(sel)
            part = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            del parts
            total += _emit(part, lo, hi - lo, n, lo_node, indptr, iw)
        return total
    finally:
        del keys
