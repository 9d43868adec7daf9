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

import os
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

#: Rows per parallel work item; a store fence closes each.
BLOCK_ROWS = 256
#: ``part`` of the assembly kernels: every position, only those of the segment (tier 2),
#: or only the others (memory tiers; the segment's buffer may be reused meanwhile).
ALL, SEGMENT, MEMORY = 0, 1, 2
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


@intrinsic
def _fetch_add(typingctx, addr, value):
    """Atomically add ``value`` to the int64 at address ``addr``; returns the old value."""
    sig = types.int64(types.uintp, types.int64)

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.atomic_rmw("add", ptr, args[1], "seq_cst")

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


@numba.njit(cache=True, nogil=True, inline="always")
def _copy_block(tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host, gpu_slots,
                stream, lo, hi, part):
    """Rows ``lo..hi-1`` of a batch (see :func:`assemble_rows`) of ``part``; returns how
    many of its positions were refused (unknown tier, slot outside its tier)."""
    d = out.shape[1]
    cpu_slots = host_rows.shape[0] - gpu_rows
    seg_slots = seg_rows.shape[0]
    row_bytes = d * out.itemsize
    out_addr = out.ctypes.data
    host_addr = host_rows.ctypes.data
    seg_addr = seg_rows.ctypes.data
    bad = 0
    for i in range(lo, hi):
        t = tier[i]
        if (part == SEGMENT and t != 2) or (part == MEMORY and t == 2):
            continue
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
    return bad


@numba.njit(cache=True, nogil=True)
def tier_counts(tier):
    """``[gpu, cpu, ssd, base, other]`` position counts of a batch's tier entries."""
    counts = np.zeros(5, dtype=np.int64)
    for i in range(tier.shape[0]):
        counts[min(tier[i], 4)] += 1
    return counts


@numba.njit(cache=True, nogil=True, parallel=True)
def assemble_rows(tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host=True,
                  gpu_slots=-1, part=ALL):
    """For every position ``i``: tier 0 (GPU tier kept on the host) -> ``host_rows[slot]``,
    tier 1 (CPU) -> ``host_rows[gpu_rows + slot]``, tier 2 (SSD) -> ``seg_rows[slot]``;
    tier 3 (base fallback), and tier 0 when the GPU tier lives on the device
    (``gpu_on_host`` false), are left for the caller. ``gpu_slots``: rows of the GPU
    tier (default ``gpu_rows``, the part of ``host_rows`` that holds it). Returns
    ``[gpu, cpu, ssd, base, invalid]`` position counts; ``invalid`` counts positions
    whose tier is unknown or whose slot is outside its tier — they are not copied.

    ``part``: :data:`ALL` positions, or only the :data:`SEGMENT`'s (tier 2) or only the
    :data:`MEMORY` tiers' ones (each position's refusal is counted by the part that
    copies it, so the two parts' ``invalid`` counts add up to the whole batch's). A
    caller copies the segment's rows first and releases its buffer for the next read,
    then copies the memory tiers' rows (most of them) while the disk reads."""
    n = tier.shape[0]
    if gpu_slots < 0:
        gpu_slots = gpu_rows
    if slot.shape[0] < n or out.shape[0] < n:
        return np.array([0, 0, 0, 0, n], dtype=np.int64)
    stream = _streamable(out, host_rows, seg_rows)
    bad = 0
    for blk in numba.prange((n + BLOCK_ROWS - 1) // BLOCK_ROWS):
        bad += _copy_block(tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host,
                           gpu_slots, stream, blk * BLOCK_ROWS,
                           min(n, (blk + 1) * BLOCK_ROWS), part)
    counts = tier_counts(tier)
    counts[4] = bad
    return counts


#: ``ctl`` words of :func:`assemble_claimed`: next block to claim, blocks copied, refused
#: positions.
_NEXT, _DONE, _BAD = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def assemble_claimed(tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host, gpu_slots,
                     part, ctl):
    """:func:`assemble_rows` shared between threads: each caller claims blocks of
    :data:`BLOCK_ROWS` rows from the counter ``ctl[0]`` (atomically) until none is left,
    then adds the blocks it copied to ``ctl[1]`` and its refused positions to ``ctl[2]``.
    Any number of threads may run it on the same ``ctl``, at any time: one that starts
    late finds no block left and touches nothing. Returns the blocks this call copied."""
    n = tier.shape[0]
    blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    if gpu_slots < 0:
        gpu_slots = gpu_rows
    if slot.shape[0] < n or out.shape[0] < n:
        return 0
    stream = _streamable(out, host_rows, seg_rows)
    addr = ctl.ctypes.data
    mine = 0
    bad = 0
    while True:
        blk = _fetch_add(addr + 8 * _NEXT, 1)
        if blk >= blocks:
            break
        bad += _copy_block(tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host,
                           gpu_slots, stream, blk * BLOCK_ROWS, min(n, (blk + 1) * BLOCK_ROWS),
                           part)
        mine += 1
    _fetch_add(addr + 8 * _BAD, bad)
    _fetch_add(addr + 8 * _DONE, mine)
    return mine


class _Job:
    """One batch offered to the helper: the arguments of :func:`assemble_claimed`,
    whether the caller offered it and whether the helper took it (each set under the
    helper's lock), and the event the helper sets when it has let go of it."""

    __slots__ = ("args", "offered", "taken", "done")

    def __init__(self, args: tuple):
        self.args = args
        self.offered = False
        self.taken = False
        self.done = threading.Event()


class AssemblyHelper:
    """A second thread that assembles blocks of each batch's rows beside the thread that
    reads the batch (:func:`assemble_claimed`).

    Assembling the rows of a batch (a gather from the CPU tier, a random access per row)
    is most of the reading thread's CPU time; on a machine with a core to spare the
    helper takes about half of it. The caller never waits for the helper to start: it
    claims blocks itself until none is left, withdraws the batch if the helper has not
    picked it up yet, and otherwise waits only for the blocks the helper claimed (a few
    microseconds of copying each). When :meth:`assemble` returns, the helper holds no
    reference to the batch's arrays (a pooled batch buffer goes back to its pool as soon
    as the caller drops it)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._job = None  # the batch offered to the helper, until it takes it
        self._closing = False
        self._closed = False  # set by close(): no helper thread is started again
        self._thread = None
        self._pid = 0
        self.helped = 0  # blocks the helper copied (all batches)
        self.batches = 0  # batches shared with the helper
        self.waited_s = 0.0  # time callers waited for blocks the helper had claimed

    def _start(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        # a forked child (a data-loader worker) has no helper thread: start its own; so
        # does a process whose helper ended on an error (a kernel that failed to load)
        self._cond = threading.Condition(threading.Lock())
        self._job, self._closing = None, False
        self._thread = threading.Thread(target=self._run, name="oocstore-assemble",
                                        daemon=True)
        self._pid = os.getpid()
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                job = self._job
                job.taken = True  # before the offer is cleared: see _let_go
                self._job = None
            try:
                self.helped += assemble_claimed(*job.args)
            finally:
                done = job.done
                del job  # before the caller may return: no reference outlives it
                done.set()

    def assemble(self, tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host=True,
                 gpu_slots=-1, part=ALL) -> np.ndarray:
        """What :func:`assemble_rows` returns, the rows copied by this thread and the
        helper together."""
        n = tier.shape[0]
        # after close() (another thread closed the reader while this one still reads), a
        # new helper thread would be one nobody joins: assemble in this thread alone
        if self._closed or n <= BLOCK_ROWS or slot.shape[0] < n or out.shape[0] < n:
            return assemble_rows(tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host,
                                 gpu_slots, part)
        self._start()
        ctl = np.zeros(3, dtype=np.int64)
        job = _Job((tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host, gpu_slots,
                    part, ctl))
        # The offer is made inside the ``try``: an interrupt (Ctrl-C) at any point after
        # it, even before this thread's own claiming starts, withdraws the batch or
        # waits for the helper's blocks (_let_go decides from the job's state, so it is
        # right whether or not the offer was made).
        try:
            with self._cond:
                if self._job is None:
                    job.offered = True
                    self._job = job
                    self._cond.notify()
                # else another thread's batch waits for the helper: offering this one
                # would replace it, and that caller would wait for a helper that never
                # took it; this batch is copied by its caller alone (below)
            if job.offered:
                assemble_claimed(*job.args)
        finally:
            self._let_go(job)
        if not job.offered:
            return assemble_rows(tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host,
                                 gpu_slots, part)
        self.batches += 1
        counts = tier_counts(tier)
        counts[4] = ctl[_BAD]
        return counts

    def _let_go(self, job: "_Job") -> None:
        """Withdraw ``job`` if it is still offered, else wait for the blocks the helper
        claimed if it took it; nothing for a job never offered. Also when the caller is
        interrupted (Ctrl-C) meanwhile, here too: the interrupt is raised once the helper
        is done, since whoever catches it may reuse the batch's buffer (a pooled or
        staging buffer) or the segment's at once."""
        t0 = time.perf_counter()
        interrupt = None
        while True:
            try:
                with self._cond:
                    if self._job is job:
                        self._job = None  # the helper never started on it
                    taken = job.taken  # set (under the lock) before the offer is cleared
                if taken:
                    job.done.wait()  # the helper finishes the blocks it claimed, then lets go
                break
            except BaseException as exc:  # an interrupt: raised below, once the helper let go
                interrupt = exc
        if job.taken:
            self.waited_s += time.perf_counter() - t0
        if interrupt is not None:
            raise interrupt

    def stats(self) -> dict:
        return {"batches": self.batches, "helper_blocks": self.helped,
                "wait_s": self.waited_s}

    def close(self) -> None:
        """Stop the helper thread; later batches are assembled by the caller alone."""
        self._closed = True
        if self._thread is not None and self._pid == os.getpid():
            with self._cond:
                self._closing = True
                self._cond.notify()
            self._thread.join()
        self._thread = None


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
                  0, ALL)
    assemble_claimed(np.array([1, 2], np.uint8), np.array([0, 1], np.int32), rows, 0, rows, out,
                     True, 0, ALL, np.zeros(3, np.int64))
    tier_counts(np.array([1, 2], np.uint8))
    gather_rows(rows, np.array([0, 1], np.int64), out)
    scatter_rows(out, np.array([0, 1], np.int64), rows, np.array([2, 3], np.int64))
