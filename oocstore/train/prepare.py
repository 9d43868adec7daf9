"""Evaluation plans and packs for ``oocstore train``, checked in full before the first write.

``train`` measures validation and test accuracy through one-epoch plans on those splits
(``val-eval``, ``test-eval``: the training plan's fanouts and batch size, sharded like
it), packed to fit the budget the training pack met: the training pack's CPU cache
shrunk to what the budget leaves, in the packer's own segments, or one-batch segments, or
none (rows read from the base array); when even that does not fit, the plan is sampled
with half the batch size until it does (:func:`_sample_fitting`; an existing evaluation
plan with a batch no larger than training's is reused). Each pack stays within
:data:`EVAL_DISK_SHARE` x the feature bytes on disk where the budget allows. When the
store lacks them, ``train`` creates them — and a command that will be refused must
write nothing. So preparation runs in two phases:

1. **Check** (:func:`plan_eval`): under the store's writer lock, on the latest commit,
   every evaluation plan that is missing or stale is sampled *in memory* with the
   sampler the CLI uses (the same records, bit for bit), and the pack every plan needs
   is laid out with the packer's own :func:`~oocstore.pack.packer.plan_layout` and held
   against the budgets exactly as packing and the loader will (an existing pack that
   the budget cannot hold is re-packed, not reused). Any refusal is raised here, before
   anything is written. The training pack is checked against the budgets before that
   (:func:`check_loader_fits`), by the caller, on every rank.
2. **Write** (:func:`apply_eval`): still under the lock, the sampled plans are committed
   (one transaction per plan or shard group) and packed (one transaction per pack).
   The lock is held throughout, so no other command commits in between and a second
   ``train`` waits for this one (``wait`` seconds) and then finds the plans made.

Memory: phase 1 holds the sampled evaluation plans in RAM until they are committed
(one epoch over the validation and test splits).

:class:`WriteLog` records what a command committed, as soon as it is durable, so the
CLI can say truthfully what an interrupted or failed ``train`` left behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import distributed as dist
from ..budget import MemoryBudget
from ..errors import BudgetError, StoreLockedError
from ..pack import PackOptions, pack_plan
from ..pack.format import PackMeta, pack_key
from ..pack.packer import labels_bytes, plan_layout, plan_version
from ..plan import PlanMeta, PlanReader, list_plans, plan_key, shard_name
from ..store import Store
from ..tiers.reader import list_packs
from ..units import format_size
from ..workingset import loader_floor, refuse_floor

log = logging.getLogger(__name__)

#: Seconds a ``train`` that must create evaluation plans waits for another writer.
WRITER_WAIT_S = 600.0


# -- what a command wrote -----------------------------------------------------------------

@dataclass
class WriteLog:
    """What one command committed to ``store`` (and wrote beside it), in order.

    ``begin(what, key)`` before a commit of catalog entry ``key``, ``done()`` once it
    returned. An interrupt may land after the commit but before ``done()``; then
    :meth:`settled` compares the entry with its value before and counts the commit
    only if the store holds it.
    """

    store: str
    committed: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # path -> what (checkpoints)
    _pending: tuple[str, str, Any] | None = None

    def begin(self, what: str, key: str, before: Any) -> None:
        self._pending = (what, key, before)

    def done(self) -> None:
        if self._pending is not None:
            self.committed.append(self._pending[0])
            self._pending = None

    def wrote_file(self, path: str | Path, what: str) -> None:
        self.files[str(path)] = what

    def settled(self) -> list[str]:
        """The commits, including a pending one the store turns out to hold."""
        if self._pending is not None:
            what, key, before = self._pending
            try:
                with Store(self.store) as s:
                    if s.get(key) != before:
                        self.committed.append(what)
            except Exception:  # noqa: BLE001 - an unreadable store: say it may have happened
                self.committed.append(f"possibly {what}")
            self._pending = None
        return list(self.committed)

    def describe(self) -> str:
        """One sentence: what the command left in the store and beside it."""
        done = self.settled()
        if done:
            text = (f"this command committed {', '.join(done)} to {self.store} (kept: later "
                    "runs reuse them; `oocstore rm` removes them); the rest of the store is as "
                    "it was before")
        else:
            text = "the store was left as it was before this command"
        for path, what in self.files.items():
            text += f"; it wrote {what} to {path}"
        return text


# -- the loader's minimum -----------------------------------------------------------------

def loader_minimum(store: Store, pm: PackMeta, device_type: str = "cpu") -> dict[str, int]:
    """The least CPU and GPU memory a :class:`~oocstore.loader.NodeLoader` over pack ``pm``
    needs (prefetch depth 1), as the loader itself computes it."""
    mws = pm.min_working_set
    cpu = loader_floor(mws, device_type, labels=labels_bytes(store))
    gpu = int(mws["gpu"]) if device_type != "cpu" else 0
    return {"cpu": cpu, "gpu": gpu}


def check_loader_fits(store: Store, pack: str, budget: MemoryBudget, device_type: str) -> None:
    """Refuse, before anything is written, a training pack the budgets cannot hold (the
    items of the loader's floor, :func:`oocstore.workingset.floor_items`)."""
    mws = list_packs(store)[pack].min_working_set
    refuse_floor(mws, device_type, budget.cpu, pack, labels=labels_bytes(store))
    if device_type != "cpu":
        refuse_floor(mws, device_type, budget.gpu, pack, gpu=True)


# -- sampling in memory -------------------------------------------------------------------

class _MemoryArray:
    def __init__(self, dtype, row_shape):
        self.dtype, self.row_shape, self.parts = np.dtype(dtype), tuple(row_shape), []

    def append(self, rows: np.ndarray) -> None:
        self.parts.append(np.array(rows, dtype=self.dtype, copy=True))

    def close(self) -> None:
        pass

    def data(self) -> np.ndarray:
        if not self.parts:
            return np.zeros((0, *self.row_shape), dtype=self.dtype)
        return np.ascontiguousarray(np.concatenate(self.parts).reshape(-1, *self.row_shape))


class _MemoryTransaction:
    """The part of :class:`~oocstore.store.Transaction` a plan writer uses, in RAM."""

    def __init__(self):
        self.arrays: dict[str, tuple[str, _MemoryArray]] = {}
        self.puts: dict[str, Any] = {}

    def array_writer(self, name, dtype, row_shape=(), *, subdir="arrays", **_):
        w = _MemoryArray(dtype, row_shape)
        self.arrays[name] = (subdir, w)
        return w

    def write_array(self, name, data, *, subdir="arrays"):
        w = self.array_writer(name, np.asarray(data).dtype, np.asarray(data).shape[1:],
                              subdir=subdir)
        w.append(data)

    def put(self, key: str, value: Any) -> None:
        self.puts[key] = value


class _DryStore:
    """``store`` for the sampler, except that its transaction stays in memory."""

    def __init__(self, store: Store):
        self._store = store
        self.txn: _MemoryTransaction | None = None

    def __getattr__(self, name):
        return getattr(self._store, name)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_MemoryTransaction]:
        txn = _MemoryTransaction()
        yield txn
        self.txn = txn


class _MemoryPlan:
    """What :func:`plan_layout` reads of a plan, for one sampled in memory."""

    def __init__(self, meta: PlanMeta, arrays: dict[str, np.ndarray]):
        self.meta = meta
        self.records = arrays[meta.arrays["data"]]
        self._index = arrays[meta.arrays["index"]]
        self._counts = arrays[meta.arrays["counts"]]

    @property
    def name(self) -> str:
        return self.meta.name

    def access_counts(self) -> np.ndarray:
        return self._counts

    def index(self) -> np.ndarray:
        return self._index

    def verify(self) -> None:
        """Nothing to check: the records were sampled by this process and never left its
        memory (a stored plan's records are checked against their checksums here)."""


@dataclass
class _Sampled:
    """Evaluation plans sampled in memory, to be committed in one transaction."""

    name: str
    arrays: dict[str, tuple[str, np.ndarray]]  # array name -> (subdir, data)
    puts: dict[str, Any]
    plans: dict[str, _MemoryPlan]  # member -> plan


def _sample_in_memory(store: Store, split: str, like: PlanMeta, name: str, seed: int,
                      world_size: int, overwrite: bool, batch_size: int | None = None) -> _Sampled:
    from oocstore.samplers.neighbor import prepare_sampling, run_sampling  # composition root

    dry = _DryStore(store)
    job = prepare_sampling(dry, fanouts=list(like.fanouts),
                           batch_size=batch_size or like.batch_size,
                           epochs=1, seed=seed, name=name, split=split, world_size=world_size,
                           overwrite=overwrite)
    run_sampling(dry, job)
    txn = dry.txn
    arrays = {k: (subdir, w.data()) for k, (subdir, w) in txn.arrays.items()}
    data = {k: a for k, (_, a) in arrays.items()}
    plans = {}
    for key, value in txn.puts.items():
        meta = PlanMeta.from_dict(value)
        plans[meta.name] = _MemoryPlan(meta, data)
    return _Sampled(name=name, arrays=arrays, puts=dict(txn.puts), plans=plans)


# -- the check ----------------------------------------------------------------------------

@dataclass
class EvalWork:
    """What preparing the evaluation plans will write (empty: nothing)."""

    samples: list[_Sampled] = field(default_factory=list)
    packs: list[tuple[str, PackOptions]] = field(default_factory=list)  # member, options
    unsampled: list[str] = field(default_factory=list)  # to sample (sample=False)

    def __bool__(self) -> bool:
        return bool(self.samples or self.packs or self.unsampled)


def _members(name: str, world_size: int) -> list[str]:
    return [name] if world_size == 1 else [shard_name(name, r) for r in range(world_size)]


def plan_eval(store: Store, like: PlanMeta, packed_like: str | None, seed: int,
              budget: MemoryBudget, device_type: str = "cpu", world_size: int = 1, *,
              sample: bool = True) -> EvalWork:
    """Check what the evaluation plans need and that it fits; write nothing.

    ``like``: the training plan's meta (fanouts, batch size); ``packed_like``: its pack
    (None: in-memory training, plans only). Raises (``BudgetError`` with the numbers and
    the fix) for anything that would be refused later. ``sample=False``: a cheap look
    that lists plans to sample in ``unsampled`` instead of sampling (and checking) them."""
    work = EvalWork()
    plans = list_plans(store)
    packs = list_packs(store)
    for split in ("val", "test"):
        if split not in store.splits:
            continue
        name = f"{split}-eval"
        members = _members(name, world_size)
        if world_size == 1:
            meta = plans.get(name)
        else:
            shards = dist.group_shards(store, name, plans)
            meta = shards.get(0) if len(shards) == world_size else None
        # An evaluation plan sampled with a smaller batch than training's (to fit the
        # budget) serves as well: every seed is evaluated once whatever the batch size.
        if meta is not None and meta.fanouts == like.fanouts \
                and meta.batch_size <= like.batch_size:
            readers = {m: PlanReader(store, m) for m in members}
            if packed_like is None:
                continue
            ref = packs[packed_like]
            try:
                for member in members:
                    version = plan_version(store, readers[member])
                    current = [p for p in packs.values()
                               if p.plan == member and p.plan_version == version]
                    if current and all(_fits(loader_minimum(store, p, device_type), budget)
                                       for p in current):
                        continue
                    work.packs.append((member, _eval_pack_options(
                        store, readers[member], ref, budget, device_type, member)))
                continue
            except BudgetError:
                # The plan's batches are too large for this budget: sample it again with
                # smaller batches (below), replacing it and its packs.
                work.packs = [(m, o) for m, o in work.packs if m not in members]
                if not sample:
                    work.unsampled.append(name)
                    continue
        elif not sample:
            work.unsampled.append(name)
            continue
        sampled, options = _sample_fitting(store, split, like, name, seed, world_size,
                                           overwrite=any(m in plans for m in members),
                                           ref=packs[packed_like] if packed_like else None,
                                           budget=budget, device_type=device_type)
        work.samples.append(sampled)
        work.packs.extend(options)
    return work


def _sample_fitting(store: Store, split: str, like: PlanMeta, name: str, seed: int,
                    world_size: int, *, overwrite: bool, ref: PackMeta | None,
                    budget: MemoryBudget, device_type: str
                    ) -> tuple[_Sampled, list[tuple[str, PackOptions]]]:
    """The evaluation plan sampled in memory with the training plan's batch size, halved
    until its packs fit ``budget`` (evaluation visits every seed once whatever the batch
    size, so a smaller batch changes only the memory it needs); with the options of
    each member's pack (none for in-memory training, ``ref`` None)."""
    batch = int(like.batch_size)
    best: EvalBudgetError | None = None
    while True:
        log.info("sampling evaluation plan %r with %d seeds per batch (in memory, committed "
                 "once checked)", name, batch)
        sampled = _sample_in_memory(store, split, like, name, seed, world_size,
                                    overwrite=overwrite, batch_size=batch)
        if ref is None:
            return sampled, []
        try:
            return sampled, [(m, _eval_pack_options(store, sampled.plans[m], ref, budget,
                                                    device_type, m))
                             for m in _members(name, world_size)]
        except EvalBudgetError as err:
            # Smaller batches hold less staging but more batches (the per-batch tables
            # grow): stop once halving no longer lowers the minimum.
            if best is not None and err.need >= best.need:
                raise best from None
            best = err
            if batch == 1:
                raise
            log.info("evaluation plan %r with %d seeds per batch does not fit (%s): halving "
                     "the batch", name, batch, err)
            batch = max(1, batch // 2)


def _fits(need: dict[str, int], budget: MemoryBudget) -> bool:
    return all(getattr(budget, t) is None or need[t] <= getattr(budget, t) for t in ("cpu", "gpu"))


def _eval_pack_options(store: Store, plan, ref: PackMeta, budget: MemoryBudget,
                       device_type: str, name: str) -> PackOptions:
    """Options of an evaluation pack that a loader on ``device_type`` can run inside
    ``budget``: the training pack's CPU cache (at most), shrunk to what the budget leaves
    beside the plan's minimum; segments of the packer's own length, or one batch long
    when those do not fit (the smallest segment buffer; batches past the disk-blowup cap
    then read from the base array). Raises ``BudgetError`` naming ``cpu_budget`` when
    even one-batch segments without a cache do not fit (the caller then samples smaller
    batches)."""
    blowup = max(ref.max_disk_blowup, 1.0)
    gpu_budget = budget.gpu if device_type != "cpu" else None
    want = ref.cpu_rows * ref.row_bytes
    rb = ref.row_bytes

    def fits(layout) -> bool:
        mws = layout.min_working_set
        return (budget.cpu is None or loader_floor(mws, device_type) <= budget.cpu) and \
            (gpu_budget is None or mws["gpu"] <= gpu_budget)

    def options(cache: int, segment_batches: int | None, cap: float) -> PackOptions:
        return PackOptions(cpu_cache=cache, max_disk_blowup=cap, cpu_budget=budget.cpu,
                           gpu_budget=gpu_budget, segment_batches=segment_batches)

    def within_share(opts: PackOptions) -> PackOptions:
        # the disk share is a default, the budget a hard limit: keep opts if it does not fit
        shared = _within_eval_disk_share(store, plan, opts)
        return shared if shared is opts or fits(plan_layout(store, plan, shared)) else opts

    smallest = None
    # Segments as the packer would choose them; one batch long (the smallest buffer);
    # none (every row read from the base array: no segment buffer at all).
    for seg, cap in ((None, blowup), (1, blowup), (1, 0.0)):
        floor = plan_layout(store, plan, options(0, seg, cap))
        need = loader_floor(floor.min_working_set, device_type)
        if smallest is None or need < smallest[0]:
            smallest = (need, floor.min_working_set)
        if not fits(floor):
            continue
        room = want if budget.cpu is None else min(want, budget.cpu - need)
        cache = max(0, room) // rb * rb if rb else 0
        while cache > 0:  # a cache changes which rows are cold, so the segments: check
            opts = options(cache, seg, cap)
            if fits(plan_layout(store, plan, opts)):
                return within_share(opts)
            cache = cache // 2 // rb * rb
        return within_share(options(0, seg, cap))
    need, mws = smallest
    if budget.cpu is not None and need > budget.cpu:
        raise EvalBudgetError(
            f"cpu budget {format_size(budget.cpu)} is too small to evaluate on plan {name!r}: "
            f"even without segments or a cpu cache its pack needs {format_size(need)} "
            f"({mws.get('batches_in_flight', 3)} batches of staging "
            f"{format_size(mws['staging_bytes'])} each + labels "
            f"{format_size(mws['labels_bytes'])} + plan tables "
            f"{format_size(mws['tables_bytes'])} + read buffers): raise cpu_budget to at "
            f"least {format_size(need)}", need=need)
    raise EvalBudgetError(
        f"gpu budget {format_size(gpu_budget)} is too small to evaluate on plan {name!r}: its "
        f"pack needs {format_size(mws['gpu'])} of gpu for the batches on the device: raise "
        f"gpu_budget to at least {format_size(mws['gpu'])}", need=need)


class EvalBudgetError(BudgetError):
    """An evaluation pack that no layout fits into the budget; ``need``: the smallest
    cpu minimum found (the caller compares batch sizes by it)."""

    def __init__(self, message: str, *, need: int):
        super().__init__(message)
        self.need = need


#: Disk an evaluation pack may take, tiers and segments together, as a multiple of the
#: feature bytes. Evaluation reads each plan once per evaluation, so packing it at the
#: training pack's blowup (4x by default, for each of val and test) would more than
#: double a store for little gain; batches past the share read rows from the base array.
EVAL_DISK_SHARE = 1.0


def _within_eval_disk_share(store: Store, plan, opts: PackOptions) -> PackOptions:
    """``opts`` with the segments' cap lowered so that the pack's tier rows plus its
    segments stay within :data:`EVAL_DISK_SHARE` x the feature bytes. The segment
    length stays what the packer picks under ``opts``' cap. Batches left unpacked need
    read buffers for their base-array rows; where that no longer fits ``opts``' CPU
    budget, the memory budget wins and ``opts`` is kept (the budget is a hard limit,
    the disk share a default)."""
    feature_bytes = store.array_meta("features").nbytes
    if not feature_bytes:
        return opts
    tiers = min(opts.cpu_cache + opts.gpu_cache, feature_bytes)
    share = max(0.0, EVAL_DISK_SHARE - tiers / feature_bytes)
    if share >= opts.max_disk_blowup:
        return opts
    segment_batches = opts.segment_batches or plan_layout(store, plan, opts).segment_batches
    shared = PackOptions(**{**opts.__dict__, "max_disk_blowup": math.floor(share * 1e6) / 1e6,
                            "segment_batches": segment_batches})
    if opts.cpu_budget is not None:
        need = plan_layout(store, plan, shared).min_working_set["cpu"]
        if need > opts.cpu_budget:
            log.info("evaluation pack of plan %r: packed up to its %gx disk cap, not the %gx "
                     "share (the share's row reads need %s > cpu budget %s)", plan.name,
                     opts.max_disk_blowup, EVAL_DISK_SHARE, format_size(need),
                     format_size(opts.cpu_budget))
            return opts
    return shared


# -- the writes ---------------------------------------------------------------------------

def apply_eval(store: Store, work: EvalWork, writes: WriteLog | None = None) -> None:
    """Commit what :func:`plan_eval` checked (call it under the same writer lock)."""
    writes = writes or WriteLog(str(store.path))
    for sampled in work.samples:
        key = plan_key(next(iter(sampled.plans)))
        writes.begin(f"plan {sampled.name!r}", key, store.get(key))
        with store.transaction() as txn:
            for array, (subdir, data) in sampled.arrays.items():
                txn.write_array(array, data, subdir=subdir)
            for k, v in sampled.puts.items():
                txn.put(k, v)
        writes.done()
    for member, opts in work.packs:
        key = pack_key(member)
        writes.begin(f"pack {member!r}", key, store.get(key))
        # The eval pack is named after its plan, so a re-sampled plan replaces it.
        pack_plan(store, member, options=opts, overwrite=True)
        writes.done()


@contextlib.contextmanager
def writer(store_path: str | Path, wait: float) -> Iterator[Store]:
    """The store opened for writing with its writer lock held (waiting up to ``wait``
    seconds for another writer, and saying so)."""
    with Store(store_path, readonly=False) as store, contextlib.ExitStack() as held:
        try:
            held.enter_context(store.writer_lock())
        except StoreLockedError:
            log.warning("store %s is being written by another command: waiting up to %.0f s "
                        "for it to finish before creating evaluation plans", store.path, wait)
            held.enter_context(store.writer_lock(wait=wait))
        yield store
