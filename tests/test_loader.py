"""The DataLoader replacement: exact batches, epochs, resume, failures, budgets."""

import threading

import numpy as np
import pytest
import torch

from helpers import opened, policy_packs, sampled_store
from oocstore.budget import MemoryBudget
from oocstore.errors import BudgetError, FormatError, StageTimeoutError, UsageError
from oocstore.loader import NodeLoader
from oocstore.pack import PackOptions, pack_plan


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    packs = policy_packs({"train": "static", "belady": "belady"}, cpu_cache=200 * 64,
                         max_disk_blowup=64)
    plan = dict(fanouts="4,4", batch_size=256, epochs=3, seed=0)
    yield from opened(sampled_store(tmp_path_factory.mktemp("loader") / "s", plan, packs=packs,
                                    nodes=4000, avg_degree=8), readonly=False)


def oocstore_threads():
    return [t for t in threading.enumerate() if t.name.startswith("oocstore")]


def check(store, batch):
    feats = np.asarray(store.array("features"))
    labels = np.asarray(store.array("labels"))
    assert torch.equal(batch.x, torch.from_numpy(feats[batch.input_nodes]))
    assert torch.equal(batch.y, torch.from_numpy(labels[batch.seeds]))


@pytest.mark.parametrize("pack", ["train", "belady"])
def test_batches_are_exact_and_epochs_cycle(store, pack):
    with NodeLoader(store, pack=pack) as loader:
        assert loader.num_plan_epochs == 3
        seen = []
        for epoch in range(4):
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader) > 1
            for b in batches:
                check(store, b)
            seen.append(np.concatenate([b.seeds for b in batches]))
        assert np.array_equal(seen[3], seen[0])  # epoch 3 reuses plan epoch 0
        assert not np.array_equal(seen[1], seen[0])
        st = loader.stats()
        assert st["batches"] == 4 * len(loader)
        assert len(st["epochs"]) == 4 and st["read_amplification"] < 1.1
    assert not oocstore_threads()


@pytest.mark.parametrize("pack", ["train", "belady"])
def test_resume_mid_epoch_gives_exactly_the_remaining_batches(store, pack):
    with NodeLoader(store, pack=pack) as loader:
        loader.set_epoch(1)
        full = [(b.index, b.seeds.copy(), b.x.clone()) for b in loader]
    with NodeLoader(store, pack=pack) as loader:
        loader.set_epoch(1)
        it = iter(loader)
        for _ in range(3):
            next(it)
        state = loader.state_dict()
        it.close()
    assert state["epoch"] == 1 and state["next_batch"] == 3
    with NodeLoader(store, pack=pack) as loader:
        loader.load_state_dict(state)
        rest = [(b.index, b.seeds, b.x) for b in loader]
    assert [r[0] for r in rest] == [f[0] for f in full[3:]]
    for (_, s1, x1), (_, s2, x2) in zip(rest, full[3:]):
        assert np.array_equal(s1, s2) and torch.equal(x1, x2)


def test_a_state_of_another_plan_is_refused_naming_the_parameter(store):
    """A Python caller reads the parameter it passes (``plan=...``, ``resume=True``), not a
    command-line flag (the CLI writes its flags in)."""
    with NodeLoader(store, pack="train") as loader:
        state = loader.state_dict()
        with pytest.raises(FormatError, match=r"resume with plan='other'$") as err:
            loader.load_state_dict({**state, "plan": "other"})
        assert "--" not in str(err.value)
        with pytest.raises(FormatError, match=r"start a new run instead of resume=True$"):
            loader.load_state_dict({**state, "plan_version": -1})


def test_stage_failure_surfaces_with_traceback_and_close_leaves_no_thread(store, monkeypatch):
    loader = NodeLoader(store)
    original = loader.reader.read_batch

    def failing(epoch, batch, out=None):
        if batch == 2:
            raise OSError("disk read failed at batch 2")
        return original(epoch, batch, out)

    monkeypatch.setattr(loader.reader, "read_batch", failing)
    with pytest.raises(OSError, match="batch 2") as info:
        list(loader)
    assert "failing" in [f.name for f in __import__("traceback").extract_tb(info.value.__traceback__)]
    loader.close()
    assert not oocstore_threads()


def test_stalled_read_times_out_naming_the_stage(store, monkeypatch):
    import time

    with NodeLoader(store, timeout=0.5) as loader:
        monkeypatch.setattr(loader.reader, "read_batch",
                            lambda e, b, out=None: time.sleep(3))
        with pytest.raises(StageTimeoutError, match="stage 'oocstore-read' has been busy"):
            next(iter(loader))
    assert not oocstore_threads()


def test_close_mid_epoch_stops_every_thread(store):
    loader = NodeLoader(store)
    it = iter(loader)
    next(it)
    assert oocstore_threads()
    loader.close()
    loader.close()
    assert not oocstore_threads()
    with pytest.raises(UsageError, match="closed"):
        iter(loader).__next__()


def test_budget_too_small_for_one_batch_is_refused_up_front(store):
    need = store.get("pack/train")["min_working_set"]["cpu"]
    with pytest.raises(BudgetError, match=r"budget .*minimum|budget"):
        NodeLoader(store, budget=MemoryBudget(cpu=need // 2))
    assert not oocstore_threads()


def test_prefetch_depth_is_the_largest_that_fits(store):
    with NodeLoader(store) as loader:
        assert loader.prefetch == 4
    m = store.get("pack/train")
    staging = m["largest_batch_rows"] * m["row_bytes"]
    labels = 4000 * 2
    with NodeLoader(store, budget=MemoryBudget(cpu=m["min_working_set"]["cpu"] + labels
                                               + 2 * staging + staging // 2)) as loader:
        assert loader.prefetch in (1, 2)
        assert loader.accountant.peak("cpu") <= loader.budget.cpu


@pytest.mark.parametrize("pack", ["train", "belady"])
def test_the_recorded_floor_runs_at_depth_0_and_one_byte_less_is_refused(store, pack):
    """The pack's minimum working set is what the loader charges at prefetch depth 0
    (two batches alive, read in the training loop's thread): a budget of exactly that
    trains, exact batches, never charging past it; one byte less is refused up front."""
    floor = store.get(f"pack/{pack}")["min_working_set"]["cpu"]
    with NodeLoader(store, pack=pack, budget=MemoryBudget(cpu=floor)) as loader:
        assert loader.prefetch == 0
        assert not any("read-ahead" in c.what for c in loader.accountant._holders["cpu"])
        for b in loader:
            check(store, b)
        assert loader.accountant.peak("cpu") == floor
    with pytest.raises(BudgetError, match="minimum needed is"):
        NodeLoader(store, pack=pack, budget=MemoryBudget(cpu=floor - 1))
    m = store.get(f"pack/{pack}")
    one = m["min_working_set"]["prefetch_bytes"]
    with NodeLoader(store, pack=pack, budget=MemoryBudget(cpu=floor + one)) as loader:
        assert loader.prefetch == 1 and loader.accountant.peak("cpu") <= floor + one
    assert not oocstore_threads()


def test_cuda_without_cuda_is_refused(store):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match="no CUDA device"):
        NodeLoader(store, device="cuda")


def test_batches_convert_to_pyg(store):
    with NodeLoader(store) as loader:
        b = next(iter(loader))
        pyg = b.to_pyg()
        assert len(pyg.layers) == 2 and pyg.layers[-1].size[1] == len(b.seeds)


@pytest.fixture(scope="module")
def gpu_store(tmp_path_factory):
    packs = {"gpu": PackOptions(gpu_cache=300 * 64, cpu_cache=500 * 64, max_disk_blowup=64)}
    yield from opened(sampled_store(tmp_path_factory.mktemp("loader-gpu") / "s",
                                    dict(fanouts="4,4", batch_size=200, epochs=2, seed=0),
                                    packs=packs, nodes=3000, avg_degree=8), readonly=False)


@pytest.fixture
def as_if_cuda(monkeypatch):
    """The CUDA loader's set-up on a machine without CUDA: the reader keeps its GPU tier
    in a device tensor on the CPU, the ring stays pageable and the stream is a stand-in.
    Enough to check what is charged, not to iterate."""
    import oocstore.loader as loader_mod
    from oocstore.tiers.reader import TieredReader

    class Reader(TieredReader):
        def __init__(self, *a, device=None, **kw):
            super().__init__(*a, device="cpu", gpu_tier_on_device=True, **kw)

    monkeypatch.setattr(loader_mod, "TieredReader", Reader)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: "side stream")
    monkeypatch.setattr("oocstore.tiers.staging._host_register", lambda array, device: False)


def test_cuda_charges_the_ring_to_the_cpu_and_every_device_batch_to_the_gpu(gpu_store, as_if_cuda):
    from oocstore.tiers.staging import device_charges

    with NodeLoader(gpu_store, pack="gpu", device="cuda") as loader:
        m = loader.reader.meta
        staging = m.largest_batch_rows * m.row_bytes
        assert loader.prefetch == 4
        items = device_charges(largest_batch_rows=m.largest_batch_rows, row_bytes=m.row_bytes,
                               max_seeds=200, prefetch=4, gpu_tier_rows=m.gpu_rows,
                               already_charged=staging)
        # reader: the gpu tier and one device batch; loader: the rest of what is on the device
        want_gpu = m.gpu_rows * m.row_bytes + staging + sum(b for _, b in items)
        assert loader.accountant.charged("gpu") == want_gpu
        held = [c for c in loader.accountant._holders["cpu"] if "staging ring" in c.what]
        assert len(held) == 1 and held[0].nbytes == 5 * staging == loader._ring.nbytes
        assert loader._ring.slots == 5 and loader.stats()["staging"]["pinned"] is False
        assert not any("held by the training loop" in c.what
                       for c in loader.accountant._holders["cpu"])
    # The budget fits exactly depth 1: depth 1 is chosen; one byte less cannot prefetch.
    reader_gpu = m.gpu_rows * m.row_bytes + staging
    one = sum(b for _, b in device_charges(largest_batch_rows=m.largest_batch_rows,
                                           row_bytes=m.row_bytes, max_seeds=200, prefetch=1,
                                           gpu_tier_rows=m.gpu_rows, already_charged=staging))
    with NodeLoader(gpu_store, pack="gpu", device="cuda",
                    budget=MemoryBudget(gpu=reader_gpu + one)) as loader:
        assert loader.prefetch == 1 and loader._ring.slots == 2
        assert loader.accountant.charged("gpu") == loader.budget.gpu
    with pytest.raises(BudgetError, match="cannot prefetch even one batch.*gpu_budget"):
        NodeLoader(gpu_store, pack="gpu", device="cuda", budget=MemoryBudget(gpu=reader_gpu + one - 1))
    with NodeLoader(gpu_store, pack="gpu", device="cuda", prefetch=0,
                    budget=MemoryBudget(gpu=reader_gpu + one - 1)) as loader:
        assert loader.prefetch == 0 and loader._ring.slots == 1
    with pytest.raises(BudgetError, match="gpu budget .* too small.*prefetch depth"):
        NodeLoader(gpu_store, pack="gpu", device="cuda", prefetch=2,
                   budget=MemoryBudget(gpu=reader_gpu + one))
    assert not oocstore_threads()


def test_a_pack_made_for_a_gpu_budget_trains_inside_it(gpu_store, as_if_cuda):
    """The pack's recorded minimum gpu working set is what the CUDA loader charges at
    prefetch depth 1, and the automatic split inside ``--gpu-budget G`` gives a pack the
    loader accepts under the same ``G``."""
    from oocstore.pack.costmodel import choose_split
    from oocstore.plan import PlanReader

    with NodeLoader(gpu_store, pack="gpu", device="cuda", prefetch=1) as loader:
        charged = loader.accountant.charged("gpu")
        assert loader.reader.meta.min_working_set["gpu"] == charged
    from oocstore.pack.packer import device_overhead

    m = loader.reader.meta
    budget = charged + 4000 * 64  # room for a larger gpu tier than the "gpu" pack's
    opts, _, _ = choose_split(gpu_store, PlanReader(gpu_store, "train"),
                              cpu_budget=64 << 20, gpu_budget=budget, max_disk_blowup=64)
    meta = pack_plan(gpu_store, name="gpu-auto", options=opts, overwrite=True)
    # the tier takes what the device batches and the tier's gather scratch leave
    over = device_overhead(m.largest_batch_rows, 64, 200, meta.gpu_rows)
    assert m.gpu_rows < meta.gpu_rows <= (budget - over) // 64
    assert meta.min_working_set["gpu"] <= budget
    with NodeLoader(gpu_store, pack="gpu-auto", device="cuda",
                    budget=MemoryBudget(gpu=budget)) as loader:
        assert loader.prefetch >= 1 and loader.accountant.charged("gpu") <= budget


def test_cpu_results_and_charges_do_not_change_on_a_cpu_device(gpu_store):
    feats = np.asarray(gpu_store.array("features"))
    with NodeLoader(gpu_store, pack="gpu") as loader:
        assert loader._ring is None and "staging" not in loader.stats()
        assert loader.accountant.charged("gpu") == 0
        whats = [c.what for c in loader.accountant._holders["cpu"]]
        assert "batch held by the training loop" in whats
        for b in loader:
            assert torch.equal(b.x, torch.from_numpy(feats[b.input_nodes]))
