"""Which batch sizes and fanouts fit a memory budget, before sampling a plan.

``oocstore plan-budget STORE --cpu-budget X`` answers the question a pack refusal
(``minimum working set ... > cpu budget``) raises, without a sample / pack round per
guess. For every candidate (fanouts, batch size) it estimates the parts of the pack's
minimum working set (:func:`oocstore.workingset.working_set`, the formula the packer
records and the loader charges) and compares the total with the budget.

**What is estimated, and how.** Everything in the minimum is exact from the store
(labels, row size, the plan's batch count) except what grows with the sampled
neighbourhoods: the largest batch's input rows (its staging buffer, and the segment
buffer, which holds at most the rows of one batch when segments are one batch long),
the largest plan record, and the plan's total size (the reader's tables). Those come
from ``probe`` batches sampled in memory with the sampler the plan will use (same
seeds, same keys: the probed batches are the plan's own first batches of a few epochs),
never a whole epoch. The largest of ``T`` batches is estimated from the probes' mean
``m`` and standard deviation ``s`` as ``m + s * sqrt(2 ln T)`` (the expected maximum of
``T`` normal draws), at least the largest probe, then widened by ``margin`` (default
10 %), and never above the hard bound ``min(nodes, batch x prod(1 + fanout))``. The
error this leaves is reported next to each estimate (``largest_seen`` vs
``largest_batch_rows``; :func:`check_estimate` compares an estimate with a sampled
plan). The segment buffer is charged as one batch (one-batch segments, no CPU cache:
the floor), and the base-row read buffers as if some batches fall back to the base array.

**Suggested split.** What the budget leaves above the floor goes, in this order, to one
prefetched batch (so the loader overlaps reading with training), the segment read-ahead
buffer, and the CPU cache (the rest): the same order the loader takes them in. The
suggestion is the largest batch size (for each fanouts) that fits with one prefetched
batch, or, failing that, the largest that fits at all (prefetch depth 0).

The library core never imports the samplers (``ARCHITECTURE.md``): the caller passes
``sample_fn`` (``samplers.neighbor.probe_batches``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import UsageError
from ..plan import ALL_NEIGHBORS, node_dtype_for
from ..store import ALIGN, Store
from ..store.labels import labels_bytes
from ..tiers.ssd import base_read_buffer_bytes
from ..units import format_size
from .format import plan_record_bytes, reader_table_bytes
from ..workingset import working_set

#: Batch sizes tried when none are given.
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
#: Fanouts tried when none are given: the README's plan, and a two-layer one.
DEFAULT_FANOUTS = ((15, 10, 5), (10, 5))
#: Batches sampled per candidate to estimate the largest batch.
DEFAULT_PROBE = 16
#: Relative widening of the estimated largest batch (and record).
DEFAULT_MARGIN = 0.10

#: ``sample_fn(fanouts, batch_size, epoch, count)``: the first ``count`` batches of
#: ``epoch`` of the plan ``oocstore sample`` would write with those options, as
#: ``(record, layers)`` pairs (``samplers.neighbor``).
SampleFn = Callable[[tuple, int, int, int], list]


@dataclass
class Candidate:
    """One (fanouts, batch size) and what it needs; sizes in bytes."""

    fanouts: tuple[int, ...]
    batch_size: int
    batches_per_epoch: int
    probed: int  # batches sampled
    largest_seen: int  # input rows of the largest probed batch
    mean_rows: float
    largest_batch_rows: int  # the estimate used (margin included)
    bound_rows: int  # hard upper bound on any batch's input rows
    staging_bytes: int
    min_working_set: int  # cpu bytes at prefetch depth 0 (cuda: depth 1)
    min_gpu_working_set: int | None
    prefetch_bytes: int  # one more prefetched batch
    headroom: int | None  # budget - minimum (None: unlimited budget)
    fits: bool
    prefetch: int  # depth the loader would choose (<= 4) with no cpu cache
    cpu_cache: int  # suggested cpu cache bytes
    read_ahead: bool  # whether the suggested split leaves room for segment read-ahead

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fanouts"] = list(self.fanouts)
        return d


def _bound_rows(num_nodes: int, batch: int, fanouts: Sequence[int], max_degree: int) -> int:
    rows, frontier = batch, batch
    for f in reversed(fanouts):  # output side first: each layer adds <= f per node
        per = max_degree if f == ALL_NEIGHBORS else min(int(f), max_degree)
        frontier = frontier * per
        rows += frontier
        if rows >= num_nodes:
            return num_nodes
    return min(rows, num_nodes)


def _expected_max(values: np.ndarray, count: int) -> float:
    """Expected largest of ``count`` draws like ``values`` (normal approximation), at
    least the largest value seen."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2 or count <= values.size:
        return float(values.max())
    z = math.sqrt(2.0 * math.log(count))
    return max(float(values.max()), float(values.mean() + values.std(ddof=1) * z))


def parse_batch_sizes(value: str | Sequence[int]) -> tuple[int, ...]:
    parts = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for p in parts:
        try:
            b = int(str(p).strip())
        except ValueError:
            b = 0
        if b < 1:
            raise UsageError(f"batch_sizes={value!r}: {p!r} is not a positive integer; give "
                             "seed counts per batch, e.g. 32,64,256,1024")
        out.append(b)
    if not out:
        raise UsageError(f"batch_sizes={value!r} is empty: give e.g. 32,64,256,1024")
    return tuple(sorted(set(out)))


def estimate(store: Store, sample_fn: SampleFn, *, cpu_budget: int | None,
             gpu_budget: int | None = None, fanouts: Sequence[Sequence[int]] = DEFAULT_FANOUTS,
             batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, split: str = "train",
             epochs: int = 4, seed: int = 0, probe: int = DEFAULT_PROBE,
             margin: float = DEFAULT_MARGIN) -> dict:
    """Every candidate's estimated minimum working set against the budgets, and the
    suggestion (see the module docstring). Raises :class:`UsageError` for bad input,
    before sampling anything."""
    _check_inputs(store, cpu_budget, gpu_budget, margin, probe, epochs, split)
    seeds_all = np.asarray(store.split(split), dtype=np.int64)
    if seeds_all.size == 0:
        raise UsageError(f"the {split!r} split of {store.path} is empty: choose another split")
    fmeta = store.array_meta("features")
    rb = fmeta.row_bytes
    n = store.graph.num_nodes
    indptr, _ = store.csc()
    max_degree = int(np.diff(np.asarray(indptr)).max()) if n else 0
    itemsize = node_dtype_for(n).itemsize
    lbytes = labels_bytes(store)
    shuffle = split == "train"
    device = "cuda" if gpu_budget is not None else "cpu"
    base_buf = base_read_buffer_bytes(rb)
    out = []
    for fo in fanouts:
        fo = tuple(int(f) for f in fo)
        seen_sizes = set()
        for bs in batch_sizes:
            bs = min(int(bs), int(seeds_all.size))
            if bs in seen_sizes:
                continue
            seen_sizes.add(bs)
            per_epoch = -(-seeds_all.size // bs)
            total = per_epoch * epochs
            rows_a, elems_a = _probe(sample_fn, fo, bs, epochs, probe, per_epoch, shuffle)
            bound = _bound_rows(n, bs, fo, max_degree)
            est_rows = min(bound, int(math.ceil(_expected_max(rows_a, total) * (1 + margin))))
            # A record holds the input rows and two ids per sampled edge; it grows with the
            # batch the same way (its ratio to the rows is steady): scale like the rows.
            est_elems = int(math.ceil(_expected_max(elems_a, total) * (1 + margin)))
            staging = est_rows * rb
            seg = est_rows * rb + 2 * ALIGN  # one-batch segments, no cache: the floor
            records = plan_record_bytes(est_elems, itemsize, bs)
            positions = int(rows_a.mean() * total)
            tables = reader_table_bytes(
                total_batches=total, index_columns=4 + 3 * len(fo), epochs=epochs,
                num_segments=total, positions=positions, inserts=0, scheduled=False,
                plan_data_bytes=int(elems_a.mean() * total * itemsize))
            mws = working_set(largest_batch_rows=est_rows, row_bytes=rb,
                              largest_segment_bytes=seg, cpu_tier_bytes=0, gpu_tier_bytes=0,
                              base_read_bytes=base_buf, labels_bytes=lbytes, tables_bytes=tables,
                              plan_record_bytes=records, batch_size=bs, gpu_rows=0)
            cpu_need = mws["cpu"] + (mws["prefetch_bytes"] if device == "cuda" else 0)
            gpu_need = mws["gpu"] if device == "cuda" else None
            fits = (cpu_budget is None or cpu_need <= cpu_budget) and \
                (gpu_need is None or gpu_need <= gpu_budget)
            headroom = None if cpu_budget is None else cpu_budget - cpu_need
            prefetch, cache, ahead = _spend_headroom(headroom, mws["prefetch_bytes"], seg, rb,
                                                     device) if fits else (0, 0, False)
            out.append(Candidate(
                fanouts=fo, batch_size=bs, batches_per_epoch=per_epoch, probed=len(rows_a),
                largest_seen=int(rows_a.max()), mean_rows=round(float(rows_a.mean()), 1),
                largest_batch_rows=est_rows, bound_rows=bound, staging_bytes=staging,
                min_working_set=cpu_need, min_gpu_working_set=gpu_need,
                prefetch_bytes=mws["prefetch_bytes"], headroom=headroom, fits=fits,
                prefetch=prefetch, cpu_cache=cache, read_ahead=ahead))
    suggestion = _suggest(out)
    from ..plan import list_plans

    return {"store": str(store.path), "split": split, "cpu_budget": cpu_budget,
            "plan_exists": split in list_plans(store),
            "gpu_budget": gpu_budget, "device": device, "epochs": epochs,
            "feature_bytes": int(fmeta.nbytes), "row_bytes": rb, "probe": int(probe),
            "margin": margin, "candidates": [c.to_dict() for c in out],
            "suggestion": suggestion.to_dict() if suggestion else None}


def _check_inputs(store: Store, cpu_budget, gpu_budget, margin, probe, epochs, split) -> None:
    """Refuse bad input to :func:`estimate`, naming the parameter, before sampling."""
    if cpu_budget is not None and cpu_budget <= 0:
        raise UsageError(f"cpu_budget={cpu_budget}: give a positive size, e.g. 256MiB")
    if gpu_budget is not None and gpu_budget <= 0:
        raise UsageError(f"gpu_budget={gpu_budget}: give a positive size, e.g. 4GiB")
    if not (0 <= margin <= 10) or math.isnan(margin):
        raise UsageError(f"margin={margin}: give a fraction between 0 and 10 (e.g. 0.1)")
    if isinstance(probe, bool) or int(probe) != probe or probe < 1:
        raise UsageError(f"probe={probe!r}: give the number of batches to sample, e.g. 16")
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise UsageError(f"epochs={epochs!r}: give the epochs the plan will sample, e.g. 4")
    if store.graph is None or not store.has_array("features"):
        raise UsageError(f"store {store.path} has no graph with node features: plan-budget "
                         "sizes GNN plans; ingest a graph dataset first")
    if split not in store.splits:
        raise UsageError(f"split={split!r}: store {store.path} has no such split (it has: "
                         f"{', '.join(sorted(store.splits)) or 'none'})")


def _probe(sample_fn: SampleFn, fo: tuple[int, ...], bs: int, epochs: int, probe: int,
           per_epoch: int, shuffle: bool) -> tuple[np.ndarray, np.ndarray]:
    """Input rows and record elements of up to ``probe`` of the plan's own batches: the
    first few of epochs 0, 1, ... (train shuffles per epoch with the sampler's seed; val /
    test keep their order)."""
    rows, elems = [], []
    per_ep = max(1, -(-int(probe) // epochs))
    for e in range(epochs):
        if len(rows) >= probe:
            break
        take = min(per_ep, probe - len(rows), per_epoch)
        for record, layers in sample_fn(fo, bs, e, take):
            layers = np.asarray(layers).reshape(len(fo), 3)
            rows.append(int(layers[0, 0]))
            elems.append(int(np.asarray(record).shape[0]))
        if not shuffle:
            break  # every epoch of val / test is the same
    return np.asarray(rows), np.asarray(elems)


def _spend_headroom(headroom: int | None, one: int, seg: int, rb: int,
                    device: str) -> tuple[int, int, bool]:
    """``(prefetch depth, cpu cache bytes, read ahead)`` a fitting candidate can afford
    from ``headroom`` (``None``: no budget): one prefetched batch (``one`` bytes) first,
    then the segment read-ahead buffer (``seg``), then cache rows; more depth (up to 4)
    only from what no cache row would use."""
    prefetch, ahead = 0, False
    room = headroom if headroom is not None else 1 << 62
    if device == "cuda":
        prefetch = 1
    while prefetch < 1 and room >= one:
        prefetch, room = prefetch + 1, room - one
    if room >= seg:
        ahead, room = True, room - seg
    cache = 0 if headroom is None else max(0, room) // rb * rb
    while prefetch < 4 and (headroom is None or room - cache >= one):
        prefetch += 1  # more depth only from what no cache row would use
        if headroom is not None:
            room -= one
    return prefetch, cache, ahead


def _suggest(cands: list[Candidate]) -> Candidate | None:
    """The largest batch that fits with a prefetched batch; else the largest that fits.
    Between fanouts, the first given (the caller's order of preference)."""
    for need_prefetch in (True, False):
        for fo in dict.fromkeys(c.fanouts for c in cands):
            ok = [c for c in cands if c.fanouts == fo and c.fits
                  and (c.prefetch >= 1 or not need_prefetch)]
            if ok:
                return max(ok, key=lambda c: c.batch_size)
    return None


def check_estimate(store: Store, plan_name: str, cand: dict) -> dict:
    """An estimate against a sampled plan: the plan's real largest batch and record
    (the error the estimate made; positive means the estimate was larger)."""
    from ..plan import PlanReader

    plan = PlanReader(store, plan_name)
    try:
        index = np.asarray(plan.index())
        real = int(index[:, 3].max())
    finally:
        plan.close()
    return {"largest_batch_rows": real, "estimated": int(cand["largest_batch_rows"]),
            "error": (int(cand["largest_batch_rows"]) - real) / real if real else 0.0}


def size_arg(nbytes: int) -> str:
    """``nbytes`` as a command-line size that parses back exactly (``28MiB``)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return str(int(nbytes))


def format_table(result: dict) -> list[str]:
    """The human-readable table of :func:`estimate`'s result."""
    budget = result["cpu_budget"]
    gb = result["gpu_budget"]
    head = (f"store {result['store']}: {format_size(result['feature_bytes'])} of features "
            f"({result['row_bytes']} B rows), split {result['split']!r}, {result['epochs']} "
            f"epochs; cpu budget {format_size(budget) if budget is not None else 'unlimited'}"
            + (f", gpu budget {format_size(gb)}" if gb is not None else "")
            + f" ({result['device']} loader)")
    lines = [head,
             f"  largest batch: the largest of {result['probe']} sampled batches, extrapolated "
             f"to the plan's batch count, +{result['margin'] * 100:.0f} % margin",
             f"  {'fanouts':<10} {'batch':>6} {'largest batch':>22} {'minimum':>11} "
             f"{'headroom':>11} {'cpu cache':>11} {'prefetch':>8}  fits"]
    for c in result["candidates"]:
        fo = ",".join("all" if f == ALL_NEIGHBORS else str(f) for f in c["fanouts"])
        rows = f"{c['largest_batch_rows']} rows {format_size(c['staging_bytes'])}"
        head = format_size(c["headroom"]) if c["headroom"] is not None else "-"
        lines.append(f"  {fo:<10} {c['batch_size']:>6} {rows:>22} "
                     f"{format_size(c['min_working_set']):>11} {head:>11} "
                     f"{format_size(c['cpu_cache']) if c['fits'] else '-':>11} "
                     f"{c['prefetch'] if c['fits'] else '-':>8}  "
                     f"{'yes' if c['fits'] else 'no'}")
    s = result["suggestion"]
    if s is None:
        smallest = min(result["candidates"], key=lambda c: c["min_working_set"])
        lines.append(f"nothing fits: the smallest minimum is "
                     f"{format_size(smallest['min_working_set'])} (batch "
                     f"{smallest['batch_size']}); raise --cpu-budget or try smaller "
                     "--batch-sizes / --fanouts")
        return lines
    fo = ",".join("all" if f == ALL_NEIGHBORS else str(f) for f in s["fanouts"])
    bflag = f" --cpu-budget {size_arg(budget)}" if budget is not None else ""
    gflag = f" --gpu-budget {size_arg(gb)}" if gb is not None else ""
    split = "" if result["split"] == "train" else f" --split {result['split']}"
    over = " --overwrite" if result.get("plan_exists") else ""
    lines += [f"suggested: --fanouts {fo} --batch-size {s['batch_size']} (prefetch "
              f"{s['prefetch']}, about {format_size(s['cpu_cache'])} of cpu cache)",
              f"  oocstore sample {result['store']} --fanouts {fo} --batch-size "
              f"{s['batch_size']} --epochs {result['epochs']}{split}{over}",
              f"  oocstore pack {result['store']} --plan {result['split'] if split else 'train'}"
              f"{bflag}{gflag}",
              f"  oocstore train {result['store']} --epochs 10{bflag}{gflag}"
              + (" --device cuda" if gb is not None else "")]
    return lines
