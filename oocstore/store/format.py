"""On-disk metadata of a store: frozen dataclasses with ``to_dict`` / ``from_dict``.

A store is a directory::

    STORE/
      catalog.lmdb/              LMDB environment: the single source of truth
      arrays/<name>.<v>.bin      raw row-major arrays, 4 KiB-aligned, zero-padded
      ...                        (plans/, packs/ as later layers add them)

The catalog maps keys to JSON values (sorted keys, so dumps are stable):

    ``meta``               StoreMeta (format version, version counter, source)
    ``array/<name>``       ArrayMeta (dtype, shape, file, offset, chunking)
    ``sums/<name>``        list of CRC-32 (zlib) values, one per chunk of the array
    ``graph``              GraphMeta (CSC topology: which arrays, node/edge counts)
    ``splits``             {"train": "split/train", ...} array names of the splits

A data file only becomes part of the store when the LMDB transaction that names it
commits; see :mod:`oocstore.store.store`. ``docs/FORMAT.md`` shows a real dump.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError

#: Version of the catalog schema and file layout. Readers refuse other versions.
FORMAT_VERSION = 1

#: Every data file and every array inside one starts on this boundary, so it can be
#: read with O_DIRECT (which needs offsets and lengths aligned to the logical block).
ALIGN = 4096

#: Checksum granularity: one CRC-32 per this many bytes of an array.
CHUNK_BYTES = 4 << 20

#: Largest array size the catalog may declare (1 EiB): anything beyond is damage, and
#: sizes computed from it must fit an int64.
MAX_ARRAY_BYTES = 1 << 60

#: Element types an array may have (numpy names, little-endian on every supported host).
DTYPES = frozenset({"float16", "float32", "float64", "int8", "uint8", "int16", "uint16",
                    "int32", "uint32", "int64", "uint64", "bool"})


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


#: Catalog values are JSON: what each annotated field type must decode from.
_JSON_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,), dict: (dict,),
               list: (list,), tuple: (list, tuple)}


def _check_types(cls, data: dict[str, Any], where: str) -> None:
    """Refuse values of the wrong JSON type (a hostile or damaged entry) before they
    reach a constructor, so decoding fails only with :class:`FormatError`."""
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        want = hints.get(name)
        origin = typing.get_origin(want) or want
        if origin is types.UnionType or origin is typing.Union:
            continue  # optional fields check themselves
        ok = _JSON_TYPES.get(origin)
        if ok is None:
            continue
        if not isinstance(value, ok) or (origin is not bool and isinstance(value, bool)
                                         and bool not in ok):
            raise FormatError(f"catalog entry {where}: field {name!r} is {value!r:.60}, expected "
                              f"{getattr(origin, '__name__', origin)}: the catalog is damaged or "
                              "hostile; restore the store from a copy or re-create it")
        if origin in (tuple, list) and typing.get_args(want)[:1] == (int,):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise FormatError(f"catalog entry {where}: field {name!r} is {value!r:.60}, "
                                  "expected a list of integers: the catalog is damaged")


def _build(cls, data: dict[str, Any], where: str):
    try:
        return cls(**data)
    except FormatError:
        raise
    except (TypeError, ValueError, OverflowError) as err:
        raise FormatError(f"catalog entry {where} is invalid ({err}): the catalog is damaged "
                          "or hostile; restore the store from a copy or re-create it") from err


def _check_keys(cls, data: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FormatError(f"catalog entry {where} is {type(data).__name__} {data!r:.60}, "
                          "expected an object: the catalog is damaged; re-create the store")
    names = {f.name for f in dataclasses.fields(cls)}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise FormatError(f"catalog entry {where} lacks {missing}: the store is damaged; "
                          "re-create it with `oocstore ingest`")
    out = {k: v for k, v in data.items() if k in names}
    _check_types(cls, out, where)
    return out


def versioned_from_dict(cls, data: dict[str, Any], *, kind: str, version: int, fix: str):
    """Build the frozen dataclass ``cls`` from a catalog entry of a ``kind`` ("plan",
    "pack") carrying ``format_version``: other versions and missing fields are refused
    with ``fix`` (the command that re-creates the entry). Unknown keys are ignored."""
    if not isinstance(data, dict):
        raise FormatError(f"catalog entry of a {kind} is {type(data).__name__} {data!r:.60}, "
                          "expected an object: the catalog is damaged; re-create the store")
    name = data.get("name", "?")
    fv = data.get("format_version")
    if fv != version:
        raise FormatError(f"{kind} {name!r} has format version {fv!r}, but this oocstore reads "
                          f"version {version}: {fix.format(name=name)}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise FormatError(f"catalog entry {kind}/{name} lacks {missing}: {fix.format(name=name)}")
    names = {f.name for f in dataclasses.fields(cls)}
    kept = {k: v for k, v in data.items() if k in names}
    _check_types(cls, kept, f"{kind}/{name}")
    return _build(cls, kept, f"{kind}/{name}")


@dataclass(frozen=True)
class ArrayMeta:
    """One array stored row-major in ``file`` starting at byte ``offset``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str  # relative to the store directory, never absolute, never containing ".."
    offset: int = 0
    chunk_bytes: int = CHUNK_BYTES
    version: int = 0  # store version that committed this array

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise FormatError(f"array {self.name!r} has unsupported dtype {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if any(s < 0 for s in self.shape):
            raise FormatError(f"array {self.name!r} has a negative dimension {self.shape}")
        if math.prod(self.shape) * np.dtype(self.dtype).itemsize > MAX_ARRAY_BYTES:
            raise FormatError(f"array {self.name!r} claims shape {self.shape}, over "
                              f"{MAX_ARRAY_BYTES} bytes: the catalog is damaged or hostile; "
                              "restore the store from a copy or re-create it")
        if not isinstance(self.chunk_bytes, int) or self.chunk_bytes < 1:
            raise FormatError(f"array {self.name!r} has chunk_bytes {self.chunk_bytes!r}; "
                              "expected a positive integer")
        if self.offset < 0 or self.offset % ALIGN:
            raise FormatError(f"array {self.name!r} offset {self.offset} is not {ALIGN}-aligned")
        if (not self.file or self.file.startswith("/") or "\\" in self.file
                or ".." in self.file.split("/")):
            raise FormatError(f"array {self.name!r} names file {self.file!r} outside the store: "
                              "refusing it (the catalog may be hostile or damaged)")

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.np_dtype.itemsize

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.np_dtype.itemsize

    @property
    def num_chunks(self) -> int:
        return (self.nbytes + self.chunk_bytes - 1) // self.chunk_bytes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArrayMeta":
        where = f"array/{data.get('name', '?') if isinstance(data, dict) else '?'}"
        return _build(cls, _check_keys(cls, data, where), where)


@dataclass(frozen=True)
class GraphMeta:
    """Graph topology in CSC form: the in-neighbours of node v are
    ``indices[indptr[v]:indptr[v+1]]`` (sorted ascending, no duplicates)."""

    num_nodes: int
    num_edges: int
    indptr: str = "graph/indptr"  # array name, int64, [num_nodes + 1]
    indices: str = "graph/indices"  # array name, int32 if num_nodes < 2**31 else int64
    directed: bool = False
    self_loops: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphMeta":
        return _build(cls, _check_keys(cls, data, "graph"), "graph")


@dataclass(frozen=True)
class StoreMeta:
    """Store-wide facts. ``version`` counts committed mutations (1 after ingest)."""

    format_version: int = FORMAT_VERSION
    version: int = 0
    source: dict[str, Any] = field(default_factory=dict)  # how the store was made

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StoreMeta":
        fv = data.get("format_version") if isinstance(data, dict) else None
        if fv != FORMAT_VERSION:
            raise FormatError(
                f"store format version {fv!r} is not supported by this oocstore "
                f"(which reads version {FORMAT_VERSION}): install the oocstore release that "
                "wrote it, or re-create the store with `oocstore ingest`")
        return _build(cls, _check_keys(cls, data, "meta"), "meta")
