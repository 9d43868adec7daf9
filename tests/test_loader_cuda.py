"""The loader's CUDA path on a real device: exact batches through the pinned staging ring
and the side stream, GPU memory inside what was charged, stream ordering under a slow
consumer, and training on the device. Every test here needs CUDA (the CPU side of the
same logic is tested in tests/tiers/test_staging.py and tests/test_loader.py)."""

import numpy as np
import pytest
import torch

from oocstore import Store
from oocstore.budget import MemoryBudget
from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.loader import NodeLoader
from oocstore.pack import PackOptions, pack_plan
from oocstore.samplers import sample_plan

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (torch.cuda.is_available() is False here)"),
]

ROW_BYTES = 16 * 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader-cuda") / "s"
    build_store(path, synthetic_source(SyntheticSpec(nodes=6000, feat_dim=16, avg_degree=8)))
    s = Store(path, readonly=False)
    sample_plan(s, fanouts="5,5", batch_size=256, epochs=2, seed=0)
    for policy in ("static", "belady"):
        pack_plan(s, name=policy, options=PackOptions(
            gpu_cache=800 * ROW_BYTES, cpu_cache=1200 * ROW_BYTES, max_disk_blowup=64,
            policy=policy))
    pack_plan(s, name="nogpu", options=PackOptions(cpu_cache=1200 * ROW_BYTES,
                                                   max_disk_blowup=64))
    yield s
    s.close()


@pytest.fixture(scope="module")
def oracle(store):
    return np.array(store.array("features")), np.array(store.array("labels")).astype(np.int64)


def _fresh_peak() -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


@pytest.mark.parametrize("pack", ["static", "belady", "nogpu"])
@pytest.mark.parametrize("prefetch", [None, 0])
def test_cuda_batches_equal_the_cpu_oracle(store, oracle, pack, prefetch):
    feats, labels = oracle
    with NodeLoader(store, pack=pack, device="cuda", prefetch=prefetch) as loader:
        assert loader._stream != torch.cuda.current_stream()
        n = 0
        for epoch in range(2):
            loader.set_epoch(epoch)
            for b in loader:
                assert b.x.is_cuda and b.y.is_cuda
                assert torch.equal(b.x.cpu(), torch.from_numpy(feats[b.input_nodes]))
                assert torch.equal(b.y.cpu(), torch.from_numpy(labels[b.seeds]))
                n += 1
        st = loader.stats()
        assert st["staging"]["acquires"] == n == st["batches"]
        if pack != "nogpu":
            assert st["tiers"]["gpu"]["hits"] > 0


def _delay():
    """Keep the current stream busy for a while (the consumer's kernels lag behind)."""
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(2_000_000)
    else:
        a = torch.ones(512, 512, device="cuda")
        for _ in range(20):
            a = a @ a / 512


def test_stream_ordering_holds_with_a_slow_consumer(store, oracle):
    """The consumer's stream lags far behind the loader's copies and drops each batch at
    once: without the event wait and ``record_stream``, later copies would overwrite
    rows the consumer's kernels have not read yet."""
    feats, _ = oracle
    sums, want = [], []
    with NodeLoader(store, pack="static", device="cuda", prefetch=4) as loader:
        for b in loader:
            _delay()
            sums.append(b.x.double().sum(0))
            want.append(feats[b.input_nodes].astype(np.float64).sum(0))
            del b
    got = torch.stack(sums).cpu().numpy()
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-9, atol=1e-9)


def test_train_on_cuda_matches_the_cpu_run(tmp_path, capsys):
    """`oocstore train --device cuda` out of core, with a GPU cache and a GPU budget,
    against the same run on the CPU. Dropout draws from another generator on the device,
    so the runs are not bitwise equal: both learn, and land within the spread that seeds
    give on this tiny graph (about 5 points)."""
    import json

    from oocstore.cli import main

    path = str(tmp_path / "s")
    assert main(["ingest", "synthetic", path, "--nodes", "3000", "--feat-dim", "16",
                 "--avg-degree", "8", "--quiet"]) == 0
    assert main(["sample", path, "--fanouts", "5,5", "--batch-size", "256", "--epochs", "2",
                 "--quiet"]) == 0
    assert main(["pack", path, "--cpu-cache", "16KiB", "--gpu-cache", "32KiB",
                 "--max-disk-blowup", "32", "--quiet"]) == 0
    runs = {}
    for device in ("cpu", "cuda"):
        assert main(["train", path, "--epochs", "3", "--hidden", "32", "--device", device,
                     "--cpu-budget", "8MiB", "--gpu-budget", "64MiB", "--json", "--quiet"]) == 0
        runs[device] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    gpu = runs["cuda"]
    assert gpu["device"] == "cuda" and gpu["peak_gpu_bytes"] > 0
    assert all(np.isfinite(e["loss"]) for e in gpu["epochs"])
    assert gpu["test_acc"] > 0.6 and abs(gpu["test_acc"] - runs["cpu"]["test_acc"]) <= 0.08


@pytest.mark.parametrize("pack", ["static", "nogpu"])
@pytest.mark.parametrize("prefetch", [None, 1, 0])
def test_cuda_peak_memory_stays_inside_the_gpu_charges(store, pack, prefetch):
    base = _fresh_peak()
    with NodeLoader(store, pack=pack, device="cuda", prefetch=prefetch) as loader:
        charged = loader.accountant.charged("gpu")
        for epoch in range(2):
            loader.set_epoch(epoch)
            for b in loader:
                b.x.cpu()  # the training loop holds the batch while the next ones arrive
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    assert 0 < peak <= charged, f"peak {peak} B > charged {charged} B ({pack}, {prefetch})"


def test_a_tight_gpu_budget_is_honoured(store):
    with NodeLoader(store, pack="static", device="cuda", prefetch=1) as probe:
        need = probe.accountant.charged("gpu")
    base = _fresh_peak()
    with NodeLoader(store, pack="static", device="cuda", budget=MemoryBudget(gpu=need)) as loader:
        assert loader.prefetch == 1
        for b in loader:
            b.x.cpu()
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - base <= need


def test_the_staging_ring_is_page_locked(store):
    """cudaHostRegister worked (else the ring falls back to pageable memory: the same
    results, slower copies; bench/gpu_loader_check.py's h2d part shows the bandwidth).
    Last in this file, so that -x runs everything else first."""
    with NodeLoader(store, pack="static", device="cuda") as loader:
        assert loader._ring.pinned, "cudaHostRegister failed: the staging ring is pageable"
