"""Uniform neighbour sampling without replacement (GraphSAGE-style), offline, into a plan.

For each mini-batch of seeds, layers are sampled from the seeds outwards: the layer next
to the seeds (``fanouts[-1]``, DGL's convention) takes up to ``fanout`` distinct
in-neighbours of every seed, the layer before it takes up to its fanout of every node
reached so far, and so on down to ``fanouts[0]`` on the input side. Nodes are numbered
locally in order of first appearance (seeds first), so every layer's destination nodes
are a prefix of its source nodes, and the batch's input nodes are one list for all
layers (see :mod:`oocstore.plan` for the record layout).

Determinism: every random draw is a counter-based hash (splitmix64) of
``(seed, epoch, batch, layer, destination node, draw number)``, and the per-epoch seed
order comes from a NumPy generator seeded with ``(seed, epoch)``. Nothing depends on
which thread samples which batch, so plans are bit-identical for any thread count.

Parallelism: a group of batches is sampled by one ``parallel=True`` numba kernel, one
batch per ``prange`` iteration (each batch is serial inside, with its own hash table for
the global-to-local relabelling); kernels release the GIL. Groups are appended to the
plan and forgotten, so peak memory is one group of batches plus O(num_nodes) statistics.

Choice of k of d neighbours: Robert Floyd's algorithm (k draws, each a uniform integer;
a uniform k-subset without a d-sized scratch array). Uniform integers in ``[0, m)`` are
``(r_hi32 * m) >> 32``, whose bias (< m / 2**32) is far below anything a test can see.

Shards (``world_size = W > 1``, data-parallel training): each epoch's seed order (the
same permutation as an unsharded plan's) is cut into *global batches* of ``W x
batch_size`` seeds, and rank ``r`` takes the ``r``-th of ``W`` near-equal slices of
every global batch (:func:`shard_layout`). So every rank has the same number of
batches per epoch (no rank waits at the gradient all-reduce), every seed of the epoch
is in exactly one rank's batch (nothing padded, nothing dropped), full batches hold
exactly ``batch_size`` seeds per rank, and a short last global batch is split evenly
(or, when it has fewer than ``W`` seeds, merged into the one before, so a few slices
get ``batch_size + 1`` seeds). A rank's slice of global batch ``g`` is sampled with
batch key ``g``, so its neighbour draws are those the unsharded plan with batch size
``W x batch_size`` makes for the same nodes: the ranks' blocks together are that
plan's batch, restricted to each rank's seeds.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numba
import numpy as np
from numba import njit, prange
from numba.typed import List

from oocstore.errors import ChecksumError, FormatError, UsageError
from oocstore.plan import (ALL_NEIGHBORS, PLAN_FORMAT_VERSION, PlanMeta, PlanWriter,
                           check_plan_name, graph_fingerprint, node_dtype_for, refuse_existing,
                           shard_name)
from oocstore.store import Store

log = logging.getLogger(__name__)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_ONE = np.uint64(1)

#: Salt of the per-epoch seed permutation (keeps it independent of the edge draws).
_SHUFFLE_SALT = 0x5EED5A3B


@njit(nogil=True, cache=True)
def _mix(z):
    """splitmix64 finaliser: a bijective, well-mixed hash of one uint64."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(nogil=True, cache=True)
def _key(seed, epoch, batch, layer, node):
    h = _mix(np.uint64(seed) + _GOLDEN)
    h = _mix(h + np.uint64(epoch) * _GOLDEN)
    h = _mix(h + np.uint64(batch) * _GOLDEN)
    h = _mix(h + np.uint64(layer) * _GOLDEN)
    return _mix(h + np.uint64(node) * _GOLDEN)


@njit(nogil=True, cache=True)
def _below(key, j, m):
    """The j-th uniform integer in [0, m) of stream ``key``."""
    r = _mix(key + np.uint64(j + 1) * _GOLDEN)
    return np.int64(((r >> _S32) * np.uint64(m)) >> _S32)


@njit(nogil=True, cache=True)
def _table_size(n):
    size = 64
    while size < 2 * n:
        size *= 2
    return size


@njit(nogil=True, cache=True)
def _slot(keys, key):
    mask = keys.shape[0] - 1
    s = np.int64(_mix(np.uint64(key)) & np.uint64(mask))
    while keys[s] != -1 and keys[s] != key:
        s = (s + 1) & mask
    return s


@njit(nogil=True, cache=True)
def _rehash(keys, vals, size):
    nk = np.full(size, -1, np.int64)
    nv = np.empty(size, np.int64)
    for i in range(keys.shape[0]):
        if keys[i] != -1:
            s = _slot(nk, keys[i])
            nk[s] = keys[i]
            nv[s] = vals[i]
    return nk, nv


@njit(nogil=True, cache=True)
def _layer_edges(indptr, nodes, n_dst, f):
    """How many edges one layer samples into ``nodes[:n_dst]``: every in-edge of a node of
    in-degree at most ``f`` (of every node when ``f < 0``), else ``f`` of them."""
    total = 0
    for i in range(n_dst):
        v = nodes[i]
        d = indptr[v + 1] - indptr[v]
        total += d if (f < 0 or d <= f) else f
    return total


@njit(nogil=True, cache=True)
def _sample_relation(indptr, indices, dst_nodes, n_dst, src_nodes, keys, vals, n_src, f, picked,
                     seed, epoch, batch, layer):
    """Up to ``f`` in-neighbours (``f < 0``: all) of each of ``dst_nodes[:n_dst]`` through
    one relation's CSC; new source nodes join the source table (``src_nodes[:n_src]``,
    hashed in ``keys``/``vals``). Returns ``(src_nodes, keys, vals, n_src, src, dst)``
    with edges as local ids. ``dst_nodes`` may be ``src_nodes`` itself (one node type):
    only entries below ``n_dst <= n_src`` are read, and new sources go after ``n_src``
    (into a grown copy when full), so the reads never see them."""
    total = _layer_edges(indptr, dst_nodes, n_dst, f)
    if n_src + total > src_nodes.shape[0]:
        grown = np.empty(n_src + total, np.int64)
        grown[:n_src] = src_nodes[:n_src]
        src_nodes = grown
    if 2 * (n_src + total) > keys.shape[0]:
        keys, vals = _rehash(keys, vals, _table_size(n_src + total))
    src = np.empty(total, np.int64)
    dst = np.empty(total, np.int64)
    pos = 0
    for i in range(n_dst):
        v = dst_nodes[i]
        lo = indptr[v]
        d = indptr[v + 1] - lo
        every = f < 0 or d <= f
        k = d if every else f
        if not every:
            h = _key(seed, epoch, batch, layer, v)
            # Floyd: for j = d-k .. d-1 draw t in [0, j]; take t, or j if t was taken.
            for c in range(k):
                j = d - k + c
                t = _below(h, c, j + 1)
                for q in range(c):
                    if picked[q] == t:
                        t = j
                        break
                picked[c] = t
        for c in range(k):
            u = np.int64(indices[lo + (c if every else picked[c])])
            s = _slot(keys, u)
            if keys[s] == -1:  # a node new to the batch: its local id is n_src
                keys[s] = u
                vals[s] = n_src
                src_nodes[n_src] = u
                n_src += 1
            src[pos + c] = vals[s]
            dst[pos + c] = i
        pos += k
    return src_nodes, keys, vals, n_src, src, dst


@njit(nogil=True, cache=True)
def _sample_layer(indptr, indices, nodes, keys, vals, n, f, picked, seed, epoch, batch, layer):
    """Sample up to ``f`` in-neighbours of each of the ``n`` nodes so far (destinations
    ``0..n-1``), adding new sources to the table: :func:`_sample_relation` with one node
    set for both ends (destinations are a prefix of the sources). The node and table
    arrays grow when needed, so they are returned: ``(nodes, keys, vals, n, src, dst)``,
    edges as local ids."""
    return _sample_relation(indptr, indices, nodes, n, nodes, keys, vals, n, f, picked, seed,
                            epoch, batch, layer)


@njit(nogil=True, cache=True)
def _sample_one(indptr, indices, seeds, fanouts, seed, epoch, batch):
    """Sample one batch. Returns ``(record int64, layers [L, 3] int64)`` laid out as in
    :mod:`oocstore.plan` (input nodes, then src/dst of layer 0, ..., layer L-1)."""
    num_layers = fanouts.shape[0]
    nseeds = seeds.shape[0]
    cap = max(16, nseeds)
    nodes = np.empty(cap, np.int64)
    keys = np.full(_table_size(cap), -1, np.int64)
    vals = np.empty(keys.shape[0], np.int64)
    n = 0
    for i in range(nseeds):
        s = _slot(keys, seeds[i])
        if keys[s] == -1:
            keys[s] = seeds[i]
            vals[s] = n
            nodes[n] = seeds[i]
            n += 1
    maxf = 1
    for layer in range(num_layers):
        maxf = max(maxf, fanouts[layer])
    picked = np.empty(maxf, np.int64)
    layers = np.zeros((num_layers, 3), np.int64)
    srcs = List()
    dsts = List()
    for layer in range(num_layers - 1, -1, -1):
        n_dst = n
        nodes, keys, vals, n, src, dst = _sample_layer(indptr, indices, nodes, keys, vals, n,
                                                       fanouts[layer], picked, seed, epoch,
                                                       batch, layer)
        layers[layer, 0] = n
        layers[layer, 1] = n_dst
        layers[layer, 2] = src.shape[0]
        srcs.append(src)
        dsts.append(dst)
    return _batch_record(nodes, n, layers, srcs, dsts), layers


@njit(nogil=True, cache=True)
def _batch_record(nodes, n, layers, srcs, dsts):
    """The plan record of a batch: its ``n`` input nodes, then src and dst of each layer
    from layer 0 (``srcs`` / ``dsts`` were appended from the seed side: layer l is at
    num_layers - 1 - l)."""
    num_layers = layers.shape[0]
    size = n
    for layer in range(num_layers):
        size += 2 * layers[layer, 2]
    record = np.empty(size, np.int64)
    record[:n] = nodes[:n]
    pos = n
    for layer in range(num_layers):
        e = layers[layer, 2]
        record[pos:pos + e] = srcs[num_layers - 1 - layer]
        record[pos + e:pos + 2 * e] = dsts[num_layers - 1 - layer]
        pos += 2 * e
    return record


@njit(parallel=True, nogil=True, cache=True)
def _sample_group(indptr, indices, seeds, bounds, fanouts, seed, epoch, batch0):
    nb = bounds.shape[0] - 1
    records = List()
    layers = List()
    for i in range(nb):
        records.append(np.empty(0, np.int64))
        layers.append(np.empty((0, 3), np.int64))
    for i in prange(nb):
        rec, lay = _sample_one(indptr, indices, seeds[bounds[i]:bounds[i + 1]], fanouts,
                               seed, epoch, batch0 + i)
        records[i] = rec
        layers[i] = lay
    return records, layers


def parse_fanouts(value: str | Sequence[int]) -> tuple[int, ...]:
    """``"15,10,5"`` or ``[15, 10, 5]`` -> ``(15, 10, 5)``; ``all`` (or -1 in a sequence
    given by code) means every in-neighbour. ``fanouts[0]`` is the input-side layer."""
    parts: list = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for p in parts:
        if isinstance(p, str) and p.strip().lower() == "all":
            out.append(ALL_NEIGHBORS)
            continue
        try:
            if isinstance(p, (bool, float)):
                raise ValueError
            f = int(p.strip()) if isinstance(p, str) else int(p)
        except (TypeError, ValueError):
            f = None
        if f is None or (f <= 0 and not (f == ALL_NEIGHBORS and not isinstance(value, str))):
            raise UsageError(f"fanouts={value!r}: {p!r} is not a positive integer; give one "
                             "positive fanout per layer, input side first (e.g. "
                             "fanouts='15,10,5'), "
                             "or 'all' for the full neighbourhood")
        out.append(f)
    if not out:
        raise UsageError(f"fanouts={value!r} is empty: give one fanout per layer, e.g. 15,10,5")
    return tuple(out)


def _check_int(value, what: str, *, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"{what}={value!r} is not an integer >= {minimum}: {fix}")
    return int(value)


def sample_batches(indptr: np.ndarray, indices: np.ndarray, seeds: np.ndarray, *,
                   fanouts: Sequence[int], batch_size: int, seed: int = 0, epoch: int = 0,
                   first_batch: int = 0):
    """Sample consecutive batches of ``seeds`` (in the given order) in memory.

    Returns a list of ``(record, layers)`` (see :func:`_sample_one`); batch ``i`` is keyed
    as batch ``first_batch + i``. The building block of :func:`sample_plan` and the
    benchmarks.
    """
    seeds = np.ascontiguousarray(seeds, dtype=np.int64)
    bounds = np.arange(0, seeds.shape[0] + batch_size, batch_size, dtype=np.int64)
    bounds[-1] = min(bounds[-1], seeds.shape[0])
    if bounds.shape[0] >= 2 and bounds[-1] == bounds[-2]:
        bounds = bounds[:-1]
    fo = np.asarray(fanouts, dtype=np.int64)
    recs, lays = _sample_group(indptr, indices, seeds, bounds, fo, np.uint64(seed),
                               np.int64(epoch), np.int64(first_batch))
    return [(recs[i], lays[i]) for i in range(len(recs))]


def probe_batches(store: Store, *, split: str = "train", seed: int = 0):
    """``fn(fanouts, batch_size, epoch, count)``: the first ``count`` batches of ``epoch``
    of the plan :func:`sample_plan` would write for ``split`` with these options (the
    same seed order and keys), sampled in memory — what ``oocstore plan-budget`` probes
    instead of sampling whole epochs."""
    indptr, indices = store.csc()
    seeds = np.ascontiguousarray(store.split(split), dtype=np.int64)
    shuffle = split == "train"

    def fn(fanouts, batch_size: int, epoch: int, count: int):
        order = (np.random.default_rng([seed, epoch, _SHUFFLE_SALT]).permutation(seeds)
                 if shuffle else seeds)
        return sample_batches(indptr, indices, order[:count * batch_size],
                              fanouts=parse_fanouts(list(fanouts)), batch_size=batch_size,
                              seed=seed, epoch=epoch, first_batch=0)

    return fn


def verify_graph(store: Store, names: Sequence[str] | None = None) -> None:
    """Recompute the checksums of ``names`` (default: the graph arrays) and check the
    graph's structure; raise :class:`ChecksumError` / :class:`FormatError` on damage."""
    from oocstore.store.verify import verify_arrays

    g = store.graph
    damage = verify_arrays(store, names if names is not None else (g.indptr, g.indices))
    if damage:
        raise ChecksumError(f"store {store.path}: {damage[0]} ({len(damage)} damaged chunk(s) in "
                            "the arrays sampling reads): restore the store from a copy or "
                            "re-create it; `oocstore verify` lists every damage")
    structural = verify_arrays(store, (), graph=True)
    if structural:
        raise FormatError(f"store {store.path}: {structural[0]}: re-create the store")


@dataclass(frozen=True)
class SamplingJob:
    """Validated options of one plan to sample (from :func:`prepare_sampling`)."""

    name: str
    split: str  # the split sampled, or "custom" for explicit seeds
    fanouts: tuple[int, ...]
    batch_size: int
    epochs: int
    seed: int
    shuffle: bool
    seeds: np.ndarray  # [num_seeds] int64, distinct, in split order
    verify_arrays: tuple[str, ...]  # arrays whose checksums are checked before sampling
    world_size: int = 1  # > 1: one shard per rank (see the module docstring)

    @property
    def batches_per_epoch(self) -> int:
        """Batches per epoch (per rank when sharded)."""
        if self.world_size > 1:
            return shard_layout(self.seeds.size, self.world_size, self.batch_size).shape[0]
        return -(-self.seeds.size // self.batch_size)

    @property
    def total_batches(self) -> int:
        """Batches to sample (over all ranks when sharded)."""
        return self.epochs * self.batches_per_epoch * self.world_size

    @property
    def plan_names(self) -> list[str]:
        """The plans the job writes: ``name``, or one shard name per rank."""
        if self.world_size == 1:
            return [self.name]
        return [shard_name(self.name, r) for r in range(self.world_size)]


def shard_layout(num_seeds: int, world_size: int, batch_size: int) -> np.ndarray:
    """Offsets ``[num_batches, world_size + 1]`` into an epoch's seed order: rank ``r``'s
    batch ``g`` is ``order[off[g, r]:off[g, r + 1]]`` (see the module docstring).

    Requires ``num_seeds >= world_size`` (every rank gets at least one seed per batch).
    """
    n, w, b = int(num_seeds), int(world_size), int(batch_size)
    if n < w:
        raise UsageError(f"{n} seed(s) cannot be shared by {w} ranks (each rank needs at least "
                         "one seed per batch): lower world_size or choose a larger split")
    per = w * b
    starts = list(range(0, n, per)) + [n]
    if len(starts) > 2 and starts[-1] - starts[-2] < w:
        del starts[-2]  # a last global batch smaller than W joins the one before
    starts = np.asarray(starts, dtype=np.int64)
    size = np.diff(starts)  # [num_batches] seeds per global batch
    ranks = np.arange(w + 1, dtype=np.int64)
    # Slice r of a global batch of m seeds: m // W seeds, one more for the first m % W.
    within = ranks[None, :] * (size // w)[:, None] + np.minimum(ranks[None, :], (size % w)[:, None])
    return starts[:-1, None] + within


def prepare_sampling(store: Store, *, fanouts: str | Sequence[int], batch_size: int,
                     epochs: int | None = None, seed: int = 0, name: str | None = None,
                     split: str = "train", seeds: np.ndarray | None = None,
                     overwrite: bool = False, world_size: int = 1) -> SamplingJob:
    """Check every option against ``store`` (cheap; reads no graph data). With
    ``world_size > 1`` the job writes one shard per rank, ``batch_size`` seeds per rank
    and batch."""
    fo = parse_fanouts(fanouts)
    batch_size = _check_int(batch_size, "batch_size", minimum=1,
                            fix="give the number of seed nodes per batch, e.g. batch_size=1024")
    world_size = _check_int(world_size, "world_size", minimum=1,
                            fix="give the number of training processes (ranks), e.g. "
                                "world_size=2")
    seed = _check_int(seed, "seed", minimum=0, fix="give a non-negative integer, e.g. seed=0")
    if seed >= 2**63:
        raise UsageError(f"seed={seed} is too large: give an integer below 2**63")
    shuffle = split == "train"
    if epochs is None:
        epochs = 4 if shuffle else 1
    epochs = _check_int(epochs, "epochs", minimum=1, fix="give at least 1, e.g. epochs=4")
    name = check_plan_name(name if name is not None else split)
    if world_size > 1:
        longest = shard_name(name, world_size - 1)
        if len(longest) > 64:
            raise UsageError(f"name={name!r}: its shard names (e.g. {longest!r}) would exceed 64 "
                             "characters; choose a shorter name")
        for shard in (shard_name(name, r) for r in range(world_size)):
            refuse_existing(store, shard, overwrite)
    else:
        refuse_existing(store, name, overwrite)
    g = store.graph
    if g is None:
        raise UsageError(f"store {store.path} has no graph to sample: ingest a graph dataset first")
    if seeds is None:
        if split not in store.splits:
            raise UsageError(f"split={split!r}: store {store.path} has no such split (it has: "
                             f"{', '.join(sorted(store.splits)) or 'none'}): choose one of those, "
                             "or re-ingest with --split to create it")
        seed_nodes = store.split(split)
        where = f"the {split!r} split of {store.path}"
        verify = (g.indptr, g.indices, store.splits[split])
    else:
        seed_nodes = np.asarray(seeds)
        where = "the given seeds"
        split = "custom"
        verify = (g.indptr, g.indices)
        if seed_nodes.ndim != 1 or (seed_nodes.size and not np.issubdtype(seed_nodes.dtype, np.integer)):
            raise UsageError(f"{where}: expected a 1-D integer array of node ids, got "
                             f"{seed_nodes.dtype} of shape {seed_nodes.shape}")
    seed_nodes = np.ascontiguousarray(seed_nodes, dtype=np.int64)
    if seed_nodes.size == 0:
        raise UsageError(f"{where} is empty: nothing to sample; choose another split")
    lo, hi = int(seed_nodes.min()), int(seed_nodes.max())
    if lo < 0 or hi >= g.num_nodes:
        bad = lo if lo < 0 else hi
        raise UsageError(f"{where}: seed node {bad} is out of range 0..{g.num_nodes - 1}: give "
                         "node ids of this graph (or re-ingest the store if its split is wrong)")
    if np.unique(seed_nodes).size != seed_nodes.size:
        raise UsageError(f"{where}: seed nodes repeat: give each seed once")
    if world_size > seed_nodes.size:
        raise UsageError(f"world_size={world_size}: {where} has only {seed_nodes.size} seed(s), "
                         "fewer than the ranks that would share them: lower world_size")
    return SamplingJob(name=name, split=split, fanouts=fo, batch_size=batch_size, epochs=epochs,
                       seed=seed, shuffle=shuffle, seeds=seed_nodes, verify_arrays=verify,
                       world_size=world_size)


def run_sampling(store: Store, job: SamplingJob, *, verify: bool = True,
                 group_batches: int | None = None,
                 progress: Callable[[int], None] | None = None) -> PlanMeta:
    """Sample ``job`` into the store in one transaction; returns the committed meta."""
    if verify:
        verify_graph(store, job.verify_arrays)
    g = store.graph
    indptr, indices = store.csc()
    row_bytes = store.array_meta("features").row_bytes if store.has_array("features") else 0
    base = dict(name=job.name, split=job.split, fanouts=job.fanouts, batch_size=job.batch_size,
                epochs=job.epochs, seed=job.seed, shuffle=job.shuffle,
                num_seeds=int(job.seeds.size), node_dtype=node_dtype_for(g.num_nodes).name,
                num_nodes=g.num_nodes, num_edges=g.num_edges, store_version=store.version,
                graph_fingerprint=graph_fingerprint(store), format_version=PLAN_FORMAT_VERSION)
    threads = numba.get_num_threads()
    # Two batches per thread per kernel call: enough to balance the prange, and memory
    # stays one small group of batches.
    group = group_batches or max(2, 2 * threads)
    if job.world_size > 1:
        return _run_sharded(store, job, base, row_bytes, group, progress)
    per_epoch = job.batches_per_epoch
    bs = job.batch_size
    log.info("sampling plan %r: %d epoch(s) x %d batch(es), fanouts %s, %d thread(s)",
             job.name, job.epochs, per_epoch, list(job.fanouts), threads)
    with store.transaction() as txn:
        writer = PlanWriter(txn, base, feature_row_bytes=row_bytes)
        for epoch in range(job.epochs):
            writer.begin_epoch()
            if job.shuffle:
                order = np.random.default_rng([job.seed, epoch, _SHUFFLE_SALT]).permutation(job.seeds)
            else:
                order = job.seeds
            for b0 in range(0, per_epoch, group):
                b1 = min(per_epoch, b0 + group)
                for record, layers in sample_batches(indptr, indices, order[b0 * bs:b1 * bs],
                                                     fanouts=job.fanouts, batch_size=bs,
                                                     seed=job.seed, epoch=epoch, first_batch=b0):
                    writer.add_batch(record, layers, int(layers[-1, 1]))
                if progress:
                    progress(b1 - b0)
        meta = writer.finish()
    return meta


def _epoch_order(job: SamplingJob, epoch: int) -> np.ndarray:
    if job.shuffle:
        return np.random.default_rng([job.seed, epoch, _SHUFFLE_SALT]).permutation(job.seeds)
    return job.seeds


def _run_sharded(store: Store, job: SamplingJob, base: dict, row_bytes: int, group: int,
                 progress: Callable[[int], None] | None) -> PlanMeta:
    """All shards of ``job`` in one transaction (the group appears whole or not at all).
    Returns rank 0's meta."""
    w = job.world_size
    layout = shard_layout(job.seeds.size, w, job.batch_size)  # [nb, W + 1]
    per_epoch = layout.shape[0]
    sizes = np.diff(layout, axis=1)  # [nb, W] seeds of rank r's batch g
    fo = np.asarray(job.fanouts, dtype=np.int64)
    indptr, indices = store.csc()
    log.info("sampling plan %r for %d ranks: %d epoch(s) x %d batch(es) per rank, fanouts %s",
             job.name, w, job.epochs, per_epoch, list(job.fanouts))
    with store.transaction() as txn:
        writers = [PlanWriter(txn, {**base, "name": shard_name(job.name, r),
                                    "num_seeds": int(sizes[:, r].sum()), "shard_group": job.name,
                                    "shard_rank": r, "shard_world_size": w},
                              feature_row_bytes=row_bytes) for r in range(w)]
        for epoch in range(job.epochs):
            order = _epoch_order(job, epoch)
            for r, writer in enumerate(writers):
                writer.begin_epoch()
                mine = np.concatenate([order[layout[g, r]:layout[g, r + 1]]
                                       for g in range(per_epoch)])
                bounds = np.concatenate([[0], np.cumsum(sizes[:, r])]).astype(np.int64)
                for b0 in range(0, per_epoch, group):
                    b1 = min(per_epoch, b0 + group)
                    # Batch keys are global batch numbers: see the module docstring.
                    recs, lays = _sample_group(indptr, indices, mine, bounds[b0:b1 + 1], fo,
                                               np.uint64(job.seed), np.int64(epoch), np.int64(b0))
                    for i in range(len(recs)):
                        writer.add_batch(recs[i], lays[i], int(lays[i][-1, 1]))
                    if progress:
                        progress(b1 - b0)
        metas = [writer.finish() for writer in writers]
    return metas[0]


def sample_plan(store: Store | str | os.PathLike, *, fanouts: str | Sequence[int],
                batch_size: int, epochs: int | None = None, seed: int = 0,
                name: str | None = None, split: str = "train", seeds: np.ndarray | None = None,
                overwrite: bool = False, verify: bool = True, group_batches: int | None = None,
                progress: Callable[[int], None] | None = None, world_size: int = 1) -> PlanMeta:
    """Sample ``epochs`` epochs of ``split`` (or of explicit ``seeds``) into plan ``name``
    (with ``world_size > 1``: into one shard per rank, see the module docstring; rank
    0's meta is returned).

    The training split is shuffled per epoch and sampled 4 epochs by default; other
    splits are sampled in order, one epoch by default. The graph arrays' checksums are
    verified first (``verify``). ``progress(n)`` is called after every group of ``n``
    batches. Returns the committed :class:`PlanMeta`.
    """
    if not isinstance(store, Store):
        with Store(store, readonly=False) as opened:
            return sample_plan(opened, fanouts=fanouts, batch_size=batch_size, epochs=epochs,
                               seed=seed, name=name, split=split, seeds=seeds,
                               overwrite=overwrite, verify=verify, group_batches=group_batches,
                               progress=progress, world_size=world_size)
    job = prepare_sampling(store, fanouts=fanouts, batch_size=batch_size, epochs=epochs,
                           seed=seed, name=name, split=split, seeds=seeds, overwrite=overwrite,
                           world_size=world_size)
    return run_sampling(store, job, verify=verify, group_batches=group_batches, progress=progress)
