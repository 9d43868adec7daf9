"""Correctness of the neighbour sampler against the graph (see sampler_oracle.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy.stats import chisquare

from oocstore.plan import PlanReader
from oocstore.store import Store
from sampler_oracle import check_batch, edge_keys
from oocstore.samplers import sample_batches, sample_plan
from oocstore.samplers.neighbor import parse_fanouts
from conftest import HUB_DEGREE


@pytest.fixture(scope="module")
def rmat_plan(rmat_store, tmp_path_factory):
    path = tmp_path_factory.mktemp("rmat_plan") / "g"
    shutil.copytree(rmat_store, path)
    meta = sample_plan(path, fanouts="6,4,3", batch_size=128, epochs=2, seed=7)
    return path, meta


def test_every_batch_matches_the_graph(rmat_plan):
    path, meta = rmat_plan
    with Store(path) as store:
        indptr, indices = (np.asarray(a) for a in store.csc())
        keys = edge_keys(indptr, indices)
        reader = PlanReader(store, "train")
        train = store.split("train")
        assert reader.num_epochs == 2
        counts = np.zeros(store.graph.num_nodes, dtype=np.int64)
        for epoch in range(2):
            seen = []
            assert reader.num_batches(epoch) == -(-train.size // 128)
            for b in range(reader.num_batches(epoch)):
                batch = reader.read_batch(epoch, b)
                check_batch(batch, indptr, indices, keys, meta.fanouts)
                assert np.array_equal(reader.input_nodes(epoch, b), batch.input_nodes)
                counts[batch.input_nodes] += 1
                seen.append(batch.seeds)
            # every training node is a seed exactly once per epoch
            assert np.array_equal(np.sort(np.concatenate(seen)), train)
            u = np.unique(np.concatenate([reader.input_nodes(epoch, b)
                                          for b in range(reader.num_batches(epoch))]))
            assert reader.stats["unique_nodes_per_epoch"][epoch] == u.size
        assert np.array_equal(reader.access_counts(), counts)
        st = reader.stats
        assert st["total_input_nodes"] == counts.sum()
        assert st["feature_bytes"] == counts.sum() * store.array_meta("features").row_bytes
        assert st["total_edges"] == sum(reader.read_batch(e, b).num_edges for e in range(2)
                                        for b in range(reader.num_batches(e)))


def test_epochs_are_shuffled_differently(rmat_plan):
    path, _ = rmat_plan
    with Store(path) as store:
        reader = PlanReader(store, "train")
        a, b = reader.read_batch(0, 0).seeds, reader.read_batch(1, 0).seeds
        assert not np.array_equal(a, b)


def test_neighbour_choice_is_uniform(special_store):
    """Draw 10 of the hub's 400 in-neighbours 4,000 times (distinct batch keys)."""
    with Store(special_store) as store:
        indptr, indices = store.csc()
        out = sample_batches(indptr, indices, np.zeros(4000, dtype=np.int64), fanouts=[10],
                             batch_size=1, seed=3)
    picks = []
    for record, layers in out:
        n_in, e = int(layers[0, 0]), int(layers[0, 2])
        assert e == 10
        src = record[n_in:n_in + e]
        nbrs = record[:n_in][src]
        assert np.unique(nbrs).size == 10
        picks.append(nbrs)
    freq = np.bincount(np.concatenate(picks), minlength=HUB_DEGREE + 1)[1:]
    assert freq.sum() == 40_000
    _, p = chisquare(freq)
    assert p > 1e-3, f"neighbour choice is not uniform (chi-square p = {p:.2e})"


def test_isolated_nodes_and_zero_degree_seeds(special_store, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(special_store, path)
    meta = sample_plan(path, fanouts=[3, 2], batch_size=4, epochs=1, seed=1)
    with Store(path) as store:
        indptr, indices = (np.asarray(a) for a in store.csc())
        keys = edge_keys(indptr, indices)
        reader = PlanReader(store, "train")
        for b in range(reader.num_batches(0)):
            check_batch(reader.read_batch(0, b), indptr, indices, keys, meta.fanouts)
    # a batch of isolated seeds only: no edges, input nodes are the seeds
    rec, layers = sample_batches(indptr, indices, np.array([550, 551, 599]), fanouts=[3, 2],
                                 batch_size=8)[0]
    assert layers.tolist() == [[3, 3, 0], [3, 3, 0]]
    assert rec.tolist() == [550, 551, 599]


def test_full_neighbourhood_for_evaluation(rmat_store, tmp_path):
    path = tmp_path / "g"
    shutil.copytree(rmat_store, path)
    meta = sample_plan(path, fanouts="all,all", batch_size=300, split="val")
    assert meta.epochs == 1 and not meta.shuffle and meta.name == "val"
    with Store(path) as store:
        indptr, indices = (np.asarray(a) for a in store.csc())
        keys = edge_keys(indptr, indices)
        reader = PlanReader(store, "val")
        seeds = []
        for b in range(reader.num_batches(0)):
            batch = reader.read_batch(0, b)
            check_batch(batch, indptr, indices, keys, meta.fanouts)
            seeds.append(batch.seeds)
        assert np.array_equal(np.concatenate(seeds), store.split("val"))  # not shuffled


def test_batch_larger_than_split_gives_one_batch(special_store, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(special_store, path)
    meta = sample_plan(path, fanouts="2", batch_size=10_000, epochs=3)
    assert meta.batches_per_epoch == (1, 1, 1)
    with Store(path) as store:
        assert PlanReader(store, "train").read_batch(2, 0).seeds.size == meta.num_seeds


def test_grouping_does_not_change_the_plan(rmat_store):
    with Store(rmat_store) as store:
        indptr, indices = store.csc()
        seeds = store.split("train")[:700]
        one = sample_batches(indptr, indices, seeds, fanouts=[4, 4], batch_size=100, seed=5)
        parts = [sample_batches(indptr, indices, seeds[i * 100:(i + 1) * 100], fanouts=[4, 4],
                                batch_size=100, seed=5, first_batch=i)[0] for i in range(7)]
    for (r1, l1), (r2, l2) in zip(one, parts):
        assert np.array_equal(r1, r2) and np.array_equal(l1, l2)


def test_parse_fanouts():
    assert parse_fanouts("15,10,5") == (15, 10, 5)
    assert parse_fanouts("all, 3") == (-1, 3)
    assert parse_fanouts([2, -1]) == (2, -1)
