"""What takes a store's disk space: the part of ``oocstore inspect`` that says it.

Every data file on disk is attributed to exactly one owner: the base arrays (features,
graph, labels, splits, scene blocks), a plan, a pack (its tier rows, its segments, its
tables), or nobody — files the current catalog no longer names (superseded by a commit
while a reader held the old version, or left by a crash), which ``oocstore gc`` frees.
Packs made from a plan that was removed or re-sampled since (unreadable, see
:func:`~oocstore.store.gc.stale_packs`) are named with the bytes ``oocstore rm`` frees.
The plans and packs that ``oocstore train`` creates for evaluation (``*-eval``, see
``oocstore/train/prepare.py``) are totalled apart, since the user never asked for them
by name. Sizes are the files' sizes (4 KiB-aligned), so the parts add up to the total
of the data directories; the catalog is counted on its own.

Plans and packs are read as raw catalog values (``plan/<name>``, ``pack/<name>``) and
their arrays by name (``plan/<name>/...``, ``pack/<name>/...``), so the store layer does
not import the plan or pack formats.
"""

from __future__ import annotations

import os
from typing import Any

from ..units import format_size
from .catalog import CATALOG_DIR
from .gc import stale_packs
from .store import Store

#: Pack arrays holding tier rows and segments; the other pack arrays are its tables.
_TIER_ARRAYS = ("gpu_rows", "cpu_rows")
_SEGMENT_ARRAYS = ("rows",)


def is_eval_name(name: str) -> bool:
    """Whether plan (or shard, or pack) ``name`` is one ``train`` made for evaluation."""
    return name.split(".rank")[0].endswith("-eval")


def _file_size(path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _tree_size(root) -> int:
    total = 0
    for d, _, files in os.walk(root):
        total += sum(_file_size(os.path.join(d, f)) for f in files)
    return total


def disk_usage(store: Store) -> dict[str, Any]:
    """JSON-able: bytes on disk by owner (see the module docstring)."""
    seen: set[str] = set()
    base = 0
    plans: dict[str, int] = {}
    packs: dict[str, dict[str, Any]] = {}
    pack_plans = {k[len("pack/"):]: v.get("plan") for k, v in store.items("pack/")
                  if "/" not in k[len("pack/"):] and isinstance(v, dict)}
    for name, meta in sorted(store.arrays.items()):
        if meta.file in seen:  # arrays sharing a file (scene blocks): counted once
            continue
        seen.add(meta.file)
        size = _file_size(store.path / meta.file)
        parts = name.split("/")
        if parts[0] == "plan" and len(parts) == 3:
            plans[parts[1]] = plans.get(parts[1], 0) + size
        elif parts[0] == "pack" and len(parts) == 3:
            p = packs.setdefault(parts[1], {"plan": pack_plans.get(parts[1]), "bytes": 0,
                                            "tiers_bytes": 0, "segments_bytes": 0,
                                            "tables_bytes": 0})
            p["bytes"] += size
            kind = ("tiers_bytes" if parts[2] in _TIER_ARRAYS else "segments_bytes"
                    if parts[2] in _SEGMENT_ARRAYS else "tables_bytes")
            p[kind] += size
        else:
            base += size
    unreachable = [(p.relative_to(store.path).as_posix(), _file_size(p))
                   for p in store.unreferenced_files()]
    features = store.array_meta("features").nbytes if store.has_array("features") else 0
    catalog = _tree_size(store.path / CATALOG_DIR)
    plan_bytes = sum(plans.values())
    pack_bytes = sum(p["bytes"] for p in packs.values())
    unreachable_bytes = sum(n for _, n in unreachable)
    total = base + plan_bytes + pack_bytes + unreachable_bytes + catalog
    return {
        "total_bytes": total,
        "feature_bytes": features,
        "times_features": round(total / features, 3) if features else None,
        "base_bytes": base,
        "catalog_bytes": catalog,
        "plans_bytes": plan_bytes,
        "plans": plans,
        "eval_plans_bytes": sum(n for k, n in plans.items() if is_eval_name(k)),
        "packs_bytes": pack_bytes,
        "packs": packs,
        "eval_packs_bytes": sum(p["bytes"] for k, p in packs.items()
                                if is_eval_name(p["plan"] or k)),
        "unreachable_bytes": unreachable_bytes,
        "unreachable_files": [f for f, _ in unreachable],
        "stale_packs": {n: packs[n]["bytes"] for n in stale_packs(store) if n in packs},
    }


def format_disk_usage(d: dict[str, Any]) -> list[str]:
    """Human lines for :func:`disk_usage`."""
    times = f" = {d['times_features']:.2f}x the features" if d["times_features"] else ""
    lines = [f"  disk: {format_size(d['total_bytes'])} in all{times}: base arrays "
             f"{format_size(d['base_bytes'])}, plans {format_size(d['plans_bytes'])}, packs "
             f"{format_size(d['packs_bytes'])}, unreachable {format_size(d['unreachable_bytes'])}, "
             f"catalog {format_size(d['catalog_bytes'])}"]
    evals = [k for k in d["plans"] if is_eval_name(k)]
    if evals:
        lines.append(f"    evaluation plans and packs made by `train` ({', '.join(evals)}): "
                     f"{format_size(d['eval_plans_bytes'] + d['eval_packs_bytes'])}")
    for name, p in d["packs"].items():
        lines.append(f"    pack {name}: {format_size(p['bytes'])} (tier rows "
                     f"{format_size(p['tiers_bytes'])}, segments "
                     f"{format_size(p['segments_bytes'])}, tables "
                     f"{format_size(p['tables_bytes'])})")
    for name, size in d["stale_packs"].items():
        lines.append(f"    pack {name} was made from a plan that is gone or re-sampled: "
                     f"`oocstore rm STORE --pack {name}` frees {format_size(size)}")
    if d["unreachable_files"]:
        lines.append(f"    {len(d['unreachable_files'])} file(s) no longer in the catalog "
                     f"({format_size(d['unreachable_bytes'])}): `oocstore gc` frees those no "
                     "live reader needs")
    return lines
