"""One pack and one CPU budget across node types, and the typed readers.

Two layouts (``layout=``):

``segments`` (default)
    The homogeneous packer per feature array: each feature-bearing type's plan
    (``<plan>.<type>``, written by the sampler) is packed as ``<pack>.<type>``, a CPU
    tier of its hottest rows plus its remaining rows laid out in contiguous segments in
    read order (within ``max_disk_blowup``), read back by a
    :class:`~oocstore.tiers.reader.TieredReader` per type, all charged to one accountant.
    The sub-packs are committed one by one and the heterogeneous pack ``hpack/<name>``,
    which names them, last: it is visible only once all of them are.
``rows``
    No segments: per type a CPU tier of the hottest rows
    (:class:`~oocstore.tiers.memory.MemoryTier`) over aligned ``O_DIRECT`` row reads of the
    type's feature array (:class:`~oocstore.tiers.ssd.BaseRowTier`); no disk blowup, but
    a miss reads at least 4 KiB whatever the row width. Its tiers serve any plan of the
    store (cached rows are per node), so evaluation plans need no pack of their own.

A type without features has no tier and costs nothing in either layout.

**One budget, split by the cost model.** The loader's minimum working set is taken from
the CPU budget first (``rows``: :func:`loader_floor`, per type the base-read scratch and
two batches of rows; ``segments``: each type's packer working set without a cache —
segment buffer, batch staging, tables; both: the target's labels, the typed plan's index
and one record); what is left is the cache. Each candidate row (a row some batch reads) is worth the
read time it saves per byte of cache it takes: ``count * t_miss(type) / (row_bytes +
8)``, where ``count`` is how many batches read it (the plan's counts) and
``t_miss`` the time of one aligned row read (4 KiB-widened request at the cost model's
random-read bandwidth, :class:`~oocstore.pack.costmodel.Bandwidths`). Rows are taken in
that order, across types, until the cache is full; so narrow rows (whose misses read
mostly padding) and hot rows win, whatever their type. The split and the expected hit
rate and read amplification per type are recorded in the catalog entry. (With
``segments`` a miss is a sequential segment read, about ``row_bytes`` at the sequential
bandwidth, so the rule reduces to the access count, across types.)

Catalog ``hpack/<name>``: plan, budget, cache bytes, per type rows and expectations.
Arrays ``hpack/<name>/<type>/ids`` (sorted node ids of the CPU tier) and
``hpack/<name>/<type>/rows`` (their feature rows), written in one transaction.

The cached rows are a property of nodes, not of batches, so evaluation plans of the same
store read through the training pack's tiers (:class:`~oocstore.hetero.readers.TypedRows` accepts any node ids).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import BudgetError, FormatError, StoreExistsError, UsageError
from ..pack.costmodel import Bandwidths
from ..plan import check_plan_name
from ..store import Store
from ..store.format import ALIGN, aligned_span
from ..tiers.aio import run_bytes
from ..tiers.ssd import AIO_MAX_RUN_UNITS, base_read_buffer_bytes
from ..units import format_size
from .plan import HeteroPlanReader, catalog_entries, catalog_entry, list_hetero_plans
from .schema import HeteroSchema, check_type_name, feat_name

log = logging.getLogger(__name__)

PACK_PREFIX = "hpack/"
#: Bytes of the id kept per cached row (the tier's sorted id list).
ID_BYTES = 8


def hpack_key(name: str) -> str:
    return PACK_PREFIX + name


def list_hetero_packs(store: Store) -> dict[str, dict]:
    return catalog_entries(store, PACK_PREFIX)


#: ``hpack-pending/<name>``: the sub-packs a ``segments`` pack of ``<name>`` is writing,
#: committed before the first of them and deleted with the commit of ``hpack/<name>``.
#: One left behind marks an interrupted pack: ``gc`` removes its sub-packs
#: (:func:`remove_interrupted_packs`), and a later pack of that name may replace them.
PENDING_PREFIX = "hpack-pending/"


def _own_subpacks(store: Store, name: str) -> set[str]:
    """Sub-packs that heterogeneous pack ``name`` may replace: those of its current entry
    and those an interrupted pack of that name left (its pending entry)."""
    own = set()
    pk = store.get(hpack_key(name))
    if isinstance(pk, dict) and pk.get("layout") == "segments":
        types = pk.get("types")
        if not isinstance(types, dict):
            # a damaged or crafted entry: which sub-packs it owns is unknown, so none of
            # the packs of its names may be replaced
            raise FormatError(f"store {store.path}: catalog entry {hpack_key(name)!r} has "
                              f"types={types!r:.80}, not a mapping of node type to sub-pack: "
                              "the entry is damaged; pack under another name (--name)")
        own |= {str(v.get("pack")) for v in types.values() if isinstance(v, dict)}
    return own | set(_pending_subpacks(name, store.get(PENDING_PREFIX + name)))


def _pending_subpacks(name: str, entry: Any) -> list[str]:
    """The sub-packs pending entry ``entry`` of pack ``name`` lists that can be that
    pack's: ``<name>.<type>`` with a valid pack name and node type name. Anything else a
    damaged or crafted entry holds (another pack's name, path parts, not a list) is not
    the pending pack's to replace or remove."""
    subs = entry.get("subpacks") if isinstance(entry, dict) else None
    if not isinstance(subs, list):
        return []
    try:
        check_plan_name(name)
    except UsageError:
        return []
    out = set()
    for n in subs:
        if isinstance(n, str) and n.startswith(f"{name}."):
            try:
                check_plan_name(n)
                check_type_name(n[len(name) + 1:], "node type")
            except UsageError:
                continue
            out.add(n)
    return sorted(out)


def _committed_subpacks(store: Store) -> set[str]:
    """The sub-packs every committed heterogeneous pack reads: never an interrupted
    pack's leftovers, whatever a pending entry says."""
    live = set()
    for meta in list_hetero_packs(store).values():
        types = meta.get("types") if isinstance(meta, dict) else None
        if isinstance(types, dict):
            live |= {str(v.get("pack")) for v in types.values() if isinstance(v, dict)}
    return live


def _check_subpack_names(store: Store, name: str, names: list[str]) -> None:
    """Refuse to overwrite a pack that is not a sub-pack of this heterogeneous pack (one
    made through the API under the same name)."""
    from ..pack.format import pack_key

    own = _own_subpacks(store, name)
    for n in names:
        if store.get(pack_key(n)) is not None and n not in own:
            raise StoreExistsError(
                f"store {store.path} has a pack {n!r} that is not part of heterogeneous pack "
                f"{name!r}: its `segments` layout would overwrite it; pack under another name "
                f"(--name) or remove that pack first (`oocstore rm {store.path} --pack {n}`)")


def remove_interrupted_packs(store: Store, *, dry_run: bool = False) -> list[str]:
    """Remove the sub-packs of every interrupted ``segments`` pack (a pending entry
    without the commit of its ``hpack/<name>``; see :data:`PENDING_PREFIX`) and the
    pending entries, under the writer lock (a pack in progress holds it, so its pending
    entry is never taken for a crash). Returns the sub-packs removed (or, with
    ``dry_run``, that would be)."""
    from ..pack.format import pack_key
    from ..store.gc import remove

    gone = []
    with store.writer_lock():
        live = _committed_subpacks(store)
        for key, entry in list(store.items(PENDING_PREFIX)):
            # only names of this pack's sub-packs (<name>.<type>) that no committed
            # heterogeneous pack reads: a damaged entry naming any other pack removes nothing
            for n in _pending_subpacks(key[len(PENDING_PREFIX):], entry):
                if n not in live and store.get(pack_key(n)) is not None:
                    gone.append(n)
                    if not dry_run:
                        remove(store, pack=n)
            if not dry_run:
                with store.transaction() as txn:
                    txn.delete(key)
    return gone


def row_bytes(schema: HeteroSchema, ntype: str) -> int:
    nt = schema.node_types[ntype]
    return nt.feat_dim * np.dtype(nt.dtype).itemsize if nt.has_features else 0


def miss_bytes(rb: int) -> int:
    """Bytes one uncached row read moves (4 KiB-aligned request, worst-case alignment)."""
    return aligned_span(4096 - 1, rb)[1] if rb else 0


def loader_floor(plan: HeteroPlanReader, schema: HeteroSchema) -> list[tuple[str, int]]:
    """The loader's buffers other than the caches, itemised (what the budget pays first)."""
    T = len(plan.types)
    items = []
    for ti, t in enumerate(plan.types):
        rb = row_bytes(schema, t)
        if not rb:
            continue
        most = int(plan.index[:, 3 + ti].max()) if plan.index.size else 0
        items.append((f"{t}: base-read scratch", base_read_buffer_bytes(rb)))
        items.append((f"{t}: two batches of rows", 2 * most * (rb + 16)))
    items.append((f"{plan.target}: labels", schema.node_types[plan.target].count * 8))
    items.append(("plan index", int(plan.index.nbytes)))
    longest = int(plan.index[:, 1].max()) if plan.index.size else 0
    items.append(("plan record", 8 * longest))
    del T
    return items


def choose_cache(plan: HeteroPlanReader, schema: HeteroSchema, cache_bytes: int,
                 bw: Bandwidths = Bandwidths(), *, segments: bool = False,
                 id_bytes: int = ID_BYTES) -> dict[str, np.ndarray]:
    """The rows of each type to cache inside ``cache_bytes`` (sorted ids per type), by
    read time saved per cached byte (the module docstring)."""
    scores, types, ids, costs = [], [], [], []
    for ti, t in enumerate(plan.types):
        rb = row_bytes(schema, t)
        if not rb:
            continue
        counts = plan.counts(t)
        nz = np.flatnonzero(counts)
        t_miss = rb / bw.seq_read_Bps if segments else miss_bytes(rb) / bw.row_read_Bps
        scores.append(counts[nz] * (t_miss / (rb + id_bytes)))
        types.append(np.full(nz.size, ti, np.int32))
        ids.append(nz)
        costs.append(np.full(nz.size, rb + id_bytes, np.int64))
    out = {t: np.zeros(0, np.int64) for t in plan.types if row_bytes(schema, t)}
    if not scores or cache_bytes <= 0:
        return out
    score, typ, node, cost = (np.concatenate(a) for a in (scores, types, ids, costs))
    order = np.lexsort((node, typ, -score))  # best first; ties by type, then node id
    take = np.searchsorted(np.cumsum(cost[order]), cache_bytes, side="right")
    chosen = order[:take]
    for ti, t in enumerate(plan.types):
        if t in out:
            out[t] = np.sort(node[chosen][typ[chosen] == ti]).astype(np.int64)
    return out


def _expectations(store: Store, plan: HeteroPlanReader, schema: HeteroSchema,
                  cached: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Hits and base-array bytes the ``rows`` layout will see over the plan: each batch's
    uncached rows of a type are read as :class:`~oocstore.tiers.ssd.BaseRowTier` reads
    them (native AIO requests of 4 KiB pages, rows whose pages touch sharing one,
    :func:`~oocstore.tiers.aio.run_bytes`)."""
    out = {}
    for t, ids in cached.items():
        counts = plan.counts(t).astype(np.int64)
        total = int(counts.sum())
        hits = int(counts[ids].sum()) if ids.size else 0
        rb = row_bytes(schema, t)
        misses = total - hits
        offset = store.array_meta(feat_name(t)).offset
        unit = aligned_span(ALIGN - 1, rb)[1]
        read = 0
        if misses:
            for e, nb in enumerate(plan.batches_per_epoch):
                for b in range(nb):
                    nodes = np.sort(plan.batch(e, b).input_nodes[t])
                    miss = nodes[~np.isin(nodes, ids, assume_unique=True)] if ids.size else nodes
                    read += run_bytes(miss, offset, rb, unit, AIO_MAX_RUN_UNITS)
        out[t] = {"cached_rows": int(ids.size), "row_bytes": rb,
                  "cache_bytes": int(ids.size) * (rb + ID_BYTES),
                  "expected_hit_rate": round(hits / total, 6) if total else 1.0,
                  "expected_read_amplification": round(read / (misses * rb), 6) if misses else 1.0,
                  "expected_bytes_read": read, "accesses": total}
    return out


LAYOUTS = ("segments", "rows")


def pack_hetero(store: Store, plan_name: str | None = None, *, name: str | None = None,
                cpu_budget: int | None = None, cpu_cache: int | None = None,
                overwrite: bool = False, layout: str = "segments",
                max_disk_blowup: float = 4.0) -> dict[str, Any]:
    """Pack heterogeneous plan ``plan_name`` (default: ``train``) of a writable store:
    the CPU tier of every feature-bearing type, inside ``cpu_budget`` (the cost model
    chooses the rows; ``cpu_cache`` fixes the cache size instead, still checked against
    the budget). Everything is checked before the first transaction that writes, and the
    store's writer lock is held from the checks to the last commit: the ``segments``
    layout commits its sub-packs one by one, and another writer in between (a second
    ``pack`` of the same name) would leave ``hpack/<name>`` naming another run's sub-packs."""
    if store._lock_held:  # a caller's writer_lock() already covers the whole pack
        return _pack_hetero(store, plan_name, name, cpu_budget, cpu_cache, overwrite, layout,
                            max_disk_blowup)
    with store.writer_lock():
        return _pack_hetero(store, plan_name, name, cpu_budget, cpu_cache, overwrite, layout,
                            max_disk_blowup)


def _pack_hetero(store: Store, plan_name, name, cpu_budget, cpu_cache, overwrite, layout,
                 max_disk_blowup) -> dict[str, Any]:
    schema = store_schema(store)
    plan_name = plan_name or ("train" if "train" in list_hetero_plans(store) else None)
    if plan_name is None:
        raise UsageError(f"store {store.path} has no heterogeneous plan named 'train': name one "
                         "with plan=... (or sample one first)")
    plan = HeteroPlanReader(store, plan_name)
    name = check_plan_name(name or plan_name)
    if store.get(hpack_key(name)) is not None and not overwrite:
        raise StoreExistsError(f"store {store.path} already has a pack {name!r}: pass "
                               "overwrite=True to replace it")
    if cpu_budget is None and cpu_cache is None:
        raise UsageError("give cpu_budget=... (the cache is sized inside it) or cpu_cache=...")
    if layout not in LAYOUTS:
        raise UsageError(f"layout={layout!r}: use one of {', '.join(LAYOUTS)}")
    if layout == "segments":
        try:
            return _pack_segments(store, plan, schema, name, cpu_budget, cpu_cache,
                                  max_disk_blowup)
        finally:
            plan.close()
    floor = loader_floor(plan, schema)
    need = sum(b for _, b in floor)
    if cpu_budget is not None and need > cpu_budget:
        listed = ", ".join(f"{w} {format_size(b)}" for w, b in floor)
        raise BudgetError(f"cpu_budget={format_size(cpu_budget)} is too small for the loader of "
                          f"plan {plan_name!r}: it needs {format_size(need)} before any cache "
                          f"({listed}): raise cpu_budget or sample smaller batches")
    room = cpu_budget - need if cpu_budget is not None else None
    cache = cpu_cache if cpu_cache is not None else room
    if room is not None and cache > room:
        raise BudgetError(f"cpu_cache={format_size(cache)} does not fit cpu_budget="
                          f"{format_size(cpu_budget)}: the loader needs {format_size(need)} "
                          f"besides it; lower cpu_cache to at most {format_size(room)}")
    cached = choose_cache(plan, schema, int(cache))
    expect = _expectations(store, plan, schema, cached)
    with store.transaction() as txn:
        for t, ids in cached.items():
            txn.write_array(f"hpack/{name}/{t}/ids", ids, subdir="packs")
            w = txn.array_writer(f"hpack/{name}/{t}/rows", np.dtype(schema.node_types[t].dtype),
                                 (schema.node_types[t].feat_dim,), subdir="packs")
            feats = store.array(feat_name(t))
            for lo in range(0, ids.size, 1 << 16):
                w.append(np.asarray(feats[ids[lo:lo + (1 << 16)]]))
            w.close()
        meta = {"name": name, "layout": "rows", "plan": plan_name,
                "plan_fingerprint": plan.meta["fingerprint"],
                "plan_version": plan.meta["store_version"],
                "cpu_budget": cpu_budget, "cache_bytes": int(cache),
                "min_working_set": int(need), "types": expect,
                "featureless_types": [t for t in plan.types if t not in cached]}
        txn.put(hpack_key(name), meta)
    plan.close()
    return meta


def loader_extras(plan: HeteroPlanReader, schema: HeteroSchema) -> list[tuple[str, int]]:
    """What the typed loader holds besides the per-type readers (both layouts)."""
    longest = int(plan.index[:, 1].max()) if plan.index.size else 0
    return [(f"{plan.target}: labels", schema.node_types[plan.target].count * 8),
            ("plan index", int(plan.index.nbytes)), ("plan record", 8 * longest)]


def _pack_segments(store: Store, plan: HeteroPlanReader, schema: HeteroSchema, name: str,
                   cpu_budget: int | None, cpu_cache: int | None,
                   max_disk_blowup: float) -> dict[str, Any]:
    """The ``segments`` layout (module docstring): checks the whole budget, then packs
    each type's plan with the homogeneous packer and commits the heterogeneous entry."""
    import dataclasses

    from ..pack import PackOptions, pack_plan
    from ..pack.layout import plan_layout
    from ..plan import PlanReader

    fplans = plan.meta.get("feature_plans")
    if not fplans:
        raise UsageError(f"plan {plan.name!r} has no per-type feature plans (sampled by an older "
                         "version): re-sample it with --overwrite, or pack with layout='rows'")
    readers = {t: PlanReader(store, p) for t, p in sorted(fplans.items())}
    try:
        base = {t: PackOptions(features=feat_name(t), max_disk_blowup=max_disk_blowup)
                for t in readers}
        floor = [(f"{t}: packed reader without cache",
                  plan_layout(store, r, base[t]).min_working_set["cpu"]) for t, r in readers.items()]
        floor += loader_extras(plan, schema)
        need = sum(b for _, b in floor)
        listed = ", ".join(f"{w} {format_size(b)}" for w, b in floor)
        if cpu_budget is not None and need > cpu_budget:
            raise BudgetError(f"cpu_budget={format_size(cpu_budget)} is too small for the loader "
                              f"of plan {plan.name!r}: it needs {format_size(need)} before any "
                              f"cache ({listed}): raise cpu_budget, sample smaller batches, "
                              "raise max_disk_blowup (shorter segments) or pack with "
                              "layout='rows'")
        cache = cpu_cache if cpu_cache is not None else cpu_budget - need
        cached = choose_cache(plan, schema, int(cache), segments=True, id_bytes=0)
        options = {t: dataclasses.replace(base[t], cpu_cache=int(cached[t].size) * row_bytes(
            schema, t)) for t in readers}
        layouts = {t: plan_layout(store, r, options[t]) for t, r in readers.items()}
        total = sum(lay.min_working_set["cpu"] for lay in layouts.values()) + sum(
            b for _, b in loader_extras(plan, schema))
        if cpu_budget is not None and total > cpu_budget:
            raise BudgetError(f"cpu_budget={format_size(cpu_budget)}: the packed readers with "
                              f"their caches need {format_size(total)}: lower cpu_cache")
    finally:
        for r in readers.values():
            r.close()
    subnames = [f"{name}.{t}" for t in sorted(readers)]
    _check_subpack_names(store, name, subnames)
    with store.transaction() as txn:
        # Replacing a pack: withdraw its entry first, so that a crash between the sub-packs
        # leaves no hpack/<name> naming a mix of old and new sub-packs (the next pack of
        # that name then starts over) instead of one whose recorded caches are wrong; the
        # pending entry says which sub-packs such a crash may leave (for gc).
        if store.get(hpack_key(name)) is not None:
            txn.delete(hpack_key(name))
        txn.put(PENDING_PREFIX + name, {"subpacks": sorted(set(subnames)
                                                           | _own_subpacks(store, name))})
    sub = {}
    for t in sorted(readers):
        sub[t] = pack_plan(store, fplans[t], name=f"{name}.{t}", options=options[t],
                           overwrite=True)
    types = {}
    for t, m in sub.items():
        counts = plan.counts(t).astype(np.int64)
        total_acc = int(counts.sum())
        hits = int(np.sort(counts)[::-1][:m.cpu_rows].sum()) if m.cpu_rows else 0
        types[t] = {"pack": m.name, "cached_rows": m.cpu_rows, "row_bytes": m.row_bytes,
                    "cache_bytes": m.cpu_rows * m.row_bytes, "segments": m.num_segments,
                    "segment_batches": m.segment_batches, "blowup": m.blowup,
                    "expected_hit_rate": round(hits / total_acc, 6) if total_acc else 1.0,
                    "expected_read_amplification": m.expected_read_amplification,
                    "accesses": total_acc}
    meta = {"name": name, "layout": "segments", "plan": plan.name,
            "plan_fingerprint": plan.meta["fingerprint"],
            "plan_version": plan.meta["store_version"], "cpu_budget": cpu_budget,
            "cache_bytes": int(cache), "min_working_set": int(need), "types": types,
            "max_disk_blowup": max_disk_blowup,
            "featureless_types": [t for t in plan.types if t not in types]}
    with store.transaction() as txn:
        txn.put(hpack_key(name), meta)
        txn.delete(PENDING_PREFIX + name)
    return meta


def store_schema(store: Store) -> HeteroSchema:
    from .schema import require_schema

    return require_schema(store)


def load_hetero_pack(store: Store, name: str) -> dict[str, Any]:
    return catalog_entry(store, PACK_PREFIX, name, "heterogeneous pack",
                         f"oocstore pack {store.path} --plan PLAN --name {name} --cpu-budget SIZE")
