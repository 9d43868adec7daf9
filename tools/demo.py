"""The main job, end to end on a generated dataset, out of core:

generate + ingest -> inspect -> verify -> sample -> pack -> train out of core -> train in
memory (the reference) -> compare.

The generated features (2 M nodes x 128 float32 = 1 GB by default) are 4x the CPU budget
given to packing and training (256 MiB), so training really streams from disk. Run it
with ``make demo``; every step is the public CLI, so the output shows exactly what a user
would type and see.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], *, capture: bool = False) -> str:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, text=True,
                         stdout=subprocess.PIPE if capture else None).stdout
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
    return out or ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="demo-data", help="where the demo store is written")
    ap.add_argument("--nodes", type=int, default=2_000_000, help="nodes of the generated graph")
    ap.add_argument("--feat-dim", type=int, default=128, help="feature dimension")
    ap.add_argument("--cpu-budget", default="256MiB", help="CPU budget for pack and train")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs")
    args = ap.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    store = str(work / "synthetic")
    oocstore = [sys.executable, "-m", "oocstore"]
    t0 = time.perf_counter()
    run([*oocstore, "ingest", "synthetic", store, "--nodes", str(args.nodes), "--avg-degree",
         "16", "--feat-dim", str(args.feat_dim), "--classes", "8", "--seed", "0",
         "--split", "0.1,0.02,0.02", "--overwrite", "--quiet"])
    run([*oocstore, "inspect", store])
    run([*oocstore, "verify", store, "--quiet"])
    run([*oocstore, "sample", store, "--fanouts", "5,5", "--batch-size", "1024", "--epochs", "2",
         "--seed", "0", "--quiet"])
    run([*oocstore, "pack", store, "--cpu-budget", args.cpu_budget, "--max-disk-blowup", "5"])
    common = ["--epochs", str(args.epochs), "--hidden", "64", "--lr", "0.01", "--seed", "0"]
    ooc = json.loads(run([*oocstore, "train", store, *common, "--cpu-budget", args.cpu_budget,
                          "--json", "--quiet"], capture=True).strip().splitlines()[-1])
    mem = json.loads(run([*oocstore, "train", store, *common, "--in-memory", "--json", "--quiet"],
                         capture=True).strip().splitlines()[-1])
    feat_gib = args.nodes * args.feat_dim * 4 / 2**30
    print(f"\nfeatures: {feat_gib:.2f} GiB on disk; cpu budget {args.cpu_budget}")
    print(f"test accuracy: out of core {ooc['test_acc']:.4f}   in memory {mem['test_acc']:.4f}   "
          f"(val {ooc['val_acc']:.4f} / {mem['val_acc']:.4f})")
    for e_o, e_m in zip(ooc["epochs"], mem["epochs"]):
        print(f"  epoch {e_o['epoch']}: out of core {e_o['time_s']:.1f} s (waited "
              f"{e_o['wait_s']:.1f} s for data), in memory {e_m['time_s']:.1f} s")
    hits = ", ".join(f"{k} {v:.1%}" for k, v in ooc["hit_rate"].items())
    print(f"loader: read {ooc['bytes_read'] / 2**20:.0f} MiB from disk for "
          f"{ooc['useful_bytes'] / 2**20:.0f} MiB of needed rows (read amplification "
          f"{ooc['read_amplification']:.3f}); hits {hits}; prefetch depth {ooc['prefetch']}")
    print(f"peak RSS: out of core {ooc['peak_rss_bytes'] / 2**20:.0f} MiB, in memory "
          f"{mem['peak_rss_bytes'] / 2**20:.0f} MiB")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s: the store is at {store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
