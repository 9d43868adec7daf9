"""Sampled edges per second: our numba sampler vs plain numpy vs DGL's NeighborSampler.

All three sample the same seeds of the same store's graph with the same fanouts, in one
run, interleaved over ``--repeats`` (medians reported; numba compilation and DGL graph
construction are excluded as warm-up). Then the end-to-end ``sample_plan`` (sampling +
writing the plan into the store, fsync and commit) is timed, and plan bytes written per
second are compared with the disk's sequential write speed, measured in the same run by
writing a same-sized file with fsync.

DGL runs in ``.venv-dgl`` (``tools/dgl_env.sh``) as a subprocess; without it the DGL
column is skipped. ``--toy`` runs everything at toy size (the test that keeps it alive).

    python bench/sampler_speed.py                       # 3 M nodes, ~60 M edges
    python bench/sampler_speed.py --store /tmp/big      # an existing store
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from oocstore.store.probe import write_speed as disk_write_speed  # noqa: E402
sys.path.insert(0, str(REPO / "bench"))

from _common import add_graph_args  # noqa: E402
from baselines import numpy_sampler  # noqa: E402

import numba  # noqa: E402

from oocstore.store import Store  # noqa: E402
from oocstore.samplers import sample_batches, sample_plan  # noqa: E402

DGL_PYTHON = REPO / ".venv-dgl" / "bin" / "python"
DGL_STAMP = REPO / ".venv-dgl" / ".dgl-env-stamp"  # written by tools/dgl_env.sh when complete


def get_store(args) -> Path:
    if args.store:
        return Path(args.store)
    from oocstore.ingest import build_store
    from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source

    path = Path(args.data) / f"sampler-{args.nodes}-{args.avg_degree:g}"
    if not (path / "catalog.lmdb").is_dir():
        print(f"generating {path} ({args.nodes:,} nodes, avg degree {args.avg_degree}) ...",
              file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = SyntheticSpec(nodes=args.nodes, avg_degree=args.avg_degree, feat_dim=args.feat_dim)
        build_store(path, synthetic_source(spec), overwrite=True)
    return path


def run_ours(indptr, indices, seeds, fanouts, bs, group) -> tuple[int, float]:
    edges = 0
    t0 = time.perf_counter()
    for g0 in range(0, seeds.size, group * bs):
        for rec, lay in sample_batches(indptr, indices, seeds[g0:g0 + group * bs],
                                       fanouts=fanouts, batch_size=bs, seed=1,
                                       first_batch=g0 // bs):
            edges += int(lay[:, 2].sum())
    return edges, time.perf_counter() - t0


def run_numpy(indptr, indices, seeds, fanouts, bs) -> tuple[int, float]:
    rng = np.random.default_rng(1)
    edges = 0
    t0 = time.perf_counter()
    for b0 in range(0, seeds.size, bs):
        _, layers = numpy_sampler.sample_batch(indptr, indices, seeds[b0:b0 + bs], fanouts, rng)
        edges += sum(int(src.size) for src, *_ in layers)
    return edges, time.perf_counter() - t0


def run_dgl(store: Store, seeds_file: Path, nseeds: int, fanouts, bs, batches, threads):
    if not DGL_STAMP.exists():
        return None

    def spec(name):
        m = store.array_meta(name)
        return {"file": str(store.file_path(m)), "offset": m.offset, "dtype": m.dtype,
                "count": int(np.prod(m.shape))}
    js = json.dumps({"indptr": spec(store.graph.indptr), "indices": spec(store.graph.indices),
                     "seeds": {"file": str(seeds_file), "offset": 0, "dtype": "int64",
                               "count": nseeds}})
    r = subprocess.run([str(DGL_PYTHON), str(REPO / "bench" / "baselines" / "dgl_sampler.py"), js,
                        "--fanouts", ",".join(map(str, fanouts)), "--batch-size", str(bs),
                        "--batches", str(batches), "--threads", str(threads)],
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        print(f"DGL baseline failed:\n{r.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_graph_args(p, nodes=3_000_000, feat_dim=16, avg_degree=20.0, fanouts="15,10,5",
                   batch_size=1024)
    p.add_argument("--batches", type=int, default=60, help="batches per repeat (ours, DGL)")
    p.add_argument("--numpy-batches", type=int, default=10, help="batches per repeat (numpy)")
    p.add_argument("--plan-batches", type=int, default=120, help="batches of the timed plan")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-dgl", action="store_true")
    p.add_argument("--plot", help="write a PNG bar chart here")
    p.add_argument("--toy", action="store_true", help="tiny sizes (for the test)")
    args = p.parse_args(argv)
    if args.toy:
        args.nodes, args.avg_degree, args.fanouts, args.batch_size = 4000, 8.0, "5,3", 128
        args.batches, args.numpy_batches, args.plan_batches, args.repeats = 6, 2, 6, 1
    fanouts = [int(f) for f in args.fanouts.split(",")]
    bs = args.batch_size
    threads = numba.get_num_threads()
    path = get_store(args)
    with Store(path) as store:
        indptr, indices = store.csc()
        indptr, indices = np.asarray(indptr), np.asarray(indices)
        _ = int(indices[::1024].sum()) + int(indptr[::1024].sum())  # touch: warm page cache
        g = store.graph
        train = store.split("train")
        perm = np.random.default_rng(0).permutation(train)
        need = max(args.batches, args.plan_batches) * bs
        seeds = perm[:need]
        seeds_file = path.parent / f".{path.name}-bench-seeds.bin"
        seeds[:args.batches * bs].astype(np.int64).tofile(seeds_file)
        # warm-up: numba (cached) load / compile, numpy first-call costs
        run_ours(indptr, indices, seeds[:bs], fanouts, bs, 1)
        run_numpy(indptr, indices, seeds[:bs], fanouts, bs)
        ours, nump = [], []
        for _ in range(args.repeats):
            e, t = run_ours(indptr, indices, seeds[:args.batches * bs], fanouts, bs, 2 * threads)
            ours.append(e / t)
            e, t = run_numpy(indptr, indices, seeds[:args.numpy_batches * bs], fanouts, bs)
            nump.append(e / t)
        dgl = None
        if not args.no_dgl:
            dgl = run_dgl(store, seeds_file, args.batches * bs, fanouts, bs, args.batches, threads)
        seeds_file.unlink()
    # end to end: sample + write + commit a plan, then the disk's own write speed
    t0 = time.perf_counter()
    meta = sample_plan(path, fanouts=fanouts, batch_size=bs, epochs=1, name="bench-speed",
                       seeds=np.sort(seeds[:args.plan_batches * bs]), overwrite=True, verify=False)
    plan_s = time.perf_counter() - t0
    with Store(path) as store:
        plan_bytes = sum(store.array_meta(a).nbytes for a in meta.arrays.values())
    disk_bps = disk_write_speed(path / "plans", plan_bytes)
    res = {
        "bench": "sampler_speed", "toy": args.toy, "nodes": g.num_nodes, "edges": g.num_edges,
        "fanouts": fanouts, "batch_size": bs, "threads": threads, "cache": "warm (graph in RAM)",
        "ours_edges_per_s": statistics.median(ours),
        "numpy_edges_per_s": statistics.median(nump),
        "dgl_edges_per_s": dgl["edges_per_s"] if dgl else None,
        "dgl_version": dgl["dgl_version"] if dgl else None,
        "plan_edges": meta.stats["total_edges"], "plan_seconds": plan_s,
        "plan_edges_per_s": meta.stats["total_edges"] / plan_s,
        "plan_bytes": plan_bytes, "plan_bytes_per_s": plan_bytes / plan_s,
        "disk_write_bytes_per_s": disk_bps,
    }
    res["ours_vs_numpy"] = res["ours_edges_per_s"] / res["numpy_edges_per_s"]
    res["ours_vs_dgl"] = res["ours_edges_per_s"] / dgl["edges_per_s"] if dgl else None
    res["plan_write_vs_disk"] = res["plan_bytes_per_s"] / disk_bps
    print(f"graph: {g.num_nodes:,} nodes, {g.num_edges:,} edges; fanouts {fanouts}, batch {bs}, "
          f"{threads} thread(s); medians of {args.repeats}")
    print(f"  ours (numba)   {res['ours_edges_per_s'] / 1e6:8.2f} M sampled edges/s")
    print(f"  numpy          {res['numpy_edges_per_s'] / 1e6:8.2f} M edges/s  "
          f"(ours {res['ours_vs_numpy']:.1f}x)")
    if dgl:
        print(f"  DGL {dgl['dgl_version']:<10} {dgl['edges_per_s'] / 1e6:8.2f} M edges/s  "
              f"(ours {res['ours_vs_dgl']:.2f}x)")
    else:
        print("  DGL            skipped (no .venv-dgl: run tools/dgl_env.sh)")
    print(f"  plan end to end: {meta.stats['total_edges'] / plan_s / 1e6:.2f} M edges/s, "
          f"{plan_bytes / plan_s / 1e6:.1f} MB/s written vs disk sequential write "
          f"{disk_bps / 1e6:.1f} MB/s ({res['plan_write_vs_disk']:.2f} of the disk)")
    print(json.dumps(res))
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = ["ours", "numpy"] + (["DGL"] if dgl else [])
        vals = [res["ours_edges_per_s"], res["numpy_edges_per_s"]] + ([dgl["edges_per_s"]] if dgl else [])
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(names, [v / 1e6 for v in vals])
        ax.set_ylabel("M sampled edges/s")
        ax.set_title(f"{g.num_nodes:,} nodes, fanouts {args.fanouts}, {threads} threads")
        fig.tight_layout()
        fig.savefig(args.plot)
    return res


if __name__ == "__main__":
    main()
