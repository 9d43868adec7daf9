"""Row reads of the base array with Linux native AIO: a whole batch's rows in flight from
one thread, in one numba call that releases the GIL.

The threaded path (:class:`~oocstore.tiers.ssd.BaseRowTier` with a thread pool, one
``pread`` per row) pays per row for a blocking system call, two context switches and a
wake-up of a Python thread, and per group of rows for a task handed through the
interpreter: on a 2-core machine that CPU competes with the training loop. Here the rows
are submitted ``depth`` at a time (``io_submit``, several requests per call, so the
block layer sees them together and merges requests for adjacent pages) and collected as
they complete (``io_getevents``), each completed row copied straight into its place in
the batch. Requests go out in file order.

Memory: ``depth`` scratch slots of one row's worst-case aligned span each — exactly the
per-thread scratch the threaded path holds (``base_read_buffer_bytes``), so what the
budget charges does not change. The request and event tables (104 B per slot) are part
of the fixed overhead.

Where the kernel has no native AIO (``io_setup`` fails, e.g. a seccomp filter or
``fs.aio-max-nr`` reached), :func:`open_context` returns ``None`` and the caller keeps
the threaded path; a read that fails here is retried there, which names the error.
"""

from __future__ import annotations

import ctypes
import logging
import platform

import numba
import numpy as np

log = logging.getLogger(__name__)

#: x86-64 system call numbers (the only ABI this path is enabled on).
_SYS_IO_SETUP, _SYS_IO_DESTROY, _SYS_IO_GETEVENTS, _SYS_IO_SUBMIT = 206, 207, 208, 209

_syscall = numba.types.ExternalFunction(
    "syscall", numba.types.int64(numba.types.int64, numba.types.int64, numba.types.int64,
                                 numba.types.int64, numba.types.int64, numba.types.int64))

#: ``struct iocb`` as 8 little-endian 64-bit words, ``struct io_event`` as 4.
IOCB_WORDS, EVENT_WORDS = 8, 4


def open_context(depth: int) -> int | None:
    """A native AIO context for ``depth`` requests in flight, or ``None`` where there is
    none (not Linux x86-64, or the kernel refuses)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ctx = ctypes.c_ulong(0)
        if libc.syscall(_SYS_IO_SETUP, int(depth), ctypes.byref(ctx)) != 0:
            log.info("native AIO unavailable (io_setup: errno %d): base-array rows are read "
                     "from a thread pool", ctypes.get_errno())
            return None
        return int(ctx.value)
    except (OSError, AttributeError):
        return None


def close_context(ctx: int) -> None:
    """Destroy ``ctx`` (the kernel waits for the requests still in flight)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(_SYS_IO_DESTROY, ctypes.c_ulong(ctx))


@numba.njit(nogil=True, cache=True)
def aio_read_rows(ctx, fd, base_offset, row_bytes, ids, pos, out, scratch, span, iocbs, ptrs,
                  events, slot_row, wait_for=1):
    """Row ``ids[k]`` of the array at byte ``base_offset`` of ``fd`` into ``out[pos[k]]``
    for every ``k``, in the order given (the caller sorts by id), up to
    ``iocbs.shape[0]`` reads in flight, each one aligned request of at most ``span`` bytes
    into its slot of ``scratch``. ``out`` (one row per line) and ``scratch`` are views of
    one unsigned word size that divides ``row_bytes`` (and so every row's offset in its
    page): rows are copied a word at a time.

    Returns the bytes transferred, or a negative number when the reads could not all be
    done here: ``-(k + 1)`` for a short or failed read of row ``k``, ``-(n + 1)`` when the
    kernel took no request. The caller then drops the context (which waits for reads still
    in flight) and reads the batch again by the threaded path, which names the error."""
    n = ids.shape[0]
    depth = iocbs.shape[0]
    base = scratch.ctypes.data
    iocb_addr = iocbs.ctypes.data
    free = np.empty(depth, np.int64)
    for s in range(depth):
        free[s] = depth - 1 - s
    nfree = depth
    nxt = 0
    done = 0
    moved = 0
    inflight = 0
    fails = 0
    while done < n:
        k = 0
        while nxt < n and nfree > 0:
            nfree -= 1
            if not _request(iocbs, ptrs, k, free[nfree], fd, base_offset + ids[nxt] * row_bytes,
                            row_bytes, span, base, iocb_addr):
                return -(nxt + 1)
            slot_row[free[nfree]] = nxt
            k += 1
            nxt += 1
        sent = 0
        tries = 0
        while sent < k:
            r = _syscall(_SYS_IO_SUBMIT, ctx, k - sent, np.int64(ptrs.ctypes.data) + sent * 8, 0, 0)
            if r > 0:
                sent += r
                inflight += r
            else:
                tries += 1
                if tries > 100:  # EAGAIN forever, or an error: leave it to the caller
                    return -(n + 1)
        got = _syscall(_SYS_IO_GETEVENTS, ctx, min(wait_for, inflight), depth,
                       np.int64(events.ctypes.data), 0)
        if got < 0:
            fails += 1
            if fails > 100:  # not an interruption: leave it to the caller
                return -(n + 1)
            continue  # interrupted: wait again
        fails = 0
        for e in range(got):
            s = events[e, 0]
            i = slot_row[s]
            inflight -= 1
            if not _place(out, pos[i], scratch, s * span, base_offset + ids[i] * row_bytes,
                          row_bytes, events[e, 2]):
                return -(i + 1)
            moved += events[e, 2]
            free[nfree] = s
            nfree += 1
            done += 1
    return moved


@numba.njit(nogil=True, cache=True)
def _request(iocbs, ptrs, k, s, fd, off, row_bytes, span, base, iocb_addr):
    """Fill slot ``s``'s request (``struct iocb``) for the row at byte ``off``, widened to
    whole 4 KiB pages, into the slot's scratch, and make it the ``k``-th to submit; False
    when the widened row does not fit a slot of ``span`` bytes."""
    start = off // 4096 * 4096
    length = (off + row_bytes + 4095) // 4096 * 4096 - start
    if length > span:
        return False
    iocbs[s, 0] = s  # aio_data: the slot
    iocbs[s, 1] = 0  # aio_key, aio_rw_flags
    iocbs[s, 2] = np.uint64(fd) << np.uint64(32)  # IOCB_CMD_PREAD (0), reqprio 0, fd
    iocbs[s, 3] = base + s * span
    iocbs[s, 4] = length
    iocbs[s, 5] = start
    iocbs[s, 6] = 0
    iocbs[s, 7] = 0
    ptrs[k] = iocb_addr + s * 64
    return True


@numba.njit(nogil=True, cache=True)
def _place(out, row, scratch, slot_start, off, row_bytes, got):
    """Copy the row read into the slot at byte ``slot_start`` of ``scratch`` (the request
    for byte ``off`` brought ``got`` bytes) to ``out[row]``, a word at a time; False when
    the read came back short."""
    lo = off - off // 4096 * 4096
    if got < lo + row_bytes:
        return False
    word = row_bytes // out.shape[1]
    src = (slot_start + lo) // word
    for j in range(out.shape[1]):
        out[row, j] = scratch[src + j]
    return True
