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
