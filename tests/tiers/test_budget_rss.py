"""The CPU budget is a bound on the process's working set, not just on the caches:
reading every batch of a pack keeps the peak RSS under the budget plus the documented
fixed overhead (docs/BUDGETS.md)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import load_tool
from oocstore import Store
from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.pack import PackOptions, pack_plan
from oocstore.tiers import TieredReader
from oocstore.samplers import sample_plan

REPO = Path(__file__).resolve().parents[2]

#: The fixed overhead documented in docs/BUDGETS.md (per-batch temporaries such as the
#: tier/slot slices and index arrays, allocator slack).
OVERHEAD = 16 << 20


loader_rss = load_tool("loader_rss")  # the measured NodeLoader process, shared with the tool
measure_loader = loader_rss.measure_loader


#: A fresh process reading every batch of a pack with ``TieredReader``: ``STORE BUDGET
#: PACK``; prints its RSS before and peak RSS after, and what the reader charged.
DRIVER = loader_rss.RSS_PROBE + textwrap.dedent("""
    from oocstore import Store
    from oocstore.budget import MemoryBudget
    from oocstore.tiers import TieredReader

    store = Store(sys.argv[1])
    budget = MemoryBudget(cpu=int(sys.argv[2]))
    with TieredReader(store, sys.argv[3], budget=budget) as r:  # warm-up: numba kernels load
        r.read_batch(0, 0)
    base = status("VmRSS:")
    reset_peak()
    with TieredReader(store, sys.argv[3], budget=budget) as r:
        for e in range(r.num_epochs):
            for b in range(r.num_batches(e)):
                x = r.read_batch(e, b)
                del x
        charged = r.accountant.peak("cpu")
        stats = r.stats()
    print(json.dumps({"base": base, "peak": status("VmHWM:"), "charged": charged,
                      "ssd_bytes": stats["bytes_read"]}))
""")


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("rss") / "s"
    # 60k x 256 f32 = 61 MB of features; the plan touches them many times over.
    build_store(path, synthetic_source(SyntheticSpec(nodes=60_000, feat_dim=256, avg_degree=10)))
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="5,5", batch_size=512, epochs=2, seed=0)
        pack_plan(s, name="static", options=PackOptions(cpu_cache=24 << 20, max_disk_blowup=32))
        pack_plan(s, name="belady", options=PackOptions(cpu_cache=24 << 20, max_disk_blowup=32,
                                                        policy="belady"))
        pack_plan(s, name="fallback", options=PackOptions(cpu_cache=24 << 20, max_disk_blowup=0))
        mws = {n: s.get(f"pack/{n}")["min_working_set"]["cpu"] for n in ("static", "belady",
                                                                          "fallback")}
    return path, mws


@pytest.mark.parametrize("pack", ["static", "belady", "fallback"])
def test_peak_rss_stays_within_budget_plus_overhead(big_store, pack):
    path, mws = big_store
    budget = mws[pack] + (4 << 20)
    out = subprocess.run([sys.executable, "-c", DRIVER, str(path), str(budget), pack],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    assert r["charged"] <= budget
    assert r["ssd_bytes"] > 61_000_000  # the epoch really streamed from disk
    assert r["peak"] - r["base"] <= budget + OVERHEAD, r


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory):
    """Small rows and fanouts 15,10,5: each batch's plan record (its edges) is several
    times the size of its feature rows."""
    path = tmp_path_factory.mktemp("rss-wide") / "s"
    build_store(path, synthetic_source(SyntheticSpec(nodes=40_000, feat_dim=4, avg_degree=30)))
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="15,10,5", batch_size=2048, epochs=1, seed=0, name="wide")
        pack_plan(s, "wide", name="wide", options=PackOptions(cpu_cache=64 << 10,
                                                              max_disk_blowup=8))
        mws = s.get("pack/wide")["min_working_set"]["cpu"]
    return path, mws


def test_loader_charges_the_plan_records_it_holds(wide_store):
    """Iterating ``NodeLoader`` grows the peak RSS by at most what it charged plus the
    fixed overhead, even where plan records (not feature rows) dominate."""
    path, mws = wide_store
    budget = max(mws, 1 << 20) * 3
    r = measure_loader(path, budget, "wide", "wide")
    assert r["charged"] <= budget and r["prefetch"] >= 1, r
    assert r["growth"] <= r["charged"] + OVERHEAD, r


def test_reader_charges_its_per_batch_tables(big_store):
    """The plan index and the per-batch / per-segment tables a reader holds for the whole
    run are charged (they grow with the number of batches, not with the budget)."""
    path, _ = big_store
    with Store(path) as store, TieredReader(store, "belady") as r:
        held = (r.plan.index().nbytes + r._pos.nbytes + r._starts.nbytes
                + r.batch_segment.nbytes + r._insert_offsets.nbytes + r.segments.segments.nbytes)
        charges = {c.what: c.nbytes for c in r._charges}
        tables = [v for k, v in charges.items() if k.startswith("plan index and pack tables")]
        assert tables and tables[0] >= held
        assert store.get("pack/belady")["min_working_set"]["tables_bytes"] == tables[0]


# -- `oocstore train` inside a memory cgroup -------------------------------------------------

CGROUP_V1 = Path("/sys/fs/cgroup/memory")

#: What `oocstore train` holds besides the loader's charged buffers and its fixed overhead
#: (docs/BUDGETS.md): the model's parameters and Adam state, one batch's activations and
#: gradients, the training loop's own plan reader — for the small model of this test.
TRAIN_MODEL_OVERHEAD = 64 << 20

#: Modules a `train` process loads before its first batch (the interpreter's share).
IMPORTS = ("import numpy as np, torch, torch_geometric, lmdb; import oocstore.cli, "
           "oocstore.train.run, oocstore.train.model, oocstore.samplers; "
           "from oocstore.tiers.assemble import warm_up; warm_up(np.float32); "
           "from torch_geometric.nn import SAGEConv")


class MemoryCgroup:
    """A cgroup v1 memory group for one child process (removed on exit)."""

    def __init__(self, name: str, limit: int | None):
        self.path = CGROUP_V1 / name
        self.path.mkdir()
        if limit is not None:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            memsw = self.path / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # no escape into swap
                memsw.write_text(str(limit))

    def run(self, argv, **kw) -> subprocess.CompletedProcess:
        procs = str(self.path / "cgroup.procs")

        def enter():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        return subprocess.run(argv, preexec_fn=enter, capture_output=True, text=True, **kw)

    def read(self, name: str) -> int:
        return int((self.path / name).read_text().split()[0])

    def close(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:  # the exiting child may still be charged for a moment
                time.sleep(0.1)

    def __enter__(self) -> "MemoryCgroup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cgroup_unavailable() -> str | None:
    if not (CGROUP_V1 / "cgroup.procs").exists():
        return f"no cgroup v1 memory controller mounted at {CGROUP_V1}"
    if os.geteuid() != 0:
        return "creating a memory cgroup needs root"
    try:
        (CGROUP_V1 / f"oocstore-probe-{os.getpid()}").mkdir()
        (CGROUP_V1 / f"oocstore-probe-{os.getpid()}").rmdir()
    except OSError as err:
        return f"cannot create a memory cgroup under {CGROUP_V1}: {err}"
    return None


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    reason = _cgroup_unavailable()
    if reason:
        pytest.skip(reason)
    path = tmp_path_factory.mktemp("rss-train") / "s"
    build_store(path, synthetic_source(SyntheticSpec(nodes=12_000, feat_dim=64, avg_degree=8)))
    budget = 24 << 20
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="5,5", batch_size=256, epochs=1, seed=0)
        pack_plan(s, options=PackOptions(cpu_budget=budget, cpu_cache=2 << 20,
                                         max_disk_blowup=8))
    # A first run samples and packs the evaluation plans (a write), outside any cgroup.
    subprocess.run([sys.executable, "-m", "oocstore", "train", str(path), "--epochs", "1",
                    "--hidden", "32", "--cpu-budget", str(budget), "--quiet"], check=True,
                   capture_output=True, cwd=REPO)
    return path, budget


def test_train_runs_inside_a_memory_cgroup_of_budget_plus_overhead(train_store):
    """`oocstore train` completes inside a hard memory limit of: what its libraries take
    (measured here, in a cgroup of its own), the CPU budget, the loader's fixed overhead
    and the model's working memory (docs/BUDGETS.md); and the limit is real: half of what
    the libraries alone take kills the same run."""
    path, budget = train_store
    tag = f"oocstore-test-{os.getpid()}"
    with MemoryCgroup(f"{tag}-imports", None) as cg:
        p = cg.run([sys.executable, "-c", IMPORTS], cwd=REPO)
        assert p.returncode == 0, p.stderr
        libraries = cg.read("memory.max_usage_in_bytes")
    argv = [sys.executable, "-m", "oocstore", "train", str(path), "--epochs", "1", "--hidden",
            "32", "--cpu-budget", str(budget), "--json", "--quiet"]
    limit = libraries + budget + OVERHEAD + TRAIN_MODEL_OVERHEAD
    with MemoryCgroup(f"{tag}-train", limit) as cg:
        p = cg.run(argv, cwd=REPO, timeout=600)
        used = cg.read("memory.max_usage_in_bytes")
    assert p.returncode == 0, (p.returncode, limit, p.stderr[-2000:])
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["budget"]["cpu"] == budget and summary["test_acc"] is not None
    assert summary["epochs"][0]["seeds"] > 0
    print(f"train in a cgroup: libraries {libraries >> 20} MiB, limit {limit >> 20} MiB, "
          f"peak usage {used >> 20} MiB")
    with MemoryCgroup(f"{tag}-small", libraries // 2) as cg:
        p = cg.run(argv, cwd=REPO, timeout=600)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-500:])


@pytest.mark.parametrize("pack", ["static", "fallback"])
def test_loader_at_the_packs_floor_runs_at_depth_0_inside_it(big_store, pack):
    """A budget of exactly the pack's recorded minimum (two batches in flight, no
    prefetch) iterates an epoch, charging all of it, and the peak RSS grows by at most
    that plus the fixed overhead: the lower floor is a real bound, not a smaller number."""
    path, mws = big_store
    r = measure_loader(path, mws[pack], "train", pack)
    assert r["prefetch"] == 0 and r["charged"] == mws[pack], r
    assert r["growth"] <= r["charged"] + OVERHEAD, r
