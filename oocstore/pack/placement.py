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

import numba
import numpy as np


def static_placement(counts: np.ndarray, gpu_rows: int, cpu_rows: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(gpu_ids, cpu_ids)``: the hottest nodes (count > 0), hottest first."""
    counts = np.asarray(counts)
    order = np.argsort(-counts.astype(np.int64), kind="stable")
    accessed = int(np.count_nonzero(counts))
    order = order[:accessed]
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
