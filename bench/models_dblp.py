"""Test accuracy of ``oocstore train --model sage|gcn|gat`` on DBLP (GraphData npz), same
plan, epochs, seed and budget for each model.

    nice python bench/models_dblp.py [--work DIR] [--epochs 5] [--hidden 128]

Ingests ``../shared/data/graphdata/dblp.npz`` (beside the checkout) into ``DIR/dblp``
once, samples one plan (fanouts 10,5, batch 1024) and packs it, then trains each model
out of core through the CLI (``--json``) and prints a Markdown table plus the JSON lines.
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
    for model in ("sage", "gcn", "gat"):
        t0 = time.perf_counter()
        line = oocstore("train", str(store), "--model", model, "--epochs", str(args.epochs),
                        "--hidden", str(args.hidden), "--cpu-budget", args.cpu_budget,
                        "--seed", "0", "--json", "--quiet").strip().splitlines()[-1]
        s = json.loads(line)
        rows.append((model, s["val_acc"], s["test_acc"], time.perf_counter() - t0,
                     sum(e["time_s"] for e in s["epochs"]) / len(s["epochs"]), s["plan"]))
        print(json.dumps({"model": model, "val_acc": s["val_acc"], "test_acc": s["test_acc"],
                          "epochs": s["epochs"]}), flush=True)
    print(f"\n| model | val acc | test acc | s/epoch (train) | wall s (incl. eval) |")
    print("|---|---|---|---|---|")
    for model, val, test, wall, per_epoch, _ in rows:
        print(f"| {model} | {val:.4f} | {test:.4f} | {per_epoch:.1f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
