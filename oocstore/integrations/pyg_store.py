"""A PyTorch Geometric :class:`~torch_geometric.data.FeatureStore` over an oocstore store.

:class:`OocFeatureStore` lets PyG code (``store['paper', 'x', ids]``, ``store['paper'].x[ids]``,
``multi_get_tensor``, loaders that take a ``(FeatureStore, GraphStore)`` pair) read node
tensors straight from a store's arrays, and put or remove whole tensors through the
store's atomic transaction.

Attribute mapping. A store holds one homogeneous node set (``graph.num_nodes`` rows);
its group is ``group_name=None`` or the ``node_type`` given to the constructor (say
``"paper"``):

=======================================  ===========================================
``TensorAttr(group, attr_name)``         store array
=======================================  ===========================================
``(default, "x")``                       ``features``
``(default, "y")``                       ``labels``
``(default, name)``                      top-level array ``name`` (no ``/`` in the name)
                                         whose first dimension is ``num_nodes``
``(other_group, name)``                  ``pyg/<other_group>/<name>`` (any row count)
=======================================  ===========================================

Graph, split, plan and pack arrays live under ``graph/``, ``split/``, ... and are never
exposed: their rows are not node rows, so a loader indexing them by node id would read
nonsense.

Invariants. The store's arrays are immutable files named by a catalog entry, so a
tensor is only ever replaced whole: ``put_tensor`` with ``index=None`` (or an index that
covers every row in order) creates or atomically replaces the array; ``put_tensor`` with
a partial index into an existing tensor is refused. ``update_tensor`` is one atomic
replace (not PyG's default remove-then-put, which would commit twice). Reads return
fresh, writable CPU tensors of the stored dtype (float16 stays float16).

Reads. Contiguous row ranges (``None``, step-1 slices and ranges) are read with
``pread`` (:meth:`Store.slice_reader`), which keeps pages out of the process's resident
memory. Id lists are sorted once per distinct index (``multi_get_tensor`` shares one
sort between all attributes that use the same index, as PyG's loaders do) and gathered
from the memory map in that order by a numba kernel, which writes each row straight to
its requested position.

Importing this module imports ``torch_geometric``; ``import oocstore.integrations``
does not import this module.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numba
import numpy as np
import torch

from ..errors import OocError, UsageError
from ..store import Store
from ..store.format import DTYPES
from .pyg import require_pyg

require_pyg()  # a missing PyG is reported with the install line, not a bare ImportError

from torch_geometric.data import FeatureStore, TensorAttr  # noqa: E402

log = logging.getLogger(__name__)

#: Array names of the default group's PyG attribute names.
BUILTIN_ATTRS = {"x": "features", "y": "labels"}

#: Array-name prefix of tensors in groups other than the default one.
GROUP_PREFIX = "pyg/"


class TensorNotFoundError(OocError, KeyError):
    """No tensor for that ``(group_name, attr_name)``; the message lists those that exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RowIndexError(OocError, IndexError):
    """A row id outside ``0 .. rows - 1``."""


@numba.njit(cache=True, nogil=True, parallel=True)
def _gather_sorted(src, sorted_ids, order, out):
    """``out[order[i]] = src[sorted_ids[i]]``: rows read in ascending file order, each
    written straight to the position it was asked for (``src`` / ``out`` are 2-D uint8
    byte views, so one kernel serves every dtype)."""
    for i in numba.prange(sorted_ids.shape[0]):
        out[order[i]] = src[sorted_ids[i]]


@dataclass(frozen=True)
class _Rows:
    """A resolved index: either the contiguous range ``[start, stop)`` or explicit ids."""

    start: int = 0
    stop: int = 0
    ids: Optional[np.ndarray] = None  # [n] int64, in the order asked for
    scalar: bool = False  # an int index: drop the row dimension, as ``tensor[i]`` does

    @property
    def count(self) -> int:
        return int(self.ids.shape[0]) if self.ids is not None else self.stop - self.start


class OocFeatureStore(FeatureStore):
    """PyG feature store reading (and, if writable, replacing) a store's node tensors.

    ``store`` is a :class:`~oocstore.store.Store` or a store path. A path is opened
    read-only unless ``readonly=False`` and is closed by :meth:`close`; a ``Store`` is
    used as given (``readonly`` defaults to its own mode) and left open. ``node_type``
    names the store's node set for heterogeneous-style access (``store['paper', 'x']``);
    ``group_name=None`` always means the same node set.
    """

    def __init__(self, store: Store | str | os.PathLike, *, readonly: bool | None = None,
                 node_type: str | None = None):
        super().__init__()
        if isinstance(store, Store):
            self._owns_store = False
            self.store = store
            if readonly is False and store.readonly:
                raise UsageError(f"store {store.path} was opened read-only, so OocFeatureStore "
                                 "cannot write to it: pass Store(path, readonly=False) or a path")
            self.readonly = store.readonly if readonly is None else readonly
        else:
            self.readonly = True if readonly is None else readonly
            self.store = Store(store, readonly=self.readonly)
            self._owns_store = True
        if node_type is not None:
            _check_name(node_type, "node_type")
        self.node_type = node_type
        self._maps: dict[str, np.ndarray] = {}  # array file -> memory map

    # -- attribute mapping ---------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        graph = self.store.graph
        if graph is not None:
            return int(graph.num_nodes)
        if self.store.has_array("features"):
            return int(self.store.array_meta("features").shape[0])
        return 0

    def _is_default(self, group: Any) -> bool:
        return group is None or (self.node_type is not None and group == self.node_type)

    def array_name(self, attr: TensorAttr) -> str:
        """The store array that ``attr`` maps to (whether or not it exists yet)."""
        group, name = attr.group_name, attr.attr_name
        if not isinstance(name, str):
            raise UsageError(f"attr_name {name!r} must be a string such as 'x'")
        _check_name(name, "attr_name")
        if self._is_default(group):
            return BUILTIN_ATTRS.get(name, name)
        if not isinstance(group, str):
            raise UsageError(f"group_name {group!r} is not supported: OocFeatureStore holds node "
                             "tensors, grouped by None or a node type string such as 'paper'")
        _check_name(group, "group_name")
        return f"{GROUP_PREFIX}{group}/{name}"

    def _fits_default(self, array: str) -> bool:
        meta = self.store.arrays.get(array)
        return (meta is not None and "/" not in array and len(meta.shape) >= 1
                and meta.shape[0] == self.num_nodes)

    def _existing(self, attr: TensorAttr) -> str | None:
        array = self.array_name(attr)
        if self._is_default(attr.group_name):
            return array if self._fits_default(array) else None
        return array if self.store.has_array(array) else None

    def _require(self, attr: TensorAttr) -> str:
        array = self._existing(attr)
        if array is None:
            have = ", ".join(f"({a.group_name!r}, {a.attr_name!r})"
                             for a in self.get_all_tensor_attrs()) or "none"
            raise TensorNotFoundError(
                f"store {self.store.path} has no tensor ({attr.group_name!r}, "
                f"{attr.attr_name!r}) (it has: {have}); the default group is None"
                f"{f' or {self.node_type!r}' if self.node_type else ''}")
        return array

    def get_all_tensor_attrs(self) -> list[TensorAttr]:
        """Every ``(group_name, attr_name)`` the store holds (``index`` unset): ``x`` and
        ``y`` first, then other node-sized top-level arrays, then other groups' tensors."""
        group = self.node_type
        attrs = [TensorAttr(group, name) for name, array in BUILTIN_ATTRS.items()
                 if self._fits_default(array)]
        builtin = set(BUILTIN_ATTRS.values())
        for array in sorted(self.store.arrays):
            if array not in builtin and self._fits_default(array):
                attrs.append(TensorAttr(group, array))
            elif array.startswith(GROUP_PREFIX) and array.count("/") == 2:
                _, g, name = array.split("/")
                attrs.append(TensorAttr(g, name))
        return attrs

    # -- reading -------------------------------------------------------------------
    def _get_tensor(self, attr: TensorAttr) -> torch.Tensor:
        return self._multi_get_tensor([attr])[0]

    def _multi_get_tensor(self, attrs: Sequence[TensorAttr]) -> list[torch.Tensor]:
        arrays = [self._require(attr) for attr in attrs]
        # One resolution (and one sort) per distinct index object: PyG's loaders pass the
        # same index tensor for every attribute of a group.
        resolved: dict[tuple[int, int], tuple[_Rows, np.ndarray | None, np.ndarray | None]] = {}
        out = []
        for attr, array in zip(attrs, arrays):
            rows_total = self.store.array_meta(array).shape[0]
            key = (id(attr.index), rows_total)
            if key not in resolved:
                rows = _resolve(attr.index, rows_total, what=f"({attr.group_name!r}, "
                                f"{attr.attr_name!r}) of {rows_total} rows")
                order = sorted_ids = None
                if rows.ids is not None:
                    order = np.argsort(rows.ids, kind="stable")
                    sorted_ids = rows.ids[order]
                resolved[key] = (rows, sorted_ids, order)
            rows, sorted_ids, order = resolved[key]
            data = self._read(array, rows, sorted_ids, order)
            out.append(torch.from_numpy(data.reshape(data.shape[1:]) if rows.scalar else data))
        return out

    def _read(self, array: str, rows: _Rows, sorted_ids: np.ndarray | None,
              order: np.ndarray | None) -> np.ndarray:
        meta = self.store.array_meta(array)
        if rows.ids is None:
            reader = self.store.slice_reader(array)
            try:
                return reader.read(rows.start, rows.stop)
            finally:
                reader.close()
        out = np.empty((rows.count, *meta.shape[1:]), dtype=meta.np_dtype)
        if rows.count and meta.row_bytes:
            src = self._memmap(array)
            _gather_sorted(_bytes2d(src), sorted_ids, order, _bytes2d(out))
        return out

    def _memmap(self, array: str) -> np.ndarray:
        file = self.store.array_meta(array).file
        if file not in self._maps:
            self._maps[file] = np.asarray(self.store.array(array))
        return self._maps[file]

    def _get_tensor_size(self, attr: TensorAttr) -> Optional[tuple[int, ...]]:
        """The shape ``get_tensor(attr)`` would return, without reading; None if absent."""
        array = self._existing(attr)
        if array is None:
            return None
        shape = self.store.array_meta(array).shape
        rows = _resolve(attr.index, shape[0], what=f"({attr.group_name!r}, {attr.attr_name!r}) "
                        f"of {shape[0]} rows")
        return tuple(shape[1:]) if rows.scalar else (rows.count, *shape[1:])

    # -- writing -------------------------------------------------------------------
    def _check_writable(self, what: str) -> None:
        if self.readonly:
            raise UsageError(f"cannot {what}: OocFeatureStore over {self.store.path} is read-only; "
                             "open it with OocFeatureStore(path, readonly=False) (or pass a Store "
                             "opened with readonly=False)")

    def _put_tensor(self, tensor: Any, attr: TensorAttr) -> bool:
        """Create, or atomically replace, the whole tensor ``attr`` (one commit)."""
        label = f"({attr.group_name!r}, {attr.attr_name!r})"
        self._check_writable(f"put tensor {label}")
        array = self.array_name(attr)
        data = _to_numpy(tensor, label)
        existing = self._existing(attr)
        if not _covers_all(attr.index, data.shape[0]):
            if existing is not None:
                raise UsageError(
                    f"cannot put rows of tensor {label} by index: the store's arrays are "
                    f"immutable (array {array!r} of {self.store.path}); read the whole tensor, "
                    f"change it and put it back with index=None to replace it")
            raise UsageError(f"cannot put new tensor {label} with a partial index: give the "
                             "whole tensor with index=None (rows in id order)")
        if self._is_default(attr.group_name):
            n = self.num_nodes
            if data.shape[0] != n:
                raise UsageError(
                    f"tensor {label} has {data.shape[0]} rows but the store's nodes number {n}: "
                    f"tensors of the default group need one row per node; put it under another "
                    f"group_name to store a different row count")
            if existing is None and self.store.has_array(array):
                raise UsageError(f"cannot put tensor {label}: store {self.store.path} already "
                                 f"has an array {array!r} that is not node-sized; choose another "
                                 "attr_name")
        with self.store.transaction() as txn:
            txn.write_array(array, data)
        self._maps.clear()
        log.debug("put %s as array %r (%s, %s) in %s", label, array, data.dtype, data.shape,
                  self.store.path)
        return True

    def _remove_tensor(self, attr: TensorAttr) -> bool:
        """Delete the whole tensor ``attr`` (one commit); False if there is none."""
        label = f"({attr.group_name!r}, {attr.attr_name!r})"
        self._check_writable(f"remove tensor {label}")
        array = self._existing(attr)
        if array is None:
            return False
        if not _covers_all(attr.index, self.store.array_meta(array).shape[0]):
            raise UsageError(f"cannot remove rows of tensor {label} by index: the store's arrays "
                             "are immutable; remove the whole tensor with index=None")
        if array in BUILTIN_ATTRS.values():
            raise UsageError(f"cannot remove tensor {label}: it is the store's {array!r} array, "
                             "which sampling and training read; replace it with "
                             "put_tensor(tensor, ..., index=None) instead")
        with self.store.transaction() as txn:
            txn.delete_array(array)
        self._maps.clear()
        return True

    def update_tensor(self, tensor: Any, *args, **kwargs) -> bool:
        """Replace a whole tensor in one atomic commit (PyG's default removes, then puts)."""
        return self.put_tensor(tensor, *args, **kwargs)

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        """Drop the memory maps; close the store if this object opened it. Idempotent."""
        self._maps.clear()
        if self._owns_store:
            self.store.close()
            self._owns_store = False

    def __enter__(self) -> "OocFeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "writable"
        return f"OocFeatureStore({str(self.store.path)!r}, {mode}, node_type={self.node_type!r})"


def _check_name(name: str, what: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise UsageError(f"{what} {name!r} must be a non-empty name of letters, digits, "
                         "'-', '_' and '.'")


def _bytes2d(a: np.ndarray) -> np.ndarray:
    """``a`` as ``[rows, row_bytes]`` uint8 (a view; ``a`` must be C-contiguous)."""
    return a.reshape(a.shape[0], -1).view(np.uint8)


def _resolve(index: Any, rows: int, *, what: str) -> _Rows:
    """Turn a PyG index (None, slice, range, int, id tensor / array / list, bool mask)
    into a range or an int64 id array, refusing ids outside ``0 .. rows - 1``."""
    if index is None:
        return _Rows(0, rows)
    if isinstance(index, (slice, range)):
        start, stop, step = (slice(index.start, index.stop, index.step).indices(rows)
                             if isinstance(index, range) else index.indices(rows))
        if isinstance(index, range) and len(index) and not (
                0 <= index[0] < rows and 0 <= index[-1] < rows):
            raise RowIndexError(f"{what}: range {index} reaches outside 0..{rows - 1}")
        if step == 1:
            return _Rows(start, max(start, stop))
        return _Rows(ids=np.arange(start, stop, step, dtype=np.int64))
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        i = int(index)
        if not 0 <= i < rows:
            raise RowIndexError(f"{what}: row {i} is outside 0..{rows - 1}")
        return _Rows(i, i + 1, scalar=True)
    if isinstance(index, torch.Tensor):
        ids = index.detach().cpu().numpy()
    elif isinstance(index, (np.ndarray, list, tuple)):
        ids = np.asarray(index)
    else:
        raise UsageError(f"{what}: index of type {type(index).__name__} is not supported; use "
                         "None, a slice, a range, an int or a 1-D tensor of row ids")
    if ids.dtype == np.bool_:
        if ids.shape != (rows,):
            raise RowIndexError(f"{what}: a boolean mask needs shape ({rows},), got {ids.shape}")
        return _Rows(ids=np.flatnonzero(ids).astype(np.int64))
    if ids.size == 0:
        ids = ids.astype(np.int64)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise UsageError(f"{what}: row ids must be a 1-D integer tensor, got dtype {ids.dtype} "
                         f"and shape {tuple(ids.shape)}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and (ids.min() < 0 or ids.max() >= rows):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise RowIndexError(f"{what}: row id {bad} is outside 0..{rows - 1}")
    return _Rows(ids=np.ascontiguousarray(ids))


def _covers_all(index: Any, rows: int) -> bool:
    """Whether ``index`` names every row of a ``rows``-row tensor, in order."""
    if index is None:
        return True
    if isinstance(index, slice):
        return range(*index.indices(rows)) == range(rows)
    if isinstance(index, range):
        return index == range(rows)
    if isinstance(index, (torch.Tensor, np.ndarray, list, tuple)):
        ids = index.detach().cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        return ids.ndim == 1 and ids.shape[0] == rows and np.array_equal(ids, np.arange(rows))
    return False


def _to_numpy(tensor: Any, label: str) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        if tensor.dtype == torch.bfloat16:
            raise UsageError(f"tensor {label} has dtype bfloat16, which the store cannot hold: "
                             f"convert it to one of {', '.join(sorted(DTYPES))}")
        data = tensor.detach().cpu().numpy()
    elif isinstance(tensor, np.ndarray):
        data = tensor
    else:
        raise UsageError(f"tensor {label} is a {type(tensor).__name__}; give a torch.Tensor or "
                         "numpy array")
    if data.ndim < 1:
        raise UsageError(f"tensor {label} is a scalar; give at least one dimension (rows)")
    if data.dtype.name not in DTYPES:
        raise UsageError(f"tensor {label} has dtype {data.dtype.name}, which the store cannot "
                         f"hold: convert it to one of {', '.join(sorted(DTYPES))}")
    return np.ascontiguousarray(data)


__all__ = ["BUILTIN_ATTRS", "GROUP_PREFIX", "OocFeatureStore", "RowIndexError",
           "TensorNotFoundError"]
