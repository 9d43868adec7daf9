"""Graphs in one ``.npz`` archive, in either of two layouts:

- **GraphData** (github EdisonLeeeee/GraphData): ``adj_matrix`` (a scipy sparse matrix
  pickled in a 0-d object array), ``node_attr`` (pickled sparse, or a plain dense array),
  ``node_label`` (integers). Pickles can run code when loaded, so they are read only with
  ``trust_pickle=True`` (``--trust-pickle``), and then through
  :func:`~oocstore.ingest.common.load_pickle`, which admits numpy and scipy sparse objects
  only.
- **gnn-benchmark** (Shchur et al.; the raw files of PyG's Amazon / Coauthor datasets):
  the CSR parts ``adj_data, adj_indices, adj_indptr, adj_shape``, features as
  ``attr_data, attr_indices, attr_indptr, attr_shape`` or a dense ``attr_matrix``, and
  ``labels``. Plain arrays: no pickle, no flag needed.

``A[i, j] != 0`` is an edge ``i - j`` (explicit zeros are not edges); the graph is
undirected. Sparse features stay sparse in memory and are densified one row block at a
time while the store is written; a dense ``node_attr`` is read whole, because a member of
a zip archive cannot be memory-mapped. No splits are stored in these files, so
``build_store`` generates them from its seed.
"""

from __future__ import annotations

import math
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import OocError, SourceError, UsageError
from .common import GraphSource, iter_blocks, load_pickle

GRAPHDATA_KEYS = ("adj_matrix", "node_attr", "node_label")

#: A member larger than this may not inflate more than MAX_INFLATION-fold (the graph
#: archives of GraphData and gnn-benchmark inflate 2-20x).
INFLATE_FREE_BYTES = 64 << 20
MAX_INFLATION = 200
_BENCHMARK_ADJ = ("adj_data", "adj_indices", "adj_indptr", "adj_shape")
_BENCHMARK_ATTR = ("attr_data", "attr_indices", "attr_indptr", "attr_shape")


def npz_source(path: str | Path, *, trust_pickle: bool) -> GraphSource:
    path = Path(path)
    with _Archive(path, trust_pickle=trust_pickle) as npz:
        if "adj_data" in npz.keys:
            adj, attr, labels, layout = _read_benchmark(npz)
        else:
            adj = _as_sparse(npz.get("adj_matrix"), path, "adj_matrix")
            attr = _as_features(npz.get("node_attr"), path, "node_attr")
            labels = npz.get("node_label")
            layout = "graphdata"
    n = adj.shape[0]
    if adj.shape != (n, n):
        raise SourceError(f"{path}: the adjacency matrix has shape {adj.shape}; it must be "
                          "square (nodes x nodes)")
    if attr.shape[0] != n:
        raise SourceError(f"{path}: the features have {attr.shape[0]} rows but the adjacency "
                          f"matrix has {n} nodes: the archive is inconsistent; re-create it")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise SourceError(f"{path}: the labels have shape {labels.shape} but the adjacency "
                          f"matrix has {n} nodes: give one integer label per node")
    coo = adj.tocoo()
    nz = coo.data != 0
    return GraphSource(
        num_nodes=n, src=coo.row[nz].astype(np.int64), dst=coo.col[nz].astype(np.int64),
        directed=False, features=iter_blocks(attr), feat_dim=int(attr.shape[1]), labels=labels,
        splits=None,
        source={"kind": "npz", "layout": layout, "path": str(path.resolve())},
        where=str(path))


class _Archive:
    """The members of a ``.npz`` read one at a time, pickled ones only when trusted."""

    def __init__(self, path: Path, *, trust_pickle: bool):
        self.path = path
        self.trust_pickle = trust_pickle
        try:
            self._zip = zipfile.ZipFile(path)
        except FileNotFoundError as err:
            raise SourceError(f"{path} does not exist: check the path") from err
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise SourceError(f"{path} is not a readable .npz (zip) archive ({err}): the file is "
                              "truncated or of another format; re-download or re-create it"
                              ) from err
        self.keys = sorted(n[:-4] for n in self._zip.namelist() if n.endswith(".npy"))
        for info in self._zip.infolist():
            # A member is read whole: one that inflates far beyond what compression does to
            # real data is refused before a byte of it is read.
            if info.file_size > INFLATE_FREE_BYTES and \
                    info.file_size > MAX_INFLATION * max(info.compress_size, 1):
                self._zip.close()
                raise SourceError(
                    f"{path} (member {info.filename!r}): {info.compress_size} compressed bytes "
                    f"inflate to {info.file_size}, over {MAX_INFLATION}x (a zip bomb?); real "
                    "graph data compresses 2-20x: re-create the archive (np.savez stores "
                    "members uncompressed)")

    def get(self, key: str) -> Any:
        if key not in self.keys:
            raise SourceError(f"{self.path} has no array {key!r} (it has: "
                              f"{', '.join(self.keys) or 'none'}): a GraphData .npz needs "
                              f"{', '.join(GRAPHDATA_KEYS)}")
        where = f"{self.path} (member {key!r})"
        try:
            with self._zip.open(key + ".npy") as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0), (3, 0)):
                    raise SourceError(f"{where}: .npy format version {version} is not one "
                                      "numpy writes; re-create the archive")
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                if not dtype.hasobject:
                    # Refuse a header that declares more data than the member holds before
                    # anything is allocated (a hostile header may claim 10^15 rows).
                    need = math.prod(shape) * dtype.itemsize
                    have = self._zip.getinfo(key + ".npy").file_size - f.tell()
                    if need > have:
                        raise SourceError(
                            f"{where}: the header declares shape {shape} of {dtype} "
                            f"({need} bytes) but the member holds {max(have, 0)} bytes: the "
                            "file is truncated or corrupt; re-download or re-create it")
                    with self._zip.open(key + ".npy") as g:
                        return np.lib.format.read_array(g, allow_pickle=False)
                if not self.trust_pickle:
                    raise UsageError(
                        f"{self.path}: array {key!r} is a pickled Python object, and loading a "
                        "pickle can run arbitrary code: pass --trust-pickle (trust_pickle=True) "
                        "only if you trust where this file came from")
                obj = load_pickle(f, where, size=self._zip.getinfo(key + ".npy").file_size)
        except OocError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, TypeError,
                KeyError, SyntaxError, OverflowError, MemoryError, RecursionError,
                NotImplementedError, tokenize.TokenError) as err:
            raise SourceError(f"{where} cannot be read ({type(err).__name__}: {err}): the file "
                              "is truncated or corrupt; re-download or re-create it") from err
        if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
            obj = obj.item()
        return obj

    def __enter__(self) -> "_Archive":
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()


def _read_benchmark(npz: _Archive):
    def csr(prefix: str, parts: tuple[str, ...]) -> sp.csr_matrix:
        data, indices, indptr, shape = (npz.get(k) for k in parts)
        for key, a in zip(parts[1:3], (indices, indptr)):
            if not (isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind in "iu"):
                what = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise SourceError(f"{npz.path}: {key} is {what}, not a 1-D integer array: the "
                                  "archive is damaged; re-create it")
        try:
            return sp.csr_matrix((data, indices, indptr), shape=tuple(int(s) for s in shape))
        except (ValueError, TypeError) as err:
            raise SourceError(f"{npz.path}: the {prefix}_* arrays do not form a CSR matrix "
                              f"({err}); re-create the archive") from err

    adj = csr("adj", _BENCHMARK_ADJ)
    if "attr_matrix" in npz.keys:
        attr = _as_features(npz.get("attr_matrix"), npz.path, "attr_matrix")
    else:
        attr = csr("attr", _BENCHMARK_ATTR)
    return adj, attr, npz.get("labels"), "gnn-benchmark"


def _as_sparse(obj: Any, path: Path, key: str) -> sp.csr_matrix:
    if sp.issparse(obj):
        return sp.csr_matrix(obj)
    raise SourceError(f"{path}: {key!r} holds {type(obj).__name__} "
                      f"{getattr(obj, 'shape', '')}, expected a scipy sparse matrix")


def _as_features(obj: Any, path: Path, key: str):
    """A 2-D scipy sparse (as CSR, for row slicing) or dense array."""
    if sp.issparse(obj):
        obj = sp.csr_matrix(obj)
    elif not isinstance(obj, np.ndarray):
        raise SourceError(f"{path}: {key!r} holds {type(obj).__name__}, expected a feature "
                          "matrix (scipy sparse or a 2-D array)")
    if obj.ndim != 2:
        raise SourceError(f"{path}: {key!r} has shape {obj.shape}; features must be 2-D "
                          "(nodes x features)")
    return obj
