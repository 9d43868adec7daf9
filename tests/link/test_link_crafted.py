"""A crafted edge split (checksums rewritten to match) with a node id out of range or
negative is refused with a FormatError naming the array before any of it is used."""

from __future__ import annotations

import numpy as np
import pytest

from oocstore.errors import FormatError
from oocstore.linksplit import EDGE_SPLIT_KEY, read_edge_split
from oocstore.store import Store


def _rewrite(path, part: str, value: int) -> None:
    with Store(path, readonly=False) as store:
        arr = read_edge_split(store).__getattribute__(part).copy()
        arr.reshape(-1)[0] = value
        with store.transaction() as txn:
            txn.write_array(f"{EDGE_SPLIT_KEY}/{part}", np.ascontiguousarray(arr))


@pytest.mark.parametrize("part", ["train", "val", "test_neg", "indices"])
@pytest.mark.parametrize("bad", [-1, 10**9])
def test_split_with_node_id_out_of_range_is_refused(link_store, part, bad):
    _rewrite(link_store, part, bad)
    with Store(link_store) as store:
        with pytest.raises(FormatError, match=r"outside|inconsistent") as exc:
            read_edge_split(store)
    assert "--overwrite" in str(exc.value)
    if part != "indices":
        assert repr(part) in str(exc.value)


def test_link_plan_pair_id_outside_the_batch_seeds_is_refused(link_store):
    from oocstore.plan import PlanReader, pair_array_names

    name = pair_array_names("link")["pairs"]
    with Store(link_store, readonly=False) as store:
        pairs = np.array(store.array(name))
        pairs[0] = np.iinfo(pairs.dtype).max  # a bit-flipped id, checksums rewritten
        with store.transaction() as txn:
            txn.write_array(name, pairs, subdir="plans")
    with Store(link_store) as store:
        reader = PlanReader(store, "link")
        with pytest.raises(FormatError, match=r"batch 0 of epoch 0 has a pair id outside"):
            reader.read_batch(0, 0)


def test_split_of_more_nodes_than_the_store_is_refused(link_store):
    # A consistent split of a larger graph: every id below its own node count, but past
    # the store's features.
    with Store(link_store, readonly=False) as store:
        es = read_edge_split(store)
        raw = store.get(EDGE_SPLIT_KEY)
        raw["num_nodes"] += 5
        indptr = np.concatenate([es.indptr, np.full(5, es.indptr[-1], dtype=es.indptr.dtype)])
        with store.transaction() as txn:
            txn.write_array(f"{EDGE_SPLIT_KEY}/indptr", indptr)
            txn.put(EDGE_SPLIT_KEY, raw)
    with Store(link_store) as store:
        with pytest.raises(FormatError, match=r"edge split is of \d+ nodes, the store's graph "
                                              r"has \d+ nodes"):
            read_edge_split(store)


def test_in_memory_link_training_checks_the_feature_checksums(link_store):
    from oocstore.errors import ChecksumError
    from oocstore.train.link import LinkTrainConfig, run_link_training

    with Store(link_store) as store:
        path = store.file_path(store.array_meta("features"))
    with open(path, "r+b") as f:
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(ChecksumError, match="features"):
        run_link_training(link_store, "link", LinkTrainConfig(epochs=1, in_memory=True))
