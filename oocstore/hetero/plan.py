"""The heterogeneous plan format and its reader.

A plan is written by :func:`oocstore.hetero.sampler.sample_hetero_plan` in one
transaction and read only through :class:`HeteroPlanReader`:

``hplan/<name>`` (catalog)
    options, node and edge types (their order fixes every column below), batch counts,
    the graph's fingerprint (:func:`schema_fingerprint`) and the per-type feature plans.
``hplan/<name>/index`` (int64 ``[batches, 3 + T + L * (2 T + R)]``)
    ``offset``, ``length`` (of the record in ``data``), ``num_seeds``, then ``num_input``
    per type, then per layer ``l`` (input side first): ``num_src`` and ``num_dst`` per
    type, ``num_edges`` per relation.
``hplan/<name>/data`` (int64)
    records: the input nodes of each type in type order (global ids of that type), then
    for each layer and relation the local ``src`` ids then the local ``dst`` ids.
``hplan/<name>/counts/<type>`` (int32 ``[count]``)
    per node of a feature-bearing type, in how many batches it is an input: what the
    pack's placement ranks rows by.

With it, one ordinary plan per feature-bearing type, ``<name>.<type>``
(:mod:`oocstore.plan`, no layers: each batch's record is that type's input nodes, all of
them "seeds"): the feature reads of that type, batch by batch, which the homogeneous
packer lays out into contiguous segments and the tiered reader reads back
(:mod:`oocstore.hetero.pack`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checked_read import CheckedRows
from ..errors import FormatError, StoreNotFoundError, UsageError
from ..store import Store
from ..store.files import checksum
from .schema import EdgeType, HeteroSchema, csc_names, require_schema

PLAN_PREFIX = "hplan/"
HPLAN_FORMAT_VERSION = 1


def schema_fingerprint(store: Store, schema: HeteroSchema) -> int:
    """CRC-32 over the chunk checksums of every relation's CSC (changes with the graph)."""
    crc = 0
    for et in schema.relations:
        for name in csc_names(et):
            crc = checksum(name.encode(), crc)
            crc = checksum(np.asarray(store.checksums(name), dtype=np.uint32), crc)
    return int(crc)


@dataclass(frozen=True)
class HeteroBlockRecord:
    """One typed layer: per type ``(num_src, num_dst)``, per relation local ``(src, dst)``."""

    sizes: dict[str, tuple[int, int]]
    edges: dict[EdgeType, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class HeteroSampledBatch:
    """One typed mini-batch: input nodes per type (the seeds are the first ``num_seeds``
    of the target type), ``blocks[0]`` the input-side layer."""

    epoch: int
    batch: int
    target: str
    num_seeds: int
    input_nodes: dict[str, np.ndarray]
    blocks: list[HeteroBlockRecord]

    @property
    def seeds(self) -> np.ndarray:
        return self.input_nodes[self.target][:self.num_seeds]


def hplan_key(name: str) -> str:
    return PLAN_PREFIX + name


def catalog_entries(store: Store, prefix: str) -> dict[str, dict]:
    """The catalog entries ``prefix + name`` of ``store`` (heterogeneous plans or packs)
    by name."""
    return {k[len(prefix):]: v for k, v in store.items(prefix) if k.count("/") == 1}


def catalog_entry(store: Store, prefix: str, name: str, what: str, create: str) -> dict:
    """Catalog entry ``prefix + name``; a missing one is a StoreNotFoundError naming the
    ``what`` entries the store has and the command that creates one (``create``)."""
    raw = store.get(prefix + name)
    if raw is None:
        have = ", ".join(sorted(catalog_entries(store, prefix))) or "none"
        raise StoreNotFoundError(f"store {store.path} has no {what} {name!r} (it has: "
                                 f"{have}): create it with `{create}`")
    return raw


def list_hetero_plans(store: Store) -> dict[str, dict]:
    return catalog_entries(store, PLAN_PREFIX)


class HeteroPlanReader:
    """Random access to the batches of one heterogeneous plan (index read whole and
    checked; records read with ``pread`` from the store's file, checked per record)."""

    def __init__(self, store: Store, name: str):
        self.store = store
        raw = catalog_entry(store, PLAN_PREFIX, name, "heterogeneous plan",
                            f"oocstore sample {store.path} --name {name} ...")
        if not isinstance(raw, dict) or raw.get("format_version") != HPLAN_FORMAT_VERSION:
            raise FormatError(f"plan {name!r}: unknown format: re-sample it with --overwrite")
        self.meta = raw
        self.name = name
        self.schema = require_schema(store)
        if raw["fingerprint"] != schema_fingerprint(store, self.schema):
            raise FormatError(f"plan {name!r} in {store.path} was sampled from another graph: "
                              f"re-sample it with `oocstore sample ... --name {name} --overwrite`")
        self.types = list(raw["types"])
        self.relations = [tuple(k.split("___")) for k in raw["relations"]]
        self.target = raw["target"]
        self.num_layers = int(raw["num_layers"])
        from oocstore.tiers.reader import _read_whole

        self.index = _read_whole(store, raw["arrays"]["index"])
        T, R, L = len(self.types), len(self.relations), self.num_layers
        if self.index.shape != (sum(raw["batches_per_epoch"]), 3 + T + L * (2 * T + R)):
            raise FormatError(f"plan {name!r}: index has shape {self.index.shape}: the plan is "
                              "damaged; re-sample it with --overwrite")
        self._data = CheckedRows(store, raw["arrays"]["data"], fix="re-sample the plan with "
                                 f"`oocstore sample ... --name {name} --overwrite`")

    @property
    def batches_per_epoch(self) -> list[int]:
        return list(self.meta["batches_per_epoch"])

    def counts(self, ntype: str) -> np.ndarray:
        return np.asarray(self.store.array(self.meta["arrays"][f"counts/{ntype}"]))

    def row(self, epoch: int, batch: int) -> int:
        bpe = self.batches_per_epoch
        if not 0 <= epoch < len(bpe) or not 0 <= batch < bpe[epoch]:
            raise UsageError(f"plan {self.name!r} has no batch {batch} of epoch {epoch}")
        return sum(bpe[:epoch]) + batch

    def batch(self, epoch: int, batch: int) -> HeteroSampledBatch:
        r = self.index[self.row(epoch, batch)]
        off, length = int(r[0]), int(r[1])
        rec = self._data.read(off, off + length)
        T, R = len(self.types), len(self.relations)
        pos, nodes = 0, {}
        for ti, t in enumerate(self.types):
            n = int(r[3 + T * 0 + ti])
            nodes[t] = rec[pos:pos + n]
            pos += n
        blocks = []
        base = 3 + T
        for layer in range(self.num_layers):
            cols = r[base + layer * (2 * T + R): base + (layer + 1) * (2 * T + R)]
            sizes = {t: (int(cols[2 * ti]), int(cols[2 * ti + 1])) for ti, t in enumerate(self.types)}
            edges = {}
            for ri, et in enumerate(self.relations):
                ne = int(cols[2 * T + ri])
                src, dst = rec[pos:pos + ne], rec[pos + ne:pos + 2 * ne]
                pos += 2 * ne
                if ne and (src.max() >= sizes[et[0]][0] or dst.max() >= sizes[et[2]][1]
                           or src.min() < 0 or dst.min() < 0):
                    raise FormatError(f"plan {self.name!r}: batch {batch} of epoch {epoch} has "
                                      f"an edge outside its layer: re-sample with --overwrite")
                edges[et] = (src, dst)
            blocks.append(HeteroBlockRecord(sizes=sizes, edges=edges))
        if pos != length:
            raise FormatError(f"plan {self.name!r}: record of batch {batch} of epoch {epoch} "
                              "does not match its index row: re-sample with --overwrite")
        for t, ids in nodes.items():
            if ids.size and (ids.min() < 0 or ids.max() >= self.schema.node_types[t].count):
                raise FormatError(f"plan {self.name!r}: a {t!r} node id is out of range: "
                                  "re-sample with --overwrite")
        return HeteroSampledBatch(epoch=epoch, batch=batch, target=self.target,
                                  num_seeds=int(r[2]), input_nodes=nodes, blocks=blocks)

    def close(self) -> None:
        self._data.close()
