"""The CPU budget is a bound on the process's working set, not just on the caches:
reading every batch of a pack keeps the peak RSS under the budget plus the documented
fixed overhead (docs/BUDGETS.md)."""

import json
import subprocess
import sys
import textwrap

import pytest

from oocstore import Store
from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.pack import PackOptions, pack_plan
from samplers import sample_plan

#: The fixed overhead documented in docs/BUDGETS.md (per-batch temporaries such as the
#: tier/slot slices and index arrays, allocator slack).
OVERHEAD = 16 << 20

DRIVER = textwrap.dedent("""
    import json, sys
    from oocstore import Store
    from oocstore.budget import MemoryBudget
    from oocstore.tiers import TieredReader

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    store = Store(sys.argv[1])
    budget = MemoryBudget(cpu=int(sys.argv[2]))
    with TieredReader(store, sys.argv[3], budget=budget) as r:  # warm-up: numba kernels load
        r.read_batch(0, 0)
    base = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS high-water mark to the current RSS
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
