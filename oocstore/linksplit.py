"""The edge split of a store for link prediction: which edges are trained on, which are
held out, and the graph messages may pass over.

A link-prediction model learns to score node pairs; evaluating it on edges it could see
while training (as messages in its sampled neighbourhoods) leaks the label. So, as
PyTorch Geometric's ``RandomLinkSplit`` does, the validation and test edges are removed
from the *message-passing graph* every training and evaluation batch is sampled from,
and only the training edges serve as positive examples. The split is stored with the
store (written by :mod:`oocstore.samplers.link` through the store's commit protocol,
every array with its CRC-32 chunk checksums), so training, evaluation and anyone
reading the held-out edges later agree on it.

``edge_split`` (catalog entry)
    :class:`EdgeSplitMeta` as JSON: fractions, seed, whether edges were read as
    undirected, counts, the graph it was cut from (fingerprint) and its array names.

``edge_split/indptr``, ``edge_split/indices`` (arrays)
    The message-passing graph in CSC form (the store's graph less the held-out edges,
    both directions of an undirected edge). A reduced copy rather than a mask over the
    store's graph: the neighbour sampler then runs on it unchanged (no per-edge test in
    its inner loop), at the price of a second copy of the graph on disk.

``edge_split/train``, ``edge_split/val``, ``edge_split/test`` (int64 ``[n, 2]``)
    The edges (source, destination; global ids) of each part. An undirected edge is
    listed once (source < destination).

``edge_split/val_neg``, ``edge_split/test_neg`` (int64 ``[n, M]``)
    Fixed negatives for evaluation, drawn once: row ``i`` holds ``M`` destinations ``w``
    making negative pairs ``(src_i, w)`` with the ``i``-th held-out edge's source. Metrics
    (:mod:`oocstore.train.link_metrics`): MRR ranks each positive against its row's ``M``
    negatives (the ogbl-citation2 convention); Hits@K and AUC compare all positives
    against the shared pool of column 0 (one negative per positive, the ratio
    ``RandomLinkSplit`` uses for evaluation; ogbl-collab's convention of one shared
    negative set).

Negatives (training and evaluation) are never a self-loop and never an edge of the
store's full graph in either direction, unless a node's candidates run out (a
bounded number of redraws; counted in the meta's ``neg_collisions``).

The split is optional: stores without one are read as before, and an older oocstore
ignores these entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .checked_read import read_checked
from .errors import FormatError, StoreNotFoundError
from .store import Store
from .store.files import checksum
from .store.format import VersionedEntry

#: Version of the layout above; readers refuse others.
EDGE_SPLIT_FORMAT_VERSION = 1

#: Catalog key of the split.
EDGE_SPLIT_KEY = "edge_split"

#: The parts of a split and their array names.
PARTS = ("indptr", "indices", "train", "val", "test", "val_neg", "test_neg")


def split_array_names() -> dict[str, str]:
    return {p: f"{EDGE_SPLIT_KEY}/{p}" for p in PARTS}


@dataclass(frozen=True)
class EdgeSplitMeta(VersionedEntry):
    """The catalog entry of a store's edge split."""

    KIND, VERSION, LIST_FIELDS = "edge split", EDGE_SPLIT_FORMAT_VERSION, ("fractions",)
    FIX = "re-create it with `oocstore sample STORE --task link --overwrite ...`"

    fractions: tuple[float, float, float]  # train, val, test
    seed: int
    undirected: bool  # an edge and its reverse are one edge (held out together)
    num_nodes: int
    num_train: int
    num_val: int
    num_test: int
    eval_negatives: int  # M: fixed negatives per held-out edge
    mp_edges: int  # edges of the message-passing graph (directed count, as in the CSC)
    graph_fingerprint: int  # of the store graph it was cut from
    fingerprint: int  # of the split's own arrays (content_fingerprint)
    neg_collisions: int = 0  # evaluation negatives that are edges after every redraw
    arrays: dict[str, str] = field(default_factory=dict)
    format_version: int = EDGE_SPLIT_FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))


def edge_split_meta(store: Store) -> EdgeSplitMeta | None:
    raw = store.get(EDGE_SPLIT_KEY)
    return None if raw is None else EdgeSplitMeta.from_dict(raw)


def content_fingerprint(arrays: dict[str, np.ndarray]) -> int:
    """CRC-32 over the split's parts (name and contents): recorded in the split's meta
    and in every plan sampled on it, so a plan sampled on a replaced split is
    recognised."""
    crc = 0
    for part in PARTS:
        crc = checksum(part.encode(), crc)
        crc = checksum(np.ascontiguousarray(arrays[part]).view(np.uint8).reshape(-1), crc)
    return int(crc)


@dataclass(frozen=True)
class EdgeSplit:
    """A store's edge split in memory (checksums checked on reading)."""

    meta: EdgeSplitMeta
    indptr: np.ndarray  # [num_nodes + 1] int64, message-passing graph (CSC)
    indices: np.ndarray  # [mp_edges] source ids
    train: np.ndarray  # [num_train, 2] int64
    val: np.ndarray  # [num_val, 2]
    test: np.ndarray  # [num_test, 2]
    val_neg: np.ndarray  # [num_val, M] destinations of negatives
    test_neg: np.ndarray  # [num_test, M]

    def held_out(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """``(positives [n, 2], negative destinations [n, M])`` of ``val`` or ``test``."""
        return getattr(self, part), getattr(self, f"{part}_neg")


def read_edge_split(store: Store) -> EdgeSplit:
    """The store's edge split, every array's chunk checksums checked."""
    meta = edge_split_meta(store)
    if meta is None:
        raise StoreNotFoundError(f"store {store.path} has no edge split: create one with "
                                 f"`oocstore sample {store.path} --task link --fanouts 10,5 "
                                 "--batch-size 512 --neg-ratio 1`")
    fix = "re-create the split with `oocstore sample STORE --task link --overwrite ...`"
    graph = store.graph
    if graph is None or meta.num_nodes != graph.num_nodes:
        raise FormatError(f"store {store.path}: the edge split is of {meta.num_nodes} nodes, the "
                          f"store's graph has {graph.num_nodes if graph else 'no'} nodes: {fix}")
    arrays = {}
    for part, name in split_array_names().items():
        if meta.arrays.get(part) != name:
            raise FormatError(f"store {store.path}: the edge split lists no {part!r} array: "
                              f"the catalog is damaged; {fix}")
        arrays[part] = read_checked(store, name, fix=fix)
    sizes = {"train": meta.num_train, "val": meta.num_val, "test": meta.num_test,
             "val_neg": meta.num_val, "test_neg": meta.num_test}
    for part, n in sizes.items():
        a = arrays[part]
        if a.ndim != 2 or a.shape[0] != n or (part in ("train", "val", "test") and a.shape[1] != 2):
            raise FormatError(f"store {store.path}: edge split array {part!r} has shape "
                              f"{a.shape}, expected {n} rows: {fix}")
        if a.size and (int(a.min()) < 0 or int(a.max()) >= meta.num_nodes):
            raise FormatError(f"store {store.path}: edge split array {part!r} holds a node id "
                              f"outside 0..{meta.num_nodes - 1}: {fix}")
    indptr, indices = arrays["indptr"], arrays["indices"]
    if (indptr.shape != (meta.num_nodes + 1,) or int(indptr[0]) != 0
            or int(indptr[-1]) != indices.shape[0] or (np.diff(indptr) < 0).any()
            or (indices.size and (int(indices.min()) < 0
                                  or int(indices.max()) >= meta.num_nodes))):
        raise FormatError(f"store {store.path}: the edge split's message-passing graph is "
                          f"inconsistent: {fix}")
    return EdgeSplit(meta=meta, **arrays)
