"""A synthetic heterogeneous graph whose labels need a relation to be learnt.

Three node types with different counts, feature widths and degrees:

``paper`` (labelled, the target)
    ``papers`` nodes, ``paper_dim`` features: its class centre plus noise, except that a
    fraction ``confusion`` (default 0.6) of papers carry a random class's centre. A model
    that sees only a paper's own features stays near ``1 - confusion * (1 - 1/C)``.
``author``
    ``papers * authors_per_paper_ratio`` nodes, ``author_dim`` features: its own class
    centre plus noise (seldom confused). Each paper has about ``authors_per_paper``
    authors, drawn from its own class with probability ``homophily``: the
    ``author___writes___paper`` relation carries the signal the paper features lack.
``field``
    ``fields`` nodes without features (they cost nothing in a pack); each paper has one
    or two topics, of its own class with probability ``homophily``.

Relations: ``author___writes___paper``, ``paper___cites___paper`` (about ``cites`` per
paper, weakly homophilous) and ``paper___has_topic___field``. Everything is a function of
``seed`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .ingest import HeteroSource, NodeSource


@dataclass(frozen=True)
class HeteroSpec:
    papers: int = 20_000
    authors_ratio: float = 0.5
    fields: int = 64
    paper_dim: int = 64
    author_dim: int = 32
    classes: int = 8
    authors_per_paper: float = 3.0
    cites: float = 6.0
    homophily: float = 0.85
    confusion: float = 0.6
    noise: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.papers < 16:
            raise UsageError(f"papers={self.papers}: give at least 16")
        if self.paper_dim < 1 or self.author_dim < 1:
            raise UsageError("paper_dim and author_dim must be at least 1")
        if not 2 <= self.classes <= 1024:
            raise UsageError(f"classes={self.classes}: give between 2 and 1024")
        if self.fields < self.classes:
            raise UsageError(f"fields={self.fields}: give at least one per class ({self.classes})")
        for name in ("homophily", "confusion"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"{name}={getattr(self, name)}: give a fraction between 0 and 1")
        if not self.authors_ratio > 0 or self.authors_per_paper < 0 or self.cites < 0:
            raise UsageError("authors_ratio must be > 0, authors_per_paper and cites >= 0")

    @property
    def authors(self) -> int:
        return max(self.classes, int(self.papers * self.authors_ratio))


def _rng(spec: HeteroSpec, *stream: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, 0x4E7E, *stream])


def _centres(spec: HeteroSpec, dim: int, stream: int) -> np.ndarray:
    s = 6.0 * spec.noise / np.sqrt(2.0 * dim)
    return (_rng(spec, stream).standard_normal((spec.classes, dim)) * s).astype(np.float32)


def _features(spec: HeteroSpec, labels: np.ndarray, dim: int, confusion: float,
              stream: int) -> np.ndarray:
    rng = _rng(spec, stream, 1)
    z = labels.copy()
    confused = rng.random(z.size) < confusion
    z[confused] = rng.integers(0, spec.classes, size=int(confused.sum()))
    x = rng.standard_normal((z.size, dim), dtype=np.float32) * np.float32(spec.noise)
    return x + _centres(spec, dim, stream)[z]


def _same_class(rng, cls: np.ndarray, pool_labels: np.ndarray, classes: int) -> np.ndarray:
    """For each entry of ``cls``, a uniformly drawn node of ``pool_labels`` of that class."""
    order = np.argsort(pool_labels, kind="stable")
    counts = np.bincount(pool_labels, minlength=classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pick = starts[cls] + (rng.random(cls.size) * counts[cls]).astype(np.int64)
    return order[pick]


def _edges(spec: HeteroSpec, rng, n_dst: int, per: float, dst_labels: np.ndarray,
           pool_labels: np.ndarray, homophily: float) -> tuple[np.ndarray, np.ndarray]:
    """About ``per`` edges into every destination (Poisson, at least one), each from a
    node of the destination's class with probability ``homophily``, else uniform."""
    deg = np.maximum(1, rng.poisson(per, size=n_dst))
    dst = np.repeat(np.arange(n_dst, dtype=np.int64), deg)
    src = rng.integers(0, pool_labels.size, size=dst.size).astype(np.int64)
    same = rng.random(dst.size) < homophily
    src[same] = _same_class(rng, dst_labels[dst[same]], pool_labels, spec.classes)
    return src, dst


def hetero_synthetic_source(spec: HeteroSpec) -> HeteroSource:
    """The generated graph as a :class:`~oocstore.hetero.ingest.HeteroSource`."""
    p, a, f, c = spec.papers, spec.authors, spec.fields, spec.classes
    paper_y = _rng(spec, 1).integers(0, c, size=p, dtype=np.int64)
    author_y = _rng(spec, 2).integers(0, c, size=a, dtype=np.int64)
    field_y = np.arange(f, dtype=np.int64) % c
    w_src, w_dst = _edges(spec, _rng(spec, 3), p, spec.authors_per_paper, paper_y, author_y,
                          spec.homophily)
    c_src, c_dst = _edges(spec, _rng(spec, 4), p, spec.cites, paper_y, paper_y, 0.3)
    # Topics are drawn per paper (field ids as sources of paper destinations), then
    # stored in the paper -> field direction.
    t_field, t_paper = _edges(spec, _rng(spec, 5), p, 0.5, paper_y, field_y, spec.homophily)
    nodes = {
        "paper": NodeSource(count=p, features=_features(spec, paper_y, spec.paper_dim,
                                                        spec.confusion, 6),
                            labels=paper_y, where="hetero synthetic generator"),
        "author": NodeSource(count=a, features=_features(spec, author_y, spec.author_dim, 0.1, 7),
                             where="hetero synthetic generator"),
        "field": NodeSource(count=f, where="hetero synthetic generator"),
    }
    edges = {("author", "writes", "paper"): (w_src, w_dst),
             ("paper", "cites", "paper"): (c_src, c_dst),
             ("paper", "has_topic", "field"): (t_paper, t_field)}
    return HeteroSource(nodes=nodes, edges=edges, target="paper",
                        source={"kind": "hetero-synthetic", **{k: getattr(spec, k) for k in (
                            "papers", "authors_ratio", "fields", "paper_dim", "author_dim",
                            "classes", "authors_per_paper", "cites", "homophily", "confusion",
                            "noise", "seed")}})
