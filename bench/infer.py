"""Out-of-core layer-wise inference (``oocstore infer``) against its CPU budget.

A synthetic graph whose features (and each layer's hidden states) are at least
``--ratio`` times the budget is ingested once; a random model of ``--model`` (sage, gcn
or gat with ``--heads``; the model file ``train --save-model`` writes) is saved beside
it; then a fresh process runs
:func:`oocstore.infer.infer_embeddings` with ``cpu_budget``. After torch, zarr and the
model code are loaded, that process brings its peak-RSS mark down to its resident set
(``/proc/self/clear_refs``), so ``growth`` — the peak's rise over that baseline — is
what inference itself held; it is reported against the budget together with the
absolute peak (``ru_maxrss``), node-layers per second, bytes read and the rate of a
sequential O_DIRECT read of the feature file. The disk's limit is printed beside the
measured rate: the node-layers per second a disk reading at that sequential rate could
feed, given the bytes this run read per node-layer
(``seq_read_bytes_per_s / (bytes_read / node_layers)``); a rate far below it means the
pass is bound by the CPU (gathers, the layers' arithmetic), not by the disk.

Usage::

    python bench/infer.py [--toy] [--nodes N --feat-dim D --hidden H --budget SIZE]
                          [--model sage|gcn|gat] [--heads H]
                          [--work DIR] [--out bench/results/infer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

CHILD = textwrap.dedent("""
    import json, resource, sys

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    import numpy, torch, zarr  # noqa: F401  (loaded before the baseline)
    import torch_geometric.nn  # noqa: F401
    from oocstore.infer import infer_embeddings
    from oocstore.store import Store

    store, ckpt, out, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    warm_store, warm_ckpt = sys.argv[5], sys.argv[6]
    imported = status("VmRSS:")
    # One-time set-up (torch's kernels and thread pools, zarr's I/O threads) on a
    # 200-node graph of the same widths, so the measured growth is inference's own.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    infer_embeddings(warm_store, warm_ckpt, out, overwrite=True)
    warm_growth = status("VmHWM:") - imported
    with Store(store) as s:
        _ = s.num_classes, s.feature_dim
        base = status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        summary = infer_embeddings(s, ckpt, out, cpu_budget=budget, overwrite=True)
    print(json.dumps({"summary": summary.to_dict(), "base_rss": base, "imported_rss": imported,
                      "warm_up_growth": warm_growth,
                      "growth": status("VmHWM:") - base,
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""")


def build(work: Path, nodes: int, feat_dim: int, avg_degree: float, hidden: int,
          layers: int, model: str = "sage", heads: int | None = None) -> tuple[Path, Path]:
    import torch

    from oocstore.ingest import build_store
    from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
    from oocstore.store import Store
    from oocstore.train.models import ModelSpec, build_from_spec
    from oocstore.train.selection import save_model

    tag = f"n{nodes}-d{feat_dim}-deg{avg_degree:g}"
    path = work / tag
    if not (path / "done").exists():
        build_store(path, synthetic_source(SyntheticSpec(nodes=nodes, feat_dim=feat_dim,
                                                         avg_degree=avg_degree, seed=0)),
                    seed=0, overwrite=True)
        (path / "done").write_text("")
    heads = heads if model == "gat" else None
    ckpt = work / f"{tag}-{model}{heads or ''}-h{hidden}-l{layers}.pt"
    if not ckpt.exists():
        with Store(path) as s:
            torch.manual_seed(0)
            spec = ModelSpec(model, s.feature_dim, hidden, s.num_classes, layers, heads,
                             dropout=0.0)
            save_model(ckpt, build_from_spec(spec).state_dict(), spec.to_dict())
    return path, ckpt


def main(argv=None) -> int:
    from _common import machine_info
    from ssd_epoch import seq_read

    from oocstore.store import Store
    from oocstore.units import format_size, parse_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", action="store_true", help="a tiny graph (seconds; for tests)")
    ap.add_argument("--nodes", type=int, default=200_000)
    ap.add_argument("--feat-dim", type=int, default=128)
    ap.add_argument("--avg-degree", type=float, default=8.0)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--budget", default="24MiB")
    ap.add_argument("--model", default="sage", choices=["sage", "gcn", "gat"])
    ap.add_argument("--heads", type=int, default=4, help="gat's attention heads (default 4)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/oocstore-bench-infer"))
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    if args.toy:
        args.nodes, args.feat_dim, args.hidden = 20_000, 64, 64
        args.budget = "12MiB" if args.model == "gat" else "8MiB"  # gat holds per-edge attention
    budget = parse_size(args.budget)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store, ckpt = build(args.work, args.nodes, args.feat_dim, args.avg_degree, args.hidden,
                        args.layers, args.model, args.heads)
    build_s = time.perf_counter() - t0
    with Store(store) as s:
        meta = s.array_meta("features")
        feat_bytes, feat_file = meta.nbytes, s.file_path(meta)
        edges = s.graph.num_edges
    seq_s, seq_bytes = seq_read(feat_file, feat_bytes)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    warm_store, warm_ckpt = build(args.work, 200, args.feat_dim, args.avg_degree, args.hidden,
                                  args.layers, args.model, args.heads)
    p = subprocess.run([sys.executable, "-c", CHILD, str(store), str(ckpt),
                        str(args.work / "emb.zarr"), str(budget), str(warm_store),
                        str(warm_ckpt)],
                       capture_output=True, text=True, env=env, cwd=str(REPO))
    if p.returncode:
        print(p.stderr[-3000:], file=sys.stderr)
        return 1
    child = json.loads(p.stdout.strip().splitlines()[-1])
    sm = child["summary"]
    node_layers = args.nodes * args.layers
    seq_rate = seq_bytes / seq_s if seq_s > 0 else None
    per_node_layer = sm["bytes_read"] / node_layers
    disk_limit = seq_rate / per_node_layer if seq_rate and per_node_layer else None
    res = {"bench": "infer", "model": args.model,
           "heads": args.heads if args.model == "gat" else None, "nodes": args.nodes,
           "edges": edges, "feat_dim": args.feat_dim,
           "hidden": args.hidden, "layers": args.layers, "budget_bytes": budget,
           "feature_bytes": feat_bytes, "hidden_bytes_per_layer": args.nodes * args.hidden * 4,
           "features_over_budget": feat_bytes / budget,
           "rss_growth_bytes": child["growth"], "rss_growth_over_budget": child["growth"] / budget,
           "base_rss_bytes": child["base_rss"], "imported_rss_bytes": child["imported_rss"],
           "warm_up_growth_bytes": child["warm_up_growth"], "peak_rss_bytes": child["ru_maxrss"],
           "seconds": sm["seconds"], "node_layers_per_s": sm["nodes_per_s"],
           "bytes_read": sm["bytes_read"], "bytes_written": sm["bytes_written"],
           "read_rate_bytes_per_s": sm["bytes_read"] / sm["seconds"],
           "seq_read_bytes_per_s": seq_rate,
           "bytes_read_per_node_layer": per_node_layer,
           "disk_limit_node_layers_per_s": disk_limit,
           "fixed_bytes": sm.get("fixed_bytes"),
           "peak_chunk_bytes": sm["peak_chunk_bytes"], "chunks": sm["chunks"],
           "build_s": build_s, "machine": machine_info(args.work)}
    print(f"{args.model}" + (f" ({args.heads} heads)" if args.model == "gat" else "")
          + f", {args.layers} layers of width {args.hidden}: "
          f"{args.nodes} nodes, {edges} edges, features {format_size(feat_bytes)} = "
          f"{res['features_over_budget']:.1f}x the budget {format_size(budget)}")
    print(f"  RSS growth {format_size(child['growth'])} "
          f"({res['rss_growth_over_budget']:.2f}x the budget; absolute peak "
          f"{format_size(child['ru_maxrss'])}; baseline {format_size(child['base_rss'])} after "
          f"a 200-node warm-up that grew the peak {format_size(child['warm_up_growth'])} over "
          f"the {format_size(child['imported_rss'])} of the imports)")
    print(f"  {sm['seconds']:.1f} s, {sm['nodes_per_s']:,.0f} node-layers/s; read "
          f"{format_size(sm['bytes_read'])} ({format_size(res['read_rate_bytes_per_s'])}/s) "
          f"vs sequential O_DIRECT {format_size(res['seq_read_bytes_per_s'] or 0)}/s; chunks "
          f"{sm['chunks']}")
    if disk_limit:
        print(f"  {sm['nodes_per_s']:,.0f} node-layers/s vs the disk's limit "
              f"{disk_limit:,.0f} node-layers/s ({format_size(per_node_layer)} read per "
              f"node-layer at the sequential rate): {sm['nodes_per_s'] / disk_limit:.0%} of it")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
