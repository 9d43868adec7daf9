"""Heterogeneous configuration: out-of-core vs in-memory parity and speed.

A synthetic paper/author/field store (``oocstore.hetero.synthetic``) whose feature bytes
are at least 4x the CPU budget; one training plan, one pack inside the budget, then the
same model trained out of core and in memory for the same epochs. Reports: feature bytes
vs budget, the pack's per-type split, per-type hit rate / bytes read / read
amplification, time per epoch and time waiting for data, the losses and the val/test
accuracies of every run, and the largest difference between each out-of-core model's
weights and the in-memory one's. oocstore reads with ``O_DIRECT`` (segments and rows
alike), so its reads are cold whatever the page cache holds.

    PYTHONPATH=. nice python bench/hetero.py --papers 400000 --cpu-budget 24MiB \
        --max-disk-blowup 16 --out bench/results/hetero_synthetic.json

``--dataset dblp`` (or ``cora_ml``) builds a heterogeneous graph from real data instead
(``../shared/data/graphdata/<name>.npz``): ``paper`` nodes with the dataset's
bag-of-words features, labels and the citation edges (``paper___cites___paper``), and a
derived ``term`` type, one node per vocabulary word and without features, with an edge
``paper___has_term___term`` for every non-zero attribute and its reverse
``term___rev_has_term___paper``. So a two-layer model reads each term as the mean of the
papers that use it, and papers through their terms.

    PYTHONPATH=. nice python bench/hetero.py --dataset dblp --cpu-budget 24MiB \
        --fanouts 2,2 --batch-size 32 --split 0.6,0.2,0.2 --out bench/results/hetero_dblp.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import torch

from oocstore.hetero import HeteroSpec, build_hetero_store, hetero_synthetic_source
from oocstore.hetero.pack import pack_hetero
from oocstore.hetero.sampler import sample_hetero_plan
from oocstore.hetero.schema import feat_name, require_schema
from oocstore.hetero.train import HeteroTrainConfig, run_hetero_training
from oocstore.store import Store
from oocstore.units import parse_size


def real_source(name: str):
    """The paper/term graph of the module docstring from GraphData's ``<name>.npz``."""
    from pathlib import Path

    import numpy as np

    from oocstore.hetero.ingest import HeteroSource, NodeSource
    from oocstore.ingest.npz import npz_source

    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "graphdata" / f"{name}.npz"
    if not path.exists():
        raise SystemExit(f"{path} is not present: --dataset {name} needs the shared data folder "
                         "beside the checkout")
    g = npz_source(path, trust_pickle=True)
    feats = np.concatenate(list(g.features)).astype(np.float32)
    paper, term = np.nonzero(feats)
    src, dst = np.concatenate([g.src, g.dst]), np.concatenate([g.dst, g.src])
    nodes = {"paper": NodeSource(count=g.num_nodes, features=feats, labels=g.labels,
                                 where=str(path)),
             "term": NodeSource(count=feats.shape[1], where=str(path))}
    edges = {("paper", "cites", "paper"): (src, dst),
             ("paper", "has_term", "term"): (paper, term),
             ("term", "rev_has_term", "paper"): (term, paper)}
    return HeteroSource(nodes=nodes, edges=edges, target="paper",
                        source={"kind": f"graphdata-{name}-paper-term", "file": str(path)})


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "dblp", "cora_ml"])
    ap.add_argument("--papers", type=int, default=100_000)
    ap.add_argument("--cpu-budget", default="8MiB")
    ap.add_argument("--fanouts", default="4,2")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--split", default="0.1,0.05,0.05")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="hetero-sage")
    ap.add_argument("--max-disk-blowup", type=float, default=4.0,
                    help="segments layout: packed bytes at most this many times the features")
    ap.add_argument("--layouts", default="segments,rows",
                    help="pack layouts to train out of core with (each its own pack)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--toy", action="store_true",
                    help="seconds-long run of the synthetic graph (what the test runs)")
    args = ap.parse_args(argv)
    if args.toy:
        args.papers, args.cpu_budget, args.fanouts, args.batch_size = 20000, "2560KiB", "3,2", 32
        args.epochs, args.split, args.max_disk_blowup = 1, "0.1,0.05,0.05", 16.0
    budget = parse_size(args.cpu_budget)
    work = args.dir or tempfile.mkdtemp(prefix="oocstore-hetero-bench-")
    path = os.path.join(work, "store")
    fractions = tuple(float(v) for v in args.split.split(","))
    result: dict = {"config": vars(args), "cpu_budget_bytes": budget,
                    "machine": "2 CPU cores shared with other jobs; no GPU"}
    try:
        t = time.perf_counter()
        if args.dataset == "synthetic":
            source, reverse = hetero_synthetic_source(HeteroSpec(papers=args.papers)), True
        else:
            source, reverse = real_source(args.dataset), False
        build_hetero_store(path, source, add_reverse=reverse, overwrite=True,
                           split_fractions=fractions)
        result["ingest_s"] = time.perf_counter() - t
        with Store(path, readonly=False) as s:
            schema = require_schema(s)
            fb = sum(s.array_meta(feat_name(n)).nbytes for n, nt in schema.node_types.items()
                     if nt.has_features)
            result["feature_bytes"] = fb
            result["feature_bytes_over_budget"] = round(fb / budget, 2)
            t = time.perf_counter()
            plan = sample_hetero_plan(s, fanouts=args.fanouts, batch_size=args.batch_size,
                                      epochs=args.epochs)
            result["sample_s"] = time.perf_counter() - t
            result["plan_stats"] = plan["stats"]
            layouts = args.layouts.split(",")
            result["packs"], result["pack_s"] = {}, {}
            for layout in layouts:
                t = time.perf_counter()
                result["packs"][layout] = pack_hetero(s, "train", name=layout, cpu_budget=budget,
                                                      layout=layout,
                                                      max_disk_blowup=args.max_disk_blowup)
                result["pack_s"][layout] = time.perf_counter() - t
        cfg = dict(epochs=args.epochs, model=args.model, hidden=64)
        runs = {}
        for mode in ["in_memory"] + layouts:
            t = time.perf_counter()
            r = run_hetero_training(path, "train", HeteroTrainConfig(
                in_memory=mode == "in_memory", cpu_budget=None if mode == "in_memory" else budget,
                pack=None if mode == "in_memory" else mode, **cfg))
            r["wall_s"] = time.perf_counter() - t
            runs[mode] = r
        ref = runs["in_memory"].pop("state_dict")
        result["max_weight_difference"] = {}
        for layout in layouts:
            sd = runs[layout].pop("state_dict")
            result["max_weight_difference"][layout] = max(float((sd[k] - ref[k]).abs().max())
                                                          for k in sd)
        result["runs"] = runs
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=1, sort_keys=True, default=str)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(json.dumps(result, sort_keys=True, default=str))  # one JSON line, last on stdout
    return result


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
