"""What every ingest source shares: CSC construction, splits, the streaming feature
writer with its checks, and :func:`build_store`, which writes one new store atomically.

Memory: features stream through in chunks of :data:`FEATURE_CHUNK_ROWS`-ish rows (the
bulk of a dataset, and what may exceed RAM). Topology is built in memory, about 24 bytes
per stored edge at peak plus 8 bytes per node — independent of the feature size.
"""

from __future__ import annotations

import importlib
import logging
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np

from ..errors import SourceError, UsageError
from ..store import GraphMeta, Store

log = logging.getLogger(__name__)

#: Features are written in blocks of about this many bytes (bounded ingest memory).
FEATURE_BLOCK_BYTES = 16 << 20

ProgressFn = Callable[[int], None]


def parse_split(text: str | None, *, what: str = "--split") -> tuple[float, float, float]:
    if text is None:
        return (0.6, 0.2, 0.2)
    try:
        parts = [float(p) for p in str(text).split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(not math.isfinite(p) or p < 0 for p in parts) or sum(parts) > 1 + 1e-9 \
            or parts[0] <= 0:
        raise UsageError(f"{what} {text!r} is not three non-negative fractions summing to at most 1 "
                         "with a non-empty training part: write e.g. --split 0.6,0.2,0.2")
    return (parts[0], parts[1], parts[2])


def random_splits(num_nodes: int, fractions: tuple[float, float, float], seed: int
                  ) -> dict[str, np.ndarray]:
    """Disjoint train/val/test node ids (sorted int64), sizes floor(fraction * N)."""
    rng = np.random.default_rng([seed, 0x5B1175])
    perm = rng.permutation(num_nodes)
    n_train = int(fractions[0] * num_nodes)
    n_val = int(fractions[1] * num_nodes)
    n_test = min(int(fractions[2] * num_nodes), num_nodes - n_train - n_val)
    if n_train == 0:
        raise UsageError(f"--split gives an empty training set for {num_nodes} nodes: raise the "
                         "training fraction")
    out = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val],
           "test": perm[n_train + n_val:n_train + n_val + n_test]}
    return {k: np.sort(v).astype(np.int64) for k, v in out.items()}


def build_csc(num_nodes: int, src: np.ndarray, dst: np.ndarray, *, directed: bool,
              where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """CSC of the edges ``src -> dst`` (symmetrised unless ``directed``), with duplicate
    edges and self-loops dropped. Returns ``(indptr int64, indices, dropped)``."""
    src = np.asarray(src)
    dst = np.asarray(dst)
    if src.shape != dst.shape or src.ndim != 1:
        raise SourceError(f"{where}: edge sources and destinations differ in shape "
                          f"({src.shape} vs {dst.shape})")
    if src.size:
        lo = min(int(src.min()), int(dst.min()))
        hi = max(int(src.max()), int(dst.max()))
        if lo < 0 or hi >= num_nodes:
            bad = lo if lo < 0 else hi
            raise SourceError(f"{where}: edge names node {bad}, outside 0..{num_nodes - 1}: "
                              "fix the edge list or give the right node count")
    src = src.astype(np.int64, copy=False)
    dst = dst.astype(np.int64, copy=False)
    n_in = src.size
    if not directed:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    keep = src != dst
    key = dst[keep] * np.int64(num_nodes) + src[keep]
    del keep
    # sort + "differs from the previous key" mask: same result as np.unique, which is
    # ~100x slower on large int64 arrays with numpy 2.x (it sorts with a hash fallback).
    key.sort()
    if key.size:
        keep = np.empty(key.size, dtype=bool)
        keep[0] = True
        np.not_equal(key[1:], key[:-1], out=keep[1:])
        key = key[keep]
        del keep
    counts = np.bincount(key // num_nodes, minlength=num_nodes) if key.size else \
        np.zeros(num_nodes, dtype=np.int64)
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx_dtype = np.int32 if num_nodes < 2**31 else np.int64
    indices = (key % num_nodes).astype(idx_dtype)
    dropped = (n_in if directed else 2 * n_in) - key.size
    return indptr, indices, int(dropped)


@dataclass
class GraphSource:
    """Everything an ingest source hands to :func:`build_store`.

    ``features`` yields row blocks in node order; it may be a generator that reads the
    source lazily, so the whole feature matrix is never in memory.
    """

    num_nodes: int
    src: np.ndarray
    dst: np.ndarray
    directed: bool
    features: Iterable[np.ndarray]
    feat_dim: int
    labels: np.ndarray
    splits: dict[str, np.ndarray] | None = None  # None: generate with split_fractions/seed
    source: dict[str, Any] = field(default_factory=dict)
    where: str = "source"  # file named in errors about features / labels


def build_store(out: str | Path, g: GraphSource, *, dtype: str = "float32",
                split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0,
                overwrite: bool = False, allow_nonfinite: bool = False,
                progress: ProgressFn | None = None) -> Path:
    """Write a new store at ``out`` from ``g``; nothing appears there unless it succeeds."""
    if dtype not in ("float32", "float16"):
        raise UsageError(f"--dtype {dtype!r} is not supported: use float32 or float16")
    n = g.num_nodes
    labels = np.asarray(g.labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise SourceError(f"{g.where}: labels have shape {labels.shape} but the graph has {n} "
                          "nodes: give one label per node")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise SourceError(f"{g.where}: labels have dtype {labels.dtype}; class labels must be "
                          "integers 0..C-1")
    if labels.size and labels.min() < 0:
        raise SourceError(f"{g.where}: label {int(labels.min())} is negative: labels must be 0..C-1")
    indptr, indices, dropped = build_csc(n, g.src, g.dst, directed=g.directed, where=g.where)
    splits = g.splits if g.splits is not None else random_splits(n, split_fractions, seed)
    seen = np.zeros(n, dtype=bool)
    for name, ids in sorted(splits.items()):
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise SourceError(f"{g.where}: {name} split names node {bad}, outside 0..{n - 1}: "
                              "fix the split or the node count")
        if seen[ids].any() or np.unique(ids).size != ids.size:
            raise SourceError(f"{g.where}: the {name} split repeats a node or shares one with "
                              "another split: splits must be disjoint sets of node ids")
        seen[ids] = True
    out = Path(out)
    with Store.create(out, overwrite=overwrite) as store:
        with store.transaction() as txn:
            _write_features(txn, g, dtype, allow_nonfinite, progress)
            txn.write_array("graph/indptr", indptr)
            txn.write_array("graph/indices", indices)
            txn.write_array("labels", labels.astype(np.int64))
            for name in sorted(splits):
                txn.write_array(f"split/{name}", np.asarray(splits[name], dtype=np.int64))
            txn.put("graph", GraphMeta(num_nodes=n, num_edges=int(indices.size),
                                       directed=g.directed).to_dict())
            txn.put("splits", {name: f"split/{name}" for name in sorted(splits)})
            txn.set_source({**g.source, "dropped_edges": dropped, "dtype": dtype})
    log.info("ingested %d nodes, %d edges into %s", n, indices.size, out)
    return out


def _write_features(txn, g: GraphSource, dtype: str, allow_nonfinite: bool,
                    progress: ProgressFn | None) -> None:
    w = txn.array_writer("features", dtype, (g.feat_dim,))
    np_dtype = np.dtype(dtype)
    for block in g.features:
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != g.feat_dim:
            raise SourceError(f"{g.where}: feature block has shape {block.shape}, expected "
                              f"(rows, {g.feat_dim})")
        if w.rows + block.shape[0] > g.num_nodes:
            raise SourceError(f"{g.where}: more feature rows than the graph's {g.num_nodes} "
                              "nodes: features and graph disagree")
        if not np.issubdtype(block.dtype, np.number) or np.issubdtype(block.dtype, np.complexfloating):
            raise SourceError(f"{g.where}: features have dtype {block.dtype}; expected real numbers")
        conv = block.astype(np_dtype, copy=False)
        if not allow_nonfinite and np.issubdtype(block.dtype, np.floating):
            finite = np.isfinite(conv)
            if not finite.all():
                r, c = np.argwhere(~finite)[0]
                raise SourceError(
                    f"{g.where}: feature row {w.rows + int(r)}, column {int(c)} is "
                    f"{conv[r, c]} (not finite{' after conversion to ' + dtype if np.isfinite(block[r, c]) else ''}): "
                    "clean the features or pass --allow-nonfinite to keep them")
        w.append(conv)
        if progress:
            progress(block.shape[0])
    if w.rows != g.num_nodes:
        raise SourceError(f"{g.where}: {w.rows} feature rows for a graph of {g.num_nodes} nodes: "
                          "features and graph disagree (is the source truncated?)")
    w.close()


def iter_blocks(array, rows_per_block: int | None = None) -> Iterator[np.ndarray]:
    """Row blocks of any sliceable 2-D array (memmap, zarr, scipy CSR) as dense ndarrays."""
    n = array.shape[0]
    if rows_per_block is None:
        itemsize = np.dtype(getattr(array, "dtype", np.float32)).itemsize
        row_bytes = max(1, int(np.prod(array.shape[1:])) * max(itemsize, 4))
        rows_per_block = max(1, FEATURE_BLOCK_BYTES // row_bytes)
    for lo in range(0, n, rows_per_block):
        block = array[lo:lo + rows_per_block]
        if hasattr(block, "toarray"):
            block = block.toarray()
        yield np.asarray(block)


# -- pickles ---------------------------------------------------------------------------

#: The only globals a pickle read by :func:`load_pickle` may name: numpy arrays, scipy
#: sparse matrices and plain containers — what Planetoid and GraphData files hold. Old
#: module paths (``numpy.core``, ``scipy.sparse.csr``, Python 2 ``__builtin__``) are
#: resolved to today's public namespaces, so old files load without deprecation warnings.
_SPARSE_CLASSES = frozenset(f"{fmt}_{kind}" for fmt in ("csr", "csc", "coo", "lil", "dok", "bsr", "dia")
                            for kind in ("matrix", "array"))
_NUMPY_GLOBALS = frozenset({"_reconstruct", "scalar", "ndarray", "dtype"})
_PLAIN_GLOBALS = {
    ("collections", "defaultdict"), ("collections", "OrderedDict"),
    ("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    *((b, n) for b in ("builtins", "__builtin__")
      for n in ("list", "dict", "set", "frozenset", "tuple", "int", "float", "complex", "bool",
                "str", "bytes", "bytearray", "object")),
}


class _Refused(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "numpy":
            if name in _NUMPY_GLOBALS and module in ("numpy", "numpy.core.multiarray",
                                                     "numpy._core.multiarray"):
                if name in ("ndarray", "dtype"):
                    return getattr(np, name)
                try:
                    return getattr(importlib.import_module("numpy._core.multiarray"), name)
                except ImportError:  # numpy < 2
                    return getattr(importlib.import_module("numpy.core.multiarray"), name)
            if module == "numpy.dtypes" and name.endswith("DType"):
                return getattr(np.dtypes, name)
        elif module.split(".")[:2] == ["scipy", "sparse"] and name in _SPARSE_CLASSES:
            import scipy.sparse

            return getattr(scipy.sparse, name)
        elif (module, name) in _PLAIN_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f"refusing to load {module}.{name}: only numpy arrays, scipy sparse "
                       "matrices and plain containers are allowed")


def load_pickle(f: BinaryIO, where: str | Path) -> Any:
    """Unpickle ``f`` (Python 2 pickles too, read as latin-1) allowing only the globals
    above; anything unreadable or disallowed becomes a :class:`SourceError` naming ``where``.

    The allow-list narrows what a hostile file can do, but pickles remain an attack
    surface: callers still only accept files the user says they trust.
    """
    try:
        return _RestrictedUnpickler(f, encoding="latin1").load()
    except _Refused as err:
        raise SourceError(f"{where}: cannot unpickle ({err}): this is not a file of the "
                          "expected format; check the path") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, OSError) as err:
        raise SourceError(f"{where}: cannot unpickle ({type(err).__name__}: {err}): the file is "
                          "truncated or corrupt; re-download or re-create it") from err
