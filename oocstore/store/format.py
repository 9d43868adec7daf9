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

#: Element types an array may have (numpy names, little-endian on every supported host).
DTYPES = frozenset({"float16", "float32", "float64", "int8", "uint8", "int16", "uint16",
                    "int32", "uint32", "int64", "uint64", "bool"})


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


def _check_keys(cls, data: dict[str, Any], where: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise FormatError(f"catalog entry {where} lacks {missing}: the store is damaged; "
                          "re-create it with `oocstore ingest`")
    return {k: v for k, v in data.items() if k in names}


def versioned_from_dict(cls, data: dict[str, Any], *, kind: str, version: int, fix: str):
    """Build the frozen dataclass ``cls`` from a catalog entry of a ``kind`` ("plan",
    "pack") carrying ``format_version``: other versions and missing fields are refused
    with ``fix`` (the command that re-creates the entry). Unknown keys are ignored."""
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
    return cls(**{k: v for k, v in data.items() if k in names})


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
        return cls(**_check_keys(cls, data, f"array/{data.get('name', '?')}"))


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
        return cls(**_check_keys(cls, data, "graph"))


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
        fv = data.get("format_version")
        if fv != FORMAT_VERSION:
            raise FormatError(
                f"store format version {fv!r} is not supported by this oocstore "
                f"(which reads version {FORMAT_VERSION}): install the oocstore release that "
                "wrote it, or re-create the store with `oocstore ingest`")
        return cls(**_check_keys(cls, data, "meta"))
