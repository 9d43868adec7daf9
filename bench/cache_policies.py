"""Hit rates of the CPU-tier policies (static, Belady, S3-FIFO, SIEVE) on the same trace.

The trace is the exact sequence of feature-row accesses training will make: the input
nodes of every batch of every epoch of a plan, concatenated in plan order. At each cache
size (a fraction of the nodes) two policies serve it:

* **static** (what ``oocstore pack`` builds): the ``k`` rows with the highest plan access
  counts, loaded once before training and never changed (:func:`static_placement`,
  :func:`static_hits`). It has no compulsory misses: its fill is one sequential read.
* **Belady** (the best any dynamic cache of ``k`` rows can do, as Ginex simulates it):
  evict the row used furthest in the future, do not admit a row used later than all
  cached ones (:func:`belady_misses`). Its misses include the first touch of every row
  it ever holds (the cache starts empty).

Then every policy of the registry (:data:`oocstore.pack.policies.POLICIES`) as the
packer stores it: the tier starts every epoch holding the static top-``k`` rows; static
keeps them, Belady / S3-FIFO / SIEVE are simulated per epoch over the plan
(:meth:`CachePolicy.schedule`, hits decided when a batch starts, misses admitted after
it). Per policy: hit rate, admissions, and the bytes read per epoch -- the rows no memory
tier serves (``misses x row bytes``, before segment de-duplication and 4 KiB widening)
plus the tier's fill (once for static, every epoch for a policy that restarts).

Also shown: the compulsory floor (hit rate of an infinite cache that starts empty:
``1 - unique / accesses``) and the gap ``Belady - static`` -- the share of accesses a
dynamic tier could at most move off the SSD. Nothing is timed here, so the numbers do
not depend on machine noise (only the Belady simulation time is printed, for scale).

Prints a table, then one JSON line; writes ``bench/results/cache_policies.json`` and a
PNG plot of hit rate vs cache size. ``--toy`` runs at test size in seconds.

    python bench/cache_policies.py                     # 1 M-node R-MAT graph, 3 epochs
    python bench/cache_policies.py --store PATH --plan train
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from _common import add_result_args, result_path  # noqa: E402
from oocstore.pack.placement import belady_misses, static_hits, static_placement  # noqa: E402
from oocstore.pack.policies import POLICIES  # noqa: E402
from oocstore.plan import PlanReader  # noqa: E402
from oocstore.store import Store  # noqa: E402


def make_store(path: Path, *, nodes: int, avg_degree: float, feat_dim: int) -> Path:
    """A synthetic R-MAT store (default skew), built once and reused from ``path``."""
    from oocstore.ingest import build_store
    from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source

    if not (path / "catalog.lmdb").is_dir():
        print(f"generating {path} ({nodes:,} nodes, avg degree {avg_degree:g}) ...", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = SyntheticSpec(nodes=nodes, avg_degree=avg_degree, feat_dim=feat_dim)
        build_store(path, synthetic_source(spec), overwrite=True)
    return path


def access_trace(plan: PlanReader) -> np.ndarray:
    """Input nodes of every batch of every epoch, in plan order (int64)."""
    index = np.asarray(plan.index())
    total = int(index[:, 3].sum())
    trace = np.empty(total, dtype=np.int64)
    data = plan.records  # memory map of the records (read-only)
    p = 0
    for off, k in zip(index[:, 0].tolist(), index[:, 3].tolist()):
        trace[p:p + k] = data[off:off + k]
        p += k
    return trace


def compare(trace: np.ndarray, counts: np.ndarray, num_nodes: int, fractions: list[float]
            ) -> list[dict]:
    n_acc = int(trace.size)
    unique = int(np.count_nonzero(counts))
    rows = []
    for frac in fractions:
        k = max(1, int(round(frac * num_nodes)))
        _, cpu_ids = static_placement(counts, 0, k)
        s_hits = static_hits(trace, cpu_ids, num_nodes)
        t0 = time.perf_counter()
        b_miss = belady_misses(trace, num_nodes, k)
        b_sec = time.perf_counter() - t0
        s_miss = n_acc - s_hits
        rows.append({
            "fraction": frac, "cache_rows": k,
            "static_hit_rate": s_hits / n_acc, "belady_hit_rate": 1 - b_miss / n_acc,
            "static_misses": s_miss, "belady_misses": b_miss,
            "gap": (s_miss - b_miss) / n_acc,  # share of accesses a dynamic tier could win
            "misses_saved_vs_static": (s_miss - b_miss) / s_miss if s_miss else 0.0,
            "compulsory_floor_hit_rate": 1 - unique / n_acc,
            "belady_seconds": b_sec,
        })
    return rows


def compare_policies(plan: PlanReader, trace: np.ndarray, counts: np.ndarray, k: int,
                     row_bytes: int) -> dict[str, dict]:
    """Every registry policy as the pack stores it (CPU tier of ``k`` rows, no GPU tier):
    hit rate, admissions and bytes read per epoch."""
    index = np.asarray(plan.index())
    offs, ninput = np.ascontiguousarray(index[:, 0]), np.ascontiguousarray(index[:, 3])
    epoch_starts = np.concatenate([[0], np.cumsum(plan.meta.batches_per_epoch)]).astype(np.int64)
    node_tier = np.full(plan.meta.num_nodes, 2, dtype=np.int8)  # every row on the SSD tier
    _, cpu_ids = static_placement(counts, 0, k)
    epochs, n_acc = plan.meta.epochs, int(trace.size)
    out = {}
    for name in sorted(POLICIES):
        policy = POLICIES[name]
        t0 = time.perf_counter()
        sched = policy.schedule(plan.records, offs, ninput, epoch_starts, node_tier, k, cpu_ids)
        sec = time.perf_counter() - t0
        hits = static_hits(trace, cpu_ids, plan.meta.num_nodes) if sched is None \
            else int(np.count_nonzero(sched.hit >= 0))
        admissions = 0 if sched is None else int(sched.ins_pos.size)
        fills = epochs if policy.restarts_each_epoch else 1
        out[name] = {"hit_rate": hits / n_acc, "misses": n_acc - hits,
                     "admissions_per_epoch": admissions / epochs,
                     "bytes_read_per_epoch": ((n_acc - hits) + fills * cpu_ids.size)
                     * row_bytes / epochs,
                     "seconds": sec}
        del sched
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [100 * r["fraction"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(x, [100 * r["static_hit_rate"] for r in rows], "o-", label="static top-k (ours)")
    ax.plot(x, [100 * r["belady_hit_rate"] for r in rows], "s-", label="Belady (optimal dynamic)")
    for name, mark in (("belady", "s--"), ("s3fifo", "^-"), ("sieve", "v-")):
        ax.plot(x, [100 * r["policies"][name]["hit_rate"] for r in rows], mark,
                label=f"{name} per epoch from top-k (pack)")
    ax.axhline(100 * rows[0]["compulsory_floor_hit_rate"], ls=":", c="gray",
               label="infinite cache, cold start")
    ax.set_xlabel("cache size (% of nodes)")
    ax.set_ylabel("hit rate (% of row accesses)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", help="existing store with a plan (default: generate one)")
    p.add_argument("--plan", default="cache-policies", help="plan name (sampled if absent)")
    p.add_argument("--data", default=str(REPO / "bench" / "data"))
    p.add_argument("--nodes", type=int, default=1_000_000)
    p.add_argument("--avg-degree", type=float, default=10.0)
    p.add_argument("--feat-dim", type=int, default=128, help="float32 features per row")
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--fractions", default="0.05,0.10,0.25")
    add_result_args(p, "cache_policies")
    args = p.parse_args(argv)
    if args.toy:
        args.nodes, args.avg_degree, args.fanouts, args.batch_size, args.epochs = \
            20_000, 8.0, "5,3", 256, 2
        args.feat_dim = 8
    fractions = [float(f) for f in args.fractions.split(",")]
    out = result_path(args, "cache_policies")
    tmp = None
    if args.store:
        path = Path(args.store)
    elif args.toy:
        tmp = Path(tempfile.mkdtemp(prefix="cachepol-"))
        path = make_store(tmp / "s", nodes=args.nodes, avg_degree=args.avg_degree,
                          feat_dim=args.feat_dim)
    else:
        path = make_store(Path(args.data) / f"cachepol-{args.nodes}-{args.avg_degree:g}"
                                            f"-{args.feat_dim}",
                          nodes=args.nodes, avg_degree=args.avg_degree, feat_dim=args.feat_dim)
    try:
        with Store(path, readonly=False) as store:
            if store.get(f"plan/{args.plan}") is None:
                from oocstore.samplers import sample_plan
                sample_plan(store, fanouts=args.fanouts, batch_size=args.batch_size,
                            epochs=args.epochs, name=args.plan, verify=False)
            plan = PlanReader(store, args.plan)
            n = plan.meta.num_nodes
            t0 = time.perf_counter()
            trace = access_trace(plan)
            counts = np.asarray(plan.access_counts())
            trace_s = time.perf_counter() - t0
            assert int(counts.sum(dtype=np.int64)) == trace.size  # counts are of this trace
            belady_misses(trace[:1000], n, 10)  # warm-up: load/compile the numba kernel
            rows = compare(trace, counts, n, fractions)
            rb = store.array_meta("features").row_bytes
            for r in rows:
                r["policies"] = compare_policies(plan, trace, counts, r["cache_rows"], rb)
            meta = plan.meta
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    res = {"bench": "cache_policies", "toy": args.toy, "nodes": n, "edges": meta.num_edges,
           "fanouts": list(meta.fanouts), "batch_size": meta.batch_size, "epochs": meta.epochs,
           "batches": meta.total_batches, "accesses": int(trace.size),
           "unique_nodes": int(np.count_nonzero(counts)),
           "top1pct_access_share": meta.stats.get("top1pct_access_share"),
           "trace_seconds": trace_s, "rows": rows}
    print(f"R-MAT graph {n:,} nodes, {meta.num_edges:,} edges; plan: fanouts "
          f"{list(meta.fanouts)}, batch {meta.batch_size}, {meta.epochs} epochs, "
          f"{meta.total_batches:,} batches, {trace.size:,} row accesses, "
          f"{res['unique_nodes']:,} distinct rows; top 1 % of nodes get "
          f"{100 * (res['top1pct_access_share'] or 0):.1f} % of accesses")
    print(f"  {'cache':>7} {'rows':>10} {'static':>8} {'Belady':>8} {'gap':>7} "
          f"{'misses saved':>13} {'Belady s':>9}")
    for r in rows:
        print(f"  {100 * r['fraction']:6.1f}% {r['cache_rows']:10,} "
              f"{100 * r['static_hit_rate']:7.1f}% {100 * r['belady_hit_rate']:7.1f}% "
              f"{100 * r['gap']:6.1f}% {100 * r['misses_saved_vs_static']:12.1f}% "
              f"{r['belady_seconds']:9.1f}")
    print(f"  (infinite cache from cold: {100 * rows[0]['compulsory_floor_hit_rate']:.1f} % hits; "
          "gap = share of all accesses a dynamic tier could at most move off the SSD; "
          "misses saved = that share of the static tier's SSD reads)")
    print(f"  per policy, as packed (tier starts every epoch with the static top-k; "
          f"{rb} B rows):")
    print(f"  {'cache':>7} {'policy':>7} {'hit rate':>9} {'admits/epoch':>13} "
          f"{'MB read/epoch':>14} {'vs static':>10} {'sim s':>7}")
    for r in rows:
        static_bytes = r["policies"]["static"]["bytes_read_per_epoch"]
        for name, q in r["policies"].items():
            print(f"  {100 * r['fraction']:6.1f}% {name:>7} {100 * q['hit_rate']:8.1f}% "
                  f"{q['admissions_per_epoch']:13,.0f} {q['bytes_read_per_epoch'] / 1e6:14.1f} "
                  f"{q['bytes_read_per_epoch'] / static_bytes:10.3f} {q['seconds']:7.1f}")
    res["row_bytes"] = rb
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        png = out.with_suffix(".png")
        plot(rows, png, f"{n:,}-node R-MAT, fanouts {args.fanouts}, {meta.epochs} epochs")
        res["plot"] = str(png)
        out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
