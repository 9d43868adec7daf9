"""What every ingest source shares: CSC construction, splits, the streaming feature
writer with its checks, and :func:`build_store`, which writes one new store atomically.

Memory: features stream through in blocks of about :data:`FEATURE_BLOCK_BYTES` (the
bulk of a dataset, and what may exceed RAM). Topology given as whole edge arrays is built
in memory, about 24 bytes per stored edge at peak plus 8 bytes per node — independent of
the feature size; a source that yields its edges in blocks (the synthetic generator) gets
its CSC built out of core in bounded memory (:mod:`oocstore.ingest.csc`).
"""

from __future__ import annotations

import copyreg
import importlib
import io
import logging
import math
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np

from ..errors import SourceError, UsageError
from ..store import GraphMeta, Store
from .csc import check_edges, csc_from_keys

log = logging.getLogger(__name__)

#: Features are written in blocks of about this many bytes (bounded ingest memory).
FEATURE_BLOCK_BYTES = 16 << 20

#: Widest feature row accepted (4 Mi float32 columns): a block holds at least one row,
#: so this bounds ingest memory too; a sparse source declaring more columns is refused
#: before any row is densified.
MAX_FEATURE_ROW_BYTES = FEATURE_BLOCK_BYTES

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
        raise UsageError(f"split_fractions gives an empty training set for {num_nodes} nodes: "
                         "raise the training fraction")
    out = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val],
           "test": perm[n_train + n_val:n_train + n_val + n_test]}
    return {k: np.sort(v).astype(np.int64) for k, v in out.items()}


def build_csc(num_nodes: int, src: np.ndarray, dst: np.ndarray, *, directed: bool,
              where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """CSC of the edges ``src -> dst`` (symmetrised unless ``directed``), with duplicate
    edges and self-loops dropped. Returns ``(indptr int64, indices, dropped)``."""
    src, dst = check_edges(src, dst, num_nodes, where)
    src = src.astype(np.int64, copy=False)
    dst = dst.astype(np.int64, copy=False)
    n_in = src.size
    if not directed:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    keep = src != dst
    key = dst[keep] * np.int64(num_nodes) + src[keep]
    del keep, src, dst
    indptr, indices = csc_from_keys(key, num_nodes, num_nodes)
    dropped = (n_in if directed else 2 * n_in) - indices.size
    return indptr, indices, int(dropped)


@dataclass
class GraphSource:
    """Everything an ingest source hands to :func:`build_store`.

    ``features`` yields row blocks in node order; it may be a generator that reads the
    source lazily, so the whole feature matrix is never in memory. Edges come either as
    whole ``src`` / ``dst`` arrays (CSC built in memory) or, for sources too large for
    that, as ``edge_blocks``: a callable returning an iterator of ``(src, dst)`` blocks,
    with ``num_input_edges`` their total, and the CSC is built out of core
    (:mod:`oocstore.ingest.csc`).
    """

    num_nodes: int
    src: np.ndarray | None
    dst: np.ndarray | None
    directed: bool
    features: Iterable[np.ndarray]
    feat_dim: int
    labels: np.ndarray
    splits: dict[str, np.ndarray] | None = None  # None: generate with split_fractions/seed
    source: dict[str, Any] = field(default_factory=dict)
    where: str = "source"  # file named in errors about features / labels
    edge_blocks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None = None
    num_input_edges: int = 0  # edges edge_blocks yields in all (sizes the out-of-core build)


def build_store(out: str | Path, g: GraphSource, *, dtype: str = "float32",
                split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0,
                overwrite: bool = False, allow_nonfinite: bool = False,
                progress: ProgressFn | None = None, csc_memory: int | None = None) -> Path:
    """Write a new store at ``out`` from ``g``; nothing appears there unless it succeeds.
    ``csc_memory``: memory bound of the out-of-core CSC build of a source with
    ``edge_blocks`` (default :data:`~oocstore.ingest.csc.DEFAULT_CSC_MEMORY`)."""
    if dtype not in ("float32", "float16"):
        raise UsageError(f"dtype={dtype!r} is not supported: use float32 or float16")
    n = g.num_nodes
    row_bytes = int(g.feat_dim) * np.dtype(dtype).itemsize
    if row_bytes > MAX_FEATURE_ROW_BYTES:
        raise SourceError(f"{g.where}: the features declare {g.feat_dim} columns, {row_bytes} "
                          f"bytes per {dtype} row, more than the {MAX_FEATURE_ROW_BYTES} this "
                          "ingest accepts (a damaged or hostile shape?); check the source")
    labels = np.asarray(g.labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise SourceError(f"{g.where}: labels have shape {labels.shape} but the graph has {n} "
                          "nodes: give one label per node")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise SourceError(f"{g.where}: labels have dtype {labels.dtype}; class labels must be "
                          "integers 0..C-1")
    if labels.size and labels.min() < 0:
        raise SourceError(f"{g.where}: label {int(labels.min())} is negative: labels must be 0..C-1")
    streaming = g.edge_blocks is not None
    if not streaming:
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
            if streaming:
                from .csc import DEFAULT_CSC_MEMORY, write_csc_streaming

                # Spill files inside the staging directory: on the store's disk, and
                # removed with it if the process dies mid-way.
                st = write_csc_streaming(txn, n, g.edge_blocks(), directed=g.directed,
                                         where=g.where, expected_edges=g.num_input_edges,
                                         memory_bytes=csc_memory or DEFAULT_CSC_MEMORY)
                num_edges, dropped = st.num_edges, st.dropped
            else:
                txn.write_array("graph/indptr", indptr)
                txn.write_array("graph/indices", indices)
                num_edges = int(indices.size)
                del indptr, indices
            txn.write_array("labels", labels.astype(np.int64))
            for name in sorted(splits):
                txn.write_array(f"split/{name}", np.asarray(splits[name], dtype=np.int64))
            txn.put("graph", GraphMeta(num_nodes=n, num_edges=num_edges,
                                       directed=g.directed).to_dict())
            txn.put("splits", {name: f"split/{name}" for name in sorted(splits)})
            txn.set_source({**g.source, "dropped_edges": dropped, "dtype": dtype})
    log.info("ingested %d nodes, %d edges into %s", n, num_edges, out)
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
                    "clean the features or pass allow_nonfinite=True to keep them")
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


#: What a pickle may allocate: this many times its own size, plus the slack (object
#: arrays hold an 8-byte pointer per item that may take one opcode byte in the file).
_PICKLE_ALLOC_FACTOR = 16
_PICKLE_ALLOC_SLACK = 1 << 20


class _Refused(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class _Bomb(pickle.UnpicklingError):
    """The pickle asks for far more memory than its file could describe."""


def _shape_bytes(shape: Any, itemsize: int) -> int | None:
    """Bytes of an array of ``shape`` (an int or a sequence of ints), None if malformed."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return None
    return math.prod(shape) * max(int(itemsize), 1)


class _RestrictedUnpickler(pickle._Unpickler):
    """The allow-list unpickler, also bounding what a call in the pickle may allocate.

    Every allowed callable that allocates from a small argument (``bytes(n)``,
    ``bytearray(n)``, ``ndarray(shape)``, numpy's ``_reconstruct``, a sparse matrix of a
    given shape, ``__new__`` through NEWOBJ) and every array state set by BUILD is checked
    against ``limit`` — a bound from the file's size — before it runs: a pickle of a few
    dozen bytes cannot ask for gigabytes. An object-array state must also hold exactly
    as many items as its shape declares (numpy would otherwise crash). This is the pure
    Python unpickler, whose opcodes can be intercepted; the files it reads are small."""

    def __init__(self, f, *, file_size: int, **kw):
        super().__init__(f, **kw)
        self._line_source = f.readline
        self.file_size = file_size
        self._file_readline = self._whole_line
        self.limit = _PICKLE_ALLOC_FACTOR * file_size + _PICKLE_ALLOC_SLACK
        # pickle._Unpickler.load reads opcodes through self.dispatch: a per-instance copy
        # with the checked opcodes.
        self.dispatch = dict(pickle._Unpickler.dispatch)
        self.dispatch[pickle.REDUCE[0]] = _RestrictedUnpickler._load_reduce
        self.dispatch[pickle.BUILD[0]] = _RestrictedUnpickler._load_build
        self.dispatch[pickle.NEWOBJ[0]] = _RestrictedUnpickler._load_newobj
        self.dispatch[pickle.NEWOBJ_EX[0]] = _RestrictedUnpickler._load_newobj_ex

    def _whole_line(self) -> bytes:
        # As the C unpickler: a text argument cut short by the end of the file is
        # truncation, not a (refused) shorter name.
        line = self._line_source()
        if not line.endswith(b"\n"):
            raise pickle.UnpicklingError("pickle data was truncated")
        return line

    def _refuse(self, what: str, nbytes: int) -> None:
        raise _Bomb(f"{what} asks for {nbytes} bytes, more than a {self.file_size} byte file "
                    "can describe (a memory bomb?)")

    def _check_call(self, func: Any, args: tuple) -> None:
        limit = self.limit
        if func in (bytes, bytearray):
            if args and isinstance(args[0], int) and args[0] > limit:
                self._refuse(f"{func.__name__}({args[0]})", args[0])
        elif func is copyreg._reconstructor:
            state = args[2] if len(args) == 3 else None
            if isinstance(state, int) and state > limit:
                self._refuse(f"copyreg._reconstructor(..., {state})", state)
        elif func is np.ndarray or getattr(func, "__name__", "") == "_reconstruct":
            shape = args[1] if func is not np.ndarray and len(args) > 1 else (
                args[0] if args else ())
            dtype = args[2] if func is not np.ndarray and len(args) > 2 else (
                args[1] if func is np.ndarray and len(args) > 1 else np.uint8)
            try:
                itemsize = np.dtype(dtype if not isinstance(dtype, bytes) else dtype.decode()
                                    ).itemsize
            except (TypeError, ValueError):
                itemsize = 1
            n = _shape_bytes(shape, itemsize)
            if n is not None and n > limit:
                self._refuse(f"a numpy array of shape {shape}", n)
        elif isinstance(func, type) and func.__name__ in _SPARSE_CLASSES:
            shape = args[0] if args else None
            if isinstance(shape, tuple) and len(shape) == 2 and all(
                    isinstance(d, int) for d in shape):
                n = _shape_bytes(max(shape) + 1, 8)
                if n is not None and n > limit:
                    self._refuse(f"a {func.__name__} of shape {shape}", n)

    def _load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if isinstance(args, tuple):
            self._check_call(func, args)
        self.stack[-1] = func(*args)

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        if isinstance(args, tuple):
            self._check_call(cls, args)
        self.append(cls.__new__(cls, *args))

    def _load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if isinstance(args, tuple):
            self._check_call(cls, args)
        self.append(cls.__new__(cls, *args, **kwargs))

    def _load_build(self):
        if len(self.stack) >= 2 and isinstance(self.stack[-2], np.ndarray):
            self._check_array_state(self.stack[-1])
        pickle._Unpickler.load_build(self)

    def _check_array_state(self, state: Any) -> None:
        """``ndarray.__setstate__((version, shape, dtype, fortran, data))``."""
        if not (isinstance(state, tuple) and len(state) in (4, 5)):
            return  # numpy refuses what it cannot read
        shape, dtype, data = state[-4], state[-3], state[-1]
        itemsize = dtype.itemsize if isinstance(dtype, np.dtype) else 1
        n = _shape_bytes(shape, itemsize)
        if n is None:
            return
        if n > self.limit:
            self._refuse(f"a numpy array state of shape {shape}", n)
        if isinstance(dtype, np.dtype) and dtype.hasobject:
            count = math.prod(shape)
            if not isinstance(data, list) or len(data) != count:
                raise _Bomb(f"an object array of shape {shape} comes with "
                            f"{len(data) if isinstance(data, list) else type(data).__name__} "
                            "items: the pickle is damaged or hostile")

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


def load_pickle(f: BinaryIO, where: str | Path, *, size: int | None = None) -> Any:
    """Unpickle ``f`` (Python 2 pickles too, read as latin-1) allowing only the globals
    above; anything unreadable or disallowed becomes a :class:`SourceError` naming ``where``.
    What the pickle may allocate is bounded by its ``size`` (default: ``f``'s file size;
    give it for a member of an archive).

    The allow-list narrows what a hostile file can do, but pickles remain an attack
    surface: callers still only accept files the user says they trust.
    """
    if size is None:
        try:
            size = os.fstat(f.fileno()).st_size
        except (AttributeError, OSError, io.UnsupportedOperation):
            size = None
    if size is None:
        raise SourceError(f"{where}: cannot tell the size of this pickle, so what it may "
                          "allocate cannot be bounded; refusing it")
    try:
        return _RestrictedUnpickler(f, encoding="latin1", file_size=size).load()
    except _Bomb as err:
        raise SourceError(f"{where}: refusing to unpickle: {err}; the file is damaged or "
                          "hostile") from err
    except _Refused as err:
        raise SourceError(f"{where}: cannot unpickle ({err}): this is not a file of the "
                          "expected format; check the path") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, OSError, MemoryError, OverflowError, RecursionError, struct.error) as err:
        raise SourceError(f"{where}: cannot unpickle ({type(err).__name__}: {err}): the file is "
                          "truncated or corrupt; re-download or re-create it") from err
