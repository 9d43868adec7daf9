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
3. **Budget check.** The minimum working set (largest segment + one batch of staging +
   CPU tier) is compared with ``cpu_budget`` *before* anything is written.
4. **Assignment.** Every input position of every batch gets (tier, slot).
5. **Batched copy.** The base feature array is scanned sequentially in large aligned
   ``O_DIRECT`` reads and rows are scattered into an output window held in memory
   (``window_bytes``); each window is then appended to the pack files. Output larger than
   the window takes several scans.
6. **Commit.** One catalog transaction makes the pack visible (crash-safe).

Memory: O(num_nodes) for placement maps, 8 bytes per packed row, plus the window.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np

from ..errors import BudgetError, StoreExistsError, StoreNotFoundError, UsageError
from ..plan import PlanReader, list_plans
from ..store import ALIGN, Store
from ..store.files import DirectReader, aligned_empty
from ..tiers.ssd import base_read_buffer_bytes
from ..units import format_size
from .format import BASE, CPU, GPU, SSD, PackMeta, pack_array_names, pack_key
from .placement import belady_schedule, static_placement

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]

#: Longest segment tried when fitting the blowup cap (longer segments de-duplicate more
#: but need a larger read buffer).
MAX_SEGMENT_BATCHES = 16

#: Output rows assembled in memory per scan of the base array.
DEFAULT_WINDOW_BYTES = 256 << 20

#: Base-array read size during packing (large sequential O_DIRECT requests).
_SCAN_BYTES = 32 << 20

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
def _segment_rows(data, offs, ninput, pstart, node_tier, hit, seg_first, seg_last, mark):
    """Distinct cold rows of each segment [seg_first[s], seg_last[s])."""
    nseg = seg_first.shape[0]
    rows = np.zeros(nseg, dtype=np.int64)
    for s in range(nseg):
        tag = s + 1
        count = 0
        for b in range(seg_first[s], seg_last[s]):
            o = offs[b]
            for i in range(ninput[b]):
                v = data[o + i]
                if _is_cold(node_tier, v, hit, pstart[b] + i) and mark[v] != tag:
                    mark[v] = tag
                    count += 1
        rows[s] = count
    return rows


@numba.njit(cache=True, nogil=True)
def _assign(data, offs, ninput, pstart, b0, b1, batch_seg, seg_first_row, node_tier, node_slot,
            hit, mark, rowmap, out_tier, out_slot, node_of_row, base_offset, row_bytes, align):
    """Tier and slot of every input position of batches [b0, b1); returns the bytes the
    base-array fallback reads will transfer (4 KiB-widened, per row)."""
    p = 0
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
                    fallback_bytes += ((off + row_bytes + align - 1) // align - off // align) * align
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
    return fallback_bytes


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


def plan_layout(store: Store, plan: PlanReader, options: PackOptions) -> Layout:
    """Placement, segment length and minimum working set of packing ``plan``."""
    fmeta = store.array_meta("features")
    n = fmeta.shape[0]
    rb = fmeta.row_bytes
    base_bytes = fmeta.nbytes
    counts = np.asarray(plan.access_counts())
    gpu_ids, cpu_ids = static_placement(counts, options.gpu_cache // rb, options.cpu_cache // rb)

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
    # whose prefix of segments within the cap covers the most batches.
    mark = np.zeros(n, dtype=np.int64)
    candidates = [options.segment_batches] if options.segment_batches else \
        [s for s in (1, 2, 4, 8, 16) if s <= MAX_SEGMENT_BATCHES]
    best = None
    for S in candidates:
        mark[:] = 0
        seg_first, seg_last = _segments(epoch_starts, S)
        seg_rows = _segment_rows(data, offs, ninput, pstart, node_tier, hit, seg_first, seg_last,
                                 mark)
        fit = int(np.searchsorted(np.cumsum(seg_rows), cap_rows, side="right"))
        covered = int((seg_last[:fit] - seg_first[:fit]).sum())
        if best is None or covered > best[0]:
            best = (covered, S, seg_first, seg_last, seg_rows, fit)
        if fit == seg_rows.size:
            break
    _, S, seg_first, seg_last, seg_rows, packed_segs = best
    unpacked = packed_segs < seg_rows.size
    seg_first, seg_last, seg_rows = seg_first[:packed_segs], seg_last[:packed_segs], seg_rows[:packed_segs]
    batch_seg = np.full(total_batches, -1, dtype=np.int64)
    for s in range(packed_segs):
        batch_seg[seg_first[s]:seg_last[s]] = s

    largest_seg = int(seg_rows.max()) * rb + 2 * ALIGN if packed_segs else 0
    largest_batch = int(ninput.max()) if total_batches else 0
    staging = largest_batch * rb
    cpu_tier_bytes = cpu_ids.size * rb
    gpu_tier_bytes = gpu_ids.size * rb
    fallback_buf = base_read_buffer_bytes(rb) if unpacked else 0
    # On the CPU the GPU tier is held in host memory too (a CPU-only run); on a CUDA run
    # the loader moves it to the device and charges the GPU budget instead.
    mws = {"cpu": largest_seg + staging + cpu_tier_bytes + gpu_tier_bytes + fallback_buf,
           "gpu": gpu_tier_bytes + (staging if gpu_tier_bytes else 0),
           "largest_segment_bytes": largest_seg, "staging_bytes": staging,
           "cpu_tier_bytes": cpu_tier_bytes, "gpu_tier_bytes": gpu_tier_bytes,
           "base_read_bytes": fallback_buf}
    return Layout(plan=plan, fmeta=fmeta, gpu_ids=gpu_ids, cpu_ids=cpu_ids, node_tier=node_tier,
                  node_slot=node_slot, segment_batches=int(S), seg_first=seg_first,
                  seg_last=seg_last, seg_rows=seg_rows, batch_seg=batch_seg, cap_rows=cap_rows,
                  offs=offs, ninput=ninput, pstart=pstart, min_working_set=mws,
                  policy=options.policy, hit=hit, ins_pos=schedule[0], ins_slot=schedule[1],
                  ins_count=schedule[2])


def check_budget(layout: Layout, options: PackOptions, name: str) -> None:
    """Refuse, with the numbers and the fix, a layout that cannot run inside the budgets."""
    mws = layout.min_working_set
    for tier, limit in (("cpu", options.cpu_budget), ("gpu", options.gpu_budget)):
        if limit is not None and mws[tier] > limit:
            raise BudgetError(
                f"pack {name!r} needs a minimum {tier} working set of {format_size(mws[tier])} "
                f"(largest segment {format_size(mws['largest_segment_bytes'])} + staging "
                f"{format_size(mws['staging_bytes'])} + {tier} tier "
                f"{format_size(mws[f'{tier}_tier_bytes'])}) > {tier} budget "
                f"{format_size(limit)}: lower --{tier}-cache, sample with a smaller batch size, "
                f"or raise --{tier}-budget to at least {format_size(mws[tier])}")


def pack_plan(store: Store, plan_name: str | None = None, *, name: str | None = None,
              options: PackOptions = PackOptions(), overwrite: bool = False,
              progress: ProgressFn | None = None) -> PackMeta:
    """Pack ``plan_name`` (default: the most recent plan) of a writable ``store``."""
    plan_name = plan_name or latest_plan(store)
    plan = PlanReader(store, plan_name)
    name = name or plan_name
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
    node_tier, node_slot = layout.node_tier, layout.node_slot
    offs, ninput, data = layout.offs, layout.ninput, plan._data
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
        # Assignment, streamed per group of batches.
        w_tier = txn.array_writer(names["tier"], np.uint8, (), subdir="packs")
        w_slot = txn.array_writer(names["slot"], np.int32, (), subdir="packs")
        node_of_row = np.empty(packed_rows, dtype=np.int64)
        rowmap = np.zeros(max(packed_segs, 1), dtype=np.int64)
        fallback_positions = 0
        fb_read = 0
        for b0 in range(0, total_batches, _ASSIGN_BATCHES):
            b1 = min(total_batches, b0 + _ASSIGN_BATCHES)
            size = int(ninput[b0:b1].sum())
            out_tier = np.empty(size, dtype=np.uint8)
            out_slot = np.empty(size, dtype=np.int32)
            fb_read += _assign(data, offs, ninput, layout.pstart, b0, b1, batch_seg,
                               seg_first_row, node_tier, node_slot, layout.hit, mark, rowmap,
                               out_tier, out_slot, node_of_row, fmeta.offset, rb, ALIGN)
            fallback_positions += int(np.count_nonzero(out_tier == BASE))
            w_tier.append(out_tier)
            w_slot.append(out_slot)
        w_tier.close()
        w_slot.close()
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

        # Batched copy: one sequential scan of the base array per output window.
        targets = [(txn.array_writer(names["gpu_rows"], fmeta.np_dtype, (d,), subdir="packs"), gpu_ids),
                   (txn.array_writer(names["cpu_rows"], fmeta.np_dtype, (d,), subdir="packs"), cpu_ids),
                   (txn.array_writer(names["rows"], fmeta.np_dtype, (d,), subdir="packs"), node_of_row)]
        scans = copy_rows(store, fmeta, targets, window_bytes=options.window_bytes, progress=progress)
        for w, _ in targets:
            w.close()

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


@numba.njit(cache=True, nogil=True, parallel=True)
def _scatter_rows(src, lo, nodes, order, a, b, out):
    """``out[order[i]] = src[nodes[i] - lo]`` for ``i`` in ``[a, b)``, rows as words of
    any unsigned type (see :func:`_word_view`). One pass on numba threads, where numpy's
    ``out[o] = src[n]`` goes through a temporary on one core; the explicit word loop is
    ~2x numba's row-slice assignment on uint8 rows (bench/pack_speed.py)."""
    w = src.shape[1]
    for i in numba.prange(a, b):
        dst = order[i]
        row = nodes[i] - lo
        for j in range(w):
            out[dst, j] = src[row, j]


def _word_view(rows: np.ndarray, row_bytes: int) -> np.ndarray:
    """``rows`` (C-contiguous, ``row_bytes`` per row, word-aligned) as ``[n, words]`` of the
    widest unsigned integer dividing ``row_bytes``."""
    word = next(w for w in (8, 4, 2, 1) if row_bytes % w == 0)
    return rows.view(np.uint8).reshape(-1, row_bytes).view(f"u{word}")


def _scan_chunks(nodes: np.ndarray, scan_rows: int, num_rows: int) -> list[tuple[int, int, int, int]]:
    """``(lo, hi, a, b)``: base rows ``[lo, hi)`` to read, holding ``nodes[a:b]`` (sorted
    ``nodes``); ranges holding no node are skipped."""
    chunks = []
    lo = int(nodes[0]) // scan_rows * scan_rows
    last = int(nodes[-1])
    while lo <= last:
        hi = min(num_rows, lo + scan_rows)
        a, b = (int(x) for x in np.searchsorted(nodes, [lo, hi]))
        if b > a:
            chunks.append((lo, hi, a, b))
        lo = hi if b >= nodes.size else max(hi, int(nodes[b]) // scan_rows * scan_rows)
    return chunks


def copy_rows(store: Store, fmeta, targets, *, window_bytes: int,
              progress: ProgressFn | None = None) -> int:
    """Append ``features[ids]`` to each ``(writer, ids)`` of ``targets``, scanning the base
    array sequentially; returns the number of scans. Never random-reads the base array.

    One read runs ahead in a thread (two scan buffers) while rows of the previous one are
    scattered into the window, so the disk and the CPU work at the same time."""
    rb = fmeta.row_bytes
    d = fmeta.shape[1] if len(fmeta.shape) > 1 else 1
    all_ids = np.concatenate([np.asarray(ids, dtype=np.int64) for _, ids in targets]) \
        if targets else np.zeros(0, np.int64)
    bounds = np.cumsum([0] + [len(ids) for _, ids in targets])
    total = all_ids.size
    if total == 0:
        return 0
    window_rows = max(1, window_bytes // rb)
    scan_rows = max(1, _SCAN_BYTES // rb)
    path = store.file_path(fmeta)
    scans = 0
    buf_bytes = _aligned_span(ALIGN - 1, scan_rows * rb)
    raws = [aligned_empty(buf_bytes), aligned_empty(buf_bytes)]
    # One window buffer for every scan: a fresh one per scan costs a page fault (and a
    # zeroed page) per 4 KiB of the window, every scan. Writers copy what they are given.
    window = np.empty((min(total, window_rows), d), dtype=fmeta.np_dtype)

    def read_chunk(lo: int, hi: int, raw: np.ndarray) -> int:
        """Read base rows [lo, hi) into ``raw``; returns where row ``lo`` starts in it."""
        start = fmeta.offset + lo * rb
        astart = start // ALIGN * ALIGN
        aend = -(-(fmeta.offset + hi * rb) // ALIGN) * ALIGN
        got = reader.read_into(raw[:aend - astart], astart)
        if got < start - astart + (hi - lo) * rb:
            raise OSError(f"short read of {path} at byte {start}: the feature file "
                          "is truncated; run `oocstore verify`")
        return start - astart

    # The pool exits (waiting for an in-flight read) before the reader closes.
    with DirectReader(path) as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="oocstore-pack-read") as pool:
        for w0 in range(0, total, window_rows):
            w1 = min(total, w0 + window_rows)
            sub = all_ids[w0:w1]
            order = np.argsort(sub, kind="stable")
            nodes = sub[order]
            out = window[:w1 - w0]
            out_words = _word_view(out, rb)
            chunks = _scan_chunks(nodes, scan_rows, fmeta.shape[0])
            pending = pool.submit(read_chunk, chunks[0][0], chunks[0][1], raws[0])
            for k, (lo, hi, a, b) in enumerate(chunks):
                skip = pending.result()  # re-raises a failed read here, with its traceback
                if k + 1 < len(chunks):
                    nlo, nhi = chunks[k + 1][:2]
                    pending = pool.submit(read_chunk, nlo, nhi, raws[(k + 1) % 2])
                src = _word_view(raws[k % 2][skip:skip + (hi - lo) * rb], rb)
                _scatter_rows(src, lo, nodes, order, a, b, out_words)
                if progress:
                    progress((hi - lo) * rb)
            scans += 1
            # Hand the window to the writers whose ranges it overlaps.
            for t, (writer, _) in enumerate(targets):
                s0, s1 = max(w0, int(bounds[t])), min(w1, int(bounds[t + 1]))
                if s1 > s0:
                    writer.append(out[s0 - w0:s1 - w0])
    return scans
