"""``NodeLoader``: the DataLoader replacement for GNN mini-batch training out of core.

Where a training loop used ``DataLoader`` + a neighbour sampler, it iterates a
``NodeLoader`` built from a store, a plan (sampled offline) and its pack. Each
:class:`Batch` carries the plan's blocks, ``x`` (the batch's input-node features, on the
device), ``y`` (the seeds' labels) and converters ``to_pyg()`` (per-layer, for a
hand-written forward), ``to_pyg_data()`` (one ``edge_index`` with trim-to-layer counts,
for PyG's ready-made models) and ``to_dgl()``.

Pipeline (``oocstore/pipeline.py``), one named thread per stage, bounded queues:

``oocstore-read``
    plan record -> blocks; packed SSD segment read with ``O_DIRECT`` (the segment tier
    reads the next segment ahead on its own ``oocstore-ssd`` thread, and base-array row
    reads run on an ``oocstore-base`` pool, so several requests are in flight) -> CPU
    assembly (a numba kernel that releases the GIL) into a staging buffer -> on CUDA,
    the host-to-device copy and the GPU tier's gather, enqueued on the loader's own side
    stream (below). ``pin_memory`` behaviour is therefore implicit.

On a CPU device ``x`` is the staging buffer itself: one of the reader's batch buffers,
reused for a later batch only once nothing refers to this one (``tiers/reader.py``).

On CUDA (``TieredReader.read_batch_async``) the staging buffer is a slot of the
loader's :class:`~oocstore.tiers.staging.StagingRing`: ``prefetch + 1`` page-locked
buffers sized for the pack's largest batch, allocated once. The copy into a fresh
device tensor and the GPU-tier gather run on a ``torch.cuda.Stream`` the loader owns,
never the training loop's stream, and end with a recorded event. The training loop's
current stream waits on that event (``wait_event``: on the device, the host does not
block), and ``x.record_stream`` marks ``x`` as used there, so the caching allocator
cannot reuse its memory for a later copy while the loop's kernels may still read it. A ring slot is
reused only after its copy's event has completed. With ``prefetch=0`` the same path
runs in the training loop's thread.

Memory: ``prefetch`` batches may wait in each queue. On a CPU device the loader charges
``(prefetch + 1) x largest batch`` of staging (the waiting batches plus the one the
training loop holds), ``prefetch + 2`` decoded plan records (the largest record each: the
waiting batches, the one being read and the one the training loop holds) and the labels
to the CPU budget, on top of what the tiered reader charges (tiers, segment buffers, the
plan index and per-batch tables). On CUDA the host side is the staging ring, the same
``(prefetch + 1) x largest batch``, and the device side is charged to the GPU budget:
the GPU tier (charged by the reader) and the batches on the device, ``prefetch + 3``
of them (``oocstore.workingset.device_charges``: being copied, prefetched, handed
over, and the one the training loop still holds), with the labels, the GPU-tier
gather's scratch and the CUDA caching allocator's rounding. The default prefetch depth
is the largest <= 4 that fits both budgets. On a CPU device a budget that holds no
prefetched batch runs at depth 0 (each batch read in the training loop's thread, two
batches alive: the one being read and the one the loop still holds) — the floor a pack
records (``oocstore.workingset.working_set``); on CUDA, and on a CPU device with less
than that floor, the loader is refused up front.

Data parallelism: ``rank`` / ``world_size`` (default: from ``torch.distributed`` when it
is initialised, else 0 / 1) select the rank's shard of a plan sampled with
``--world-size`` (``oocstore/distributed.py``, ``docs/DISTRIBUTED.md``); ``plan`` is then
the shard group's name. Each rank's loader has its own budget.

Plan choice: without ``plan`` the loader reads the most recently sampled plan of the
**train** split for its world size (:func:`~oocstore.distributed.default_plan`), never a
newer ``val`` or ``*-eval`` plan; a plan of another split is read only when named (an
evaluation loader names its plan), and ``split`` says which split a loader reads.

Integrity: with ``verify_reads`` (the default) every checksum chunk a packed-segment
read covers is checked before its rows are used, and a mismatch raises
:class:`~oocstore.errors.ChecksumError` naming the batch and the file in the training
loop; ``verify_reads=False`` skips the check (CRC-32 costs CPU: ``bench/verify_cost.py``).
The arrays the reader indexes with (plan index and records, tier / slot, the Belady
schedule, segment tables) are checked whatever ``verify_reads`` says, and their values
are bounds-checked before use (``docs/RELIABILITY.md``, damaged index arrays).

Evaluation: ``eval_loader(split)`` opens the split's evaluation plan (``val-eval``,
``test-eval``) with the same device, budget and rank. It shares this loader's budget:
it opens beside it where the open loaders' charges leave room, and otherwise the two
take turns — a loader that must open suspends the others (they release every buffer
and charge; a suspended loader re-opens on its next use, where it left off). Re-opening
re-reads the CPU tier and the labels: on dblp (109 MiB CPU tier) 0.3-0.4 s.

Epochs: ``set_epoch(e)`` selects plan epoch ``e mod K``, where ``K`` is the number of
packed epochs (all of the plan's epochs unless a disk-blowup cap packed fewer).
``state_dict()`` / ``load_state_dict()`` resume mid-epoch exactly: the same remaining
batches, in the same order.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numba
import numpy as np
import torch

from .budget import BudgetAccountant, MemoryBudget
from .checked_read import CheckedRows
from .distributed import check_rank, current_rank, resolve_plan
from .errors import BudgetError, FormatError, StoreNotFoundError, UsageError
from .pack.format import plan_record_bytes
from .pack.packer import label_dtype, labels_bytes
from .pipeline import Pipeline
from .plan import SampledBatch, format_fanouts
from .store import Store
from .pack.catalog import latest_pack  # noqa: F401  (re-exported: train.run imports it here)
from .tiers.reader import TieredReader
from .tiers.staging import StagingRing
from .units import format_size
from .workingset import (WorkingSet, choose_depth, cpu_depth, device_items, loader_depth_items,
                         loader_required, refuse_floor, refuse_prefetch)

log = logging.getLogger(__name__)

#: Largest default prefetch depth (batches waiting per queue).
MAX_PREFETCH = 4


@dataclass
class Batch:
    """One training batch. ``x`` rows follow ``sample.input_nodes``; ``y`` the seeds."""

    epoch: int
    index: int
    sample: SampledBatch
    x: torch.Tensor  # [num_input, D] on the loader's device
    y: torch.Tensor  # [num_seeds] int64 on the loader's device
    _event: Any = field(default=None, repr=False)

    @property
    def seeds(self) -> np.ndarray:
        return self.sample.seeds

    @property
    def input_nodes(self) -> np.ndarray:
        return self.sample.input_nodes

    @property
    def blocks(self):
        return self.sample.blocks

    @property
    def num_seeds(self) -> int:
        """The seeds are the first ``num_seeds`` rows of ``x`` (and of a model's output)."""
        return int(self.sample.seeds.shape[0])

    @property
    def pos(self) -> torch.Tensor:
        """Link batches: ``[2, P]`` int64 positive pairs in local ids (rows of ``x`` and of
        the model's output; on ``x``'s device)."""
        return self._pairs(self.sample.pos, "pos")

    @property
    def neg(self) -> torch.Tensor:
        """Link batches: ``[2, P * K]`` int64 negative pairs in local ids."""
        return self._pairs(self.sample.neg, "neg")

    def _pairs(self, pairs: np.ndarray | None, what: str) -> torch.Tensor:
        if pairs is None:
            raise UsageError(f"batch.{what}: batch {self.index} of epoch {self.epoch} comes from "
                             "a node-classification plan; sample one with `oocstore sample "
                             "STORE --task link ...` for node pairs")
        return torch.from_numpy(pairs).to(self.x.device)

    def to_pyg(self):
        """Per-layer ``edge_index`` + sizes for PyG layers (on ``x``'s device): the
        layer-wise form, for a hand-written forward (see :meth:`to_pyg_data` for PyG's
        ready-made models)."""
        from .integrations.pyg import to_pyg

        return to_pyg(self.sample).to(self.x.device)

    def to_pyg_data(self):
        """The batch as a ``torch_geometric.data.Data`` like PyG's ``NeighborLoader``
        yields, for PyG's ready-made models (``torch_geometric.nn.models.GraphSAGE``,
        ``GAT``, ``GCN``) with trim-to-layer::

            d = batch.to_pyg_data()
            out = model(d.x, d.edge_index, num_sampled_nodes_per_hop=d.num_sampled_nodes,
                        num_sampled_edges_per_hop=d.num_sampled_edges)[:d.batch_size]
            loss = F.cross_entropy(out, d.y)

        Link batches add ``edge_label_index`` (``[2, P + N]``: ``pos`` then ``neg``) and
        ``edge_label`` (1 then 0), as ``LinkNeighborLoader`` does.
        ``x`` rows are the input nodes (seeds first; the store's dtype, so float16
        features need ``.float()``), ``n_id`` their global ids, ``y`` the seeds' labels
        (``batch_size`` rows), ``edge_index`` one graph over all nodes
        (:class:`~oocstore.integrations.pyg.PygHops` says how its edges are chosen)."""
        from .integrations.pyg import require_pyg, to_pyg_hops

        require_pyg()
        from torch_geometric.data import Data

        hops = to_pyg_hops(self.sample).to(self.x.device)
        data = Data(x=self.x, edge_index=hops.edge_index, y=self.y, n_id=hops.input_nodes,
                    batch_size=hops.num_seeds, num_sampled_nodes=hops.num_sampled_nodes,
                    num_sampled_edges=hops.num_sampled_edges)
        if self.sample.pos is not None:
            # As PyG's LinkNeighborLoader (binary negatives): positives first, label 1.
            pos, neg = self.pos, self.neg
            data.edge_label_index = torch.cat([pos, neg], dim=1)
            data.edge_label = torch.cat([torch.ones(pos.shape[1], device=pos.device),
                                         torch.zeros(neg.shape[1], device=neg.device)])
        return data

    def to_dgl(self):
        """DGL blocks (``dgl.create_block``), where the DGL environment is installed."""
        from .integrations.dgl import to_dgl

        return to_dgl(self.sample, device=self.x.device)


class NodeLoader:
    """Iterate the batches of one epoch of a packed plan, prefetched through the tiers."""

    def __init__(self, store: Store, plan: str | None = None, *, pack: str | None = None,
                 device: str | torch.device = "cpu", budget: MemoryBudget | None = None,
                 prefetch: int | None = None, timeout: float = 300.0, io_threads: int = 8,
                 rank: int | None = None, world_size: int | None = None,
                 verify_reads: bool = True):
        self.store = store
        # What re-opening this loader after it lent its budget to an evaluation loader
        # needs (see eval_loader).
        self._init_args = dict(device=device, budget=budget, prefetch=prefetch, timeout=timeout,
                               io_threads=io_threads, rank=rank, world_size=world_size,
                               verify_reads=verify_reads)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"device={str(device)!r}: no CUDA device is available on this "
                             "machine (torch.cuda.is_available() is False); use device='cpu'")
        if (rank is None) != (world_size is None):
            raise UsageError("NodeLoader: give both rank and world_size, or neither (then they "
                             "come from torch.distributed when it is initialised)")
        if rank is None:
            rank, world_size = current_rank()
        self.rank, self.world_size = check_rank(rank, world_size)
        self.plan_name = resolve_plan(store, plan, rank=self.rank, world_size=self.world_size)
        self.pack_name = pack or latest_pack(store, self.plan_name)
        self.budget = budget or MemoryBudget()
        self.accountant = BudgetAccountant(self.budget)
        self.timeout = timeout
        self.reader = self._open_reader(io_threads, verify_reads)
        if self.reader.meta.plan != self.plan_name:
            raise UsageError(f"pack {self.pack_name!r} was made from plan "
                             f"{self.reader.meta.plan!r}, not {self.plan_name!r}")
        self.split: str = self.reader.plan.meta.split  # "train", "val", "test", "custom"
        self._charges = []
        self._ring: StagingRing | None = None
        self._stream = None
        try:
            self._setup_budget(prefetch)
        except BaseException:
            if self._ring is not None:
                self._ring.close()
            self.reader.close()
            raise
        self.num_plan_epochs = self._packed_epochs()
        self.epoch = 0
        self._start = 0  # next batch index (resume)
        self._pipeline: Pipeline | None = None
        self._closed = False
        self._epoch_stats: list[dict[str, float]] = []
        self._wait = 0.0
        self._batches = 0
        self._turns = _Turns(self)  # the loaders that take turns in this budget
        self._suspended = False
        self._reads_before: dict[str, Any] = {}  # reader counters of earlier openings
        self._last_held: dict[str, int] | None = None  # charges when last suspended

    def _packed_epochs(self) -> int:
        """The plan epochs this loader cycles through: those the pack holds whole."""
        packed = self.reader.meta.packed_epochs
        if 1 <= packed < self.reader.plan.num_epochs:
            # Said, not silent: training then sees fewer distinct samples than the plan
            # (and than the in-memory reference, which reads every sampled epoch).
            log.warning("pack %r holds %d of plan %r's %d sampled epochs whole (its disk-blowup "
                        "cap): the loader cycles those %d, so training sees fewer distinct "
                        "neighbourhood samples than the plan has; pack with a lower "
                        "max_disk_blowup (every epoch, rows past the cap read from the base "
                        "array) or sample %d epoch(s) to match", self.pack_name, packed,
                        self.plan_name, self.reader.plan.num_epochs, packed, packed)
        return packed if packed >= 1 else self.reader.plan.num_epochs

    # -- budget (the arithmetic: oocstore/workingset.py) ----------------------------------
    def _open_reader(self, io_threads: int, verify_reads: bool) -> TieredReader:
        """Refuse a budget below the pack's recorded floor (naming its items), then open
        the tiered reader, leaving room for what this loader must charge besides."""
        from .tiers.reader import load_pack

        pm = load_pack(self.store, self.pack_name)
        lbytes = labels_bytes(self.store)
        mws = pm.min_working_set
        refuse_floor(mws, self.device.type, self.budget.cpu, self.pack_name, labels=lbytes)
        # Required before the reader's optional read-ahead buffers: this loader's own
        # buffers at depth 1, with the plan record size the pack recorded (older packs did
        # not: the loader's own charge then refuses what cannot fit).
        staging = pm.largest_batch_rows * pm.row_bytes
        rec = mws.get("plan_record_bytes", 0)
        reserve = (loader_required(labels_bytes=lbytes, record_bytes=rec, staging_bytes=staging,
                                   device_type=self.device.type)
                   + loader_depth_items(1, record_bytes=rec, staging_bytes=staging,
                                        device_type=self.device.type)).total("cpu")
        return TieredReader(self.store, self.pack_name, accountant=self.accountant,
                            io_threads=io_threads, device=self.device, reserve=reserve,
                            verify_reads=verify_reads)

    def _read_labels(self) -> None:
        # Read in chunks with pread (never mapped): resident memory is the compact copy.
        # Checksum-checked: a flipped label would train on a wrong target silently.
        reader = CheckedRows(self.store, "labels", fix="restore the store from a copy or "
                             "re-ingest it")
        n = self.store.array_meta("labels").shape[0]
        self.labels = np.empty(n, dtype=label_dtype(self.store))
        for lo in range(0, n, 1 << 20):
            self.labels[lo:lo + (1 << 20)] = reader.read(lo, min(n, lo + (1 << 20)))
        reader.close()

    def _setup_budget(self, prefetch: int | None) -> None:
        m = self.reader.meta
        staging = m.largest_batch_rows * m.row_bytes
        plan = self.reader.plan
        # Each batch in flight also holds its decoded plan record (ids as int64) and labels.
        self.record_bytes = rec = plan_record_bytes(
            plan.max_record_elems(), np.dtype(plan.meta.node_dtype).itemsize,
            plan.meta.batch_size)
        if prefetch is not None and int(prefetch) < 0:
            raise UsageError(f"prefetch {prefetch}: give 0 (read in the training loop's "
                             "thread, no overlap) or more batches")
        required = list(loader_required(labels_bytes=labels_bytes(self.store), record_bytes=rec,
                                        staging_bytes=staging, device_type=self.device.type))
        self._charges += WorkingSet(required[:1]).charge(self.accountant, "raise the cpu budget")
        self._read_labels()
        fix = (f"the pack's minimum working set is {format_size(m.min_working_set['cpu'])}; raise "
               "cpu_budget, lower the cpu cache when packing (`oocstore pack --cpu-cache`), or "
               "sample with a smaller batch size")
        self._charges += WorkingSet(required[1:]).charge(self.accountant, fix)
        if self.device.type == "cuda":
            self._setup_device(prefetch, staging, fix)
            return
        per_batch = staging + rec
        depth = prefetch
        if depth is None:
            # Depth 0 (batches read in the training loop's thread) when the budget holds
            # no prefetched batch: the slowest depth, but the smallest working set.
            depth = cpu_depth(lambda n: self.accountant.fits("cpu", n), per_batch, MAX_PREFETCH)
            if depth == 0:
                log.warning(
                    "cpu budget %s holds no prefetched batch (%s more would): batches are "
                    "read in the training loop's thread, without overlap", format_size(
                        self.budget.cpu), format_size(self.accountant.charged("cpu") + per_batch
                                                      - self.budget.cpu))
            else:
                log.info("prefetch depth %d (the largest <= %d that fits the cpu budget)", depth,
                         MAX_PREFETCH)
        self.prefetch = depth = int(depth)
        # Batch buffers charged: the one being assembled (by the reader), the one the
        # training loop holds and the prefetched ones: reused once released.
        self.reader.keep_batch_buffers(depth + 2)
        self._charges += loader_depth_items(
            depth, record_bytes=rec, staging_bytes=staging, device_type="cpu").charge(
            self.accountant, f"lower the prefetch depth (now {depth}) or raise the cpu budget")

    def _setup_device(self, prefetch: int | None, staging: int, fix: str) -> None:
        """CUDA: charge the staging ring (CPU) and the device batches (GPU) for the
        chosen depth, then allocate the ring and the side stream."""
        m = self.reader.meta
        on_device = not self.reader.gpu_on_host

        def items(depth: int) -> WorkingSet:
            gpu = device_items(largest_batch_rows=m.largest_batch_rows, row_bytes=m.row_bytes,
                               max_seeds=int(self.reader.plan.meta.batch_size), prefetch=depth,
                               gpu_tier_rows=m.gpu_rows if on_device else 0,
                               already_charged=staging if on_device else 0)
            return loader_depth_items(depth, record_bytes=self.record_bytes,
                                      staging_bytes=staging, device_type="cuda", gpu=gpu)

        def fits(depth: int) -> bool:
            ws = items(depth)
            return self.accountant.fits("cpu", ws.total("cpu")) and \
                self.accountant.fits("gpu", ws.total("gpu"))

        depth = choose_depth(fits, prefetch, MAX_PREFETCH)
        if prefetch is None:
            if depth == 0:
                refuse_prefetch(self.budget, items(1),
                                {t: self.accountant.charged(t) for t in ("cpu", "gpu")})
            log.info("prefetch depth %d (the largest <= %d that fits the cpu and gpu budgets)",
                     depth, MAX_PREFETCH)
        self.prefetch = depth
        self._charges += items(depth).charge(self.accountant, {
            "cpu": f"lower the prefetch depth (now {depth}) or raise the cpu budget; {fix}",
            "gpu": f"lower the prefetch depth (now {depth}), re-pack with a smaller gpu cache "
                   "(`oocstore pack --gpu-cache`), or raise the gpu budget"})
        self._ring = StagingRing(depth + 1, m.largest_batch_rows, m.feat_dim, m.dtype, pin=True,
                                 device=self.device)
        self._stream = torch.cuda.Stream(device=self.device)

    # -- evaluation loaders sharing the budget ------------------------------------------
    def eval_loader(self, split: str = "val", *, plan: str | None = None) -> "NodeLoader":
        """A loader over the evaluation plan of ``split`` (``{split}-eval``, the plan and
        pack ``oocstore train`` prepares to fit its budget; or ``plan``) with this
        loader's device, budget, prefetch and rank.

        The two share the one budget instead of each holding its own. Where what this
        loader holds leaves room for the evaluation loader, it is opened in that room
        and both stay open. Otherwise they take turns: opening one releases the other's
        buffers (tiers, staging, labels), and the next iteration of the other opens
        them again (re-reading its CPU tier; a training epoch interrupted by an
        evaluation resumes where it stopped). Either way a training loop may validate
        every epoch within the budget it trains in. Close the evaluation loader when
        done with it (it is a context manager)."""
        name = plan or f"{split}-eval"
        try:
            resolved = resolve_plan(self.store, name, rank=self.rank,
                                    world_size=self.world_size)
            latest_pack(self.store, resolved)
        except (UsageError, StoreNotFoundError) as err:
            if plan is not None:
                raise
            meta = self.reader.plan.meta
            how = f" --fanouts {format_fanouts(meta.fanouts)} --batch-size {meta.batch_size}"
            budget = (f" --cpu-budget {self.budget.cpu}" if self.budget.cpu is not None else
                      " --cpu-budget SIZE")
            raise UsageError(
                f"store {self.store.path} has no packed evaluation plan {name!r} ({err}): "
                f"`oocstore train {self.store.path} --epochs 1{budget}` (or, in Python, "
                f"oocstore.train.prepare_evaluation) prepares it and test-eval to fit the "
                f"budget, or make it with `oocstore sample "
                f"{self.store.path} --split {split} --name {name}{how}` and `oocstore pack "
                f"{self.store.path} --plan {name}{budget}`") from err
        args = {**self._init_args, "rank": self.rank, "world_size": self.world_size}
        ev = None
        room = self._turns.room()
        if room is not None:
            try:  # beside the open loaders, in what they leave of the budget
                ev = NodeLoader(self.store, resolved, **{**args, "budget": room})
            except BudgetError:
                ev = None
        if ev is None:
            self._turns.release_all()  # the open loaders' memory is the new one's now
            ev = NodeLoader(self.store, resolved, **args)
        self._turns.join(ev)
        return ev

    def lend_budget(self) -> None:
        """Release every buffer this loader holds and its charges, so that other work in
        the same budget (an evaluation pass over the whole graph, say) can use that
        memory. The position in the epoch is kept; the next iteration (or
        :meth:`take_turn`) re-opens the buffers where it left off, and :meth:`stats` keep
        counting across. A no-op on a loader that has lent its budget already or is closed.
        (:meth:`eval_loader` does this by itself for the loaders it must.)"""
        self._suspend()

    def _suspend(self) -> None:
        """Release every buffer this loader holds (its position is kept)."""
        if self._suspended or self._closed:
            return
        self._stop_pipeline()
        # What it will hold again when it re-opens (its budget and pack are unchanged).
        self._last_held = {t: self.accountant.charged(t) for t in ("cpu", "gpu")}
        st = self.reader.stats()
        before = self._reads_before
        self._reads_before = {
            "bytes_read": before.get("bytes_read", 0) + st["bytes_read"],
            "useful_bytes": before.get("useful_bytes", 0) + st["useful_bytes"],
            "segment_reads": before.get("segment_reads", 0) + st["segment_reads"],
            "hits": {k: before.get("hits", {}).get(k, 0) + v["hits"]
                     for k, v in st["tiers"].items()},
            "assembly": _summed_counters(st["assembly"], before.get("assembly", {}))}
        self._release()
        self.labels = None
        self._suspended = True

    def _wake(self) -> None:
        """Open the buffers :meth:`_suspend` released, where this loader left off."""
        if not self._suspended:
            return
        version = self.reader.meta.plan_version
        keep = {k: getattr(self, k) for k in ("epoch", "_start", "_epoch_stats", "_wait",
                                              "_batches", "_turns", "_reads_before",
                                              "_last_held")}
        NodeLoader.__init__(self, self.store, self.plan_name, pack=self.pack_name,
                            **{**self._init_args, "rank": self.rank,
                               "world_size": self.world_size})
        for k, v in keep.items():
            setattr(self, k, v)
        if self.reader.meta.plan_version != version:
            self.close()
            raise FormatError(f"plan {self.plan_name!r} was re-sampled while this loader lent "
                              "its budget to an evaluation loader: build a new loader")

    def take_turn(self) -> None:
        """Hold this loader's buffers now: re-open them if an evaluation loader borrowed
        them (suspending the loaders it must to stay in the budget); a no-op otherwise.
        Iterating does this by itself; call it to keep the re-opening out of a timed
        loop."""
        if self._closed:
            raise UsageError("this loader was closed; build a new one")
        self._turns.take(self)

    # -- epochs and resume -----------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise UsageError(f"epoch {epoch} must be >= 0")
        self._stop_pipeline()
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    @property
    def plan_epoch(self) -> int:
        return self.epoch % self.num_plan_epochs

    @property
    def plan(self):
        """The :class:`~oocstore.plan.PlanReader` of the plan this loader reads (its
        ``meta`` holds the fanouts and batch size)."""
        self.take_turn()  # its records are read through files this loader holds open
        return self.reader.plan

    @property
    def num_layers(self) -> int:
        """Sampled layers per batch: a model built for this loader has as many."""
        return self.reader.plan.num_layers  # from the plan's metadata

    def __len__(self) -> int:
        return self.reader.num_batches(self.plan_epoch)  # from the plan's metadata

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "next_batch": self._start, "plan": self.plan_name,
                "pack": self.pack_name, "plan_version": self.reader.meta.plan_version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("plan") != self.plan_name or state.get("pack") != self.pack_name:
            raise FormatError(f"loader state is for plan {state.get('plan')!r} / pack "
                              f"{state.get('pack')!r}, not {self.plan_name!r} / "
                              f"{self.pack_name!r}: resume with plan={state.get('plan')!r}")
        if state.get("plan_version") != self.reader.meta.plan_version:
            raise FormatError("loader state was saved for another version of the plan: it was "
                              "re-sampled since; start a new run instead of resume=True")
        self._stop_pipeline()
        self.epoch = int(state["epoch"])
        self._start = int(state["next_batch"])

    # -- iteration ------------------------------------------------------------------
    def _read(self, b: int):
        if threading.current_thread().name == "oocstore-read":
            # The reader thread assembles on one numba thread, leaving the other cores to
            # the model's compute (numba's thread count is per calling thread).
            numba.set_num_threads(1)
        e = self.plan_epoch
        self.reader.advise(e, b)  # the batch's reads start together
        sample = self.reader.plan.read_batch(e, b)
        if self.device.type == "cuda":
            # Staged in the pinned ring, copied on the loader's side stream; ``event``
            # completes when x is on the device.
            x, event = self.reader.read_batch_async(e, b, self._ring, self._stream)
        else:
            x = torch.from_numpy(self.reader.read_batch(e, b))
            event = None
        y = torch.from_numpy(self.labels[sample.seeds].astype(np.int64))
        return b, sample, x, y, event

    def __iter__(self) -> Iterator[Batch]:
        self.take_turn()
        self._stop_pipeline()
        epoch = self.epoch
        start = self._start
        n = len(self)
        if self.prefetch == 0:
            yield from self._iter_sync(epoch, start, n)
            return
        stages = [("oocstore-read", self._read)]
        self._pipeline = Pipeline(range(start, n), stages, depth=self.prefetch,
                                  timeout=self.timeout)
        t_epoch = time.perf_counter()
        wait0 = 0.0
        try:
            while True:
                pipeline = self._pipeline
                for b, sample, x, y, event in pipeline:
                    y = self._hand_over(x, y, event)
                    self._start = b + 1
                    self._batches += 1
                    yield Batch(epoch=epoch, index=b, sample=sample, x=x, y=y, _event=event)
                    if self._pipeline is not pipeline:
                        break  # stopped meanwhile (its pending batches are dropped)
                else:
                    break
                if not self._suspended:
                    return  # closed, or moved (set_epoch, load_state_dict): a new loop starts
                # Lent its budget inside the loop (lend_budget, eval_loader): re-opened
                # here, the epoch goes on where it was.
                wait0 += pipeline.wait_seconds
                self.take_turn()
                self._pipeline = Pipeline(range(self._start, n), stages, depth=self.prefetch,
                                          timeout=self.timeout)
            self._start = 0  # the epoch is complete
            self.epoch = epoch + 1
        finally:
            if self._pipeline is not None:
                wait0 += self._pipeline.wait_seconds
                self._wait += wait0
                self._epoch_stats.append({"epoch": epoch, "time_s": time.perf_counter() - t_epoch,
                                          "wait_s": wait0,
                                          **{f"{k}_s": v for k, v in
                                             self._pipeline.stage_seconds.items()}})
            self._stop_pipeline()

    def _iter_sync(self, epoch: int, start: int, n: int) -> Iterator[Batch]:
        """``prefetch=0``: every read happens in the consumer's thread (no overlap) — the
        baseline that shows what the pipeline buys."""
        t_epoch = time.perf_counter()
        wait = 0.0
        for b in range(start, n):
            if self._suspended:  # lent its budget inside the loop: re-opened here
                self.take_turn()
            t0 = time.perf_counter()
            # One numba thread for the assembly, as on the oocstore-read thread: a parallel
            # region over a few hundred rows costs more than it saves, and on a busy
            # machine its barrier waits for a core (the training loop's setting is put back).
            threads = numba.get_num_threads()
            numba.set_num_threads(1)
            try:
                b, sample, x, y, event = self._read(b)
            finally:
                numba.set_num_threads(threads)
            y = self._hand_over(x, y, event)
            wait += time.perf_counter() - t0
            self._start = b + 1
            self._batches += 1
            yield Batch(epoch=epoch, index=b, sample=sample, x=x, y=y, _event=event)
        self._start = 0
        self.epoch = epoch + 1
        self._wait += wait
        self._epoch_stats.append({"epoch": epoch, "time_s": time.perf_counter() - t_epoch,
                                  "wait_s": wait})

    def _hand_over(self, x: torch.Tensor, y: torch.Tensor, event) -> torch.Tensor:
        """Make ``x`` safe to use on the training loop's current stream (it was copied on
        the loader's side stream) and put ``y`` on the device; returns ``y``."""
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            x.record_stream(current)
        return y.to(self.device, non_blocking=True)

    def _stop_pipeline(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None

    # -- stats and lifecycle -------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        st = self.reader.stats()
        before = self._reads_before
        if before:  # add what earlier openings of this loader read (see eval_loader)
            for k in ("bytes_read", "useful_bytes", "segment_reads"):
                st[k] = (0 if self._suspended else st[k]) + before[k]
            hits = {k: (0 if self._suspended else v["hits"]) + before["hits"].get(k, 0)
                    for k, v in st["tiers"].items()}
            total = sum(hits.values())
            st["hit_rate"] = {k: (v / total if total else 0.0) for k, v in hits.items()}
            st["read_amplification"] = (st["bytes_read"] / st["useful_bytes"]
                                        if st["useful_bytes"] else 0.0)
            st["assembly"] = _summed_counters({} if self._suspended else st["assembly"],
                                              before.get("assembly", {}), st["assembly"])
        out = {**st, "batches": self._batches, "wait_s": self._wait,
               "epochs": list(self._epoch_stats), "prefetch": self.prefetch,
               "plan": self.plan_name, "pack": self.pack_name}
        if self._ring is not None:
            out["staging"] = self._ring.stats()
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._turns.leave(self)
        if not self._suspended:
            self._release()

    def _release(self) -> None:
        self._stop_pipeline()
        if self._ring is not None:
            self._ring.close()  # waits for the copies still reading it
        self._stream = None
        self.reader.close()
        for c in self._charges:
            c.release()
        self._charges = []

    def __enter__(self) -> "NodeLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _summed_counters(now: dict, before: dict, base: dict | None = None) -> dict:
    """The reader's assembly stats ``now`` with the counters of earlier openings of the
    loader (``before``) added, so they keep counting across :meth:`NodeLoader.lend_budget`
    instead of starting again from zero; ``threads`` (a setting, not a counter) is taken
    from ``base`` (default ``now``)."""
    out = dict(now if base is None else base)
    for k in set(now) | set(before):
        if k != "threads":
            out[k] = now.get(k, 0) + before.get(k, 0)
    return out


class _Turns:
    """Loaders that share the budget of the first (:meth:`NodeLoader.eval_loader`): the
    charges of the open ones never add up to more than that budget; a loader that must
    open suspends others (oldest first) until what it held before fits beside them."""

    def __init__(self, first: NodeLoader):
        self.members: list[NodeLoader] = [first]
        self.budget = first.budget

    def _held(self, tier: str, but: NodeLoader | None = None) -> int:
        return sum(m.accountant.charged(tier) for m in self.members
                   if m is not but and not m._suspended and not m._closed)

    def room(self) -> MemoryBudget | None:
        """What the open members leave of the budget (None: nothing left)."""
        left = {}
        for tier in ("cpu", "gpu"):
            limit = getattr(self.budget, tier)
            left[tier] = None if limit is None else limit - self._held(tier)
            if left[tier] is not None and left[tier] <= 0:
                return None
        return MemoryBudget(cpu=left["cpu"], gpu=left["gpu"], disk=self.budget.disk)

    def _fits(self, loader: NodeLoader) -> bool:
        need = loader._last_held
        if need is None:
            return False
        return all(getattr(self.budget, t) is None
                   or self._held(t, but=loader) + need[t] <= getattr(self.budget, t)
                   for t in ("cpu", "gpu"))

    def join(self, loader: NodeLoader) -> None:
        loader._turns = self
        self.members.append(loader)

    def leave(self, loader: NodeLoader) -> None:
        if loader in self.members:
            self.members.remove(loader)

    def release_all(self) -> None:
        for m in self.members:
            m._suspend()

    def take(self, loader: NodeLoader) -> None:
        if not loader._suspended:
            return
        for m in self.members:
            if self._fits(loader):
                break
            if m is not loader:
                m._suspend()
        loader._wake()
