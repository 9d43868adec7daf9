"""Data-parallel scaling: W ranks x B/W seeds per batch vs 1 process x B, same data.

For each world size W (default 1 and 2) a training plan is sampled with
``--world-size W`` and ``--batch-size B/W`` (the same total batch, the DDP convention),
and ``oocstore train`` runs under ``torchrun --standalone --nproc-per-node W`` (gloo on
CPU). Reported per W: test and validation accuracy (reduced over the ranks), and
training samples/s (seeds of all ranks / the slowest rank's epoch time, median over the
epochs after the first, which is warm-up). Ratios are against W = 1 measured in the
same run: ``samples_per_s_ratio`` and ``test_acc_diff``.

Threads: the machine's cores are divided among the ranks (``OMP_NUM_THREADS`` = cores /
W), so W = 1 is one process using every core, the honest baseline: on a machine with
few cores, data parallelism adds processes, not compute.

Features: ``--in-memory`` (the default for the real data) holds them in each rank's RAM,
so the comparison measures sharding and DDP rather than the disk; ``--out-of-core``
packs every shard (CPU cache ``--cpu-cache-frac`` of the feature bytes per rank) and
reads through the loader. coauthor_cs's batches touch most of the graph (18k nodes,
6,805-dimensional features), which makes packing it pointless.

    python bench/distributed_scaling.py                       # coauthor_cs, W = 1, 2
    python bench/distributed_scaling.py --toy --out /tmp/t.json

Results: ``--out`` (default ``bench/results/distributed_scaling.json``; ``--toy`` writes
only where ``--out`` says), plus a PNG beside it, and one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "graphdata"
DEFAULT_OUT = REPO / "bench" / "results" / "distributed_scaling.json"

#: coauthor_cs settings: those of bench/plan_epochs_accuracy.py (it plateaus within a
#: few epochs), with the total batch of the comparison the issue asks for.
REAL = dict(dataset="coauthor_cs", epochs=6, hidden=64, lr=0.005, fanouts="10,5",
            batch_size=1024, plan_epochs=4)
TOY = dict(dataset="toy", epochs=2, hidden=16, lr=0.01, fanouts="4,3", batch_size=256,
           plan_epochs=2)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_store(work: Path, dataset: str) -> Path:
    from oocstore.ingest import build_store

    path = work / dataset
    if (path / "catalog.lmdb").is_dir():
        return path
    work.mkdir(parents=True, exist_ok=True)
    if dataset == "toy":
        from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source

        source = synthetic_source(SyntheticSpec(nodes=2000, feat_dim=16, avg_degree=6, seed=0))
    else:
        from oocstore.ingest.npz import npz_source

        src = DATA / f"{dataset}.npz"
        if not src.exists():
            raise SystemExit(f"{src} is missing: run with --toy, or put the GraphData archive "
                             "there")
        source = npz_source(src, trust_pickle=True)
    log(f"ingesting {dataset} into {path} ...")
    return build_store(path, source, split_fractions=(0.6, 0.2, 0.2), seed=0)


def prepare_plan(store: Path, world: int, cfg: dict, seed: int, out_of_core: bool,
                 cpu_cache_frac: float) -> str:
    from oocstore.pack import PackOptions, pack_plan
    from oocstore.plan import list_plans
    from oocstore.store import Store
    from oocstore.samplers.neighbor import sample_plan

    name = f"bench-w{world}-s{seed}"
    with Store(store, readonly=False) as s:
        fresh = not any(m.shard_group == name or n == name for n, m in list_plans(s).items())
        if fresh:
            sample_plan(s, fanouts=cfg["fanouts"], batch_size=cfg["batch_size"] // world,
                        epochs=cfg["plan_epochs"], seed=seed, name=name, world_size=world)
        if out_of_core:
            from oocstore.distributed import plans_to_pack
            from oocstore.tiers.reader import list_packs

            cache = int(cpu_cache_frac * s.array_meta("features").nbytes)
            have = {p.plan for p in list_packs(s).values()}
            for plan in plans_to_pack(s, name):
                if fresh or plan not in have:
                    pack_plan(s, plan, options=PackOptions(cpu_cache=cache), overwrite=True)
    return name


def train_in_process(store: Path, plan: str, cfg: dict, seed: int, out_of_core: bool,
                     threads: int) -> dict:
    """The W = 1 run in this process (what ``oocstore train`` would print): samples/s
    comes from the epoch times inside training either way, so only start-up differs."""
    import torch

    from oocstore.train.run import TrainConfig, run_training

    torch.set_num_threads(threads)
    return run_training(store, plan, TrainConfig(epochs=cfg["epochs"], hidden=cfg["hidden"],
                                                 lr=cfg["lr"], seed=seed,
                                                 in_memory=not out_of_core))


def run_world(store: Path, plan: str, world: int, cfg: dict, seed: int, out_of_core: bool,
              timeout: float, in_process: bool = False) -> dict:
    """``oocstore train`` under torchrun with ``world`` ranks; its JSON summary."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // world)
    t0 = time.perf_counter()
    if in_process:
        return _row(train_in_process(store, plan, cfg, seed, out_of_core, threads), world, cfg,
                    seed, threads, t0)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads),
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(world), "-m", "oocstore", "train", str(store), "--plan", plan, "--epochs",
           str(cfg["epochs"]), "--hidden", str(cfg["hidden"]), "--lr", str(cfg["lr"]),
           "--seed", str(seed), "--json", "--quiet"]
    if not out_of_core:
        cmd.append("--in-memory")
    log(f"W={world}: {' '.join(cmd[2:])}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"W={world} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return _row(json.loads(proc.stdout.strip().splitlines()[-1]), world, cfg, seed, threads, t0)


def _row(summary: dict, world: int, cfg: dict, seed: int, threads: int, t0: float) -> dict:
    epochs = summary["epochs"]
    steady = epochs[1:] or epochs  # the first epoch warms up (numba, allocator, page cache)
    return {
        "world_size": world, "seed": seed, "threads_per_rank": threads,
        "batch_per_rank": cfg["batch_size"] // world, "total_batch": cfg["batch_size"],
        "test_acc": summary["test_acc"], "val_acc": summary["val_acc"],
        "samples_per_s": statistics.median(e["samples_per_s"] for e in steady),
        "epoch_s": statistics.median(e["time_s"] for e in steady),
        "seeds_per_epoch": epochs[0]["seeds"], "loss": [e["loss"] for e in epochs],
        "peak_rss_bytes": summary["peak_rss_bytes"], "wall_s": time.perf_counter() - t0,
    }


def summarize(runs: list[dict], worlds: list[int]) -> dict:
    by = {w: [r for r in runs if r["world_size"] == w] for w in worlds}
    means = {w: {"test_acc": statistics.fmean(r["test_acc"] for r in rs),
                 "samples_per_s": statistics.fmean(r["samples_per_s"] for r in rs)}
             for w, rs in by.items() if rs}
    base = means.get(1)
    out = {"mean": {str(w): m for w, m in means.items()}}
    if base:
        out["ratios"] = {str(w): {"samples_per_s_ratio": m["samples_per_s"] / base["samples_per_s"],
                                  "test_acc_diff": m["test_acc"] - base["test_acc"]}
                         for w, m in means.items() if w != 1}
    return out


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    means = result["summary"]["mean"]
    worlds = sorted(means, key=int)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    a.bar(worlds, [means[w]["samples_per_s"] for w in worlds])
    a.set(xlabel="ranks (processes)", ylabel="training samples/s", title="throughput")
    b.bar(worlds, [means[w]["test_acc"] for w in worlds])
    b.set(xlabel="ranks (processes)", ylabel="test accuracy", title="accuracy", ylim=(0, 1))
    fig.suptitle(f"{result['dataset']}: total batch {result['config']['batch_size']}, "
                 f"{result['machine']['cpus']} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", action="store_true", help="a tiny synthetic graph (the test)")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "data" / "distributed")
    p.add_argument("--world-sizes", default="1,2")
    p.add_argument("--seeds", default="0", help="comma-separated run seeds")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out-of-core", action="store_true",
                   help="pack every shard and train through the loader")
    p.add_argument("--cpu-cache-frac", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--baseline-in-process", action="store_true",
                   help="run W = 1 in this process instead of under torchrun (saves a start-up)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    cfg = dict(TOY if args.toy else REAL)
    if args.epochs:
        cfg["epochs"] = args.epochs
    worlds = [int(w) for w in args.world_sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    store = prepare_store(args.work, cfg["dataset"])
    runs = []
    for seed in seeds:
        for w in worlds:
            plan = prepare_plan(store, w, cfg, seed, args.out_of_core, args.cpu_cache_frac)
            runs.append(run_world(store, plan, w, cfg, seed, args.out_of_core, args.timeout,
                                  in_process=w == 1 and args.baseline_in_process))
            log(json.dumps(runs[-1]))
    result = {
        "bench": "distributed_scaling", "dataset": cfg["dataset"], "config": cfg,
        "features": "out of core" if args.out_of_core else "in memory",
        "backend": "gloo (CPU)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_at_end": os.getloadavg()},
        "baseline": "in process" if args.baseline_in_process else "torchrun, 1 process",
        "runs": runs, "summary": summarize(runs, worlds),
    }
    out = args.out if (args.out or args.toy) else DEFAULT_OUT
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        plot(result, out.with_suffix(".png"))
    print(json.dumps({"bench": "distributed_scaling", **result["summary"]}))
    return result


if __name__ == "__main__":
    main()
