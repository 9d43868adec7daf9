"""A cost model of epoch load time, and the automatic GPU / CPU / disk split it drives.

The model adds, per batch of an epoch:

* memory-tier rows: ``rows / gather_rows_per_s`` (the reader's assembly kernel);
* SSD segments (one per ``segment_batches`` batches): ``request_s + aligned_bytes /
  seq_read_Bps``, plus the assembly of the batch's cold rows out of the segment buffer
  and, when reads are verified, the segment's CRC-32 (``aligned_bytes / crc_Bps``);
* base-array fallback rows: ``aligned_bytes / row_read_Bps`` (small random reads);
* a fixed ``batch_overhead_s`` (index slicing, Python).

Segment reads overlap the CPU work (the reader reads one segment ahead). Bandwidths come
from :func:`probe` (a few seconds of measurement on the store's own disk, the reads and
the CPU work run side by side as in the reader) or are given. :func:`choose_split` evaluates candidate layouts inside a CPU (and
GPU) budget — for each segment length, and for no segments at all, the largest cache
that still fits beside the working set, one prefetched batch and (when most batches are
packed) the segment read-ahead buffer — and keeps the one with the smallest predicted
time averaged over the epochs the loader will cycle. The average matters when the
disk-blowup cap packs only the plan's first batches: epoch 0 then looks fast and the
others fall back to base-array reads, where a larger cache (the segment buffer's bytes
spent on hot rows) saves more. A candidate that a lower bound on its prediction
(:func:`split_floor`: every node of an epoch that its cache cannot hold when the epoch
starts is read at least once) already puts behind the best one found is not laid out: with a scheduled CPU tier each
layout simulates the policy over the whole plan, the bulk of the search's time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from ..errors import UsageError
from ..plan import PlanReader
from ..store import ALIGN, Store
from ..store.files import DirectReader, aligned_empty, checksum, evict
from ..store.format import align_down
from ..tiers.assemble import assemble_rows, warm_up
from ..tiers.ssd import BaseRowTier, aligned_span
from ..units import format_size
from .layout import Layout, _packed_epochs, plan_layout
from .options import PackOptions
from ..workingset import device_overhead, refuse_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bandwidths:
    seq_read_Bps: float = 600e6  # large O_DIRECT reads
    request_s: float = 1e-4  # fixed cost of one segment request
    row_read_Bps: float = 80e6  # 4 KiB-ish random reads, several in flight
    gather_rows_per_s: float = 8e6  # batch assembly (assemble_rows), rows per second
    batch_overhead_s: float = 3e-4
    crc_Bps: float = 3e9  # zlib CRC-32: checking a segment on read (``verify_reads``)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


#: Bytes the sequential probe reads: enough that a disk's burst allowance or a cache of a
#: few hundred MB does not set the figure.
PROBE_SEQ_BYTES = 768 << 20
#: Segment-sized requests for the sequential probe (what a pack is read with).
PROBE_REQUEST = 8 << 20
#: Smallest file of the store's own data the sequential probe reads instead of writing a
#: scratch file. A file written moments ago is a poor measure: a virtual disk may serve it
#: from a host-side cache (measured here: 1.3-1.7 GB/s for some fresh files against
#: 0.5-0.6 GB/s for most reads of the same disk).
PROBE_MIN_AT_REST = 256 << 20


def _write_probe_data(path: Path, nbytes: int) -> None:
    """``nbytes`` (rounded up to :data:`PROBE_REQUEST`) of pseudo-random data to probe
    reads with, fsync'd. Every 4 KiB page starts with a distinct word: no two pages are
    equal, so a deduplicating disk cannot serve the probe from one copy."""
    chunk = np.random.default_rng(0).integers(0, 2**63, PROBE_REQUEST // 8, dtype=np.uint64)
    with open(path, "wb") as f:
        for i in range(0, nbytes, PROBE_REQUEST):
            chunk[::ALIGN // 8] = np.arange(i // 8, i // 8 + PROBE_REQUEST // 8,
                                            ALIGN // 8, dtype=np.uint64)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def _at_rest_file(store: Store, nbytes: int) -> Path | None:
    """The store's largest data file (the features, or an earlier pack's rows) when it
    holds at least ``min(nbytes, PROBE_MIN_AT_REST)`` bytes."""
    files = [store.file_path(store.array_meta("features"))]
    files += [f for f in (store.path / "packs").glob("*.bin") if f.is_file()]
    sizes = [(f.stat().st_size, f) for f in files if f.exists()]
    if not sizes:
        return None
    size, best = max(sizes)
    return best if size >= min(nbytes, PROBE_MIN_AT_REST) else None


def _seq_probe_file(store: Store, nbytes: int, seq_path: Path | None = None
                    ) -> tuple[Path, bool]:
    """The file the sequential probe reads: ``seq_path`` when given, else the store's own
    data at rest (:func:`_at_rest_file`), else a scratch file of ``nbytes`` written for
    the probe (removed afterwards; the second value says so; reads of it may come from
    the disk's write cache and overstate the speed: a warning says so)."""
    if seq_path is not None:
        seq_path = Path(seq_path)
        if not seq_path.is_file():
            raise UsageError(f"probe file {seq_path} does not exist: give an existing file "
                             "of data at rest (a few hundred MB or more) on the store's disk")
        if seq_path.stat().st_size < ALIGN:
            raise UsageError(f"probe file {seq_path} holds {seq_path.stat().st_size} bytes: "
                             "give a file of data at rest (a few hundred MB or more) on the "
                             "store's disk")
        return seq_path, False
    at_rest = _at_rest_file(store, nbytes)
    if at_rest is not None:
        return at_rest, False
    path = store.file_path(store.array_meta("features"))
    log.warning("the store's files are smaller than %s: probing the disk with a freshly "
                "written scratch file, which a caching disk may serve faster than data at "
                "rest (give Bandwidths, or probe a larger file)", format_size(PROBE_MIN_AT_REST))
    scratch = store.path / "packs" / ".costmodel-probe.tmp"
    scratch.parent.mkdir(exist_ok=True)
    try:
        _write_probe_data(scratch, nbytes)
    except OSError:
        scratch.unlink(missing_ok=True)
        return path, False  # no room for the scratch file: the feature file will do
    return scratch, True


class _AssemblyWork:
    """Batches for the reader's own assembly kernel (:func:`assemble_rows`): a random mix
    of CPU-tier rows (from a 64 MiB table) and segment rows (from a 16 MiB buffer), each
    batch of ``batch_rows`` built into a freshly allocated array as
    :meth:`TieredReader.read_batch` does (its first-touch page faults included)."""

    def __init__(self, fmeta, rng: np.random.Generator, *, positions: int = 400_000,
                 batch_rows: int = 16_384):
        self.d = fmeta.shape[1] if len(fmeta.shape) > 1 else 1
        self.dtype = fmeta.np_dtype
        rb = max(fmeta.row_bytes, 1)
        self.table = np.zeros((max(1, min(fmeta.shape[0], (64 << 20) // rb)), self.d), self.dtype)
        self.seg = np.zeros((max(1, (16 << 20) // rb), self.d), self.dtype)
        self.tier = rng.integers(1, 3, size=positions).astype(np.uint8)
        self.slot = np.where(self.tier == 1, rng.integers(0, self.table.shape[0], size=positions),
                             rng.integers(0, self.seg.shape[0], size=positions)).astype(np.int32)
        self.starts = list(range(0, positions, batch_rows))
        self.batch_rows = batch_rows
        warm_up(self.dtype)

    def batch(self, k: int) -> int:
        """Build batch ``k`` (cycling); returns its rows."""
        a = self.starts[k % len(self.starts)]
        b = min(self.tier.size, a + self.batch_rows)
        out = np.empty((b - a, self.d), self.dtype)
        assemble_rows(self.tier[a:b], self.slot[a:b], self.table, 0, self.seg, out, True)
        return b - a


def _pipeline_probe(path: Path, nbytes: int, work: _AssemblyWork) -> tuple[float, float, float]:
    """The reader's pipeline in miniature: a thread reads ``nbytes`` of ``path`` in
    :data:`PROBE_REQUEST` O_DIRECT requests (as the segment read-ahead does) while this
    thread assembles batches and checks CRC-32s (as the consumer does), each rate measured
    under the other's interference. Returns (read B/s, assembled rows/s, CRC B/s)."""
    result: dict[str, Any] = {}
    done = threading.Event()

    def read() -> None:
        try:
            buf = aligned_empty(PROBE_REQUEST)
            with DirectReader(path) as r:
                t0 = time.perf_counter()
                for off in range(0, nbytes, PROBE_REQUEST):
                    r.read_into(buf[:min(PROBE_REQUEST, nbytes - off)], off)
                result["seq"] = nbytes / max(time.perf_counter() - t0, 1e-9)
        except BaseException as err:  # re-raised by the caller
            result["error"] = err
        finally:
            done.set()

    crc_buf = np.random.default_rng(1).integers(0, 255, PROBE_REQUEST, dtype=np.uint8)
    rows = crc_bytes = k = 0
    t_asm = t_crc = 0.0
    thread = threading.Thread(target=read, name="oocstore-probe-read", daemon=True)
    thread.start()
    while not done.is_set() or k == 0:
        t0 = time.perf_counter()
        rows += work.batch(k)
        t1 = time.perf_counter()
        checksum(crc_buf)
        t2 = time.perf_counter()
        crc_bytes += crc_buf.size
        t_asm, t_crc, k = t_asm + t1 - t0, t_crc + t2 - t1, k + 1
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["seq"], rows / max(t_asm, 1e-9), crc_bytes / max(t_crc, 1e-9)


def probe(store: Store, *, seq_bytes: int = PROBE_SEQ_BYTES, rows: int = 4000,
          seq_path: Path | None = None) -> Bandwidths:
    """Measure the bandwidths on this machine, cold: sequential segment-sized O_DIRECT
    reads over up to ``seq_bytes`` of data at rest (``seq_path``, or the store's largest
    data file, or a scratch file when those are small: :func:`_seq_probe_file`), with the
    batch assembly and CRC-32 checks running beside them as in the reader
    (:func:`_pipeline_probe`); then small random row reads of the feature file."""
    fmeta = store.array_meta("features")
    fpath = store.file_path(fmeta)
    # packs are read at most a few times the feature bytes per epoch: no need to probe more
    seq_bytes = min(seq_bytes, 8 * fmeta.nbytes)
    spath, scratch = _seq_probe_file(store, seq_bytes, seq_path)
    log.info("sequential probe reads %s", spath)
    try:
        nbytes = align_down(min(seq_bytes, spath.stat().st_size)) or ALIGN
        rng = np.random.default_rng(0)
        work = _AssemblyWork(fmeta, rng)
        evict(spath)
        seq, gather, crc = _pipeline_probe(spath, nbytes, work)
        with DirectReader(spath) as r:
            small = aligned_empty(ALIGN)
            t0 = time.perf_counter()
            for i in range(64):
                r.read_into(small, (i * 7919 * ALIGN) % max(nbytes, ALIGN))
            request = (time.perf_counter() - t0) / 64
    finally:
        if scratch:
            spath.unlink(missing_ok=True)
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(fmeta.shape[0], size=min(rows, fmeta.shape[0]), replace=False))
    base = BaseRowTier(fpath, fmeta)
    out = np.empty((ids.size, fmeta.shape[1] if len(fmeta.shape) > 1 else 1), fmeta.np_dtype)
    try:
        evict(fpath)
        t0 = time.perf_counter()
        base.gather(ids, out)
        row_bps = base.bytes_read / max(time.perf_counter() - t0, 1e-9)
    finally:
        base.close()
    bw = Bandwidths(seq_read_Bps=seq, request_s=request, row_read_Bps=row_bps,
                    gather_rows_per_s=gather, crc_Bps=crc)
    log.info("probed bandwidths: %s", bw)
    return bw


def predict_epoch(layout: Layout, bw: Bandwidths, epoch: int = 0,
                  cold: np.ndarray | None = None, read_ahead: bool = True,
                  verify: bool = True) -> dict[str, Any]:
    """Predicted seconds to load every batch of ``epoch`` through ``layout``'s tiers.

    With ``read_ahead`` (the reader's second segment buffer) the reader runs a two-stage
    pipeline: segment ``k + 1`` is read while the consumer works on segment ``k`` (its
    batches' assembly and, with ``verify``, the segment's CRC-32), so segment ``k`` costs
    ``max(cpu_k, io_{k+1})`` after the first read. Batches outside every segment
    (base-array fallback reads, or memory tiers only) run serially. Without
    ``read_ahead`` every read and every batch's work add up."""
    plan = layout.plan
    starts = np.concatenate([[0], np.cumsum(plan.meta.batches_per_epoch)])
    b0, b1 = int(starts[epoch]), int(starts[epoch + 1])
    rb = layout.row_bytes
    cold = layout.cold_per_batch() if cold is None else cold
    ninput = layout.ninput[b0:b1]
    cold_e = cold[b0:b1]
    bseg = layout.batch_seg[b0:b1]
    packed = bseg >= 0
    host_rows = int((ninput - cold_e).sum())
    ssd_rows = int(cold_e[packed].sum())
    fallback_rows = int(cold_e[~packed].sum())
    segs = np.flatnonzero((layout.seg_first >= b0) & (layout.seg_first < b1))
    seg_span = np.array([aligned_span(ALIGN - 1, int(r) * rb)[1] for r in layout.seg_rows[segs]],
                        dtype=np.float64)
    seg_bytes = int(seg_span.sum())
    _, row_span = aligned_span(0, rb)
    ins_b = layout.ins_count[b0:b1] if layout.ins_count is not None else np.zeros(b1 - b0)
    inserts = int(ins_b.sum())
    parts = {
        "memory_gather_s": (host_rows + inserts) / bw.gather_rows_per_s,
        "ssd_read_s": len(segs) * bw.request_s + seg_bytes / bw.seq_read_Bps,
        "ssd_verify_s": seg_bytes / bw.crc_Bps if verify else 0.0,
        "ssd_gather_s": ssd_rows / bw.gather_rows_per_s,
        "fallback_read_s": fallback_rows * row_span / bw.row_read_Bps,
        "overhead_s": (b1 - b0) * bw.batch_overhead_s,
    }
    reset = layout.cpu_ids.size * rb / bw.seq_read_Bps \
        if layout.scheduled and epoch > 0 else 0.0  # a scheduled tier restarts each epoch
    parts["ssd_read_s"] += reset
    # per batch: the rows the assembly builds (all but base-array reads), admissions
    cpu_b = ((ninput - np.where(packed, 0, cold_e)) + ins_b) / bw.gather_rows_per_s \
        + bw.batch_overhead_s
    io = parts["ssd_read_s"]
    cpu = parts["memory_gather_s"] + parts["ssd_gather_s"] + parts["ssd_verify_s"] \
        + parts["overhead_s"]
    if read_ahead and len(segs):
        io_k = bw.request_s + seg_span / bw.seq_read_Bps
        cpu_k = np.bincount(bseg[packed] - segs[0], weights=cpu_b[packed], minlength=len(segs))
        cpu_k = cpu_k[:len(segs)] + (seg_span / bw.crc_Bps if verify else 0.0)
        piped = reset + io_k[0] + float(np.maximum(cpu_k, np.append(io_k[1:], 0.0)).sum())
        seconds = piped + float(cpu_b[~packed].sum()) + parts["fallback_read_s"]
    else:
        seconds = io + cpu + parts["fallback_read_s"]
    return {"seconds": seconds, **parts, "batches": b1 - b0, "cpu_inserts": inserts,
            "host_rows": host_rows, "ssd_rows": ssd_rows, "fallback_rows": fallback_rows,
            "ssd_bytes": seg_bytes}


def choose_split(store: Store, plan: PlanReader, *, cpu_budget: int, gpu_budget: int | None = None,
                 max_disk_blowup: float = 4.0, bw: Bandwidths | None = None,
                 policy: str = "static", exhaustive: bool = False,
                 base_reads_only: bool = False, empty_layouts: dict | None = None
                 ) -> tuple[PackOptions, dict[str, Any], list[dict[str, Any]]] | None:
    """Cache sizes (and segment length) with the smallest predicted epoch load time
    inside ``cpu_budget`` (and ``gpu_budget`` on a CUDA run), for a CPU tier of
    ``policy`` (whose tables are part of the working set). Returns the options, the
    chosen prediction and every candidate evaluated.

    A candidate whose :func:`split_floor` (a lower bound on its prediction that needs no
    cache-sized layout and no schedule) exceeds the best prediction found so far cannot
    be chosen: it is not evaluated (nor listed) unless ``exhaustive``. The choice is the
    same either way; what the bound saves is the candidate's layouts, and with a
    scheduled policy one simulation of the plan per layout.

    ``base_reads_only``: the caller uses the choice only where it leaves rows to the base
    array. The search returns ``None`` as soon as the choice is known to pack every batch
    (:func:`_packed_from_here`), unless ``exhaustive``.

    ``empty_layouts``: a dict shared by searches of one plan, policy and GPU budget that
    differ in ``cpu_budget`` only; each split's layout with no CPU tier (which the CPU
    budget does not change: the segment length is the split's) is made once for all."""
    bw = bw or Bandwidths()
    rb = store.array_meta("features").row_bytes
    candidates = []
    best = chosen = None
    # Segment lengths 1..8 under the blowup cap, and no segments at all (every cold row
    # read from the base array): where the cap packs only a small part of the plan, the
    # segment buffer is better spent on cache rows.
    specs = [(1, 0.0)] if max_disk_blowup == 0.0 else \
        [(1, max_disk_blowup), (2, max_disk_blowup), (4, max_disk_blowup), (8, max_disk_blowup),
         (1, 0.0)]
    empties = {} if empty_layouts is None else empty_layouts  # (S, cap) -> options, layout

    def empty(i: int) -> tuple[PackOptions, Layout]:
        if specs[i] not in empties:
            empties[specs[i]] = _empty_split(store, plan, *specs[i], policy=policy, rb=rb,
                                             gpu_budget=gpu_budget)
        base, lay = empties[specs[i]]
        return dataclasses.replace(base, cpu_budget=cpu_budget), lay

    def floor(i: int) -> float:
        lay = empty(i)[1]
        return split_floor(store, plan, bw, cap_rows=lay.cap_rows, gpu_rows=lay.gpu_ids.size,
                           capacity_rows=_most_cache(store, plan, lay, cpu_budget) // rb)

    for i in range(len(specs)):
        base, lay = empty(i)
        if best is not None and not exhaustive and floor(i) > best * (1 + 1e-9):
            continue
        opts, layout = _fit_cache(store, plan, base, lay, cpu_budget=cpu_budget,
                                  gpu_budget=gpu_budget, rb=rb)
        mws = layout.min_working_set
        cpu_need = mws["cpu"] - (mws["gpu_tier_bytes"] if gpu_budget else 0)
        if cpu_need > cpu_budget:
            continue
        pred = _mean_prediction(layout, bw)
        candidates.append({"options": opts, "prediction": pred, "min_working_set": mws,
                           "segment_batches": layout.segment_batches,
                           "blowup": layout.packed_rows * rb / max(1, store.array_meta("features").nbytes)})
        if best is None or pred["mean_epoch_s"] < best:
            best, chosen = pred["mean_epoch_s"], candidates[-1]
        if base_reads_only and not exhaustive and not chosen["min_working_set"]["base_read_bytes"] \
                and _packed_from_here(range(i + 1, len(specs)), empty, floor, best):
            return None
    if not candidates:
        lay = plan_layout(store, plan, PackOptions(max_disk_blowup=max_disk_blowup, segment_batches=1))
        refuse_split(cpu_budget, plan.name, lay.min_working_set)
    return chosen["options"], chosen["prediction"], candidates


def _empty_split(store: Store, plan: PlanReader, S: int, cap: float, *, policy: str, rb: int,
                 gpu_budget: int | None) -> tuple[PackOptions, Layout]:
    """The options of the split with segments of ``S`` batches under the blowup ``cap``
    (the GPU tier sized to ``gpu_budget``; no CPU tier yet, no CPU budget), and their
    layout: no CPU tier, so no schedule to simulate."""
    base = PackOptions(max_disk_blowup=cap, segment_batches=S, policy=policy)
    gpu_cache = 0
    if gpu_budget:
        lay0 = plan_layout(store, plan, base)
        over = device_overhead(int(lay0.ninput.max()) if lay0.ninput.size else 0, rb,
                               plan.meta.batch_size, 1 << 40)
        gpu_cache = max(0, gpu_budget - over) // rb * rb
    base = dataclasses.replace(base, gpu_cache=gpu_cache, gpu_budget=gpu_budget)
    return base, plan_layout(store, plan, base)


def _packed_from_here(rest, empty, floor, best: float) -> bool:
    """Whether none of the splits ``rest`` (indices; ``empty(i)``: options and layout
    with no CPU tier, ``floor(i)``: :func:`split_floor`) can be chosen with rows left to
    the base array, beside a best prediction ``best`` that packs every batch. A split
    whose layout with no CPU tier packs every batch packs every batch at any cache size
    (a cache only turns cold rows warm, so no segment grows past the cap); any other
    must be bounded above ``best``."""
    for i in rest:
        lay = empty(i)[1]
        if (lay.batch_seg < 0).any() and floor(i) <= best * (1 + 1e-9):
            return False
    return True


def _fit_cache(store: Store, plan: PlanReader, base: PackOptions, empty: Layout, *,
               cpu_budget: int, gpu_budget: int | None, rb: int) -> tuple[PackOptions, Layout]:
    """The largest CPU cache that fits beside the rest of the working set of the split
    ``base`` (``empty``: its layout with no CPU tier), and its layout: the working set
    shrinks as the cache grows (fewer cold rows per segment), so the size is iterated to
    a fit (at most three rounds), each size laid out once."""
    gpu_cache = base.gpu_cache
    cpu_cache = 0
    layout, laid = empty, base
    rooms = {0: _room(empty, cpu_budget, gpu_budget, gpu_cache, rb)}  # size -> room
    for _ in range(3):
        if cpu_cache not in rooms:
            laid = dataclasses.replace(base, cpu_cache=cpu_cache)
            layout = plan_layout(store, plan, laid)
            rooms[cpu_cache] = _room(layout, cpu_budget, gpu_budget, gpu_cache, rb)
        if rooms[cpu_cache] == cpu_cache:
            break
        cpu_cache = rooms[cpu_cache]
    opts = dataclasses.replace(base, cpu_cache=cpu_cache)
    if opts != laid:  # the loop stopped before a fit: lay out the last size found
        layout = plan_layout(store, plan, opts)
    return opts, layout


def _most_cache(store: Store, plan: PlanReader, empty: Layout, cpu_budget: int) -> int:
    """An upper bound on the CPU cache bytes :func:`_fit_cache` gives the split laid out
    as ``empty`` (no CPU tier): the budget less one prefetched batch and the parts of the
    working set that no cache size lowers. Staging, records, labels, device items and
    the GPU tier do not change with the cache. The tables only grow with it (admissions,
    packed segments) when ``empty`` packs no segment. The base-row buffers stay when no
    rows may be packed and some node is cold at any cache size the bound allows."""
    mws = empty.min_working_set
    fixed = mws["cpu"] - mws["cpu_tier_bytes"] - mws["largest_segment_bytes"] \
        - mws["base_read_bytes"] - mws["tables_bytes"]
    if empty.packed_segments == 0:
        fixed += mws["tables_bytes"]
    most = max(0, cpu_budget - fixed - mws.get("prefetch_bytes", 0))
    if empty.cap_rows == 0 and mws["base_read_bytes"]:
        rb = empty.row_bytes
        cold = epoch_distinct_nodes(store, plan) - empty.gpu_ids.size - most // rb
        if (cold > 0).any():  # so at every smaller cache too
            most = max(0, most - mws["base_read_bytes"])
    return most


def _mean_prediction(layout: Layout, bw: Bandwidths) -> dict[str, Any]:
    """Epoch 0's prediction with ``mean_epoch_s`` added. The cap packs the plan's first
    batches; later epochs may fall back to base-array reads. A training run cycles the
    loader's epochs (the packed ones, or all of the plan's when none is packed whole):
    their mean is compared, not epoch 0 alone."""
    cold = layout.cold_per_batch()
    packed_epochs = _whole_epochs(layout)
    epochs = range(packed_epochs if packed_epochs else layout.plan.meta.epochs)
    pred = predict_epoch(layout, bw, cold=cold)
    pred["mean_epoch_s"] = float(np.mean([pred["seconds"] if e == 0 else
                                          predict_epoch(layout, bw, e, cold=cold)["seconds"]
                                          for e in epochs]))
    return pred


@numba.njit(cache=True, nogil=True)
def _distinct_per_epoch(data, offs, ninput, epoch_starts, n_nodes):
    """Distinct input nodes of each epoch."""
    n_epochs = epoch_starts.shape[0] - 1
    out = np.zeros(n_epochs, dtype=np.int64)
    seen = np.full(n_nodes, -1, dtype=np.int32)  # last epoch that read the node
    for e in range(n_epochs):
        for b in range(epoch_starts[e], epoch_starts[e + 1]):
            o = offs[b]
            for i in range(ninput[b]):
                v = data[o + i]
                if seen[v] != e:
                    seen[v] = e
                    out[e] += 1
    return out


#: Distinct input nodes per epoch, per open plan reader (:func:`split_floor`).
_DISTINCT: "weakref.WeakKeyDictionary[PlanReader, np.ndarray]" = weakref.WeakKeyDictionary()


def epoch_distinct_nodes(store: Store, plan: PlanReader) -> np.ndarray:
    """Distinct input nodes of each epoch of ``plan`` (one pass, once per reader)."""
    got = _DISTINCT.get(plan)
    if got is None:
        index = np.asarray(plan.index())
        starts = np.concatenate([[0], np.cumsum(plan.meta.batches_per_epoch)]).astype(np.int64)
        got = _DISTINCT[plan] = _distinct_per_epoch(
            plan.records, np.ascontiguousarray(index[:, 0]), np.ascontiguousarray(index[:, 3]),
            starts, store.array_meta("features").shape[0])
    return got


def split_floor(store: Store, plan: PlanReader, bw: Bandwidths, *, cap_rows: int,
                capacity_rows: int, gpu_rows: int) -> float:
    """A lower bound on ``mean_epoch_s`` of :func:`choose_split` for every layout of
    ``plan`` with at most ``gpu_rows`` GPU-tier rows, ``capacity_rows`` CPU-tier rows
    (any policy) and ``cap_rows`` packed rows, worked out without a layout.

    Why it holds: a CPU tier, static or scheduled, starts each epoch holding at most
    ``capacity_rows`` rows and admits a row only after a miss, so at least ``K_e =
    distinct_e - gpu_rows - capacity_rows`` nodes of epoch ``e`` are cold at their first
    read. Each is a row of a packed segment (read at ``row_bytes / seq_read_Bps`` at
    least: a segment's aligned span covers its rows) or a base-array row read
    (``aligned row / row_read_Bps``), and an epoch's prediction is at least its segment
    reads plus its base-array reads (the pipeline hides CPU work behind reads, never
    reads). Packed rows over the whole plan are at most ``cap_rows``, spent where they
    save most. The mean is over the first ``k`` epochs for some ``k`` (the packed ones,
    or all): the smallest of those means is the bound."""
    k = np.maximum(0, epoch_distinct_nodes(store, plan) - int(gpu_rows) - int(capacity_rows))
    if k.size == 0:
        return 0.0
    rb = store.array_meta("features").row_bytes
    per_seg = rb / bw.seq_read_Bps
    per_row = aligned_span(0, rb)[1] / bw.row_read_Bps
    cold = np.cumsum(k).astype(np.float64)
    packed = np.minimum(cold, float(max(0, cap_rows)))
    sums = cold * per_row - packed * max(0.0, per_row - per_seg)
    return float(np.min(sums / np.arange(1, k.size + 1)))


def _room(layout: Layout, cpu_budget: int, gpu_budget: int | None, gpu_cache: int,
          rb: int) -> int:
    """The CPU cache bytes that fit beside ``layout``'s working set (less its CPU tier)."""
    mws = layout.min_working_set
    others = mws["cpu"] - mws["cpu_tier_bytes"] - (0 if gpu_budget else mws["gpu_tier_bytes"])
    # Leave room, before the cache, for what the loader takes next: one prefetched
    # batch (the floor is depth 0; a CUDA run's ring prefetches one anyway), so
    # reading overlaps training, and the reader's segment read-ahead buffer, which
    # the prediction counts on (reads overlapping assembly) — unless most batches
    # fall back to base-array reads, where the buffer would serve few reads and
    # the cache saves more.
    packed = layout.packed_segments and \
        int(np.count_nonzero(layout.batch_seg >= 0)) * 2 >= layout.batch_seg.size
    ahead = mws["largest_segment_bytes"] if packed else 0
    one = mws.get("prefetch_bytes", 0)
    return max(0, cpu_budget - others - ahead - one - (0 if gpu_budget else gpu_cache)) \
        // rb * rb


def _whole_epochs(layout: Layout) -> int:
    """Leading epochs of the plan whose every batch has a segment (what the loader
    cycles when there is at least one)."""
    return _packed_epochs(layout.batch_seg, layout.plan.meta.batches_per_epoch)
