"""Reclaiming space: ``oocstore gc`` and ``oocstore rm``.

**gc** deletes data files that the current catalog does not name — files superseded by
a commit whose clean-up was skipped because a reader still held an older version (see
:mod:`.readers`), and files left by a crashed writer — plus the registrations of readers
that died. It runs under the writer lock (so no transaction is writing temporary files
meanwhile) and never deletes a file that the current version names; superseded ``*.bin``
files stay while a live reader holds an older version, and are listed as kept.

**rm** removes a plan or a pack, in one ordinary transaction (catalog entries and the
arrays they own; the files then follow the rule above). A plan that packs were made from
is refused unless ``with_packs`` removes those packs too; a sharded plan group is
removed by its group name, every shard together.

Plans and packs are read here as raw catalog values (``plan/<name>``, ``pack/<name>``
with their ``arrays`` and ``plan`` fields), so the store layer does not import them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StoreNotFoundError, UsageError
from .catalog import CATALOG_DIR
from .format import check_entry, check_name
from .readers import live_versions
from .store import Store


@dataclass
class GcReport:
    """What :func:`collect_garbage` removed (or, with ``dry_run``, would remove)."""

    removed: list[tuple[str, int]] = field(default_factory=list)  # (relative path, bytes)
    kept: list[tuple[str, int]] = field(default_factory=list)  # held for older readers
    reader_versions: list[int] = field(default_factory=list)  # live readers, other objects
    stale_readers: int = 0
    stale_packs: list[str] = field(default_factory=list)  # made from a superseded plan
    dry_run: bool = False

    @property
    def removed_bytes(self) -> int:
        return sum(n for _, n in self.removed)

    @property
    def kept_bytes(self) -> int:
        return sum(n for _, n in self.kept)


def collect_garbage(store: Store, *, dry_run: bool = False) -> GcReport:
    """Remove unreferenced data files of ``store`` (opened writable) that no live reader
    may need; see the module docstring."""
    if store.readonly:
        raise UsageError(f"store {store.path} was opened read-only: gc needs "
                         "Store(path, readonly=False)")
    report = GcReport(dry_run=dry_run)
    store._acquire_lock()
    try:
        store.refresh()
        versions, report.stale_readers = live_versions(store.path / CATALOG_DIR,
                                                       remove_stale=not dry_run)
        mine = store._reader.version if store._reader is not None else None
        if mine in versions:
            versions.remove(mine)
        report.reader_versions = sorted(versions)
        blocked = any(v < store.version for v in versions)
        for p in store.unreferenced_files():
            rel = p.relative_to(store.path).as_posix()
            size = _size(p)
            if p.suffix == ".bin" and blocked:
                report.kept.append((rel, size))
                continue
            if not dry_run and not store.remove_data_file(p):
                continue
            report.removed.append((rel, size))
        report.stale_packs = stale_packs(store)
    finally:
        store._release_lock()
    return report


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def stale_packs(store: Store) -> list[str]:
    """Packs whose plan is gone or was re-sampled since (they cannot be read)."""
    plans = _entries(store, "plan")
    out = []
    for name, pack in _entries(store, "pack").items():
        plan = plans.get(pack.get("plan")) if isinstance(pack.get("plan"), str) else None
        index = plan.get("arrays", {}).get("index") if plan is not None else None
        if index is None or not store.has_array(index) or \
                store.array_meta(index).version != pack.get("plan_version"):
            out.append(name)
    return sorted(out)


def _entries(store: Store, kind: str) -> dict[str, dict]:
    """``{name: entry}`` of the plans or packs, each checked (:func:`check_entry`): a
    hostile or damaged entry is refused by key before anything is deleted."""
    return {k[len(kind) + 1:]: check_entry(kind, k, v) for k, v in store.items(f"{kind}/")}


def _owned_arrays(store: Store, kind: str, name: str, entry: dict) -> set[str]:
    """The arrays of plan/pack ``name``: those its entry lists and any other named
    ``<kind>/<name>/<part>`` (one level: ``pack/p/`` never reaches ``pack/p/q/...``)."""
    prefix = f"{kind}/{name}/"
    return set(entry.get("arrays", {}).values()) | {
        a for a in store.arrays if a.startswith(prefix) and "/" not in a[len(prefix):]}


def remove(store: Store, *, plan: str | None = None, pack: str | None = None,
           with_packs: bool = False) -> dict[str, list[str]]:
    """Remove a plan (or a shard group) or a pack from ``store`` (writable) in one
    transaction; returns ``{"plans": [...], "packs": [...], "arrays": [...]}`` removed."""
    if (plan is None) == (pack is None):
        raise UsageError("give exactly one of plan=NAME or pack=NAME")
    check_name(plan if pack is None else pack, "plan" if pack is None else "pack")
    if store.readonly:
        raise UsageError(f"store {store.path} was opened read-only: rm needs "
                         "Store(path, readonly=False)")
    with store.transaction() as txn:  # judged against the latest catalog, under the lock
        drop_plans, drop_packs, arrays = _select(store, plan, pack, with_packs)
        for kind, names in (("plan", drop_plans), ("pack", drop_packs)):
            for n in names:
                txn.delete(f"{kind}/{n}")
        for a in sorted(arrays):
            txn.delete_array(a)
    return {"plans": drop_plans, "packs": drop_packs, "arrays": sorted(arrays)}


def _select(store: Store, plan, pack, with_packs):
    plans, packs = _entries(store, "plan"), _entries(store, "pack")
    drop_plans: list[str] = []
    drop_packs: list[str] = []
    if pack is not None:
        if pack not in packs:
            raise StoreNotFoundError(f"store {store.path} has no pack {pack!r} (it has: "
                                     f"{', '.join(sorted(packs)) or 'none'})")
        drop_packs = [pack]
    else:
        if plan in plans:
            drop_plans = [plan]
        else:
            drop_plans = sorted(n for n, m in plans.items() if m.get("shard_group") == plan)
            if not drop_plans:
                raise StoreNotFoundError(f"store {store.path} has no plan {plan!r} (it has: "
                                         f"{', '.join(sorted(plans)) or 'none'})")
        users = sorted(n for n, m in packs.items() if m.get("plan") in drop_plans)
        if users and not with_packs:
            raise UsageError(f"plan {plan!r} of {store.path} is used by pack(s) "
                             f"{', '.join(users)}: remove them first (`oocstore rm "
                             f"{store.path} --pack NAME`) or pass with_packs=True")
        drop_packs = users
    arrays: set[str] = set()
    for kind, names, entries in (("plan", drop_plans, plans), ("pack", drop_packs, packs)):
        for n in names:
            arrays |= _owned_arrays(store, kind, n, entries[n])
    return drop_plans, drop_packs, arrays

