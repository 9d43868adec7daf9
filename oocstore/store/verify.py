"""Integrity checks: recompute every chunk checksum, check the graph's structure.

Reads go through :class:`DirectReader` (O_DIRECT where possible), so ``verify`` checks
what is on the disk, not a copy in the page cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .catalog import CATALOG_DIR
from .files import DirectReader, aligned_empty, checksum
from ..errors import FormatError
from .format import ALIGN, align_up, check_entry
from .store import Store

_READ_BYTES = 16 << 20


@dataclass(frozen=True)
class Damage:
    array: str
    file: str
    chunk: int | None  # None: the whole array (missing or structurally wrong)
    detail: str

    def __str__(self) -> str:
        if not self.array:
            return f"catalog ({self.file}): {self.detail}"
        where = f"chunk {self.chunk}" if self.chunk is not None else "file"
        return f"array {self.array!r} ({self.file}), {where}: {self.detail}"


def verify_store(store: Store, *, progress: Callable[[int], None] | None = None) -> list[Damage]:
    """Return every damage found (empty when the store is intact): the catalog's own
    checksum, then every array's chunks and the graph's structure."""
    problem = store.catalog.check()
    catalog = [Damage("", f"{CATALOG_DIR}/data.mdb", None, problem)] if problem else []
    catalog += [Damage("", f"{CATALOG_DIR}/data.mdb", None, p) for p in catalog_problems(store)]
    return catalog + verify_arrays(store, sorted(store.arrays), progress=progress, graph=True)


def catalog_problems(store: Store) -> list[str]:
    """What makes the catalog incomplete even when every entry parses: no committed
    version (an empty store, e.g. one whose ingest never committed), no array at all, or
    an entry naming an array the catalog does not hold (the graph's ``indptr`` /
    ``indices``, a split, a plan's or a pack's arrays, a pack's base features)."""
    if store.version < 1 or store.get("meta") is None:
        return ["the catalog holds no committed version: the store is empty (an ingest into "
                "it never finished); re-create it with `oocstore ingest`"]
    if not store.arrays:
        return ["the catalog holds no array: the store is empty; re-create it"]
    out = []

    def need(array, entry: str) -> None:
        if not isinstance(array, str) or not store.has_array(array):
            out.append(f"entry {entry!r} names array {array!r}, which the catalog does not "
                       "hold: the store is incomplete; re-create what that entry describes")

    if store.graph is not None:
        need(store.graph.indptr, "graph")
        need(store.graph.indices, "graph")
    for split, array in sorted(store.splits.items()):
        need(array, f"splits/{split}")
    for kind in ("plan", "pack"):
        for key, entry in store.items(f"{kind}/"):
            try:
                check_entry(kind, key, entry)
            except FormatError as err:
                out.append(str(err))
                continue
            for part, array in sorted(entry.get("arrays", {}).items()):
                need(array, f"{key}/arrays/{part}")
            if kind == "pack" and "features" in entry:
                need(entry["features"], f"{key}/features")
    if store.get("scene/lod") is not None:  # a scene's level-of-detail hierarchy
        from ..gs.lod import hierarchy_problems

        out.extend(hierarchy_problems(store))
    return out


def verify_arrays(store: Store, names, *, progress: Callable[[int], None] | None = None,
                  graph: bool = False) -> list[Damage]:
    """Recompute the checksums of the arrays ``names``; with ``graph``, also check the
    graph's structure when the checksums are intact."""
    damage: list[Damage] = []
    for name in names:
        damage.extend(_verify_array(store, name, progress))
    store.check_not_replaced()  # what was read belongs to the store that was opened
    g = store.graph
    if graph and not damage and g is not None and store.has_array(g.indptr) \
            and store.has_array(g.indices):  # a missing one is reported by catalog_problems
        damage.extend(_verify_graph(store))
    return damage


def total_bytes(store: Store) -> int:
    return sum(m.nbytes for m in store.arrays.values())


def _verify_array(store: Store, name: str, progress) -> list[Damage]:
    meta = store.array_meta(name)
    path = store.file_path(meta)
    sums = store.checksums(name)
    if len(sums) != meta.num_chunks:
        return [Damage(name, meta.file, None, f"catalog lists {len(sums)} checksums for "
                       f"{meta.num_chunks} chunks")]
    if not path.exists():
        return [Damage(name, meta.file, None, "file is missing")]
    damage = []
    with DirectReader(path) as reader:
        need = meta.offset + meta.nbytes
        if reader.size < need:
            first_bad = max(0, (reader.size - meta.offset)) // meta.chunk_bytes
            damage.append(Damage(name, meta.file, first_bad,
                                 f"file is truncated: {reader.size} bytes, needs {need}"))
        # Each read starts on a chunk boundary and (for O_DIRECT) on an ALIGN boundary.
        unit = math.lcm(meta.chunk_bytes, ALIGN)
        step = max(unit, _READ_BYTES // unit * unit)
        buf = aligned_empty(align_up(step))
        for start in range(0, meta.nbytes, step):
            length = min(step, meta.nbytes - start)
            got = reader.read_into(buf[: align_up(length)], meta.offset + start)
            got = min(got, length)
            for c in range(0, length, meta.chunk_bytes):
                idx = (start + c) // meta.chunk_bytes
                clen = min(meta.chunk_bytes, length - c)
                if c + clen > got:
                    break  # reported as truncation above
                crc = checksum(buf[c:c + clen])
                if crc != sums[idx]:
                    lo = meta.offset + start + c
                    damage.append(Damage(name, meta.file, idx,
                                         f"checksum mismatch in bytes {lo}..{lo + clen}"))
            if progress:
                progress(length)
    return damage


def _verify_graph(store: Store) -> list[Damage]:
    g = store.graph
    indptr, indices = store.csc()
    out = []
    if indptr.shape != (g.num_nodes + 1,):
        out.append(Damage(g.indptr, store.array_meta(g.indptr).file, None,
                          f"indptr has shape {indptr.shape}, expected ({g.num_nodes + 1},)"))
        return out
    if indptr[0] != 0 or indptr[-1] != g.num_edges or indices.shape != (g.num_edges,):
        out.append(Damage(g.indptr, store.array_meta(g.indptr).file, None,
                          "indptr does not span the edge list"))
        return out
    step = 1 << 22
    for lo in range(0, g.num_nodes, step):
        if np.any(np.diff(indptr[lo:lo + step + 1]) < 0):
            out.append(Damage(g.indptr, store.array_meta(g.indptr).file, None,
                              "indptr is not non-decreasing"))
            break
    for lo in range(0, g.num_edges, step):
        chunk = indices[lo:lo + step]
        if chunk.size and (chunk.min() < 0 or chunk.max() >= g.num_nodes):
            out.append(Damage(g.indices, store.array_meta(g.indices).file, None,
                              f"edge sources outside 0..{g.num_nodes - 1}"))
            break
    return out
