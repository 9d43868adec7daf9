"""The edge split: deterministic by seed, disjoint parts, held-out edges absent from the
message-passing graph and from every sampled block, negatives that are not edges."""

from __future__ import annotations

import numpy as np
import pytest

from linkopts import LINK
from helpers import copy_of
from oocstore.linksplit import read_edge_split
from oocstore.plan import PlanReader
from oocstore.samplers.link import _edge_keys, cut_edge_split, sample_link_plan
from oocstore.store import Store


def _pairs_set(a: np.ndarray) -> set[tuple[int, int]]:
    return {(int(u), int(v)) for u, v in np.asarray(a).reshape(-1, 2)}


def test_split_parts_are_disjoint_and_cover_every_undirected_edge(link_template):
    with Store(link_template) as store:
        split = read_edge_split(store)
        indptr, indices = store.csc()
        src, dst, _ = _edge_keys(indptr, indices, store.graph.num_nodes)
    undirected = _pairs_set(np.stack([src, dst], 1)[src < dst])
    parts = [_pairs_set(split.train), _pairs_set(split.val), _pairs_set(split.test)]
    assert set().union(*parts) == undirected
    assert sum(len(p) for p in parts) == len(undirected)
    m = len(undirected)
    assert (len(parts[1]), len(parts[2])) == (round(0.1 * m), round(0.2 * m))


def test_held_out_edges_leave_the_message_passing_graph_in_both_directions(link_template):
    with Store(link_template) as store:
        split = read_edge_split(store)
        n = store.graph.num_nodes
        full_src, full_dst, _ = _edge_keys(*store.csc(), n)
    mp_src, mp_dst, _ = _edge_keys(split.indptr, split.indices, n)
    mp = _pairs_set(np.stack([mp_src, mp_dst], 1))
    held = _pairs_set(np.concatenate([split.val, split.test]))
    assert not mp & held
    assert not mp & {(v, u) for u, v in held}
    # Everything else stays: the full graph less both directions of the held-out edges.
    full = _pairs_set(np.stack([full_src, full_dst], 1))
    assert mp == full - held - {(v, u) for u, v in held}


def test_no_held_out_edge_in_any_sampled_block(link_template):
    with Store(link_template) as store:
        split = read_edge_split(store)
        held = _pairs_set(np.concatenate([split.val, split.test]))
        held |= {(v, u) for u, v in held}
        reader = PlanReader(store, "link")
        seen = 0
        for epoch in range(reader.num_epochs):
            for b in reader.iter_batches(epoch):
                for block in b.blocks:
                    g = b.input_nodes
                    edges = _pairs_set(np.stack([g[block.src], g[block.dst]], 1))
                    assert not edges & held, (epoch, b.batch)
                    seen += len(edges)
        reader.close()
    assert seen > 1000  # the blocks are not empty: the check saw edges


def test_same_seed_same_split_and_plan_other_seed_differs(link_template, tmp_path):
    a = copy_of(link_template, tmp_path / "a")
    with Store(link_template) as s0, Store(a, readonly=False) as s1:
        sample_link_plan(s1, name="again", **LINK)
        r0, r1 = PlanReader(s0, "link"), PlanReader(s1, "again")
        for e in range(r0.num_epochs):
            for b in range(r0.num_batches(e)):
                x, y = r0.read_batch(e, b), r1.read_batch(e, b)
                assert np.array_equal(x.input_nodes, y.input_nodes)
                assert np.array_equal(x.pos, y.pos) and np.array_equal(x.neg, y.neg)
        r0.close()
        r1.close()
    with Store(link_template) as store:
        indptr, indices = store.csc()
        undirected = not store.graph.directed
        kw = dict(undirected=undirected, fractions=(0.7, 0.1, 0.2), eval_negatives=5,
                  where="t")
        one = cut_edge_split(indptr, indices, seed=1, **kw)
        same = cut_edge_split(indptr, indices, seed=1, **kw)
        other = cut_edge_split(indptr, indices, seed=2, **kw)
    for part in ("train", "val", "test", "val_neg", "indices"):
        assert np.array_equal(one[part], same[part])
    assert not np.array_equal(one["val"], other["val"])


def test_negatives_are_neither_edges_nor_self_loops(link_template):
    with Store(link_template) as store:
        n = store.graph.num_nodes
        src, dst, _ = _edge_keys(*store.csc(), n)
        full = _pairs_set(np.stack([src, dst], 1))
        full |= {(v, u) for u, v in full}
        split = read_edge_split(store)
        assert split.meta.neg_collisions == 0
        for part in ("val", "test"):
            pos, neg = split.held_out(part)
            assert neg.shape == (pos.shape[0], LINK["eval_negatives"])
            pairs = np.stack([np.repeat(pos[:, 0], neg.shape[1]), neg.reshape(-1)], 1)
            assert not _pairs_set(pairs) & full
            assert (pairs[:, 0] != pairs[:, 1]).all()
        reader = PlanReader(store, "link")
        assert reader.meta.stats["neg_collisions"] == 0
        for b in reader.iter_batches(0):
            g = b.seeds[b.neg]
            assert not _pairs_set(g.T) & full and (g[0] != g[1]).all()
        reader.close()


def test_degree_negatives_favour_high_degree_nodes(link_store):
    with Store(link_store, readonly=False) as store:
        sample_link_plan(store, name="deg", **{**LINK, "neg_sampler": "degree", "epochs": 1})
        split = read_edge_split(store)
        deg = np.diff(split.indptr)
        means = {}
        for name in ("link", "deg"):
            r = PlanReader(store, name)
            dsts = np.concatenate([b.seeds[b.neg[1]] for b in r.iter_batches(0)])
            means[name] = deg[dsts].mean()
            r.close()
    assert means["deg"] > 1.2 * means["link"], means


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.0), (1.0, 0.0, 0.0)])
def test_empty_parts_are_allowed_when_asked(link_template, fractions):
    with Store(link_template) as store:
        out = cut_edge_split(*store.csc(), undirected=True, fractions=fractions, seed=0,
                             eval_negatives=3, where="t")
    assert len(out["test"]) == 0 and out["test_neg"].shape == (0, 3)
