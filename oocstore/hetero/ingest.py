"""Write a heterogeneous store: typed node sets, typed features, one CSC per relation.

Every input is checked before anything is written (node types of every relation exist,
feature and label rows match their type's count, edges name nodes of their endpoint
types, splits are disjoint and labelled), then the store is built in a staging directory
and appears under its name only once complete (:meth:`oocstore.store.Store.create`), so
a refused ingest leaves nothing behind and ``--overwrite`` never loses the old store.

Sources: :func:`read_ogb_dir` (an OGB-style directory of ``.npy`` arrays, layout in
``docs/HETERO.md``) and :mod:`.synthetic` (the generator).

Memory: features stream in row blocks (a memory-mapped ``.npy`` is never read whole);
each relation's CSC is built in memory, about 24 bytes per edge at peak, one relation
at a time, plus the source's own edge arrays. Features are stored as float32 or
float16 (``dtype``), whatever the source's real dtype.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SourceError, UsageError
from ..ingest.common import iter_blocks, random_splits
from ..ingest.csc import check_edges, csc_from_keys
from ..store import Store
from ..units import format_size
from .schema import (SCHEMA_KEY, EdgeType, HeteroSchema, NodeType, check_type_name, csc_names,
                     edge_key, feat_name, label_name, parse_edge_key, split_name)

log = logging.getLogger(__name__)

#: Prefix of the relations ``add_reverse`` creates (``author___writes___paper`` gets
#: ``paper___rev_writes___author``).
REVERSE_PREFIX = "rev_"
#: Most classes a labelled type may have (the synthetic generators' limit too): the
#: models' output layer is that wide.
MAX_CLASSES = 65536


@dataclass
class NodeSource:
    """One node type: its count, and optionally features (any 2-D array, e.g. a memmap:
    read in row blocks), labels and splits (split name -> node ids)."""

    count: int
    features: Any = None
    labels: np.ndarray | None = None
    splits: dict[str, np.ndarray] | None = None
    where: str = "source"  # named in errors about this type's arrays
    label_where: str = ""  # named in errors about its labels (default: ``where``)


@dataclass
class HeteroSource:
    """Everything :func:`build_hetero_store` writes: node types by name, edges per
    ``(src, rel, dst)`` as ``(src ids, dst ids)``, the target type (default: the only
    labelled type)."""

    nodes: dict[str, NodeSource]
    edges: dict[EdgeType, tuple[np.ndarray, np.ndarray]]
    target: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    edge_where: dict[EdgeType, str] = field(default_factory=dict)


def bipartite_csc(n_src: int, n_dst: int, src: np.ndarray, dst: np.ndarray, *,
                  drop_self_loops: bool) -> tuple[np.ndarray, np.ndarray]:
    """CSC of the edges ``src -> dst`` of one relation: ``indptr`` over the ``n_dst``
    destination nodes, ``indices`` source ids; duplicate edges dropped (and self-loops
    when both ends are of one type), sources of each destination in ascending order."""
    s = np.asarray(src, dtype=np.int64)
    d = np.asarray(dst, dtype=np.int64)
    if drop_self_loops:
        keep = s != d
        s, d = s[keep], d[keep]
    return csc_from_keys(d * np.int64(max(n_src, 1)) + s, n_src, n_dst)


def add_reverse_edges(src: HeteroSource) -> None:
    """Add ``(dst, rev_<rel>, src)`` for every relation ``(src, rel, dst)`` (in place)."""
    for (s, r, d), (a, b) in sorted(src.edges.items()):
        rev = (d, REVERSE_PREFIX + r, s)
        if rev in src.edges:
            raise UsageError(f"add_reverse=True: relation {edge_key(rev)} already exists in the "
                             "source: rename it or drop add_reverse")
        check_type_name(rev[1], "reverse relation")
        src.edges[rev] = (b, a)
        src.edge_where[rev] = src.edge_where.get((s, r, d), edge_key((s, r, d))) + " (reversed)"


def _check_nodes(src: HeteroSource, split_fractions, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Check every node type; returns the splits of each labelled type (generated where
    the source has none)."""
    if not src.nodes:
        raise SourceError("the source defines no node types")
    splits: dict[str, dict[str, np.ndarray]] = {}
    for name, ns in sorted(src.nodes.items()):
        check_type_name(name, "node type")
        if isinstance(ns.count, bool) or not isinstance(ns.count, (int, np.integer)) or ns.count < 1:
            raise SourceError(f"{ns.where}: node type {name!r} has count {ns.count!r}: give at "
                              "least one node")
        if ns.features is not None:
            shape = tuple(ns.features.shape)
            if len(shape) != 2 or shape[1] < 1:
                raise SourceError(f"{ns.where}: features of node type {name!r} have shape "
                                  f"{shape}; expected (rows, width) with width >= 1")
            if shape[0] != ns.count:
                raise SourceError(f"{ns.where}: features of node type {name!r} have {shape[0]} "
                                  f"rows but the type has {ns.count} nodes: give one row per "
                                  "node (or fix the count in num-node-dict.json)")
            dt = np.dtype(ns.features.dtype)
            if not np.issubdtype(dt, np.number) or np.issubdtype(dt, np.complexfloating):
                raise SourceError(f"{ns.where}: features of node type {name!r} have dtype {dt}; "
                                  "expected real numbers")
        if ns.labels is not None:
            lab = np.asarray(ns.labels)
            lw = ns.label_where or ns.where
            if lab.ndim != 1 or lab.shape[0] != ns.count:
                raise SourceError(f"{lw}: labels of node type {name!r} have shape "
                                  f"{lab.shape} but the type has {ns.count} nodes: give one "
                                  "label per node")
            if not np.issubdtype(lab.dtype, np.integer) or (lab.size and lab.min() < 0):
                raise SourceError(f"{lw}: labels of node type {name!r} must be integers "
                                  "0..C-1")
            if lab.size and int(lab.max()) >= MAX_CLASSES:
                raise SourceError(f"{lw}: labels of node type {name!r} reach "
                                  f"{int(lab.max())}: give classes 0..C-1 with C at most "
                                  f"{MAX_CLASSES} (renumber the labels)")
            splits[name] = _check_splits(name, ns, split_fractions, seed)
        elif ns.splits:
            raise SourceError(f"{ns.where}: node type {name!r} has splits but no labels: give "
                              f"node-label/{name}.npy or drop its splits")
    return splits


def _check_splits(name: str, ns: NodeSource, fractions, seed: int) -> dict[str, np.ndarray]:
    sp = ns.splits if ns.splits else random_splits(ns.count, fractions, seed)
    seen = np.zeros(ns.count, dtype=bool)
    out = {}
    for split, ids in sorted(sp.items()):
        check_type_name(split, f"split of node type {name!r}")
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise SourceError(f"{ns.where}: split {split!r} of node type {name!r} is not a 1-D "
                              "array of node ids")
        if ids.size and (ids.min() < 0 or ids.max() >= ns.count):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise SourceError(f"{ns.where}: split {split!r} of node type {name!r} names node "
                              f"{bad}, outside 0..{ns.count - 1}")
        if seen[ids].any() or np.unique(ids).size != ids.size:
            raise SourceError(f"{ns.where}: split {split!r} of node type {name!r} repeats a node "
                              "or shares one with another split: splits must be disjoint")
        seen[ids] = True
        out[split] = np.sort(ids).astype(np.int64)
    if "train" not in out or not out["train"].size:
        raise SourceError(f"{ns.where}: node type {name!r} has labels but an empty or missing "
                          "train split")
    return out


def _check_edges(src: HeteroSource) -> None:
    if not src.edges:
        raise SourceError("the source defines no relations (edge types)")
    for et, (a, b) in sorted(src.edges.items()):
        where = src.edge_where.get(et, f"relation {edge_key(et)}")
        for t, what in ((et[0], "source"), (et[2], "destination")):
            if t not in src.nodes:
                raise SourceError(f"{where}: the {what} node type {t!r} of relation "
                                  f"{edge_key(et)} does not exist (node types: "
                                  f"{', '.join(sorted(src.nodes))}): add it or fix the "
                                  "relation's name")
        check_type_name(et[1], f"{where}: relation")
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.ndim != 1:
            raise SourceError(f"{where}: edge sources and destinations differ in shape "
                              f"({a.shape} vs {b.shape})")
        if a.size and not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
            raise SourceError(f"{where}: edge ids have dtype {a.dtype}; expected integers")
        check_edges(a, a, src.nodes[et[0]].count, f"{where} (sources)")
        check_edges(b, b, src.nodes[et[2]].count, f"{where} (destinations)")
        _check_csc_memory(src, et, int(a.size), where)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: no limit


def _check_csc_memory(src: HeteroSource, et: EdgeType, edges: int, where: str) -> None:
    """A relation's CSC is built in memory (module docstring): refuse one that cannot be,
    e.g. after a mistyped count in ``num-node-dict.json``, before anything is written."""
    n_dst = src.nodes[et[2]].count
    need = 8 * (n_dst + 1) + 24 * edges
    have = _physical_memory()
    if need > have:
        raise SourceError(f"{where}: the CSC of relation {edge_key(et)} needs "
                          f"{format_size(need)} in memory ({n_dst} {et[2]!r} nodes, {edges} "
                          f"edges), more than this machine's {format_size(have)}: check the "
                          f"count of {et[2]!r} (num-node-dict.json)")


def _choose_target(src: HeteroSource) -> str:
    labelled = sorted(n for n, ns in src.nodes.items() if ns.labels is not None)
    if src.target is not None:
        if src.target not in src.nodes:
            raise UsageError(f"target node type {src.target!r} does not exist (node types: "
                             f"{', '.join(sorted(src.nodes))})")
        if src.target not in labelled:
            raise UsageError(f"target node type {src.target!r} has no labels (labelled types: "
                             f"{', '.join(labelled) or 'none'}): choose one of those")
        return src.target
    if len(labelled) != 1:
        raise UsageError(f"the source has {len(labelled)} labelled node types "
                         f"({', '.join(labelled) or 'none'}): name the target type "
                         "(target=... / --target)")
    return labelled[0]


def build_hetero_store(out: str | Path, src: HeteroSource, *, dtype: str = "float32",
                       add_reverse: bool = False, overwrite: bool = False,
                       split_fractions=(0.6, 0.2, 0.2), seed: int = 0,
                       allow_nonfinite: bool = False) -> HeteroSchema:
    """Check ``src`` and write it as a new heterogeneous store at ``out`` (atomically)."""
    if dtype not in ("float32", "float16"):
        raise UsageError(f"dtype={dtype!r} is not supported: use float32 or float16")
    Store.check_new_path(out, overwrite=overwrite)
    if add_reverse:
        add_reverse_edges(src)
    splits = _check_nodes(src, split_fractions, seed)
    _check_edges(src)
    target = _choose_target(src)
    nodes = {}
    for name, ns in src.nodes.items():
        width = int(ns.features.shape[1]) if ns.features is not None else 0
        classes = int(np.asarray(ns.labels).max()) + 1 if ns.labels is not None else 0
        nodes[name] = NodeType(count=int(ns.count), feat_dim=width, dtype=dtype if width else "",
                               num_classes=classes, splits=tuple(sorted(splits.get(name, {}))))
    edge_counts: dict[EdgeType, int] = {}
    with Store.create(out, overwrite=overwrite) as store:
        with store.transaction() as txn:
            for name, ns in sorted(src.nodes.items()):
                if ns.features is not None:
                    _write_features(txn, name, ns, dtype, allow_nonfinite)
                if ns.labels is not None:
                    txn.write_array(label_name(name), np.asarray(ns.labels, dtype=np.int64))
                for split, ids in splits.get(name, {}).items():
                    txn.write_array(split_name(name, split), ids)
            for et, (a, b) in sorted(src.edges.items()):  # one relation in memory at a time
                indptr, indices = bipartite_csc(src.nodes[et[0]].count, src.nodes[et[2]].count,
                                                a, b, drop_self_loops=et[0] == et[2])
                ip, ix = csc_names(et)
                txn.write_array(ip, indptr)
                txn.write_array(ix, indices)
                edge_counts[et] = int(indices.size)
                del indptr, indices
            schema = HeteroSchema(node_types=nodes, edge_types=edge_counts, target=target,
                                  source={**src.source, "add_reverse": bool(add_reverse)})
            txn.put(SCHEMA_KEY, schema.to_dict())
            txn.set_source({"kind": "hetero", **schema.source, "dtype": dtype})
    log.info("ingested %d node types, %d relations into %s", len(nodes), len(edge_counts), out)
    return schema


def _write_features(txn, name: str, ns: NodeSource, dtype: str, allow_nonfinite: bool) -> None:
    width = int(ns.features.shape[1])
    w = txn.array_writer(feat_name(name), dtype, (width,))
    np_dtype = np.dtype(dtype)
    for block in iter_blocks(ns.features):
        conv = block.astype(np_dtype, copy=False)
        if not allow_nonfinite and np.issubdtype(block.dtype, np.floating):
            bad = ~np.isfinite(conv)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise SourceError(f"{ns.where}: feature row {w.rows + int(r)}, column {int(c)} "
                                  f"of node type {name!r} is not finite: clean the features or "
                                  "pass allow_nonfinite=True")
        w.append(conv)
    w.close()


# -- the OGB-style directory -------------------------------------------------------------

def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise SourceError(f"{path}: not a readable .npy array ({err}): re-export it with "
                          "numpy.save") from None


def read_ogb_dir(root: str | Path, *, target: str | None = None) -> HeteroSource:
    """The heterogeneous source in directory ``root`` (layout: ``docs/HETERO.md``)::

        num-node-dict.json                    {"paper": 1000, ...} (needed for types
                                              without features; else optional)
        node-feat/<type>.npy                  [count, width] features
        node-label/<type>.npy                 [count] int labels
        edge_index/<src>___<rel>___<dst>.npy  [2, E] int: row 0 sources, row 1 destinations
        split/<type>/<split>.npy              node ids (train, val, test); optional
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root} is not a directory: give the directory holding node-feat/, "
                          "edge_index/ and node-label/")
    counts: dict[str, int] = {}
    cfile = root / "num-node-dict.json"
    if cfile.exists():
        try:
            raw = json.loads(cfile.read_text())
            counts = {str(k): int(v) for k, v in raw.items()}
        except (ValueError, TypeError, AttributeError) as err:
            raise SourceError(f"{cfile}: not a JSON object of node type -> count ({err})") from None
    feats = {p.stem: _load_npy(p) for p in sorted((root / "node-feat").glob("*.npy"))}
    labels = {p.stem: np.asarray(_load_npy(p)) for p in sorted((root / "node-label").glob("*.npy"))}
    for name, lab in labels.items():
        if lab.ndim == 2 and lab.shape[1] == 1:  # OGB writes labels as [N, 1]
            labels[name] = lab[:, 0]
    types = sorted(set(counts) | set(feats) | set(labels))
    nodes = {}
    for t in types:
        where = str(root / "node-feat" / f"{t}.npy") if t in feats else str(cfile)
        if t in counts:
            count = counts[t]
        elif t in feats:
            count = int(feats[t].shape[0])
        else:
            count = int(labels[t].shape[0])
        sdir = root / "split" / t
        splits = {p.stem: np.asarray(_load_npy(p)).reshape(-1)
                  for p in sorted(sdir.glob("*.npy"))} if sdir.is_dir() else None
        nodes[t] = NodeSource(count=count, features=feats.get(t), labels=labels.get(t),
                              splits=splits, where=where,
                              label_where=str(root / "node-label" / f"{t}.npy"))
    edges, where = {}, {}
    for p in sorted((root / "edge_index").glob("*.npy")):
        et = parse_edge_key(p.stem, where=f"{p}: edge type")
        arr = _load_npy(p)
        if arr.ndim != 2 or arr.shape[0] != 2:
            raise SourceError(f"{p}: edge index has shape {arr.shape}; expected (2, E): row 0 "
                              "sources, row 1 destinations")
        edges[et] = (np.asarray(arr[0]), np.asarray(arr[1]))
        where[et] = str(p)
    if not types:
        raise SourceError(f"{root}: no node types found (no node-feat/*.npy, node-label/*.npy "
                          "or num-node-dict.json)")
    return HeteroSource(nodes=nodes, edges=edges, target=target, edge_where=where,
                        source={"kind": "hetero-ogb", "dir": str(root)})
