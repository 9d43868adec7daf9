"""The main job, end to end on a generated dataset: generate -> ingest -> inspect -> verify.

Run it with ``make demo``. Every step is the public CLI, so the output shows exactly what
a user would type and see.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str]) -> None:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="demo-data", help="where the demo store is written")
    ap.add_argument("--nodes", type=int, default=1_000_000, help="nodes of the generated graph")
    ap.add_argument("--feat-dim", type=int, default=128, help="feature dimension")
    args = ap.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "synthetic"
    oocstore = [sys.executable, "-m", "oocstore"]
    run([*oocstore, "ingest", "synthetic", str(store), "--nodes", str(args.nodes),
         "--avg-degree", "16", "--feat-dim", str(args.feat_dim), "--classes", "8", "--seed", "0",
         "--overwrite"])
    run([*oocstore, "inspect", str(store)])
    run([*oocstore, "verify", str(store)])
    print("\ndemo finished: the store is at", store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
