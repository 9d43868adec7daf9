"""A papers100M-shaped synthetic graph inside a memory cgroup: ingest, sample, pack, one
epoch, each stage's time and peak memory.

The shape of ogbn-papers100M (111 M nodes, 128 float32 features, average degree ~15,
~1 % training nodes) at the size the machine allows: ``--nodes`` x ``--feat-dim`` float32
features (20 M x 128 = 10.2 GB by default) and a memory ``--limit`` the features exceed
at least 4 times. Each stage runs as its own process in a cgroup v1 memory cgroup
(``/sys/fs/cgroup/memory/<name>``, ``memory.limit_in_bytes`` = the limit; the page cache
a process fills is charged to it, so the file pages written or read count too), the
user-facing commands where there are some:

1. ``oocstore ingest synthetic`` (R-MAT edges drawn in blocks, CSC built out of core,
   features generated block by block);
2. ``oocstore sample`` (one epoch of the training split, fanouts 10,5);
3. ``oocstore pack --cpu-budget`` (cache sizes chosen by the cost model within the
   training budget, half the limit: the rest is the interpreter, torch and the page
   cache);
4. one epoch: ``NodeLoader`` inside the same budget, one GraphSAGE step per batch
   (this script's ``--epoch-worker``).

Per stage: wall seconds, the cgroup's peak charge (``memory.max_usage_in_bytes``, reset
before the stage: process memory + page cache; at the limit the kernel reclaims clean
page cache, which is not a failure), the process's peak RSS (``ru_maxrss`` of the
stage's process, from ``wait4``; mapped file pages count) and whether the stage was
killed (OOM).
Without root or cgroup v1 the stages run unconfined and the output says so.

    python bench/scale.py                              # 20 M nodes, 2 GiB limit
    python bench/scale.py --nodes 40000000 --limit 4GiB
    python bench/scale.py --quick                      # 50 k nodes, 1 GiB: seconds

Writes ``bench/results/scale.json`` (``--out``); the store goes under ``bench/data/scale``
and is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _memcg  # noqa: E402
from _common import machine_info  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20


def parse_size(text: str) -> int:
    from oocstore.units import parse_size as ps

    return ps(text)


def run_stage(name: str, argv: list[str], cg: _memcg.MemCgroup | None,
              log_dir: Path) -> dict[str, Any]:
    """Run ``argv`` (in ``cg``), return its time, exit, peak charge and peak RSS."""
    if cg is not None:
        cg.drop_cache()
        cg.reset()
    out = open(log_dir / f"{name}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                            preexec_fn=cg.preexec if cg is not None else None,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    out.close()
    text = (log_dir / f"{name}.log").read_text()
    res = {"stage": name, "seconds": seconds, "exit": proc.returncode,
           "peak_rss_bytes": ru.ru_maxrss * 1024, "command": " ".join(argv[2:] if argv[1] == "-m"
                                                                         else argv[1:])}
    if cg is not None:
        res.update(cgroup_peak_bytes=cg.read("memory.max_usage_in_bytes"),
                   memory_failcnt=cg.read("memory.failcnt"))
    if proc.returncode == -signal.SIGKILL:
        res["killed"] = "SIGKILL (the OOM killer: the stage needed more than the limit)"
    elif proc.returncode != 0:
        res["error"] = text.strip().splitlines()[-1][:400] if text.strip() else "no output"
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if lines:
        try:
            res["result"] = json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    return res


# -- the epoch stage (a separate process in the cgroup) ---------------------------------

def epoch_worker(spec: dict) -> None:
    import numpy as np
    import torch

    from oocstore.budget import MemoryBudget
    from oocstore.loader import NodeLoader
    from oocstore.store import Store

    torch.manual_seed(0)
    t0 = time.perf_counter()
    with Store(spec["store"]) as store:
        classes = int(np.asarray(store.array("labels")[:1_000_000]).max()) + 1
        from torch_geometric.nn import SAGEConv

        class Sage(torch.nn.Module):
            def __init__(self, d, h, c):
                super().__init__()
                self.c1, self.c2 = SAGEConv(d, h), SAGEConv(h, c)

            def forward(self, x, blocks):
                (e1, n1), (e2, n2) = blocks
                x = self.c1((x, x[:n1]), e1).relu()
                return self.c2((x, x[:n2]), e2)

        d = store.array_meta("features").shape[1]
        model = Sage(d, spec["hidden"], classes)
        opt = torch.optim.Adam(model.parameters(), lr=0.003)
        loader = NodeLoader(store, spec["plan"], budget=MemoryBudget(cpu=spec["budget"]))
        setup = time.perf_counter() - t0
        t1 = time.perf_counter()
        rows = batches = 0
        loss_sum = 0.0
        for batch in loader:
            blocks = []
            for blk in batch.sample.blocks:
                ei = torch.from_numpy(np.stack([np.asarray(blk.src, np.int64),
                                                np.asarray(blk.dst, np.int64)]))
                blocks.append((ei, int(blk.num_dst)))
            opt.zero_grad()
            out = model(batch.x, blocks)
            loss = torch.nn.functional.cross_entropy(out, batch.y)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            rows += batch.x.shape[0]
            batches += 1
        epoch = time.perf_counter() - t1
        st = loader.stats()
        loader.close()
    print(json.dumps({"batches": batches, "rows": rows, "setup_s": setup, "epoch_s": epoch,
                      "wait_s": st["wait_s"], "bytes_read": st["bytes_read"],
                      "read_amplification": st["read_amplification"],
                      "hit_rate": st["hit_rate"], "prefetch": st["prefetch"],
                      "mean_loss": loss_sum / max(batches, 1),
                      "budget_charged": st["budget"]}, default=float))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=20_000_000)
    p.add_argument("--feat-dim", type=int, default=128)
    p.add_argument("--avg-degree", type=float, default=15.0)
    p.add_argument("--train-frac", type=float, default=0.01, help="training nodes (default 1 %%)")
    p.add_argument("--limit", default="2GiB", help="memory cgroup limit (default 2GiB)")
    p.add_argument("--budget", default=None,
                   help="training cpu budget (default: half the limit)")
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--workdir", default=str(REPO / "bench" / "data" / "scale"))
    p.add_argument("--keep", action="store_true", help="keep the store afterwards")
    p.add_argument("--no-cgroup", action="store_true", help="run the stages unconfined")
    p.add_argument("--stages", default="ingest,sample,pack,epoch")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/scale.json; "
                   "--quick writes none unless given)")
    p.add_argument("--quick", action="store_true", help="50 k nodes x 32, a 1 GiB limit, a 128 MiB "
                   "budget: seconds (for a test; the features are then smaller than the limit)")
    p.add_argument("--epoch-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epoch_worker:
        epoch_worker(json.loads(args.epoch_worker))
        return {}
    if args.quick:
        args.nodes, args.feat_dim, args.limit, args.batch_size = 50_000, 32, "1GiB", 128
        args.budget = args.budget or "128MiB"  # the interpreter and torch take ~0.5 GiB
        args.train_frac = 0.02
    limit = parse_size(args.limit)
    budget = parse_size(args.budget) if args.budget else limit // 2
    feature_bytes = args.nodes * args.feat_dim * 4
    stages = [s for s in args.stages.split(",") if s]
    work = Path(args.workdir)
    store = work / f"papers-{args.nodes}-{args.feat_dim}"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    why = "--no-cgroup" if args.no_cgroup else _memcg.unavailable()
    cg = None if why else _memcg.MemCgroup(f"oocstore-scale-{os.getpid()}", limit)
    py = sys.executable
    oc = [py, "-m", "oocstore"]
    val = min(0.005, (1 - args.train_frac) / 2)
    cmds = {
        "ingest": oc + ["ingest", "synthetic", str(store), "--nodes", str(args.nodes),
                        "--feat-dim", str(args.feat_dim), "--avg-degree", str(args.avg_degree),
                        "--split", f"{args.train_frac},{val},{val}", "--quiet", "--overwrite"],
        "sample": oc + ["sample", str(store), "--fanouts", args.fanouts, "--batch-size",
                        str(args.batch_size), "--epochs", "1", "--name", "train", "--overwrite",
                        "--quiet"],
        "pack": oc + ["pack", str(store), "--plan", "train", "--cpu-budget", str(budget),
                      "--overwrite", "--json", "--quiet"],
        "epoch": [py, str(Path(__file__).resolve()), "--epoch-worker",
                  json.dumps({"store": str(store), "plan": "train", "budget": budget,
                              "hidden": args.hidden})],
    }
    t0 = time.perf_counter()
    machine = machine_info(work)
    results = []
    try:
        for s in stages:
            print(f"[scale] {s} ...", file=sys.stderr, flush=True)
            r = run_stage(s, cmds[s], cg, logs)
            results.append(r)
            if r["exit"] != 0:
                break
    finally:
        if cg is not None:
            cg.remove()
        store_bytes = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) \
            if store.exists() else 0
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
    machine["loadavg_1min_end"] = os.getloadavg()[0]
    result = {"bench": "scale", "quick": args.quick, "nodes": args.nodes,
              "feat_dim": args.feat_dim, "avg_degree": args.avg_degree,
              "train_frac": args.train_frac, "feature_bytes": feature_bytes,
              "limit_bytes": limit, "features_over_limit": feature_bytes / limit,
              "train_budget_bytes": budget, "cgroup": "v1 memory cgroup, page cache charged"
              if cg is not None else f"none ({why})", "store_bytes": store_bytes,
              "stages": results, "seconds": time.perf_counter() - t0, "machine": machine,
              "command": " ".join(["python", "bench/scale.py",
                                   *(argv if argv is not None else sys.argv[1:])])}
    print(f"papers100M-shaped: {args.nodes:,} nodes x {args.feat_dim} f32 = "
          f"{feature_bytes / 1e9:.2f} GB of features, average degree {args.avg_degree:g}, "
          f"{args.train_frac:.1%} training nodes; memory limit {limit / GiB:.2f} GiB "
          f"(features {feature_bytes / limit:.1f}x the limit), training budget "
          f"{budget / GiB:.2f} GiB; cgroup: {result['cgroup']}")
    print(f"  {'stage':8} {'seconds':>9} {'cgroup peak':>12} {'peak RSS':>10}  outcome")
    for r in results:
        outcome = r.get("killed") or r.get("error") or "ok"
        peak = f"{r['cgroup_peak_bytes'] / MiB:,.0f} MiB" if "cgroup_peak_bytes" in r else "-"
        print(f"  {r['stage']:8} {r['seconds']:9.1f} {peak:>12} "
              f"{r['peak_rss_bytes'] / MiB:>6,.0f} MiB  {outcome}")
    ep = next((r.get("result") for r in results if r["stage"] == "epoch"), None)
    if ep:
        print(f"  epoch: {ep['batches']} batches, {ep['epoch_s']:.1f} s (loader set-up "
              f"{ep['setup_s']:.1f} s), waited for data {ep['wait_s']:.1f} s, "
              f"{ep['bytes_read'] / 1e9:.2f} GB read, amplification "
              f"{ep['read_amplification']:.3f}, prefetch {ep['prefetch']}")
    print(f"machine: {machine['cpus']} cpus (shared), 1-min load average "
          f"{machine['loadavg_1min']:.2f} at the start, {machine['loadavg_1min_end']:.2f} at the "
          f"end; {result['seconds']:.0f} s in all")
    out = Path(args.out) if args.out else (None if args.quick else
                                           REPO / "bench" / "results" / "scale.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()
