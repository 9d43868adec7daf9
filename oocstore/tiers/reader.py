"""The tiered reader: batch ``b`` of epoch ``e`` -> exactly ``features[input_nodes]``.

It composes the tiers a pack describes — GPU tier, CPU tier, packed SSD segments, and
base-array row reads for what no segment covers — and charges every buffer it holds to
a :class:`~oocstore.budget.BudgetAccountant` when it is built, so a budget that cannot
hold one batch is refused before the first read.

On a machine without CUDA (or with ``device="cpu"``) the pack's GPU tier is kept in host
memory and charged to the CPU budget.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
import weakref
from typing import Any

import numpy as np

from ..budget import BudgetAccountant, MemoryBudget
from ..checked_read import CheckedRows, read_checked
from ..checked_read import ChunkCheck as _ChunkCheck
from ..errors import ChecksumError, FormatError, UsageError
from ..pack.catalog import list_packs, load_pack  # noqa: F401  (looked up here by callers)
from ..pack.format import BASE, CPU, GPU, SSD, PackMeta, reader_table_bytes
from ..plan import PlanReader
from ..store import Store
from ..store import ALIGN
from ..store.files import DirectReader, aligned_empty
from ..store.format import align_up
from ..units import format_size
from ..workingset import (READ_AHEAD_SEGMENTS, WorkingSet, base_read_queue,  # noqa: F401
                          read_ahead_buffers, reader_items)
from .assemble import ALL, MEMORY, SEGMENT, AssemblyHelper, assemble_rows, scatter_rows
from .device import DeviceTier
from .memory import MemoryTier
from .ssd import BaseRowTier, SegmentTier, base_read_buffer_bytes

log = logging.getLogger(__name__)


def _torch_dtype(dtype: np.dtype):
    import torch

    return {np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float16}[np.dtype(dtype)]


#: Bounce buffer of :func:`_read_into`: big enough for full-speed sequential O_DIRECT
#: reads, small enough not to matter next to the buffers the budget charges.
_BOUNCE = 8 << 20


def _read_into(store: Store, name: str, out: np.ndarray, verify: bool = True) -> None:
    """Fill ``out`` (contiguous, any alignment) with array ``name`` using sequential
    O_DIRECT reads through one small aligned bounce buffer, so loading a tier never
    needs more memory than the tier itself. With ``verify``, every chunk checksum is
    checked on the way (:class:`~oocstore.errors.ChecksumError` names file and chunk)."""
    meta = store.array_meta(name)
    check = _ChunkCheck(store, name, meta, "re-pack it (`oocstore pack ... --overwrite`)") \
        if verify else None
    dest = out.reshape(-1).view(np.uint8)
    if dest.size != meta.nbytes:
        raise FormatError(f"array {name!r}: {meta.nbytes} bytes do not fit a buffer of "
                          f"{dest.size}")
    if not meta.nbytes:
        return
    bounce = aligned_empty(_BOUNCE)
    with DirectReader(store.file_path(meta)) as r:
        done = 0
        while done < meta.nbytes:
            n = min(_BOUNCE, meta.nbytes - done)
            start = meta.offset + done  # offset and _BOUNCE are 4 KiB multiples
            length = align_up(n)
            got = r.read_into(bounce[:length], start)
            if got < n:
                raise FormatError(f"array {name!r}: file {r.path} is truncated; run "
                                  "`oocstore verify`")
            dest[done:done + n] = bounce[:n]
            if check is not None:
                check.feed(bounce[:n])
            done += n
    if check is not None:
        check.finish()


def _read_whole(store: Store, name: str) -> np.ndarray:
    """A whole (small) array into RAM (see :func:`_read_into`)."""
    meta = store.array_meta(name)
    out = np.empty(meta.shape, dtype=meta.np_dtype)
    _read_into(store, name, out)
    return out


#: ``madvise`` advice asking for transparent huge pages (Linux; 0 elsewhere).
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", 14)
_HUGE = 2 << 20


def advise_huge_pages(arr: np.ndarray) -> bool:
    """Ask the kernel to back the 2 MiB-aligned interior of ``arr`` with transparent huge
    pages (before it is first written). The CPU tier is gathered from at random: with
    4 KiB pages nearly every row costs a TLB miss and a page walk, with 2 MiB pages the
    whole tier stays in the TLB. Advice only: returns whether the kernel accepted it;
    nothing changes in what memory is used (the aligned interior is inside ``arr``)."""
    if arr.nbytes < 2 * _HUGE:
        return False
    addr = arr.ctypes.data
    lo = -(-addr // _HUGE) * _HUGE
    hi = (addr + arr.nbytes) // _HUGE * _HUGE
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo),
                            ctypes.c_int(_MADV_HUGEPAGE)) == 0
    except (OSError, AttributeError):
        return False


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def assemble_batch(helper: AssemblyHelper | None, tier, slot, host_rows, gpu_rows, seg_rows,
                   out, gpu_on_host, gpu_slots, part=ALL) -> np.ndarray:
    """One batch's rows from the memory tiers and its segment (:func:`assemble_rows`; all
    of them or one ``part``), on the calling thread and ``helper``'s where there is one."""
    if helper is None:
        return assemble_rows(tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host,
                             gpu_slots, part)
    return helper.assemble(tier, slot, host_rows, gpu_rows, seg_rows, out, gpu_on_host,
                           gpu_slots, part)


#: Alignment of the batch buffers the reader allocates: the assembly kernel writes rows of
#: 64-byte multiples with streaming stores into 64-byte aligned buffers
#: (``tiers/assemble.py``).
_OUT_ALIGN = 64


def _aligned_rows(rows: int, dim: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised ``[rows, dim]`` array whose first byte is :data:`_OUT_ALIGN`-aligned
    (numpy aligns large arrays to 16 bytes only)."""
    dtype = np.dtype(dtype)
    raw = np.empty(rows * dim * dtype.itemsize + _OUT_ALIGN, dtype=np.uint8)
    skip = -raw.ctypes.data % _OUT_ALIGN
    return raw[skip:skip + rows * dim * dtype.itemsize].view(dtype).reshape(rows, dim)


class _Lease:
    """One hand-out of a pooled batch buffer: numpy arrays made from it (and every view
    of them, and tensors made from those) keep it alive; when the last one is gone the
    buffer goes back to the pool (:class:`_OutPool`)."""

    def __init__(self, buf: np.ndarray, n: int):
        self._buf = buf  # keeps the memory alive while any array uses it
        self.__array_interface__ = {"shape": (n, *buf.shape[1:]), "typestr": buf.dtype.str,
                                    "data": (buf.ctypes.data, False), "version": 3}


class _OutPool:
    """Batch buffers for :meth:`TieredReader.read_batch` without ``out``, reused once
    nothing refers to the batch handed out in them any more.

    A fresh buffer per batch costs a page fault and the kernel zeroing every page of it
    (about a third of the CPU time of assembling a batch of 512 B rows), every batch. A
    buffer here is reused only when the batch array, every view of it and every tensor
    made from it are gone (a weak reference to the :class:`_Lease` they all hold), so a
    batch a caller keeps is never overwritten: the pool then allocates another buffer.
    At most ``keep`` idle buffers are retained (the loader sets it to the batches its
    budget charges); more are freed."""

    def __init__(self, rows: int, dim: int, dtype: np.dtype, keep: int = 2):
        self.rows, self.dim, self.dtype = rows, dim, np.dtype(dtype)
        self.keep = keep
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._closed = False
        self.allocated = 0  # buffers made (fresh allocations)
        self.reused = 0

    def take(self, n: int) -> np.ndarray:
        with self._lock:
            buf = self._free.pop() if self._free else None
        if buf is None:
            buf = _aligned_rows(self.rows, self.dim, self.dtype)
            self.allocated += 1
        else:
            self.reused += 1
        lease = _Lease(buf, n)
        weakref.finalize(lease, self._give, buf)
        return np.asarray(lease)

    def fill(self, n: int) -> None:
        """Make ``n`` idle buffers now, their pages touched (huge pages where the kernel
        gives them), so the first batches do not pay for faulting fresh memory."""
        while True:
            with self._lock:
                if len(self._free) >= min(n, self.keep) or self._closed:
                    return
            buf = _aligned_rows(self.rows, self.dim, self.dtype)
            advise_huge_pages(buf)
            buf.fill(0)
            self.allocated += 1
            self._give(buf)

    def _give(self, buf: np.ndarray) -> None:
        with self._lock:
            if not self._closed and len(self._free) < self.keep:
                self._free.append(buf)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._free.clear()


class TieredReader:
    """Reads batches of a pack. ``device``: where the GPU tier lives — a CUDA device
    keeps it there (charged to the GPU budget) and :meth:`read_batch_tensor` delivers
    batches on that device; ``None`` (or ``"cpu"``) keeps it in host memory.
    ``reserve``: CPU-budget bytes to leave free before taking optional buffers.
    ``assembly_threads``: threads that copy a batch's rows from the memory tiers and its
    segment — 2 (the reading thread and a helper, :class:`~oocstore.tiers.assemble.
    AssemblyHelper`) or 1; default 2 where the process may run on two cores or more."""

    def __init__(self, store: Store, pack: str, *, budget: MemoryBudget | None = None,
                 accountant: BudgetAccountant | None = None, io_threads: int = 8,
                 device=None, gpu_tier_on_device: bool | None = None, reserve: int = 0,
                 verify_reads: bool = True, assembly_threads: int | None = None):
        self.store = store
        if assembly_threads is None:
            assembly_threads = 2 if _cores() >= 2 else 1
        if assembly_threads not in (1, 2):
            raise UsageError(f"assembly_threads={assembly_threads!r}: give 1 or 2 (1: rows are "
                             "copied on the reading thread only)")
        self._helper = AssemblyHelper() if assembly_threads == 2 else None
        # Checksums checked on read (tier loads and packed segments): see tiers/ssd.py.
        self.verify_reads = bool(verify_reads)
        self.meta = m = load_pack(store, pack)
        self.plan = PlanReader(store, m.plan)
        self.pack_fix = (f"re-pack it with `oocstore pack {store.path} --plan {m.plan} "
                         f"--name {pack} --overwrite`")
        pv = store.array_meta(self.plan.meta.arrays["index"]).version
        if pv != m.plan_version:
            raise FormatError(f"pack {pack!r} was made from an older version of plan "
                              f"{m.plan!r}: re-pack with `oocstore pack {store.path} "
                              f"--plan {m.plan} --name {pack} --overwrite`")
        self.accountant = accountant or BudgetAccountant(budget or MemoryBudget())
        import torch

        self.device = torch.device(device) if device is not None else None
        if gpu_tier_on_device is None:
            gpu_tier_on_device = self.device is not None and self.device.type != "cpu"
        self.gpu_on_host = not (gpu_tier_on_device and m.gpu_rows)
        # Everything required, itemised (oocstore/workingset.py), charged before any
        # buffer exists; the tables first, then checked before any tier, buffer or
        # thread exists: a damaged pack costs nothing.
        items = list(reader_items(m, tables_bytes=self._table_bytes(),
                                  gpu_on_host=self.gpu_on_host,
                                  base_read_bytes=base_read_buffer_bytes(m.row_bytes, io_threads)))
        fix = {"cpu": "lower the cache sizes when packing, sample with a smaller batch size, "
                      "or raise the cpu budget",
               "gpu": "lower the gpu cache when packing (`oocstore pack --gpu-cache`) or raise "
                      "the gpu budget"}
        self._charges = WorkingSet(items[:1]).charge(self.accountant, fix)
        tables = _PackTables(store, m, self.plan, self.pack_fix)
        self._charges += WorkingSet(items[1:]).charge(self.accountant, fix)
        # Spare segment buffers let the next reads overlap assembly, and spare base-read
        # slots put more rows in flight, each only where the budget has room once
        # everything required is charged; ``reserve``: bytes a caller (the loader) still
        # needs for its own required buffers.
        seg_bytes = m.min_working_set["largest_segment_bytes"]
        fits = lambda n: self.accountant.fits("cpu", n)  # noqa: E731
        ahead = read_ahead_buffers(fits, seg_bytes, reserve)
        self._charges += ahead.charge(self.accountant)
        more = 0
        if m.min_working_set.get("base_read_bytes"):
            slot = base_read_buffer_bytes(m.row_bytes, 1)
            queue = base_read_queue(fits, slot_bytes=slot, required_slots=io_threads,
                                    reserve=reserve)
            self._charges += queue.charge(self.accountant)
            more = queue.total("cpu") // slot
        base_meta = store.array_meta(m.features)
        self.base = BaseRowTier(store.file_path(base_meta), base_meta, threads=io_threads + more)
        self._open_tiers(store, m, tables, len(ahead))

    def _open_tiers(self, store: Store, m: PackMeta, tables: "_PackTables", read_ahead: int) -> None:
        """Read the tiers into their (charged) buffers and open the per-batch arrays."""
        import torch

        # Tiers are read straight into their final buffers (no second copy).
        self.gpu = None
        self._cpu_offset = m.gpu_rows if self.gpu_on_host else 0
        host = np.empty((self._cpu_offset + m.cpu_rows, m.feat_dim), dtype=np.dtype(m.dtype))
        advise_huge_pages(host)
        if self.gpu_on_host:
            _read_into(store, m.arrays["gpu_rows"], host[:m.gpu_rows], self.verify_reads)
        else:
            self.gpu = DeviceTier(_read_whole(store, m.arrays["gpu_rows"]),
                                  self.device or torch.device("cpu"))
        _read_into(store, m.arrays["cpu_rows"], host[self._cpu_offset:], self.verify_reads)
        self.host = MemoryTier(host, name="cpu")
        self.segments = SegmentTier(store.file_path(store.array_meta(m.arrays["rows"])),
                                    store.array_meta(m.arrays["rows"]), tables.segments,
                                    read_ahead=read_ahead,
                                    checksums=store.checksums(m.arrays["rows"]),
                                    verify=self.verify_reads,
                                    segment_crcs=tables.segment_crc)
        self.batch_segment = tables.batch_segment
        self._pos = tables.pos
        self._starts = np.concatenate([[0], np.cumsum(self.plan.meta.batches_per_epoch)])
        # Read per batch, each checksum chunk checked when first touched; every value is
        # bounds-checked by the assembly kernels before it is used.
        self._tier = CheckedRows(store, m.arrays["tier"], fix=self.pack_fix)
        self._slot = CheckedRows(store, m.arrays["slot"], fix=self.pack_fix)
        self.scheduled = "inserts" in m.arrays  # a scheduled CPU tier (any policy)
        if self.scheduled:
            self._inserts = CheckedRows(store, m.arrays["inserts"], fix=self.pack_fix)
            self._insert_offsets = tables.insert_offsets
        self._no_segment = np.zeros((0, m.feat_dim), dtype=np.dtype(m.dtype))
        self._next = (-1, -1)  # (epoch, batch) the scheduled CPU tier is ready for
        self._dirty = False  # whether the scheduled tier left its epoch-start state
        self.direct = self.segments.direct
        if not self.direct:
            log.info("O_DIRECT is not available for %s: reads go through the page cache",
                     store.path)
        self._out_dtype = np.dtype(m.dtype)
        # Buffers of batches read without ``out`` (charged: "batch staging" above, and
        # the loader's staging charges for the batches it holds).
        self._pool = _OutPool(m.largest_batch_rows, m.feat_dim, self._out_dtype)

    def _table_bytes(self) -> int:
        """What this reader holds besides tiers and buffers, for the whole run
        (:func:`~oocstore.pack.format.reader_table_bytes`)."""
        m, store, pm = self.meta, self.store, self.plan.meta

        def rows(part: str) -> int:
            shape = store.array_meta(m.arrays[part]).shape if part in m.arrays else ()
            return shape[0] if shape else 0

        return reader_table_bytes(
            total_batches=pm.total_batches, index_columns=self.plan.index().shape[1],
            epochs=pm.epochs, num_segments=m.num_segments, positions=rows("tier"),
            inserts=rows("inserts"), scheduled="inserts" in m.arrays,
            plan_data_bytes=store.array_meta(pm.arrays["data"]).nbytes)

    def keep_batch_buffers(self, n: int) -> None:
        """Retain up to ``n`` idle batch buffers for reads without ``out`` (the batches the
        caller's budget charges), made now; see :class:`_OutPool`."""
        self._pool.keep = max(1, int(n))
        self._pool.fill(self._pool.keep)

    @property
    def num_epochs(self) -> int:
        return self.plan.num_epochs

    def num_batches(self, epoch: int) -> int:
        return self.plan.num_batches(epoch)

    def batch_row(self, epoch: int, batch: int) -> int:
        if not 0 <= batch < self.plan.num_batches(epoch):
            raise IndexError(f"batch {batch} of epoch {epoch} out of range")
        return int(self._starts[epoch]) + batch

    def _reset_cpu_tier(self) -> None:
        """Put the scheduled CPU tier back in its epoch-start state (one sequential read)."""
        start = self._cpu_offset
        _read_into(self.store, self.meta.arrays["cpu_rows"], self.host.rows[start:],
                   self.verify_reads)
        self.segments.bytes_read += (self.host.rows.shape[0] - start) * self.meta.row_bytes

    def read_batch(self, epoch: int, batch: int, out: np.ndarray | None = None) -> np.ndarray:
        """``features[input_nodes(epoch, batch)]`` as ``[num_input, D]``.

        With a scheduled (Belady) CPU tier, batches are cheapest in plan order within an
        epoch; any other order resets the tier and replays the epoch up to ``batch``."""
        if self.scheduled and (epoch, batch) != self._next:
            if batch == 0 or self._next[0] != epoch or batch < self._next[1]:
                if self._dirty:
                    self._reset_cpu_tier()
                    self._dirty = False
                self._next = (epoch, 0)
            for b in range(self._next[1], batch):
                self._read(epoch, b, None)
        return self._read(epoch, batch, out)

    def advise(self, epoch: int, batch: int) -> None:
        """Start the disk reads batch ``batch`` of ``epoch`` needs, all at once, before
        any of them is waited for: its plan record and tier / slot entries (kernel
        read-ahead of their unchecked checksum chunks) and its segment (on an I/O thread,
        where a spare buffer is free). In an epoch's first batch these otherwise run one
        after the other in the reading thread; later batches find them fetched ahead
        already, and this costs a few table look-ups."""
        row = self.batch_row(epoch, batch)
        self.plan.advise(epoch, batch)
        p0, p1 = int(self._pos[row]), int(self._pos[row + 1])
        self._tier.advise(p0, p1)
        self._slot.advise(p0, p1)
        if self.scheduled:
            self._inserts.advise(int(self._insert_offsets[row]), int(self._insert_offsets[row + 1]))
        seg = int(self.batch_segment[row])
        if self.scheduled and batch and (epoch, batch) != self._next:
            return  # earlier batches are replayed first (read_batch): their segments first
        if seg >= 0 and seg != self.segments.current:
            self.segments.prefetch([seg, *self._next_segments(epoch, batch, row, seg)])

    def _read(self, epoch: int, batch: int, out: np.ndarray | None) -> np.ndarray:
        row = self.batch_row(epoch, batch)
        p0, p1 = int(self._pos[row]), int(self._pos[row + 1])
        n = p1 - p0
        if out is None:
            out = self._pool.take(n) if n <= self._pool.rows else \
                _aligned_rows(n, self.meta.feat_dim, self._out_dtype)
        if out.shape != (n, self.meta.feat_dim):
            raise ValueError(f"read_batch: out has shape {out.shape}, the batch needs "
                             f"({n}, {self.meta.feat_dim})")
        # The segment first: loading it issues the next reads, which then overlap the
        # rest of this batch's work.
        seg = int(self.batch_segment[row])
        nxt = self._next_segments(epoch, batch, row, seg)
        if seg >= 0:
            try:
                self.segments.load(seg, then=nxt)
            except ChecksumError as err:
                raise ChecksumError(f"epoch {epoch}, batch {batch} of pack {self.meta.name!r}: "
                                    f"{err}") from err
            seg_rows = self.segments.current_rows
        else:
            self.segments.prefetch(nxt)
            seg_rows = self._no_segment  # an SSD slot in an unpacked batch is invalid
        tier = self._tier.read(p0, p1)
        slot = self._slot.read(p0, p1)
        args = (tier, slot, self.host.rows, self._cpu_offset, seg_rows, out, self.gpu_on_host,
                self.meta.gpu_rows)
        if seg >= 0 and self.segments.read_ahead and batch + 1 < self.plan.num_batches(epoch) \
                and int(self.batch_segment[row + 1]) != seg:
            # The next batch needs another segment: once this segment's rows are in
            # ``out`` its buffer takes the next read, which then runs while the memory
            # tiers' rows (most of the batch) are copied.
            counts = assemble_batch(self._helper, *args, SEGMENT)
            self.segments.release(nxt)
            rest = assemble_batch(self._helper, *args, MEMORY)
            rest[4] += counts[4]
            counts = rest
        else:
            counts = assemble_batch(self._helper, *args, ALL)
        if counts[4]:
            self._refuse_slots(epoch, batch, tier, slot, seg_rows.shape[0])
        self.host.hits += int(counts[GPU] + counts[CPU])
        self.segments.hits += int(counts[SSD])
        if counts[BASE]:
            base = np.flatnonzero(tier == BASE)
            self.base.gather_at(self.plan.input_nodes(epoch, batch)[base], out, base)
        self._last_gpu = None
        if not self.gpu_on_host and counts[GPU]:
            self._last_gpu = np.flatnonzero(tier == GPU), slot
        if self.scheduled:
            i0, i1 = int(self._insert_offsets[row]), int(self._insert_offsets[row + 1])
            if i1 > i0:
                ins = self._inserts.read(i0, i1)
                if scatter_rows(out, ins[:, 0] - p0, self.host.rows, self._cpu_offset + ins[:, 1],
                                self._cpu_offset):
                    raise FormatError(
                        f"pack {self.meta.name!r}: a Belady insert of epoch {epoch}, batch "
                        f"{batch} (array {self.meta.arrays['inserts']!r}, rows {i0}..{i1}) "
                        f"points outside the batch's {n} rows or the cpu tier's "
                        f"{self.meta.cpu_rows} slots: the pack is damaged; {self.pack_fix}")
                self._dirty = True
            self._next = (epoch, batch + 1)
        return out

    def _next_segments(self, epoch: int, batch: int, row: int, seg: int) -> list[int]:
        """The segments of the batches after ``batch`` in this epoch that the segment
        tier can read ahead (distinct, in order, other than ``seg``): one per spare
        buffer, and one more for the current segment's buffer once it is released."""
        want = self.segments.ahead + 1 if self.segments.ahead else 0
        out: list[int] = []
        if not want:
            return out
        last = min(self.plan.num_batches(epoch) - 1 - batch,
                   want * max(1, int(self.meta.segment_batches)) + 1)
        for k in range(1, last + 1):
            s2 = int(self.batch_segment[row + k])
            if s2 >= 0 and s2 != seg and s2 not in out:
                out.append(s2)
                if len(out) == want:
                    break
        return out

    def _refuse_slots(self, epoch: int, batch: int, tier: np.ndarray, slot: np.ndarray,
                      seg_rows: int) -> None:
        """Raise the ``FormatError`` for a batch whose tier / slot entries the assembly
        kernel refused (the first offending position, by name)."""
        m = self.meta
        limits = {GPU: m.gpu_rows, CPU: m.cpu_rows, SSD: seg_rows}
        for i, (t, k) in enumerate(zip(tier.tolist(), slot.tolist())):
            if t == BASE:
                continue
            if t not in limits:
                what = f"tier {t} (valid: 0..3)"
            elif not 0 <= k < limits[t]:
                what = f"slot {k} outside the {limits[t]} rows of tier {t}"
            else:
                continue
            raise FormatError(f"pack {m.name!r}: epoch {epoch}, batch {batch}, position {i} has "
                              f"{what} (arrays {m.arrays['tier']!r} / {m.arrays['slot']!r}): the "
                              f"pack is damaged; {self.pack_fix}")
        raise FormatError(f"pack {m.name!r}: epoch {epoch}, batch {batch} has invalid tier / slot "
                          f"entries: the pack is damaged; {self.pack_fix}")

    def read_batch_tensor(self, epoch: int, batch: int, *, ring=None, stream=None):
        """The batch as a torch tensor on ``device``, ready to use on the caller's
        current stream. Without ``ring``: host tiers are assembled into a fresh staging
        buffer (pinned on CUDA), copied on the current stream, and the GPU tier's rows
        gathered there. With a :class:`~oocstore.tiers.staging.StagingRing` (and, on
        CUDA, a side ``stream``): :meth:`read_batch_async`, then the current stream
        waits for it."""
        import torch

        if ring is not None:
            x, event = self.read_batch_async(epoch, batch, ring, stream)
            if event is not None:
                current = torch.cuda.current_stream(x.device)
                current.wait_event(event)
                x.record_stream(current)
            return x
        device = self.device or torch.device("cpu")
        row = self.batch_row(epoch, batch)
        n = int(self._pos[row + 1] - self._pos[row])
        pin = device.type == "cuda"
        staging = torch.empty((n, self.meta.feat_dim), dtype=_torch_dtype(self._out_dtype),
                              pin_memory=pin)
        self.read_batch(epoch, batch, out=staging.numpy())
        x = staging.to(device, non_blocking=pin)
        if self._last_gpu is not None:
            pos, slot = self._last_gpu
            self.gpu.gather_into(torch.from_numpy(slot[pos].astype(np.int64)),
                                 torch.from_numpy(pos), x)
        return x

    def read_batch_async(self, epoch: int, batch: int, ring, stream=None):
        """Start delivering the batch to ``device``; returns ``(x, event)``.

        The host tiers are assembled into a slot of ``ring`` (a
        :class:`~oocstore.tiers.staging.StagingRing` sized for the pack's largest
        batch), ``x`` is allocated and copied from the slot on ``stream`` — on CUDA a
        side stream that the caller owns — and the GPU tier's rows are gathered into
        ``x`` on the same stream. On CUDA ``event`` is recorded on ``stream`` after that
        work and the slot goes back to the ring with it (reused only once the copy is
        done); before using ``x`` on another stream, that stream must
        ``wait_event(event)`` and ``x.record_stream(it)`` (so the caching allocator does
        not hand ``x``'s memory back to ``stream`` while that stream may still read it).
        On a CPU device ``event`` is ``None`` and ``x`` is ready."""
        import contextlib

        import torch

        device = self.device or torch.device("cpu")
        cuda = device.type == "cuda"
        if cuda and stream is None:
            raise ValueError("read_batch_async on CUDA needs the side stream to copy on")
        row = self.batch_row(epoch, batch)
        n = int(self._pos[row + 1] - self._pos[row])
        event, keep = None, None
        before = ring.held()
        try:
            # acquired inside the try: an interrupt (Ctrl-C) right after the ring hands
            # the slot out still gives it back (StagingRing.release_new)
            slot, host = ring.acquire(n)
            self.read_batch(epoch, batch, out=host)
            src = torch.from_numpy(host)
            gathered = None
            if self._last_gpu is not None:
                pos, slots = self._last_gpu
                gathered = (torch.from_numpy(slots[pos].astype(np.int64)),
                            torch.from_numpy(pos.astype(np.int64)))
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                x = torch.empty((n, self.meta.feat_dim), dtype=src.dtype, device=device)
                x.copy_(src, non_blocking=cuda)
                if gathered is not None:
                    self.gpu.gather_into_async(gathered[0], gathered[1], x)
                if cuda:
                    event = torch.cuda.Event()
                    event.record(stream)
            keep = gathered
            # handed back inside the try too: an interrupt just before the release
            # still frees the slot (release_new; nothing is freed twice)
            ring.release(slot, event, keep)
        except BaseException:
            if cuda:
                stream.synchronize()  # nothing enqueued may still read the slot
            ring.release_new(before)
            raise
        return x, event

    def stats(self) -> dict[str, Any]:
        tiers = {"cpu": self.host.stats(), "ssd": self.segments.stats(), "base": self.base.stats()}
        if self.gpu is not None:
            tiers["gpu"] = self.gpu.stats()
        read = tiers["ssd"]["bytes_read"] + tiers["base"]["bytes_read"]
        useful = tiers["ssd"]["useful_bytes"] + tiers["base"]["useful_bytes"]
        hits = {k: v["hits"] for k, v in tiers.items()}
        total = sum(hits.values())
        return {"tiers": tiers, "bytes_read": read, "useful_bytes": useful,
                "read_amplification": read / useful if useful else 0.0,
                "hit_rate": {k: (v / total if total else 0.0) for k, v in hits.items()},
                "segment_reads": self.segments.reads, "direct_io": self.direct,
                "assembly": {"threads": 1, **({} if self._helper is None else
                                              {**self._helper.stats(), "threads": 2})},
                "budget": self.accountant.summary()}

    def close(self) -> None:
        """Stop the I/O threads and free the tiers' memory (charges are released, so the
        memory must really be returned even if this object is still referenced).

        Every step runs even when one before it fails or is interrupted (Ctrl-C while a
        thread pool shuts down): the files are closed and the memory freed all the same,
        and the first error is raised once every step has run. Safe to call again."""
        steps = [self.segments.close, self.base.close, self._pool.close, self._free_tiers,
                 *(r.close for r in (self._tier, self._slot, getattr(self, "_inserts", None))
                   if r is not None),
                 self.plan.close, self._release_charges]
        if self._helper is not None:
            steps.insert(0, self._helper.close)
        error = None
        for step in steps:
            try:
                step()
            except BaseException as exc:  # raised below, after the other steps
                if error is None:
                    error = exc
        if error is not None:
            raise error

    def _free_tiers(self) -> None:
        self.host.rows = self.host.rows[:0].copy()
        self.gpu = None

    def _release_charges(self) -> None:
        for c in self._charges:
            c.release()
        self._charges = []

    def __enter__(self) -> "TieredReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        m = self.meta
        return (f"pack {m.name}: cpu tier {format_size(m.cpu_rows * m.row_bytes)}, "
                f"{m.num_segments} segments, blowup {m.blowup:.2f}")


class _PackTables:
    """A pack's per-batch and per-segment tables, checksum-checked and checked against
    each other and the plan, so that every offset the reader derives from them is inside
    the buffer or array it indexes."""

    def __init__(self, store: Store, m: PackMeta, plan: PlanReader, fix: str):
        self.fix, self.m, self._store = fix, m, store
        total = plan.meta.total_batches
        ninput = plan.index()[:, 3]
        self.pos = np.concatenate([[0], np.cumsum(ninput)]).astype(np.int64)
        if total and int(ninput.max()) > m.largest_batch_rows:
            self._fail(f"plan {plan.name!r} has a batch of {int(ninput.max())} rows, more than "
                       f"the pack's largest batch ({m.largest_batch_rows})")
        rows = store.array_meta(m.arrays["rows"])
        for part in ("tier", "slot"):
            have = store.array_meta(m.arrays[part]).shape
            if have != (int(self.pos[-1]),):
                self._fail(f"array {m.arrays[part]!r} has shape {have}, but the plan's batches "
                           f"have {int(self.pos[-1])} input positions")
        self.segments = self._read("segments").astype(np.int64, copy=False)
        if self.segments.shape != (m.num_segments, 3):
            self._fail(f"segment table has shape {self.segments.shape}, expected "
                       f"({m.num_segments}, 3)")
        if m.num_segments:
            first, count, batch0 = self.segments.T
            bad = (first < 0) | (count < 0) | (first + count > rows.shape[0]) \
                | (batch0 < 0) | (batch0 >= max(total, 1))
            if bad.any():
                s = int(np.flatnonzero(bad)[0])
                self._fail(f"segment {s} ({self.segments[s].tolist()}) lies outside the "
                           f"{rows.shape[0]} packed rows or the plan's {total} batches")
            largest = int(count.max()) * m.row_bytes + 2 * ALIGN
            if largest > max(m.min_working_set.get("largest_segment_bytes", 0), 0):
                self._fail(f"a segment of {int(count.max())} rows exceeds the largest segment "
                           f"the pack declares ({m.min_working_set.get('largest_segment_bytes')}"
                           " bytes)")
        self.segment_crc = None
        if "segment_crc" in m.arrays:
            self.segment_crc = self._read("segment_crc")
        self.batch_segment = self._read("batch_segment").astype(np.int64, copy=False)
        if self.batch_segment.shape != (total,):
            self._fail(f"batch_segment has shape {self.batch_segment.shape}, expected ({total},)")
        bad = (self.batch_segment < -1) | (self.batch_segment >= m.num_segments)
        if bad.any():
            b = int(np.flatnonzero(bad)[0])
            self._fail(f"batch {b} names segment {int(self.batch_segment[b])}, outside "
                       f"-1..{m.num_segments - 1}")
        self.insert_offsets = None
        if "inserts" in m.arrays:
            offs = self._read("insert_offsets").astype(np.int64, copy=False)
            inserts = store.array_meta(m.arrays["inserts"]).shape
            if offs.shape != (total + 1,) or (total + 1 and offs[0] != 0) \
                    or (np.diff(offs) < 0).any() or inserts[1:] != (2,) \
                    or int(offs[-1]) != inserts[0]:
                self._fail(f"the Belady insert offsets (shape {offs.shape}) do not index the "
                           f"{inserts[0] if inserts else 0} inserts in order")
            self.insert_offsets = offs

    def _read(self, part: str) -> np.ndarray:
        return read_checked(self._store, self.m.arrays[part], fix=self.fix)

    def _fail(self, what: str) -> None:
        raise FormatError(f"pack {self.m.name!r}: {what}: the pack is damaged; {self.fix}")
