"""Typed store layout, the bipartite CSC, reverse relations and the typed sampler."""

from __future__ import annotations

import numpy as np

from oocstore.hetero import HeteroPlanReader, build_hetero_store, load_schema
from oocstore.hetero.ingest import HeteroSource, NodeSource, bipartite_csc
from oocstore.hetero.sampler import sample_hetero_plan
from oocstore.hetero.schema import csc_names, feat_name, label_name
from oocstore.store import Store


def test_bipartite_csc_matches_edge_set():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 7, 60)
    dst = rng.integers(0, 5, 60)
    indptr, indices = bipartite_csc(7, 5, src, dst, drop_self_loops=False)
    got = {(int(indices[k]), v) for v in range(5) for k in range(indptr[v], indptr[v + 1])}
    assert got == set(zip(src.tolist(), dst.tolist()))
    assert indptr[-1] == len(got)  # duplicates dropped
    for v in range(5):  # sources ascending within a destination
        seg = indices[indptr[v]:indptr[v + 1]]
        assert np.all(np.diff(seg) > 0)


def test_schema_and_typed_arrays(hstore):
    with Store(hstore) as s:
        schema = load_schema(s)
        assert schema.target == "paper"
        assert {t: nt.count for t, nt in schema.node_types.items()} == {
            "paper": 1200, "author": 600, "field": 16}
        assert s.array_meta(feat_name("paper")).shape == (1200, 24)
        assert s.array_meta(feat_name("author")).shape == (600, 12)
        assert not s.has_array(feat_name("field"))  # a type without features
        assert s.array(label_name("paper")).shape == (1200,)
        assert ("paper", "rev_writes", "author") in schema.edge_types
        # The reverse relation is the transpose of the forward one.
        fwd = _edge_set(s, ("author", "writes", "paper"))
        rev = _edge_set(s, ("paper", "rev_writes", "author"))
        assert rev == {(d, u) for u, d in fwd} and fwd


def _edge_set(s, et):
    ip, ix = (np.asarray(s.array(n)) for n in csc_names(et))
    return {(int(ix[k]), v) for v in range(ip.size - 1) for k in range(ip[v], ip[v + 1])}


def test_plan_blocks_are_sampled_edges_with_typed_prefixes(hstore):
    with Store(hstore) as s:
        r = HeteroPlanReader(s, "train")
        edges = {et: _edge_set(s, et) for et in r.relations}
        indptr = {et: np.asarray(s.array(csc_names(et)[0])) for et in r.relations}
        fan = {tuple(k.split("___")): v for k, v in r.meta["fanouts"].items()}
        for b in (0, 5, r.batches_per_epoch[1] - 1):
            hb = r.batch(1, b)
            assert hb.seeds.size == hb.num_seeds and hb.seeds.size <= 100
            for layer, blk in enumerate(hb.blocks):
                for t, (n_src, n_dst) in blk.sizes.items():
                    assert n_dst <= n_src <= hb.input_nodes[t].size
                for et, (src, dst) in blk.edges.items():
                    s_ids = hb.input_nodes[et[0]][src]
                    d_ids = hb.input_nodes[et[2]][dst]
                    assert set(zip(s_ids.tolist(), d_ids.tolist())) <= edges[et]
                    # every destination of the layer gets min(fanout, in-degree) distinct
                    # in-neighbours of the relation
                    n_dst = blk.sizes[et[2]][1]
                    ids = hb.input_nodes[et[2]][:n_dst]
                    deg = indptr[et][ids + 1] - indptr[et][ids]
                    got = np.bincount(dst, minlength=n_dst)
                    assert np.array_equal(got, np.minimum(deg, fan[et][layer]))
                    assert len(set(zip(src.tolist(), dst.tolist()))) == src.size
            # the last layer's target destinations are the seeds
            assert hb.blocks[-1].sizes["paper"][1] == hb.num_seeds
        r.close()


def test_sampling_is_deterministic_and_seeded(hstore, tmp_path):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(hstore, copy)
    with Store(copy, readonly=False) as s:
        a = sample_hetero_plan(s, fanouts="4,3", batch_size=100, epochs=2, name="again")
        b = sample_hetero_plan(s, fanouts="4,3", batch_size=100, epochs=2, name="other", seed=9)
    with Store(copy) as s:
        data = {n: np.asarray(s.array(f"hplan/{n}/data")) for n in ("train", "again", "other")}
    assert np.array_equal(data["train"], data["again"])
    assert not np.array_equal(data["train"][:5000], data["other"][:5000])
    assert a["stats"]["field"]["mean_feature_bytes"] == 0 and b["seed"] == 9


def test_per_relation_fanouts(hstore, tmp_path):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(hstore, copy)
    spec = ("writes=3,2;cites=1,1;rev_cites=1,1;has_topic=1,1;rev_has_topic=1,1;"
            "rev_writes=2,1")
    with Store(copy, readonly=False) as s:
        sample_hetero_plan(s, fanouts=spec, batch_size=100, epochs=1, name="per")
        r = HeteroPlanReader(s, "per")
        hb = r.batch(0, 0)
        cites = hb.blocks[1].edges[("paper", "cites", "paper")][1]
        writes = hb.blocks[0].edges[("author", "writes", "paper")][1]
        assert np.bincount(cites).max() == 1 and np.bincount(writes).max() == 3
        r.close()


def test_ingest_without_reverse_has_only_given_relations(tmp_path):
    src = HeteroSource(
        nodes={"a": NodeSource(count=3, features=np.ones((3, 2), np.float32),
                               labels=np.array([0, 1, 0])),
               "b": NodeSource(count=2)},
        edges={("b", "to", "a"): (np.array([0, 1, 1]), np.array([0, 1, 2]))})
    schema = build_hetero_store(tmp_path / "s", src, split_fractions=(0.34, 0.33, 0.33))
    assert list(schema.edge_types) == [("b", "to", "a")] and schema.target == "a"
