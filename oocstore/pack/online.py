"""Online cache policies (S3-FIFO, SIEVE) simulated offline over a plan's known trace.

GraphBolt runs these policies online, deciding at every miss; here the access sequence
is known before training, so each policy is simulated once, per epoch, at pack time and
its decisions are stored as the same schedule Belady's policy produces (per position the
CPU slot serving it or -1; admissions ``(position, slot)`` applied after each batch): the
loader replays any of them unchanged.

Batch semantics, shared with :func:`oocstore.pack.placement._belady_epoch`: a batch's
hits are decided from the cache as it stands when the batch starts (a hit updates the
policy's frequency / visited bit); then its misses are admitted in position order, each
evicting as the policy says. GPU-tier nodes (``node_tier == 0``) are neither counted nor
cached. The cache starts every epoch holding ``init_ids`` (the static choice, hottest
first) in slots ``0..k-1``, so each epoch can be served on its own.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _load_batch_hits(data, o, m, pos0, p, node_tier, slot_of, hit, cand, counter, cap_count):
    """Hits of one batch (``m`` positions from record offset ``o``; global position
    ``pos0 + p`` of the first): ``hit`` per position, the missing positions' local
    indices into ``cand`` (returned: how many), and each hit's ``counter`` raised by one
    up to ``cap_count`` (S3-FIFO's frequency; SIEVE's visited bit with ``cap_count = 1``)."""
    nc = 0
    for i in range(m):
        v = data[o + i]
        if node_tier[v] == 0:
            hit[pos0 + p + i] = -1
            continue
        s = slot_of[v]
        if s >= 0:
            hit[pos0 + p + i] = s
            if counter[s] < cap_count:
                counter[s] += 1
        else:
            hit[pos0 + p + i] = -1
            cand[nc] = i
            nc += 1
    return nc


@numba.njit(cache=True, nogil=True)
def _s3fifo_evict(small, main, ring, freq, node_in, slot_of, ghost_q, ghost_seq, g,
                  small_target, ghost_cap):
    """Free one slot (S3-FIFO, as GraphBolt's ``S3FifoCachePolicy``): the small queue's
    oldest entries move to the main queue if they were hit, else the first unhit one is
    evicted to the ghost queue; when the small queue is within its target, the main queue
    evicts its oldest unhit entry, giving hit ones another round (frequency - 1).

    ``small`` / ``main``: ``[head, size]`` of FIFO rings of slots in ``ring[0]`` /
    ``ring[1]`` (length = capacity); ``g``: ``[head, tail, count]`` of the ghost queue
    (``ghost_q`` holds ``(node, seq)`` pairs; an entry is live while ``ghost_seq[node]``
    equals its seq)."""
    cap = ring.shape[1]
    while small[1] > small_target:
        s = ring[0, small[0]]
        small[0] = (small[0] + 1) % cap
        small[1] -= 1
        if freq[s] > 0:
            freq[s] = 0
            ring[1, (main[0] + main[1]) % cap] = s
            main[1] += 1
            continue
        v = node_in[s]
        slot_of[v] = -1
        if ghost_cap > 0:
            while g[2] >= ghost_cap:  # drop the oldest live ghost
                u, seq = ghost_q[g[0], 0], ghost_q[g[0], 1]
                g[0] += 1
                if ghost_seq[u] == seq:
                    ghost_seq[u] = -1
                    g[2] -= 1
            ghost_q[g[1], 0] = v
            ghost_q[g[1], 1] = g[1]
            ghost_seq[v] = g[1]
            g[1] += 1
            g[2] += 1
        return s
    while True:
        s = ring[1, main[0]]
        main[0] = (main[0] + 1) % cap
        if freq[s] > 0:
            freq[s] -= 1
            ring[1, (main[0] + main[1] - 1) % cap] = s
            continue
        main[1] -= 1
        slot_of[node_in[s]] = -1
        return s


@numba.njit(cache=True, nogil=True)
def _s3fifo_epoch(data, offs, ninput, b0, b1, pos0, node_tier, capacity, init_ids,
                  hit, ins_pos, ins_slot, ins_count, n_ins):
    """S3-FIFO over batches [b0, b1) (see the module docstring); the initial rows sit in
    the main queue, coldest oldest. Small queue target: a tenth of the capacity; ghost
    queue: the rest (as GraphBolt sizes them)."""
    n_nodes = node_tier.shape[0]
    cap = max(capacity, 1)
    total = 0
    for b in range(b0, b1):
        total += ninput[b]
    slot_of = np.full(n_nodes, -1, dtype=np.int64)
    node_in = np.full(cap, -1, dtype=np.int64)
    freq = np.zeros(cap, dtype=np.int64)
    ring = np.empty((2, cap), dtype=np.int64)
    small = np.zeros(2, dtype=np.int64)
    main = np.zeros(2, dtype=np.int64)
    ghost_q = np.empty((total + 1, 2), dtype=np.int64)
    ghost_seq = np.full(n_nodes, -1, dtype=np.int64)
    g = np.zeros(3, dtype=np.int64)
    small_target, ghost_cap = capacity // 10, capacity - capacity // 10
    used = min(capacity, init_ids.shape[0])
    for k in range(used - 1, -1, -1):
        v = init_ids[k]
        slot_of[v] = k
        node_in[k] = v
        ring[1, main[1]] = k
        main[1] += 1
    cand = np.empty(0, dtype=np.int64)
    p = 0
    for b in range(b0, b1):
        o, m = offs[b], ninput[b]
        if cand.shape[0] < m:
            cand = np.empty(m, dtype=np.int64)
        nc = _load_batch_hits(data, o, m, pos0, p, node_tier, slot_of, hit, cand, freq, 3)
        for c in range(nc if capacity > 0 else 0):
            v = data[o + cand[c]]
            if slot_of[v] >= 0:
                continue  # admitted earlier in this batch
            if used < capacity:
                s = used
                used += 1
            else:
                s = _s3fifo_evict(small, main, ring, freq, node_in, slot_of, ghost_q, ghost_seq,
                                  g, small_target, ghost_cap)
            to_main = ghost_seq[v] >= 0
            if to_main:
                ghost_seq[v] = -1
                g[2] -= 1
                ring[1, (main[0] + main[1]) % cap] = s
                main[1] += 1
            else:
                ring[0, (small[0] + small[1]) % cap] = s
                small[1] += 1
            slot_of[v] = s
            node_in[s] = v
            freq[s] = 0
            ins_pos[n_ins] = pos0 + p + cand[c]
            ins_slot[n_ins] = s
            n_ins += 1
            ins_count[b] += 1
        p += m
    return n_ins


@numba.njit(cache=True, nogil=True)
def _sieve_push(s, head, tail, older, newer):
    """Link slot ``s`` in at the head of SIEVE's list; returns ``(head, tail)``."""
    older[s], newer[s] = head, -1
    if head >= 0:
        newer[head] = s
    return s, (s if tail < 0 else tail)


@numba.njit(cache=True, nogil=True)
def _sieve_evict(hand, head, tail, visited, older, newer):
    """The slot SIEVE evicts, unlinked: the hand walks from where it stopped (``-1``: the
    tail) toward the head, wrapping to the tail, clearing visited bits until it finds an
    unvisited entry. Returns ``(slot, hand, head, tail)``; the hand then points at the
    evicted entry's newer neighbour (``-1`` if it was the head)."""
    s = tail if hand < 0 else hand
    while visited[s]:
        visited[s] = 0
        s = tail if newer[s] < 0 else newer[s]
    hand = newer[s]
    if older[s] >= 0:
        newer[older[s]] = newer[s]
    else:
        tail = newer[s]
    if newer[s] >= 0:
        older[newer[s]] = older[s]
    else:
        head = older[s]
    return s, hand, head, tail


@numba.njit(cache=True, nogil=True)
def _sieve_epoch(data, offs, ninput, b0, b1, pos0, node_tier, capacity, init_ids,
                 hit, ins_pos, ins_slot, ins_count, n_ins):
    """SIEVE over batches [b0, b1) (see the module docstring), as GraphBolt's
    ``SieveCachePolicy``: one FIFO list, newest at the head; a hit sets the entry's visited
    bit; a miss evicts the entry :func:`_sieve_evict` finds. The initial rows are listed
    coldest at the tail."""
    n_nodes = node_tier.shape[0]
    cap = max(capacity, 1)
    slot_of = np.full(n_nodes, -1, dtype=np.int64)
    node_in = np.full(cap, -1, dtype=np.int64)
    visited = np.zeros(cap, dtype=np.int64)
    newer = np.full(cap, -1, dtype=np.int64)  # toward the head
    older = np.full(cap, -1, dtype=np.int64)  # toward the tail
    head, tail, hand = -1, -1, -1
    used = min(capacity, init_ids.shape[0])
    for k in range(used - 1, -1, -1):  # coldest first: the hottest ends at the head
        slot_of[init_ids[k]] = k
        node_in[k] = init_ids[k]
        head, tail = _sieve_push(k, head, tail, older, newer)
    cand = np.empty(0, dtype=np.int64)
    p = 0
    for b in range(b0, b1):
        o, m = offs[b], ninput[b]
        if cand.shape[0] < m:
            cand = np.empty(m, dtype=np.int64)
        nc = _load_batch_hits(data, o, m, pos0, p, node_tier, slot_of, hit, cand, visited, 1)
        for c in range(nc if capacity > 0 else 0):
            v = data[o + cand[c]]
            if slot_of[v] >= 0:
                continue  # admitted earlier in this batch
            if used < capacity:
                s = used
                used += 1
            else:
                s, hand, head, tail = _sieve_evict(hand, head, tail, visited, older, newer)
                slot_of[node_in[s]] = -1
            slot_of[v] = s
            node_in[s] = v
            visited[s] = 0
            head, tail = _sieve_push(s, head, tail, older, newer)
            ins_pos[n_ins] = pos0 + p + cand[c]
            ins_slot[n_ins] = s
            n_ins += 1
            ins_count[b] += 1
        p += m
    return n_ins
