"""CPU assembly: one pass that builds a batch's feature rows from the memory tier and
the current SSD segment (the rows that need no further I/O).

The kernels check every index against the buffer it points into before using it (one
compare per row, nothing next to the row copy): a tier or slot value from a damaged
pack is counted and skipped, never followed, and the caller raises a ``FormatError``
naming the pack array. The pack's arrays are also checksum-checked when read
(``oocstore/checked_read.py``); the bounds checks are what keeps memory safe whatever
the bytes say.

**Streaming stores.** A batch (tens of MB) is written once and read later by another
thread or the device copy, never re-read from the cache by the kernel. An ordinary
store first reads every destination cache line from memory (write-allocate), a third of
the memory traffic of a row copy; where the batch's rows are 64-byte aligned and a
multiple of 64 bytes long (the reader's batch buffers are aligned; 128 float32 = 512 B),
the kernel copies them with non-temporal 64-byte stores instead, which skip that read:
1.5-2x faster assembly on this machine (bench/results/gnn_loaders_a_bandwidth_2026-12-03.txt).
Each block of rows ends with a store fence, so the rows are visible to whichever thread
reads the batch next. Anything else (other row sizes, unaligned or strided buffers)
takes the ordinary copy.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

#: Rows per parallel work item; a store fence closes each.
BLOCK_ROWS = 256
#: Bytes of one streaming store (a cache line).
LINE = 64


@intrinsic
def _stream_line(typingctx, dst, src):
    """Copy the 64 bytes at address ``src`` to address ``dst`` (64-byte aligned) with a
    non-temporal store (a plain store where the target has none)."""
    sig = types.void(types.uintp, types.uintp)

    def codegen(context, builder, signature, args):
        vec = ir.VectorType(ir.IntType(64), LINE // 8)
        value = builder.load(builder.inttoptr(args[1], vec.as_pointer()), align=1)
        store = builder.store(value, builder.inttoptr(args[0], vec.as_pointer()), align=LINE)
        store.set_metadata("nontemporal",
                           builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _store_fence(typingctx):
    """Order the non-temporal stores before it with every later memory access."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _dense_rows(a, row_bytes):
    """Whether ``a``'s rows are ``row_bytes`` apart and each one contiguous."""
    if a.shape[0] > 1 and a.strides[0] != row_bytes:
        return False
    return a.ndim < 2 or a.shape[1] < 2 or a.strides[1] == a.itemsize


@numba.njit(cache=True, nogil=True, inline="always")
def _streamable(out, host_rows, seg_rows):
    """Whether the streaming copy applies: rows a multiple of :data:`LINE` bytes, ``out``
    aligned to it, every buffer's rows dense and of the same element type."""
    row_bytes = out.shape[1] * out.itemsize
    return (row_bytes > 0 and row_bytes % LINE == 0 and out.ctypes.data % LINE == 0
            and host_rows.itemsize == out.itemsize and seg_rows.itemsize == out.itemsize
            and _dense_rows(out, row_bytes) and _dense_rows(host_rows, row_bytes)
            and _dense_rows(seg_rows, row_bytes))


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
    stream = _streamable(out, host_rows, seg_rows)
    row_bytes = d * out.itemsize
    out_addr = out.ctypes.data
    host_addr = host_rows.ctypes.data
    seg_addr = seg_rows.ctypes.data
    bad = 0
    for blk in numba.prange((n + BLOCK_ROWS - 1) // BLOCK_ROWS):
        for i in range(blk * BLOCK_ROWS, min(n, (blk + 1) * BLOCK_ROWS)):
            t = tier[i]
            k = slot[i]
            # the source row (-1: nothing to copy here), bounds-checked first
            src = -1
            from_seg = False
            if t == 0:
                if k < 0 or k >= gpu_slots:
                    bad += 1
                elif gpu_on_host:
                    src = k
            elif t == 1:
                if k < 0 or k >= cpu_slots:
                    bad += 1
                else:
                    src = k + gpu_rows
            elif t == 2:
                if k < 0 or k >= seg_slots:
                    bad += 1
                else:
                    src = k
                    from_seg = True
            elif t != 3:
                bad += 1
            if src < 0:
                continue
            if stream:
                a = (seg_addr if from_seg else host_addr) + src * row_bytes
                b = out_addr + i * row_bytes
                for c in range(0, row_bytes, LINE):
                    _stream_line(b + c, a + c)
            elif from_seg:
                # Explicit column loops: numba compiles a row slice assignment
                # (out[i] = src[k]) into a generic broadcast ~10x slower than this for
                # 100-1000 element rows.
                for j in range(d):
                    out[i, j] = seg_rows[src, j]
            else:
                for j in range(d):
                    out[i, j] = host_rows[src, j]
        if stream:
            _store_fence()
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
    # every argument as the reader passes it (an omitted one is another specialization,
    # loaded on first use: tens of ms inside the first batch)
    assemble_rows(np.array([1, 2], np.uint8), np.array([0, 1], np.int32), rows, 0, rows, out, True,
                  0)
    gather_rows(rows, np.array([0, 1], np.int64), out)
    scatter_rows(out, np.array([0, 1], np.int64), rows, np.array([2, 3], np.int64))
