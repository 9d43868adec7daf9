"""Store upkeep: ``inspect``, ``verify``, ``gc`` and ``rm``."""

from __future__ import annotations

import json
import sys

from ..errors import UsageError
from .common import add_flag, add_store, command, progress


def add_inspect(sub) -> None:
    p = command(sub, "inspect", _cmd_inspect, "show a store's arrays, graph, splits and plans")
    add_store(p)
    add_flag(p, "--json", "print one JSON object instead")


def _cmd_inspect(args) -> int:
    """Show what a store holds: arrays and their sizes, degree statistics, splits,
    versions, plans and packs."""
    from ..store import Store
    from ..store.info import format_info, store_info

    from .hetero import hetero_info

    with Store(args.store) as store:
        info = store_info(store)
        hinfo, hlines = hetero_info(store)
    if hinfo is not None:
        info["hetero"] = hinfo
    if args.json:
        print(json.dumps(info, sort_keys=True))
    else:
        print("\n".join([format_info(info)] + hlines))
    return 0


def add_verify(sub) -> None:
    p = command(sub, "verify", _cmd_verify, "recompute checksums and check the graph's structure")
    add_store(p)
    add_flag(p, "--quiet", "no progress bar")


def _cmd_verify(args) -> int:
    """Read every array of the store from disk (O_DIRECT), recompute its chunk checksums
    and check the graph's structure. Exits 0 when intact, 1 naming each damaged array
    and chunk."""
    from ..store import Store
    from ..store.verify import total_bytes, verify_store

    with Store(args.store) as store:
        with progress(args, total_bytes(store), "verify", unit="B") as update:
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

def add_gc(sub) -> None:
    p = command(sub, "gc", _cmd_gc, "delete data files no version in use needs")
    add_store(p)
    add_flag(p, "--dry-run", "only list what would be deleted")
    add_flag(p, "--quiet", "print nothing but notices of stale packs")


def _cmd_gc(args) -> int:
    """Delete data files the current catalog does not name (superseded by a commit, or
    left by a crash), the sub-packs of an interrupted heterogeneous pack, and the
    registrations of readers that died. Files a live reader of
    an older version may still read are kept, and listed."""
    from ..store import Store
    from ..store.gc import collect_garbage
    from ..units import format_size

    from ..hetero.pack import remove_interrupted_packs

    with Store(args.store, readonly=False) as store:
        subpacks = remove_interrupted_packs(store, dry_run=args.dry_run)
        rep = collect_garbage(store, dry_run=args.dry_run)
    verb = "would remove" if rep.dry_run else "removed"
    if not args.quiet:
        for name in subpacks:
            print(f"  {verb} pack {name!r}: a sub-pack of an interrupted heterogeneous pack")
        for rel, size in rep.removed:
            print(f"  {verb} {rel} ({format_size(size)})")
        for rel, size in rep.kept:
            print(f"  kept {rel} ({format_size(size)}): a reader holds an older version")
        print(f"{args.store}: {verb} {len(rep.removed)} file(s), "
              f"{format_size(rep.removed_bytes)}; kept {len(rep.kept)} for "
              f"{len(rep.reader_versions)} live reader(s); {rep.stale_readers} stale reader "
              "registration(s)")
    for name in rep.stale_packs:
        print(f"  pack {name!r} was made from a plan that is gone or re-sampled: remove it "
              f"with `oocstore rm {args.store} --pack {name}`")
    return 0


def add_rm(sub) -> None:
    p = command(sub, "rm", _cmd_rm, "remove a plan or a pack from a store")
    add_store(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--plan", metavar="NAME", help="plan (or shard group) to remove")
    what.add_argument("--pack", metavar="NAME", help="pack to remove")
    p.add_argument("--with-packs", action="store_true",
                   help="with --plan: also remove the packs made from it")


def _cmd_rm(args) -> int:
    """Remove a plan (a sharded plan group by its group name) or a pack, in one
    transaction. A plan that packs were made from is refused unless --with-packs removes
    them too."""
    from ..store import Store
    from ..store.gc import remove

    if args.with_packs and args.plan is None:
        raise UsageError("--with-packs goes with --plan NAME")
    with Store(args.store, readonly=False) as store:
        out = remove(store, plan=args.plan, pack=args.pack, with_packs=args.with_packs)
    parts = [f"plan(s) {', '.join(out['plans'])}" if out["plans"] else "",
             f"pack(s) {', '.join(out['packs'])}" if out["packs"] else ""]
    print(f"{args.store}: removed {' and '.join(p for p in parts if p)} "
          f"({len(out['arrays'])} arrays)")
    return 0
