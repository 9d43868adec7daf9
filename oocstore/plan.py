"""The access-plan format: what every mini-batch of K sampled epochs will touch.

A plan is written by an offline sampler (``samplers/``) and read by the packer, the
caches and the loader — only through :class:`PlanReader`. It lives inside a store, under
the same commit protocol as everything else (data files first, then one catalog
transaction):

``plan/<name>`` (catalog entry)
    :class:`PlanMeta` as JSON: how the plan was sampled (split, fanouts, batch size,
    epochs, seed), which graph it was sampled from (store version, node/edge counts and
    a fingerprint of the graph arrays' checksums), batch counts per epoch, the names of
    its arrays and a statistics summary.

``plan/<name>/index`` (array, int64, ``[total_batches, 4 + 3 L]``)
    One row per batch, epochs one after another (row of batch ``b`` of epoch ``e`` is
    ``sum(batches_per_epoch[:e]) + b``). Columns (:func:`index_columns`): ``offset`` and
    ``length`` of the batch's record in ``data`` (in elements), ``num_seeds``,
    ``num_input``, then per layer ``l = 0 .. L-1`` (layer 0 is the first GNN layer, on
    the input side, as in DGL): ``num_src``, ``num_dst``, ``num_edges``.

``plan/<name>/data`` (array, int32 or int64 by graph size: :attr:`PlanMeta.node_dtype`)
    The batch records, back to back. One record is::

        input_nodes[num_input]                 global node ids
        src_0[num_edges_0], dst_0[num_edges_0] layer 0 edges, local ids
        ...
        src_{L-1}[...], dst_{L-1}[...]         layer L-1 edges (its dst nodes are the seeds)

    Every layer's node lists are prefixes of ``input_nodes``: layer ``l`` has source
    nodes ``input_nodes[:num_src_l]`` and destination nodes ``input_nodes[:num_dst_l]``
    (destinations first, as DGL blocks and PyG's relabelled ``edge_index`` expect), and
    the seeds are ``input_nodes[:num_seeds]``. So one node list serves all layers, and
    the features the loader delivers are exactly ``input_nodes`` in that order. Edges
    of a layer are grouped by destination, in ascending local destination id.

``plan/<name>/counts`` (array, int32, ``[num_nodes]``)
    Per node, the number of batches (over all epochs) whose input nodes include it:
    the access frequencies that cache placement starts from.

Link-prediction plans (``task = "link"``, :mod:`oocstore.samplers.link`) are the same
plan, whose seeds are the distinct endpoints of each batch's positive and negative node
pairs (ascending global ids), plus two arrays (older plans lack them and the ``task``
field, and read as ``"node"``; packing and the tiers read only ``data`` and ``index``):

``plan/<name>/pairs`` (array, the data array's dtype)
    Per batch, back to back: ``pos_src[P], pos_dst[P], neg_src[N], neg_dst[N]``, local
    ids into the batch's seeds.

``plan/<name>/pair_index`` (array, int64, ``[total_batches, 3]``)
    Per batch (same rows as ``index``): ``offset`` into ``pairs``, ``P``, ``N``.

Reading batch ``b`` of epoch ``e`` costs one index row and one contiguous slice of
``data`` (both memory-mapped). Unknown ``format_version`` values are refused.

Shards (data-parallel training, ``docs/DISTRIBUTED.md``): a plan sampled for ``W > 1``
ranks is a *group* of ``W`` ordinary plans named ``<group>.rank<r>``
(:func:`shard_name`), each with ``shard_group``, ``shard_rank`` and
``shard_world_size`` set, written by one transaction. Everything per plan (packs,
readers, statistics) works on a shard unchanged. An unsharded plan has
``shard_group == ""``, rank 0 and world size 1 (older entries lack the fields and read
that way).

Finding plans (the last section): :func:`list_plans`, :func:`latest_plan`, a group's
current shards (:func:`group_shards`; re-sampling a group for fewer ranks leaves the
higher ranks' old shards in the catalog, recognised as stale because they were sampled
from an older store version, and ignored), the plan a command uses when none is named
(:func:`default_plan`: the most recent plan of the **train** split, never a newer
``val`` / ``test`` plan), the refusal to train on an evaluation split unless asked
(:func:`check_training_plan`), and the shard a rank reads (:func:`resolve_plan`). Packs
are found the same way in :mod:`oocstore.pack.catalog`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .checked_read import CheckedRows, ChunkCheck, read_checked
from .errors import FormatError, StoreExistsError, StoreNotFoundError, UsageError
from .store import Store
from .store.files import checksum
from .store.format import VersionedEntry

log = logging.getLogger(__name__)

#: Version of the plan layout described above. Readers refuse other versions.
PLAN_FORMAT_VERSION = 1

#: Fixed leading columns of the index; then ``num_src, num_dst, num_edges`` per layer.
INDEX_HEAD = ("offset", "length", "num_seeds", "num_input")
LAYER_COLUMNS = ("num_src", "num_dst", "num_edges")

#: Fanout value meaning "every in-neighbour" (DGL's ``-1`` convention).
ALL_NEIGHBORS = -1

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def index_columns(num_layers: int) -> list[str]:
    cols = list(INDEX_HEAD)
    for layer in range(num_layers):
        cols += [f"{c}_{layer}" for c in LAYER_COLUMNS]
    return cols


def check_plan_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(f"plan name {name!r} is not valid: use 1-64 letters, digits, '-', '_' "
                         "or '.', starting with a letter or digit (e.g. --name train)")
    return name


def shard_name(group: str, rank: int) -> str:
    """The plan name of rank ``rank``'s shard of group ``group``."""
    return f"{group}.rank{int(rank)}"


def plan_key(name: str) -> str:
    return f"plan/{name}"


def array_names(name: str) -> dict[str, str]:
    return {"data": f"plan/{name}/data", "index": f"plan/{name}/index",
            "counts": f"plan/{name}/counts"}


def pair_array_names(name: str) -> dict[str, str]:
    """The two extra arrays of a link-prediction plan (see the module docstring)."""
    return {"pairs": f"plan/{name}/pairs", "pair_index": f"plan/{name}/pair_index"}


#: What a plan's batches are for: node classification (seeds are the labelled nodes) or
#: link prediction (seeds are the endpoints of positive and negative pairs).
TASKS = ("node", "link")


def node_dtype_for(num_nodes: int) -> np.dtype:
    """int32 node ids while they fit (half the plan bytes), int64 beyond."""
    return np.dtype(np.int32 if num_nodes < 2**31 else np.int64)


def graph_fingerprint(store: Store) -> int:
    """CRC-32 over the chunk checksums recorded for the graph arrays: changes whenever
    the graph does, costs no data read."""
    if store.graph is None:
        raise StoreNotFoundError(f"store {store.path} has no graph: ingest one first")
    crc = 0
    for name in (store.graph.indptr, store.graph.indices):
        sums = np.asarray(store.checksums(name), dtype=np.uint32)
        crc = checksum(name.encode(), crc)
        crc = checksum(sums, crc)
    return int(crc)


@dataclass(frozen=True)
class PlanMeta(VersionedEntry):
    """The catalog entry of one plan (``plan/<name>``)."""

    KIND, VERSION = "plan", PLAN_FORMAT_VERSION
    FIX = "re-sample it with `oocstore sample ... --name {name} --overwrite`"
    LIST_FIELDS = ("fanouts", "batches_per_epoch", "index_columns")

    name: str
    split: str
    fanouts: tuple[int, ...]  # fanouts[0]: first GNN layer (input side); -1: all neighbours
    batch_size: int
    epochs: int
    seed: int
    shuffle: bool
    batches_per_epoch: tuple[int, ...]
    num_seeds: int  # seeds per epoch
    node_dtype: str  # dtype of the data array
    num_nodes: int
    num_edges: int
    store_version: int  # store version the plan was sampled from
    graph_fingerprint: int
    arrays: dict[str, str] = field(default_factory=dict)
    index_columns: tuple[str, ...] = ()
    stats: dict[str, Any] = field(default_factory=dict)
    sampler: str = "uniform-without-replacement"
    shard_group: str = ""  # name of the group this shard belongs to; "" for a whole plan
    shard_rank: int = 0  # the rank that reads this shard
    shard_world_size: int = 1  # shards in the group (the world size it was sampled for)
    task: str = "node"  # "node" or "link" (older entries lack the field: "node")
    link: dict[str, Any] = field(default_factory=dict)  # link plans: neg_ratio, neg_sampler, ...
    format_version: int = PLAN_FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "fanouts", tuple(int(f) for f in self.fanouts))
        object.__setattr__(self, "batches_per_epoch", tuple(int(b) for b in self.batches_per_epoch))
        object.__setattr__(self, "index_columns", tuple(self.index_columns))
        if self.node_dtype not in ("int32", "int64"):
            raise FormatError(f"plan {self.name!r}: node dtype {self.node_dtype!r} is not int32 "
                              "or int64: the catalog is damaged; re-sample with --overwrite")
        if len(self.batches_per_epoch) != self.epochs:
            raise FormatError(f"plan {self.name!r}: {len(self.batches_per_epoch)} batch counts "
                              f"for {self.epochs} epochs: re-sample with --overwrite")
        if self.task not in TASKS:
            raise FormatError(f"plan {self.name!r}: task {self.task!r} is not one of "
                              f"{', '.join(TASKS)}: re-sample with --overwrite")
        if not 0 <= self.shard_rank < max(1, self.shard_world_size):
            raise FormatError(f"plan {self.name!r}: shard rank {self.shard_rank} is outside "
                              f"0..{self.shard_world_size - 1}: re-sample with --overwrite")

    @property
    def sharded(self) -> bool:
        return bool(self.shard_group)

    @property
    def num_layers(self) -> int:
        return len(self.fanouts)

    @property
    def total_batches(self) -> int:
        return sum(self.batches_per_epoch)


@dataclass(frozen=True)
class Block:
    """One message-flow graph (layer). Local ids index the batch's ``input_nodes``:
    sources are ``input_nodes[:num_src]``, destinations ``input_nodes[:num_dst]``."""

    num_src: int
    num_dst: int
    src: np.ndarray  # [num_edges] int64, local source ids < num_src
    dst: np.ndarray  # [num_edges] int64, local destination ids < num_dst

    @property
    def num_edges(self) -> int:
        return int(self.src.shape[0])

    def edge_index(self) -> np.ndarray:
        """PyG orientation ``[2, num_edges]`` (row 0 source, row 1 destination)."""
        return np.stack([self.src, self.dst])


@dataclass(frozen=True)
class SampledBatch:
    """One mini-batch: ``blocks[0]`` is the input-side layer, ``blocks[-1]`` ends at the
    seeds. Features must be delivered for ``input_nodes``, in that order."""

    epoch: int
    batch: int
    seeds: np.ndarray  # [num_seeds] int64 global ids (== input_nodes[:num_seeds])
    blocks: list[Block]
    input_nodes: np.ndarray  # [num_input] int64 global ids
    pos: np.ndarray | None = None  # link plans: [2, P] int64 positive pairs, local seed ids
    neg: np.ndarray | None = None  # link plans: [2, P * K] int64 negative pairs, local ids

    @property
    def num_edges(self) -> int:
        return sum(b.num_edges for b in self.blocks)


def decode_record(record: np.ndarray, row: np.ndarray, num_layers: int, *, epoch: int = -1,
                  batch: int = -1) -> SampledBatch:
    """Build a :class:`SampledBatch` from one data record and its index row."""
    num_seeds, num_input = int(row[2]), int(row[3])
    rec = np.asarray(record, dtype=np.int64)  # one copy, shared by the views below
    nodes = rec[:num_input]
    pos = num_input
    blocks = []
    for layer in range(num_layers):
        ns, nd, ne = (int(v) for v in row[4 + 3 * layer: 7 + 3 * layer])
        blocks.append(Block(num_src=ns, num_dst=nd, src=rec[pos:pos + ne],
                            dst=rec[pos + ne:pos + 2 * ne]))
        pos += 2 * ne
    return SampledBatch(epoch=epoch, batch=batch, seeds=nodes[:num_seeds], blocks=blocks,
                        input_nodes=nodes)


class PlanWriter:
    """Streams batches of one plan into a store transaction.

    ``add_batch`` appends to in-memory buffers that are flushed to the data file every
    ``flush_elems`` elements, so memory does not grow with the number of batches; only
    the per-node access counts and one per-epoch bitmap (O(num_nodes)) are kept.
    """

    def __init__(self, txn, meta_base: dict[str, Any], *, feature_row_bytes: int = 0,
                 flush_elems: int = 1 << 22):
        self.txn = txn
        self.base = dict(meta_base)
        self.name = check_plan_name(self.base["name"])
        self.num_layers = len(self.base["fanouts"])
        self.num_nodes = int(self.base["num_nodes"])
        self.dtype = np.dtype(self.base["node_dtype"])
        self.names = array_names(self.name)
        ncols = len(INDEX_HEAD) + len(LAYER_COLUMNS) * self.num_layers
        self._data = txn.array_writer(self.names["data"], self.dtype, (), subdir="plans")
        self._index = txn.array_writer(self.names["index"], np.int64, (ncols,), subdir="plans")
        self.counts = np.zeros(self.num_nodes, dtype=np.int32)
        self._epoch_seen = np.zeros(self.num_nodes, dtype=bool)
        self.feature_row_bytes = int(feature_row_bytes)
        self.flush_elems = flush_elems
        self._pending: list[np.ndarray] = []
        self._pending_rows: list[np.ndarray] = []
        self._pending_elems = 0
        self._offset = 0
        self.batches_per_epoch: list[int] = []
        self.epoch_unique: list[int] = []
        self._epoch = -1
        self._in_epoch = 0
        self._sum_input = 0
        self._max_input = 0
        self._sum_edges = 0
        self._layer_edges = np.zeros(self.num_layers, dtype=np.int64)
        self._closed = False

    def begin_epoch(self) -> None:
        self._end_epoch()
        self._epoch += 1
        self._in_epoch = 0

    def _end_epoch(self) -> None:
        if self._epoch >= 0:
            self.batches_per_epoch.append(self._in_epoch)
            self.epoch_unique.append(int(np.count_nonzero(self._epoch_seen)))
            self._epoch_seen[:] = False

    def add_batch(self, record: np.ndarray, layers: np.ndarray, num_seeds: int) -> None:
        """Append one batch: ``record`` as laid out in the module docstring, ``layers``
        ``[L, 3]`` = (num_src, num_dst, num_edges) per layer, input side first."""
        if self._epoch < 0:
            raise FormatError("PlanWriter.add_batch before begin_epoch")
        layers = np.asarray(layers, dtype=np.int64).reshape(self.num_layers, 3)
        num_input = int(layers[0, 0]) if self.num_layers else int(num_seeds)
        edges = int(layers[:, 2].sum())
        if record.shape[0] != num_input + 2 * edges:
            raise FormatError(f"plan {self.name!r}: record of {record.shape[0]} elements, "
                              f"expected {num_input + 2 * edges}")
        nodes = record[:num_input]
        self.counts[nodes] += 1  # input nodes of one batch are distinct
        self._epoch_seen[nodes] = True
        row = np.concatenate([np.array([self._offset, record.shape[0], num_seeds, num_input],
                                       dtype=np.int64), layers.reshape(-1)])
        self._pending.append(record.astype(self.dtype, copy=False))
        self._pending_rows.append(row)
        self._pending_elems += record.shape[0]
        self._offset += record.shape[0]
        self._in_epoch += 1
        self._sum_input += num_input
        self._max_input = max(self._max_input, num_input)
        self._sum_edges += edges
        self._layer_edges += layers[:, 2]
        if self._pending_elems >= self.flush_elems:
            self.flush()

    def extra_arrays(self, names: Mapping[str, str]) -> None:
        """Arrays the caller wrote into the same transaction that belong to this plan
        (a link plan's pairs): listed in its meta."""
        self.names.update(names)

    def flush(self) -> None:
        if self._pending:
            self._data.append(np.concatenate(self._pending))
            self._index.append(np.stack(self._pending_rows))
        self._pending, self._pending_rows, self._pending_elems = [], [], 0

    def finish(self, extra_stats: Mapping[str, Any] | None = None) -> PlanMeta:
        """Close the arrays and stage the catalog entry (committed with the transaction)."""
        if self._closed:
            raise FormatError(f"plan {self.name!r} was already finished")
        self.flush()
        self._end_epoch()
        self._epoch = -1
        self._data.close()
        self._index.close()
        self.txn.write_array(self.names["counts"], self.counts, subdir="plans")
        total = sum(self.batches_per_epoch)
        touched = int(np.count_nonzero(self.counts))
        rb = self.feature_row_bytes
        stats = {
            "total_batches": total,
            "total_input_nodes": int(self._sum_input),
            "mean_input_nodes": self._sum_input / total if total else 0.0,
            "max_input_nodes": int(self._max_input),
            "total_edges": int(self._sum_edges),
            "edges_per_layer": [int(e) for e in self._layer_edges],
            "mean_edges": self._sum_edges / total if total else 0.0,
            "unique_nodes_per_epoch": list(self.epoch_unique),
            "unique_nodes": touched,
            "feature_row_bytes": rb,
            "feature_bytes": int(self._sum_input) * rb,
            "unique_feature_bytes": touched * rb,
            "data_bytes": int(self._offset) * self.dtype.itemsize,
            "top1pct_access_share": _top_share(self.counts, 0.01),
            **(extra_stats or {}),
        }
        meta = PlanMeta(**self.base, batches_per_epoch=tuple(self.batches_per_epoch),
                        arrays=dict(self.names), index_columns=tuple(index_columns(self.num_layers)),
                        stats=stats)
        store = getattr(self.txn, "store", None)  # None: an in-memory plan (train/prepare.py)
        old = store.get(plan_key(self.name)) if store is not None else None
        if isinstance(old, dict) and isinstance(old.get("arrays"), dict):
            # A replaced plan's arrays this one lacks (a link plan's pairs) go with it.
            for part, array in old["arrays"].items():
                if part not in self.names and isinstance(array, str):
                    self.txn.delete_array(array)
        self.txn.put(plan_key(self.name), meta.to_dict())
        self._closed = True
        return meta


def _top_share(counts: np.ndarray, frac: float) -> float:
    """Share of all accesses that go to the hottest ``frac`` of nodes."""
    total = int(counts.sum(dtype=np.int64))
    if total == 0 or counts.size == 0:
        return 0.0
    k = max(1, int(counts.size * frac))
    top = np.partition(counts, counts.size - k)[counts.size - k:]
    return float(top.sum(dtype=np.int64)) / total


def list_plans(store: Store) -> dict[str, PlanMeta]:
    return {k[len("plan/"):]: PlanMeta.from_dict(v) for k, v in store.items("plan/")}


class PlanReader:
    """Random access to one plan's batches (cheap to open).

    The index is read whole, its chunk checksums checked, and its structure checked
    (records back to back inside ``data``, lengths and layer sizes consistent, counts
    within the graph), so no later read or allocation trusts a damaged value. Records are
    read with ``pread``, each checksum chunk checked the first time a read touches it
    (:class:`~oocstore.checked_read.CheckedRows`), and every record's node ids and local
    edge ids are range-checked when it is decoded. ``verify=False`` skips the checksums
    of records (the structure and range checks stay)."""

    def __init__(self, store: Store, name: str, *, check_graph: bool = True,
                 verify: bool = True):
        raw = store.get(plan_key(name))
        if raw is None:
            have = ", ".join(sorted(list_plans(store))) or "none"
            raise StoreNotFoundError(f"store {store.path} has no plan {name!r} (it has: {have}): "
                                     f"create it with `oocstore sample {store.path} --name {name}`")
        self.meta = PlanMeta.from_dict(raw)
        self.store = store
        if check_graph and store.graph is not None:
            fp = graph_fingerprint(store)
            if fp != self.meta.graph_fingerprint:
                raise FormatError(f"plan {name!r} in {store.path} was sampled from another graph "
                                  f"(store version {self.meta.store_version}): re-sample it with "
                                  f"`oocstore sample ... --name {name} --overwrite`")
        self.fix = f"re-sample the plan with `oocstore sample ... --name {name} --overwrite`"
        for part in ("data", "index", "counts"):
            if part not in self.meta.arrays:
                raise FormatError(f"plan {name!r} lists no {part!r} array: the catalog is "
                                  f"damaged; {self.fix}")
        ncols = len(INDEX_HEAD) + len(LAYER_COLUMNS) * self.meta.num_layers
        imeta = store.array_meta(self.meta.arrays["index"])
        if imeta.shape != (self.meta.total_batches, ncols) or imeta.dtype != "int64":
            raise FormatError(f"plan {name!r}: index has shape {imeta.shape} ({imeta.dtype}), "
                              f"expected ({self.meta.total_batches}, {ncols}) int64: {self.fix}")
        dmeta = store.array_meta(self.meta.arrays["data"])
        if len(dmeta.shape) != 1 or dmeta.dtype != self.meta.node_dtype:
            raise FormatError(f"plan {name!r}: data array has shape {dmeta.shape} "
                              f"({dmeta.dtype}), expected one {self.meta.node_dtype} column: "
                              f"{self.fix}")
        # ``_data`` maps the records for bulk offline passes (packing, after
        # :meth:`verify`); per-batch reads go through ``_records`` (checked ``pread``), so
        # serving a plan never maps it into memory.
        self._data = store.array(self.meta.arrays["data"])
        self._index = read_checked(store, self.meta.arrays["index"], fix=self.fix)
        check_index(self._index, num_layers=self.meta.num_layers, data_len=dmeta.shape[0],
                    num_nodes=self.meta.num_nodes, where=f"plan {name!r} "
                    f"({store.file_path(imeta)})", fix=self.fix)
        self._records = CheckedRows(store, self.meta.arrays["data"], fix=self.fix, verify=verify)
        self._verified = False  # whether verify() checked the records and counts
        self._starts = np.concatenate([[0], np.cumsum(self.meta.batches_per_epoch)]).astype(np.int64)
        self._pairs = self._pair_index = None
        if self.meta.task == "link":
            self._open_pairs(store, verify)

    def _open_pairs(self, store: Store, verify: bool) -> None:
        """A link plan's pair index (read whole, checked) and pair records (``pread``)."""
        names = pair_array_names(self.name)
        for part, key in names.items():
            if self.meta.arrays.get(part) != key:
                raise FormatError(f"link plan {self.name!r} lists no {part!r} array: the "
                                  f"catalog is damaged; {self.fix}")
        pidx = read_checked(store, names["pair_index"], fix=self.fix)
        plen = store.array_meta(names["pairs"]).shape
        total = self.meta.total_batches
        ends = pidx[:, 0] + 2 * (pidx[:, 1] + pidx[:, 2]) if pidx.ndim == 2 else None
        if (pidx.shape != (total, 3) or (pidx < 0).any()
                or (total and (pidx[0, 0] != 0 or (pidx[1:, 0] != ends[:-1]).any()
                               or int(ends[-1]) != plen[0]))):
            raise FormatError(f"link plan {self.name!r}: its pair index ({pidx.shape}) does not "
                              f"match its {total} batches and {plen[0]} pair ids: the plan is "
                              f"damaged; {self.fix}")
        self._pair_index = pidx
        self._pairs = CheckedRows(store, names["pairs"], fix=self.fix, verify=verify)

    def read_pairs(self, epoch: int, batch: int, num_seeds: int) -> tuple[np.ndarray, np.ndarray]:
        """A link batch's ``(pos [2, P], neg [2, N])`` pairs in local seed ids."""
        off, npos, nneg = (int(v) for v in self._pair_index[self._row_id(epoch, batch)])
        flat = self._pairs.read(off, off + 2 * (npos + nneg)).astype(np.int64)
        if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= num_seeds):
            raise FormatError(f"link plan {self.name!r}: batch {batch} of epoch {epoch} has a "
                              f"pair id outside its {num_seeds} seeds: the plan's data is "
                              f"damaged; {self.fix}")
        return flat[:2 * npos].reshape(2, npos), flat[2 * npos:].reshape(2, nneg)

    @property
    def records(self) -> np.ndarray:
        """Every batch's records back to back (a read-only memory map of the ``data``
        array; batch ``i``'s start at ``index()[i, 0]``), for bulk offline passes over the
        whole plan (packing, cache simulation). Call :meth:`verify` first: the map is not
        checked against its checksums, unlike the per-batch reads."""
        return self._data

    def max_record_elems(self) -> int:
        """Elements of the largest batch record (what decoding one batch holds)."""
        return int(self._index[:, 1].max()) if self._index.shape[0] else 0

    def verify(self) -> None:
        """Check every chunk of the records and access counts against their checksums
        (one sequential pass): done before a bulk pass over the memory map (packing).
        Once per reader."""
        if self._verified:
            return
        for part in ("data", "counts"):
            name = self.meta.arrays[part]
            meta = self.store.array_meta(name)
            check = ChunkCheck(self.store, name, meta, self.fix)
            rows = max(1, meta.chunk_bytes // max(1, meta.row_bytes))
            reader = CheckedRows(self.store, name, fix=self.fix, verify=False)
            try:
                for lo in range(0, meta.shape[0] if meta.shape else 0, rows):
                    check.feed(reader.read(lo, min(meta.shape[0], lo + rows)))
            finally:
                reader.close()
            check.finish()
        self._verified = True

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def num_epochs(self) -> int:
        return self.meta.epochs

    @property
    def num_layers(self) -> int:
        return self.meta.num_layers

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.meta.stats)

    def num_batches(self, epoch: int) -> int:
        return self.meta.batches_per_epoch[self._check_epoch(epoch)]

    def _check_epoch(self, epoch: int) -> int:
        if not 0 <= epoch < self.meta.epochs:
            raise UsageError(f"plan {self.name!r}: epoch {epoch} out of range 0..{self.meta.epochs - 1}")
        return epoch

    def _row_id(self, epoch: int, batch: int) -> int:
        n = self.num_batches(epoch)
        if not 0 <= batch < n:
            raise UsageError(f"plan {self.name!r}: batch {batch} of epoch {epoch} out of range "
                             f"0..{n - 1}")
        return int(self._starts[epoch]) + batch

    def index_row(self, epoch: int, batch: int) -> np.ndarray:
        """The batch's index row (see :func:`index_columns`)."""
        return np.array(self._index[self._row_id(epoch, batch)])

    def index(self) -> np.ndarray:
        """The whole index, ``[total_batches, 4 + 3 L]`` int64 (in memory, checked)."""
        return self._index

    def raw_record(self, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(record, index row)``, no decoding (the record's bytes are checksum-checked)."""
        row = self.index_row(epoch, batch)
        off, length = int(row[0]), int(row[1])
        return self._records.read(off, off + length), row

    def advise(self, epoch: int, batch: int) -> None:
        """Start fetching the batch's record from disk now (kernel read-ahead of the
        checksum chunks it lies in; see ``CheckedRows.advise``), ahead of
        :meth:`read_batch`."""
        row = self.index_row(epoch, batch)
        off = int(row[0])
        self._records.advise(off, off + int(row[1]))

    def read_batch(self, epoch: int, batch: int) -> SampledBatch:
        record, row = self.raw_record(epoch, batch)
        sample = decode_record(record, row, self.num_layers, epoch=epoch, batch=batch)
        self._check_ids(sample.input_nodes, epoch, batch)
        for layer, block in enumerate(sample.blocks):
            for what, ids, bound in (("source", block.src, block.num_src),
                                     ("destination", block.dst, block.num_dst)):
                if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= bound):
                    raise FormatError(f"plan {self.name!r}: batch {batch} of epoch {epoch}, "
                                      f"layer {layer} has a {what} id outside 0..{bound - 1}: "
                                      f"the plan's data is damaged; {self.fix}")
        if self._pairs is not None:
            pos, neg = self.read_pairs(epoch, batch, int(sample.seeds.shape[0]))
            sample = dataclasses.replace(sample, pos=pos, neg=neg)
        return sample

    def input_nodes(self, epoch: int, batch: int) -> np.ndarray:
        """Just the batch's input node ids (int64), without the edges."""
        row = self.index_row(epoch, batch)
        off = int(row[0])
        nodes = self._records.read(off, off + int(row[3])).astype(np.int64, copy=False)
        self._check_ids(nodes, epoch, batch)
        return nodes

    def _check_ids(self, nodes: np.ndarray, epoch: int, batch: int) -> None:
        if nodes.size and (int(nodes.min()) < 0 or int(nodes.max()) >= self.meta.num_nodes):
            raise FormatError(f"plan {self.name!r}: batch {batch} of epoch {epoch} has an input "
                              f"node id outside 0..{self.meta.num_nodes - 1}: the plan's data "
                              f"is damaged; {self.fix}")

    def close(self) -> None:
        self._records.close()
        if self._pairs is not None:
            self._pairs.close()

    def iter_batches(self, epoch: int) -> Iterator[SampledBatch]:
        for b in range(self.num_batches(epoch)):
            yield self.read_batch(epoch, b)

    def access_counts(self) -> np.ndarray:
        """``[num_nodes]`` int32: in how many batches (all epochs) each node is an input."""
        return self.store.array(self.meta.arrays["counts"])

    def unique_per_batch(self, epoch: int | None = None) -> np.ndarray:
        """Input nodes per batch (they are distinct within a batch)."""
        col = self._index[:, 3]
        if epoch is None:
            return np.asarray(col)
        self._check_epoch(epoch)
        return np.asarray(col[self._starts[epoch]:self._starts[epoch + 1]])

    def __repr__(self) -> str:
        return (f"PlanReader({self.name!r}, epochs={self.num_epochs}, "
                f"batches={self.meta.total_batches}, fanouts={list(self.meta.fanouts)})")


def check_index(index: np.ndarray, *, num_layers: int, data_len: int, num_nodes: int,
                where: str, fix: str) -> None:
    """Refuse a plan index whose values a reader cannot trust as offsets and sizes.

    Records lie back to back from element 0 to the end of ``data``; each record's length
    is its input nodes plus two ids per edge; layer 0's sources are the input nodes,
    every layer's destinations are a prefix of its sources and the next layer's sources,
    and the last layer's destinations are the seeds; nothing exceeds ``num_nodes``."""
    def fail(what: str, rows: np.ndarray) -> None:
        b = int(np.flatnonzero(rows)[0]) if rows.ndim else 0
        raise FormatError(f"{where}: {what} (index row {b}: {index[b].tolist()}): the plan's "
                          f"index is damaged; {fix}")

    if index.shape[0] == 0:
        if data_len:
            raise FormatError(f"{where}: no batches but {data_len} record elements: {fix}")
        return
    off, length, seeds, ninput = index[:, 0], index[:, 1], index[:, 2], index[:, 3]
    if (index < 0).any():
        fail("a negative value", (index < 0).any(axis=1))
    layers = index[:, 4:].reshape(index.shape[0], num_layers, 3)
    edges = layers[:, :, 2].sum(axis=1) if num_layers else np.zeros_like(length)
    if (ninput > num_nodes).any():
        fail(f"more input nodes than the graph's {num_nodes}", ninput > num_nodes)
    if (length != ninput + 2 * edges).any():
        fail("a record length that is not its input nodes + 2 x its edges",
             length != ninput + 2 * edges)
    if off[0] != 0:
        fail("the first record does not start at 0", np.array([True]))
    gap = off[1:] != off[:-1] + length[:-1]
    if gap.any():
        fail("records that are not back to back", np.concatenate([[False], gap]))
    if int(off[-1] + length[-1]) != data_len:
        raise FormatError(f"{where}: records end at element {int(off[-1] + length[-1])} but "
                          f"the data array holds {data_len}: the plan is damaged; {fix}")
    if num_layers:
        src, dst = layers[:, :, 0], layers[:, :, 1]
        bad = (src[:, 0] != ninput) | (dst > src).any(axis=1) | (dst[:, -1] != seeds)
        if num_layers > 1:
            bad |= (src[:, 1:] != dst[:, :-1]).any(axis=1)
        if bad.any():
            fail("layer sizes that do not nest", bad)
    elif (seeds != ninput).any():
        fail("seeds that are not the input nodes", seeds != ninput)


def refuse_existing(store: Store, name: str, overwrite: bool) -> None:
    """Raise :class:`StoreExistsError` when plan ``name`` exists and ``overwrite`` is off."""
    if store.get(plan_key(name)) is not None and not overwrite:
        raise StoreExistsError(f"store {store.path} already has a plan {name!r}: pass "
                               "overwrite=True to replace it, or choose another name")


def summarize(meta: PlanMeta) -> dict[str, Any]:
    """The JSON-able summary ``oocstore inspect`` shows for one plan."""
    return {"split": meta.split, "fanouts": list(meta.fanouts), "batch_size": meta.batch_size,
            "epochs": meta.epochs, "seed": meta.seed, "shuffle": meta.shuffle,
            "batches_per_epoch": list(meta.batches_per_epoch), "num_seeds": meta.num_seeds,
            "node_dtype": meta.node_dtype, "store_version": meta.store_version,
            "format_version": meta.format_version, "stats": dict(meta.stats),
            **({"task": meta.task, "link": dict(meta.link)} if meta.task != "node" else {}),
            **({"shard": {"group": meta.shard_group, "rank": meta.shard_rank,
                          "world_size": meta.shard_world_size}} if meta.sharded else {})}


def format_fanouts(fanouts: Sequence[int]) -> str:
    return ",".join("all" if f == ALL_NEIGHBORS else str(f) for f in fanouts)


# -- finding plans: the latest, a group's shards, the plan a run uses -----------------

def latest_plan(store: Store) -> str:
    """The name of the most recently sampled plan, of any split and world size."""
    return newest_plan(store, None, split=None, task=None).name


def group_shards(store: Store, group: str, plans: Mapping[str, PlanMeta] | None = None
                 ) -> dict[int, PlanMeta]:
    """The current shards of ``group`` by rank (stale shards of an earlier, larger world
    size are left out); empty when ``group`` is not a sharded plan."""
    plans = list_plans(store) if plans is None else plans
    members = [m for m in plans.values() if m.shard_group == group]
    if not members:
        return {}
    newest = max(m.store_version for m in members)
    return {m.shard_rank: m for m in members if m.store_version == newest}


def group_of(meta: PlanMeta) -> str:
    """The name a user gives for ``meta``'s plan: its group for a shard, else its name."""
    return meta.shard_group or meta.name


#: The split whose plans are trained on, and chosen when no plan is named.
TRAIN_SPLIT = "train"


def is_evaluation_split(split: str) -> bool:
    """Whether a plan of ``split`` samples held-out nodes (``val``, ``test`` or any other
    named split of the store but ``train``); ``custom`` (explicit seeds the caller gave)
    is not one."""
    return split not in (TRAIN_SPLIT, "custom")


def default_plan(store: Store, world_size: int | None = 1, *, split: str | None = TRAIN_SPLIT,
                 task: str | None = "node") -> str:
    """The name (a plan's, or a shard group's) of :func:`newest_plan`."""
    chosen = group_of(newest_plan(store, world_size, split=split, task=task))
    log.info("no plan named: using %r, the most recent %s plan of %s", chosen,
             split or "sampled", store.path)
    return chosen


def newest_plan(store: Store, world_size: int | None = 1, *, split: str | None = TRAIN_SPLIT,
                task: str | None = "node") -> PlanMeta:
    """The meta of the most recently sampled plan (of a shard, for a shard group) of
    ``split`` (the training split unless told otherwise; ``None``: any split) for
    ``world_size`` ranks (``None``: any).

    Falls back to the newest plan of ``split`` for another world size, so that the
    mismatch is reported by :func:`resolve_plan` with its fix. A plan of another split is
    never chosen for the training split: evaluation plans (``val``, ``val-eval``, ...)
    are read only when named. Nor is a plan of another ``task`` (``None``: any): a
    link-prediction plan is used only when named, or by ``train --task link``."""
    plans = list_plans(store)
    cands = {n: m for n, m in plans.items() if (split is None or m.split == split)
             and (task is None or m.task == task)}
    if not cands:
        what = f"{split!r} plan" if split else "plan"
        if task is not None and any(m.task != task for m in plans.values()):
            what += f" for {'node classification' if task == 'node' else task + ' prediction'}"
        others = sorted({f"{group_of(m)} ({m.split})" for m in plans.values()})
        have = f" (it has: {', '.join(others)})" if others else ""
        flags = "" if split in (None, TRAIN_SPLIT) else f" --split {split}"
        raise StoreNotFoundError(f"store {store.path} has no {what}{have}: create one with "
                                 f"`oocstore sample {store.path}{flags} --fanouts 10,5 "
                                 "--batch-size 1024`, or name the plan to use")
    fitting = {n: m for n, m in cands.items()
               if world_size is None or m.shard_world_size == world_size}

    def newest(n: str) -> tuple[int, str]:
        return store.array_meta(cands[n].arrays["index"]).version, n

    return cands[max(fitting or cands, key=newest)]


def check_training_plan(store: Store, name: str, *, allow_eval_split: bool = False) -> PlanMeta:
    """The meta of plan ``name`` (a plan, shard or shard group) that a run is about to
    train on; refuses a plan of an evaluation split unless ``allow_eval_split`` (the
    caller then says, once, that it trains on one). Training on held-out nodes makes
    their accuracy meaningless, so it is never done without being asked for."""
    plans = list_plans(store)
    meta = plans.get(name)
    if meta is None:
        shards = group_shards(store, name, plans)
        if not shards:
            raise StoreNotFoundError(f"store {store.path} has no plan {name!r}")
        meta = shards[min(shards)]
    if is_evaluation_split(meta.split):
        if not allow_eval_split:
            raise UsageError(
                f"plan {group_of(meta)!r} of {store.path} samples the {meta.split!r} split, "
                "not the training split: training on it would fit the model to the nodes it "
                f"is evaluated on; train on a {TRAIN_SPLIT!r}-split plan (omit the plan to use "
                "the most recent one), or pass allow_eval_split=True to train on it "
                "deliberately")
    return meta


def resolve_plan(store: Store, plan: str | None, *, rank: int = 0, world_size: int = 1) -> str:
    """The name of the plan rank ``rank`` of ``world_size`` reads for ``plan`` (a plan
    name, a shard group name or a shard name; ``None``: :func:`default_plan`, the most
    recent training plan for this world size)."""
    rank, world_size = check_rank(rank, world_size)
    plans = list_plans(store)
    if plan is None:
        plan = default_plan(store, world_size)
    meta = plans.get(plan)
    if meta is not None and meta.sharded:
        plan = meta.shard_group  # a shard name stands for its group
    elif meta is not None and world_size == 1:
        return plan
    shards = group_shards(store, plan, plans)
    if not shards:
        if meta is not None:
            raise UsageError(
                f"plan {plan!r} of {store.path} is one unsharded plan but this run has world size "
                f"{world_size}: sample one shard per rank with `oocstore sample {store.path} "
                f"--name {plan} --world-size {world_size} ...` and pack it with `oocstore pack "
                f"{store.path} --plan {plan}`, or run a single process")
        have = ", ".join(sorted({group_of(m) for m in plans.values()})) or "none"
        raise StoreNotFoundError(f"store {store.path} has no plan {plan!r} (it has: {have}): "
                                 f"create it with `oocstore sample {store.path} --name {plan}"
                                 + (f" --world-size {world_size}`" if world_size > 1 else "`"))
    sampled_for = next(iter(shards.values())).shard_world_size
    if sampled_for != world_size:
        raise UsageError(
            f"plan {plan!r} of {store.path} was sampled for world size {sampled_for} "
            f"({sampled_for} shards) but this run has world size {world_size}: launch "
            f"{sampled_for} processes in all (e.g. `torchrun --nproc-per-node {sampled_for} ...`), "
            f"or re-sample for this world size with `oocstore sample {store.path} --name {plan} "
            f"--world-size {world_size} --overwrite ...` and pack it again")
    if rank not in shards:
        raise StoreNotFoundError(
            f"plan {plan!r} of {store.path} has no shard for rank {rank} (it has shards for "
            f"ranks {', '.join(map(str, sorted(shards)))} of {sampled_for}): the store is "
            f"incomplete (copy the whole store to every node), or re-sample with `oocstore "
            f"sample {store.path} --name {plan} --world-size {world_size} --overwrite ...`")
    return shard_name(plan, rank)


def plans_to_pack(store: Store, plan: str | None) -> list[str]:
    """The plans ``oocstore pack --plan PLAN`` packs outside ``torchrun``: every current
    shard of a group (in rank order), else the one plan. Without ``plan``: the most
    recently sampled training plan or shard group, for whatever world size it was
    sampled (outside ``torchrun`` the world size is not known; that is the plan the user
    just sampled for training)."""
    plans = list_plans(store)
    if plan is None:
        # By the chosen plan's meta, not its name: a shard group may share its name with
        # an older unsharded plan.
        meta = newest_plan(store, None, task=None)
        log.info("no --plan: packing %r, the most recent training plan of %s",
                 group_of(meta), store.path)
        plan = group_of(meta)
    else:
        meta = plans.get(plan)
    if meta is not None and not meta.sharded:
        return [plan]
    group = meta.shard_group if meta is not None else plan
    shards = group_shards(store, group, plans)
    if not shards:
        have = ", ".join(sorted({group_of(m) for m in plans.values()})) or "none"
        raise StoreNotFoundError(f"store {store.path} has no plan {plan!r} (it has: {have}): "
                                 f"create it with `oocstore sample {store.path} --name {plan}`")
    return [shards[r].name for r in sorted(shards)]


def check_rank(rank: Any, world_size: Any) -> tuple[int, int]:
    for value, what in ((world_size, "world_size"), (rank, "rank")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{what} {value!r} is not an integer: give the process's rank and "
                             "the number of processes (torch.distributed's get_rank / "
                             "get_world_size)")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} of world size {world_size}: the rank must be in "
                         f"0..world_size-1 and the world size at least 1")
    return rank, world_size
