"""``oocstore ingest SOURCE``: build a store from a dataset (the scene sources are
registered by :mod:`.scene` the same way)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from .common import Parser, add_flag, add_seed, command, progress


def _ingest_common(p: argparse.ArgumentParser, *, split: bool = True,
                   quiet: str = "no progress bar") -> None:
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="precision of the stored features (float16 halves their bytes)")
    if split:
        p.add_argument("--split", default=None, metavar="TR,VA,TE",
                       help="fractions for generated train/val/test splits where the source "
                            "has none (default 0.6,0.2,0.2)")
        # build_store's parameter behind --split (errors name it; see with_flags)
        p.set_defaults(param_aliases={"split_fractions": "split"})
    add_seed(p, "seed for everything generated (default 0)")
    add_flag(p, "--overwrite", "replace OUT if it exists (the old store stays intact until the "
                               "new one is complete)")
    add_flag(p, "--allow-nonfinite", "keep NaN/Inf feature values instead of refusing them")
    add_flag(p, "--quiet", quiet)


def _add_out(p) -> None:
    p.add_argument("out", metavar="OUT", help="store directory to create")


def add_ingest(sub):
    """Register ``ingest``; returns its SOURCE subparsers for the ``add_*`` source adders."""
    ing = sub.add_parser(
        "ingest", help="build a store from a dataset",
        description="Build a new store (graph in CSC form, node features, labels, splits) by "
                    "streaming a source into aligned files; the store appears at OUT only once "
                    "it is complete.")
    return ing.add_subparsers(dest="source", required=True, metavar="SOURCE", parser_class=Parser)


def add_synthetic(kinds) -> None:
    p = command(kinds, "synthetic", _cmd_ingest_synthetic,
                "a generated R-MAT graph with homophilous labels")
    _add_out(p)
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


def add_npz(kinds) -> None:
    p = command(kinds, "npz", _cmd_ingest_npz,
                "a GraphData-style .npz (adj_matrix, node_attr, node_label)")
    p.add_argument("src", metavar="SRC", help=".npz file")
    _add_out(p)
    add_flag(p, "--trust-pickle", "allow unpickling the scipy matrices inside SRC (only for "
                                  "files you trust)")
    _ingest_common(p)


def add_planetoid(kinds) -> None:
    p = command(kinds, "planetoid", _cmd_ingest_planetoid,
                "Planetoid ind.<name>.* files (Cora, CiteSeer)")
    p.add_argument("dir", metavar="DIR", help="directory holding the ind.NAME.* files")
    p.add_argument("name", metavar="NAME", help="dataset name, e.g. cora or citeseer")
    _add_out(p)
    _ingest_common(p, split=False)


def add_edgelist(kinds) -> None:
    p = command(kinds, "edgelist", _cmd_ingest_edgelist,
                "a SNAP-style text edge list (plain or .gz)")
    p.add_argument("src", metavar="SRC", help="edge list file (.txt or .txt.gz)")
    _add_out(p)
    add_flag(p, "--directed", "keep edges directed (default: symmetrise)")
    p.add_argument("--feat-dim", type=int, default=128, help="generated feature dimension")
    p.add_argument("--classes", type=int, default=8, help="generated number of classes")
    p.add_argument("--features", metavar="NPY", help="features .npy, one row per remapped node")
    p.add_argument("--labels", metavar="NPY", help="labels .npy, one per remapped node")
    _ingest_common(p)


def add_arrays(kinds) -> None:
    p = command(kinds, "arrays", _cmd_ingest_arrays,
                "edge_index / features / labels from .npy or zarr")
    _add_out(p)
    p.add_argument("--edge-index", required=True, metavar="NPY", help="[2, E] integer .npy")
    feats = p.add_mutually_exclusive_group(required=True)
    feats.add_argument("--features", metavar="NPY", help="[N, D] .npy")
    feats.add_argument("--features-zarr", metavar="PATH", help="[N, D] zarr v3 array")
    p.add_argument("--labels", required=True, metavar="NPY", help="[N] integer .npy")
    add_flag(p, "--directed", "keep edges directed")
    _ingest_common(p)


def _build(args, make_source) -> None:
    """Check the output and options first (cheap), then read the source and write."""
    from ..ingest import build_store, parse_split
    from ..store import Store

    fractions = parse_split(getattr(args, "split", None))
    Store.check_new_path(args.out, overwrite=args.overwrite)
    source = make_source()
    with progress(args, source.num_nodes, f"ingest {Path(args.out).name}") as update:
        build_store(args.out, source, dtype=args.dtype, split_fractions=fractions, seed=args.seed,
                    overwrite=args.overwrite, allow_nonfinite=args.allow_nonfinite, progress=update)
    if not args.quiet:
        _print_summary(args.out)


def _print_summary(path: str) -> None:
    from ..store import Store
    from ..store.info import format_info, store_info

    with Store(path) as store:
        print(format_info(store_info(store)))


def _cmd_ingest_synthetic(args) -> int:
    """Generate a Graph500/R-MAT graph with homophilous labels and class-correlated
    features (deterministic for a seed)."""
    from ..ingest.synthetic import SyntheticSpec, synthetic_source

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
    """Ingest a .npz holding pickled scipy matrices adj_matrix and node_attr plus
    node_label. Loading pickles can run code, so --trust-pickle is required."""
    from ..ingest.npz import npz_source

    _build(args, lambda: npz_source(args.src, trust_pickle=args.trust_pickle))
    return 0


def _cmd_ingest_planetoid(args) -> int:
    """Ingest the Planetoid files ind.NAME.{x,y,tx,ty,allx,ally,graph,test.index} from
    DIR with the standard split. They are pickles: only ingest files you trust."""
    from ..ingest.planetoid import planetoid_source

    _build(args, lambda: planetoid_source(args.dir, args.name))
    return 0


def _cmd_ingest_edgelist(args) -> int:
    """Ingest a whitespace-separated edge list ('#' comments, plain or gzip). Node ids
    are remapped to 0..N-1 in ascending order of the original ids. Features and labels
    are generated unless given as .npy files in that order."""
    from ..ingest.edgelist import edgelist_source

    _build(args, lambda: edgelist_source(args.src, directed=args.directed, feat_dim=args.feat_dim,
                                 classes=args.classes, features=args.features,
                                 labels=args.labels, seed=args.seed))
    return 0


def _cmd_ingest_arrays(args) -> int:
    """Ingest arrays: --edge-index (a [2, E] .npy), features from --features (.npy,
    memory-mapped) or --features-zarr (a zarr v3 array, read chunk by chunk), --labels
    (.npy)."""
    from ..ingest.arrays import arrays_source

    _build(args, lambda: arrays_source(edge_index=args.edge_index, features=args.features,
                               features_zarr=args.features_zarr, labels=args.labels,
                               directed=args.directed))
    return 0
