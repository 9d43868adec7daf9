"""The packer: lay out each batch's cold rows contiguously on disk, in access order.

Steps (all streaming over the plan; the base feature array is only read sequentially):

1. **Layout** (:mod:`.layout`): placement of the GPU- and CPU-tier rows (static, or a
   scheduled CPU tier), segment length within ``max_disk_blowup``, minimum working set.
2. **Budget check** (:func:`oocstore.workingset.check_budget`): the minimum working set (tiers,
   largest segment, the two batches a loader holds at prefetch depth 0, tables) is
   compared with ``cpu_budget`` *before* anything is written.
3. **Assignment.** Every input position of every batch gets (tier, slot). The packed
   batches (a prefix of the plan) are assigned first; the rest, on a thread, while the
   copy runs (it needs only the packed rows).
4. **Batched copy** (:mod:`.copy`): one sequential scan of the base array per pass, rows
   scattered into output windows appended to the pack files.
5. **Commit.** One catalog transaction makes the pack visible (crash-safe).

Memory: O(num_nodes) for placement maps, 20 bytes per packed row (row map, concatenated
ids, window order), plus ``window_bytes`` and four 32 MiB copy buffers.

This module also re-exports the names callers used when the packer was one module
(options, layout, copy and working-set functions).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from ..errors import StoreExistsError
from ..plan import PlanReader, latest_plan
from ..store import ALIGN, Store
from ..store.files import checksum
from ..store.format import aligned_span, check_name
from ..store.labels import label_dtype, labels_bytes
from .copy import WRITE_COST, ProgressFn, bucket_passes, copy_rows, writeback_free_bytes
from .format import PackMeta, pack_array_names, pack_key
from .layout import MAX_SEGMENT_BATCHES, Layout, _is_cold, _packed_epochs, plan_layout
from .options import COPY_STRATEGIES, DEFAULT_WINDOW_BYTES, PackOptions
from ..tiers.aio import run_bytes
from ..tiers.ssd import AIO_MAX_RUN_UNITS
# The working-set arithmetic lives in oocstore/workingset.py; these names stay importable
# from here.
from ..workingset import (MIN_BATCHES_IN_FLIGHT, check_budget, device_overhead,  # noqa: F401
                          loader_floor, working_set)

log = logging.getLogger(__name__)

#: Re-exported from the modules the packer was split into, for callers of the old names.
__all__ = ["COPY_STRATEGIES", "DEFAULT_WINDOW_BYTES", "MAX_SEGMENT_BATCHES",
           "MIN_BATCHES_IN_FLIGHT", "WRITE_COST", "Layout", "PackOptions", "ProgressFn",
           "SegmentChecksums", "bucket_passes", "check_budget", "copy_rows", "device_overhead",
           "label_dtype", "labels_bytes", "latest_plan", "loader_floor", "pack_plan",
           "plan_layout", "plan_version", "working_set", "writeback_free_bytes"]

#: Batches assigned per call of the numba kernel (bounds the tier/slot buffers).
_ASSIGN_BATCHES = 256


def plan_version(store: Store, plan: PlanReader) -> int:
    return store.array_meta(plan.meta.arrays["index"]).version


@numba.njit(cache=True, nogil=True)
def _assign(data, offs, ninput, pstart, b0, b1, batch_seg, seg_first_row, node_tier, node_slot,
            hit, mark, rowmap, out_tier, out_slot, node_of_row, base_offset, row_bytes, fallback,
            fb_ids, unit, max_units):
    """Tier and slot of every input position of batches [b0, b1); adds to ``fallback``
    the positions read from the base array ([0]) and the bytes those reads transfer
    ([1]: the reader's native AIO requests, rows whose 4 KiB pages touch read together,
    :func:`~oocstore.tiers.aio.run_bytes`; ``fb_ids`` holds a batch's base-array rows)."""
    p = 0
    fallback_positions = 0
    fallback_bytes = 0
    for b in range(b0, b1):
        s = batch_seg[b]
        o = offs[b]
        k = 0
        for i in range(ninput[b]):
            v = data[o + i]
            t = node_tier[v]
            if _is_cold(node_tier, v, hit, pstart[b] + i):
                if s < 0:
                    out_tier[p] = 3
                    out_slot[p] = -1
                    fb_ids[k] = v
                    k += 1
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
        if k:
            fallback_bytes += run_bytes(np.sort(fb_ids[:k]), base_offset, row_bytes, unit,
                                        max_units)
    fallback[0] += fallback_positions
    fallback[1] += fallback_bytes



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
    seg_rows = layout.seg_rows
    seg_first_row = np.concatenate([[0], np.cumsum(seg_rows)[:-1]]).astype(np.int64) \
        if layout.packed_segments else np.zeros(0, np.int64)
    names = pack_array_names(name)
    with store.transaction() as txn:
        assign, seg_crc, scans = _assign_and_copy(store, txn, names, layout, seg_first_row,
                                                  options, progress)
        _write_tables(txn, names, layout, seg_first_row, seg_crc.crcs)
        meta = _pack_meta(store, plan, name, layout, options, seg_first_row, assign, scans)
        txn.put(pack_key(name), meta.to_dict())
    log.info("packed plan %r: %d segments of %d batch(es), blowup %.2f, expected read "
             "amplification %.3f", plan_name, layout.packed_segments, layout.segment_batches,
             meta.blowup, meta.expected_read_amplification)
    return meta


def _assign_and_copy(store: Store, txn, names: dict, layout: Layout, seg_first_row, options,
                     progress):
    """Assignment (tier / slot of every position) and the batched copy of the tier and
    segment rows, inside ``txn``. Returns ``(assignment, segment checksums, base scans)``.

    Assignment is streamed per group of batches. The copy needs only the packed batches'
    rows (a prefix of the plan: ``node_of_row``); the groups after it (the batches left to
    base-array reads) are assigned on a thread while the copy runs."""
    fmeta = layout.fmeta
    d = fmeta.shape[1] if len(fmeta.shape) > 1 else 1
    total_batches, packed_segs = layout.offs.shape[0], layout.packed_segments
    w_tier = txn.array_writer(names["tier"], np.uint8, (), subdir="packs")
    w_slot = txn.array_writer(names["slot"], np.int32, (), subdir="packs")
    node_of_row = np.empty(layout.packed_rows, dtype=np.int64)
    rowmap = np.zeros(max(packed_segs, 1), dtype=np.int64)
    packed_end = int(layout.seg_last[-1]) if packed_segs else 0
    split = min(total_batches, -(-packed_end // _ASSIGN_BATCHES) * _ASSIGN_BATCHES)
    mark = np.zeros(fmeta.shape[0], dtype=np.int64)
    assign = _Assignment(layout, layout.batch_seg, seg_first_row, mark, rowmap, node_of_row,
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
            txn.array_writer(names["rows"], fmeta.np_dtype, (d,), subdir="packs"),
            layout.seg_rows, fmeta.row_bytes)
        targets = [(txn.array_writer(names["gpu_rows"], fmeta.np_dtype, (d,), subdir="packs"),
                    layout.gpu_ids),
                   (txn.array_writer(names["cpu_rows"], fmeta.np_dtype, (d,), subdir="packs"),
                    layout.cpu_ids),
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
    return assign, seg_crc, scans


def _write_tables(txn, names: dict, layout: Layout, seg_first_row, segment_crc) -> None:
    """The segment, batch, schedule and tier-id tables of the pack."""
    segments = np.stack([seg_first_row, layout.seg_rows, layout.seg_first], axis=1).astype(
        np.int64) if layout.packed_segments else np.zeros((0, 3), np.int64)
    txn.write_array(names["segments"], segments, subdir="packs")
    txn.write_array(names["batch_segment"], layout.batch_seg, subdir="packs")
    if layout.scheduled:
        txn.write_array(names["inserts"], np.stack([layout.ins_pos, layout.ins_slot.astype(
            np.int64)], axis=1) if layout.ins_pos.size else np.zeros((0, 2), np.int64),
            subdir="packs")
        txn.write_array(names["insert_offsets"], np.concatenate(
            [[0], np.cumsum(layout.ins_count)]).astype(np.int64), subdir="packs")
    txn.write_array(names["gpu_ids"], layout.gpu_ids, subdir="packs")
    txn.write_array(names["cpu_ids"], layout.cpu_ids, subdir="packs")

    txn.write_array(names["segment_crc"], segment_crc, subdir="packs")


def _pack_meta(store: Store, plan: PlanReader, name: str, layout: Layout, options: PackOptions,
               seg_first_row, assign: "_Assignment", scans: int) -> PackMeta:
    """The catalog entry: sizes, achieved blowup and expected read amplification."""
    fmeta = layout.fmeta
    rb, base_bytes = fmeta.row_bytes, fmeta.nbytes
    packed_rows, batch_seg, ninput = layout.packed_rows, layout.batch_seg, layout.ninput
    fallback_positions, fb_read = assign.fallback_positions, assign.fallback_bytes
    seg_read = int(sum(aligned_span(int(r0) * rb, int(r) * rb)[1] if r else 0
                       for r0, r in zip(seg_first_row, layout.seg_rows)))
    useful = (packed_rows + fallback_positions) * rb
    amp = (seg_read + fb_read) / useful if useful else 1.0
    blowup = packed_rows * rb / base_bytes if base_bytes else 0.0
    return PackMeta(
        name=name, plan=plan.name, plan_version=plan_version(store, plan), features=options.features,
        dtype=fmeta.dtype, feat_dim=fmeta.shape[1] if len(fmeta.shape) > 1 else 1, row_bytes=rb,
        gpu_rows=int(layout.gpu_ids.size), cpu_rows=int(layout.cpu_ids.size),
        policy=layout.policy, segment_batches=int(layout.segment_batches),
        num_segments=layout.packed_segments, packed_rows=packed_rows,
        packed_batches=int(np.count_nonzero(batch_seg >= 0)), total_batches=batch_seg.shape[0],
        max_disk_blowup=float(options.max_disk_blowup), blowup=round(blowup, 6),
        expected_read_amplification=round(amp, 6), min_working_set=layout.min_working_set,
        largest_batch_rows=int(ninput.max()) if ninput.size else 0,
        arrays={k: v for k, v in pack_array_names(name).items()
                if layout.scheduled or not k.startswith("insert")},
        packed_epochs=_packed_epochs(batch_seg, plan.meta.batches_per_epoch),
        stats={"fallback_positions": fallback_positions, "base_scans": scans,
               "cpu_inserts": int(layout.ins_pos.size) if layout.ins_pos is not None else 0,
               "cap_rows": layout.cap_rows, "segment_bytes_read": seg_read,
               "positions": int(ninput.sum())})


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
        self.fb_ids = np.empty(int(layout.ninput.max()) if n else 0, dtype=np.int64)
        # The reader's scratch unit for one base-array row (its worst-case aligned span).
        self.unit = aligned_span(ALIGN - 1, layout.row_bytes)[1]

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
            _assign(lay.plan.records, lay.offs, lay.ninput, lay.pstart, g0, g1, self.batch_seg,
                    self.seg_first_row, lay.node_tier, lay.node_slot, lay.hit, self.mark,
                    self.rowmap, out_tier, out_slot, self.node_of_row, lay.fmeta.offset,
                    lay.row_bytes, self.fallback, self.fb_ids, self.unit, AIO_MAX_RUN_UNITS)
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
            self._crc = checksum(mv[pos * rb:(pos + take) * rb], self._crc)
            pos += take
            self._row += take
        self.writer.append(rows)

    def close(self) -> None:
        self._close_done()
        if self._seg != self.ends.size:
            raise AssertionError(f"packed rows end at {self._row}, segments at "
                                 f"{int(self.ends[-1])}")
        self.writer.close()
