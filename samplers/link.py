"""Link-prediction plans: an edge split stored with the store, and mini-batches of
training edges with negatives, sampled offline.

Edge split (:mod:`oocstore.linksplit` describes what is stored): the candidate edges are
the store graph's edges without self-loops, each undirected edge once (source <
destination; a store ingested as directed keeps every direction apart). A permutation
seeded with ``(seed, salt)`` takes ``round(val * n)`` of them for validation,
``round(test * n)`` for test and the rest for training; the held-out edges are removed
from the message-passing graph in both directions (undirected). Evaluation negatives are
drawn once, uniformly, and stored.

Link plan: each epoch permutes the training edges (NumPy generator seeded with ``(seed,
epoch, salt)``) and cuts them into batches of ``batch_size`` positive edges. Batch ``b``
draws ``neg_ratio`` negatives per positive from a generator seeded with ``(seed, epoch,
b, salt)``: the positive's source with a destination drawn uniformly over the nodes
(``uniform``) or in proportion to degree^0.75 in the message-passing graph (``degree``,
word2vec's smoothing). The batch's *seeds* are the distinct endpoints of its positive
and negative pairs (ascending ids), and their neighbourhoods are sampled together, by
the node sampler's kernel on the message-passing graph, so one node list serves every
pair and layer. The plan is an ordinary plan (:mod:`oocstore.plan`: packing, tiers and
the loader read its records unchanged) with ``task = "link"`` and two more arrays: the
pairs in local ids (indices into the seeds) and their per-batch index. Everything is a
function of the seed, never of the thread count.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numba
import numpy as np

from oocstore.errors import StoreExistsError, UsageError
from oocstore.linksplit import (EDGE_SPLIT_KEY, EdgeSplit, EdgeSplitMeta, edge_split_meta,
                                content_fingerprint, read_edge_split, split_array_names)
from oocstore.plan import (PLAN_FORMAT_VERSION, PlanMeta, PlanWriter, check_plan_name,
                           graph_fingerprint, node_dtype_for, pair_array_names, refuse_existing)
from oocstore.store import Store

from .neighbor import _check_int, _sample_group, parse_fanouts, verify_graph

log = logging.getLogger(__name__)

#: Default split: 85 % train, 5 % validation, 10 % test (PyG's RandomLinkSplit examples).
DEFAULT_EDGE_SPLIT = (0.85, 0.05, 0.10)
#: Fixed negatives per held-out edge (MRR ranks each positive among them).
DEFAULT_EVAL_NEGATIVES = 100
NEG_SAMPLERS = ("uniform", "degree")
#: Redraws of a negative that hit an edge or a self-loop before it is kept anyway.
MAX_REDRAWS = 16

_SPLIT_SALT = 0x11CE5917
_EPOCH_SALT = 0x5EED11CE
_NEG_SALT = 0x4E6A7E5
_EVAL_SALT = 0xE7A1


def parse_edge_split(value: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.85,0.05,0.1"`` -> fractions of train, val and test; they must be three
    non-negative numbers summing to 1, with some training edges."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        fr = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        fr = ()
    fix = "give three fractions train,val,test that sum to 1, e.g. 0.85,0.05,0.1"
    if len(fr) != 3 or not all(np.isfinite(fr)):
        raise UsageError(f"edge_split={value!r} is not three numbers: {fix}")
    if min(fr) < 0:
        raise UsageError(f"edge_split={value!r} has a negative part: {fix}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise UsageError(f"edge_split={value!r} sums to {sum(fr):g}, not 1: {fix}")
    if fr[0] == 0:
        raise UsageError(f"edge_split={value!r} leaves no training edges: {fix}")
    return fr  # type: ignore[return-value]


def check_neg_ratio(value) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            pass
    return _check_int(value, "neg_ratio", minimum=1,
                      fix="give the number of negative pairs per positive edge, e.g. "
                          "neg_ratio=1")


# -- the edge split ---------------------------------------------------------------------

def _edge_keys(indptr: np.ndarray, indices: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    """``(src, dst, key)`` of every CSC edge, ``key = dst * n + src`` (ascending: CSC is
    grouped by destination, sources sorted)."""
    dst = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    src = np.asarray(indices, dtype=np.int64)
    return src, dst, dst * n + src


def _is_edge(keys: np.ndarray, u: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """Whether ``u -> w`` or ``w -> u`` is an edge (``keys`` sorted)."""
    out = np.zeros(u.shape, dtype=bool)
    if keys.size == 0:
        return out
    for k in (w * n + u, u * n + w):
        pos = np.minimum(np.searchsorted(keys, k), keys.size - 1)
        out |= keys[pos] == k
    return out


class NegativeDraw:
    """Destinations of negative pairs: uniform or degree^0.75, redrawn (at most
    :data:`MAX_REDRAWS` times) while a pair is a self-loop or an edge of the full graph."""

    def __init__(self, keys: np.ndarray, num_nodes: int, how: str,
                 mp_indptr: np.ndarray | None = None):
        self.keys, self.n, self.how = keys, int(num_nodes), how
        self.cdf = None
        if how == "degree":
            w = np.diff(np.asarray(mp_indptr, dtype=np.int64)).astype(np.float64) ** 0.75
            self.cdf = np.cumsum(w)
            if self.cdf[-1] <= 0:
                self.cdf = None  # no edges left: uniform
        self.collisions = 0

    def _raw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.cdf is None:
            return rng.integers(0, self.n, size=size, dtype=np.int64)
        r = rng.random(size) * self.cdf[-1]
        return np.minimum(np.searchsorted(self.cdf, r, side="right"), self.n - 1).astype(np.int64)

    def __call__(self, rng: np.random.Generator, src: np.ndarray) -> np.ndarray:
        w = self._raw(rng, src.size)
        bad = (w == src) | _is_edge(self.keys, src, w, self.n)
        for _ in range(MAX_REDRAWS):
            if not bad.any():
                break
            idx = np.flatnonzero(bad)
            w[idx] = self._raw(rng, idx.size)
            bad[idx] = (w[idx] == src[idx]) | _is_edge(self.keys, src[idx], w[idx], self.n)
        self.collisions += int(bad.sum())
        return w


def cut_edge_split(indptr: np.ndarray, indices: np.ndarray, *, undirected: bool,
                   fractions: Sequence[float], seed: int, eval_negatives: int,
                   where: str) -> dict[str, np.ndarray | int]:
    """The arrays of an edge split of the CSC graph (see the module docstring), in
    memory. Raises :class:`UsageError` when the graph has no edges to hold out."""
    n = int(indptr.shape[0]) - 1
    src, dst, keys = _edge_keys(indptr, indices, n)
    cand = (src < dst) if undirected else (src != dst)
    cu, cv = src[cand], dst[cand]
    m = int(cu.size)
    n_val = int(round(fractions[1] * m))
    n_test = int(round(fractions[2] * m))
    n_train = m - n_val - n_test
    if m == 0 or n_train < 1 or (fractions[1] > 0 and n_val < 1) or (fractions[2] > 0 and n_test < 1):
        raise UsageError(f"{where} has {m} edge(s) (self-loops aside) to split "
                         f"{','.join(f'{f:g}' for f in fractions)}: too few to hold out "
                         "validation and test edges and train on the rest; link prediction "
                         "needs a graph with edges (ingest one with more edges)")
    perm = np.random.default_rng([seed, _SPLIT_SALT]).permutation(m)
    parts = {"val": perm[:n_val], "test": perm[n_val:n_val + n_test],
             "train": np.sort(perm[n_val + n_test:])}
    pairs = {k: np.stack([cu[p], cv[p]], axis=1) for k, p in parts.items()}
    held = np.concatenate([pairs["val"], pairs["test"]])
    drop = [held[:, 1] * n + held[:, 0]]
    if undirected:
        drop.append(held[:, 0] * n + held[:, 1])
    drop_keys = np.concatenate(drop)
    keep = np.ones(keys.size, dtype=bool)
    keep[np.searchsorted(keys, drop_keys)] = False
    mp_indices = np.asarray(indices)[keep]
    mp_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst[keep], minlength=n), out=mp_indptr[1:])
    draw = NegativeDraw(keys, n, "uniform")
    out: dict[str, np.ndarray | int] = {"indptr": mp_indptr, "indices": mp_indices, **pairs}
    for i, part in enumerate(("val", "test")):
        p = pairs[part]
        rng = np.random.default_rng([seed, _EVAL_SALT, i])
        src_rep = np.repeat(p[:, 0], eval_negatives)
        out[f"{part}_neg"] = draw(rng, src_rep).reshape(p.shape[0], eval_negatives)
    out["neg_collisions"] = draw.collisions
    return out


def write_edge_split(store: Store, txn, arrays: dict, *, fractions, seed: int,
                     undirected: bool, eval_negatives: int) -> EdgeSplitMeta:
    names = split_array_names()
    for part, name in names.items():
        txn.write_array(name, np.ascontiguousarray(arrays[part]))
    meta = EdgeSplitMeta(fractions=tuple(fractions), seed=seed, undirected=undirected,
                         num_nodes=store.graph.num_nodes, num_train=len(arrays["train"]),
                         num_val=len(arrays["val"]), num_test=len(arrays["test"]),
                         eval_negatives=eval_negatives, mp_edges=int(arrays["indices"].size),
                         graph_fingerprint=graph_fingerprint(store),
                         fingerprint=content_fingerprint(arrays), neg_collisions=int(arrays["neg_collisions"]), arrays=names)
    txn.put(EDGE_SPLIT_KEY, meta.to_dict())
    return meta


# -- link plans -------------------------------------------------------------------------

@dataclass(frozen=True)
class LinkJob:
    """Validated options of one link plan (and of the split it needs), from
    :func:`prepare_link_sampling`."""

    name: str
    fanouts: tuple[int, ...]
    batch_size: int  # positive edges per batch
    epochs: int
    seed: int
    neg_ratio: int
    neg_sampler: str
    fractions: tuple[float, float, float]
    eval_negatives: int
    new_split: bool  # the split is (re)cut by this job
    verify_arrays: tuple[str, ...]


def _check_sizes(store: Store, g, *, neg_ratio: int, eval_negatives: int,
                 fractions: Sequence[float]) -> None:
    """Refuse negative counts no graph can use (more than its nodes) and fixed evaluation
    negatives whose array would not fit in memory, before anything is allocated."""
    n = int(g.num_nodes)
    for flag, value, fix in (("neg_ratio", neg_ratio, "e.g. neg_ratio=1"),
                             ("eval_negatives", eval_negatives, "e.g. eval_negatives=100")):
        if value > n:
            raise UsageError(f"{flag}={value} is more than the {n} nodes of store {store.path}: "
                             f"give at most {n}, {fix}")
    held_out = float(g.num_edges) * (fractions[1] + fractions[2])
    need = int(held_out * eval_negatives * 8)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > ram // 2:
        most = max(1, int((ram // 2) // max(held_out * 8, 1)))
        raise UsageError(f"eval_negatives={eval_negatives}: the fixed negatives of about "
                         f"{int(held_out)} held-out edges need {need / 2**30:.1f} GiB, more than "
                         f"half of this machine's memory: give at most {most}")


def prepare_link_sampling(store: Store, *, fanouts, batch_size, neg_ratio, epochs=None,
                          seed: int = 0, name: str | None = None,
                          neg_sampler: str = "uniform", edge_split=None,
                          eval_negatives: int = DEFAULT_EVAL_NEGATIVES,
                          overwrite: bool = False) -> LinkJob:
    """Check every option against ``store`` before anything is written."""
    fo = parse_fanouts(fanouts)
    batch_size = _check_int(batch_size, "batch_size", minimum=1,
                            fix="give the number of positive edges per batch, e.g. "
                                "batch_size=512")
    neg_ratio = check_neg_ratio(neg_ratio)
    seed = _check_int(seed, "seed", minimum=0, fix="give a non-negative integer, e.g. seed=0")
    if seed >= 2**63:
        raise UsageError(f"seed={seed} is too large: give an integer below 2**63")
    epochs = _check_int(4 if epochs is None else epochs, "epochs", minimum=1,
                        fix="give at least 1, e.g. epochs=4")
    eval_negatives = _check_int(eval_negatives, "eval_negatives", minimum=1,
                                fix="give the fixed negatives per held-out edge, e.g. 100")
    if neg_sampler not in NEG_SAMPLERS:
        raise UsageError(f"neg_sampler={neg_sampler!r} is not one of {', '.join(NEG_SAMPLERS)}")
    fractions = parse_edge_split(DEFAULT_EDGE_SPLIT if edge_split is None else edge_split)
    name = check_plan_name(name if name is not None else "link")
    refuse_existing(store, name, overwrite)
    g = store.graph
    if g is None:
        raise UsageError(f"store {store.path} has no graph: link prediction needs edges to hold "
                         "out; ingest a graph dataset first")
    if g.num_edges == 0:
        raise UsageError(f"store {store.path} has no edges to hold out: link prediction needs "
                         "a graph with edges")
    _check_sizes(store, g, neg_ratio=neg_ratio, eval_negatives=eval_negatives,
                 fractions=fractions)
    old = edge_split_meta(store)
    same = old is not None and (old.fractions, old.seed, old.eval_negatives) == (
        fractions, seed, eval_negatives) and old.graph_fingerprint == graph_fingerprint(store)
    if old is not None and not same and not overwrite:
        raise StoreExistsError(
            f"store {store.path} already has an edge split ({','.join(f'{f:g}' for f in old.fractions)}"
            f", seed {old.seed}, {old.eval_negatives} eval negatives): pass the same edge_split "
            "and seed to sample on it, or overwrite=True to replace it (link plans sampled on "
            "the old split are then refused)")
    return LinkJob(name=name, fanouts=fo, batch_size=batch_size, epochs=epochs, seed=seed,
                   neg_ratio=neg_ratio, neg_sampler=neg_sampler, fractions=fractions,
                   eval_negatives=eval_negatives, new_split=not same,
                   verify_arrays=(g.indptr, g.indices))


def _batch_pairs(train: np.ndarray, order: np.ndarray, lo: int, hi: int, draw: NegativeDraw,
                 job: LinkJob, epoch: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(seeds, pos [2, P] local, neg [2, P*K] local)`` of batch ``b``."""
    pos = train[order[lo:hi]]
    rng = np.random.default_rng([job.seed, epoch, b, _NEG_SALT])
    nsrc = np.repeat(pos[:, 0], job.neg_ratio)
    neg = np.stack([nsrc, draw(rng, nsrc)])
    pos = pos.T
    seeds = np.unique(np.concatenate([pos.ravel(), neg.ravel()]))
    return seeds, np.searchsorted(seeds, pos), np.searchsorted(seeds, neg)


def run_link_sampling(store: Store, job: LinkJob, *, verify: bool = True,
                      progress: Callable[[int], None] | None = None) -> PlanMeta:
    """Cut the split when the job needs one, and sample the plan, in one transaction."""
    if verify:
        verify_graph(store, job.verify_arrays)
    g = store.graph
    indptr, indices = store.csc()
    n = g.num_nodes
    keys = _edge_keys(indptr, indices, n)[2]
    with store.transaction() as txn:
        if job.new_split:
            arrays = cut_edge_split(indptr, indices, undirected=not g.directed,
                                    fractions=job.fractions, seed=job.seed,
                                    eval_negatives=job.eval_negatives, where=f"store {store.path}")
            smeta = write_edge_split(store, txn, arrays, fractions=job.fractions,
                                     seed=job.seed, undirected=not g.directed,
                                     eval_negatives=job.eval_negatives)
            split = arrays
        else:
            es = read_edge_split(store)
            smeta = es.meta
            split = {"indptr": es.indptr, "indices": es.indices, "train": es.train}
        return _write_link_plan(store, txn, job, split, keys, smeta.fingerprint, progress)


def _write_link_plan(store: Store, txn, job: LinkJob, split: dict, keys: np.ndarray,
                     split_fp: int, progress: Callable[[int], None] | None) -> PlanMeta:
    g = store.graph
    n = g.num_nodes
    mp_indptr = np.ascontiguousarray(split["indptr"], dtype=np.int64)
    mp_indices = np.ascontiguousarray(split["indices"])
    train = np.asarray(split["train"], dtype=np.int64)
    draw = NegativeDraw(keys, n, job.neg_sampler, mp_indptr)
    row_bytes = store.array_meta("features").row_bytes if store.has_array("features") else 0
    dtype = node_dtype_for(n)
    base = dict(name=job.name, split="train", fanouts=job.fanouts, batch_size=job.batch_size,
                epochs=job.epochs, seed=job.seed, shuffle=True, num_seeds=int(train.shape[0]),
                node_dtype=dtype.name, num_nodes=n, num_edges=g.num_edges,
                store_version=store.version, graph_fingerprint=graph_fingerprint(store),
                format_version=PLAN_FORMAT_VERSION, task="link",
                link={"neg_ratio": job.neg_ratio, "neg_sampler": job.neg_sampler,
                      "edge_split": list(job.fractions), "split_fingerprint": split_fp})
    writer = PlanWriter(txn, base, feature_row_bytes=row_bytes)
    names = pair_array_names(job.name)
    pairs = txn.array_writer(names["pairs"], dtype, (), subdir="plans")
    pindex = txn.array_writer(names["pair_index"], np.int64, (3,), subdir="plans")
    per_epoch = -(-train.shape[0] // job.batch_size)
    group = max(2, 2 * numba.get_num_threads())
    fo = np.asarray(job.fanouts, dtype=np.int64)
    offset = 0
    for epoch in range(job.epochs):
        writer.begin_epoch()
        order = np.random.default_rng([job.seed, epoch, _EPOCH_SALT]).permutation(train.shape[0])
        for b0 in range(0, per_epoch, group):
            b1 = min(per_epoch, b0 + group)
            batch = [_batch_pairs(train, order, b * job.batch_size,
                                  min(train.shape[0], (b + 1) * job.batch_size), draw, job,
                                  epoch, b) for b in range(b0, b1)]
            seeds = np.concatenate([s for s, _, _ in batch])
            bounds = np.concatenate([[0], np.cumsum([s.size for s, _, _ in batch])]).astype(np.int64)
            recs, lays = _sample_group(mp_indptr, mp_indices, seeds, bounds, fo,
                                       np.uint64(job.seed), np.int64(epoch), np.int64(b0))
            for i, (s, pos, neg) in enumerate(batch):
                writer.add_batch(recs[i], lays[i], int(s.size))
                flat = np.concatenate([pos.ravel(), neg.ravel()]).astype(dtype)
                pairs.append(flat)
                pindex.append(np.array([[offset, pos.shape[1], neg.shape[1]]], dtype=np.int64))
                offset += flat.size
            if progress:
                progress(b1 - b0)
    pairs.close()
    pindex.close()
    writer.extra_arrays(names)
    stats_extra = {"neg_collisions": draw.collisions, "positives_per_epoch": int(train.shape[0])}
    meta = writer.finish(extra_stats=stats_extra)
    log.info("link plan %r: %d epoch(s) x %d batch(es), %d negative(s) per positive (%s), "
             "%d negative(s) kept after %d redraws", job.name, job.epochs, per_epoch,
             job.neg_ratio, job.neg_sampler, draw.collisions, MAX_REDRAWS)
    return meta


def sample_link_plan(store: Store, **kwargs) -> PlanMeta:
    """:func:`prepare_link_sampling` then :func:`run_link_sampling` (keywords of both)."""
    verify = kwargs.pop("verify", True)
    progress = kwargs.pop("progress", None)
    job = prepare_link_sampling(store, **kwargs)
    return run_link_sampling(store, job, verify=verify, progress=progress)


__all__ = ["DEFAULT_EDGE_SPLIT", "EdgeSplit", "LinkJob", "NegativeDraw", "cut_edge_split",
           "parse_edge_split", "prepare_link_sampling", "run_link_sampling", "sample_link_plan"]
