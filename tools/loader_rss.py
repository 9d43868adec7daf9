"""How much a ``NodeLoader`` epoch grows the process's resident set, against its budget.

For each case a synthetic store is built (once, under ``--work``), one plan sampled and
packed within the CPU budget (``pack --cpu-budget``), and a fresh process iterates one
epoch of ``NodeLoader`` under that budget: after the libraries and numba's kernels are
loaded, the peak-RSS mark is reset, and the growth of the peak over the resident set at
that point is reported with the bytes the loader charged. Cases:

``fanouts``   small rows (4 float32), fanouts 15,10,5: plan records outweigh the rows
``tiny``      very many tiny batches (batch size 1, fanouts 2): per-batch tables dominate

Usage::

    python tools/loader_rss.py [--case fanouts --case tiny] [--work DIR]

Prints one JSON line per case: budget, charged peak, RSS growth, and whether the budget
was refused up front (then the error).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "fanouts": dict(nodes=200_000, feat_dim=4, avg_degree=20, fanouts="15,10,5",
                    batch_size=512, budget=20 << 20),
    "tiny": dict(nodes=240_000, feat_dim=4, avg_degree=4, fanouts="2", batch_size=1,
                 budget=9 << 20),
}

#: What a measured process starts with: ``status(key)`` reads a size from
#: ``/proc/self/status`` (``VmRSS:``, ``VmHWM:``) and ``reset_peak()`` brings the peak-RSS
#: high-water mark down to the current RSS.
RSS_PROBE = textwrap.dedent("""
    import json, sys

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
""")

#: The measured process: ``STORE BUDGET PLAN PACK``. It holds each batch while the next
#: is read, as a training loop does, and prints one JSON line.
CHILD = RSS_PROBE + textwrap.dedent("""
    from oocstore import Store
    from oocstore.budget import MemoryBudget
    from oocstore.errors import OocError
    from oocstore.loader import NodeLoader

    import numpy as np
    import torch
    from oocstore.tiers.assemble import warm_up

    store = Store(sys.argv[1])
    budget = MemoryBudget(cpu=int(sys.argv[2]))
    # Only the kernels are loaded first: a warm-up loader would leave its freed buffers
    # in malloc's arenas, where the measured loader would reuse them unseen.
    warm_up(np.float32)
    base = status("VmRSS:")
    reset_peak()
    try:
        with NodeLoader(store, sys.argv[3], pack=sys.argv[4], budget=budget) as loader:
            n, held = 0, []
            for batch in loader:
                n += 1
                held = [batch]  # what a training loop holds: the batch it works on
            charged = loader.accountant.peak("cpu")
            prefetch = loader.prefetch
    except OocError as err:
        print(json.dumps({"refused": str(err)}))
        sys.exit(0)
    print(json.dumps({"batches": n, "prefetch": prefetch, "charged": charged,
                      "growth": status("VmHWM:") - base, "base_rss": base,
                      "budget": budget.cpu}))
""")


def measure_loader(path: Path, budget: int, plan: str, pack: str) -> dict:
    """One epoch of ``NodeLoader`` over ``pack`` of ``plan`` in a fresh process under a
    CPU budget of ``budget`` bytes: the loader's charged peak and the peak-RSS growth
    (``growth``), or ``refused`` with the error when the budget is refused up front."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", CHILD, str(path), str(budget), plan, pack],
                       capture_output=True, text=True, env=env, cwd=str(ROOT))
    if p.returncode:
        raise RuntimeError(f"loader RSS child failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def build(work: Path, case: str) -> Path:
    from oocstore import Store
    from oocstore.ingest import build_store
    from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
    from oocstore.pack import PackOptions, pack_plan
    from oocstore.samplers import sample_plan

    c = CASES[case]
    path = work / case
    if (path / "done").exists():
        return path
    build_store(path, synthetic_source(SyntheticSpec(nodes=c["nodes"], feat_dim=c["feat_dim"],
                                                     avg_degree=c["avg_degree"], seed=0)),
                seed=0, overwrite=True)
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts=c["fanouts"], batch_size=c["batch_size"], epochs=1, seed=0,
                    name="p")
        pack_plan(s, "p", name="p", options=PackOptions(max_disk_blowup=4,
                                                        cpu_cache=c["budget"] // 4))
    (path / "done").write_text("")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", choices=sorted(CASES))
    ap.add_argument("--work", type=Path, default=Path("/tmp/oocstore-loader-rss"))
    ap.add_argument("--budget", type=int, default=None, help="bytes (default: the case's)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    args.work.mkdir(parents=True, exist_ok=True)
    for case in args.case or sorted(CASES):
        path = build(args.work, case)
        budget = args.budget or CASES[case]["budget"]
        try:
            out = measure_loader(path, budget, "p", "p")
        except RuntimeError as err:
            print(err, file=sys.stderr)
            return 1
        print(json.dumps({"case": case, "budget": budget, **out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
