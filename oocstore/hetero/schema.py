"""The schema of a heterogeneous store: node types, edge types and where their arrays live.

A heterogeneous store is an ordinary store (same catalog, aligned files, CRC-32 per chunk,
one commit per mutation) whose catalog entry ``hetero`` holds a :class:`HeteroSchema`.
Every array is addressed by its node or edge type:

``hetero/node/<type>/feat``
    ``[count, width]`` features of node type ``<type>`` (absent for a type without
    features: it costs nothing in a pack).
``hetero/node/<type>/label``
    ``[count]`` int64 class labels (only the labelled types).
``hetero/split/<type>/<split>``
    sorted int64 node ids of ``<type>`` in split ``<split>`` (train / val / test).
``hetero/edge/<src>___<rel>___<dst>/indptr`` and ``.../indices``
    the CSC of one relation: ``indptr`` has ``count(dst) + 1`` entries, ``indices`` holds
    ids of ``src`` nodes, so the in-neighbours of ``dst`` node ``v`` of that relation are
    ``indices[indptr[v]:indptr[v + 1]]``.

Type and relation names are short identifiers (letters, digits, ``_``, ``-``; a relation
name never contains ``___``, which separates the three parts of an edge type's key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError, UsageError

#: Catalog entry holding the schema.
SCHEMA_KEY = "hetero"
#: Version of the layout above; readers refuse others.
HETERO_FORMAT_VERSION = 1

_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,47}$")

EdgeType = tuple[str, str, str]


def check_type_name(name: Any, what: str) -> str:
    """``name`` if it is a valid node type or relation name, else :class:`UsageError`."""
    if not isinstance(name, str) or not _TYPE_RE.match(name) or "___" in name:
        raise UsageError(f"{what} {name!r} is not a valid name: use 1-48 letters, digits, "
                         "'_' or '-', starting with a letter, without '___'")
    return name


def edge_key(et: EdgeType) -> str:
    """``src___rel___dst``: the file-name form of an edge type (OGB's convention)."""
    return "___".join(et)


def parse_edge_key(key: str, *, where: str = "edge type") -> EdgeType:
    parts = key.split("___")
    if len(parts) != 3:
        raise UsageError(f"{where} {key!r} is not of the form SRC___REL___DST (three names "
                         "joined by three underscores), e.g. author___writes___paper")
    for p, what in zip(parts, ("source node type", "relation", "destination node type")):
        check_type_name(p, f"{where} {key!r}: {what}")
    return (parts[0], parts[1], parts[2])


def feat_name(ntype: str) -> str:
    return f"hetero/node/{ntype}/feat"


def label_name(ntype: str) -> str:
    return f"hetero/node/{ntype}/label"


def split_name(ntype: str, split: str) -> str:
    return f"hetero/split/{ntype}/{split}"


def csc_names(et: EdgeType) -> tuple[str, str]:
    base = f"hetero/edge/{edge_key(et)}"
    return f"{base}/indptr", f"{base}/indices"


@dataclass(frozen=True)
class NodeType:
    """One node type: its count, feature width and dtype (0 / "" without features) and
    number of classes (0 without labels)."""

    count: int
    feat_dim: int = 0
    dtype: str = ""
    num_classes: int = 0
    splits: tuple[str, ...] = ()

    @property
    def has_features(self) -> bool:
        return self.feat_dim > 0

    @property
    def has_labels(self) -> bool:
        return self.num_classes > 0


@dataclass(frozen=True)
class HeteroSchema:
    """Node types (name -> :class:`NodeType`) and edge types ``(src, rel, dst)`` -> edge
    count; ``target``: the labelled type node classification predicts by default."""

    node_types: dict[str, NodeType]
    edge_types: dict[EdgeType, int]
    target: str
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = HETERO_FORMAT_VERSION

    @property
    def type_names(self) -> list[str]:
        return sorted(self.node_types)

    @property
    def relations(self) -> list[EdgeType]:
        return sorted(self.edge_types)

    def node_type(self, name: str, *, what: str = "node type") -> NodeType:
        try:
            return self.node_types[name]
        except KeyError:
            raise UsageError(f"{what} {name!r} is not a node type of this store (it has: "
                             f"{', '.join(self.type_names)})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "target": self.target,
                "source": dict(self.source),
                "node_types": {k: {"count": v.count, "feat_dim": v.feat_dim, "dtype": v.dtype,
                                   "num_classes": v.num_classes, "splits": list(v.splits)}
                               for k, v in sorted(self.node_types.items())},
                "edge_types": {edge_key(k): int(v) for k, v in sorted(self.edge_types.items())}}

    @classmethod
    def from_dict(cls, d: Any) -> "HeteroSchema":
        fix = "the catalog is damaged; re-create the store with `oocstore ingest hetero-...`"
        if not isinstance(d, dict) or d.get("format_version") != HETERO_FORMAT_VERSION:
            raise FormatError(f"catalog entry {SCHEMA_KEY!r} is {d!r:.80}, not a heterogeneous "
                              f"schema of format {HETERO_FORMAT_VERSION}: {fix}")
        try:
            nodes = {check_type_name(k, "node type"): NodeType(
                count=int(v["count"]), feat_dim=int(v["feat_dim"]), dtype=str(v["dtype"]),
                num_classes=int(v["num_classes"]), splits=tuple(str(s) for s in v["splits"]))
                for k, v in d["node_types"].items()}
            edges = {parse_edge_key(k): int(v) for k, v in d["edge_types"].items()}
            target = str(d["target"])
        except (KeyError, TypeError, ValueError, UsageError) as err:
            raise FormatError(f"catalog entry {SCHEMA_KEY!r}: {err}: {fix}") from None
        if target not in nodes or any(s not in nodes or t not in nodes for s, _, t in edges):
            raise FormatError(f"catalog entry {SCHEMA_KEY!r} names a node type it does not "
                              f"define: {fix}")
        return cls(node_types=nodes, edge_types=edges, target=target,
                   source=dict(d.get("source", {})))


def load_schema(store) -> HeteroSchema | None:
    """The schema of ``store``, or ``None`` for a homogeneous store."""
    raw = store.get(SCHEMA_KEY)
    return None if raw is None else HeteroSchema.from_dict(raw)


def require_schema(store) -> HeteroSchema:
    """The schema of ``store``, checked against its arrays (:func:`check_arrays`)."""
    schema = load_schema(store)
    if schema is None:
        raise UsageError(f"store {store.path} is not heterogeneous (it has one node type): use "
                         "the ordinary commands, or ingest with `oocstore ingest hetero-ogb` / "
                         "`hetero-synthetic`")
    check_arrays(store, schema)
    return schema


def check_arrays(store, schema: HeteroSchema) -> None:
    """:class:`FormatError` unless every array the schema names exists with the shape its
    counts imply: the sampler and the readers index arrays by these counts, so a catalog
    whose counts disagree with its arrays would read out of bounds or sample wrong ids."""
    fix = "the catalog is damaged; re-create the store with `oocstore ingest hetero-...`"
    want: list[tuple[str, tuple[int, ...]]] = []
    for t, nt in schema.node_types.items():
        if nt.has_features:
            want.append((feat_name(t), (nt.count, nt.feat_dim)))
        if nt.has_labels:
            want.append((label_name(t), (nt.count,)))
    for et, n in schema.edge_types.items():
        ip, ix = csc_names(et)
        want += [(ip, (schema.node_types[et[2]].count + 1,)), (ix, (n,))]
    for name, shape in want:
        got = tuple(store.array_meta(name).shape) if store.has_array(name) else None
        if got != shape:
            raise FormatError(f"store {store.path}: array {name!r} has shape {got}, but catalog "
                              f"entry {SCHEMA_KEY!r} implies {shape}: {fix}")
