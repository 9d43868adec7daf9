"""``oocstore pack``: lay a plan's reads out on disk and size the cache tiers (by hand,
or inside a budget by :func:`oocstore.pack.auto.choose_options`)."""

from __future__ import annotations

import json

from .common import add_budgets, add_flag, add_store, command, progress, size
from .distributed import launched


def add_pack(sub) -> None:
    from ..pack.policies import POLICIES

    p = command(sub, "pack", _cmd_pack,
                "lay out a plan's feature reads contiguously on disk, choose cache tiers")
    add_store(p)
    p.add_argument("--plan", default=None,
                   help="plan to pack (default: the most recent train-split plan; under "
                        "torchrun, the most recent one for this world size); for a plan "
                        "sampled with --world-size, every shard (under torchrun: each rank "
                        "its own)")
    p.add_argument("--name", default=None,
                   help="pack name (default: the plan's name; NAME.rankR for shards)")
    p.add_argument("--gpu-cache", type=size, default=None, metavar="SIZE",
                   help="bytes of the GPU tier (e.g. 0, 512MiB)")
    p.add_argument("--cpu-cache", type=size, default=None, metavar="SIZE",
                   help="bytes of the CPU tier (e.g. 0, 2GiB)")
    p.add_argument("--max-disk-blowup", type=float, default=4.0, metavar="X",
                   help="packed bytes at most X times the feature bytes, over all epochs "
                        "(default 4); batches beyond it read rows from the base array")
    p.add_argument("--policy", choices=sorted(POLICIES), default=None,
                   help="CPU tier (default: with cache sizes chosen inside --cpu-budget, static "
                        "or belady, whichever the cost model predicts faster; else static): "
                        "static (the most accessed rows, fixed) or belady (a schedule "
                        "worked out from the plan's known future: admit and evict as Belady's "
                        "optimal policy would; fewer packed rows, restarts each epoch); s3fifo "
                        "and sieve simulate those online policies over the plan the same way")
    p.add_argument("--segment-batches", type=int, default=None, metavar="S",
                   help="batches per segment (default: the smallest that fits the blowup cap)")
    p.add_argument("--pack-memory", type=size, default=None, metavar="SIZE",
                   help="host memory for output rows assembled per pass over the base array "
                        "(default 256MiB); more memory means fewer passes")
    p.add_argument("--copy", choices=["auto", "buckets", "rescans"], default="auto",
                   help="how rows reach the output when it exceeds --pack-memory: base "
                        "scans plus temporary buckets (as few scans as keep the buckets in "
                        "the page cache, when that is cheaper), one scan per window, or "
                        "whichever moves fewer bytes (default)")
    p.add_argument("--layout", choices=["segments", "rows"], default=None,
                   help="heterogeneous store: segments (default: each node type's rows packed "
                        "by this packer) or rows (a cpu tier over aligned row reads)")
    add_budgets(p, "refuse a pack whose minimum CPU working set exceeds this",
                "refuse a pack whose minimum GPU working set exceeds this")
    add_flag(p, "--no-probe", "with automatic cache sizes, use default bandwidths instead of "
                              "probing")
    add_flag(p, "--overwrite", "replace a pack of that name")
    add_flag(p, "--json", "print the pack's summary as JSON (one line per shard)")
    add_flag(p, "--quiet", "no progress bar or summary")
    p.set_defaults(param_aliases={"window_bytes": "pack_memory"})


def _cmd_pack(args) -> int:
    """Pack an access plan: the most accessed rows go to the GPU and CPU tiers, and the
    remaining rows of each segment of consecutive batches are written contiguously, in
    the order the loader reads them, so every segment is one sequential O_DIRECT read.
    Without --cpu-cache/--gpu-cache, the cache sizes are chosen inside --cpu-budget (and
    --gpu-budget) by a cost model that predicts epoch load time from bandwidths probed
    on this disk."""
    from ..plan import list_plans, plans_to_pack, resolve_plan, shard_name
    from ..store import Store
    from . import hetero

    if hetero.is_hetero(args.store):
        return hetero.cmd_pack(args)
    if args.layout is not None:
        from ..errors import UsageError
        raise UsageError(f"--layout {args.layout}: store {args.store} has one node type; drop "
                         "--layout")

    def name_for(meta) -> str | None:
        if args.name is None or not meta.sharded:
            return args.name
        return shard_name(args.name, meta.shard_rank)

    with launched("cpu") as info:
        if info is not None:
            # Under torchrun each rank packs its own shard; ranks on one machine take turns
            # (a store has one writer at a time), machines (each with its own copy) in
            # parallel.
            from ..distributed import in_turns_per_node

            def mine() -> None:
                with Store(args.store, readonly=False) as store:
                    plan = resolve_plan(store, args.plan, rank=info.rank,
                                        world_size=info.world_size)
                    _pack_one(args, store, plan, name_for(list_plans(store)[plan]))

            in_turns_per_node(mine)
            return 0
    # Outside torchrun: the plan, or every shard of a group.
    with Store(args.store, readonly=False) as store:
        for plan in plans_to_pack(store, args.plan):
            _pack_one(args, store, plan, name_for(list_plans(store)[plan]))
    return 0


def _pack_one(args, store, plan_name: str, pack_name: str | None) -> None:
    from ..pack import pack_plan
    from ..pack.auto import choose_options, prediction
    from ..plan import PlanReader
    from ..store.info import format_packs, pack_summary

    choice = choose_options(
        store, PlanReader(store, plan_name), gpu_cache=args.gpu_cache, cpu_cache=args.cpu_cache,
        cpu_budget=args.cpu_budget, gpu_budget=args.gpu_budget,
        max_disk_blowup=args.max_disk_blowup, policy=args.policy,
        segment_batches=args.segment_batches, copy=args.copy, window_bytes=args.pack_memory,
        probe_disk=not args.no_probe)
    total = store.array_meta("features").nbytes
    with progress(args, None, f"pack {pack_name or plan_name}", unit="B") as update:
        meta = pack_plan(store, plan_name, name=pack_name, options=choice.options,
                         overwrite=args.overwrite, progress=update)
    summary = pack_summary(meta, total)
    summary["predicted_epoch_load_s"] = prediction(store, plan_name, choice)["seconds"]
    summary["auto_split"] = choice.auto
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    elif not args.quiet:
        print("\n".join(format_packs({meta.name: summary})))
        print(f"  predicted epoch-0 load time: {summary['predicted_epoch_load_s']:.2f} s "
              f"({'probed' if choice.probed else 'default'} bandwidths)")
