"""Accuracy parity: out-of-core training vs the same training with features in RAM.

Drives the ``oocstore`` command line exactly as a user would, per dataset:

1. ``oocstore ingest npz`` (0.6/0.2/0.2 split, seed 0);
2. ``oocstore sample`` two training plans with the same sampler seed: ``train-k4``
   (K = 4 distinct epochs, cycled) and ``train-k1`` (one epoch, replayed reshuffled);
3. ``oocstore pack`` each with a CPU feature cache of 10 % of the feature bytes
   (no GPU tier, default disk-blowup cap), so most rows come from the SSD tier;
4. ``oocstore train --json`` per model seed: out of core through the pack (K = 4 and
   K = 1) and ``--in-memory`` (K = 4, every feature in RAM, same plans and seeds).

Reported: test accuracy per run, the mean and standard deviation over seeds, and the
out-of-core minus in-memory difference (target: within 1 point). Evaluation plans are
created by the first ``train`` run (the training plan's fanouts) and shared by all runs.

Datasets: ``coauthor_cs`` and ``amazon_photo`` from ``../shared/data/graphdata`` (the
script exits with a message when they are absent). ``--toy`` runs a tiny synthetic
graph in seconds (the test that keeps this script alive) and writes nothing unless
``--out`` is given.

    python bench/accuracy_parity.py                       # both datasets, seeds 0,1,2
    python bench/accuracy_parity.py --datasets amazon_photo --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "graphdata"
DEFAULT_OUT = REPO / "bench" / "results" / "accuracy_parity.json"

sys.path.insert(0, str(REPO / "bench"))
from _common import add_dataset_args, pick_datasets  # noqa: E402
from plan_epochs_accuracy import DATASETS as STUDY_SETTINGS  # noqa: E402

#: Per dataset: training epochs, hidden width, learning rate, fanouts and batch size: the
#: settings of ``bench/plan_epochs_accuracy.py`` (minutes per run on 2 CPU cores).
DATASETS = {name: STUDY_SETTINGS[name] for name in ("coauthor_cs", "amazon_photo")}
TOY = dict(epochs=4, hidden=32, lr=0.01, fanouts="5,5", batch_size=128)
CACHE_FRACTION = 0.10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def oocstore(*args: str) -> str:
    """Run one ``oocstore`` command; return its stdout (raise with its stderr on failure)."""
    cmd = [sys.executable, "-m", "oocstore", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def prepare(name: str, cfg: dict, work: Path, toy: bool) -> tuple[Path, int]:
    """Ingest, sample and pack; return the store and the CPU cache size used."""
    store = work / name
    work.mkdir(parents=True, exist_ok=True)
    if toy:
        oocstore("ingest", "synthetic", str(store), "--nodes", "3000", "--feat-dim", "32",
                 "--avg-degree", "8", "--split", "0.6,0.2,0.2", "--seed", "0", "--overwrite",
                 "--quiet")
    else:
        oocstore("ingest", "npz", str(DATA / f"{name}.npz"), str(store), "--trust-pickle",
                 "--split", "0.6,0.2,0.2", "--seed", "0", "--overwrite", "--quiet")
    info = json.loads(oocstore("inspect", str(store), "--json"))
    feature_bytes = int(info["feature_bytes"])
    cache = max(4096, int(CACHE_FRACTION * feature_bytes))
    for k in (4, 1):
        oocstore("sample", str(store), "--fanouts", cfg["fanouts"], "--batch-size",
                 str(cfg["batch_size"]), "--epochs", str(k), "--seed", "0", "--name",
                 f"train-k{k}", "--overwrite", "--quiet")
        oocstore("pack", str(store), "--plan", f"train-k{k}", "--gpu-cache", "0",
                 "--cpu-cache", str(cache), "--overwrite", "--quiet")
    return store, cache


def train(store: Path, cfg: dict, *, plan: str, seed: int, in_memory: bool) -> dict:
    args = ["train", str(store), "--plan", plan, "--epochs", str(cfg["epochs"]), "--hidden",
            str(cfg["hidden"]), "--lr", str(cfg["lr"]), "--seed", str(seed), "--json", "--quiet"]
    if in_memory:
        args.append("--in-memory")
    t0 = time.perf_counter()
    summary = last_json(oocstore(*args))
    return {"plan": plan, "seed": seed, "mode": "in-memory" if in_memory else "out-of-core",
            "test_acc": summary["test_acc"], "val_acc": summary.get("val_acc"),
            "seconds": time.perf_counter() - t0, "summary": summary}


def aggregate(runs: list[dict], plan: str, mode: str) -> dict:
    accs = [r["test_acc"] for r in runs if r["plan"] == plan and r["mode"] == mode]
    return {"plan": plan, "mode": mode, "seeds": len(accs), "test_acc": accs,
            "test_acc_mean": statistics.fmean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0}


def run_dataset(name: str, cfg: dict, work: Path, seeds: list[int], toy: bool) -> dict:
    store, cache = prepare(name, cfg, work, toy)
    runs = []
    for seed in seeds:
        for plan, in_memory in (("train-k4", False), ("train-k4", True), ("train-k1", False)):
            r = train(store, cfg, plan=plan, seed=seed, in_memory=in_memory)
            log(f"  {name} {plan} {r['mode']:<11} seed {seed}: test {100 * r['test_acc']:.2f} % "
                f"({r['seconds']:.0f} s)")
            runs.append(r)
    summary = [aggregate(runs, "train-k4", "out-of-core"), aggregate(runs, "train-k4", "in-memory"),
               aggregate(runs, "train-k1", "out-of-core")]
    ooc, mem = summary[0]["test_acc_mean"], summary[1]["test_acc_mean"]
    per_seed = [a["test_acc"] - b["test_acc"] for a, b in
                zip([r for r in runs if r["plan"] == "train-k4" and r["mode"] == "out-of-core"],
                    [r for r in runs if r["plan"] == "train-k4" and r["mode"] == "in-memory"])]
    return {"dataset": name, "config": {**cfg, "cpu_cache_bytes": cache,
                                        "cpu_cache_fraction": CACHE_FRACTION,
                                        "split": [0.6, 0.2, 0.2]},
            "summary": summary, "ooc_minus_in_memory_points": 100 * (ooc - mem),
            "ooc_minus_in_memory_per_seed_points": [100 * d for d in per_seed],
            "within_one_point": abs(ooc - mem) <= 0.01, "runs": runs}


def table(results: list[dict]) -> str:
    lines = ["dataset        plan      mode         test acc (mean ± std, seeds)",
             "-------------  --------  -----------  ----------------------------"]
    for res in results:
        for row in res["summary"]:
            lines.append(f"{res['dataset']:<13}  {row['plan']:<8}  {row['mode']:<11}  "
                         f"{100 * row['test_acc_mean']:6.2f} ± {100 * row['test_acc_std']:4.2f} % "
                         f"({row['seeds']})")
        verdict = "within 1 point" if res["within_one_point"] else "NOT within 1 point"
        lines.append(f"{'':<13}  out-of-core − in-memory: "
                     f"{res['ooc_minus_in_memory_points']:+.2f} points ({verdict})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_args(p, DATASETS)
    p.add_argument("--seeds", default="0,1,2", help="model seeds (default 0,1,2)")
    p.add_argument("--work", default=None, help="folder for the stores (default: a temp dir)")
    p.add_argument("--out", default=None, help=f"results JSON (default {DEFAULT_OUT}; "
                                                "--toy writes only when given)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.toy:
        configs = {"toy-synthetic": dict(TOY)}
    else:
        names = pick_datasets(args.datasets, DATASETS)
        if not DATA.is_dir():
            raise SystemExit(f"{DATA} is absent: these datasets come with ../shared/data")
        configs = {n: DATASETS[n] for n in names}
    with tempfile.TemporaryDirectory(prefix="oocstore-parity-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        results = [run_dataset(n, cfg, work, seeds, args.toy) for n, cfg in configs.items()]
    print(table(results))
    doc = {"bench": "accuracy_parity", "toy": args.toy, "seeds": seeds,
           "command": " ".join(["python", "bench/accuracy_parity.py", *(argv or sys.argv[1:])]),
           "datasets": results}
    out = args.out or (None if args.toy else str(DEFAULT_OUT))
    if out:
        Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "datasets"} |
                     {"summary": {r["dataset"]: r["ooc_minus_in_memory_points"] for r in results}}))
    return doc


if __name__ == "__main__":
    main()
