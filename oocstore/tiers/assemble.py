"""CPU assembly: one pass that builds a batch's feature rows from the memory tier and
the current SSD segment (the rows that need no further I/O).

The kernels check every index against the buffer it points into before using it (one
compare per row, nothing next to the row copy): a tier or slot value from a damaged
pack is counted and skipped, never followed, and the caller raises a ``FormatError``
naming the pack array. The pack's arrays are also checksum-checked when read
(``oocstore/checked_read.py``); the bounds checks are what keeps memory safe whatever
the bytes say."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, parallel=True)
def assemble_rows(tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host=True,
                  gpu_slots=-1):
    """For every position ``i``: tier 0 (GPU tier kept on the host) -> ``host_rows[slot]``,
    tier 1 (CPU) -> ``host_rows[gpu_rows + slot]``, tier 2 (SSD) -> ``seg_rows[slot]``;
    tier 3 (base fallback), and tier 0 when the GPU tier lives on the device
    (``gpu_on_host`` false), are left for the caller. ``gpu_slots``: rows of the GPU
    tier (default ``gpu_rows``, the part of ``host_rows`` that holds it). Returns
    ``[gpu, cpu, ssd, base, invalid]`` position counts; ``invalid`` counts positions
    whose tier is unknown or whose slot is outside its tier — they are not copied."""
    n = tier.shape[0]
    d = out.shape[1]
    if gpu_slots < 0:
        gpu_slots = gpu_rows
    cpu_slots = host_rows.shape[0] - gpu_rows
    seg_slots = seg_rows.shape[0]
    if slot.shape[0] < n or out.shape[0] < n:
        return np.array([0, 0, 0, 0, n], dtype=np.int64)
    bad = 0
    # Explicit column loops: numba compiles a row slice assignment (out[i] = src[k]) into
    # a generic broadcast that is ~10x slower than this for 100-1000 element rows.
    for i in numba.prange(n):
        t = tier[i]
        k = slot[i]
        if t == 0:
            if k < 0 or k >= gpu_slots:
                bad += 1
            elif gpu_on_host:
                for j in range(d):
                    out[i, j] = host_rows[k, j]
        elif t == 1:
            if k < 0 or k >= cpu_slots:
                bad += 1
            else:
                k += gpu_rows
                for j in range(d):
                    out[i, j] = host_rows[k, j]
        elif t == 2:
            if k < 0 or k >= seg_slots:
                bad += 1
            else:
                for j in range(d):
                    out[i, j] = seg_rows[k, j]
        elif t != 3:
            bad += 1
    counts = np.zeros(5, dtype=np.int64)
    for i in range(n):
        if tier[i] <= 3:
            counts[tier[i]] += 1
    counts[4] = bad
    return counts


@numba.njit(cache=True, nogil=True)
def scatter_rows(src, src_pos, dst, dst_row, dst_lo=0):
    """``dst[dst_row[i]] = src[src_pos[i]]`` for ``i`` in order (rows; explicit column
    loops, see :func:`assemble_rows`): a scheduled CPU tier's admissions from the batch
    just built. Sequential on purpose: a batch's schedule may admit to one slot twice,
    and the later admission must win (as numpy's fancy assignment does).

    Every index is checked first (``src_pos`` inside ``src``, ``dst_row`` inside
    ``dst[dst_lo:]``, one per ``src_pos``); returns the number of invalid entries, and
    copies nothing unless it is 0."""
    d = src.shape[1]
    if dst_row.shape[0] != src_pos.shape[0]:
        return src_pos.shape[0] + 1
    bad = 0
    for i in range(src_pos.shape[0]):
        if src_pos[i] < 0 or src_pos[i] >= src.shape[0] or dst_row[i] < dst_lo \
                or dst_row[i] >= dst.shape[0]:
            bad += 1
    if bad:
        return bad
    for i in range(src_pos.shape[0]):
        a = src_pos[i]
        b = dst_row[i]
        for j in range(d):
            dst[b, j] = src[a, j]
    return 0


def warm_up(dtype) -> None:
    """Load (or compile) the assembly kernels for rows of ``dtype`` now, so a measurement
    started afterwards sees the loader's buffers, not numba's one-off code memory."""
    from .memory import gather_rows

    rows = np.zeros((4, 2), dtype=dtype)
    out = np.zeros((2, 2), dtype=dtype)
    assemble_rows(np.array([1, 2], np.uint8), np.array([0, 1], np.int32), rows, 0, rows, out, True)
    gather_rows(rows, np.array([0, 1], np.int64), out)
    scatter_rows(out, np.array([0, 1], np.int64), rows, np.array([2, 3], np.int64))
