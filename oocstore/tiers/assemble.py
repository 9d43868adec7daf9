"""CPU assembly: one pass that builds a batch's feature rows from the memory tier and
the current SSD segment (the rows that need no further I/O)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, parallel=True)
def assemble_rows(tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host=True):
    """For every position ``i``: tier 0 (GPU tier kept on the host) -> ``host_rows[slot]``,
    tier 1 (CPU) -> ``host_rows[gpu_rows + slot]``, tier 2 (SSD) -> ``seg_rows[slot]``;
    tier 3 (base fallback), and tier 0 when the GPU tier lives on the device
    (``gpu_on_host`` false), are left for the caller. Returns the number of positions
    per tier as ``[gpu, cpu, ssd, base]``."""
    n = tier.shape[0]
    d = out.shape[1]
    # Explicit column loops: numba compiles a row slice assignment (out[i] = src[k]) into
    # a generic broadcast that is ~10x slower than this for 100-1000 element rows.
    for i in numba.prange(n):
        t = tier[i]
        if t == 0 and gpu_on_host:
            k = slot[i]
            for j in range(d):
                out[i, j] = host_rows[k, j]
        elif t == 1:
            k = gpu_rows + slot[i]
            for j in range(d):
                out[i, j] = host_rows[k, j]
        elif t == 2:
            k = slot[i]
            for j in range(d):
                out[i, j] = seg_rows[k, j]
    counts = np.zeros(4, dtype=np.int64)
    for i in range(n):
        counts[tier[i]] += 1
    return counts


@numba.njit(cache=True, nogil=True)
def scatter_rows(src, src_pos, dst, dst_row):
    """``dst[dst_row[i]] = src[src_pos[i]]`` for ``i`` in order (rows; explicit column
    loops, see :func:`assemble_rows`): a scheduled CPU tier's admissions from the batch
    just built. Sequential on purpose: a batch's schedule may admit to one slot twice,
    and the later admission must win (as numpy's fancy assignment does)."""
    d = src.shape[1]
    for i in range(src_pos.shape[0]):
        a = src_pos[i]
        b = dst_row[i]
        for j in range(d):
            dst[b, j] = src[a, j]


def warm_up(dtype) -> None:
    """Load (or compile) the assembly kernels for rows of ``dtype`` now, so a measurement
    started afterwards sees the loader's buffers, not numba's one-off code memory."""
    from .memory import gather_rows

    rows = np.zeros((4, 2), dtype=dtype)
    out = np.zeros((2, 2), dtype=dtype)
    assemble_rows(np.array([1, 2], np.uint8), np.array([0, 1], np.int32), rows, 0, rows, out, True)
    gather_rows(rows, np.array([0, 1], np.int64), out)
    scatter_rows(out, np.array([0, 1], np.int64), rows, np.array([2, 3], np.int64))
