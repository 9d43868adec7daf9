"""Heterogeneous configuration: out-of-core vs in-memory parity and speed.

A synthetic paper/author/field store (``oocstore.hetero.synthetic``) whose feature bytes
are at least 4x the CPU budget; one training plan, one pack inside the budget, then the
same model trained out of core and in memory for the same epochs. Reports: feature bytes
vs budget, the pack's per-type split, per-type hit rate / bytes read / read
amplification, time per epoch and time waiting for data, the losses and the val/test
accuracies of both runs, and the largest difference between the two models' weights.

    PYTHONPATH=. nice python bench/hetero.py --papers 100000 --cpu-budget 8MiB --out bench/results/hetero.json
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--papers", type=int, default=100_000)
    ap.add_argument("--cpu-budget", default="8MiB")
    ap.add_argument("--fanouts", default="4,2")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--split", default="0.1,0.05,0.05")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="hetero-sage")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    budget = parse_size(args.cpu_budget)
    work = args.dir or tempfile.mkdtemp(prefix="oocstore-hetero-bench-")
    path = os.path.join(work, "store")
    fractions = tuple(float(v) for v in args.split.split(","))
    result: dict = {"config": vars(args), "cpu_budget_bytes": budget,
                    "machine": "2 CPU cores shared with other jobs; no GPU"}
    try:
        t = time.perf_counter()
        build_hetero_store(path, hetero_synthetic_source(HeteroSpec(papers=args.papers)),
                           add_reverse=True, overwrite=True, split_fractions=fractions)
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
            t = time.perf_counter()
            result["pack"] = pack_hetero(s, "train", cpu_budget=budget)
            result["pack_s"] = time.perf_counter() - t
        cfg = dict(epochs=args.epochs, model=args.model, hidden=64)
        runs = {}
        for mode in ("out_of_core", "in_memory"):
            t = time.perf_counter()
            r = run_hetero_training(path, "train", HeteroTrainConfig(
                in_memory=mode == "in_memory", cpu_budget=budget if mode == "out_of_core" else None,
                **cfg))
            r["wall_s"] = time.perf_counter() - t
            runs[mode] = r
        sd_o, sd_m = runs["out_of_core"].pop("state_dict"), runs["in_memory"].pop("state_dict")
        result["max_weight_difference"] = max(float((sd_o[k] - sd_m[k]).abs().max()) for k in sd_o)
        result["runs"] = runs
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=1, sort_keys=True, default=str)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
