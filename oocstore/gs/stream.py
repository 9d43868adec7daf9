"""Where the Gaussians live during training: the streamer and the two baselines.

Every mode serves the training loop the same way, one step at a time::

    batch = store.begin_step()        # the step's view, its candidate rows as leaf tensors
    out = render(batch.params, ...)   # loss.backward() fills batch.params.grad
    store.end_step(batch, out.visible)  # masked Adam on the rendered rows, written back
    store.checkpoint()                # durable: the scene's catalog commit

The rows of a step are the live Gaussians of the blocks its view sees (the
:class:`TrainPlan` gives, per step, the view and its visible blocks, from
``samplers.views``); the step's rendered rows (``radii > 0``) take one
:func:`~oocstore.gs.adam.masked_adam_` step with the global step number, everything else
keeps parameters and moments. So all modes compute the same training, and differ only in
where the records live and how many bytes move:

* :class:`AllOnDevice` -- every record on the device for the whole run (the ceiling;
  ignores the device budget). ``bytes_h2d`` is the initial upload.
* :class:`NaiveOffload` -- every record in host memory; each step copies the visible
  rows to the device and back (no cache; the order does not change its traffic).
* :class:`Streamer` -- the out-of-core path. A *slab* of block slots (``block_capacity``
  records each: parameters and both Adam moments) is managed by the Belady schedule of
  the plan (``samplers.views.belady_block_schedule``: per step the blocks to evict, then
  load). Below it a CPU tier of block copies inside the CPU budget (inclusive: a clean
  block keeps its copy; Belady eviction by next use), and below that the SSD tier, the
  scene store. A background thread (:class:`~oocstore.pipeline.Pipeline`, thread
  ``oocstore-gs-prefetch``) reads the blocks of the next steps' loads from SSD ahead of
  time; a second one (``oocstore-gs-writeback``) writes dirty blocks evicted from the CPU
  tier to the scene's log-structured writer. :meth:`Streamer.checkpoint` flushes slab ->
  CPU -> SSD and commits: a crash loses at most the steps since the last checkpoint.

  Blocks are the unit of disk I/O and of the host tiers, not of what the device renders:
  a step keeps only the rows of its visible blocks that pass the per-Gaussian frustum
  test (:func:`oocstore.gs.cull.in_frustum`, exact: never a row the rasterizer draws)
  and gathers just their *parameters* into the step batch, the leaf tensor it renders;
  the moments stay in the slab. Where the slab lives is ``optimizer``:

  - ``"cpu"`` (the store's default; ``gs-train --optimizer-device auto`` picks one of the
    two by the device budget, :meth:`oocstore.gs.train._Run.choose_optimizer`): in host
    memory. The device holds only the step batch (the
    culled parameters and their gradient): each step uploads the culled rows'
    parameters (h2d), and the rendered rows' gradients come back (d2h) for an Adam step
    on the host, in the slab, as CLM does; the rows of blocks the next view does not see
    step on the ``oocstore-gs-adam`` thread while the next step renders. On CUDA the
    upload goes through a pinned :class:`~oocstore.tiers.staging.StagingRing` on a side
    stream (the GNN loader's).
  - ``"device"``: on the device, inside the device budget beside the step batch; Adam
    runs there on the slab's rows (:func:`~oocstore.gs.adam.adam_rows_`), and only block
    loads (h2d) and evictions of dirty blocks (d2h) cross: a load copies the parameters
    and only the moments that are not all zero bits (a Gaussian never trained has none:
    they are zeroed on the device), a write-back copies only the rows that took an Adam
    step since the slot was filled (the rest come from the host copy it was filled
    from), a step's slab rows are built on the device from its slots, and the culling
    and rendering masks come back packed 8 rows a byte.

  The step batch is sized for the plan's largest view: ``TrainPlan.cull_rows`` (the
  culled counts of every view when the plan was made, plus ``CULL_HEADROOM`` for
  Gaussians moving into a view), or every row of the visible blocks without cameras. A
  step that finds more rows in its frustum than that stops with a ``BudgetError``.

Integrity: every SSD read goes through :meth:`Scene.read_block`, which checks the block's
chunk checksums unless the scene was opened with ``verify_reads=False``; a mismatch
raises :class:`~oocstore.errors.ChecksumError` in the training loop (from the prefetch
thread too), naming the block, its file, the chunk and the step.

Consistency: a block's newest copy is on the device, else in the CPU tier, else in a
queued write, else on SSD; loads look in that order. A prefetched SSD copy carries the
block's SSD version at read time and is used only if no write-back landed since.

On ``--device cpu`` the device region is host memory charged to the ``gpu`` tier of the
budget, and ``bytes_h2d`` / ``bytes_d2h`` count copies into and out of it. Charged to
the device budget: the step batch (its rows x (parameters + gradient), + an 8-byte row
index with the device optimizer) and, with the device optimizer, the slab. Charged to
the CPU budget: the slab with the CPU optimizer, the slots' ids, the CPU tier's slots,
the prefetch buffers, the write-back buffers and on CUDA the pinned upload buffers.
Each mode's fixed charges are listed by its ``requirements`` class method, so a caller
can check them against the budget before it writes anything (the CPU tier takes
whatever the rest leaves); :func:`~oocstore.gs.sizing.largest_view` gives the least
device budget a plan accepts (the sizing rules live in :mod:`oocstore.gs.sizing`).

Learning rates: a fixed ``lr`` [P], or ``lr_at(step) -> [P]`` for schedules (the
recipe's decaying position rate), looked up with the global step of each Adam step.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from oocstore.budget import BudgetAccountant
from oocstore.errors import BudgetError, ChecksumError, UsageError
from oocstore.pipeline import Pipeline
from oocstore.units import format_size

from .adam import AdamConfig, adam_rows_, masked_adam_
from .sizing import (  # noqa: F401  (re-exported: the stores' sizing rules)
    CULL_HEADROOM, CULL_HEADROOM_ROWS, ID_BYTES, OPTIMIZER_DEVICES, STREAM_CUDA_BUFFERS,
    UPLOAD_SLOTS, WRITE_BACKS, allocator_slack, batch_rows, block_bytes, check_device_budget,
    check_optimizer, host_slot_bytes, largest_view, max_batch_rows, naive_batch_bytes,
    schedule_slots, slot_bytes, step_batch_bytes)

log = logging.getLogger(__name__)

@dataclass
class TrainPlan:
    """What each step touches: ``views`` [S] (view per step), ``vis_sets`` (per view, the
    visible block ids), and for streaming the ``schedule`` (a
    ``samplers.views.BlockSchedule`` whose steps give ``load`` / ``evict`` arrays).

    With ``cameras`` the streamer renders only the Gaussians of the visible blocks that
    pass :func:`oocstore.gs.cull.in_frustum`; ``cull_rows`` [V] (per view, the count the
    plan found, :func:`oocstore.gs.cull.culled_counts`) then sizes its step batch. Without
    them, a step batch is sized for every row of the visible blocks."""

    views: np.ndarray
    vis_sets: Sequence[np.ndarray]
    schedule: Any = None
    cameras: Any = None
    cull_rows: np.ndarray | None = None
    lod_cuts: dict | None = None  # level of detail: {view: sorted ids of its cut}
    lod_prefix: dict | None = None  # {block: rows}: the prefix that holds every cut's rows

    def cut_mask(self, view: int, ids, scene) -> np.ndarray | None:
        """[n] bool: which of ``ids`` (those of every row a step of ``view`` has: its
        blocks' prefixes) it renders under the plan's level-of-detail cut (None: no cut,
        every row). Refused unless they hold each of the cut's nodes once, as a render
        is (:func:`~oocstore.gs.lod.check_cut_rows`)."""
        if self.lod_cuts is None:
            return None
        from .lod import check_cut_rows, in_cut

        cut = self.lod_cuts[int(view)]
        keep = in_cut(np.asarray(ids), cut)
        check_cut_rows(scene, len(cut), int(np.count_nonzero(keep)))
        return keep

    def __post_init__(self) -> None:
        self.views = np.asarray(self.views, dtype=np.int64)
        if self.schedule is not None and len(self.schedule.steps) != len(self.views):
            raise UsageError(f"schedule has {len(self.schedule.steps)} steps but the plan "
                             f"{len(self.views)}: build both from the same view order")

    def __len__(self) -> int:
        return len(self.views)


@dataclass
class StepBatch:
    step: int  # 1-based global step
    view: int
    ids: torch.Tensor  # [M] int64
    params: torch.Tensor  # [M, P] leaf, requires grad
    exp_avg: torch.Tensor | None = None  # [M, P] (the table baselines; the streamer keeps
    exp_avg_sq: torch.Tensor | None = None  # the moments in its slots)
    rows: Any = None  # where the rows came from (mode-specific)


@dataclass
class Traffic:
    bytes_h2d: int = 0
    bytes_d2h: int = 0
    bytes_ssd_read: int = 0
    bytes_ssd_written: int = 0
    block_accesses: int = 0  # visible blocks summed over steps
    block_ssd_misses: int = 0  # of those, read from SSD during the run
    stall_s: float = 0.0  # time the step waited for SSD reads
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        hit = (1.0 - self.block_ssd_misses / self.block_accesses) if self.block_accesses else 1.0
        return {"block_accesses": self.block_accesses, "block_ssd_misses": self.block_ssd_misses,
                "bytes_h2d": self.bytes_h2d, "bytes_d2h": self.bytes_d2h,
                "bytes_ssd_read": self.bytes_ssd_read, "bytes_ssd_written": self.bytes_ssd_written,
                "cache_hit_rate": hit, "stall_s": self.stall_s, **self.extra}


class _RowStore:
    """Shared parts of the modes: plan bookkeeping, the Adam step, traffic counters."""

    def __init__(self, scene, plan: TrainPlan, *, device, accountant: BudgetAccountant,
                 adam: AdamConfig, lr: torch.Tensor, step_offset: int = 0,
                 lr_at: Callable[[int], torch.Tensor] | None = None):
        self.scene, self.plan = scene, plan
        self.lr_at = lr_at
        self.device = torch.device(device)
        self.accountant = accountant
        self.adam = adam
        self.lr = lr.to(self.device)
        self.p = scene.param_width
        self.rb = scene.record_bytes
        self.traffic = Traffic()
        self.step = 0  # steps taken through this store (indexes the plan)
        self.step_offset = step_offset  # global step = step_offset + step (Adam's t)
        self._charges = []

    def _charge(self, tier, nbytes, what, fix=None):
        c = self.accountant.charge(tier, nbytes, what, fix=fix)
        self._charges.append(c)
        return c

    @classmethod
    def requirements(cls, scene, plan: TrainPlan, *, device="cpu", prefetch_depth: int = 2,
                     optimizer: str = "cpu") -> list[tuple[str, int, str, str | None]]:
        """The fixed charges of a store over ``plan``: ``(tier, bytes, what, fix)``."""
        return []

    def _batch(self, ids: torch.Tensor, rec: torch.Tensor, rows) -> StepBatch:
        p = self.p
        params = rec[:, :p].clone().requires_grad_(True)
        return StepBatch(self.step_offset + self.step, int(self.plan.views[self.step - 1]), ids, params,
                         rec[:, p:2 * p], rec[:, 2 * p:], rows)

    def _adam(self, batch: StepBatch, mask: torch.Tensor) -> torch.Tensor:
        """Masked Adam on the batch; returns the updated records [M, 3P]."""
        grad = batch.params.grad
        if grad is None:
            grad = torch.zeros_like(batch.params)
        params = batch.params.detach()
        lr = self.lr if self.lr_at is None else self.lr_at(batch.step).to(self.device)
        masked_adam_(params, batch.exp_avg, batch.exp_avg_sq, grad, mask.to(params.device),
                     lr, batch.step, self.adam)
        return torch.cat([params, batch.exp_avg, batch.exp_avg_sq], dim=1)

    def begin_step(self) -> StepBatch:
        if self.step >= len(self.plan):
            raise UsageError(f"the plan has {len(self.plan)} steps; all were taken")
        self.step += 1
        vis = self.plan.vis_sets[self.plan.views[self.step - 1]]
        self.traffic.block_accesses += len(vis)
        return self._begin(np.asarray(vis, dtype=np.int64))

    def stats(self) -> dict:
        return self.traffic.to_dict()

    def device_resident_bytes(self) -> int:
        """Device bytes the store holds between steps (its slots or table)."""
        return sum(t.numel() * t.element_size() for t in self._resident()
                   if t.device.type != "cpu")

    def _resident(self) -> list:
        return []

    def close(self) -> None:
        for c in self._charges:
            c.release()
        self._charges = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TableStore(_RowStore):
    """All records in one table (on the device, or in host memory), blocks as row ranges."""

    def __init__(self, scene, plan, *, table_device, **kw):
        super().__init__(scene, plan, **kw)
        counts = scene.block_counts
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n = int(self.starts[-1])
        for req in self.requirements(scene, plan, device=self.device):
            self._charge(*req)
        self.on_device = table_device == "device"
        where = self.device if self.on_device else torch.device("cpu")
        self.table = torch.empty(n, 3 * self.p, dtype=torch.float32, device=where)
        self.ids = torch.empty(n, dtype=torch.int64, device=where)
        for b in range(scene.num_blocks):
            ids, rec = scene.read_block(b)
            lo, hi = self.starts[b], self.starts[b + 1]
            self.table[lo:hi] = torch.from_numpy(rec)
            self.ids[lo:hi] = torch.from_numpy(ids)
            self.traffic.bytes_ssd_read += len(ids) * scene.disk_row_bytes
        self.dirty = np.zeros(scene.num_blocks, dtype=bool)
        self.ids_host = self.ids.cpu().numpy()  # for level-of-detail cuts

    @staticmethod
    def _table_charge(scene, tier: str) -> tuple[str, int, str, str]:
        n = int(np.asarray(scene.block_counts).sum())
        return (tier, n * (scene.record_bytes + ID_BYTES), "every Gaussian record",
                f"raise the {tier} budget, or use --mode stream")

    def _resident(self) -> list:
        return [self.table, self.ids]

    def _rows(self, vis: np.ndarray) -> torch.Tensor:
        parts = [np.arange(self.starts[b], self.starts[b + 1]) for b in vis]
        rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        keep = self.plan.cut_mask(self.plan.views[self.step - 1], self.ids_host[rows],
                                  self.scene)
        return torch.from_numpy(rows if keep is None else rows[keep])

    def checkpoint(self) -> None:
        with self.scene.writer() as w:
            for b in np.flatnonzero(self.dirty):
                lo, hi = self.starts[b], self.starts[b + 1]
                rec = self.table[lo:hi].cpu().numpy()
                if self.on_device:  # a copy out of the device region
                    self.traffic.bytes_d2h += rec.nbytes
                w.write_block(int(b), self.ids[lo:hi].cpu().numpy(), rec)
                self.traffic.bytes_ssd_written += len(rec) * self.scene.disk_row_bytes
            w.commit()
        self.dirty[:] = False


class AllOnDevice(_TableStore):
    """Every record on the device for the whole run (the baseline ceiling)."""

    def __init__(self, scene, plan, **kw):
        super().__init__(scene, plan, table_device="device", **kw)
        self.traffic.bytes_h2d += self.table.numel() * 4

    @classmethod
    def requirements(cls, scene, plan, *, device="cpu", prefetch_depth=2, optimizer="cpu"):
        return [cls._table_charge(scene, "gpu")]

    def _begin(self, vis):
        rows = self._rows(vis).to(self.device)
        return self._batch(self.ids.index_select(0, rows), self.table.index_select(0, rows), rows)

    def end_step(self, batch: StepBatch, mask: torch.Tensor) -> None:
        self.table.index_copy_(0, batch.rows, self._adam(batch, mask))
        self.dirty[self.plan.vis_sets[batch.view]] = True


class NaiveOffload(_TableStore):
    """Every record in host memory; each step copies its rows to the device and back."""

    def __init__(self, scene, plan, **kw):
        super().__init__(scene, plan, table_device="host", **kw)

    @classmethod
    def requirements(cls, scene, plan, *, device="cpu", prefetch_depth=2, optimizer="cpu"):
        counts = scene.block_counts
        view, rows = max(((int(v), int(counts[plan.vis_sets[v]].sum()))
                          for v in np.unique(plan.views)), key=lambda x: x[1], default=(-1, 0))
        need = naive_batch_bytes(rows, scene)
        return [cls._table_charge(scene, "cpu"),
                ("gpu", need, "the step batch",
                 f"the largest view ({view}) needs {format_size(need)}: raise --gpu-budget")]

    def _begin(self, vis):
        rows = self._rows(vis)
        rec = self.table.index_select(0, rows)
        self.traffic.bytes_h2d += rec.numel() * 4
        return self._batch(self.ids.index_select(0, rows).to(self.device), rec.to(self.device, copy=True),
                           rows)

    def end_step(self, batch: StepBatch, mask: torch.Tensor) -> None:
        rec = self._adam(batch, mask).to("cpu", copy=True)
        self.traffic.bytes_d2h += rec.numel() * 4
        self.table.index_copy_(0, batch.rows, rec)
        self.dirty[self.plan.vis_sets[batch.view]] = True


def mask_to_host(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``mask`` [n] bool in host memory, and the bytes that crossed: packed 8 rows a
    byte on the device, so a step's culling and rendering masks cost n / 8 bytes each."""
    n = mask.numel()
    bits = torch.nn.functional.pad(mask.reshape(-1).to(torch.uint8), (0, -n % 8)).view(-1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    packed = (bits * weights).sum(1, dtype=torch.uint8).cpu().numpy()
    host = np.unpackbits(packed, bitorder="little")[:n].astype(bool)
    return torch.from_numpy(host), len(packed)


def mask_to_device(mask: np.ndarray, device) -> tuple[torch.Tensor, int]:
    """``mask`` [n] bool on ``device``, and the bytes that crossed (packed 8 rows a byte)."""
    n = len(mask)
    packed = np.packbits(mask, bitorder="little")
    shifts = torch.arange(8, dtype=torch.uint8, device=device)
    bits = (torch.from_numpy(packed).to(device).unsqueeze(1) >> shifts) & 1
    return bits.reshape(-1)[:n].bool(), len(packed)


@dataclass
class _CpuBlock:
    ids: np.ndarray
    rec: np.ndarray
    dirty: bool  # newer than the SSD copy


class Streamer(_RowStore):
    """Block slots + CPU tier + SSD (the scene), following the plan's Belady schedule;
    a step renders only its culled rows (see the module docstring)."""

    def __init__(self, scene, plan: TrainPlan, *, device_budget: int, prefetch_depth: int = 2,
                 optimizer: str = "cpu", **kw):
        super().__init__(scene, plan, **kw)
        self.optimizer = check_optimizer(optimizer)
        if plan.schedule is None:
            raise UsageError("streaming needs the plan's block schedule "
                             "(samplers.views.belady_block_schedule)")
        cap = scene.block_capacity
        self.cap, self.bb = cap, block_bytes(scene)
        slots = schedule_slots(plan.schedule)
        for req in self.requirements(scene, plan, device=self.device,
                                     prefetch_depth=prefetch_depth, optimizer=optimizer):
            self._charge(*req)
        # the slab: on the device with the device optimizer, else in host memory, where
        # the CPU Adam reads and writes it
        self.slab_on_device = optimizer == "device"
        where = self.device if self.slab_on_device else torch.device("cpu")
        self.slab = torch.zeros(slots * cap, 3 * self.p, dtype=torch.float32, device=where)
        self.slab_ids = np.zeros(slots * cap, dtype=np.int64)
        self.lr = self.lr.to(where)
        self.batch_cap = max_batch_rows(scene, plan)
        self.free = list(range(slots - 1, -1, -1))
        self.slot_of: dict[int, int] = {}
        self.count = np.zeros(slots, dtype=np.int64)
        self.dev_dirty = np.zeros(slots, dtype=bool)  # slab copy newer than the tiers below
        # device optimizer: which slab rows took an Adam step since their slot was filled
        # (or flushed), and per slot the host copy it was filled from, so a write-back
        # brings back only those rows (see _slot_out)
        self.row_dirty = np.zeros(slots * cap, dtype=bool)
        self.base: list = [None] * slots
        # uses of each block by step, for Belady eviction in the CPU tier
        self.uses: dict[int, list[int]] = {}
        for s, v in enumerate(plan.views):
            for b in plan.vis_sets[v]:
                self.uses.setdefault(int(b), []).append(s)
        # CPU tier (prefetch and write-back buffers: charged with the requirements)
        self.prefetch_depth = prefetch_depth
        self.max_pending = WRITE_BACKS
        avail = self.accountant.available("cpu")
        cpu_slots = (scene.num_blocks if avail is None else max(0, avail // self.bb))
        cpu_slots = min(cpu_slots, scene.num_blocks)
        self._charge("cpu", cpu_slots * self.bb, f"{cpu_slots} CPU tier block slots")
        self.cpu_slots = cpu_slots
        self.cpu: dict[int, _CpuBlock] = {}
        self.lock = threading.Lock()
        self.ssd_version = np.zeros(scene.num_blocks, dtype=np.int64)
        self.pending: dict[int, tuple[_CpuBlock, Future]] = {}
        self._ring = self._copy_stream = None
        # CPU optimizer: the Adam rows the next step does not read run on their own thread
        self._adam_pool = (None if self.slab_on_device else
                           ThreadPoolExecutor(1, thread_name_prefix="oocstore-gs-adam"))
        self._adam_future: Future | None = None
        if not self.slab_on_device and self.device.type == "cuda":
            from oocstore.tiers.staging import StagingRing

            self._ring = StagingRing(UPLOAD_SLOTS, self.batch_cap, self.p, np.float32, pin=True,
                                     device=self.device)
            self._copy_stream = torch.cuda.Stream(self.device)
            self.traffic.extra["upload_pinned"] = self._ring.pinned
        self.writer = scene.writer()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="oocstore-gs-writeback")
        self.pipe = Pipeline(((i, st.load) for i, st in enumerate(plan.schedule.steps)),
                             [("oocstore-gs-prefetch", self._prefetch)],
                             depth=max(1, prefetch_depth))
        self._prefetched = iter(self.pipe)
        self.traffic.extra.update(device_slots=slots if self.slab_on_device else 0,
                                  host_slots=0 if self.slab_on_device else slots,
                                  cpu_slots=cpu_slots, batch_rows=self.batch_cap,
                                  optimizer_device=optimizer, rendered_rows=0, culled_rows=0,
                                  candidate_rows=0, adam_overlapped_rows=0,
                                  zero_moment_rows=0, write_back_rows=0)
        log.info("streaming: %d %s slots of %s, %d CPU tier slots, step batch of %d rows, "
                 "optimizer on the %s, prefetch depth %d", slots,
                 "device" if self.slab_on_device else "host", format_size(slot_bytes(scene)),
                 cpu_slots, self.batch_cap, optimizer, prefetch_depth)

    @classmethod
    def requirements(cls, scene, plan, *, device="cpu", prefetch_depth=2, optimizer="cpu"):
        check_optimizer(optimizer)
        if plan.schedule is None:
            raise UsageError("streaming needs the plan's block schedule "
                             "(samplers.views.belady_block_schedule)")
        bb, sb = block_bytes(scene), slot_bytes(scene)
        slots = schedule_slots(plan.schedule)
        rows = max_batch_rows(scene, plan)
        view, need = largest_view(scene, plan, optimizer)
        fix = (f"the largest view ({view}) needs {format_size(need)}: raise --gpu-budget to at "
               f"least {format_size(need)} ({need} bytes)")
        out = [("gpu", step_batch_bytes(rows, scene, optimizer),
                f"the step batch ({rows} rows: parameters and gradient)", fix)]
        if optimizer == "device":
            out.append(("gpu", slots * sb, f"{slots} device block slots", fix))
        slack = allocator_slack(device)
        if slack:
            out.append(("gpu", slack, "the CUDA allocator's rounding of the device buffers", fix))
        max_load = max((len(st.load) for st in plan.schedule.steps), default=0) * bb
        out.append(("cpu", (prefetch_depth + 1) * max_load, "prefetch buffers",
                    "lower the prefetch depth, or raise --cpu-budget"))
        out.append(("cpu", WRITE_BACKS * bb, "write-back buffers", "raise --cpu-budget"))
        out.append(("cpu", slots * scene.block_capacity * ID_BYTES, "the slots' Gaussian ids",
                    "raise --cpu-budget"))
        if optimizer == "cpu":
            out.append(("cpu", slots * sb, f"{slots} host block slots (records and Adam moments "
                        "for the CPU optimizer)",
                        "raise --cpu-budget, or use --optimizer-device device"))
            if torch.device(device).type == "cuda":
                out.append(("cpu", UPLOAD_SLOTS * rows * 4 * scene.param_width,
                            "pinned upload buffers", "raise --cpu-budget"))
        return out

    # -- background threads ---------------------------------------------------------
    def _prefetch(self, item):
        i, load = item
        out = {}
        for b in load:
            b = int(b)
            with self.lock:
                if b in self.cpu or b in self.pending:
                    continue
                version = int(self.ssd_version[b])
            ids, rec = self.scene.read_block(b, rows=self._prefix(b))
            out[b] = (version, ids, rec)
        return i, out

    def _prefix(self, b: int) -> int | None:
        """Rows of block ``b`` the plan's level-of-detail cuts need (None: all): a
        *prefix read* (:mod:`oocstore.gs.lod`); the rest of the block stays on SSD."""
        pre = self.plan.lod_prefix
        return None if pre is None else pre.get(b)

    def _write(self, b: int, blk: _CpuBlock) -> None:
        ids, rec = blk.ids, blk.rec
        if self.plan.lod_prefix is not None:
            with self.scene._lock:
                n = int(self.scene._counts[b])
            if len(ids) < n:  # a prefix: the rest of the block, which no step touched
                # a block is read from its first row: the prefix is read again, and counted
                tail_ids, tail = self.scene.read_block(b)
                with self.lock:
                    self.traffic.bytes_ssd_read += len(tail_ids) * self.scene.disk_row_bytes
                ids = np.concatenate([ids, tail_ids[len(ids):]])
                rec = np.concatenate([rec, tail[len(rec):]])
        self.writer.write_block(b, ids, rec)
        with self.lock:
            self.ssd_version[b] += 1
            self.traffic.bytes_ssd_written += len(ids) * self.scene.disk_row_bytes

    # -- CPU tier ------------------------------------------------------------------
    def _next_use(self, b: int) -> int:
        u = self.uses.get(b, [])
        # uses from the current step on (0-based index step - 1): a block this step still
        # has to load is not a good victim
        k = bisect.bisect_left(u, self.step - 1)
        return u[k] if k < len(u) else 1 << 62

    def _cpu_put(self, b: int, blk: _CpuBlock) -> None:
        if self.cpu_slots == 0:
            if blk.dirty:
                self._queue_write(b, blk)
            return
        with self.lock:
            self.cpu[b] = blk
        while len(self.cpu) > self.cpu_slots:
            victim = max((k for k in self.cpu if k != b), key=lambda k: (self._next_use(k), k))
            with self.lock:
                old = self.cpu.pop(victim)
            if old.dirty:
                self._queue_write(victim, old)

    def _queue_write(self, b: int, blk: _CpuBlock) -> None:
        while len(self.pending) >= self.max_pending:
            oldest = next(iter(self.pending))
            self._finish_write(oldest)
        if b in self.pending:
            self._finish_write(b)
        fut = self.pool.submit(self._write, b, blk)
        with self.lock:
            self.pending[b] = (blk, fut)

    def _finish_write(self, b: int) -> None:
        blk, fut = self.pending[b]
        fut.result()  # re-raises a write-back failure here, with its traceback
        with self.lock:
            del self.pending[b]

    # -- slots -----------------------------------------------------------------------
    def _slot_out(self, s: int) -> _CpuBlock:
        """A copy of slot ``s``'s block out of the slab (d2h when the slab is on the device).

        On the device only the rows that took an Adam step since the slot was filled come
        back when the host copy it was filled from is still alive (records are never
        changed in place, so that copy holds the other rows' exact bits): a write-back
        moves the rendered rows, not the block."""
        n = int(self.count[s])
        lo = s * self.cap
        base = self.base[s]() if self.base[s] is not None else None
        if self.slab_on_device and base is not None and len(base.rec) == n:
            rows = np.flatnonzero(self.row_dirty[lo:lo + n])
            rec = base.rec.copy()
            if len(rows):
                dirty, nbytes = mask_to_device(self.row_dirty[lo:lo + n], self.slab.device)
                rec[rows] = self.slab[lo:lo + n][dirty].cpu().numpy()
                self.traffic.bytes_h2d += nbytes  # which rows: packed
                self.traffic.bytes_d2h += len(rows) * self.rb
            self.traffic.extra["write_back_rows"] += len(rows)
        else:
            rec = self.slab[lo:lo + n].cpu().numpy().copy()
            if self.slab_on_device:
                self.traffic.bytes_d2h += rec.nbytes
                self.traffic.extra["write_back_rows"] += n
        return _CpuBlock(self.slab_ids[lo:lo + n].copy(), rec, True)

    def _filled(self, s: int, blk: _CpuBlock) -> None:
        """Slot ``s`` now equals ``blk``: no row of it is newer."""
        self.base[s] = weakref.ref(blk)
        self.row_dirty[s * self.cap:(s + 1) * self.cap] = False

    def _evict(self, b: int) -> None:
        s = self.slot_of.pop(b)
        if self.dev_dirty[s]:
            self._cpu_put(b, self._slot_out(s))
        self.dev_dirty[s] = False
        self.base[s] = None
        self.count[s] = 0
        self.free.append(s)

    def _load(self, b: int, fetched: dict) -> None:
        with self.lock:
            blk = self.cpu.get(b)
            if blk is None and b in self.pending:
                blk = self.pending[b][0]
        if blk is None:
            got = fetched.get(b)
            if got is not None and got[0] == self.ssd_version[b]:
                ids, rec = got[1], got[2]
            else:
                t0 = time.perf_counter()
                ids, rec = self.scene.read_block(b, rows=self._prefix(b))
                self.traffic.stall_s += time.perf_counter() - t0
            self.traffic.bytes_ssd_read += len(ids) * self.scene.disk_row_bytes
            self.traffic.block_ssd_misses += 1
            blk = _CpuBlock(ids, rec, False)
            self._cpu_put(b, blk)
        s = self.free.pop()
        n = len(blk.ids)
        lo = s * self.cap
        if self.slab_on_device:
            self._upload_block(lo, blk.rec)
            self._filled(s, blk)
        else:
            self.slab[lo:lo + n] = torch.from_numpy(blk.rec)
        self.slab_ids[lo:lo + n] = blk.ids
        self.count[s] = n
        self.slot_of[b] = s

    def _upload_block(self, lo: int, rec: np.ndarray) -> None:
        """Records ``rec`` into the device slab from row ``lo``. Adam moments that are all
        zero bits (a Gaussian never trained: a new student, a fresh ingest, a clone or a
        reset) are zeroed on the device instead of copied: only the parameters and the
        rows with moments cross."""
        n, p = len(rec), self.p
        dev = self.slab.device
        moved = np.flatnonzero(rec[:, p:].view(np.uint32).any(axis=1)) if n else rec[:0, 0]
        if len(moved) == n:
            self.slab[lo:lo + n] = torch.from_numpy(rec).to(dev)
            self.traffic.bytes_h2d += rec.nbytes
            return
        self.slab[lo:lo + n, :p] = torch.from_numpy(rec[:, :p]).to(dev)
        self.slab[lo:lo + n, p:] = 0
        self.traffic.bytes_h2d += n * p * 4
        if len(moved):
            idx = torch.from_numpy(moved + lo)
            self.slab[:, p:].index_copy_(0, idx.to(dev), torch.from_numpy(rec[moved, p:]).to(dev))
            self.traffic.bytes_h2d += len(moved) * 2 * p * 4 + moved.nbytes
        self.traffic.extra["zero_moment_rows"] += n - len(moved)

    def _resident(self) -> list:
        return [self.slab]

    # -- steps -----------------------------------------------------------------------
    def _begin(self, vis):
        try:
            self._run_schedule()
        except ChecksumError as err:  # from the prefetch thread or a synchronous read
            raise ChecksumError(f"{err} [while loading the blocks of training step "
                                f"{self.step_offset + self.step}]") from err
        return self._gather(vis)

    def _run_schedule(self) -> None:
        st = self.plan.schedule.steps[self.step - 1]
        i, fetched = next(self._prefetched)
        assert i == self.step - 1, (i, self.step)
        if len(st.evict):
            self._adam_wait()  # an evicted slot may hold deferred rows
        for b in st.evict:
            if int(b) in self.slot_of:
                self._evict(int(b))
        for b in st.load:
            if int(b) not in self.slot_of:
                self._load(int(b), fetched)

    def _cull(self, cand: np.ndarray, cand_d, view: int):
        """``(rows, rows on the device)``: the slab rows of ``cand`` that pass the
        per-Gaussian frustum test (all of them without cameras in the plan). On the device
        for the device optimizer (``cand_d``: the same rows there; the mask comes back
        packed), in host memory for the CPU optimizer (no device rows: None)."""
        cams = self.plan.cameras
        if cams is None or not len(cand):
            return cand, cand_d
        from .cull import GEOMETRY_WIDTH, in_frustum

        idx = cand_d if self.slab_on_device else torch.from_numpy(cand)
        geom = self.slab[:, :GEOMETRY_WIDTH].index_select(0, idx)
        keep = in_frustum(geom, cams.viewmats[view], cams.Ks[view], cams.width, cams.height)
        if not self.slab_on_device:
            return cand[keep.numpy()], None
        keep_h, nbytes = mask_to_host(keep)
        self.traffic.bytes_d2h += nbytes
        return cand[keep_h.numpy()], cand_d[keep]

    def _device_rows(self, slots: np.ndarray, keep: np.ndarray | None) -> torch.Tensor:
        """The candidate slab rows of a step on the device, built there from the visible
        slots' (start, count) pairs (and the level-of-detail ``keep`` mask, packed) rather
        than uploaded as an 8-byte index per row."""
        dev = self.slab.device
        starts = torch.from_numpy(slots * self.cap).to(dev)
        counts = torch.from_numpy(self.count[slots]).to(dev)
        self.traffic.bytes_h2d += 2 * 8 * len(slots)
        total = int(self.count[slots].sum())
        first = torch.cumsum(counts, 0) - counts  # where each slot's rows start in cand
        cand = (torch.arange(total, device=dev)
                + torch.repeat_interleave(starts - first, counts, output_size=total))
        if keep is not None:
            keep_d, nbytes = mask_to_device(keep, dev)
            self.traffic.bytes_h2d += nbytes
            cand = cand[keep_d]
        return cand

    def _gather(self, vis) -> StepBatch:
        view = int(self.plan.views[self.step - 1])
        slots = np.asarray([self.slot_of[int(b)] for b in vis], dtype=np.int64)
        parts = [np.arange(s * self.cap, s * self.cap + self.count[s]) for s in slots]
        cand = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        keep = self.plan.cut_mask(view, self.slab_ids[cand], self.scene)
        if keep is not None:  # the view's level-of-detail cut
            cand = cand[keep]
        cand_d = self._device_rows(slots, keep) if self.slab_on_device else None
        rows, rows_d = self._cull(cand, cand_d, view)
        ex = self.traffic.extra
        ex["candidate_rows"] += len(cand)
        ex["culled_rows"] += len(rows)
        if len(rows) > self.batch_cap:
            raise BudgetError(
                f"training step {self.step_offset + self.step} (view {view}) has {len(rows)} "
                f"Gaussians in its frustum, more than the {self.batch_cap} rows its step batch "
                "was planned for (Gaussians moved into the view since the plan was made): "
                "plan more often (--eval-every N re-plans every N steps)")
        idx = torch.from_numpy(rows)
        table = self.slab[:, :self.p]
        if self.slab_on_device:
            idx = rows_d
            params = table.index_select(0, idx)
        else:
            params = self._upload(table, idx)
            self.traffic.bytes_h2d += params.numel() * 4
        return StepBatch(self.step_offset + self.step, view,
                         torch.from_numpy(self.slab_ids[rows]), params.requires_grad_(True),
                         rows=(rows, idx))

    def _upload(self, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``table`` [T, P] rows ``idx`` on the device (a new tensor): gathered into a
        pinned staging slot and copied on the side stream on CUDA, a plain copy else."""
        if self._ring is None:
            return table.index_select(0, idx).to(self.device)
        from oocstore.tiers.staging import stage_to_device

        def fill(out: np.ndarray) -> None:
            torch.index_select(table, 0, idx, out=torch.from_numpy(out))

        return stage_to_device(self._ring, len(idx), fill, self.device, self._copy_stream)

    def _lr(self, step: int) -> torch.Tensor:
        return self.lr if self.lr_at is None else self.lr_at(step).to(self.slab.device)

    def end_step(self, batch: StepBatch, mask: torch.Tensor) -> None:
        """Adam on the rendered rows (``mask`` [M] bool), where the slab is."""
        grad = batch.params.grad
        if grad is None:
            grad = torch.zeros_like(batch.params)
        rows, idx = batch.rows
        p = self.p
        mask_h, nbytes = mask_to_host(mask)  # which rows stepped, for the dirty bits
        self.traffic.bytes_d2h += nbytes
        sel = torch.nonzero(mask_h)[:, 0]
        if self.slab_on_device:
            sel_d = torch.nonzero(mask.to(self.device))[:, 0]
            touched = idx.index_select(0, sel_d)
            g = grad.index_select(0, sel_d)
        else:  # the rendered rows' gradients come to the host
            g = grad.index_select(0, sel.to(grad.device)).to("cpu")
            self.traffic.bytes_d2h += g.numel() * 4
            touched = idx.index_select(0, sel)
        tables = (self.slab[:, :p], self.slab[:, p:2 * p], self.slab[:, 2 * p:])
        lr = self._lr(batch.step)
        slots = rows[sel.numpy()] // self.cap
        self._adam_wait()  # the previous step's deferred rows first (Adam is per row)
        later = self._deferrable(slots)
        if later is None:
            adam_rows_(*tables, touched, g, lr, batch.step, self.adam)
        else:  # the next step needs the rest now; these can wait until its rendering
            now = torch.from_numpy(~later)
            adam_rows_(*tables, touched[now], g[now], lr, batch.step, self.adam)
            defer = torch.from_numpy(later)
            self._adam_future = self._adam_pool.submit(
                adam_rows_, *tables, touched[defer], g[defer], lr, batch.step, self.adam)
            self.traffic.extra["adam_overlapped_rows"] += int(later.sum())
        self.traffic.extra["rendered_rows"] += int(sel.numel())
        # slots whose rows stepped are newer than the tiers below
        self.dev_dirty[np.unique(slots)] = True
        self.row_dirty[rows[sel.numpy()]] = True

    def _deferrable(self, slots: np.ndarray) -> np.ndarray | None:
        """CPU optimizer: which of the rendered rows (their ``slots``) the next step does
        not read -- rows of blocks its view does not see -- so their Adam step can run on
        the ``oocstore-gs-adam`` thread while the next step renders. The next step waits
        for it before it evicts a block (:meth:`_run_schedule`); every other slab access
        of the next step is to the rows of its own blocks. None: nothing to defer."""
        if self._adam_pool is None or self.step >= len(self.plan) or not len(slots):
            return None
        nxt = self.plan.vis_sets[self.plan.views[self.step]]
        needed = np.zeros(len(self.count), dtype=bool)
        needed[[self.slot_of[int(b)] for b in nxt if int(b) in self.slot_of]] = True
        later = ~needed[slots]
        return later if later.any() else None

    def _adam_wait(self) -> None:
        """Wait for the deferred Adam rows (re-raising a failure with its traceback)."""
        if self._adam_future is not None:
            fut, self._adam_future = self._adam_future, None
            fut.result()

    def checkpoint(self) -> None:
        """Flush slab -> CPU tier -> SSD and commit the scene (the commit point)."""
        self._adam_wait()
        for b, s in list(self.slot_of.items()):
            if self.dev_dirty[s]:
                blk = self._slot_out(s)
                self.dev_dirty[s] = False
                self._filled(s, blk)
                if self.cpu_slots:
                    self._cpu_put(b, blk)
                else:
                    self._queue_write(b, blk)
        for b, blk in list(self.cpu.items()):
            if blk.dirty:
                blk.dirty = False
                self._queue_write(b, _CpuBlock(blk.ids, blk.rec, True))
        for b in list(self.pending):
            self._finish_write(b)
        self.writer.commit()

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            if getattr(self, "_adam_future", None) is not None:
                self._adam_wait()
        finally:
            if getattr(self, "_adam_pool", None) is not None:
                self._adam_pool.shutdown(wait=True)
        self.pipe.close()
        self.pool.shutdown(wait=True)
        self.writer.close()  # uncommitted writes are dropped: the last checkpoint stands
        if self._ring is not None:
            self._ring.close()
        super().close()


MODES = {"stream": Streamer, "all-on-device": AllOnDevice, "naive-offload": NaiveOffload}

