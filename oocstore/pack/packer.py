"""The packer: lay out each batch's cold rows contiguously on disk, in access order.

Steps (all streaming over the plan; the base feature array is only read sequentially):

1. **Placement.** :func:`static_placement` picks the GPU- and CPU-tier rows from the
   plan's access counts.
2. **Segment length.** A segment is ``S`` consecutive batches of one epoch; its distinct
   cold rows are stored once (rows shared by batches inside a segment are de-duplicated,
   as DiskGNN does). The smallest ``S`` in 1, 2, 4, ... whose packed bytes fit
   ``max_disk_blowup`` x base bytes is chosen (small segments keep the working set
   small); if even the longest allowed segment does not fit, segments are packed in plan
   order until the cap is reached and the remaining batches fall back to row reads from
   the base array (counted in the expected read amplification).
3. **Budget check.** The minimum working set (:func:`working_set`: tiers, largest
   segment, the two batches a loader holds at prefetch depth 0, tables) is compared
   with ``cpu_budget`` *before* anything is written.
4. **Assignment.** Every input position of every batch gets (tier, slot). The packed
   batches (a prefix of the plan) are assigned first; the rest, on a thread, while the
   copy runs (it needs only the packed rows).
5. **Batched copy.** The base feature array is scanned once, sequentially, in large
   aligned ``O_DIRECT`` reads; rows are scattered into an output window held in memory
   (``window_bytes``), and rows of later windows go to per-window buckets in a temporary
   file, each assembled into a window after the scan (:func:`copy_rows`). Windows are
   appended to the pack files by a writer thread while the next one is assembled.
6. **Commit.** One catalog transaction makes the pack visible (crash-safe).

Memory: O(num_nodes) for placement maps, 20 bytes per packed row (row map, concatenated
ids, window order), plus ``window_bytes`` and four 32 MiB copy buffers.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import weakref
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numba
import numpy as np

from ..errors import StoreExistsError, StoreNotFoundError, UsageError
from ..plan import PlanReader, list_plans
from ..store import ALIGN, Store
from ..store.files import DirectReader, aligned_empty, raise_disk_error
from ..store.format import check_name
from ..tiers.ssd import base_read_buffer_bytes
# The working-set arithmetic lives in oocstore/workingset.py; these names stay importable
# from here.
from ..workingset import (MIN_BATCHES_IN_FLIGHT, check_budget, device_overhead,  # noqa: F401
                          loader_floor, working_set)
from .format import (CPU, GPU, SSD, PackMeta, pack_array_names, pack_key, plan_record_bytes,
                     reader_table_bytes)
from .placement import belady_schedule, hot_order, static_placement

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]

#: Longest segment tried when fitting the blowup cap (longer segments de-duplicate more
#: but need a larger read buffer).
MAX_SEGMENT_BATCHES = 16

#: Output rows assembled in memory per scan of the base array.
DEFAULT_WINDOW_BYTES = 256 << 20

#: Base-array read size during packing (large sequential O_DIRECT requests).
_SCAN_BYTES = 32 << 20

#: How the batched copy gets rows of the base array into output windows (copy_rows).
COPY_STRATEGIES = ("auto", "buckets", "rescans")

#: Relative cost of writing a byte vs reading one sequentially, used by the "auto" copy
#: strategy to weigh bucket traffic (written, then read back) against extra base scans
#: (read only). SSDs write more slowly than they read (measured here: ~360 MB/s writes,
#: ~650 MB/s O_DIRECT reads).
WRITE_COST = 1.8

#: Batches assigned per call of the numba kernel (bounds the tier/slot buffers).
_ASSIGN_BATCHES = 256


@dataclass(frozen=True)
class PackOptions:
    gpu_cache: int = 0  # bytes of the GPU tier
    cpu_cache: int = 0  # bytes of the CPU tier
    max_disk_blowup: float = 4.0
    cpu_budget: int | None = None
    gpu_budget: int | None = None
    segment_batches: int | None = None  # None: the smallest that fits the blowup cap
    window_bytes: int = DEFAULT_WINDOW_BYTES
    policy: str = "static"  # CPU tier: "static" (hottest rows) or "belady" (scheduled)
    copy: str = "auto"  # batched copy: "auto", "buckets" or "rescans" (see copy_rows)

    def __post_init__(self) -> None:
        if self.gpu_cache < 0 or self.cpu_cache < 0:
            raise UsageError("cache sizes must be 0 or more bytes")
        if not (self.max_disk_blowup >= 0) or math.isinf(self.max_disk_blowup):
            raise UsageError(f"--max-disk-blowup {self.max_disk_blowup}: give a finite number "
                             ">= 0 (e.g. 4: packed bytes at most 4x the feature bytes)")
        if self.segment_batches is not None and self.segment_batches < 1:
            raise UsageError(f"segment length {self.segment_batches}: give 1 or more batches")
        if self.policy not in ("static", "belady"):
            raise UsageError(f"--policy {self.policy!r}: use static or belady")
        if self.copy not in COPY_STRATEGIES:
            raise UsageError(f"copy strategy {self.copy!r}: use one of {', '.join(COPY_STRATEGIES)}")
        if self.window_bytes < 1:
            raise UsageError(f"--pack-memory {self.window_bytes}: give a positive size (e.g. 1GiB)")


def label_dtype(store: Store) -> np.dtype:
    """The compact dtype the loader keeps labels in (int16 for < 32768 classes)."""
    if not store.has_array("labels"):
        return np.dtype(np.int64)
    labels = store.array("labels")
    return np.dtype(np.int16 if labels.size == 0 or int(labels.max()) < 2**15 else np.int64)


def labels_bytes(store: Store) -> int:
    if not store.has_array("labels"):
        return 0
    return store.array_meta("labels").shape[0] * label_dtype(store).itemsize


def latest_plan(store: Store) -> str:
    plans = list_plans(store)
    if not plans:
        raise StoreNotFoundError(f"store {store.path} has no plan: create one with "
                                 f"`oocstore sample {store.path} --fanouts 10,5 --batch-size 1024`")
    return max(plans, key=lambda n: (store.array_meta(plans[n].arrays["index"]).version, n))


def plan_version(store: Store, plan: PlanReader) -> int:
    return store.array_meta(plan.meta.arrays["index"]).version


# -- numba kernels ---------------------------------------------------------------------

@numba.njit(cache=True, nogil=True, inline="always")
def _is_cold(node_tier, v, hit, p):
    """Whether position ``p`` (node ``v``) needs disk: not in the GPU tier and, with a
    static CPU tier, not in it; with a scheduled (Belady) CPU tier, a miss there."""
    if hit.shape[0] == 0:
        return node_tier[v] == 2
    return node_tier[v] != 0 and hit[p] < 0


@numba.njit(cache=True, nogil=True)
def _segment_rows(data, offs, ninput, pstart, node_tier, hit, epoch_of, epoch_starts, lengths,
                  cap_rows, last, rows):
    """Distinct cold rows of the segments of every candidate length at once, in one pass
    over the plan that stops as soon as no candidate can pack more.

    ``lengths[k]`` is a segment length ``S``; segments are ``S`` consecutive batches of
    one epoch (:func:`_segments`). Fills ``rows[k, s]`` for the segments that fit
    ``cap_rows`` rows in plan order and returns ``fit[k]``, how many do. A candidate stops
    counting once its running total passes the cap: the segments after that are never
    packed, so counting them (a full pass per candidate) was wasted work. ``last[v]`` is
    the last batch in which node ``v`` was cold (all -1 on entry): ``v`` is a new row of
    its segment exactly when that batch lies before the segment's first batch.
    """
    nk = lengths.shape[0]
    fit = np.zeros(nk, dtype=np.int64)
    total = np.zeros(nk, dtype=np.int64)
    count = np.zeros(nk, dtype=np.int64)
    cur = np.full(nk, -1, dtype=np.int64)  # segment being counted
    first = np.zeros(nk, dtype=np.int64)  # its first batch
    done = np.zeros(nk, dtype=np.bool_)
    live = nk
    for b in range(offs.shape[0]):
        if live == 0:
            break
        e0 = epoch_starts[epoch_of[b]]
        for k in range(nk):
            if done[k]:
                continue
            f = e0 + (b - e0) // lengths[k] * lengths[k]
            if f != first[k] or cur[k] < 0:  # a new segment starts at batch f == b
                if cur[k] >= 0:
                    rows[k, cur[k]] = count[k]
                    fit[k] = cur[k] + 1
                cur[k] += 1
                first[k] = f
                count[k] = 0
        o = offs[b]
        for i in range(ninput[b]):
            v = data[o + i]
            if not _is_cold(node_tier, v, hit, pstart[b] + i):
                continue
            lv = last[v]
            last[v] = b
            for k in range(nk):
                if lv < first[k] and not done[k]:
                    count[k] += 1
                    total[k] += 1
                    if total[k] > cap_rows:  # this segment does not fit: stop here
                        done[k] = True
                        live -= 1
    for k in range(nk):
        if not done[k] and cur[k] >= 0:
            rows[k, cur[k]] = count[k]
            fit[k] = cur[k] + 1
    return fit


@numba.njit(cache=True, nogil=True)
def _assign(data, offs, ninput, pstart, b0, b1, batch_seg, seg_first_row, node_tier, node_slot,
            hit, mark, rowmap, out_tier, out_slot, node_of_row, base_offset, row_bytes, fallback):
    """Tier and slot of every input position of batches [b0, b1); adds to ``fallback``
    the positions read from the base array ([0]) and the bytes those reads transfer
    ([1], 4 KiB-widened per row). ``ALIGN`` is a compile-time constant here, so the
    widening divides by shifts (on the default bench most of the 76 M positions are
    fallback reads, and two integer divisions each showed in the profile)."""
    p = 0
    fallback_positions = 0
    fallback_bytes = 0
    for b in range(b0, b1):
        s = batch_seg[b]
        o = offs[b]
        for i in range(ninput[b]):
            v = data[o + i]
            t = node_tier[v]
            if _is_cold(node_tier, v, hit, pstart[b] + i):
                if s < 0:
                    out_tier[p] = 3
                    out_slot[p] = -1
                    off = base_offset + v * row_bytes
                    fallback_bytes += ((off + row_bytes + ALIGN - 1) // ALIGN - off // ALIGN) * ALIGN
                    fallback_positions += 1
                else:
                    tag = s + 1
                    if mark[v] != tag:
                        mark[v] = tag
                        r = rowmap[s]
                        rowmap[s] = r + 1
                        node_of_row[seg_first_row[s] + r] = v
                        node_slot[v] = r
                    out_tier[p] = 2
                    out_slot[p] = node_slot[v]
            elif t == 0 or hit.shape[0] == 0:
                out_tier[p] = t
                out_slot[p] = node_slot[v]
            else:
                out_tier[p] = 1
                out_slot[p] = hit[pstart[b] + i]
            p += 1
    fallback[0] += fallback_positions
    fallback[1] += fallback_bytes


# -- segments --------------------------------------------------------------------------

def _segments(epoch_starts: np.ndarray, S: int) -> tuple[np.ndarray, np.ndarray]:
    firsts, lasts = [], []
    for e in range(len(epoch_starts) - 1):
        lo, hi = int(epoch_starts[e]), int(epoch_starts[e + 1])
        f = np.arange(lo, hi, S, dtype=np.int64)
        firsts.append(f)
        lasts.append(np.minimum(f + S, hi))
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts), np.concatenate(lasts)


@numba.njit(cache=True, nogil=True)
def _cold_per_batch(data, offs, ninput, pstart, node_tier, hit):
    """Input positions of each batch that no memory tier holds."""
    out = np.zeros(offs.shape[0], dtype=np.int64)
    for b in range(offs.shape[0]):
        o = offs[b]
        c = 0
        for i in range(ninput[b]):
            if _is_cold(node_tier, data[o + i], hit, pstart[b] + i):
                c += 1
        out[b] = c
    return out


@dataclass
class Layout:
    """Where every row of a plan will live — computed without writing anything, so the
    budget check and the cost model can look before the packer leaps."""

    plan: PlanReader
    fmeta: object
    gpu_ids: np.ndarray
    cpu_ids: np.ndarray
    node_tier: np.ndarray  # int8 [N]: GPU, CPU or SSD
    node_slot: np.ndarray  # int32 [N]: slot in the node's memory tier
    segment_batches: int
    seg_first: np.ndarray  # [packed segments] first plan batch row
    seg_last: np.ndarray
    seg_rows: np.ndarray  # distinct cold rows per packed segment
    batch_seg: np.ndarray  # [total batches] segment or -1
    cap_rows: int
    offs: np.ndarray
    ninput: np.ndarray
    pstart: np.ndarray  # [total batches + 1] first position of each batch
    min_working_set: dict
    policy: str = "static"
    hit: np.ndarray = None  # belady: per position the CPU slot or -1; static: empty
    ins_pos: np.ndarray = None  # belady admissions: position, slot, count per batch
    ins_slot: np.ndarray = None
    ins_count: np.ndarray = None

    @property
    def packed_segments(self) -> int:
        return int(self.seg_rows.size)

    @property
    def packed_rows(self) -> int:
        return int(self.seg_rows.sum())

    @property
    def row_bytes(self) -> int:
        return self.fmeta.row_bytes

    def cold_per_batch(self) -> np.ndarray:
        return _cold_per_batch(self.plan._data, self.offs, self.ninput, self.pstart,
                               self.node_tier, self.hit)


#: Hottest-first node order per open plan reader (see :func:`plan_layout`).
_HOT_ORDER: "weakref.WeakKeyDictionary[PlanReader, np.ndarray]" = weakref.WeakKeyDictionary()


def plan_layout(store: Store, plan: PlanReader, options: PackOptions) -> Layout:
    """Placement, segment length and minimum working set of packing ``plan``."""
    fmeta = store.array_meta("features")
    # The bulk passes below index arrays with the plan's memory-mapped records: check
    # them against their checksums first (once per reader; the index was checked when
    # the plan was opened).
    plan.verify()
    n = fmeta.shape[0]
    rb = fmeta.row_bytes
    base_bytes = fmeta.nbytes
    counts = np.asarray(plan.access_counts())
    # The cost model lays out a plan for many candidate splits: sort its nodes once.
    order = _HOT_ORDER.get(plan)
    if order is None:
        order = _HOT_ORDER[plan] = hot_order(counts)
    gpu_ids, cpu_ids = static_placement(counts, options.gpu_cache // rb, options.cpu_cache // rb,
                                        order=order)

    node_tier = np.full(n, SSD, dtype=np.int8)
    node_slot = np.zeros(n, dtype=np.int32)
    node_tier[gpu_ids] = GPU
    node_slot[gpu_ids] = np.arange(gpu_ids.size, dtype=np.int32)

    index = np.asarray(plan.index())
    offs = np.ascontiguousarray(index[:, 0])
    ninput = np.ascontiguousarray(index[:, 3])
    pstart = np.concatenate([[0], np.cumsum(ninput)]).astype(np.int64)
    data = plan._data  # memory map of the plan records
    total_batches = index.shape[0]
    epoch_starts = np.concatenate([[0], np.cumsum(plan.meta.batches_per_epoch)]).astype(np.int64)
    hit = np.zeros(0, dtype=np.int32)
    schedule = (None, None, None)
    if options.policy == "belady":
        # The CPU tier starts each epoch holding the static choice, then follows the
        # schedule; GPU-tier rows stay static.
        hit, *schedule = belady_schedule(data, offs, ninput, epoch_starts, node_tier,
                                         cpu_ids.size, cpu_ids)
    else:
        node_tier[cpu_ids] = CPU
        node_slot[cpu_ids] = np.arange(cpu_ids.size, dtype=np.int32)
    cap_rows = int(options.max_disk_blowup * base_bytes // rb) if rb else 0

    # Segment length: the smallest S whose segments all fit the cap; if none does, the S
    # whose prefix of segments within the cap covers the most batches. All candidates are
    # counted in one pass that ends where the last of them reaches the cap.
    candidates = [options.segment_batches] if options.segment_batches else \
        [s for s in (1, 2, 4, 8, 16) if s <= MAX_SEGMENT_BATCHES]
    epoch_of = np.repeat(np.arange(len(epoch_starts) - 1, dtype=np.int64),
                         np.diff(epoch_starts)) if total_batches else np.zeros(0, np.int64)
    lengths = np.asarray(candidates, dtype=np.int64)
    rows_by_len = np.zeros((lengths.size, max(total_batches, 1)), dtype=np.int64)
    last = np.full(n, -1, dtype=np.int32)  # batch indices; half the cache misses of int64
    fits = _segment_rows(data, offs, ninput, pstart, node_tier, hit, epoch_of, epoch_starts,
                         lengths, cap_rows, last, rows_by_len)
    del last
    largest_batch = int(ninput.max()) if total_batches else 0
    lbytes = labels_bytes(store)
    records = plan_record_bytes(int(index[:, 1].max()) if total_batches else 0,
                                data.dtype.itemsize, plan.meta.batch_size)

    def minimum(largest_seg: int, packed_segs: int, unpacked: bool) -> dict:
        # What the reader holds per batch and per segment for the whole run.
        tables = reader_table_bytes(
            total_batches=total_batches, index_columns=index.shape[1],
            epochs=plan.meta.epochs, num_segments=packed_segs, positions=int(pstart[-1]),
            inserts=int(schedule[0].size) if schedule[0] is not None else 0,
            belady=options.policy == "belady", plan_data_bytes=int(data.nbytes))
        return working_set(largest_batch_rows=largest_batch, row_bytes=rb,
                           largest_segment_bytes=largest_seg, cpu_tier_bytes=cpu_ids.size * rb,
                           gpu_tier_bytes=gpu_ids.size * rb,
                           base_read_bytes=base_read_buffer_bytes(rb) if unpacked else 0,
                           labels_bytes=lbytes, tables_bytes=tables, plan_record_bytes=records,
                           batch_size=plan.meta.batch_size, gpu_rows=int(gpu_ids.size))

    # With a cpu budget and no segment length given, a length whose largest segment
    # would not fit beside the rest of the minimum is passed over (longer segments hold
    # more rows): the segment buffer is sized to the budget. If none fits, the choice is
    # made as without a budget, and check_budget refuses it with the numbers.
    best = best_any = None
    for k, S in enumerate(candidates):
        seg_first, seg_last = _segments(epoch_starts, S)
        fit = int(fits[k])
        seg_rows = rows_by_len[k, :fit].copy()
        covered = int((seg_last[:fit] - seg_first[:fit]).sum())
        cand = (covered, S, seg_first, seg_last, seg_rows, fit)
        if best_any is None or covered > best_any[0]:
            best_any = cand
        if options.cpu_budget is not None and not options.segment_batches:
            largest = int(seg_rows.max()) * rb + 2 * ALIGN if fit else 0
            if minimum(largest, fit, fit < seg_first.size)["cpu"] > options.cpu_budget:
                continue
        if best is None or covered > best[0]:
            best = cand
        if fit == seg_first.size:
            break
    _, S, seg_first, seg_last, seg_rows, packed_segs = best or best_any
    unpacked = packed_segs < seg_first.size
    seg_first, seg_last = seg_first[:packed_segs], seg_last[:packed_segs]
    batch_seg = np.full(total_batches, -1, dtype=np.int64)
    for s in range(packed_segs):
        batch_seg[seg_first[s]:seg_last[s]] = s

    largest_seg = int(seg_rows.max()) * rb + 2 * ALIGN if packed_segs else 0
    mws = minimum(largest_seg, packed_segs, unpacked)
    return Layout(plan=plan, fmeta=fmeta, gpu_ids=gpu_ids, cpu_ids=cpu_ids, node_tier=node_tier,
                  node_slot=node_slot, segment_batches=int(S), seg_first=seg_first,
                  seg_last=seg_last, seg_rows=seg_rows, batch_seg=batch_seg, cap_rows=cap_rows,
                  offs=offs, ninput=ninput, pstart=pstart, min_working_set=mws,
                  policy=options.policy, hit=hit, ins_pos=schedule[0], ins_slot=schedule[1],
                  ins_count=schedule[2])


def pack_plan(store: Store, plan_name: str | None = None, *, name: str | None = None,
              options: PackOptions = PackOptions(), overwrite: bool = False,
              progress: ProgressFn | None = None) -> PackMeta:
    """Pack ``plan_name`` (default: the most recent plan) of a writable ``store``."""
    plan_name = plan_name or latest_plan(store)
    plan = PlanReader(store, plan_name)
    name = check_name(name or plan_name, "pack")
    if store.get(pack_key(name)) is not None and not overwrite:
        raise StoreExistsError(f"store {store.path} already has a pack {name!r}: pass --overwrite "
                               "to replace it")
    layout = plan_layout(store, plan, options)
    check_budget(layout, options, name)
    fmeta = layout.fmeta
    d = fmeta.shape[1] if len(fmeta.shape) > 1 else 1
    rb = fmeta.row_bytes
    base_bytes = fmeta.nbytes
    gpu_ids, cpu_ids = layout.gpu_ids, layout.cpu_ids
    offs, ninput = layout.offs, layout.ninput
    total_batches = offs.shape[0]
    S, seg_first, seg_rows = layout.segment_batches, layout.seg_first, layout.seg_rows
    packed_segs, batch_seg, packed_rows = layout.packed_segments, layout.batch_seg, layout.packed_rows
    seg_first_row = np.concatenate([[0], np.cumsum(seg_rows)[:-1]]).astype(np.int64) \
        if packed_segs else np.zeros(0, np.int64)
    mws, cap_rows = layout.min_working_set, layout.cap_rows
    largest_batch = int(ninput.max()) if total_batches else 0
    mark = np.zeros(fmeta.shape[0], dtype=np.int64)

    names = pack_array_names(name)
    with store.transaction() as txn:
        # Assignment, streamed per group of batches. The copy needs only the packed
        # batches' rows (a prefix of the plan: node_of_row); the groups after it (the
        # batches left to base-array reads) are assigned on a thread while the copy runs.
        w_tier = txn.array_writer(names["tier"], np.uint8, (), subdir="packs")
        w_slot = txn.array_writer(names["slot"], np.int32, (), subdir="packs")
        node_of_row = np.empty(packed_rows, dtype=np.int64)
        rowmap = np.zeros(max(packed_segs, 1), dtype=np.int64)
        packed_end = int(layout.seg_last[-1]) if packed_segs else 0
        split = min(total_batches, -(-packed_end // _ASSIGN_BATCHES) * _ASSIGN_BATCHES)
        assign = _Assignment(layout, batch_seg, seg_first_row, mark, rowmap, node_of_row,
                             w_tier, w_slot)
        assign.run(0, split)
        tail = None
        assign_pool = ThreadPoolExecutor(1, thread_name_prefix="oocstore-pack-assign")
        try:
            if split < total_batches:
                tail = assign_pool.submit(assign.run, split, total_batches)
            else:
                assign.finish()
            # Batched copy: one sequential scan of the base array per output window.
            seg_crc = SegmentChecksums(
                txn.array_writer(names["rows"], fmeta.np_dtype, (d,), subdir="packs"), seg_rows, rb)
            targets = [(txn.array_writer(names["gpu_rows"], fmeta.np_dtype, (d,), subdir="packs"),
                        gpu_ids),
                       (txn.array_writer(names["cpu_rows"], fmeta.np_dtype, (d,), subdir="packs"),
                        cpu_ids),
                       (seg_crc, node_of_row)]
            scans = copy_rows(store, fmeta, targets, window_bytes=options.window_bytes,
                              strategy=options.copy, progress=progress)
            for w, _ in targets:
                w.close()
            if tail is not None:
                tail.result()  # re-raises the thread's error (e.g. disk full) here
                assign.finish()
        finally:
            assign_pool.shutdown(wait=True)  # never leave the thread writing past the txn
        fallback_positions, fb_read = assign.fallback_positions, assign.fallback_bytes
        segments = np.stack([seg_first_row, seg_rows, seg_first], axis=1).astype(np.int64) \
            if packed_segs else np.zeros((0, 3), np.int64)
        txn.write_array(names["segments"], segments, subdir="packs")
        txn.write_array(names["batch_segment"], batch_seg, subdir="packs")
        if layout.policy == "belady":
            txn.write_array(names["inserts"], np.stack([layout.ins_pos, layout.ins_slot.astype(
                np.int64)], axis=1) if layout.ins_pos.size else np.zeros((0, 2), np.int64),
                subdir="packs")
            txn.write_array(names["insert_offsets"], np.concatenate(
                [[0], np.cumsum(layout.ins_count)]).astype(np.int64), subdir="packs")
        txn.write_array(names["gpu_ids"], gpu_ids, subdir="packs")
        txn.write_array(names["cpu_ids"], cpu_ids, subdir="packs")

        txn.write_array(names["segment_crc"], seg_crc.crcs, subdir="packs")

        seg_read = int(sum(_aligned_span(int(r0) * rb, int(r) * rb)
                           for r0, r in zip(seg_first_row, seg_rows)))
        useful = (packed_rows + fallback_positions) * rb
        amp = (seg_read + fb_read) / useful if useful else 1.0
        blowup = packed_rows * rb / base_bytes if base_bytes else 0.0
        meta = PackMeta(
            name=name, plan=plan_name, plan_version=plan_version(store, plan), features="features",
            dtype=fmeta.dtype, feat_dim=d, row_bytes=rb, gpu_rows=int(gpu_ids.size),
            cpu_rows=int(cpu_ids.size), policy=layout.policy,
            segment_batches=int(S), num_segments=packed_segs, packed_rows=packed_rows,
            packed_batches=int(np.count_nonzero(batch_seg >= 0)), total_batches=total_batches,
            max_disk_blowup=float(options.max_disk_blowup), blowup=round(blowup, 6),
            expected_read_amplification=round(amp, 6), min_working_set=mws,
            largest_batch_rows=largest_batch,
            arrays={k: v for k, v in names.items()
                    if layout.policy == "belady" or not k.startswith("insert")},
            packed_epochs=_packed_epochs(batch_seg, plan.meta.batches_per_epoch),
            stats={"fallback_positions": fallback_positions, "base_scans": scans,
                   "cpu_inserts": int(layout.ins_pos.size) if layout.ins_pos is not None else 0,
                   "cap_rows": cap_rows, "segment_bytes_read": seg_read,
                   "positions": int(ninput.sum())})
        txn.put(pack_key(name), meta.to_dict())
    log.info("packed plan %r: %d segments of %d batch(es), blowup %.2f, expected read "
             "amplification %.3f", plan_name, packed_segs, S, blowup, amp)
    return meta


class _Assignment:
    """Tier and slot of every input position, computed per group of ``_ASSIGN_BATCHES``
    batches (:func:`_assign`) and appended to the ``tier`` / ``slot`` writers. Groups must
    be run in plan order (``run`` calls may follow one another from different threads,
    never overlap); ``finish`` closes the writers."""

    def __init__(self, layout: Layout, batch_seg, seg_first_row, mark, rowmap, node_of_row,
                 w_tier, w_slot):
        self.layout, self.batch_seg, self.seg_first_row = layout, batch_seg, seg_first_row
        self.mark, self.rowmap, self.node_of_row = mark, rowmap, node_of_row
        self.w_tier, self.w_slot = w_tier, w_slot
        n = layout.offs.shape[0]
        self.group_pos = np.add.reduceat(layout.ninput, np.arange(0, n, _ASSIGN_BATCHES)) \
            if n else np.zeros(1, np.int64)
        # One pair of buffers for every group (the writers copy what they are given): a
        # fresh one per group costs a page fault per 4 KiB.
        self.out_tier = np.empty(int(self.group_pos.max()), dtype=np.uint8)
        self.out_slot = np.empty(int(self.group_pos.max()), dtype=np.int32)
        self.fallback = np.zeros(2, dtype=np.int64)  # positions, bytes of base-array reads

    @property
    def fallback_positions(self) -> int:
        return int(self.fallback[0])

    @property
    def fallback_bytes(self) -> int:
        return int(self.fallback[1])

    def run(self, b0: int, b1: int) -> None:
        lay = self.layout
        for g0 in range(b0, b1, _ASSIGN_BATCHES):
            g1 = min(b1, g0 + _ASSIGN_BATCHES)
            size = int(self.group_pos[g0 // _ASSIGN_BATCHES])
            out_tier, out_slot = self.out_tier[:size], self.out_slot[:size]
            _assign(lay.plan._data, lay.offs, lay.ninput, lay.pstart, g0, g1, self.batch_seg,
                    self.seg_first_row, lay.node_tier, lay.node_slot, lay.hit, self.mark,
                    self.rowmap, out_tier, out_slot, self.node_of_row, lay.fmeta.offset,
                    lay.row_bytes, self.fallback)
            self.w_tier.append(out_tier)
            self.w_slot.append(out_slot)

    def finish(self) -> None:
        self.w_tier.close()
        self.w_slot.close()


class SegmentChecksums:
    """Wraps the writer of the packed rows: the CRC-32 of each segment's bytes, computed
    as the rows are appended (``pack/<name>/segment_crc``, see :mod:`.format`)."""

    def __init__(self, writer, seg_rows: np.ndarray, row_bytes: int):
        self.writer, self.row_bytes = writer, row_bytes
        self.ends = np.cumsum(np.asarray(seg_rows, dtype=np.int64))
        self.crcs = np.zeros(self.ends.size, dtype=np.uint32)
        self._row, self._seg, self._crc = 0, 0, 0

    def _close_done(self) -> None:
        while self._seg < self.ends.size and self.ends[self._seg] <= self._row:
            self.crcs[self._seg] = self._crc
            self._seg, self._crc = self._seg + 1, 0

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows)
        mv = memoryview(rows).cast("B")
        n, pos, rb = rows.shape[0], 0, self.row_bytes
        while pos < n:
            self._close_done()
            if self._seg >= self.ends.size:
                raise AssertionError("more packed rows than the segments hold")
            take = min(n - pos, int(self.ends[self._seg]) - self._row)
            self._crc = zlib.crc32(mv[pos * rb:(pos + take) * rb], self._crc)
            pos += take
            self._row += take
        self.writer.append(rows)

    def close(self) -> None:
        self._close_done()
        if self._seg != self.ends.size:
            raise AssertionError(f"packed rows end at {self._row}, segments at "
                                 f"{int(self.ends[-1])}")
        self.writer.close()


def _packed_epochs(batch_seg: np.ndarray, batches_per_epoch) -> int:
    """Number of leading epochs whose batches all have a segment."""
    k, start = 0, 0
    for nb in batches_per_epoch:
        if nb and np.all(batch_seg[start:start + nb] >= 0):
            k += 1
            start += nb
        else:
            break
    return k


def _aligned_span(offset: int, nbytes: int) -> int:
    """Bytes an O_DIRECT read of [offset, offset + nbytes) transfers (4 KiB-widened)."""
    if nbytes == 0:
        return 0
    lo = offset // ALIGN * ALIGN
    hi = -(-(offset + nbytes) // ALIGN) * ALIGN
    return hi - lo


@numba.njit(cache=True, nogil=True)
def _window_order(ids, window_rows, scan_rows, order, offsets):
    """Group each output window's positions by base chunk (a stable counting sort).

    For window ``w`` (positions ``[w0, w1)``, ``w0 = w * window_rows``): ``order[w0 + i]``
    is the window-local position of its ``i``-th row in chunk order, and its rows of base
    chunk ``c`` (base rows ``[c * scan_rows, (c + 1) * scan_rows)``) are ``i`` in
    ``[offsets[w, c], offsets[w, c + 1])``. The one scan of the base array visits the
    chunks in order and, per window, finds its rows there without searching; a window's
    bucket holds its rows in this same order."""
    total = ids.shape[0]
    nchunks = offsets.shape[1] - 1
    pos = np.empty(nchunks, dtype=np.int64)
    for w in range(offsets.shape[0]):
        w0 = w * window_rows
        w1 = min(total, w0 + window_rows)
        for c in range(nchunks + 1):
            offsets[w, c] = 0
        for p in range(w0, w1):
            offsets[w, ids[p] // scan_rows + 1] += 1
        for c in range(nchunks):
            offsets[w, c + 1] += offsets[w, c]
            pos[c] = offsets[w, c]
        for p in range(w0, w1):
            c = ids[p] // scan_rows
            order[w0 + pos[c]] = p - w0
            pos[c] += 1


@numba.njit(cache=True, nogil=True, parallel=True)
def _scatter_rows(src, lo, ids, order, a, b, out):
    """``out[order[i]] = src[ids[order[i]] - lo]`` for ``i`` in ``[a, b)`` (one window's
    ``ids`` / ``order``; rows as words of any unsigned type, see :func:`_word_view`).
    One pass on numba threads, where numpy's ``out[o] = src[n]`` goes through a temporary
    on one core; the explicit word loop is ~2x numba's row-slice assignment on uint8
    rows (bench/pack_speed.py)."""
    w = src.shape[1]
    for i in numba.prange(a, b):
        dst = order[i]
        row = ids[dst] - lo
        for j in range(w):
            out[dst, j] = src[row, j]


@numba.njit(cache=True, nogil=True, parallel=True)
def _gather_rows(src, lo, ids, order, a, b, out):
    """``out[i - a] = src[ids[order[i]] - lo]`` for ``i`` in ``[a, b)``: the rows of one
    window found in one base chunk, packed contiguously for its bucket."""
    w = src.shape[1]
    for i in numba.prange(a, b):
        row = ids[order[i]] - lo
        for j in range(w):
            out[i - a, j] = src[row, j]


@numba.njit(cache=True, nogil=True, parallel=True)
def _place_rows(src, order, a, b, out):
    """``out[order[i]] = src[i - a]`` for ``i`` in ``[a, b)``: bucket rows (chunk order)
    back to their window positions."""
    w = src.shape[1]
    for i in numba.prange(a, b):
        dst = order[i]
        for j in range(w):
            out[dst, j] = src[i - a, j]


def _word_view(rows: np.ndarray, row_bytes: int) -> np.ndarray:
    """``rows`` (C-contiguous, ``row_bytes`` per row, word-aligned) as ``[n, words]`` of the
    widest unsigned integer dividing ``row_bytes``."""
    word = next(w for w in (8, 4, 2, 1) if row_bytes % w == 0)
    return rows.view(np.uint8).reshape(-1, row_bytes).view(f"u{word}")


class _InOrder:
    """Jobs run one after another on one named thread, at most ``depth`` unfinished: a
    caller that alternates ``depth`` buffers waits here before refilling one that a job
    may still be reading. A job's exception is re-raised (with its traceback) by the
    :meth:`wait` that collects it."""

    def __init__(self, pool: ThreadPoolExecutor, depth: int):
        self.pool, self.depth, self.pending = pool, depth, deque()

    def submit(self, fn, *args) -> None:
        self.wait(self.depth - 1)
        self.pending.append(self.pool.submit(fn, *args))

    def wait(self, keep: int = 0) -> None:
        while len(self.pending) > keep:
            self.pending.popleft().result()


def _pwrite_all(fd: int, data: np.ndarray, offset: int, path: Path) -> None:
    mv = memoryview(data).cast("B")
    try:
        while len(mv):
            n = os.pwrite(fd, mv, offset)
            mv, offset = mv[n:], offset + n
    except OSError as err:
        raise_disk_error(err, path)


def _pread_all(fd: int, buf: np.ndarray, offset: int, path: Path) -> None:
    mv = memoryview(buf).cast("B")
    while len(mv):
        n = os.preadv(fd, [mv], offset)
        if n == 0:
            raise OSError(f"short read of copy bucket {path} at byte {offset}: it was "
                          "truncated while packing; run the pack again")
        mv, offset = mv[n:], offset + n


def _read_rows(reader: DirectReader, fmeta, path: Path, lo: int, hi: int,
               raw: np.ndarray) -> int:
    """Read base rows [lo, hi) into ``raw`` (one aligned O_DIRECT request); returns where
    row ``lo`` starts in it."""
    rb = fmeta.row_bytes
    start = fmeta.offset + lo * rb
    astart = start // ALIGN * ALIGN
    aend = -(-(fmeta.offset + hi * rb) // ALIGN) * ALIGN
    got = reader.read_into(raw[:aend - astart], astart)
    if got < start - astart + (hi - lo) * rb:
        raise OSError(f"short read of {path} at byte {start}: the feature file "
                      "is truncated; run `oocstore verify`")
    return start - astart


def _append_window(targets, bounds: np.ndarray, w0: int, w1: int, out: np.ndarray) -> None:
    """Hand the output rows [w0, w1) (in ``out``) to the writers whose ranges overlap."""
    for t, (writer, _) in enumerate(targets):
        s0, s1 = max(w0, int(bounds[t])), min(w1, int(bounds[t + 1]))
        if s1 > s0:
            writer.append(out[s0 - w0:s1 - w0])


def _copy_rescans(store: Store, fmeta, targets, bounds: np.ndarray, all_ids: np.ndarray,
                  order: np.ndarray, offsets: np.ndarray, window_rows: int, scan_rows: int,
                  progress: ProgressFn | None) -> int:
    """The ``"rescans"`` copy (see :func:`copy_rows`): per window, scan the base chunks
    holding its rows, scatter them in, write the window. One read-ahead stream runs over
    every (window, chunk) pair, so the next window's first read is in flight while a
    window is written. Returns the number of scans (windows)."""
    rb = fmeta.row_bytes
    d = fmeta.shape[1] if len(fmeta.shape) > 1 else 1
    total, nwin, num_rows = all_ids.size, offsets.shape[0], fmeta.shape[0]
    path = store.file_path(fmeta)
    buf_bytes = _aligned_span(ALIGN - 1, scan_rows * rb)
    raws = [aligned_empty(buf_bytes), aligned_empty(buf_bytes)]
    window = np.empty((min(total, window_rows), d), dtype=fmeta.np_dtype)
    steps = [(w, int(c)) for w in range(nwin)
             for c in np.flatnonzero(offsets[w, 1:] > offsets[w, :-1])]

    def span(c: int) -> tuple[int, int]:
        return c * scan_rows, min(num_rows, (c + 1) * scan_rows)

    with DirectReader(path) as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="oocstore-pack-read") as rpool:
        pending = rpool.submit(_read_rows, reader, fmeta, path, *span(steps[0][1]), raws[0])
        for k, (w, c) in enumerate(steps):
            w0, w1 = w * window_rows, min(total, (w + 1) * window_rows)
            lo, hi = span(c)
            skip = pending.result()  # re-raises a failed read here, with its traceback
            if k + 1 < len(steps):
                pending = rpool.submit(_read_rows, reader, fmeta, path, *span(steps[k + 1][1]),
                                       raws[(k + 1) % 2])
            src = _word_view(raws[k % 2][skip:skip + (hi - lo) * rb], rb)
            _scatter_rows(src, lo, all_ids[w0:w1], order[w0:w1], offsets[w, c],
                          offsets[w, c + 1], _word_view(window[:w1 - w0], rb))
            if k + 1 == len(steps) or steps[k + 1][0] != w:
                _append_window(targets, bounds, w0, w1, window[:w1 - w0])
                if progress:
                    progress((w1 - w0) * rb)
    return nwin


def writeback_free_bytes() -> int:
    """Dirty page-cache bytes a temporary file can hold without the kernel starting to
    write them back: half the background writeback threshold (``vm.dirty_background_bytes``,
    or ``vm.dirty_background_ratio`` % of available memory), the other half left to the
    pack's own output. Bucket data consumed and truncated below it never reaches the disk.
    ``0`` where /proc does not say (every bucket byte counted as written)."""
    try:
        vm = Path("/proc/sys/vm")
        fixed = int((vm / "dirty_background_bytes").read_text())
        if fixed > 0:
            return fixed // 2
        ratio = int((vm / "dirty_background_ratio").read_text())
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f
                         if line.startswith("MemAvailable:"))
        return avail * ratio // 100 // 2
    except (OSError, ValueError, StopIteration):
        return 0


def bucket_passes(offsets: np.ndarray, scan_rows: int, row_bytes: int, num_rows: int,
                  pass_bytes: int) -> tuple[list[tuple[int, int]], int]:
    """Windows ``[wa, wb)`` of each scan of the ``"buckets"`` copy, and its cost in
    weighted bytes moved besides the output. A pass scans the base chunks its windows
    touch, fills window ``wa`` directly and buckets the rest.

    One pass writes every bucket byte; when those exceed what the page cache holds
    without writeback (``pass_bytes``, :func:`writeback_free_bytes`), the excess goes to
    disk and is read back. Passes whose buckets stay within ``pass_bytes`` avoid that at
    the price of one more base scan each: they are used when the extra scans read fewer
    bytes than the writeback they avoid would move (weighted by ``1 + WRITE_COST``)."""
    nwin = offsets.shape[0]
    rows_of = (offsets[:, -1] - offsets[:, 0]).astype(np.int64)
    touched = offsets[:, 1:] > offsets[:, :-1]
    chunk_bytes = np.full(touched.shape[1], scan_rows * row_bytes, dtype=np.int64)
    if chunk_bytes.size:
        chunk_bytes[-1] = (num_rows - (touched.shape[1] - 1) * scan_rows) * row_bytes

    def cost(passes):
        scans = sum(int(chunk_bytes[touched[a:b].any(axis=0)].sum()) for a, b in passes)
        spill = sum(max(0, int(rows_of[a + 1:b].sum()) * row_bytes - max(pass_bytes, 0))
                    for a, b in passes)
        return scans + int(spill * (1 + WRITE_COST))

    best = [(0, nwin)], cost([(0, nwin)])
    if pass_bytes <= 0 or nwin <= 2:
        return best
    passes, wa = [], 0
    while wa < nwin:
        wb, held = wa + 1, 0
        while wb < nwin and held + rows_of[wb] * row_bytes <= pass_bytes:
            held += int(rows_of[wb]) * row_bytes
            wb += 1
        passes.append((wa, wb))
        wa = wb
    c = cost(passes)
    return (passes, c) if c < best[1] else best


def copy_rows(store: Store, fmeta, targets, *, window_bytes: int, strategy: str = "auto",
              progress: ProgressFn | None = None, pass_bytes: int | None = None) -> int:
    """Append ``features[ids]`` to each ``(writer, ids)`` of ``targets``, reading the base
    array only sequentially (never a random read); returns the number of base scans.

    The output (the targets' ids, concatenated) is cut into windows held in memory. When
    it fits one window of ``window_bytes``, rows are scattered straight into it during
    one scan. Otherwise there are two ways, picked by ``strategy``:

    ``"rescans"``
        one scan per window of ``window_bytes``, reading only the base chunks that hold
        rows of that window; each window is written (buffered, so the disk writes it back
        while the next scan reads). Disk traffic: output + scans x touched base chunks.
    ``"buckets"``
        windows are ``window_bytes / 2`` (two buffers: one is written while the next is
        filled), grouped into passes (:func:`bucket_passes`; usually one). A pass is one
        scan: it scatters its first window directly and appends every other window's rows
        to its *bucket*: a region of one temporary ``packs/copy-buckets-*.tmp`` file, in
        chunk order. Each window is then assembled from its bucket (one sequential read)
        and appended to the writers. Windows lie in the file last-to-first so a consumed
        one is truncated away: its dirty pages not yet written back are dropped unwritten,
        which is why passes keep their buckets within ``pass_bytes`` (default
        :func:`writeback_free_bytes`) when one more base scan costs less than the
        writeback that avoids. Disk traffic: output + passes x touched base chunks + 2 x
        the bucket bytes written back. The file is removed at the end; after a crash the
        store's orphan cleanup removes it (``*.tmp``).
    ``"auto"``
        whichever moves fewer bytes besides the output: the rescans' reads against the
        buckets' scans plus their bucket bytes written back (weighted by ``1 +
        WRITE_COST``: written, then read back). Rescans win when the windows are few (a
        large ``window_bytes`` relative to the output), buckets when the output is many
        times the memory.

    Threads: ``oocstore-pack-read`` reads ahead (base chunks, then bucket pieces: two
    buffers of ``_SCAN_BYTES``); ``oocstore-pack-write`` writes bucket pieces (two
    staging buffers of ``_SCAN_BYTES``), then windows (crc32 + write) while the next one
    is assembled. Memory: ``window_bytes`` + 4 x ``_SCAN_BYTES`` + 12 bytes per row (16 while
    ``"auto"`` weighs both window orders)."""
    if strategy not in COPY_STRATEGIES:
        raise UsageError(f"copy strategy {strategy!r}: use one of {', '.join(COPY_STRATEGIES)}")
    rb = fmeta.row_bytes
    all_ids = np.concatenate([np.asarray(ids, dtype=np.int64) for _, ids in targets]) \
        if targets else np.zeros(0, np.int64)
    bounds = np.cumsum([0] + [len(ids) for _, ids in targets])
    total = all_ids.size
    if total == 0:
        return 0
    scan_rows = max(1, _SCAN_BYTES // rb)
    num_rows = fmeta.shape[0]
    nchunks = -(-num_rows // scan_rows)
    full_rows = max(1, window_bytes // rb)
    order_dtype = np.int32 if full_rows < 2 ** 31 else np.int64
    if pass_bytes is None:
        pass_bytes = writeback_free_bytes()

    def window_order(window_rows: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.empty(total, dtype=order_dtype)
        offsets = np.empty((-(-total // window_rows), nchunks + 1), dtype=np.int64)
        _window_order(all_ids, window_rows, scan_rows, order, offsets)
        return order, offsets

    window_rows = full_rows if total <= full_rows else max(1, full_rows // 2)
    rescans = None  # (order, offsets, bytes read) of one scan per full window
    if total > full_rows and strategy != "buckets":
        order, offsets = window_order(full_rows)
        if strategy == "rescans":
            return _copy_rescans(store, fmeta, targets, bounds, all_ids, order, offsets,
                                 full_rows, scan_rows, progress)
        rescans = (order, offsets,
                   int((offsets[:, 1:] > offsets[:, :-1]).sum()) * scan_rows * rb)
    order_b, offsets_b = window_order(window_rows)
    passes, bucket_cost = bucket_passes(offsets_b, scan_rows, rb, num_rows, pass_bytes)
    if rescans is not None and rescans[2] < bucket_cost:
        return _copy_rescans(store, fmeta, targets, bounds, all_ids, *rescans[:2],
                             full_rows, scan_rows, progress)
    del rescans  # its window order (4 bytes per row) is not needed any more
    _copy_buckets(store, fmeta, targets, bounds, all_ids, order_b, offsets_b, window_rows,
                  scan_rows, passes, progress)
    return len(passes)


def _copy_buckets(store: Store, fmeta, targets, bounds: np.ndarray, all_ids: np.ndarray,
                  order: np.ndarray, offsets: np.ndarray, window_rows: int, scan_rows: int,
                  passes: list[tuple[int, int]], progress: ProgressFn | None) -> None:
    """The ``"buckets"`` copy (see :func:`copy_rows`), one scan per pass."""
    rb = fmeta.row_bytes
    d = fmeta.shape[1] if len(fmeta.shape) > 1 else 1
    total, nwin, num_rows = all_ids.size, offsets.shape[0], fmeta.shape[0]
    path = store.file_path(fmeta)
    buf_bytes = _aligned_span(ALIGN - 1, scan_rows * rb)
    raws = [aligned_empty(buf_bytes), aligned_empty(buf_bytes)]
    windows = [np.empty((min(total, window_rows), d), dtype=fmeta.np_dtype)
               for _ in range(1 if nwin == 1 else 2)]
    bucketed = any(b - a > 1 for a, b in passes)
    staging = [np.empty((scan_rows, d), dtype=fmeta.np_dtype) for _ in range(2)] \
        if bucketed else []
    win_lo = [w * window_rows for w in range(nwin + 1)]
    win_lo[-1] = total
    # Bucket region of window w (first byte): per pass, its windows after the first are
    # stored last-to-first from the start of the file.
    region = [0] * nwin
    for wa, wb in passes:
        for w in range(wb - 2, wa, -1):
            region[w] = region[w + 1] + (win_lo[w + 2] - win_lo[w + 1]) * rb

    def read_chunk(lo: int, hi: int, raw: np.ndarray) -> int:
        return _read_rows(reader, fmeta, path, lo, hi, raw)

    def write_window(w: int, out: np.ndarray) -> None:
        _append_window(targets, bounds, win_lo[w], win_lo[w + 1], out)

    bucket_fd, bucket_path = -1, None
    if bucketed:
        (store.path / "packs").mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="copy-buckets-", suffix=".tmp",
                                    dir=store.path / "packs")
        bucket_fd, bucket_path = fd, Path(name)
    # The pools exit (waiting for in-flight jobs) before the reader and the bucket close.
    try:
        with DirectReader(path) as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="oocstore-pack-read") as rpool, \
                ThreadPoolExecutor(1, thread_name_prefix="oocstore-pack-write") as wpool:
            writes = _InOrder(wpool, depth=2)
            nstaged = 0
            for wa, wb in passes:
                # 1. The scan: window wa straight into its buffer (window wa - 2, which
                # used it, is written: at most the last job, window wa - 1, still runs),
                # the pass's other windows into buckets.
                writes.wait(1)
                first = windows[wa % 2][:win_lo[wa + 1] - win_lo[wa]]
                out0 = _word_view(first, rb)
                ids0, order0 = all_ids[win_lo[wa]:win_lo[wa + 1]], order[win_lo[wa]:win_lo[wa + 1]]
                chunks = np.flatnonzero((offsets[wa:wb, 1:] - offsets[wa:wb, :-1]).sum(axis=0))
                pending = rpool.submit(read_chunk, int(chunks[0]) * scan_rows,
                                       min(num_rows, int(chunks[0] + 1) * scan_rows), raws[0])
                for k, c in enumerate(chunks):
                    lo, hi = int(c) * scan_rows, min(num_rows, int(c + 1) * scan_rows)
                    skip = pending.result()  # re-raises a failed read here, with its traceback
                    if k + 1 < len(chunks):
                        nc = int(chunks[k + 1])
                        pending = rpool.submit(read_chunk, nc * scan_rows,
                                               min(num_rows, (nc + 1) * scan_rows),
                                               raws[(k + 1) % 2])
                    src = _word_view(raws[k % 2][skip:skip + (hi - lo) * rb], rb)
                    _scatter_rows(src, lo, ids0, order0, offsets[wa, c], offsets[wa, c + 1], out0)
                    for w in range(wa + 1, wb):
                        w0, w1 = win_lo[w], win_lo[w + 1]
                        a, b = int(offsets[w, c]), int(offsets[w, c + 1])
                        for a1 in range(a, b, scan_rows):
                            b1 = min(b, a1 + scan_rows)
                            st = staging[nstaged % 2]
                            writes.wait(1)  # the job that used this staging buffer is done
                            _gather_rows(src, lo, all_ids[w0:w1], order[w0:w1], a1, b1,
                                         _word_view(st, rb))
                            writes.submit(_pwrite_all, bucket_fd, st[:b1 - a1],
                                          region[w] + a1 * rb, bucket_path)
                            nstaged += 1
                    if progress:
                        progress((hi - lo) * rb)
                writes.wait()  # every bucket piece is in the file before any is read
                writes.submit(write_window, wa, first)
                # 2. The pass's other windows from their buckets, read ahead in pieces
                # (into the scan buffers, free until the next pass).
                views = [r.view(fmeta.np_dtype)[:scan_rows * d].reshape(-1, d) for r in raws]
                for w in range(wa + 1, wb):
                    w0, w1 = win_lo[w], win_lo[w + 1]
                    n = w1 - w0
                    out = windows[w % 2][:n]
                    writes.wait(1)  # window w - 2, which used this buffer, is written
                    pieces = [(a, min(n, a + scan_rows)) for a in range(0, n, scan_rows)]
                    pending = rpool.submit(_pread_all, bucket_fd, views[0][:pieces[0][1]],
                                           region[w], bucket_path)
                    out_words = _word_view(out, rb)
                    for k, (a, b) in enumerate(pieces):
                        pending.result()
                        if k + 1 < len(pieces):
                            na, nb = pieces[k + 1]
                            pending = rpool.submit(_pread_all, bucket_fd,
                                                   views[(k + 1) % 2][:nb - na],
                                                   region[w] + na * rb, bucket_path)
                        _place_rows(_word_view(views[k % 2][:b - a], rb), order[w0:w1], a, b,
                                    out_words)
                    # Consumed: drop it (and, unwritten, its dirty pages) from the file.
                    os.ftruncate(bucket_fd, region[w])
                    writes.submit(write_window, w, out)
                    if progress:
                        progress(n * rb)
            writes.wait()
    finally:
        if bucket_fd >= 0:
            os.close(bucket_fd)
            bucket_path.unlink(missing_ok=True)
