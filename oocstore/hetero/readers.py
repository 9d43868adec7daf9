"""The per-type feature readers of a heterogeneous loader.

:class:`TypedRows` serves the ``rows`` layout (a CPU tier over aligned base-row reads,
any node ids), :class:`SegmentRows` the ``segments`` layout (a
:class:`~oocstore.tiers.reader.TieredReader` over the type's sub-pack, batch by batch);
both charge the loader's one :class:`~oocstore.budget.BudgetAccountant` and count hits
and bytes per type. See :mod:`oocstore.hetero.pack` for the layouts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..budget import BudgetAccountant
from ..store import Store
from ..tiers.memory import MemoryTier
from ..tiers.reader import _read_whole as read_whole_checked
from ..tiers.ssd import BaseRowTier
from .schema import HeteroSchema, feat_name, label_name


class TypedRows:
    """Feature rows of one node type: CPU tier (the pack's cached rows) over aligned base
    reads. ``read(ids)`` returns ``features[ids]``; the tiers count hits and bytes."""

    def __init__(self, store: Store, schema: HeteroSchema, ntype: str, *,
                 pack: dict | None, accountant: BudgetAccountant, in_memory: bool = False):
        self.ntype = ntype
        meta = store.array_meta(feat_name(ntype))
        self.meta = meta
        self.dtype = meta.np_dtype
        self.dim = meta.shape[1]
        self._charges = []
        if in_memory:
            self._charges.append(accountant.charge("cpu", meta.nbytes, f"{ntype}: all features"))
            self.ids = np.arange(meta.shape[0], dtype=np.int64)
            self.cpu = MemoryTier(read_whole_checked(store, feat_name(ntype)),
                                  name=f"{ntype}:memory")
            self.base = None
            return
        if pack is not None and ntype in pack["types"]:
            ids_name, rows_name = f"hpack/{pack['name']}/{ntype}/ids", f"hpack/{pack['name']}/{ntype}/rows"
            nbytes = store.array_meta(ids_name).nbytes + store.array_meta(rows_name).nbytes
            self._charges.append(accountant.charge("cpu", nbytes, f"{ntype}: cpu tier"))
            # Read whole with every chunk checksum checked (ChecksumError names the file).
            self.ids = read_whole_checked(store, ids_name)
            rows = read_whole_checked(store, rows_name)
        else:
            self.ids = np.zeros(0, np.int64)
            rows = np.zeros((0, self.dim), self.dtype)
        self.cpu = MemoryTier(rows, name=f"{ntype}:cpu")
        # Its scratch is part of the loader's floor (:func:`loader_floor`), charged there.
        self.base = BaseRowTier(store.file_path(meta), meta)

    def read(self, nodes: np.ndarray, epoch: int = -1, batch: int = -1) -> np.ndarray:
        """``features[nodes]`` (the ``rows`` layout serves any node ids)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        out = np.empty((nodes.size, self.dim), dtype=self.dtype)
        if not nodes.size:
            return out
        pos = np.searchsorted(self.ids, nodes)
        hit = pos < self.ids.size
        hit[hit] = self.ids[pos[hit]] == nodes[hit]
        if hit.any():
            tmp = np.empty((int(hit.sum()), self.dim), dtype=self.dtype)
            self.cpu.gather(pos[hit], tmp)
            out[hit] = tmp
        if self.base is not None and not hit.all():
            miss = np.flatnonzero(~hit)
            self.base.gather_at(nodes[miss], out, miss)
        return out

    def stats(self) -> dict[str, Any]:
        hits = self.cpu.hits
        base = self.base.stats() if self.base is not None else {"hits": 0, "bytes_read": 0,
                                                                 "useful_bytes": 0}
        total = hits + base["hits"]
        return {"rows": total, "cpu_hits": hits, "base_reads": base["hits"],
                "hit_rate": hits / total if total else 1.0,
                "bytes_read": base["bytes_read"], "useful_bytes": base["useful_bytes"],
                "read_amplification": (base["bytes_read"] / base["useful_bytes"]
                                       if base["useful_bytes"] else 1.0)}

    def close(self) -> None:
        if self.base is not None:
            self.base.close()
        for c in self._charges:
            c.release()
        self._charges = []


class SegmentRows:
    """Feature rows of one node type from its packed sub-pack (``segments`` layout): a
    :class:`~oocstore.tiers.reader.TieredReader` charged to the loader's accountant;
    ``read(nodes, epoch, batch)`` returns the rows of that batch of the type's plan, which
    are ``features[nodes]``."""

    def __init__(self, store: Store, ntype: str, pack: str, accountant: BudgetAccountant, *,
                 reserve: int = 0):
        from ..tiers.reader import TieredReader

        self.ntype = ntype
        # ``reserve``: what the readers of the other types opened after this one require,
        # kept free of this reader's optional read-ahead buffers.
        self.reader = TieredReader(store, pack, accountant=accountant, reserve=reserve)
        self.totals: dict[str, int] = {}

    def read(self, nodes: np.ndarray, epoch: int, batch: int) -> np.ndarray:
        out = self.reader.read_batch(epoch, batch)
        if out.shape[0] != len(nodes):
            from ..errors import FormatError
            raise FormatError(f"pack {self.reader.meta.name!r}: batch {batch} of epoch {epoch} "
                              f"has {out.shape[0]} rows for {len(nodes)} {self.ntype!r} input "
                              "nodes: the pack and the plan disagree; re-pack with --overwrite")
        return out

    def counters(self) -> dict[str, int]:
        """Rows, CPU-tier hits, bytes read and useful bytes so far (this reader plus the
        readers it replaced)."""
        st = self.reader.stats()
        hits = {k: v["hits"] for k, v in st["tiers"].items()}
        now = {"rows": sum(hits.values()), "cpu_hits": hits.get("cpu", 0) + hits.get("gpu", 0),
               "base_reads": hits.get("base", 0), "segment_rows": hits.get("ssd", 0),
               "bytes_read": st["bytes_read"], "useful_bytes": st["useful_bytes"]}
        return {k: v + self.totals.get(k, 0) for k, v in now.items()}

    def stats(self) -> dict[str, Any]:
        c = self.counters()
        return {**c, "hit_rate": c["cpu_hits"] / c["rows"] if c["rows"] else 1.0,
                "read_amplification": (c["bytes_read"] / c["useful_bytes"]
                                       if c["useful_bytes"] else 1.0)}

    def close(self) -> None:
        self.reader.close()


def cached_labels(store: Store, ntype: str, accountant: BudgetAccountant) -> tuple[np.ndarray, Any]:
    """The labels of ``ntype`` in memory, charged to the budget."""
    meta = store.array_meta(label_name(ntype))
    charge = accountant.charge("cpu", meta.nbytes, f"{ntype}: labels")
    return read_whole_checked(store, label_name(ntype)), charge
