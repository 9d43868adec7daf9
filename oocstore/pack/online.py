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


#: Policies of :func:`_online_epoch`.
S3FIFO, SIEVE = 0, 1

# Scalars of a policy's state (``st``): S3-FIFO's small and main FIFO rings (head, size)
# and ghost queue (head, tail, live count); SIEVE's list ends and hand.
_SMALL_HEAD, _SMALL_SIZE, _MAIN_HEAD, _MAIN_SIZE, _GHOST_HEAD, _GHOST_TAIL, _GHOST_LIVE = range(7)
_HEAD, _TAIL, _HAND = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def _place(kind, s, to_main, links, st):
    """Enter slot ``s`` into the policy's queue: S3-FIFO's main ring (``to_main``) or
    small ring (``links[1]`` / ``links[0]``), SIEVE's list head (``links[0]``: the newer
    neighbour, ``links[1]``: the older)."""
    cap = links.shape[1]
    if kind == S3FIFO:
        if to_main:
            links[1, (st[_MAIN_HEAD] + st[_MAIN_SIZE]) % cap] = s
            st[_MAIN_SIZE] += 1
        else:
            links[0, (st[_SMALL_HEAD] + st[_SMALL_SIZE]) % cap] = s
            st[_SMALL_SIZE] += 1
        return
    links[1, s], links[0, s] = st[_HEAD], -1
    if st[_HEAD] >= 0:
        links[0, st[_HEAD]] = s
    st[_HEAD] = s
    if st[_TAIL] < 0:
        st[_TAIL] = s


@numba.njit(cache=True, nogil=True)
def _ghost_add(v, ghost_q, ghost_seq, st, ghost_cap):
    """Remember ``v`` in S3-FIFO's ghost queue, dropping the oldest live entry when it
    holds ``ghost_cap`` (an entry is live while ``ghost_seq[node]`` equals its seq)."""
    if ghost_cap == 0:
        return
    while st[_GHOST_LIVE] >= ghost_cap:
        h = st[_GHOST_HEAD]
        st[_GHOST_HEAD] += 1
        if ghost_seq[ghost_q[h, 0]] == ghost_q[h, 1]:
            ghost_seq[ghost_q[h, 0]] = -1
            st[_GHOST_LIVE] -= 1
    t = st[_GHOST_TAIL]
    ghost_q[t, 0], ghost_q[t, 1] = v, t
    ghost_seq[v] = t
    st[_GHOST_TAIL] += 1
    st[_GHOST_LIVE] += 1


@numba.njit(cache=True, nogil=True)
def _s3fifo_evict(links, st, freq, node_in, ghost_q, ghost_seq, small_target, ghost_cap):
    """S3-FIFO's victim (as GraphBolt's ``S3FifoCachePolicy``): the small ring's oldest
    entries move to the main ring if they were hit, else the first unhit one is evicted
    to the ghost queue; when the small ring is within its target, the main ring evicts
    its oldest unhit entry, giving hit ones another round (frequency - 1)."""
    cap = links.shape[1]
    while st[_SMALL_SIZE] > small_target:
        s = links[0, st[_SMALL_HEAD]]
        st[_SMALL_HEAD] = (st[_SMALL_HEAD] + 1) % cap
        st[_SMALL_SIZE] -= 1
        if freq[s] > 0:
            freq[s] = 0
            _place(S3FIFO, s, True, links, st)
            continue
        _ghost_add(node_in[s], ghost_q, ghost_seq, st, ghost_cap)
        return s
    while True:
        s = links[1, st[_MAIN_HEAD]]
        st[_MAIN_HEAD] = (st[_MAIN_HEAD] + 1) % cap
        st[_MAIN_SIZE] -= 1
        if freq[s] == 0:
            return s
        freq[s] -= 1
        _place(S3FIFO, s, True, links, st)


@numba.njit(cache=True, nogil=True)
def _sieve_evict(links, st, visited):
    """SIEVE's victim, unlinked (as GraphBolt's ``SieveCachePolicy``): the hand walks
    from where it stopped (first: the tail) toward the head, wrapping to the tail,
    clearing visited bits until it finds an unvisited entry; it then points at the
    victim's newer neighbour (-1 if the victim was the head: the next walk starts at the
    tail)."""
    newer, older = links[0], links[1]
    s = st[_TAIL] if st[_HAND] < 0 else st[_HAND]
    while visited[s]:
        visited[s] = 0
        s = st[_TAIL] if newer[s] < 0 else newer[s]
    st[_HAND] = newer[s]
    if older[s] >= 0:
        newer[older[s]] = newer[s]
    else:
        st[_TAIL] = newer[s]
    if newer[s] >= 0:
        older[newer[s]] = older[s]
    else:
        st[_HEAD] = older[s]
    return s


@numba.njit(cache=True, nogil=True)
def _online_epoch(kind, data, offs, ninput, b0, b1, pos0, node_tier, capacity, init_ids,
                  hit, ins_pos, ins_slot, ins_count, n_ins):
    """Policy ``kind`` over batches [b0, b1) (see the module docstring). S3-FIFO: a hit
    raises the entry's frequency (up to 3); the initial rows sit in the main ring,
    coldest oldest; small ring target a tenth of the capacity, ghost queue the rest (as
    GraphBolt sizes them); a miss the ghost queue remembers enters the main ring, others
    the small ring. SIEVE: a hit sets the entry's visited bit; one list, newest at the
    head, the initial rows coldest at the tail."""
    cap = max(capacity, 1)
    slot_of = np.full(node_tier.shape[0], -1, dtype=np.int64)
    node_in = np.full(cap, -1, dtype=np.int64)
    count = np.zeros(cap, dtype=np.int64)  # S3-FIFO: frequency; SIEVE: visited bit
    links = np.full((2, cap), -1, dtype=np.int64)
    st = np.zeros(7, dtype=np.int64)
    st[_HEAD], st[_TAIL], st[_HAND] = (-1, -1, -1) if kind == SIEVE else (0, 0, 0)
    ghosts = ninput[b0:b1].sum() + 1 if kind == S3FIFO else 1
    ghost_q = np.empty((ghosts, 2), dtype=np.int64)
    ghost_seq = np.full(node_tier.shape[0] if kind == S3FIFO else 1, -1, dtype=np.int64)
    small_target, ghost_cap = capacity // 10, capacity - capacity // 10
    used = min(capacity, init_ids.shape[0])
    for k in range(used - 1, -1, -1):  # coldest first: the oldest entries
        slot_of[init_ids[k]] = k
        node_in[k] = init_ids[k]
        _place(kind, k, True, links, st)
    cand = np.empty(0, dtype=np.int64)
    p = 0
    for b in range(b0, b1):
        o, m = offs[b], ninput[b]
        if cand.shape[0] < m:
            cand = np.empty(m, dtype=np.int64)
        nc = _load_batch_hits(data, o, m, pos0, p, node_tier, slot_of, hit, cand, count,
                              3 if kind == S3FIFO else 1)
        for c in range(nc if capacity > 0 else 0):
            v = data[o + cand[c]]
            if slot_of[v] >= 0:
                continue  # admitted earlier in this batch
            if used < capacity:
                s = used
                used += 1
            else:
                s = _s3fifo_evict(links, st, count, node_in, ghost_q, ghost_seq, small_target,
                                  ghost_cap) if kind == S3FIFO else _sieve_evict(links, st, count)
                slot_of[node_in[s]] = -1
            to_main = kind == S3FIFO and ghost_seq[v] >= 0
            if to_main:  # seen recently: out of the ghost queue, into the main ring
                ghost_seq[v] = -1
                st[_GHOST_LIVE] -= 1
            _place(kind, s, to_main, links, st)
            slot_of[v], node_in[s], count[s] = s, v, 0
            ins_pos[n_ins], ins_slot[n_ins] = pos0 + p + cand[c], s
            n_ins += 1
            ins_count[b] += 1
        p += m
    return n_ins


@numba.njit(cache=True, nogil=True)
def _s3fifo_epoch(data, offs, ninput, b0, b1, pos0, node_tier, capacity, init_ids,
                  hit, ins_pos, ins_slot, ins_count, n_ins):
    """S3-FIFO (:func:`_online_epoch`) with :func:`.placement._belady_epoch`'s signature."""
    return _online_epoch(S3FIFO, data, offs, ninput, b0, b1, pos0, node_tier, capacity,
                         init_ids, hit, ins_pos, ins_slot, ins_count, n_ins)


@numba.njit(cache=True, nogil=True)
def _sieve_epoch(data, offs, ninput, b0, b1, pos0, node_tier, capacity, init_ids,
                 hit, ins_pos, ins_slot, ins_count, n_ins):
    """SIEVE (:func:`_online_epoch`) with :func:`.placement._belady_epoch`'s signature."""
    return _online_epoch(SIEVE, data, offs, ninput, b0, b1, pos0, node_tier, capacity,
                         init_ids, hit, ins_pos, ins_slot, ins_count, n_ins)
