"""Baseline: DGL's CPU NeighborSampler + DataLoader (run in .venv-dgl as a subprocess).

Reads the store's CSC arrays directly from their files (paths, offsets and dtypes come
on the command line as JSON), builds a DGL graph and times sampling ``--batches``
batches after ``--warmup`` batches. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("spec", help="JSON: indptr/indices/seeds as {file, offset, dtype, count}")
    p.add_argument("--fanouts", required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--batches", type=int, required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import dgl
    import torch

    torch.set_num_threads(args.threads)
    spec = json.loads(args.spec)

    def load(k):
        s = spec[k]
        return np.fromfile(s["file"], dtype=s["dtype"], count=s["count"], offset=s["offset"])

    indptr = torch.from_numpy(load("indptr").astype(np.int64))
    indices = torch.from_numpy(load("indices").astype(np.int64))
    seeds = torch.from_numpy(load("seeds").astype(np.int64))
    n = indptr.numel() - 1
    g = dgl.graph(("csc", (indptr, indices, torch.tensor([], dtype=torch.int64))), num_nodes=n)
    g.create_formats_()
    fanouts = [int(f) for f in args.fanouts.split(",")]
    sampler = dgl.dataloading.NeighborSampler(fanouts)
    loader = dgl.dataloading.DataLoader(g, seeds, sampler, batch_size=args.batch_size,
                                        shuffle=True, drop_last=False, num_workers=0)
    it = iter(loader)
    for _ in range(args.warmup):
        next(it)
    edges = nodes = 0
    done = 0
    blocks_sizes = []
    t0 = time.perf_counter()
    for _ in range(args.batches):
        try:
            inp, out, blocks = next(it)
        except StopIteration:
            break
        e = sum(int(b.num_edges()) for b in blocks)
        edges += e
        nodes += int(inp.numel())
        done += 1
        blocks_sizes.append([[int(b.num_src_nodes()), int(b.num_dst_nodes()), int(b.num_edges())]
                             for b in blocks])
    dt = time.perf_counter() - t0
    print(json.dumps({"method": "dgl", "dgl_version": dgl.__version__, "batches": done,
                      "edges": edges, "input_nodes": nodes, "seconds": dt,
                      "edges_per_s": edges / dt if dt else 0.0, "blocks": blocks_sizes}))


if __name__ == "__main__":
    main()
