"""The plan format: PlanMeta round trip and versioning, PlanWriter -> PlanReader."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import make_synthetic
from oocstore.errors import FormatError, StoreNotFoundError, UsageError
from oocstore.plan import (PLAN_FORMAT_VERSION, PlanMeta, PlanReader, PlanWriter,
                           graph_fingerprint, index_columns, list_plans)
from oocstore.store import Store


def _base(store: Store, name: str = "p") -> dict:
    return dict(name=name, split="train", fanouts=(2, 1), batch_size=2, epochs=2, seed=0,
                shuffle=True, num_seeds=3, node_dtype="int32", num_nodes=store.graph.num_nodes,
                num_edges=store.graph.num_edges, store_version=store.version,
                graph_fingerprint=graph_fingerprint(store))


def _record(nodes, layers_edges):
    parts = [np.asarray(nodes)]
    for s, d in layers_edges:
        parts += [np.asarray(s), np.asarray(d)]
    return np.concatenate(parts).astype(np.int64)


@pytest.fixture
def store_path(tmp_path):
    return make_synthetic(tmp_path / "g", nodes=200)


def test_writer_reader_round_trip(store_path):
    # two epochs: epoch 0 has two batches, epoch 1 one batch
    batches = [
        (0, _record([7, 8, 9, 3], [([2, 3, 1], [0, 1, 2]), ([1, 2], [0, 0])]),
         [[4, 3, 3], [3, 1, 2]], 1),
        (0, _record([5, 6], [([1], [0]), ([], [])]), [[2, 2, 1], [2, 2, 0]], 2),
        (1, _record([1], [([], []), ([], [])]), [[1, 1, 0], [1, 1, 0]], 1),
    ]
    with Store(store_path, readonly=False) as store:
        with store.transaction() as txn:
            w = PlanWriter(txn, _base(store), feature_row_bytes=64)
            for e in range(2):
                w.begin_epoch()
                for be, rec, lay, ns in batches:
                    if be == e:
                        w.add_batch(rec, np.array(lay), ns)
            meta = w.finish()
    assert meta.batches_per_epoch == (2, 1)
    with Store(store_path) as store:
        assert list(list_plans(store)) == ["p"]
        r = PlanReader(store, "p")
        assert r.num_epochs == 2 and r.num_batches(0) == 2 and r.num_batches(1) == 1
        b = r.read_batch(0, 0)
        assert b.seeds.tolist() == [7]
        assert b.input_nodes.tolist() == [7, 8, 9, 3]
        assert [(x.num_src, x.num_dst, x.num_edges) for x in b.blocks] == [(4, 3, 3), (3, 1, 2)]
        assert b.blocks[0].src.tolist() == [2, 3, 1] and b.blocks[1].dst.tolist() == [0, 0]
        assert b.blocks[0].edge_index().shape == (2, 3)
        assert r.read_batch(0, 1).seeds.tolist() == [5, 6]
        assert r.read_batch(1, 0).input_nodes.tolist() == [1]
        counts = r.access_counts()
        assert counts.dtype == np.int32 and counts[[7, 8, 9, 3, 5, 6, 1]].tolist() == [1] * 7
        assert counts.sum() == 7
        assert r.stats["unique_nodes_per_epoch"] == [6, 1]
        assert r.stats["feature_bytes"] == 7 * 64
        assert r.unique_per_batch(0).tolist() == [4, 2]
        assert r.index().shape == (3, len(index_columns(2)))
        with pytest.raises(UsageError, match="batch 2 of epoch 0 out of range"):
            r.read_batch(0, 2)
        with pytest.raises(UsageError, match="epoch 5"):
            r.num_batches(5)
        with pytest.raises(StoreNotFoundError, match="oocstore sample"):
            PlanReader(store, "nope")


def test_meta_round_trip_and_version_refusal(store_path):
    with Store(store_path) as store:
        meta = PlanMeta(**_base(store), batches_per_epoch=(2, 2))
    d = meta.to_dict()
    assert PlanMeta.from_dict(d) == meta
    assert d["format_version"] == PLAN_FORMAT_VERSION
    with pytest.raises(FormatError, match="--overwrite"):
        PlanMeta.from_dict({**d, "format_version": PLAN_FORMAT_VERSION + 1})
    with pytest.raises(FormatError, match="lacks"):
        PlanMeta.from_dict({k: v for k, v in d.items() if k != "fanouts"})


def test_reader_refuses_a_plan_of_another_graph(store_path):
    with Store(store_path, readonly=False) as store:
        with store.transaction() as txn:
            w = PlanWriter(txn, {**_base(store), "graph_fingerprint": 1, "epochs": 1})
            w.begin_epoch()
            w.add_batch(np.array([1], dtype=np.int64), np.array([[1, 1, 0], [1, 1, 0]]), 1)
            w.finish()
        with pytest.raises(FormatError, match="another graph"):
            PlanReader(store, "p")
        assert PlanReader(store, "p", check_graph=False).num_batches(0) == 1
