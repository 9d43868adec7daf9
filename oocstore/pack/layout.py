"""Where every row of a plan will live, worked out without writing anything.

:func:`plan_layout` places the GPU- and CPU-tier rows (:mod:`.placement`; a scheduled CPU
tier follows its policy's schedule, :mod:`.policies`), chooses the segment length and computes the minimum
working set, so the budget check and the cost model can look before the packer leaps.

**Segment length.** A segment is ``S`` consecutive batches of one epoch; its distinct cold
rows are stored once (rows shared by batches inside a segment are de-duplicated, as
DiskGNN does). The smallest ``S`` in 1, 2, 4, ... whose packed bytes fit
``max_disk_blowup`` x base bytes is chosen (small segments keep the working set small);
if even the longest allowed segment does not fit, segments are packed in plan order until
the cap is reached and the remaining batches fall back to row reads from the base array
(counted in the expected read amplification).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numba
import numpy as np

from ..plan import PlanReader
from ..store import ALIGN, Store
from ..store.labels import labels_bytes
from ..tiers.ssd import base_read_buffer_bytes
from .format import CPU, GPU, SSD, plan_record_bytes, reader_table_bytes
from .options import PackOptions
from .placement import hot_order, static_placement
from .policies import POLICIES
from ..workingset import working_set

#: Longest segment tried when fitting the blowup cap (longer segments de-duplicate more
#: but need a larger read buffer).
MAX_SEGMENT_BATCHES = 16


# -- numba kernels ---------------------------------------------------------------------

@numba.njit(cache=True, nogil=True, inline="always")
def _is_cold(node_tier, v, hit, p):
    """Whether position ``p`` (node ``v``) needs disk: not in the GPU tier and, with a
    static CPU tier, not in it; with a scheduled CPU tier, a miss there."""
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
    policy: str = "static"  # a name in .policies.POLICIES
    hit: np.ndarray = None  # scheduled: per position the CPU slot or -1; static: empty
    ins_pos: np.ndarray = None  # scheduled admissions: position, slot, count per batch
    ins_slot: np.ndarray = None
    ins_count: np.ndarray = None

    @property
    def scheduled(self) -> bool:
        """Whether the CPU tier follows a schedule (admissions per batch) rather than
        holding the same rows for the whole run."""
        return self.ins_pos is not None

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
        return _cold_per_batch(self.plan.records, self.offs, self.ninput, self.pstart,
                               self.node_tier, self.hit)


#: Hottest-first node order per open plan reader (see :func:`plan_layout`).
_HOT_ORDER: "weakref.WeakKeyDictionary[PlanReader, np.ndarray]" = weakref.WeakKeyDictionary()


def plan_layout(store: Store, plan: PlanReader, options: PackOptions) -> Layout:
    """Placement, segment length and minimum working set of packing ``plan``."""
    fmeta = store.array_meta(options.features)
    # The bulk passes below index arrays with the plan's memory-mapped records: check
    # them against their checksums first (once per reader; the index was checked when
    # the plan was opened).
    plan.verify()
    rb = fmeta.row_bytes
    gpu_ids, cpu_ids, node_tier, node_slot = _place(plan, options, fmeta.shape[0], rb)
    index = np.asarray(plan.index())
    offs = np.ascontiguousarray(index[:, 0])
    ninput = np.ascontiguousarray(index[:, 3])
    pstart = np.concatenate([[0], np.cumsum(ninput)]).astype(np.int64)
    data = plan.records
    epoch_starts = np.concatenate([[0], np.cumsum(plan.meta.batches_per_epoch)]).astype(np.int64)
    # A scheduled CPU tier starts each epoch holding the static choice, then follows its
    # schedule; GPU-tier rows stay static.
    sched = POLICIES[options.policy].schedule(data, offs, ninput, epoch_starts, node_tier,
                                              cpu_ids.size, cpu_ids)
    hit = np.zeros(0, dtype=np.int32) if sched is None else sched.hit
    schedule = (None, None, None) if sched is None else \
        (sched.ins_pos, sched.ins_slot, sched.ins_count)
    if sched is None:
        node_tier[cpu_ids] = CPU
        node_slot[cpu_ids] = np.arange(cpu_ids.size, dtype=np.int32)
    cap_rows = int(options.max_disk_blowup * fmeta.nbytes // rb) if rb else 0
    lbytes = labels_bytes(store)
    records = plan_record_bytes(int(index[:, 1].max()) if index.shape[0] else 0,
                                data.dtype.itemsize, plan.meta.batch_size)

    def minimum(largest_seg: int, packed_segs: int, unpacked: bool) -> dict:
        # What the reader holds per batch and per segment for the whole run.
        tables = reader_table_bytes(
            total_batches=index.shape[0], index_columns=index.shape[1],
            epochs=plan.meta.epochs, num_segments=packed_segs, positions=int(pstart[-1]),
            inserts=int(schedule[0].size) if schedule[0] is not None else 0,
            scheduled=schedule[0] is not None, plan_data_bytes=int(data.nbytes))
        return working_set(largest_batch_rows=int(ninput.max()) if ninput.size else 0,
                           row_bytes=rb, largest_segment_bytes=largest_seg,
                           cpu_tier_bytes=cpu_ids.size * rb, gpu_tier_bytes=gpu_ids.size * rb,
                           base_read_bytes=base_read_buffer_bytes(rb) if unpacked else 0,
                           labels_bytes=lbytes, tables_bytes=tables,
                           plan_record_bytes=records, batch_size=plan.meta.batch_size,
                           gpu_rows=int(gpu_ids.size))

    fits, rows_by_len, candidates = _count_segment_rows(
        data, offs, ninput, pstart, node_tier, hit, epoch_starts, cap_rows, options)
    S, seg_first, seg_last, seg_rows = _choose_segments(
        candidates, fits, rows_by_len, epoch_starts, rb, options, minimum)
    packed_segs = seg_rows.size
    batch_seg = np.full(index.shape[0], -1, dtype=np.int64)
    for s in range(packed_segs):
        batch_seg[seg_first[s]:seg_last[s]] = s
    largest_seg = int(seg_rows.max()) * rb + 2 * ALIGN if packed_segs else 0
    mws = minimum(largest_seg, packed_segs, bool((batch_seg < 0).any()))
    return Layout(plan=plan, fmeta=fmeta, gpu_ids=gpu_ids, cpu_ids=cpu_ids, node_tier=node_tier,
                  node_slot=node_slot, segment_batches=int(S), seg_first=seg_first,
                  seg_last=seg_last, seg_rows=seg_rows, batch_seg=batch_seg, cap_rows=cap_rows,
                  offs=offs, ninput=ninput, pstart=pstart, min_working_set=mws,
                  policy=options.policy, hit=hit, ins_pos=schedule[0], ins_slot=schedule[1],
                  ins_count=schedule[2])


def _place(plan: PlanReader, options: PackOptions, n: int, rb: int):
    """``(gpu_ids, cpu_ids, node_tier, node_slot)`` of the static placement; the GPU tier
    is entered in ``node_tier`` / ``node_slot``, the CPU tier is left to the caller
    (static or scheduled)."""
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
    return gpu_ids, cpu_ids, node_tier, node_slot


def _count_segment_rows(data, offs, ninput, pstart, node_tier, hit, epoch_starts, cap_rows,
                        options: PackOptions):
    """Distinct cold rows of the segments of each candidate length (``options``' or 1, 2,
    4, ... :data:`MAX_SEGMENT_BATCHES`), counted in one pass that ends where the last
    candidate reaches the cap (:func:`_segment_rows`). Returns ``(fits, rows, candidates)``."""
    total_batches = offs.shape[0]
    candidates = [options.segment_batches] if options.segment_batches else \
        [s for s in (1, 2, 4, 8, 16) if s <= MAX_SEGMENT_BATCHES]
    epoch_of = np.repeat(np.arange(len(epoch_starts) - 1, dtype=np.int64),
                         np.diff(epoch_starts)) if total_batches else np.zeros(0, np.int64)
    lengths = np.asarray(candidates, dtype=np.int64)
    rows_by_len = np.zeros((lengths.size, max(total_batches, 1)), dtype=np.int64)
    # Batch indices: int32 takes half the cache misses of int64.
    last = np.full(node_tier.shape[0], -1, dtype=np.int32)
    fits = _segment_rows(data, offs, ninput, pstart, node_tier, hit, epoch_of, epoch_starts,
                         lengths, cap_rows, last, rows_by_len)
    return fits, rows_by_len, candidates


def _choose_segments(candidates, fits, rows_by_len, epoch_starts, rb: int,
                     options: PackOptions, minimum):
    """``(S, seg_first, seg_last, seg_rows)`` of the packed segments: the smallest ``S``
    whose segments all fit the cap; if none does, the ``S`` whose prefix of segments within
    the cap covers the most batches.

    With a cpu budget and no segment length given, a length whose largest segment would
    not fit beside the rest of the minimum (``minimum(largest_segment_bytes, segments,
    unpacked)``) is passed over (longer segments hold more rows): the segment buffer is
    sized to the budget. If none fits, the choice is made as without a budget, and
    check_budget refuses it with the numbers."""
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
    return S, seg_first[:packed_segs], seg_last[:packed_segs], seg_rows


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
