"""Baseline: uniform neighbour sampling without replacement in plain vectorised numpy.

Per layer: destinations with degree <= fanout take all their in-neighbours; the others
give every in-edge a random key and keep the ``fanout`` smallest keys per destination
(one lexsort), which is an exact uniform draw without replacement. Relabelling keeps
destinations first, then new nodes in order of first appearance (np.unique + argsort).
Same output convention as samplers.neighbor (layers input side first).
"""

from __future__ import annotations

import numpy as np


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges ``starts[i] .. starts[i] + lengths[i]``."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    owner = np.repeat(np.arange(lengths.size), lengths)
    first = np.cumsum(lengths) - lengths
    return starts[owner] + (np.arange(total) - first[owner])


def sample_layer(indptr, indices, dst_nodes, fanout, rng):
    """Returns ``(neighbour global ids, local dst index)`` of the sampled edges."""
    lo = indptr[dst_nodes]
    deg = indptr[dst_nodes + 1] - lo
    take_all = deg <= fanout if fanout > 0 else np.ones(deg.size, dtype=bool)
    a = np.flatnonzero(take_all)
    pos_all = _segments(lo[a], deg[a])
    dst_all = np.repeat(a, deg[a])
    b = np.flatnonzero(~take_all)
    pos_b = _segments(lo[b], deg[b])
    owner_b = np.repeat(b, deg[b])
    keys = rng.random(pos_b.size)
    order = np.lexsort((keys, owner_b))
    rank = np.arange(order.size) - np.repeat(np.cumsum(deg[b]) - deg[b], deg[b])
    keep = order[rank < fanout]
    pos = np.concatenate([pos_all, pos_b[keep]])
    dst = np.concatenate([dst_all, owner_b[keep]])
    return np.asarray(indices[pos], dtype=np.int64), dst


def sample_batch(indptr, indices, seeds, fanouts, rng):
    nodes = np.asarray(seeds, dtype=np.int64)
    layers = []
    for f in reversed(fanouts):
        nbr, dst = sample_layer(indptr, indices, nodes, f, rng)
        allids = np.concatenate([nodes, nbr])
        uniq, first, inv = np.unique(allids, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # destinations first (they come first)
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        local = rank[inv]
        src = local[nodes.size:]
        n_dst = nodes.size
        nodes = uniq[order]
        layers.append((src, dst, nodes.size, n_dst))
    return nodes, layers[::-1]
