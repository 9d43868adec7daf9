"""What the loader itself costs per epoch: wall time and the process's CPU seconds.

On an existing store and pack (``--pack``, default the newest of the train plan), epochs
of ``NodeLoader`` at ``--cpu-budget`` with no model: each batch is taken and dropped, so
the time is the loader's alone. Reported per epoch (the first apart: it loads the tiers
and compiles kernels): wall seconds, user and system CPU seconds of the whole process
(the reading thread, the I/O threads and the kernel's work for the reads: what a
training loop on the same cores competes with), the training loop's wait, bytes read.
``--base-reads`` ``aio,threads`` alternates rounds with the base-array rows read by
native AIO and by the thread pool (``BaseRowTier.use_aio``), so a shared machine's load
falls on both alike; medians over ``--rounds``.

    python bench/loader_cpu.py STORE --cpu-budget 28355KiB --prefetch 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oocstore import Store  # noqa: E402
from oocstore.budget import MemoryBudget  # noqa: E402
from oocstore.loader import NodeLoader  # noqa: E402
from oocstore.tiers import ssd  # noqa: E402


def run(store: Store, args, aio: bool) -> list[dict]:
    init = ssd.BaseRowTier.__init__

    def with_mode(self, *a, **k):
        init(self, *a, **k)
        self.use_aio = aio

    ssd.BaseRowTier.__init__ = with_mode
    try:
        budget = MemoryBudget(cpu=args.cpu_budget)
        with NodeLoader(store, pack=args.pack, budget=budget, prefetch=args.prefetch,
                        **({"io_threads": args.io_threads} if args.io_threads else {})) as loader:
            out = []
            for e in range(args.epochs):
                loader.set_epoch(e)
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                read0 = loader.stats()["bytes_read"]
                req0 = loader.reader.base.stats()["requests"]
                for batch in loader:
                    del batch
                r1, st = resource.getrusage(resource.RUSAGE_SELF), loader.stats()
                out.append({"wall_s": time.perf_counter() - t0,
                            "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                            "wait_s": st["epochs"][-1]["wait_s"],
                            "bytes_read": st["bytes_read"] - read0, "prefetch": loader.prefetch,
                            "base_depth": loader.reader.base.threads,
                            "base_requests": loader.reader.base.stats()["requests"] - req0,
                            "cpu_rows": loader.reader.meta.cpu_rows})
            return out
    finally:
        ssd.BaseRowTier.__init__ = init


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--pack", default=None)
    p.add_argument("--cpu-budget", default=None)
    p.add_argument("--prefetch", type=int, default=None)
    p.add_argument("--io-threads", type=int, default=None,
                   help="the loader's required base-array reads in flight (default: its own)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--base-reads", default="aio,threads")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    modes = args.base_reads.split(",")
    runs: dict[str, list] = {m: [] for m in modes}
    with Store(args.store) as store:
        for _ in range(args.rounds):
            for m in modes:
                runs[m] += run(store, args, m == "aio")[1:]
    result = {"bench": "loader_cpu", "command": " ".join(sys.argv), "store": args.store,
              "cpu_budget": args.cpu_budget, "cpus": os.cpu_count(),
              "loadavg_1min": os.getloadavg()[0], "runs": runs, "median": {}}
    for m, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "user_s", "sys_s",
                                                                  "wait_s", "bytes_read",
                                                                  "base_requests")}
        med["cpu_s"] = statistics.median(r["user_s"] + r["sys_s"] for r in rs)
        med["prefetch"] = rs[0]["prefetch"] if rs else None
        med["base_depth"] = rs[0]["base_depth"] if rs else None
        result["median"][m] = med
        print(f"{m:8} wall {med['wall_s']:.2f} s, cpu {med['cpu_s']:.2f} s (user "
              f"{med['user_s']:.2f}, sys {med['sys_s']:.2f}), wait {med['wait_s']:.2f} s, "
              f"{med['bytes_read'] / 2**20:.0f} MiB read per epoch in {med['base_requests']:.0f} "
              f"base-array requests, prefetch {med['prefetch']}, "
              f"base reads in flight {med['base_depth']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"bench": "loader_cpu", "median": result["median"]}))
    return result


if __name__ == "__main__":
    main()
