"""A user's first hour under a CPU budget: `plan-budget`'s suggestion, trained with the
README's commands, out of core vs in memory.

Per dataset (the real GraphData archives in ``../shared/data/graphdata``) and budget
fraction of the feature bytes: a fresh copy of the ingested store, then exactly what a
user runs —

    oocstore plan-budget STORE --cpu-budget B      # the suggestion and its commands
    oocstore sample STORE --fanouts F --batch-size S --epochs 4
    oocstore pack STORE --plan train --cpu-budget B
    oocstore train STORE --epochs E --cpu-budget B --json
    oocstore train STORE --epochs E --in-memory --json

— each command as printed by ``plan-budget`` (no resizing by hand). The two ``train``
runs alternate ``--rounds`` times, so a shared machine's load falls on both alike;
reported per run: epoch times (the first epoch of each run, with its one-off start-up,
apart), bytes read, the loader's hit rates and prefetch depth, peak RSS, validation and
test accuracy. The headline is the ratio of the median steady epoch out of core to in
memory. ``--also F:S`` adds a fixed plan (e.g. ``10,5:32``) next to the suggestion, run
the same way when ``plan-budget`` says it fits.

Results go to ``--out`` (default ``bench/results/first_hour_budget.json``) with the
machine's description (cores, load average before and after: the benchmark machines are
shared). ``--toy`` runs a tiny synthetic graph (the test that keeps the script alive).

    python bench/first_hour_budget.py                             # dblp, flickr; 25 %, 10 %
    python bench/first_hour_budget.py --datasets dblp --also 10,5:32 --rounds 3
    # the issue's figure alone (dblp, 25 %, fanouts 10,5, 32 seeds): prints the ratio
    python bench/first_hour_budget.py --datasets dblp --fractions 0.25 --also 10,5:32 \
        --no-suggested --epochs 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import SHARED_DATA, machine_info, pick_datasets  # noqa: E402

DATASETS = {"dblp": "dblp.npz", "flickr": "flickr.npz"}
DEFAULT_OUT = REPO / "bench" / "results" / "first_hour_budget.json"
LAST_CPU = [0.0]  # CPU seconds of the last command run by oocstore()


def oocstore(*argv: str, json_out: bool = False, timeout: float | None = None):
    """Run ``python -m oocstore ARGV`` from the repository; the parsed last JSON line, or
    the stdout lines. Raises with the stderr tail on failure."""
    cmd = [sys.executable, "-m", "oocstore", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the command (all its threads): steadier than wall time on a
    # shared machine, whose load changes the wall time of the same work many-fold.
    LAST_CPU[0] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if r.returncode not in (0, 1) or (r.returncode == 1 and argv[0] != "plan-budget"):
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr[-3000:]}")
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    return (json.loads(lines[-1]) if json_out else lines), wall, r.returncode


def budget_arg(nbytes: int) -> str:
    from oocstore.pack.fit import size_arg

    return size_arg(nbytes // 1024 * 1024)


def run_plan(store: Path, budget: str, commands: list[list[str]], epochs: int, rounds: int,
             hidden: int | None) -> dict:
    """The suggested sample / pack / train commands, then in-memory and out-of-core
    training alternately."""
    steps = {}
    train_cmd = None
    t_first = 0.0
    for argv in commands:
        if argv[0] == "train":
            train_cmd = argv
            continue
        _, wall, _ = oocstore(*argv, "--quiet")
        steps[argv[0] + "_s"] = round(wall, 2)
        t_first += wall
    assert train_cmd is not None
    i = train_cmd.index("--epochs")
    base = train_cmd[:i + 1] + [str(epochs)] + train_cmd[i + 2:]
    if hidden:
        base += ["--hidden", str(hidden)]
    runs = {"ooc": [], "mem": []}
    mem_cmd = [a for a in base]
    j = mem_cmd.index("--cpu-budget")
    mem_cmd = mem_cmd[:j] + mem_cmd[j + 2:] + ["--in-memory"]
    for r in range(rounds):
        for kind, argv in (("ooc", base), ("mem", mem_cmd)):
            summary, wall, _ = oocstore(*argv, "--json", "--quiet", json_out=True)
            if kind == "ooc" and r == 0:
                t_first += wall
            runs[kind].append({
                "wall_s": round(wall, 2), "cpu_s": round(LAST_CPU[0], 2),
                "epoch_s": [round(e["time_s"], 3) for e in summary["epochs"]],
                "wait_s": [round(e["wait_s"], 3) for e in summary["epochs"]],
                "loss": [e["loss"] for e in summary["epochs"]],
                "val_acc": summary["val_acc"], "test_acc": summary["test_acc"],
                "bytes_read": summary["bytes_read"], "useful_bytes": summary["useful_bytes"],
                "read_amplification": summary["read_amplification"],
                "hit_rate": summary.get("hit_rate"), "prefetch": summary.get("prefetch"),
                "peak_rss_bytes": summary["peak_rss_bytes"],
                "rss_before_training_bytes": summary["rss_before_training_bytes"],
                "loadavg_1min": os.getloadavg()[0]})

    def steady(kind: str) -> list[float]:
        out = []
        for run in runs[kind]:
            out += run["epoch_s"][1:] if len(run["epoch_s"]) > 1 else run["epoch_s"]
        return out

    ooc, mem = steady("ooc"), steady("mem")
    ratio = statistics.median(ooc) / statistics.median(mem)
    # per round: the ratio of the two runs next to each other in time
    paired = [statistics.median(o["epoch_s"][1:] or o["epoch_s"])
              / statistics.median(m["epoch_s"][1:] or m["epoch_s"])
              for o, m in zip(runs["ooc"], runs["mem"])]
    with_pack = {}
    from oocstore import Store

    with Store(store) as s:
        for name, meta in s.items("pack/"):
            with_pack[name[len("pack/"):]] = {
                "cpu_rows": meta["cpu_rows"], "segments": meta["num_segments"],
                "segment_batches": meta["segment_batches"],
                "packed_batches": meta["packed_batches"], "total_batches": meta["total_batches"],
                "blowup": meta["blowup"], "min_working_set_cpu": meta["min_working_set"]["cpu"]}
    cpu = {k: statistics.median([r["cpu_s"] for r in runs[k]]) for k in runs}
    return {"commands": [" ".join(["oocstore", *c]) for c in commands], "steps": steps,
            "run_cpu_s": cpu, "ooc_over_mem_cpu": round(cpu["ooc"] / cpu["mem"], 3),
            "first_model_s": round(t_first, 1), "runs": runs,
            "median_epoch_s": {"ooc": statistics.median(ooc), "mem": statistics.median(mem)},
            "ooc_over_mem": round(ratio, 3), "paired_ratios": [round(p, 3) for p in paired],
            "bytes_read_per_epoch": runs["ooc"][0]["bytes_read"] / epochs,
            "packs": with_pack}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="dblp,flickr")
    ap.add_argument("--fractions", default="0.25,0.10",
                    help="cpu budgets as fractions of the feature bytes")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs per run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating ooc / in-memory runs")
    ap.add_argument("--hidden", type=int, default=None, help="--hidden for train (default: its own)")
    ap.add_argument("--also", action="append", default=[], metavar="F:S",
                    help="a fixed plan (fanouts:batch size) to run beside the suggestion")
    ap.add_argument("--no-suggested", action="store_true",
                    help="run only the --also plans, not plan-budget's suggestion")
    ap.add_argument("--work", default=None, help="directory for the stores (default: a temp dir)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--toy", action="store_true", help="a tiny synthetic graph (for tests)")
    args = ap.parse_args(argv)
    fractions = [float(f) for f in args.fractions.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="first-hour-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"bench": "first_hour_budget", "toy": args.toy, "epochs": args.epochs,
              "rounds": args.rounds, "command": " ".join([Path(sys.argv[0]).name, *(argv or
                                                                                   sys.argv[1:])]),
              "machine_before": machine_info(work), "results": []}
    try:
        result["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                          text=True, cwd=REPO).stdout.strip()
    except OSError:
        result["commit"] = None
    out = Path(args.out) if args.out else (None if args.toy else DEFAULT_OUT)

    def save() -> None:  # after every entry: a long run that is stopped keeps its results
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")

    if args.toy:
        names = ["toy"]
    else:
        names = pick_datasets(args.datasets, DATASETS)
    try:
        for name in names:
            src = work / f"{name}.store"
            if not src.exists():
                if args.toy:
                    oocstore("ingest", "synthetic", str(src), "--nodes", "3000", "--feat-dim",
                             "64", "--avg-degree", "8", "--quiet")
                else:
                    path = SHARED_DATA / "graphdata" / DATASETS[name]
                    if not path.exists():
                        print(f"{name}: {path} is absent, skipped")
                        continue
                    oocstore("ingest", "npz", str(path), str(src), "--trust-pickle", "--quiet")
            from oocstore import Store

            with Store(src) as s:
                fbytes = s.array_meta("features").nbytes
            for frac in fractions:
                budget = budget_arg(int(fbytes * frac))
                plans = ([] if args.no_suggested else [None]) + [a for a in args.also]
                for plan in plans:
                    store = work / f"{name}-{frac:g}-{(plan or 'suggested').replace(',', '_').replace(':', '-')}"
                    if store.exists():
                        shutil.rmtree(store)
                    shutil.copytree(src, store)
                    extra = []
                    if plan:
                        fo, bs = plan.split(":")
                        extra = ["--fanouts", fo, "--batch-sizes", bs]
                    res, _, rc = oocstore("plan-budget", str(store), "--cpu-budget", budget,
                                          *extra, "--json", json_out=True)
                    entry = {"dataset": name, "fraction": frac, "cpu_budget": budget,
                             "feature_bytes": fbytes, "plan": plan or "suggested",
                             "suggestion": res["suggestion"]}
                    if res["suggestion"] is None:
                        entry["skipped"] = "plan-budget: nothing fits"
                        result["results"].append(entry)
                        save()
                        print(f"{name} {frac:.0%} {plan or 'suggested'}: nothing fits")
                        continue
                    from oocstore.pack.fit import format_table

                    commands = [ln.split()[1:] for ln in format_table(res)
                                if ln.startswith("  oocstore ")]
                    entry.update(run_plan(store, budget, commands, args.epochs, args.rounds,
                                          args.hidden))
                    result["results"].append(entry)
                    save()
                    sug = entry["suggestion"]
                    mem_acc = entry["runs"]["mem"][0]["test_acc"]
                    ooc_acc = entry["runs"]["ooc"][0]["test_acc"]
                    print(f"{name} {frac:.0%} ({budget}) fanouts {sug['fanouts']} batch "
                          f"{sug['batch_size']}: epoch ooc {entry['median_epoch_s']['ooc']:.2f} s"
                          f" / in memory {entry['median_epoch_s']['mem']:.2f} s = "
                          f"{entry['ooc_over_mem']:.2f}x (paired {entry['paired_ratios']}); whole run cpu "
                          f"{entry['run_cpu_s']['ooc']:.0f} s / {entry['run_cpu_s']['mem']:.0f} s = "
                          f"{entry['ooc_over_mem_cpu']:.2f}x; "
                          f"{entry['bytes_read_per_epoch'] / 2**20:.0f} MiB read per epoch; "
                          f"test acc ooc {ooc_acc:.3f} / in memory {mem_acc:.3f}; first model "
                          f"{entry['first_model_s']:.0f} s", flush=True)
                    shutil.rmtree(store, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result["machine_after"] = machine_info()
    save()
    print(json.dumps({"bench": "first_hour_budget", "results": [
        {k: e.get(k) for k in ("dataset", "fraction", "plan", "ooc_over_mem", "skipped")}
        for e in result["results"]]}))
    return result


if __name__ == "__main__":
    main()
