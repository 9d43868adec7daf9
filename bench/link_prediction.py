"""Link prediction out of core vs in memory vs a plain PyG full-graph reference, on one
edge split.

Drives the ``oocstore`` command line as a user would:

1. ``oocstore ingest edgelist`` (a SNAP edge list, symmetrised; no node features in the
   source, so the generated ``--feat-dim`` features: class centre plus noise over
   neighbour-smoothed random labels, see ``oocstore/ingest/edgelist.py``);
2. ``oocstore sample --task link`` (the edge split 0.85/0.05/0.10 with fixed evaluation
   negatives, stored; training batches with offline negatives);
3. ``oocstore pack`` with a CPU feature cache of 10 % of the feature bytes and a
   disk-blowup cap that packs every sampled epoch;
4. ``oocstore train --task link --json`` out of core and ``--in-memory`` (same plan,
   same seed).

The reference, in this process: plain PyG, full-graph GraphSAGE (mean ``SAGEConv``, as
many layers as the plan's fanouts, same width) and a dot-product decoder on the same
split read back from the store: messages over the same message-passing graph, the same
training edges in mini-batches of the same size, fresh uniform negatives per batch from
``torch_geometric.utils.negative_sampling`` (PyG's link_pred example), the same number
of optimiser steps, full-neighbourhood evaluation on the same stored held-out edges and
negatives with the same metric code. All three are printed in one JSON line.

    python bench/link_prediction.py                          # facebook_combined
    python bench/link_prediction.py --dataset slashdot --epochs 3 --batch-size 4096
    python bench/link_prediction.py --toy                    # seconds (the test)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SNAP = REPO.parent / "shared" / "data" / "snap"
DATASETS = {"facebook": "facebook_combined.txt.gz", "slashdot": "soc-Slashdot0902.txt.gz"}
CACHE_FRACTION = 0.10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def oocstore(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "oocstore", *args], capture_output=True,
                          text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"oocstore {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def toy_edges(path: Path) -> Path:
    """A small homophilous random graph as a SNAP-style edge list."""
    rng = np.random.default_rng(0)
    n, groups = 400, 8
    g = rng.integers(0, groups, n)
    src = rng.integers(0, n, 6000)
    dst = rng.integers(0, n, 6000)
    keep = (g[src] == g[dst]) | (rng.random(6000) < 0.1)
    path.write_text("# toy\n" + "".join(f"{u}\t{v}\n" for u, v in zip(src[keep], dst[keep])))
    return path


def pyg_reference(store_path: Path, args) -> dict:
    """Full-graph GraphSAGE + dot decoder in plain PyG on the store's edge split."""
    import torch
    from torch_geometric.nn import SAGEConv
    from torch_geometric.utils import negative_sampling

    from oocstore.linksplit import read_edge_split
    from oocstore.store import Store
    from oocstore.train.link_metrics import link_metrics

    torch.manual_seed(args.seed)
    with Store(store_path) as store:
        split = read_edge_split(store)
        x = torch.from_numpy(np.array(store.array("features"))).float()
    n = x.shape[0]
    dst = np.repeat(np.arange(n), np.diff(split.indptr))
    edge_index = torch.from_numpy(np.stack([split.indices.astype(np.int64), dst]))
    layers = len(args.fanouts.split(","))
    dims = [x.shape[1]] + [args.hidden] * layers
    convs = torch.nn.ModuleList(SAGEConv(a, b, aggr="mean") for a, b in zip(dims, dims[1:]))

    def encode(training: bool) -> torch.Tensor:
        h = x
        for i, conv in enumerate(convs):
            h = conv(h, edge_index)
            if i < layers - 1:
                h = torch.nn.functional.dropout(h.relu(), p=args.dropout, training=training)
        return h

    opt = torch.optim.Adam(convs.parameters(), lr=args.lr)
    train = torch.from_numpy(split.train).T  # [2, E_train]
    t0 = time.perf_counter()
    losses = []
    for epoch in range(args.epochs):
        perm = torch.randperm(train.shape[1])
        total = 0.0
        for lo in range(0, train.shape[1], args.batch_size):
            pos = train[:, perm[lo:lo + args.batch_size]]
            neg = negative_sampling(edge_index, num_nodes=n,
                                    num_neg_samples=pos.shape[1] * args.neg_ratio)
            convs.train()
            opt.zero_grad()
            h = encode(True)
            pairs = torch.cat([pos, neg], 1)
            logits = (h[pairs[0]] * h[pairs[1]]).sum(-1)
            target = torch.cat([torch.ones(pos.shape[1]), torch.zeros(neg.shape[1])])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * pos.shape[1]
        losses.append(total / train.shape[1])
    convs.eval()
    out = {"train_s": time.perf_counter() - t0, "losses": losses}
    with torch.no_grad():
        h = encode(False)
        for part in ("val", "test"):
            p, negs = split.held_out(part)
            p = torch.from_numpy(p)
            w = torch.from_numpy(negs)
            sp = (h[p[:, 0]] * h[p[:, 1]]).sum(-1)
            sn = (h[p[:, 0]].unsqueeze(1) * h[w]).sum(-1)
            out[part] = link_metrics(sp, sn)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="facebook", choices=sorted(DATASETS))
    ap.add_argument("--toy", action="store_true", help="a tiny generated graph (seconds)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--fanouts", default="10,5")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--neg-ratio", type=int, default=1)
    ap.add_argument("--feat-dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.toy:
        args.epochs, args.hidden, args.batch_size, args.feat_dim = 2, 16, 256, 8
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.dir) if args.dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.toy:
            src = toy_edges(work / "toy.txt")
        else:
            src = SNAP / DATASETS[args.dataset]
            if not src.exists():
                raise SystemExit(f"{src} is absent: this benchmark needs the SNAP data in "
                                 "../shared/data/snap (or run with --toy)")
        store = work / f"link-{'toy' if args.toy else args.dataset}"
        timings = {}
        t = time.perf_counter()
        oocstore("ingest", "edgelist", str(src), str(store), "--feat-dim", str(args.feat_dim),
                 "--overwrite", "--quiet")
        timings["ingest_s"] = time.perf_counter() - t
        t = time.perf_counter()
        oocstore("sample", str(store), "--task", "link", "--fanouts", args.fanouts,
                 "--batch-size", str(args.batch_size), "--neg-ratio", str(args.neg_ratio),
                 "--epochs", str(min(args.epochs, 4)), "--seed", str(args.seed), "--quiet")
        timings["sample_s"] = time.perf_counter() - t
        from oocstore.store import Store

        with Store(store) as s:
            feat_bytes = s.array_meta("features").nbytes
        t = time.perf_counter()
        oocstore("pack", str(store), "--plan", "link", "--cpu-cache",
                 str(int(feat_bytes * CACHE_FRACTION)), "--max-disk-blowup", "1000", "--quiet")
        timings["pack_s"] = time.perf_counter() - t
        common = ["train", str(store), "--task", "link", "--epochs", str(args.epochs),
                  "--hidden", str(args.hidden), "--lr", str(args.lr), "--dropout",
                  str(args.dropout), "--seed", str(args.seed), "--json", "--quiet"]
        runs = {}
        for mode, extra in (("out_of_core", []), ("in_memory", ["--in-memory"])):
            t = time.perf_counter()
            runs[mode] = json.loads(oocstore(*common, *extra).strip().splitlines()[-1])
            runs[mode]["wall_s"] = time.perf_counter() - t
            log(f"{mode}: test {runs[mode]['test']}")
        ref = pyg_reference(store, args)
        log(f"pyg reference: test {ref['test']}")
    ooc, mem = runs["out_of_core"], runs["in_memory"]
    result = {"bench": "link_prediction", "dataset": "toy" if args.toy else args.dataset,
              "settings": {k: getattr(args, k) for k in ("epochs", "hidden", "lr", "dropout",
                                                          "fanouts", "batch_size", "neg_ratio",
                                                          "feat_dim", "seed")},
              "edge_split": ooc["edge_split"], "timings": timings,
              "out_of_core": {k: ooc[k] for k in ("val", "test", "wall_s", "bytes_read",
                                                  "read_amplification", "hit_rate")},
              "in_memory": {k: mem[k] for k in ("val", "test", "wall_s")},
              "identical": ooc["epochs"] == mem["epochs"] or all(
                  {k: v for k, v in a.items() if k != "time_s"}
                  == {k: v for k, v in b.items() if k != "time_s"}
                  for a, b in zip(ooc["epochs"], mem["epochs"])) and ooc["test"] == mem["test"],
              "losses": {"oocstore": [e["loss"] for e in ooc["epochs"]],
                         "pyg": ref["losses"]},
              "pyg_reference": {k: ref[k] for k in ("val", "test", "train_s")}}
    line = json.dumps(result, sort_keys=True)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
