"""Damaged index arrays of plans and packs are refused by name, never followed.

A reader indexes memory with a pack's tier / slot / Belady inserts and segment tables and
with a plan's index and records. A bit flipped in any of them must stop the read with
oocstore's own error naming the array and its file (its checksum is checked when it is
read); an array whose checksums match but whose values are out of range (written that
way) must be refused before a kernel uses the value. ``tools/bitflip_experiment.py`` is
the long, randomised version of these tests.
"""

from __future__ import annotations


import numpy as np
import pytest

from oocstore import Store
from oocstore.errors import ChecksumError, FormatError
from oocstore.loader import NodeLoader
from oocstore.pack import PackOptions, pack_plan
from oocstore.plan import PlanReader
from oocstore.tiers.assemble import assemble_rows, scatter_rows
from oocstore.tiers.reader import TieredReader
from oocstore.samplers import sample_plan

from helpers import copy_of, make_synthetic

NODES, DIM = 2000, 8


@pytest.fixture(scope="module")
def flip_store(tmp_path_factory):
    """Plan ``train`` packed three ways (read-only template: tests work on copies)."""
    path = tmp_path_factory.mktemp("flips") / "s"
    make_synthetic(path, nodes=NODES, feat_dim=DIM, seed=0, avg_degree=6)
    cache = NODES * DIM * 4 // 5
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="4,4", batch_size=128, epochs=2, seed=1, name="train")
        pack_plan(s, "train", name="static", options=PackOptions(cpu_cache=cache,
                                                                 max_disk_blowup=8))
        pack_plan(s, "train", name="belady", options=PackOptions(cpu_cache=cache,
                                                                 max_disk_blowup=8,
                                                                 policy="belady"))
    return path


@pytest.fixture
def copy(flip_store, tmp_path):
    return copy_of(flip_store, tmp_path / "s")


def _read_all(path, pack):
    """Every batch of every epoch of ``pack``, as training would see them."""
    seen = []
    with Store(path) as s, NodeLoader(s, "train", pack=pack, prefetch=0) as loader:
        for e in range(loader.num_plan_epochs):
            loader.set_epoch(e)
            for b in loader:
                seen.append(b.x.numpy().copy())
    return seen


def _flip(path, array, where=0.5, bit=3):
    with Store(path) as s:
        meta = s.array_meta(array)
        file = s.file_path(meta)
    pos = meta.offset + int(meta.nbytes * where)
    data = bytearray(file.read_bytes())
    data[pos] ^= 1 << bit
    file.write_bytes(bytes(data))
    return file


INDEX_ARRAYS = [("static", "pack/static/tier"), ("static", "pack/static/slot"),
                ("static", "pack/static/segments"), ("static", "pack/static/segment_crc"),
                ("static", "pack/static/batch_segment"), ("belady", "pack/belady/inserts"),
                ("belady", "pack/belady/insert_offsets"), ("static", "plan/train/index"),
                ("belady", "plan/train/data")]


@pytest.mark.parametrize("pack,array", INDEX_ARRAYS, ids=[a for _, a in INDEX_ARRAYS])
@pytest.mark.parametrize("where", [0.0, 0.6, 0.999])
def test_flip_in_an_index_array_is_refused_by_name(copy, pack, array, where):
    with Store(copy) as s:
        meta = s.array_meta(array)
        assert meta.nbytes > 0
    file = _flip(copy, array, where)
    with pytest.raises(ChecksumError) as err:
        _read_all(copy, pack)
    msg = str(err.value)
    assert repr(array) in msg and str(file) in msg and "checksum mismatch" in msg, msg
    assert "\n" not in msg


def test_flip_in_plan_records_is_refused_before_packing(copy):
    file = _flip(copy, "plan/train/data", 0.4)
    with Store(copy, readonly=False) as s:
        before = sorted(k for k, _ in s.items("pack/"))
        with pytest.raises(ChecksumError, match="plan/train/data"):
            pack_plan(s, "train", name="again", options=PackOptions(max_disk_blowup=8))
    with Store(copy) as s:
        assert sorted(k for k, _ in s.items("pack/")) == before
    assert file.exists()


def _rewrite(path, array, fn):
    """Replace ``array`` by ``fn(its values)`` through a transaction, so its checksums
    match the damaged values (what a checksum cannot catch: a wrong value written)."""
    with Store(path, readonly=False) as s:
        meta = s.array_meta(array)
        values = np.array(s.array(array))
        subdir = meta.file.split("/")[0]
        with s.transaction() as txn:
            txn.write_array(array, fn(values), subdir=subdir)


def _set(index, value):
    def fn(a):
        a = a.copy()
        a.reshape(-1)[index] = value
        return a
    return fn


OUT_OF_RANGE = [
    ("static", "pack/static/tier", _set(5, 7), "tier 7"),
    ("static", "pack/static/slot", _set(3, 1 << 30), "slot 1073741824 outside"),
    ("static", "pack/static/slot", _set(3, -5), "slot -5 outside"),
    ("belady", "pack/belady/inserts", _set(1, 1 << 20), "Belady insert"),
    ("belady", "pack/belady/inserts", _set(0, -1), "Belady insert"),
    ("static", "pack/static/segments", _set(1, 1 << 40), "segment 0"),
    ("static", "pack/static/batch_segment", _set(2, 99), "names segment 99"),
    ("belady", "pack/belady/insert_offsets", _set(1, 1 << 40), "insert offsets"),
]


@pytest.mark.parametrize("pack,array,fn,match", OUT_OF_RANGE,
                         ids=[f"{a}-{m}" for _, a, _, m in OUT_OF_RANGE])
def test_out_of_range_index_never_reaches_a_kernel(copy, pack, array, fn, match):
    _rewrite(copy, array, fn)
    with pytest.raises(FormatError, match=match) as err:
        _read_all(copy, pack)
    assert f"pack {pack!r}" in str(err.value) and "re-pack" in str(err.value)


def test_ssd_slot_in_an_unpacked_batch_is_refused(tmp_path):
    """A batch left to the base-array fallback has no segment loaded: an SSD entry there
    must not read the previous batch's segment."""
    path = tmp_path / "s"
    make_synthetic(path, nodes=NODES, feat_dim=DIM, seed=0, avg_degree=6)
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="4,4", batch_size=128, epochs=1, seed=1, name="train")
        pack_plan(s, "train", name="p", options=PackOptions(max_disk_blowup=1,
                                                            segment_batches=1))
        m = s.get("pack/p")
        seg = np.array(s.array(m["arrays"]["batch_segment"]))
        tier = np.array(s.array(m["arrays"]["tier"]))
        ninput = PlanReader(s, "train").index()[:, 3]
    unpacked = int(np.flatnonzero(seg < 0)[0])
    assert unpacked > 0 and seg[unpacked - 1] >= 0
    first = int(ninput[:unpacked].sum())
    assert tier[first] == 3
    _rewrite(path, m["arrays"]["tier"], _set(first, 2))
    _rewrite(path, m["arrays"]["slot"], _set(first, 0))
    with Store(path) as s, TieredReader(s, "p") as r:
        for b in range(unpacked):
            r.read_batch(0, b)
        with pytest.raises(FormatError, match=f"batch {unpacked}, position 0 has slot 0 outside "
                                              "the 0 rows of tier 2"):
            r.read_batch(0, unpacked)


PLAN_DAMAGE = [
    ("offset", (0, 0), 1 << 40, "does not start at 0"),
    ("length", (1, 1), 1 << 38, "record length"),
    ("num_input", (0, 3), 1 << 41, "more input nodes"),
    ("negative", (2, 5), -3, "negative"),
    ("layers", (2, 4), 1, "record length|do not nest"),
    ("seeds", (4, 2), 1, "do not nest"),
]


@pytest.mark.parametrize("what,at,value,match", PLAN_DAMAGE, ids=[w for w, *_ in PLAN_DAMAGE])
def test_inconsistent_plan_index_is_refused_before_any_allocation(copy, what, at, value, match):
    _rewrite(copy, "plan/train/index", lambda ix: _set2(ix, at, value))
    with Store(copy) as s:
        with pytest.raises(FormatError, match=match) as err:
            PlanReader(s, "train")
    assert "plan 'train'" in str(err.value) and "re-sample" in str(err.value)


def _set2(ix, at, value):
    ix = ix.copy()
    ix[at] = value
    return ix


@pytest.mark.parametrize("where,value,match", [
    ("node", NODES + 5, "input node id outside"),
    ("src", 1 << 20, "layer 0 has a source id outside"),
])
def test_out_of_range_ids_in_plan_records_are_refused(copy, where, value, match):
    with Store(copy) as s:
        row = PlanReader(s, "train").index()[3]
    at = int(row[0]) + (1 if where == "node" else int(row[3]) + 2)
    _rewrite(copy, "plan/train/data", _set(at, value))
    with Store(copy) as s:
        plan = PlanReader(s, "train")
        plan.read_batch(0, 2)
        with pytest.raises(FormatError, match=match):
            plan.read_batch(0, 3)
        if where == "node":
            with pytest.raises(FormatError, match=match):
                plan.input_nodes(0, 3)


def test_assembly_kernels_check_every_index():
    host = np.arange(12, dtype=np.float32).reshape(6, 2)  # 2 gpu rows + 4 cpu rows
    seg = np.full((3, 2), 100, np.float32)
    out = np.zeros((5, 2), np.float32)
    tier = np.array([0, 1, 2, 3, 1], np.uint8)
    ok = assemble_rows(tier, np.array([1, 3, 2, -1, 0], np.int32), host, 2, seg, out, True)
    assert ok.tolist() == [1, 2, 1, 1, 0]
    assert out[:3].tolist() == [[2, 3], [10, 11], [100, 100]]
    for bad_tier, bad_slot in (([0, 1, 2, 9, 1], [1, 3, 2, -1, 0]),   # unknown tier
                               ([0, 1, 2, 3, 1], [2, 3, 2, -1, 0]),   # past the gpu tier
                               ([0, 1, 2, 3, 1], [1, 4, 2, -1, 0]),   # past the cpu tier
                               ([0, 1, 2, 3, 1], [1, 3, 3, -1, 0]),   # past the segment
                               ([0, 1, 2, 3, 1], [1, 3, 2, -1, -1])):  # negative
        out[:] = -7
        counts = assemble_rows(np.array(bad_tier, np.uint8), np.array(bad_slot, np.int32),
                               host, 2, seg, out, True)
        assert counts[4] == 1
    # The GPU tier on the device: the kernel still checks its slots against its size.
    counts = assemble_rows(np.array([0], np.uint8), np.array([5], np.int32), host[2:], 0, seg,
                           out[:1], False, 4)
    assert counts[4] == 1
    dst = np.zeros((4, 2), np.float32)
    assert scatter_rows(out, np.array([0, 5]), dst, np.array([1, 2]), 1) == 1
    assert scatter_rows(out, np.array([0, 1]), dst, np.array([0, 2]), 1) == 1
    assert scatter_rows(out, np.array([0, 1]), dst, np.array([1, 4]), 1) == 1
    assert not dst.any()  # nothing copied when any index is bad
    assert scatter_rows(out, np.array([0, 1]), dst, np.array([1, 3]), 1) == 0
    assert dst[1].tolist() == out[0].tolist()


def test_undamaged_packs_read_identically(flip_store):
    """The checks change nothing for a sound pack: both policies deliver the features."""
    with Store(flip_store) as s:
        feats = np.array(s.array("features"))
        plan = PlanReader(s, "train")
        for pack in ("static", "belady"):
            with TieredReader(s, pack) as r:
                for e in range(r.num_epochs):
                    for b in range(r.num_batches(e)):
                        np.testing.assert_array_equal(r.read_batch(e, b),
                                                      feats[plan.input_nodes(e, b)])



def test_flip_in_labels_is_refused_by_name(copy):
    file = _flip(copy, "labels", 0.5)
    with pytest.raises(ChecksumError, match="array 'labels'") as err:
        _read_all(copy, "static")
    assert str(file) in str(err.value)
