"""Test accuracy of ``oocstore train --model sage|gcn|gat`` on DBLP (GraphData npz), same
plan, epochs, seed and budget for each model.

    nice python bench/models_dblp.py [--work DIR] [--epochs 5] [--hidden 128] [--seeds 0,1,2]

Ingests ``../shared/data/graphdata/dblp.npz`` (beside the checkout) into ``DIR/dblp``
once, samples one plan (fanouts 10,5, batch 1024) and packs it, then trains each model
out of core through the CLI (``--json``) for each model seed (the plan is the same for
all) and prints the JSON lines plus a Markdown table (per seed, and mean and spread).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DBLP = REPO.parent / "shared" / "data" / "graphdata" / "dblp.npz"


def oocstore(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "oocstore", *args], cwd=REPO, check=True,
                         capture_output=True, text=True)
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/models_bench")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--cpu-budget", default="256MiB")
    ap.add_argument("--seeds", default="0", help="model seeds, comma-separated")
    args = ap.parse_args()
    if not DBLP.exists():
        sys.exit(f"{DBLP} is absent: this benchmark needs the shared data folder beside the "
                 "checkout")
    store = Path(args.work) / "dblp"
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        oocstore("ingest", "npz", str(DBLP), str(store), "--trust-pickle", "--quiet")
        oocstore("sample", str(store), "--fanouts", "10,5", "--batch-size", "1024",
                 "--epochs", "1", "--quiet")
        oocstore("pack", str(store), "--quiet")
    rows = []
    seeds = [int(v) for v in args.seeds.split(",")]
    for seed in seeds:
        for model in ("sage", "gcn", "gat"):
            t0 = time.perf_counter()
            line = oocstore("train", str(store), "--model", model, "--epochs", str(args.epochs),
                            "--hidden", str(args.hidden), "--cpu-budget", args.cpu_budget,
                            "--seed", str(seed), "--json", "--quiet").strip().splitlines()[-1]
            s = json.loads(line)
            rows.append((model, seed, s["val_acc"], s["test_acc"], time.perf_counter() - t0,
                         sum(e["time_s"] for e in s["epochs"]) / len(s["epochs"])))
            print(json.dumps({"model": model, "seed": seed, "val_acc": s["val_acc"],
                              "test_acc": s["test_acc"], "epochs": s["epochs"]}), flush=True)
    print("\n| model | seed | val acc | test acc | s/epoch (train) | wall s (incl. eval) |")
    print("|---|---|---|---|---|---|")
    for model, seed, val, test, wall, per_epoch in rows:
        print(f"| {model} | {seed} | {val:.4f} | {test:.4f} | {per_epoch:.1f} | {wall:.0f} |")
    print("\n| model | test acc, mean ± std over seeds " + ",".join(map(str, seeds)) + " |")
    print("|---|---|")
    for model in ("sage", "gcn", "gat"):
        accs = [r[3] for r in rows if r[0] == model]
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / max(len(accs) - 1, 1)) ** 0.5
        print(f"| {model} | {mean:.4f} ± {std:.4f} |")


if __name__ == "__main__":
    main()
