"""One working-set model: the itemised lists add up to the recorded minimum, the reader and
loader charge exactly their items, and refusals and `inspect` name the items."""

import pytest
from helpers import packed_synthetic

from oocstore.budget import MemoryBudget
from oocstore.errors import BudgetError
from oocstore.loader import NodeLoader
from oocstore.pack import PackOptions, pack_plan
from oocstore.pack.packer import labels_bytes
from oocstore.store.info import format_packs, packs_info
from oocstore.units import format_size
from oocstore.workingset import (Item, WorkingSet, floor_items, loader_floor, pack_minimum,
                                 recorded_minimum, refuse_prefetch, working_set)

PARTS = dict(largest_batch_rows=300, row_bytes=64, largest_segment_bytes=40960,
             cpu_tier_bytes=12800, gpu_tier_bytes=6400, base_read_bytes=65536,
             labels_bytes=8000, tables_bytes=5000, plan_record_bytes=7000, batch_size=32,
             gpu_rows=100)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = packed_synthetic(tmp_path_factory.mktemp("workingset") / "s", {
        "p": PackOptions(cpu_cache=150 * 64, max_disk_blowup=64)}, epochs=2)
    yield s
    s.close()


def test_the_recorded_minimum_is_the_sum_of_its_items():
    ws = pack_minimum(**PARTS)
    mws = working_set(**PARTS)
    staging = 300 * 64
    # The formula docs/BUDGETS.md states, written out by hand.
    assert mws["cpu"] == (40960 + 2 * (staging + 7000) + 12800 + 6400 + 65536 + 8000 + 5000)
    assert mws["cpu"] == ws.total("cpu") == sum(i.nbytes for i in ws.of("cpu"))
    assert mws["gpu"] == ws.total("gpu") and mws["prefetch_bytes"] == staging + 7000
    names = [i.name for i in ws.of("cpu")]
    assert "largest segment" in names and "labels" in names and "2 plan records" in names
    # Read back from the record, part by part, to the same total.
    back = recorded_minimum(mws)
    assert back.total("cpu") == mws["cpu"] and len(back) == len(ws.of("cpu"))


def test_the_loader_floor_per_device_and_for_older_records():
    mws = working_set(**PARTS)
    assert loader_floor(mws, "cpu") == mws["cpu"]
    # CUDA: the gpu tier leaves the host, the staging ring prefetches one batch.
    assert loader_floor(mws, "cuda") == mws["cpu"] - 6400 + mws["prefetch_bytes"]
    assert "1 prefetched batch" in floor_items(mws, "cuda").describe("cpu")
    # A record from before the depth-0 floor (three batches, no batches_in_flight): as is.
    old = {k: v for k, v in mws.items() if k != "batches_in_flight"}
    assert loader_floor(old, "cpu") == mws["cpu"]
    assert loader_floor(old, "cuda") == mws["cpu"] - 6400
    # Older still: no labels, no held batches in the record.
    oldest = {"cpu": 1000, "gpu": 0, "staging_bytes": 100, "gpu_tier_bytes": 0}
    assert loader_floor(oldest, "cpu", labels=50) == 1000 + 50 + 200
    # Parts that do not add up to the recorded total: the total stands.
    odd = dict(mws, cpu=mws["cpu"] + 1)
    assert loader_floor(odd, "cpu") == mws["cpu"] + 1


def test_reader_and_loader_charge_exactly_the_items_at_the_floor(store):
    mws = store.get("pack/p")["min_working_set"]
    floor = mws["cpu"]
    with NodeLoader(store, pack="p", budget=MemoryBudget(cpu=floor)) as loader:
        held = {c.what: c.nbytes for c in loader.accountant._holders["cpu"]}
        held.update({c.what: c.nbytes for c in loader.reader._charges})
        assert loader.prefetch == 0 and loader.accountant.charged("cpu") == floor
    items = {i.name: i.nbytes for i in recorded_minimum(mws)}
    # The same buffers under the reader's and loader's names.
    assert held["labels"] == items["labels"] == labels_bytes(store)
    assert held["segment buffer"] == items["largest segment"]
    assert held["batch staging"] + held["batch held by the training loop"] == \
        items["2 batches of staging"]
    assert held["cpu tier"] == items["cpu tier"] + items["gpu tier held on the host"]


def test_refusals_list_the_items(store):
    mws = store.get("pack/p")["min_working_set"]
    with pytest.raises(BudgetError) as err:
        NodeLoader(store, pack="p", budget=MemoryBudget(cpu=mws["cpu"] - 1))
    msg = str(err.value)
    assert "minimum needed is " + format_size(mws["cpu"]) in msg
    for name in ("largest segment", "2 batches of staging", "2 plan records", "labels",
                 "plan index and pack tables"):
        assert name in msg, (name, msg)
    with pytest.raises(BudgetError) as err:
        pack_plan(store, name="q", options=PackOptions(cpu_cache=150 * 64, max_disk_blowup=64,
                                                       cpu_budget=mws["cpu"] // 4))
    assert "2 plan records" in str(err.value) and "labels" in str(err.value)
    assert store.get("pack/q") is None


def test_a_cuda_loader_without_room_to_prefetch_is_refused_with_the_items():
    one = WorkingSet([Item("plan record", 4096, "cpu"), Item("staging slot", 1 << 20, "cpu"),
                      Item("device batch", 3 << 20, "gpu")])
    with pytest.raises(BudgetError) as err:
        refuse_prefetch(MemoryBudget(cpu="64MiB", gpu=None), one,
                        {"cpu": 63 << 20, "gpu": 5 << 20})
    msg = str(err.value)
    assert msg.startswith("cpu budget 64.00 MiB / gpu budget unlimited cannot prefetch even "
                          "one batch")
    assert (f"needs {format_size(4096 + (1 << 20))} of cpu (plan record 4.00 KiB + staging "
            f"slot 1.00 MiB) on top of {format_size(63 << 20)} of cpu") in msg
    assert f"{format_size(3 << 20)} of device batches (device batch 3.00 MiB)" in msg


def test_inspect_itemises_the_recorded_minimum(store):
    lines = format_packs(packs_info(store))
    mws = store.get("pack/p")["min_working_set"]
    line = next(ln for ln in lines if ln.strip().startswith("minimum cpu:"))
    assert "largest segment" in line and "labels" in line
    assert any(f"minimum working set cpu {format_size(mws['cpu'])}" in ln for ln in lines)
