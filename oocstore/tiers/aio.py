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
def aio_read_rows(ctx, fd, base_offset, row_bytes, ids, pos, out, scratch, unit, iocbs, ptrs,
                  events, runs, requests, wait_for=1, max_units=1):
    """Row ``ids[k]`` of the array at byte ``base_offset`` of ``fd`` into ``out[pos[k]]``
    for every ``k``, the ids in file order (the caller sorts them), up to
    ``iocbs.shape[0]`` reads in flight.

    ``scratch`` is ``iocbs.shape[0]`` units of ``unit`` bytes (one row's worst-case aligned
    span each). Rows whose 4 KiB pages touch or overlap (the next row starts on the page
    where the last one ends, or the page after) are read by one request of up to
    ``max_units`` units, into that many adjacent free units: one request instead of
    several, and a page two rows share is read once. ``runs`` (``[depth, 4]`` int64) holds
    each request's first unit, units, first row and rows; ``requests[0]`` counts the
    requests made. ``out`` (one row per line) and
    ``scratch`` are views of one unsigned word size that divides ``row_bytes`` (and so
    every row's offset in its page): rows are copied a word at a time.

    Returns the bytes transferred, or a negative number when the reads could not all be
    done here: ``-(k + 1)`` for a short or failed read of row ``k``, ``-(n + 1)`` when the
    kernel took no request. The caller then drops the context (which waits for reads still
    in flight) and reads the batch again by the threaded path, which names the error."""
    n = ids.shape[0]
    depth = iocbs.shape[0]
    base = scratch.ctypes.data
    iocb_addr = iocbs.ctypes.data
    free = np.arange(depth - 1, -1, -1)  # free request slots, the lowest on top
    nfree = depth
    used = np.zeros(depth, np.bool_)  # scratch units in use
    nxt = 0
    done = 0
    moved = 0
    inflight = 0
    fails = 0
    while done < n:
        k = 0
        while nxt < n and nfree > 0:
            first_page, end, count = _run(ids, nxt, base_offset, row_bytes, unit, max_units)
            units = (end - first_page + unit - 1) // unit
            u0 = _find_units(used, units)
            if u0 < 0:
                if inflight + k > 0:
                    break  # wait for completions to free units
                return -(nxt + 1)  # cannot happen: a lone row fits one unit
            nfree -= 1
            s = free[nfree]
            used[u0:u0 + units] = True
            runs[s, 0], runs[s, 1], runs[s, 2], runs[s, 3] = u0, units, nxt, count
            _request(iocbs, ptrs, k, s, fd, first_page, end - first_page, base + u0 * unit,
                     iocb_addr)
            k += 1
            nxt += count
            requests[0] += 1
        if _submit(ctx, ptrs, k) < 0:
            return -(n + 1)
        inflight += k
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
            inflight -= 1
            short = _place_run(out, pos, scratch, unit, ids, base_offset, row_bytes, runs[s],
                               events[e, 2])
            if short >= 0:
                return -(short + 1)
            moved += events[e, 2]
            used[runs[s, 0]:runs[s, 0] + runs[s, 1]] = False
            free[nfree] = s
            nfree += 1
            done += runs[s, 3]
    return moved


@numba.njit(nogil=True, cache=True)
def _submit(ctx, ptrs, k):
    """Submit the ``k`` requests ``ptrs[:k]`` (the kernel may take them a few at a time);
    ``k``, or -1 when it keeps refusing (EAGAIN forever, or an error: the caller leaves the
    batch to the threaded path)."""
    sent = 0
    tries = 0
    while sent < k:
        r = _syscall(_SYS_IO_SUBMIT, ctx, k - sent, np.int64(ptrs.ctypes.data) + sent * 8, 0, 0)
        if r > 0:
            sent += r
        else:
            tries += 1
            if tries > 100:
                return -1
    return sent


@numba.njit(nogil=True, cache=True)
def _place_run(out, pos, scratch, unit, ids, base_offset, row_bytes, run, got):
    """Copy the rows of one completed request (``run``: its first unit, units, first row
    and rows; it brought ``got`` bytes) from scratch into ``out``; -1, or the index of the
    first row the read came back short for."""
    u0, i0, count = run[0], run[2], run[3]
    start = (base_offset + ids[i0] * row_bytes) // 4096 * 4096
    for i in range(i0, i0 + count):
        if not _place(out, pos[i], scratch, u0 * unit, start, base_offset + ids[i] * row_bytes,
                      row_bytes, got):
            return i
    return -1


@numba.njit(nogil=True, cache=True)
def _run(ids, i, base_offset, row_bytes, unit, max_units):
    """The request for rows ``ids[i:]`` read together: (first byte, end byte, rows), its
    bytes whole 4 KiB pages; rows join while the next starts no later than the page after
    the run's last page (no page read for nothing) and the run fits ``max_units`` units."""
    off = base_offset + ids[i] * row_bytes
    first_page = off // 4096 * 4096
    end = (off + row_bytes + 4095) // 4096 * 4096
    count = 1
    limit = max_units * unit
    while i + count < ids.shape[0]:
        o2 = base_offset + ids[i + count] * row_bytes
        s2 = o2 // 4096 * 4096
        e2 = (o2 + row_bytes + 4095) // 4096 * 4096
        if s2 > end or e2 - first_page > limit or e2 < end:
            break
        end = e2
        count += 1
    return first_page, end, count


@numba.njit(nogil=True, cache=True)
def run_bytes(ids, base_offset, row_bytes, unit, max_units):
    """Bytes :func:`aio_read_rows` reads for rows ``ids`` (in file order): its requests'
    4 KiB pages, rows whose pages touch sharing one request (what a pack expects its
    base-array reads to cost)."""
    total = 0
    i = 0
    while i < ids.shape[0]:
        first, end, count = _run(ids, i, base_offset, row_bytes, unit, max_units)
        total += end - first
        i += count
    return total


@numba.njit(nogil=True, cache=True)
def _find_units(used, units):
    """The first of ``units`` adjacent free scratch units, or -1."""
    run = 0
    for u in range(used.shape[0]):
        if used[u]:
            run = 0
        else:
            run += 1
            if run == units:
                return u - units + 1
    return -1


@numba.njit(nogil=True, cache=True)
def _request(iocbs, ptrs, k, s, fd, start, length, buf, iocb_addr):
    """Fill request slot ``s`` (``struct iocb``): ``length`` bytes at byte ``start`` of
    ``fd`` into ``buf``, and make it the ``k``-th to submit."""
    iocbs[s, 0] = s  # aio_data: the request slot
    iocbs[s, 1] = 0  # aio_key, aio_rw_flags
    iocbs[s, 2] = np.uint64(fd) << np.uint64(32)  # IOCB_CMD_PREAD (0), reqprio 0, fd
    iocbs[s, 3] = buf
    iocbs[s, 4] = length
    iocbs[s, 5] = start
    iocbs[s, 6] = 0
    iocbs[s, 7] = 0
    ptrs[k] = iocb_addr + s * 64


@numba.njit(nogil=True, cache=True)
def _place(out, row, scratch, slot_start, start, off, row_bytes, got):
    """Copy the row at byte ``off`` of the file, read by the request for byte ``start``
    into scratch byte ``slot_start`` (it brought ``got`` bytes), to ``out[row]``, a word
    at a time; False when the read came back short."""
    lo = off - start
    if got < lo + row_bytes:
        return False
    word = row_bytes // out.shape[1]
    src = (slot_start + lo) // word
    for j in range(out.shape[1]):
        out[row, j] = scratch[src + j]
    return True
