"""Cache placement from a plan's known future.

* :func:`static_placement` — the GPU tier holds the most accessed rows of the whole
  plan, the CPU tier the next ones (the DiskGNN / GNNLab policy). Ties break by node id,
  so placement is deterministic.
* :func:`belady_misses` — Belady's optimal policy (evict the row whose next use is
  furthest away; do not admit a row used later than everything cached) over the exact
  access sequence, as Ginex does. It gives the minimum number of misses any cache of
  that size can reach, and is used to judge the static policy (``bench/cache_policies.py``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from ..errors import FormatError


def hot_order(counts: np.ndarray) -> np.ndarray:
    """The accessed nodes (count > 0), hottest first, ties by node id: what
    :func:`static_placement` takes its tiers from. Sorts only the accessed nodes (a
    fraction of a large graph's), once per plan however many splits are tried."""
    counts = np.asarray(counts)
    ids = np.flatnonzero(counts)
    return ids[np.argsort(-counts[ids].astype(np.int64), kind="stable")]


def static_placement(counts: np.ndarray, gpu_rows: int, cpu_rows: int,
                     order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(gpu_ids, cpu_ids)``: the hottest nodes (count > 0), hottest first.
    ``order``: :func:`hot_order` of ``counts`` if the caller has it."""
    if order is None:
        order = hot_order(counts)
    g = min(gpu_rows, order.size)
    c = min(cpu_rows, order.size - g)
    return order[:g].astype(np.int64), order[g:g + c].astype(np.int64)


def static_hits(trace: np.ndarray, cached: np.ndarray, num_nodes: int) -> int:
    mask = np.zeros(num_nodes, dtype=bool)
    mask[cached] = True
    return int(mask[trace].sum())


@numba.njit(cache=True, nogil=True)
def _next_uses(trace, num_nodes):
    n = trace.shape[0]
    nxt = np.empty(n, dtype=np.int64)
    last = np.full(num_nodes, n, dtype=np.int64)  # n means "never again"
    for i in range(n - 1, -1, -1):
        v = trace[i]
        nxt[i] = last[v]
        last[v] = i
    return nxt


@numba.njit(cache=True, nogil=True)
def _heap_push(keys, vals, size, k, v):
    i = size
    keys[i] = k
    vals[i] = v
    while i > 0:
        p = (i - 1) >> 1
        if keys[p] >= keys[i]:
            break
        keys[p], keys[i] = keys[i], keys[p]
        vals[p], vals[i] = vals[i], vals[p]
        i = p
    return size + 1


@numba.njit(cache=True, nogil=True)
def _heap_pop(keys, vals, size):
    size -= 1
    keys[0] = keys[size]
    vals[0] = vals[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        c = left
        if left + 1 < size and keys[left + 1] > keys[left]:
            c = left + 1
        if keys[i] >= keys[c]:
            break
        keys[c], keys[i] = keys[i], keys[c]
        vals[c], vals[i] = vals[i], vals[c]
        i = c
    return size


@numba.njit(cache=True, nogil=True)
def _belady(trace, num_nodes, capacity):
    n = trace.shape[0]
    nxt = _next_uses(trace, num_nodes)
    cur_next = np.full(num_nodes, -1, dtype=np.int64)  # next use of a cached node, -1: absent
    keys = np.empty(n + capacity + 1, dtype=np.int64)  # max-heap of (next use, node), lazy
    vals = np.empty(n + capacity + 1, dtype=np.int64)
    size = 0
    cached = 0
    misses = 0
    for i in range(n):
        v = trace[i]
        if cur_next[v] >= 0:
            cur_next[v] = nxt[i]
            size = _heap_push(keys, vals, size, nxt[i], v)
            continue
        misses += 1
        if capacity == 0 or nxt[i] == n:
            continue  # never used again: do not admit
        if cached < capacity:
            cur_next[v] = nxt[i]
            size = _heap_push(keys, vals, size, nxt[i], v)
            cached += 1
            continue
        # Drop stale heap entries, then compare with the furthest cached next use.
        while size > 0 and cur_next[vals[0]] != keys[0]:
            size = _heap_pop(keys, vals, size)
        if keys[0] > nxt[i]:
            cur_next[vals[0]] = -1
            size = _heap_pop(keys, vals, size)
            cur_next[v] = nxt[i]
            size = _heap_push(keys, vals, size, nxt[i], v)
    return misses


def belady_misses(trace: np.ndarray, num_nodes: int, capacity: int) -> int:
    """Minimum misses of a ``capacity``-row cache over ``trace`` (node ids in access order)."""
    trace = np.ascontiguousarray(trace, dtype=np.int64)
    if trace.size == 0:
        return 0
    return int(_belady(trace, int(num_nodes), int(capacity)))


# -- Belady-scheduled dynamic CPU tier -------------------------------------------------

#: "Never used again" in the scheduled kernels' next-use tables, which hold batch
#: indices as int32 (half the memory traffic of int64): a plan's batches stay below it
#: (:func:`scheduled_epochs` checks).
_NEVER = np.iinfo(np.int32).max


@numba.njit(cache=True, nogil=True)
def _next_use_batches(data, offs, ninput, b0, b1, n_nodes):
    """For each position of batches [b0, b1) (in order), the next batch that uses its
    node again (``_NEVER``: none); and per node its first batch (``_NEVER``: unused)."""
    total = 0
    for b in range(b0, b1):
        total += ninput[b]
    nxt = np.empty(total, dtype=np.int32)
    first = np.full(n_nodes, _NEVER, dtype=np.int32)
    p = total
    for b in range(b1 - 1, b0 - 1, -1):
        o = offs[b]
        for i in range(ninput[b] - 1, -1, -1):
            p -= 1
            v = data[o + i]
            nxt[p] = first[v]
            first[v] = b
    return nxt, first


@numba.njit(cache=True, nogil=True, inline="always")
def _pair_push(heap, size, k, v):
    """:func:`_heap_push` on a max-heap of ``(key, value)`` pairs stored side by side
    (``heap[2 i]``, ``heap[2 i + 1]``: one cache line per level, not two), moving the
    hole instead of swapping: the same comparisons, so the same heap."""
    i = size
    while i > 0:
        p = (i - 1) >> 1
        if heap[2 * p] >= k:
            break
        heap[2 * i] = heap[2 * p]
        heap[2 * i + 1] = heap[2 * p + 1]
        i = p
    heap[2 * i] = k
    heap[2 * i + 1] = v
    return size + 1


@numba.njit(cache=True, nogil=True, inline="always")
def _pair_pop(heap, size):
    """:func:`_heap_pop` on a heap of :func:`_pair_push`: the same comparisons (ties go
    to the left child), so the same heap."""
    size -= 1
    k = heap[2 * size]
    v = heap[2 * size + 1]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        c = left
        if left + 1 < size and heap[2 * left + 2] > heap[2 * left]:
            c = left + 1
        if k >= heap[2 * c]:
            break
        heap[2 * i] = heap[2 * c]
        heap[2 * i + 1] = heap[2 * c + 1]
        i = c
    heap[2 * i] = k
    heap[2 * i + 1] = v
    return size


@numba.njit(cache=True, nogil=True)
def _belady_epoch(data, offs, ninput, b0, b1, pos0, node_tier, capacity, init_ids,
                  hit, ins_pos, ins_slot, ins_count, n_ins):
    """Simulate Belady's policy over batches [b0, b1) with a cache that starts holding
    ``init_ids``. Writes ``hit[p] = slot`` for positions served by the cache (-1: miss)
    and appends admissions ``(position, slot)`` (applied after the batch is assembled).
    GPU-tier nodes (``node_tier == 0``) are neither counted nor cached.

    The eviction order is a lazy max-heap of (next use, slot) pairs: a hit pushes the
    slot again with its new next use, stale pairs are dropped when they reach the top.
    Ties between equal next uses go as the heap's comparisons take them, so the heap's
    operations are part of the schedule: a faster heap must make the same comparisons."""
    n_nodes = node_tier.shape[0]
    nxt, last = _next_use_batches(data, offs, ninput, b0, b1, n_nodes)
    total = nxt.shape[0]
    slot_of = np.full(n_nodes, -1, dtype=np.int32)
    node_in = np.full(max(capacity, 1), -1, dtype=np.int64)
    slot_next = np.full(max(capacity, 1), _NEVER, dtype=np.int32)
    heap = np.empty(2 * (total + capacity + 1), dtype=np.int32)
    size = 0
    used = 0
    for k in range(min(capacity, init_ids.shape[0])):
        v = init_ids[k]
        slot_of[v] = k
        node_in[k] = v
        slot_next[k] = last[v]  # first use in this epoch
        size = _pair_push(heap, size, last[v], k)
        used += 1
    cand_p = np.empty(0, dtype=np.int64)
    p = 0
    for b in range(b0, b1):
        o = offs[b]
        m = ninput[b]
        if cand_p.shape[0] < m:
            cand_p = np.empty(m, dtype=np.int64)
        nc = 0
        p_first = p
        for i in range(m):
            v = data[o + i]
            if node_tier[v] == 0:
                hit[pos0 + p] = -1
            else:
                s = slot_of[v]
                if s >= 0:
                    hit[pos0 + p] = s
                    slot_next[s] = nxt[p]
                    size = _pair_push(heap, size, nxt[p], s)
                else:
                    hit[pos0 + p] = -1
                    cand_p[nc] = p
                    nc += 1
            p += 1
        for c in range(nc):
            q = cand_p[c]
            nu = nxt[q]
            if nu == _NEVER or capacity == 0:
                continue
            v = data[o + (q - p_first)]
            if used < capacity:
                s = used
                used += 1
            else:
                while size > 0 and slot_next[heap[1]] != heap[0]:
                    size = _pair_pop(heap, size)
                if size == 0 or heap[0] <= nu:
                    continue
                s = heap[1]
                size = _pair_pop(heap, size)
                slot_of[node_in[s]] = -1
            slot_of[v] = s
            node_in[s] = v
            slot_next[s] = nu
            size = _pair_push(heap, size, nu, s)
            ins_pos[n_ins] = pos0 + q
            ins_slot[n_ins] = s
            n_ins += 1
            ins_count[b] += 1
    return n_ins


def scheduled_epochs(epoch_kernel, data, offs, ninput, epoch_starts, node_tier, capacity: int,
                     init_ids: np.ndarray):
    """Run a cache-policy simulation ``epoch_kernel`` (:func:`_belady_epoch` or one of
    :mod:`.online`'s) over each epoch of a plan; the cache restarts from ``init_ids``
    every epoch, so any epoch can be served on its own. Returns ``(hit, ins_pos,
    ins_slot, ins_count)``: per position the cache slot or -1; admissions; admissions
    per batch. A kernel admits at most one row per position.

    The epochs are independent, so they are simulated side by side (the kernels release
    the GIL), each appending its admissions from its own first position on; the result
    is the same as one epoch after the other. An empty cache serves and admits nothing:
    no simulation (the cost model lays out every split from an empty CPU tier up)."""
    if len(offs) >= _NEVER:
        raise FormatError(f"a plan of {len(offs)} batches: the cache schedules index batches "
                          f"as int32 (at most {_NEVER - 1}); sample fewer epochs per plan")
    total_pos = int(np.asarray(ninput).sum())
    hit = np.empty(total_pos, dtype=np.int32)
    ins_count = np.zeros(len(offs), dtype=np.int64)
    if capacity == 0:
        hit.fill(-1)
        return hit, np.zeros(0, np.int64), np.zeros(0, np.int32), ins_count
    ins_pos = np.empty(total_pos, dtype=np.int64)
    ins_slot = np.empty(total_pos, dtype=np.int32)
    init_ids = np.ascontiguousarray(init_ids, dtype=np.int64)
    nin = np.asarray(ninput)
    epochs = []  # (b0, b1, first position)
    pos0 = 0
    for e in range(len(epoch_starts) - 1):
        b0, b1 = int(epoch_starts[e]), int(epoch_starts[e + 1])
        epochs.append((b0, b1, pos0))
        pos0 += int(nin[b0:b1].sum())

    def simulate(epoch) -> int:
        b0, b1, p0 = epoch
        return epoch_kernel(data, offs, ninput, b0, b1, p0, node_tier, int(capacity),
                            init_ids, hit, ins_pos, ins_slot, ins_count, p0)

    most = max((int(nin[b0:b1].sum()) for b0, b1, _ in epochs), default=0)
    workers = min(len(epochs), os.cpu_count() or 1,
                  _side_by_side(node_tier.shape[0], most, int(capacity)))
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="oocstore-schedule") as pool:
            ends = list(pool.map(simulate, epochs))
    else:
        ends = [simulate(e) for e in epochs]
    keep = [slice(p0, end) for (_, _, p0), end in zip(epochs, ends)]
    if not keep:
        return hit, ins_pos[:0].copy(), ins_slot[:0].copy(), ins_count
    return (hit, np.concatenate([ins_pos[k] for k in keep]),
            np.concatenate([ins_slot[k] for k in keep]), ins_count)


#: Scratch bytes one epoch's simulation allocates per node (first use, cache slot,
#: S3-FIFO's ghost sequence), per input position (next use, heap key and value) and per
#: cache slot (its node, next use, heap entry): see :func:`_belady_epoch` and
#: :func:`.online._online_epoch`.
_SCRATCH_PER_NODE, _SCRATCH_PER_POSITION, _SCRATCH_PER_SLOT = 24, 24, 32


def _available_memory() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None where it does not say)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f
                        if line.startswith("MemAvailable:"))
    except (OSError, ValueError, StopIteration):
        return None


def _side_by_side(n_nodes: int, positions: int, capacity: int) -> int:
    """How many epochs to simulate at once: each holds its own per-node scratch (a
    graph of 100 M nodes: 2.4 GB an epoch), so as many as fit in a quarter of the
    available memory, and one (the sequential simulation) where not even two do or
    the memory available is unknown."""
    scratch = (_SCRATCH_PER_NODE * n_nodes + _SCRATCH_PER_POSITION * positions
               + _SCRATCH_PER_SLOT * capacity)
    avail = _available_memory()
    if avail is None:
        return 1
    return max(1, avail // 4 // max(1, scratch))


def belady_schedule(data, offs, ninput, epoch_starts, node_tier, capacity: int,
                    init_ids: np.ndarray):
    """Belady over each epoch of a plan (:func:`scheduled_epochs`)."""
    return scheduled_epochs(_belady_epoch, data, offs, ninput, epoch_starts, node_tier,
                            capacity, init_ids)
