"""Synthetic graphs: R-MAT (Graph500) topology, homophilous labels, class-correlated
features — deterministic for a seed, features generated block by block.

Why this model: R-MAT gives the skewed degree distribution of real graphs (hot nodes
that caches can exploit). Labels alone would make the graph meaningless for accuracy,
so each R-MAT edge ``u -> v`` is, with probability ``homophily``, rewired to a random
node of ``u``'s class. Each node's feature vector is its class centre plus Gaussian
noise, except that with probability ``confusion`` the centre of a random class is used
instead. A feature-only model cannot recover those nodes (it stays near
``1 - confusion * (1 - 1/C)``), while a GNN that averages homophilous neighbours can —
so the accuracy gap between an MLP and GraphSAGE measures whether the graph was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import UsageError
from .common import FEATURE_BLOCK_BYTES, GraphSource

_EDGE_BLOCK = 1 << 20


@dataclass(frozen=True)
class SyntheticSpec:
    nodes: int = 100_000
    avg_degree: float = 16.0  # stored (directed) edges per node, before de-duplication
    feat_dim: int = 128
    classes: int = 8
    seed: int = 0
    rmat: tuple[float, float, float, float] = (0.57, 0.19, 0.19, 0.05)
    homophily: float = 0.7
    confusion: float = 0.35
    noise: float = 1.0

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise UsageError(f"nodes={self.nodes}: a graph needs at least 2 nodes")
        if not (self.avg_degree >= 0):
            raise UsageError(f"avg_degree={self.avg_degree}: give a non-negative number")
        if self.feat_dim < 1:
            raise UsageError(f"feat_dim={self.feat_dim}: give at least 1")
        if not 2 <= self.classes <= 1 << 16:
            raise UsageError(f"classes={self.classes}: give between 2 and 65536")
        a, b, c, d = self.rmat
        if min(self.rmat) < 0 or abs(a + b + c + d - 1) > 1e-6:
            raise UsageError(f"rmat={','.join(map(str, self.rmat))}: give four non-negative numbers "
                             "summing to 1")
        for name in ("homophily", "confusion"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise UsageError(f"{name}={v}: give a fraction between 0 and 1")


def _rng(spec: SyntheticSpec, *stream: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, *stream])


def synthetic_labels(spec: SyntheticSpec) -> np.ndarray:
    return _rng(spec, 1).integers(0, spec.classes, size=spec.nodes, dtype=np.int64)


def rmat_edges(spec: SyntheticSpec, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``N * avg_degree / 2`` undirected edges (symmetrised later), homophily-rewired."""
    m = num_input_edges(spec)
    src = np.empty(m, dtype=np.int64)
    dst = np.empty(m, dtype=np.int64)
    lo = 0
    for u, v in rmat_edge_blocks(spec, labels):
        src[lo:lo + u.size] = u
        dst[lo:lo + u.size] = v
        lo += u.size
    return src, dst


def num_input_edges(spec: SyntheticSpec) -> int:
    """Undirected edges the generator draws (before symmetrising and de-duplication)."""
    return int(round(spec.nodes * spec.avg_degree / 2))


def rmat_edge_blocks(spec: SyntheticSpec, labels: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The edges of :func:`rmat_edges` in blocks of ``_EDGE_BLOCK`` (``(src, dst)``
    int64): block ``i`` depends only on (seed, i), so memory is one block plus three
    per-node arrays however many edges are drawn."""
    n = spec.nodes
    m = num_input_edges(spec)
    scale = max(1, int(np.ceil(np.log2(n))))
    a, b, c, _ = spec.rmat
    # Node ids fit int32 below 2**31 nodes: half the memory of the per-node maps.
    idt = np.int32 if n < 2**31 else np.int64
    perm = _rng(spec, 3).permutation(n).astype(idt)
    order = np.argsort(labels, kind="stable").astype(idt)
    counts = np.bincount(labels, minlength=spec.classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for block, lo in enumerate(range(0, m, _EDGE_BLOCK)):
        k = min(_EDGE_BLOCK, m - lo)
        rng = _rng(spec, 2, block)
        u = np.zeros(k, dtype=np.int64)
        v = np.zeros(k, dtype=np.int64)
        for _level in range(scale):
            r = rng.random(k, dtype=np.float32)
            down = r >= a + b            # quadrants c and d: source bit set
            right = ((r >= a) & (r < a + b)) | (r >= a + b + c)  # quadrants b and d
            u = (u << 1) | down
            v = (v << 1) | right
        u = perm[u % n].astype(np.int64)
        v = perm[v % n].astype(np.int64)
        rewire = rng.random(k) < spec.homophily
        cls = labels[u[rewire]]
        pick = starts[cls] + (rng.random(cls.size) * counts[cls]).astype(np.int64)
        v[rewire] = order[pick]
        yield u, v


def class_centres(spec: SyntheticSpec) -> np.ndarray:
    """[C, D] centres ~ N(0, s^2) with s chosen so two centres lie about 6 noise standard
    deviations apart (s * sqrt(2 D) = 6 * noise): unconfused nodes are separable."""
    s = 6.0 * spec.noise / np.sqrt(2.0 * spec.feat_dim)
    return (_rng(spec, 4).standard_normal((spec.classes, spec.feat_dim)) * s).astype(np.float32)


def feature_rows_per_block(feat_dim: int) -> int:
    return max(1, FEATURE_BLOCK_BYTES // (4 * feat_dim))


def synthetic_features(spec: SyntheticSpec, labels: np.ndarray) -> Iterator[np.ndarray]:
    """Feature blocks in node order; block ``i`` depends only on (seed, i, feat_dim)."""
    centres = class_centres(spec)
    rows = feature_rows_per_block(spec.feat_dim)
    for block, lo in enumerate(range(0, spec.nodes, rows)):
        hi = min(spec.nodes, lo + rows)
        rng = _rng(spec, 5, block)
        z = labels[lo:hi].copy()
        confused = rng.random(hi - lo) < spec.confusion
        z[confused] = rng.integers(0, spec.classes, size=int(confused.sum()))
        x = rng.standard_normal((hi - lo, spec.feat_dim), dtype=np.float32)
        x *= np.float32(spec.noise)
        x += centres[z]
        yield x


def synthetic_source(spec: SyntheticSpec) -> GraphSource:
    """The graph as a streaming source: edges are drawn block by block while the CSC is
    built out of core (``oocstore/ingest/csc.py``), features block by block while they
    are written, so ingest memory does not grow with the edge count or feature bytes."""
    labels = synthetic_labels(spec)
    return GraphSource(
        num_nodes=spec.nodes, src=None, dst=None, directed=False,
        features=synthetic_features(spec, labels), feat_dim=spec.feat_dim, labels=labels,
        edge_blocks=lambda: rmat_edge_blocks(spec, labels),
        num_input_edges=num_input_edges(spec),
        source={"kind": "synthetic", "nodes": spec.nodes, "avg_degree": spec.avg_degree,
                "feat_dim": spec.feat_dim, "classes": spec.classes, "seed": spec.seed,
                "rmat": list(spec.rmat), "homophily": spec.homophily,
                "confusion": spec.confusion, "noise": spec.noise},
        where="synthetic generator")
