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
import re
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


#: Largest integer a catalog count, size, offset or version may hold: anything beyond
#: is damage, and arithmetic on it must stay inside an int64.
MAX_CATALOG_INT = 1 << 62

#: Directories that hold data files (every ``file`` of an array lies in one of them).
DATA_DIRS = ("arrays", "plans", "packs", "scenes")

#: Names of plans and packs: they become catalog keys and parts of array names, so they
#: may not hold '/', start with '.', or use characters outside this set.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_FILE_PART = re.compile(r"^[\w.-]+$")  # what Transaction.array_writer's file names use


def check_name(name: Any, kind: str) -> str:
    """``name`` if it is a valid ``kind`` ("plan", "pack") name, else :class:`UsageError`."""
    from ..errors import UsageError

    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(f"{kind} name {name!r} is not valid: use 1-64 letters, digits, '-', '_' "
                         "or '.', starting with a letter or digit (e.g. --name train)")
    return name


def check_array_name(name: Any, where: str) -> str:
    """Array names are '/'-separated parts, none empty, '.' or '..', without control
    characters (a NUL would cut a path short)."""
    if (not isinstance(name, str) or not name
            or any(p in ("", ".", "..") for p in name.split("/"))
            or any(ord(c) < 32 or c == "\x7f" or c == "\\" for c in name)):
        raise FormatError(f"catalog entry {where}: array name {name!r:.80} is not valid (empty "
                          "parts, '.', '..', a backslash or control characters): the catalog is "
                          "damaged or hostile; restore the store from a copy or re-create it")
    return name


def check_file(file: Any, where: str) -> str:
    """A data file name from the catalog: ``<data dir>/[<sub>/]<name>.bin`` with plain
    parts only, so it always lies inside one of :data:`DATA_DIRS` (never the catalog,
    never outside the store, never through '..')."""
    parts = file.split("/") if isinstance(file, str) else []
    if (len(parts) < 2 or parts[0] not in DATA_DIRS or not file.endswith(".bin")
            or not all(_FILE_PART.match(p) and p not in (".", "..") for p in parts[1:])):
        raise FormatError(f"catalog entry {where}: file {file!r:.80} is not a data file (a "
                          "'.bin' of plain names) inside the store's data directories "
                          f"({', '.join(DATA_DIRS)}), i.e. it lies outside the store: refusing it "
                          "(the catalog is damaged or hostile; restore the store from a copy or "
                          "re-create it)")
    return file


def check_int(value: Any, where: str, field_name: str, *, lo: int = 0,
              hi: int = MAX_CATALOG_INT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise FormatError(f"catalog entry {where}: {field_name} {value!r:.60} is not an integer "
                          f"in {lo}..{hi}: the catalog is damaged or hostile; restore the store "
                          "from a copy or re-create it")
    return value


def check_entry(kind: str, key: str, value: Any) -> dict[str, Any]:
    """The generic shape of a ``plan/<name>`` or ``pack/<name>`` entry, as the store layer
    (``rm``, ``gc``, ``verify``) reads it without the plan or pack module: an object whose
    ``name`` is the key's and valid, whose ``arrays`` map parts to arrays under
    ``<kind>/<name>/``, and whose numbers are finite, non-negative and in range (lists of
    integers too, where -1 may mean "all" as in fanouts). :class:`FormatError` naming
    the key otherwise."""
    name = key[len(kind) + 1:]
    bad = None
    if not isinstance(value, dict):
        bad = f"is {type(value).__name__}, expected an object"
    elif not NAME_RE.match(name):
        bad = f"has the invalid {kind} name {name!r:.80}"
    elif value.get("name", name) != name:
        bad = f"is named {value.get('name')!r:.80}, not {name!r}"
    if bad is None:
        arrays = value.get("arrays", {})
        prefix = f"{kind}/{name}/"
        if not isinstance(arrays, dict) or not all(
                isinstance(a, str) and a.startswith(prefix) and "/" not in a[len(prefix):]
                and a[len(prefix):] for a in arrays.values()):
            bad = f"lists arrays {arrays!r:.80} that are not all under {prefix!r}"
    if bad is None:
        for field_name, v in value.items():
            if isinstance(v, bool) or field_name in ("stats", "min_working_set"):
                continue
            if isinstance(v, (int, float)):
                if not (math.isfinite(v) and 0 <= v <= MAX_CATALOG_INT):
                    bad = f"field {field_name!r} is {v!r:.60}, not a finite number in range"
            elif isinstance(v, list) and all(isinstance(x, int) for x in v):
                if any(not -1 <= x <= MAX_CATALOG_INT for x in v):
                    bad = f"field {field_name!r} holds a value out of range"
            if bad:
                break
    if bad is not None:
        raise FormatError(f"catalog entry {key!r} {bad}: the catalog is damaged or hostile; "
                          f"remove the {kind} (`oocstore rm STORE --{kind} NAME`) or re-create "
                          "the store")
    return value


def align_up(n: int, align: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``align`` (an O_DIRECT request's end or size)."""
    return (n + align - 1) // align * align


def align_down(n: int, align: int = ALIGN) -> int:
    """``n`` rounded down to a multiple of ``align`` (an O_DIRECT request's start)."""
    return n // align * align


def aligned_span(offset: int, nbytes: int) -> tuple[int, int]:
    """``(start, length)`` of the 4 KiB-aligned request covering [offset, offset + nbytes):
    what an ``O_DIRECT`` read of those bytes transfers."""
    lo = align_down(offset)
    return lo, align_up(offset + nbytes) - lo


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
    except FormatError as err:
        if str(err).startswith(f"catalog entry {where}"):
            raise
        shown = where if where.isprintable() else repr(where)
        raise FormatError(f"catalog entry {shown}: {err}") from err
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


class VersionedEntry:
    """``to_dict`` / ``from_dict`` of a frozen metadata dataclass stored as one catalog
    entry carrying ``format_version`` (plans, packs, edge splits). The dataclass says
    what it is in errors (``KIND``), the version this oocstore reads (``VERSION``), the
    command that re-creates an entry of another version (``FIX``, may name ``{name}``)
    and which of its tuple fields are stored as JSON lists (``LIST_FIELDS``)."""

    KIND: typing.ClassVar[str]
    VERSION: typing.ClassVar[int]
    FIX: typing.ClassVar[str]
    LIST_FIELDS: typing.ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in self.LIST_FIELDS:
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return versioned_from_dict(cls, data, kind=cls.KIND, version=cls.VERSION, fix=cls.FIX)


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
        if not isinstance(self.chunk_bytes, int) or not 1 <= self.chunk_bytes <= MAX_ARRAY_BYTES:
            raise FormatError(f"array {self.name!r} has chunk_bytes {self.chunk_bytes!r}; "
                              f"expected a positive integer up to {MAX_ARRAY_BYTES}")
        if not 0 <= self.offset <= MAX_ARRAY_BYTES or self.offset % ALIGN:
            raise FormatError(f"array {self.name!r} offset {self.offset} is not {ALIGN}-aligned "
                              f"in 0..{MAX_ARRAY_BYTES}")
        where = f"array/{self.name}"
        check_array_name(self.name, where)
        check_file(self.file, where)
        check_int(self.version, where, "version")

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
    def from_dict(cls, data: dict[str, Any], *, key: str | None = None) -> "ArrayMeta":
        """Decode catalog entry ``key`` (``array/<name>``; its ``name`` must match)."""
        where = key or f"array/{data.get('name', '?') if isinstance(data, dict) else '?'}"
        where = where if where.isprintable() else repr(where)
        meta = _build(cls, _check_keys(cls, data, where), where)
        if key is not None and key != f"array/{meta.name}":
            raise FormatError(f"catalog entry {key!r} describes array {meta.name!r:.80}: the "
                              "catalog is damaged or hostile; re-create the store")
        return meta


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

    def __post_init__(self) -> None:
        check_int(self.num_nodes, "graph", "num_nodes")
        check_int(self.num_edges, "graph", "num_edges")
        check_array_name(self.indptr, "graph")
        check_array_name(self.indices, "graph")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphMeta":
        return _build(cls, _check_keys(cls, data, "graph"), "graph")


@dataclass(frozen=True)
class StoreMeta:
    """Store-wide facts. ``version`` counts committed mutations (1 after ingest)."""

    format_version: int = FORMAT_VERSION
    version: int = 0
    source: dict[str, Any] = field(default_factory=dict)  # how the store was made

    def __post_init__(self) -> None:
        check_int(self.version, "meta", "version")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StoreMeta":
        if not isinstance(data, dict):
            raise FormatError(f"catalog entry meta is {type(data).__name__} {data!r:.60}, "
                              "expected an object: the catalog is damaged or hostile; restore "
                              "the store from a copy or re-create it")
        fv = data.get("format_version")
        if fv != FORMAT_VERSION:
            raise FormatError(
                f"store format version {fv!r} is not supported by this oocstore "
                f"(which reads version {FORMAT_VERSION}): install the oocstore release that "
                "wrote it, or re-create the store with `oocstore ingest`")
        return _build(cls, _check_keys(cls, data, "meta"), "meta")
