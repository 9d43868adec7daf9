"""Access plans: ``sample`` (sample mini-batches offline into a plan) and ``plan-budget``
(which batch sizes and fanouts fit a budget, before sampling)."""

from __future__ import annotations

import json

from ..errors import UsageError
from .common import add_budgets, add_flag, add_seed, add_store, command, progress


def add_sample(sub) -> None:
    p = command(sub, "sample", _cmd_sample,
                "sample mini-batch neighbourhoods offline into an access plan")
    add_store(p)
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
    add_seed(p, "random seed (default 0)")
    p.add_argument("--split", default="train",
                   help="seed split: train (shuffled per epoch) or val/test (in order)")
    p.add_argument("--name", default=None, help="plan name (default: the split name)")
    p.add_argument("--target", default=None, metavar="TYPE",
                   help="heterogeneous store: node type of the seeds (default: the store's "
                        "target); --fanouts may then be REL=F0,F1;REL=F0,F1 per relation")
    add_flag(p, "--overwrite", "replace a plan of that name (with --task link: also an edge "
                               "split cut with other options)")
    add_flag(p, "--no-verify", "skip checking the graph arrays' checksums before sampling")
    add_flag(p, "--quiet", "no progress bar or summary")
    p.add_argument("--task", default="node", choices=["node", "link"],
                   help="node: seeds are the split's nodes (default); link: seeds are training "
                        "edges of the store's edge split with negatives (docs/LINK.md)")
    p.add_argument("--neg-ratio", default=None, metavar="K",
                   help="--task link: negative pairs per positive edge (required)")
    p.add_argument("--neg-sampler", default="uniform", choices=["uniform", "degree"],
                   help="--task link: negative destinations uniform over nodes (default) or "
                        "in proportion to degree^0.75")
    p.add_argument("--edge-split", default=None, metavar="TR,VA,TE",
                   help="--task link: fractions of train/val/test edges (default 0.85,0.05,0.1; "
                        "validation and test edges leave the message-passing graph)")
    p.add_argument("--eval-negatives", type=int, default=100, metavar="M",
                   help="--task link: fixed negatives stored per held-out edge (default 100)")


def _cmd_sample(args) -> int:
    """Sample GraphSAGE-style neighbourhoods (uniform, without replacement) for several
    epochs ahead and store them in STORE as a named access plan: per batch the seeds,
    the per-layer blocks and the input nodes, plus access statistics. Deterministic for
    a seed, whatever the thread count."""
    from oocstore.samplers.neighbor import prepare_sampling, run_sampling, verify_graph

    from ..plan import list_plans, summarize
    from ..store import Store
    from ..store.info import format_plans
    from . import hetero

    if hetero.is_hetero(args.store):
        return hetero.cmd_sample(args)
    if args.target is not None:
        raise UsageError(f"--target {args.target!r}: store {args.store} has one node type; "
                         "drop --target")
    if args.task == "link":
        return _sample_link(args)
    for flag in ("neg_ratio", "edge_split"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} applies to --task link only: add "
                             "--task link, or drop it")
    with Store(args.store, readonly=False) as store:
        job = prepare_sampling(store, fanouts=args.fanouts, batch_size=args.batch_size,
                               epochs=args.epochs, seed=args.seed, name=args.name,
                               split=args.split, overwrite=args.overwrite,
                               world_size=args.world_size)
        if not args.no_verify:
            verify_graph(store, job.verify_arrays)  # before the bar: errors stay one line
        with progress(args, job.total_batches, f"sample {job.name}", unit="batch") as update:
            run_sampling(store, job, verify=False, progress=update)
        metas = {n: summarize(m) for n, m in list_plans(store).items() if n in job.plan_names}
    if not args.quiet:
        print("\n".join(format_plans(metas)))
    return 0


def _sample_link(args) -> int:
    from oocstore.samplers.link import prepare_link_sampling, run_link_sampling
    from oocstore.samplers.neighbor import verify_graph

    from ..plan import list_plans, summarize
    from ..store import Store
    from ..store.info import format_plans

    if args.neg_ratio is None:
        raise UsageError("--task link needs --neg-ratio K (negative pairs per positive edge, "
                         "e.g. --neg-ratio 1)")
    if args.world_size != 1 or args.split != "train":
        raise UsageError("--task link samples the training edges of the edge split on one "
                         "rank: drop --world-size and --split")
    with Store(args.store, readonly=False) as store:
        job = prepare_link_sampling(store, fanouts=args.fanouts, batch_size=args.batch_size,
                                    neg_ratio=args.neg_ratio, epochs=args.epochs,
                                    seed=args.seed, name=args.name,
                                    neg_sampler=args.neg_sampler, edge_split=args.edge_split,
                                    eval_negatives=args.eval_negatives,
                                    overwrite=args.overwrite)
        if not args.no_verify:
            verify_graph(store, job.verify_arrays)
        with progress(args, None, f"sample {job.name}", unit="batch") as update:
            run_link_sampling(store, job, verify=False, progress=update)
        metas = {n: summarize(m) for n, m in list_plans(store).items() if n == job.name}
    if not args.quiet:
        print("\n".join(format_plans(metas)))
    return 0


def add_plan_budget(sub) -> None:
    p = command(sub, "plan-budget", _cmd_plan_budget,
                "which batch sizes and fanouts fit a memory budget, before sampling")
    add_store(p)
    add_budgets(p, "the cpu budget the run will get (e.g. 256MiB)",
                "the gpu budget of a --device cuda run", cpu_required=True)
    p.add_argument("--fanouts", action="append", default=None, metavar="F0,F1,...",
                   help="candidate fanouts, input side first; repeat to compare several "
                        "(default: 15,10,5 and 10,5)")
    p.add_argument("--batch-sizes", default=None, metavar="B1,B2,...",
                   help="candidate seed counts per batch (default 1,2,4,...,4096)")
    p.add_argument("--split", default="train", help="seed split of the plan (default train)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs the plan will sample (default 4 for train, 1 for val/test)")
    add_seed(p, "sampler seed (default 0)")
    p.add_argument("--probe", type=int, default=16, metavar="N",
                   help="batches sampled per candidate (default 16)")
    p.add_argument("--margin", type=float, default=0.10, metavar="F",
                   help="widen the estimated largest batch by this fraction (default 0.10)")
    add_flag(p, "--json", "print one JSON object instead")


def _cmd_plan_budget(args) -> int:
    """Estimate, for each candidate fanouts and batch size, the minimum working set a
    pack of that plan would need (the figure `pack --cpu-budget` and `train
    --cpu-budget` check) from a few sampled batches, never whole epochs; print the
    headroom against the budget, the cpu cache and prefetch depth that would fit, and
    the sample / pack / train commands of the largest batch that fits. Exit status 1
    when nothing fits."""
    from oocstore.samplers.neighbor import parse_fanouts, probe_batches

    from ..pack.fit import DEFAULT_BATCH_SIZES, DEFAULT_FANOUTS, estimate, format_table, \
        parse_batch_sizes
    from ..store import Store

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
