"""Heterogeneous stores on the command line: ``ingest hetero-ogb`` / ``hetero-synthetic``,
and what ``sample``, ``pack`` and ``train`` do when their STORE is heterogeneous (they
call :func:`is_hetero` first and hand over to the functions here)."""

from __future__ import annotations

import json

from ..errors import UsageError
from .common import add_flag, command


def is_hetero(path) -> bool:
    """Whether the store at ``path`` is heterogeneous (a missing store is not: the
    ordinary command then says it is missing)."""
    from ..hetero.schema import SCHEMA_KEY
    from ..store import Store

    try:
        with Store(path) as store:
            return store.get(SCHEMA_KEY) is not None
    except (OSError, ValueError):
        return False


def hetero_info(store) -> tuple[dict | None, list[str]]:
    """What ``inspect`` adds for a heterogeneous store: the schema, its typed plans and
    packs (as a dict for --json, and as lines); ``(None, [])`` for a homogeneous store."""
    from ..hetero.pack import list_hetero_packs
    from ..hetero.plan import list_hetero_plans
    from ..hetero.schema import load_schema

    schema = load_schema(store)
    if schema is None:
        return None, []
    plans, packs = list_hetero_plans(store), list_hetero_packs(store)
    info = {"schema": schema.to_dict(), "plans": sorted(plans), "packs": sorted(packs)}
    lines = [f"  heterogeneous: target {schema.target}"]
    for t in schema.type_names:
        nt = schema.node_types[t]
        feat = f"{nt.feat_dim} x {nt.dtype}" if nt.has_features else "no features"
        lab = f", {nt.num_classes} classes, splits {', '.join(nt.splits)}" if nt.has_labels else ""
        lines.append(f"    node type {t}: {nt.count} nodes, {feat}{lab}")
    for et in schema.relations:
        lines.append(f"    relation {'___'.join(et)}: {schema.edge_types[et]} edges")
    for name, m in sorted(plans.items()):
        lines.append(f"    typed plan {name}: {m['split']} split of {m['target']}, "
                     f"{m['epochs']} epoch(s) x {m['batches_per_epoch'][0]} batch(es)")
    for name, m in sorted(packs.items()):
        lines.append(f"    typed pack {name} ({m.get('layout', 'rows')}) of plan {m['plan']}: "
                     f"cache {m['cache_bytes']} bytes")
    return info, lines


def _hetero_common(p) -> None:
    from .ingest import _add_out, _ingest_common

    _add_out(p)
    _ingest_common(p, quiet="no summary")
    add_flag(p, "--add-reverse", "add (dst, rev_REL, src) for every relation (src, REL, dst), "
                                 "so messages flow both ways")


def add_hetero_ogb(kinds) -> None:
    p = command(kinds, "hetero-ogb", _cmd_ingest_ogb,
                "a heterogeneous graph as an OGB-style directory of .npy arrays")
    p.add_argument("dir", metavar="DIR", help="directory with node-feat/, edge_index/, "
                                              "node-label/, split/ (docs/HETERO.md)")
    p.add_argument("--target", default=None, metavar="TYPE",
                   help="labelled node type to classify (default: the only labelled type)")
    _hetero_common(p)


def add_hetero_synthetic(kinds) -> None:
    p = command(kinds, "hetero-synthetic", _cmd_ingest_synthetic,
                "a generated paper/author/field graph whose labels need a relation")
    p.add_argument("--papers", type=int, default=20_000, help="paper nodes (default 20000)")
    p.add_argument("--paper-dim", type=int, default=64, help="paper feature width (default 64)")
    p.add_argument("--author-dim", type=int, default=32, help="author feature width (default 32)")
    p.add_argument("--classes", type=int, default=8, help="paper classes (default 8)")
    _hetero_common(p)


def _build(args, source) -> None:
    from ..ingest.common import parse_split
    from ..hetero.ingest import build_hetero_store

    fractions = parse_split(args.split)
    schema = build_hetero_store(args.out, source, dtype=args.dtype, add_reverse=args.add_reverse,
                                overwrite=args.overwrite, split_fractions=fractions,
                                seed=args.seed, allow_nonfinite=args.allow_nonfinite)
    if not args.quiet:
        print(f"ingested {args.out}: target {schema.target}")
        for t in schema.type_names:
            nt = schema.node_types[t]
            feat = f"{nt.feat_dim} x {nt.dtype}" if nt.has_features else "no features"
            lab = f", {nt.num_classes} classes" if nt.has_labels else ""
            print(f"  node type {t}: {nt.count} nodes, {feat}{lab}")
        for et in schema.relations:
            print(f"  relation {'___'.join(et)}: {schema.edge_types[et]} edges")


def _cmd_ingest_ogb(args) -> int:
    """Ingest node types, relations, labels and splits from an OGB-style directory
    (node-feat/TYPE.npy, edge_index/SRC___REL___DST.npy, node-label/TYPE.npy,
    split/TYPE/SPLIT.npy, num-node-dict.json; layout in docs/HETERO.md). Every array is
    checked before anything is written."""
    from ..hetero.ingest import read_ogb_dir

    _check_out(args)
    _build(args, read_ogb_dir(args.dir, target=args.target))
    return 0


def _cmd_ingest_synthetic(args) -> int:
    """Generate a heterogeneous graph (papers with weak features and labels, authors with
    informative features, fields without features) whose labels a model learns only
    through the author-writes-paper relation (deterministic for a seed)."""
    from ..hetero.synthetic import HeteroSpec, hetero_synthetic_source

    _check_out(args)
    spec = HeteroSpec(papers=args.papers, paper_dim=args.paper_dim, author_dim=args.author_dim,
                      classes=args.classes, seed=args.seed)
    _build(args, hetero_synthetic_source(spec))
    return 0


def _check_out(args) -> None:
    """Refuse an existing OUT before reading or generating anything."""
    from ..store import Store

    Store.check_new_path(args.out, overwrite=args.overwrite)


def _refuse(args, flags: dict[str, object]) -> None:
    """Refuse any of ``flags`` (flag -> its default, or a tuple of accepted values) given
    with another value: options of the homogeneous path that the heterogeneous one does
    not offer (docs/HETERO.md)."""
    for flag, default in flags.items():
        allowed = default if isinstance(default, tuple) else (default,)
        if getattr(args, flag.lstrip("-").replace("-", "_"), allowed[0]) not in allowed:
            raise UsageError(f"{flag} is not supported on a heterogeneous store: drop it")


def cmd_sample(args) -> int:
    from ..hetero.sampler import sample_hetero_plan
    from ..store import Store

    _refuse(args, {"--world-size": 1, "--task": "node", "--neg-ratio": None,
                   "--edge-split": None})
    with Store(args.store, readonly=False) as store:
        meta = sample_hetero_plan(store, fanouts=args.fanouts, batch_size=args.batch_size,
                                  epochs=args.epochs, seed=args.seed, name=args.name,
                                  split=args.split, target=getattr(args, "target", None),
                                  overwrite=args.overwrite)
    if not args.quiet:
        print(f"plan {meta['name']}: {meta['epochs']} epoch(s) x {meta['batches_per_epoch'][0]} "
              f"batch(es) of {meta['target']} seeds, {meta['num_layers']} layer(s)")
        for t, s in meta["stats"].items():
            print(f"  {t}: {s['mean_input']:.1f} input nodes per batch "
                  f"({s['mean_feature_bytes'] / 1024:.1f} KiB of features)")
    return 0


def cmd_pack(args) -> int:
    from ..hetero.pack import pack_hetero
    from ..store import Store

    _refuse(args, {"--gpu-cache": None, "--gpu-budget": None, "--policy": (None, "static"),
                   "--segment-batches": None})
    with Store(args.store, readonly=False) as store:
        meta = pack_hetero(store, args.plan, name=args.name, cpu_budget=args.cpu_budget,
                           cpu_cache=args.cpu_cache, overwrite=args.overwrite,
                           layout=args.layout or "segments",
                           max_disk_blowup=args.max_disk_blowup)
    if args.json:
        print(json.dumps(meta, sort_keys=True))
    elif not args.quiet:
        print(f"pack {meta['name']} ({meta['layout']}) of plan {meta['plan']}: cache "
              f"{meta['cache_bytes']} bytes inside the cpu budget, loader floor "
              f"{meta['min_working_set']} bytes")
        for t, s in sorted(meta["types"].items()):
            seg = (f", {s['segments']} segments of {s['segment_batches']} batch(es), blowup "
                   f"{s['blowup']:.2f}") if meta["layout"] == "segments" else ""
            print(f"  {t}: {s['cached_rows']} rows cached ({s['cache_bytes']} bytes){seg}, "
                  f"expected hit rate {s['expected_hit_rate']:.1%}, read amplification "
                  f"{s['expected_read_amplification']:.2f}")
        for t in meta["featureless_types"]:
            print(f"  {t}: no features, nothing to cache")
    return 0


def cmd_train(args) -> int:
    from ..hetero.train import HeteroTrainConfig, run_hetero_training

    _refuse(args, {"--checkpoint": None, "--resume": False, "--early-stop": None,
                   "--save-model": None, "--gpu-budget": None,
                   "--heads": None, "--layers": None, "--allow-eval-split": False,
                   "--task": "node", "--eval": "sampled"})
    model = args.model if args.model in ("rgcn", "hetero-sage") else None
    if model is None:
        raise UsageError(f"--model {args.model!r} is for homogeneous stores: on a heterogeneous "
                         "store use --model rgcn or --model hetero-sage")
    cfg = HeteroTrainConfig(epochs=args.epochs, model=model, hidden=args.hidden, lr=args.lr,
                            dropout=args.dropout, weight_decay=args.weight_decay,
                            cpu_budget=args.cpu_budget, in_memory=args.in_memory, seed=args.seed,
                            device=args.device or "cpu", backend=args.backend)
    s = run_hetero_training(args.store, args.plan, cfg)
    s.pop("state_dict")
    if args.json:
        print(json.dumps(s, sort_keys=True))
        return 0
    mode = "in memory" if s["in_memory"] else f"out of core (pack {s['pack']})"
    acc = ", ".join(f"{k} acc {s[k + '_acc']:.4f}" for k in ("val", "test")
                    if s[k + "_acc"] is not None)
    print(f"trained {s['model']} on plan {s['plan']} {mode}: {acc or 'no val/test split'}")
    for e in s["epochs"]:
        val = f", val acc {e['val_acc']:.4f}" if "val_acc" in e else ""
        print(f"  epoch {e['epoch']}: {e['time_s']:.1f} s, waited {e['wait_s']:.2f} s for data, "
              f"loss {e['loss']:.4f}{val}")
    for t, st in sorted(s["types"].items()):
        print(f"  {t}: {st['rows']} rows, cpu-tier hit rate {st['hit_rate']:.1%}, read "
              f"{st['bytes_read']} bytes for {st['useful_bytes']} useful (amplification "
              f"{st['read_amplification']:.2f})")
    return 0
