"""Link plans: what a batch records, round trip through the plan format, older plans."""

from __future__ import annotations

import numpy as np
import pytest

from linkopts import LINK
from helpers import flip_bits
from oocstore.errors import FormatError
from oocstore.linksplit import read_edge_split
from oocstore.plan import PlanMeta, PlanReader, list_plans
from oocstore.store import Store


def test_each_epoch_has_every_training_edge_once_with_k_negatives(link_template):
    with Store(link_template) as store:
        split = read_edge_split(store)
        reader = PlanReader(store, "link")
        assert reader.meta.task == "link" and reader.meta.link["neg_ratio"] == LINK["neg_ratio"]
        for epoch in range(reader.num_epochs):
            pos_all = []
            for b in reader.iter_batches(epoch):
                # Seeds: the distinct endpoints, ascending; the last layer ends at them.
                ends = np.concatenate([b.seeds[b.pos].ravel(), b.seeds[b.neg].ravel()])
                assert np.array_equal(b.seeds, np.unique(ends))
                assert b.blocks[-1].num_dst == b.seeds.size
                assert b.pos.shape[1] <= LINK["batch_size"]
                assert b.neg.shape == (2, LINK["neg_ratio"] * b.pos.shape[1])
                # Negatives keep their positive's source.
                assert np.array_equal(b.seeds[b.neg[0]],
                                      np.repeat(b.seeds[b.pos[0]], LINK["neg_ratio"]))
                pos_all.append(b.seeds[b.pos].T)
            got = np.concatenate(pos_all)
            assert got.shape == split.train.shape
            assert np.array_equal(np.unique(got, axis=0), np.unique(split.train, axis=0))
        reader.close()


def test_epochs_are_shuffled_differently(link_template):
    with Store(link_template) as store:
        r = PlanReader(store, "link")
        first = [r.read_batch(e, 0).seeds[r.read_batch(e, 0).pos].T for e in range(2)]
        r.close()
    assert not np.array_equal(first[0], first[1])


def test_older_plan_entries_read_as_node_plans(link_template):
    with Store(link_template) as store:
        raw = store.get("plan/link")
    old = {k: v for k, v in raw.items() if k not in ("task", "link")}
    meta = PlanMeta.from_dict(old)
    assert meta.task == "node" and meta.link == {}


def test_a_damaged_pair_array_is_refused(link_store):
    with Store(link_store) as store:
        meta = store.array_meta("plan/link/pairs")
        path = store.file_path(meta)
    flip_bits(path, 8, 0x40)
    with Store(link_store) as store:
        reader = PlanReader(store, "link")
        with pytest.raises(Exception, match="checksum|CRC|damaged"):
            reader.read_batch(0, 0)
        reader.close()


def test_a_pair_index_that_disagrees_with_the_batches_is_refused(link_store):
    with Store(link_store, readonly=False) as store:
        pidx = np.array(store.array("plan/link/pair_index"))
        pidx[1, 1] += 1
        with store.transaction() as txn:
            txn.write_array("plan/link/pair_index", pidx, subdir="plans")
    with Store(link_store) as store:
        with pytest.raises(FormatError, match="pair index"):
            PlanReader(store, "link")
        assert "link" in list_plans(store)


def test_a_node_plan_replacing_a_link_plan_drops_its_pair_arrays(link_store):
    from oocstore.samplers import sample_plan

    with Store(link_store, readonly=False) as store:
        sample_plan(store, fanouts="3", batch_size=64, epochs=1, name="link", overwrite=True)
    with Store(link_store) as store:
        assert list_plans(store)["link"].task == "node"
        assert not store.has_array("plan/link/pairs")
        assert not store.has_array("plan/link/pair_index")
        assert store.has_array("plan/link/data")
