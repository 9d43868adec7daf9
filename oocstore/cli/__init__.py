"""The ``oocstore`` command line: a thin layer over the library.

Every user error is an :class:`~oocstore.errors.OocError`; it is printed as one line
(``oocstore: error: ...``) and the command exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from .errors import OocError, UsageError

log = logging.getLogger("oocstore")


#: A value that looks like a negative size (``-5MiB``): a value, not an option.
_NEGATIVE_VALUE = re.compile(r"^-[0-9.]+[A-Za-z]*$")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the value and pointing at --help,
    options must be spelled out (``--epoch`` is not taken for ``--epochs``), and a
    negative size reaches its option's check instead of reading as an unknown option."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _parse_optional(self, arg_string):  # argparse's hook: is this token an option?
        if _NEGATIVE_VALUE.match(arg_string):
            return None
        return super()._parse_optional(arg_string)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


@contextmanager
def _progress(args, total: int | None, desc: str, unit: str = "row") -> Iterator:
    """A tqdm bar on stderr (silenced by --quiet); yields an ``update(n)`` callable."""
    if getattr(args, "quiet", False):
        yield lambda n: None
        return
    from tqdm import tqdm

    bar = None

    def update(n: int) -> None:
        # Created on the first update, so errors raised while checking the input stay
        # one clean line on stderr.
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B",
                       dynamic_ncols=True, file=sys.stderr)
        bar.update(n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


# -- ingest ----------------------------------------------------------------------------

def _ingest_common(p: argparse.ArgumentParser, *, split: bool = True) -> None:
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="precision of the stored features (float16 halves their bytes)")
    if split:
        p.add_argument("--split", default=None, metavar="TR,VA,TE",
                       help="fractions for generated train/val/test splits where the source "
                            "has none (default 0.6,0.2,0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed for everything generated (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it exists (the old store stays intact until the new one "
                        "is complete)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="keep NaN/Inf feature values instead of refusing them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_ingest(sub) -> None:
    ing = sub.add_parser(
        "ingest", help="build a store from a dataset",
        description="Build a new store (graph in CSC form, node features, labels, splits) by "
                    "streaming a source into aligned files; the store appears at OUT only once "
                    "it is complete.")
    kinds = ing.add_subparsers(dest="source", required=True, metavar="SOURCE", parser_class=_Parser)

    p = kinds.add_parser("synthetic", help="a generated R-MAT graph with homophilous labels",
                         description="Generate a Graph500/R-MAT graph with homophilous labels and "
                                     "class-correlated features (deterministic for a seed).")
    p.add_argument("out", metavar="OUT", help="store directory to create")
    p.add_argument("--nodes", type=int, default=100_000, help="number of nodes (default 100000)")
    p.add_argument("--avg-degree", type=float, default=16.0,
                   help="stored edges per node before de-duplication (default 16)")
    p.add_argument("--feat-dim", type=int, default=128, help="feature dimension (default 128)")
    p.add_argument("--classes", type=int, default=8, help="number of classes (default 8)")
    p.add_argument("--rmat", default="0.57,0.19,0.19,0.05", metavar="A,B,C,D",
                   help="R-MAT quadrant probabilities (default 0.57,0.19,0.19,0.05)")
    p.add_argument("--homophily", type=float, default=0.7,
                   help="fraction of edges rewired to a node of the same class (default 0.7)")
    p.add_argument("--confusion", type=float, default=0.35,
                   help="fraction of nodes whose features follow a random class (default 0.35)")
    _ingest_common(p)
    p.set_defaults(func=_cmd_ingest_synthetic)

    p = kinds.add_parser("npz", help="a GraphData-style .npz (adj_matrix, node_attr, node_label)",
                         description="Ingest a .npz holding pickled scipy matrices adj_matrix and "
                                     "node_attr plus node_label. Loading pickles can run code, so "
                                     "--trust-pickle is required.")
    p.add_argument("src", metavar="SRC", help=".npz file")
    p.add_argument("out", metavar="OUT", help="store directory to create")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling the scipy matrices inside SRC (only for files you trust)")
    _ingest_common(p)
    p.set_defaults(func=_cmd_ingest_npz)

    p = kinds.add_parser("planetoid", help="Planetoid ind.<name>.* files (Cora, CiteSeer)",
                         description="Ingest the Planetoid files ind.NAME.{x,y,tx,ty,allx,ally,"
                                     "graph,test.index} from DIR with the standard split. They are "
                                     "pickles: only ingest files you trust.")
    p.add_argument("dir", metavar="DIR", help="directory holding the ind.NAME.* files")
    p.add_argument("name", metavar="NAME", help="dataset name, e.g. cora or citeseer")
    p.add_argument("out", metavar="OUT", help="store directory to create")
    _ingest_common(p, split=False)
    p.set_defaults(func=_cmd_ingest_planetoid)

    p = kinds.add_parser("edgelist", help="a SNAP-style text edge list (plain or .gz)",
                         description="Ingest a whitespace-separated edge list ('#' comments, plain "
                                     "or gzip). Node ids are remapped to 0..N-1 in ascending order "
                                     "of the original ids. Features and labels are generated "
                                     "unless given as .npy files in that order.")
    p.add_argument("src", metavar="SRC", help="edge list file (.txt or .txt.gz)")
    p.add_argument("out", metavar="OUT", help="store directory to create")
    p.add_argument("--directed", action="store_true",
                   help="keep edges directed (default: symmetrise)")
    p.add_argument("--feat-dim", type=int, default=128, help="generated feature dimension")
    p.add_argument("--classes", type=int, default=8, help="generated number of classes")
    p.add_argument("--features", metavar="NPY", help="features .npy, one row per remapped node")
    p.add_argument("--labels", metavar="NPY", help="labels .npy, one per remapped node")
    _ingest_common(p)
    p.set_defaults(func=_cmd_ingest_edgelist)

    p = kinds.add_parser("arrays", help="edge_index / features / labels from .npy or zarr",
                         description="Ingest arrays: --edge-index (a [2, E] .npy), features from "
                                     "--features (.npy, memory-mapped) or --features-zarr (a zarr v3 "
                                     "array, read chunk by chunk), --labels (.npy).")
    p.add_argument("out", metavar="OUT", help="store directory to create")
    p.add_argument("--edge-index", required=True, metavar="NPY", help="[2, E] integer .npy")
    feats = p.add_mutually_exclusive_group(required=True)
    feats.add_argument("--features", metavar="NPY", help="[N, D] .npy")
    feats.add_argument("--features-zarr", metavar="PATH", help="[N, D] zarr v3 array")
    p.add_argument("--labels", required=True, metavar="NPY", help="[N] integer .npy")
    p.add_argument("--directed", action="store_true", help="keep edges directed")
    _ingest_common(p)
    p.set_defaults(func=_cmd_ingest_arrays)

    from .gs.cli import register as register_scene_commands  # ingest scene, export-scene
    register_scene_commands(sub, kinds)


def _build(args, make_source) -> None:
    """Check the output and options first (cheap), then read the source and write."""
    from .ingest import build_store, parse_split
    from .store import Store

    fractions = parse_split(getattr(args, "split", None))
    Store.check_new_path(args.out, overwrite=args.overwrite)
    source = make_source()
    with _progress(args, source.num_nodes, f"ingest {Path(args.out).name}") as update:
        build_store(args.out, source, dtype=args.dtype, split_fractions=fractions, seed=args.seed,
                    overwrite=args.overwrite, allow_nonfinite=args.allow_nonfinite, progress=update)
    if not args.quiet:
        _print_summary(args.out)


def _print_summary(path: str) -> None:
    from .store import Store
    from .store.info import format_info, store_info

    with Store(path) as store:
        print(format_info(store_info(store)))


def _cmd_ingest_synthetic(args) -> int:
    from .ingest.synthetic import SyntheticSpec, synthetic_source

    try:
        rmat = tuple(float(v) for v in args.rmat.split(","))
    except ValueError:
        rmat = ()
    if len(rmat) != 4:
        raise UsageError(f"--rmat {args.rmat!r}: give four probabilities, e.g. 0.57,0.19,0.19,0.05")
    spec = SyntheticSpec(nodes=args.nodes, avg_degree=args.avg_degree, feat_dim=args.feat_dim,
                         classes=args.classes, seed=args.seed, rmat=rmat,  # type: ignore[arg-type]
                         homophily=args.homophily, confusion=args.confusion)
    _build(args, lambda: synthetic_source(spec))
    return 0


def _cmd_ingest_npz(args) -> int:
    from .ingest.npz import npz_source

    _build(args, lambda: npz_source(args.src, trust_pickle=args.trust_pickle))
    return 0


def _cmd_ingest_planetoid(args) -> int:
    from .ingest.planetoid import planetoid_source

    _build(args, lambda: planetoid_source(args.dir, args.name))
    return 0


def _cmd_ingest_edgelist(args) -> int:
    from .ingest.edgelist import edgelist_source

    _build(args, lambda: edgelist_source(args.src, directed=args.directed, feat_dim=args.feat_dim,
                                 classes=args.classes, features=args.features,
                                 labels=args.labels, seed=args.seed))
    return 0


def _cmd_ingest_arrays(args) -> int:
    from .ingest.arrays import arrays_source

    _build(args, lambda: arrays_source(edge_index=args.edge_index, features=args.features,
                               features_zarr=args.features_zarr, labels=args.labels,
                               directed=args.directed))
    return 0


# -- sample ----------------------------------------------------------------------------

def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample", help="sample mini-batch neighbourhoods offline into an access plan",
        description="Sample GraphSAGE-style neighbourhoods (uniform, without replacement) for "
                    "several epochs ahead and store them in STORE as a named access plan: per "
                    "batch the seeds, the per-layer blocks and the input nodes, plus access "
                    "statistics. Deterministic for a seed, whatever the thread count.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--fanouts", required=True, metavar="F0,F1,...",
                   help="neighbours per node and layer, input-side layer first (DGL's order), "
                        "e.g. 15,10,5; 'all' takes the full neighbourhood")
    p.add_argument("--batch-size", type=int, required=True,
                   help="seed nodes per batch (per rank with --world-size)")
    p.add_argument("--world-size", type=int, default=1, metavar="W",
                   help="sample one shard per rank for W data-parallel processes (plans "
                        "NAME.rank0 .. NAME.rank{W-1}: equal batch counts, every seed once per "
                        "epoch across ranks; see docs/DISTRIBUTED.md)")
    p.add_argument("--epochs", type=int, default=None,
                   help="distinct sampled epochs (default 4 for train, 1 for val/test)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--split", default="train",
                   help="seed split: train (shuffled per epoch) or val/test (in order)")
    p.add_argument("--name", default=None, help="plan name (default: the split name)")
    p.add_argument("--overwrite", action="store_true", help="replace a plan of that name")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the graph arrays' checksums before sampling")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args) -> int:
    from oocstore.samplers.neighbor import prepare_sampling, run_sampling, verify_graph

    from .plan import list_plans, summarize
    from .store import Store
    from .store.info import format_plans

    with Store(args.store, readonly=False) as store:
        job = prepare_sampling(store, fanouts=args.fanouts, batch_size=args.batch_size,
                               epochs=args.epochs, seed=args.seed, name=args.name,
                               split=args.split, overwrite=args.overwrite,
                               world_size=args.world_size)
        if not args.no_verify:
            verify_graph(store, job.verify_arrays)  # before the bar: errors stay one line
        with _progress(args, job.total_batches, f"sample {job.name}", unit="batch") as update:
            run_sampling(store, job, verify=False, progress=update)
        metas = {n: summarize(m) for n, m in list_plans(store).items() if n in job.plan_names}
    if not args.quiet:
        print("\n".join(format_plans(metas)))
    return 0


# -- pack ------------------------------------------------------------------------------

def _size(value: str) -> int:
    from .units import parse_size

    try:
        return parse_size(value)
    except OocError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_pack(sub) -> None:
    p = sub.add_parser(
        "pack", help="lay out a plan's feature reads contiguously on disk, choose cache tiers",
        description="Pack an access plan: the most accessed rows go to the GPU and CPU tiers, "
                    "and the remaining rows of each segment of consecutive batches are written "
                    "contiguously, in the order the loader reads them, so every segment is one "
                    "sequential O_DIRECT read. Without --cpu-cache/--gpu-cache, the cache sizes "
                    "are chosen inside --cpu-budget (and --gpu-budget) by a cost model that "
                    "predicts epoch load time from bandwidths probed on this disk.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--plan", default=None,
                   help="plan to pack (default: the most recent train-split plan; under "
                        "torchrun, the most recent one for this world size); for a plan "
                        "sampled with --world-size, every shard (under torchrun: each rank "
                        "its own)")
    p.add_argument("--name", default=None,
                   help="pack name (default: the plan's name; NAME.rankR for shards)")
    p.add_argument("--gpu-cache", type=_size, default=None, metavar="SIZE",
                   help="bytes of the GPU tier (e.g. 0, 512MiB)")
    p.add_argument("--cpu-cache", type=_size, default=None, metavar="SIZE",
                   help="bytes of the CPU tier (e.g. 0, 2GiB)")
    p.add_argument("--max-disk-blowup", type=float, default=4.0, metavar="X",
                   help="packed bytes at most X times the feature bytes, over all epochs "
                        "(default 4); batches beyond it read rows from the base array")
    p.add_argument("--policy", choices=["static", "belady"], default="static",
                   help="CPU tier: static (the most accessed rows, fixed) or belady (a schedule "
                        "worked out from the plan's known future: admit and evict as Belady's "
                        "optimal policy would; fewer packed rows, restarts each epoch)")
    p.add_argument("--segment-batches", type=int, default=None, metavar="S",
                   help="batches per segment (default: the smallest that fits the blowup cap)")
    p.add_argument("--pack-memory", type=_size, default=None, metavar="SIZE",
                   help="host memory for output rows assembled per pass over the base array "
                        "(default 256MiB); more memory means fewer passes")
    p.add_argument("--copy", choices=["auto", "buckets", "rescans"], default="auto",
                   help="how rows reach the output when it exceeds --pack-memory: base "
                        "scans plus temporary buckets (as few scans as keep the buckets in "
                        "the page cache, when that is cheaper), one scan per window, or "
                        "whichever moves fewer bytes (default)")
    p.add_argument("--cpu-budget", type=_size, default=None, metavar="SIZE",
                   help="refuse a pack whose minimum CPU working set exceeds this")
    p.add_argument("--gpu-budget", type=_size, default=None, metavar="SIZE",
                   help="refuse a pack whose minimum GPU working set exceeds this")
    p.add_argument("--no-probe", action="store_true",
                   help="with automatic cache sizes, use default bandwidths instead of probing")
    p.add_argument("--overwrite", action="store_true", help="replace a pack of that name")
    p.add_argument("--json", action="store_true",
                   help="print the pack's summary as JSON (one line per shard)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_cmd_pack)


def _cmd_pack(args) -> int:
    import os

    from . import distributed as dist
    from .plan import list_plans, shard_name
    from .store import Store

    def name_for(meta) -> str | None:
        if args.name is None or not meta.sharded:
            return args.name
        return shard_name(args.name, meta.shard_rank)

    info = dist.launch_info(os.environ)
    if info is not None and info.world_size > 1:
        # Under torchrun each rank packs its own shard; ranks on one machine take turns
        # (a store has one writer at a time), machines (each with its own copy) in parallel.
        owned = dist.init_process_group(info, "cpu")[1]
        try:
            def mine() -> None:
                with Store(args.store, readonly=False) as store:
                    plan = dist.resolve_plan(store, args.plan, rank=info.rank,
                                             world_size=info.world_size)
                    _pack_one(args, store, plan, name_for(list_plans(store)[plan]))

            dist.in_turns_per_node(mine)
        finally:
            if owned:
                dist.destroy_process_group()
        return 0
    # Outside torchrun: the plan, or every shard of a group.
    with Store(args.store, readonly=False) as store:
        for plan in dist.plans_to_pack(store, args.plan):
            _pack_one(args, store, plan, name_for(list_plans(store)[plan]))
    return 0


def _pack_one(args, store, plan_name: str, pack_name: str | None) -> None:
    from .pack import PackOptions, pack_plan
    from .pack.costmodel import Bandwidths, choose_split, predict_epoch, probe
    from .pack.packer import plan_layout
    from .plan import PlanReader
    from .store.info import format_packs, pack_summary

    plan = PlanReader(store, plan_name)
    auto = args.cpu_cache is None and args.gpu_cache is None
    prediction = None
    if auto and args.cpu_budget is not None:
        bw = Bandwidths() if args.no_probe else probe(store)
        options, prediction, _ = choose_split(
            store, plan, cpu_budget=args.cpu_budget, gpu_budget=args.gpu_budget,
            max_disk_blowup=args.max_disk_blowup, bw=bw)
        options = PackOptions(**{**options.__dict__, "policy": args.policy,
                                 "segment_batches": args.segment_batches
                                 or options.segment_batches})
    else:
        options = PackOptions(gpu_cache=args.gpu_cache or 0, cpu_cache=args.cpu_cache or 0,
                              max_disk_blowup=args.max_disk_blowup, cpu_budget=args.cpu_budget,
                              gpu_budget=args.gpu_budget, segment_batches=args.segment_batches,
                              policy=args.policy)
        bw = Bandwidths()
    options = PackOptions(**{**options.__dict__, "copy": args.copy,
                             "window_bytes": options.window_bytes if args.pack_memory is None
                             else args.pack_memory})
    total = store.array_meta("features").nbytes
    with _progress(args, None, f"pack {pack_name or plan.name}", unit="B") as update:
        meta = pack_plan(store, plan.name, name=pack_name, options=options,
                         overwrite=args.overwrite, progress=update)
    if prediction is None:
        prediction = predict_epoch(plan_layout(store, PlanReader(store, plan.name), options), bw)
    summary = pack_summary(meta, total)
    summary["predicted_epoch_load_s"] = prediction["seconds"]
    summary["auto_split"] = auto and args.cpu_budget is not None
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    elif not args.quiet:
        print("\n".join(format_packs({meta.name: summary})))
        print(f"  predicted epoch-0 load time: {prediction['seconds']:.2f} s "
              f"({'probed' if summary['auto_split'] and not args.no_probe else 'default'} bandwidths)")


# -- plan-budget -----------------------------------------------------------------------

def _add_plan_budget(sub) -> None:
    p = sub.add_parser(
        "plan-budget", help="which batch sizes and fanouts fit a memory budget, before sampling",
        description="Estimate, for each candidate fanouts and batch size, the minimum working "
                    "set a pack of that plan would need (the figure `pack --cpu-budget` and "
                    "`train --cpu-budget` check) from a few sampled batches, never whole "
                    "epochs; print the headroom against the budget, the cpu cache and prefetch "
                    "depth that would fit, and the sample / pack / train commands of the "
                    "largest batch that fits. Exit status 1 when nothing fits.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--cpu-budget", type=_size, required=True, metavar="SIZE",
                   help="the cpu budget the run will get (e.g. 256MiB)")
    p.add_argument("--gpu-budget", type=_size, default=None, metavar="SIZE",
                   help="the gpu budget of a --device cuda run")
    p.add_argument("--fanouts", action="append", default=None, metavar="F0,F1,...",
                   help="candidate fanouts, input side first; repeat to compare several "
                        "(default: 15,10,5 and 10,5)")
    p.add_argument("--batch-sizes", default=None, metavar="B1,B2,...",
                   help="candidate seed counts per batch (default 1,2,4,...,4096)")
    p.add_argument("--split", default="train", help="seed split of the plan (default train)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs the plan will sample (default 4 for train, 1 for val/test)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--probe", type=int, default=16, metavar="N",
                   help="batches sampled per candidate (default 16)")
    p.add_argument("--margin", type=float, default=0.10, metavar="F",
                   help="widen the estimated largest batch by this fraction (default 0.10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(func=_cmd_plan_budget)


def _cmd_plan_budget(args) -> int:
    from oocstore.samplers.neighbor import parse_fanouts, probe_batches

    from .pack.fit import DEFAULT_BATCH_SIZES, DEFAULT_FANOUTS, estimate, format_table, \
        parse_batch_sizes
    from .store import Store

    fanouts = [parse_fanouts(f) for f in args.fanouts] if args.fanouts else DEFAULT_FANOUTS
    sizes = parse_batch_sizes(args.batch_sizes) if args.batch_sizes else DEFAULT_BATCH_SIZES
    epochs = args.epochs if args.epochs is not None else (4 if args.split == "train" else 1)
    with Store(args.store) as store:
        if args.split not in store.splits:
            raise UsageError(f"--split {args.split!r}: store {store.path} has no such split "
                             f"(it has: {', '.join(sorted(store.splits)) or 'none'})")
        result = estimate(store, probe_batches(store, split=args.split, seed=args.seed)
                          if store.graph is not None else None,
                          cpu_budget=args.cpu_budget, gpu_budget=args.gpu_budget,
                          fanouts=fanouts, batch_sizes=sizes, split=args.split, epochs=epochs,
                          seed=args.seed, probe=args.probe, margin=args.margin)
    print(json.dumps(result, sort_keys=True) if args.json else "\n".join(format_table(result)))
    return 0 if result["suggestion"] is not None else 1


# -- train -----------------------------------------------------------------------------

def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train GraphSAGE node classification from a store, out of core",
        description="Train GraphSAGE on a store's training plan, streaming features through "
                    "the plan's pack (GPU/CPU/SSD tiers, pipelined prefetch) inside the given "
                    "budgets, with validation accuracy after every epoch and test accuracy "
                    "at the end (evaluation plans are sampled and packed once if the store "
                    "has none). --in-memory runs the "
                    "same plans with every feature in RAM: the parity reference. Under "
                    "`torchrun --nproc-per-node W` it trains with DDP on a plan sampled with "
                    "--world-size W (gloo on CPU, nccl on CUDA; budgets per rank) and rank 0 "
                    "prints the summary.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--plan", default=None, help="training plan or shard group (default: the most "
                                                "recent train-split plan for this world size, "
                                                "and its most recent pack)")
    p.add_argument("--allow-eval-split", action="store_true",
                   help="train on a --plan of the val or test split (refused otherwise: it "
                        "fits the model to the nodes it is evaluated on); says so when it does")
    p.add_argument("--epochs", type=int, required=True, help="training epochs")
    p.add_argument("--hidden", type=int, default=256, help="hidden units (default 256)")
    p.add_argument("--lr", type=float, default=0.003, help="Adam learning rate (default 0.003)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout (default 0.5)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train")
    p.add_argument("--cpu-budget", type=_size, default=None, metavar="SIZE",
                   help="hard limit for oocstore's host buffers (caches, staging, prefetch)")
    p.add_argument("--gpu-budget", type=_size, default=None, metavar="SIZE",
                   help="hard limit for oocstore's device buffers")
    p.add_argument("--in-memory", action="store_true",
                   help="hold all features in RAM (same plans): the accuracy reference")
    p.add_argument("--backend", default="pyg", choices=["pyg", "dgl"],
                   help="GNN layers: PyG SAGEConv (default) or dgl.nn.SAGEConv (DGL environment)")
    p.add_argument("--seed", type=int, default=0, help="seed for model init (default 0)")
    p.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="save model, optimizer and loader state here after every epoch (rank 0 "
                        "writes it under torchrun)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint DIR")
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="L2",
                   help="Adam weight decay (default 0)")
    p.add_argument("--early-stop", type=int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation accuracy; "
                        "the best epoch's model is tested (and saved)")
    p.add_argument("--save-model", default=None, metavar="PATH",
                   help="write the best validation epoch's state_dict to PATH when training "
                        "ends (torch.load(PATH, weights_only=True)); an existing file needs "
                        "--overwrite")
    p.add_argument("--overwrite", action="store_true", help="let --save-model replace PATH")
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object on the last line of stdout "
                        "(epochs[i].val_acc: validation accuracy after epoch i)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    import os

    from . import distributed as dist

    info = dist.launch_info(os.environ)
    if info is None or info.world_size == 1:
        return _train_and_report(args)
    # Under torchrun: DDP over the launcher's process group; rank 0 reports.
    owned = dist.init_process_group(info, args.device)[1]
    try:
        if info.rank != 0:
            args.quiet = True
        return _train_and_report(args, report=info.rank == 0)
    finally:
        if owned:
            dist.destroy_process_group()


def _train_and_report(args, *, report: bool = True) -> int:
    from .train.prepare import WriteLog
    from .train.run import TrainConfig, run_training, summary_json
    from .units import format_size

    from .train.progress import BarProgress

    cfg = TrainConfig(epochs=args.epochs, hidden=args.hidden, lr=args.lr, dropout=args.dropout,
                      device=args.device, cpu_budget=args.cpu_budget, gpu_budget=args.gpu_budget,
                      in_memory=args.in_memory, backend=args.backend, seed=args.seed,
                      checkpoint=args.checkpoint, resume=args.resume,
                      allow_eval_split=args.allow_eval_split,
                      weight_decay=args.weight_decay, early_stop=args.early_stop,
                      save_model=args.save_model, overwrite=args.overwrite)
    # train may commit evaluation plans and packs (and writes checkpoints) before it stops:
    # an interrupt or a failure after that says exactly what was written.
    writes = WriteLog(args.store)
    bar = None if args.quiet else BarProgress()
    try:
        summary = run_training(args.store, args.plan, cfg, progress=bar, writes=writes)
    except KeyboardInterrupt:
        print(f"oocstore: interrupted; {writes.describe()}", file=sys.stderr)
        return 130
    except (OocError, OSError) as err:
        if not (writes.settled() or writes.files):
            raise  # nothing written: the usual one-line error
        print(f"oocstore: error: {err}", file=sys.stderr)
        print(f"oocstore: before it stopped, {writes.describe()}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    if not report:
        return 0
    if args.json:
        print(summary_json(summary))
        return 0
    mode = "in memory" if summary["in_memory"] else f"out of core (pack {summary['pack']})"
    accs = ", ".join(f"{k} acc {summary[f'{k}_acc']:.4f}" for k in ("val", "test")
                     if summary[f"{k}_acc"] is not None) or "no val/test split to evaluate"
    print(f"trained plan {summary['plan']} {mode} on {summary['device']}: {accs}")
    for e in summary["epochs"]:
        val = f", val acc {e['val_acc']:.4f}" if e.get("val_acc") is not None else ""
        print(f"  epoch {e['epoch']}: {e['time_s']:.1f} s, waited {e['wait_s']:.2f} s for data, "
              f"loss {e['loss']:.4f}{val}")
    if summary["best_epoch"] is not None and (args.early_stop or args.save_model):
        print(f"  best validation epoch {summary['best_epoch']}"
              + (" (stopped early)" if summary["early_stopped"] else "")
              + (f"; its model saved to {summary['model_file']}" if summary["model_file"] else ""))
    if not summary["in_memory"]:
        hr = ", ".join(f"{k} {v:.1%}" for k, v in summary["hit_rate"].items())
        print(f"  read {format_size(summary['bytes_read'])} for "
              f"{format_size(summary['useful_bytes'])} of useful rows (amplification "
              f"{summary['read_amplification']:.3f}); hits: {hr}; prefetch depth "
              f"{summary['prefetch']}")
    print(f"  peak RSS {format_size(summary['peak_rss_bytes'])}")
    return 0


# -- inspect / verify ------------------------------------------------------------------

def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show a store's arrays, graph, splits and plans",
                       description="Show what a store holds: arrays and their sizes, degree "
                                   "statistics, splits, versions, plans and packs.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    from .store import Store
    from .store.info import format_info, store_info

    with Store(args.store) as store:
        info = store_info(store)
    if args.json:
        print(json.dumps(info, sort_keys=True))
    else:
        print(format_info(info))
    return 0


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="recompute checksums and check the graph's structure",
                       description="Read every array of the store from disk (O_DIRECT), recompute "
                                   "its chunk checksums and check the graph's structure. Exits 0 "
                                   "when intact, 1 naming each damaged array and chunk.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args) -> int:
    from .store import Store
    from .store.verify import total_bytes, verify_store

    with Store(args.store) as store:
        with _progress(args, total_bytes(store), "verify", unit="B") as update:
            damage = verify_store(store, progress=update)
        if damage:
            for d in damage:
                print(f"oocstore verify: {store.path}: {d}", file=sys.stderr)
            print(f"oocstore verify: {len(damage)} damaged chunk(s) or file(s) in {store.path}: "
                  "restore the store from a copy or re-create it", file=sys.stderr)
            return 1
        print(f"{store.path}: OK ({len(store.arrays)} arrays, version {store.version})")
    return 0


# -- gc / rm ---------------------------------------------------------------------------

def _add_gc(sub) -> None:
    p = sub.add_parser("gc", help="delete data files no version in use needs",
                       description="Delete data files the current catalog does not name "
                                   "(superseded by a commit, or left by a crash) and the "
                                   "registrations of readers that died. Files a live reader of "
                                   "an older version may still read are kept, and listed.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    p.add_argument("--quiet", action="store_true", help="print only the totals")
    p.set_defaults(func=_cmd_gc)


def _cmd_gc(args) -> int:
    from .store import Store
    from .store.gc import collect_garbage
    from .units import format_size

    with Store(args.store, readonly=False) as store:
        rep = collect_garbage(store, dry_run=args.dry_run)
    verb = "would remove" if rep.dry_run else "removed"
    if not args.quiet:
        for rel, size in rep.removed:
            print(f"  {verb} {rel} ({format_size(size)})")
        for rel, size in rep.kept:
            print(f"  kept {rel} ({format_size(size)}): a reader holds an older version")
    print(f"{args.store}: {verb} {len(rep.removed)} file(s), {format_size(rep.removed_bytes)}; "
          f"kept {len(rep.kept)} for {len(rep.reader_versions)} live reader(s); "
          f"{rep.stale_readers} stale reader registration(s)")
    for name in rep.stale_packs:
        print(f"  pack {name!r} was made from a plan that is gone or re-sampled: remove it "
              f"with `oocstore rm {args.store} --pack {name}`")
    return 0


def _add_rm(sub) -> None:
    p = sub.add_parser("rm", help="remove a plan or a pack from a store",
                       description="Remove a plan (a sharded plan group by its group name) or a "
                                   "pack, in one transaction. A plan that packs were made from "
                                   "is refused unless --with-packs removes them too.")
    p.add_argument("store", metavar="STORE")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--plan", metavar="NAME", help="plan (or shard group) to remove")
    what.add_argument("--pack", metavar="NAME", help="pack to remove")
    p.add_argument("--with-packs", action="store_true",
                   help="with --plan: also remove the packs made from it")
    p.set_defaults(func=_cmd_rm)


def _cmd_rm(args) -> int:
    from .store import Store
    from .store.gc import remove

    if args.with_packs and args.plan is None:
        raise UsageError("--with-packs goes with --plan NAME")
    with Store(args.store, readonly=False) as store:
        out = remove(store, plan=args.plan, pack=args.pack, with_packs=args.with_packs)
    parts = [f"plan(s) {', '.join(out['plans'])}" if out["plans"] else "",
             f"pack(s) {', '.join(out['packs'])}" if out["packs"] else ""]
    print(f"{args.store}: removed {' and '.join(p for p in parts if p)} "
          f"({len(out['arrays'])} arrays)")
    return 0


# -- entry point -----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="oocstore",
                     description="Out-of-core training data and feature store: ingest datasets "
                                 "into a store, sample access plans, pack them, train from disk.")
    parser.add_argument("--version", action="version", version=f"oocstore {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is chosen (INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for add in _COMMANDS:
        add(sub)
    from .gs.cli import add_gs_train  # gs-train (imports torch only when it runs)
    add_gs_train(sub)
    return parser


_COMMANDS = [_add_ingest, _add_inspect, _add_verify, _add_sample, _add_pack, _add_plan_budget,
             _add_train, _add_gc, _add_rm]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="oocstore: %(message)s")
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe is reported here, not at interpreter exit
        return rc
    except BrokenPipeError:
        # Whoever read the output stopped early (`oocstore inspect STORE | head`): not an
        # error to report. Later flushes go nowhere; 141 is what a shell shows for SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OocError as err:
        print(f"oocstore: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # permissions, a file vanishing under us: one line, no traceback
        print(f"oocstore: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oocstore: interrupted; the store was left as it was before this command",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
