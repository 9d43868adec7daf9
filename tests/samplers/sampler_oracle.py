"""A plain checker of sampled batches against the graph (the tests' oracle)."""

from __future__ import annotations

import numpy as np

from oocstore.plan import SampledBatch


def edge_keys(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Sorted ``dst * N + src`` of every graph edge (CSC columns are sorted)."""
    n = indptr.shape[0] - 1
    dst = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    return dst * n + np.asarray(indices, dtype=np.int64)


def check_batch(batch: SampledBatch, indptr, indices, keys, fanouts) -> None:
    n = indptr.shape[0] - 1
    nodes = batch.input_nodes
    assert nodes.dtype == np.int64
    assert np.unique(nodes).size == nodes.size, "input nodes repeat"
    assert np.array_equal(batch.seeds, nodes[:batch.seeds.size])
    assert batch.blocks[0].num_src == nodes.size
    assert batch.blocks[-1].num_dst == batch.seeds.size
    deg = np.diff(indptr)
    for layer, (blk, f) in enumerate(zip(batch.blocks, fanouts)):
        if layer + 1 < len(batch.blocks):
            assert blk.num_dst == batch.blocks[layer + 1].num_src
        assert blk.num_dst <= blk.num_src
        src, dst = blk.src, blk.dst
        assert src.size == dst.size
        if src.size:
            assert 0 <= src.min() and src.max() < blk.num_src
            assert 0 <= dst.min() and dst.max() < blk.num_dst
            assert np.all(np.diff(dst) >= 0), "edges not grouped by destination"
        # relabelling round trip: local -> global via the prefix lists, and back
        gsrc, gdst = nodes[src], nodes[dst]
        back = {int(g): i for i, g in enumerate(nodes)}
        assert all(back[int(g)] == int(s) for g, s in zip(gsrc[:50], src[:50]))
        # every sampled edge exists
        k = gdst * n + gsrc
        pos = np.searchsorted(keys, k)
        assert np.all(pos < keys.size) and np.array_equal(keys[np.minimum(pos, keys.size - 1)], k)
        # no duplicate neighbour per destination
        assert np.unique(k).size == k.size, "a neighbour was drawn twice"
        # fanout respected: exactly min(fanout, degree) per destination
        got = np.bincount(dst, minlength=blk.num_dst)
        d = deg[nodes[:blk.num_dst]]
        want = d if f < 0 else np.minimum(d, f)
        assert np.array_equal(got, want)
        # the new source nodes of this layer are exactly those its edges reach
        new = np.setdiff1d(np.arange(blk.num_dst, blk.num_src), src)
        assert new.size == 0, "a source node no edge reaches"
