"""Packs written before the packer was split (a committed tiny store, see
``data/base_59d31ef/README.md``) still load and read exactly, and packing the same plan
with the same options today writes the same bytes: the on-disk format did not change."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from oocstore import Store
from oocstore.pack import PackOptions, pack_plan
from oocstore.tiers import TieredReader
from oocstore.tiers.reader import load_pack

FIXTURE = Path(__file__).parent / "data" / "base_59d31ef" / "store"
OPTIONS = {"static": PackOptions(cpu_cache=40 * 16, gpu_cache=8 * 16, max_disk_blowup=4),
           "belady": PackOptions(cpu_cache=40 * 16, max_disk_blowup=1, policy="belady")}


@pytest.fixture
def store(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "s")
    with Store(tmp_path / "s", readonly=False) as s:
        yield s


def _file_bytes(store, meta):
    return {part: store.file_path(store.array_meta(arr)).read_bytes()
            for part, arr in meta.arrays.items()}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_a_pack_written_before_reads_exactly_and_packs_the_same_today(store, name):
    old = load_pack(store, name)
    assert old.policy == name
    feats = np.asarray(store.array("features"))
    with TieredReader(store, name) as reader:
        assert reader.scheduled == (name == "belady")
        for e in range(reader.num_epochs):
            for b in range(reader.num_batches(e)):
                np.testing.assert_array_equal(reader.read_batch(e, b),
                                              feats[reader.plan.input_nodes(e, b)])
    new = pack_plan(store, "train", name=f"{name}-today", options=OPTIONS[name])
    assert new.arrays.keys() == old.arrays.keys()
    assert _file_bytes(store, new) == _file_bytes(store, old)
    # The expected read amplification is an estimate: since base-array reads coalesce rows
    # whose pages touch into one request, the estimate counts those requests (lower for
    # tiny rows); every stored array and every other field is the same.
    estimate = "expected_read_amplification"
    same = {k: v for k, v in old.to_dict().items() if k not in ("name", "arrays", estimate)}
    assert {k: v for k, v in new.to_dict().items() if k in same} == same
    assert 1.0 <= new.to_dict()[estimate] <= old.to_dict()[estimate]
