"""The working set: every buffer a pack's readers hold, as one itemised list.

What a run holds is computed here once, as :class:`Item` s (name, bytes, tier, why) in
a :class:`WorkingSet`, and everything else is built from those lists:

* the **minimum working set** a pack records (:func:`pack_minimum`, :func:`working_set`:
  the dict stored in the catalog), which ``pack --cpu-budget`` checks
  (:func:`check_budget`) and ``oocstore plan-budget`` fills from estimates;
* the **loader floor** read back from that record (:func:`floor_items`,
  :func:`loader_floor`), which ``NodeLoader`` and ``train`` refuse up front
  (:func:`refuse_floor`) and ``inspect`` prints;
* the charges the **tiered reader** makes when it opens (:func:`reader_items`, plus the
  optional segment read-ahead buffers, :func:`read_ahead_buffers`);
* the charges the **loader** makes for the batches it holds (:func:`loader_required`,
  :func:`loader_depth_items`), at the prefetch depth the budget leaves room for
  (:func:`cpu_depth`, :func:`choose_depth`);
* what a **CUDA** loader holds on the device (:func:`device_charges`,
  :func:`device_overhead`).

Every :class:`~oocstore.errors.BudgetError` these raise lists the items with their
sizes, so the message and the arithmetic cannot drift apart. The numbers are those of
``docs/BUDGETS.md`` (the tables there name the same items). This module computes; the
:class:`~oocstore.budget.BudgetAccountant` charges, and :meth:`WorkingSet.charge` hands the
items to it in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from .errors import BudgetError
from .units import format_size

#: Batches a CPU-device loader holds at its smallest prefetch depth (0): the one being
#: assembled and the one the training loop holds. Each prefetched batch adds one more
#: (``prefetch_bytes`` in the minimum working set).
MIN_BATCHES_IN_FLIGHT = 2

#: The CUDA caching allocator rounds every allocation up to 512 bytes and hands out a
#: cached block whole when no more than 1 MiB of it would be left over (its
#: ``kSmallSize``), so one device buffer can occupy up to 1 MiB more than its size in
#: ``torch.cuda.memory_allocated()``: charged once per large device buffer.
CUDA_BLOCK_SLACK = 1 << 20
_CUDA_ROUND = 512


def _cuda_bytes(nbytes: int) -> int:
    return -(-int(nbytes) // _CUDA_ROUND) * _CUDA_ROUND


@dataclass(frozen=True)
class Item:
    """One buffer: ``nbytes`` of ``tier`` (``"cpu"`` or ``"gpu"``) held for ``why``."""

    name: str
    nbytes: int
    tier: str
    why: str = ""

    def __str__(self) -> str:
        return f"{self.name} {format_size(self.nbytes)}"


class WorkingSet:
    """An ordered list of :class:`Item` s; totals and descriptions per tier."""

    def __init__(self, items: Iterable[Item] = ()):
        self.items: list[Item] = [i for i in items]

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __add__(self, other: "WorkingSet") -> "WorkingSet":
        return WorkingSet(self.items + list(other))

    def of(self, tier: str) -> list[Item]:
        return [i for i in self.items if i.tier == tier]

    def total(self, tier: str) -> int:
        return sum(i.nbytes for i in self.items if i.tier == tier)

    def describe(self, tier: str) -> str:
        """``"cpu tier 1.00 MiB + segment buffer 64.00 KiB + ..."`` (items of 0 bytes left
        out; ``"nothing"`` when none is left)."""
        return " + ".join(str(i) for i in self.of(tier) if i.nbytes) or "nothing"

    def charge(self, accountant, fix: str | dict[str, str] | None = None) -> list:
        """Charge every item to ``accountant`` in order; the charges. A charge that does
        not fit raises there, naming the item; ``fix`` (one text, or one per tier) says
        what to do about it."""
        fixes = fix if isinstance(fix, dict) else {}
        return [accountant.charge(i.tier, i.nbytes, i.name,
                                  fix=fixes.get(i.tier) if fixes else fix) for i in self.items]

    def to_list(self) -> list[dict]:
        return [{"name": i.name, "bytes": int(i.nbytes), "tier": i.tier, "why": i.why}
                for i in self.items]


# -- the device side (CUDA) -------------------------------------------------------------

def device_batch_bytes(rows: int, row_bytes: int, seeds: int) -> int:
    """Device memory one batch can occupy: ``x`` ``[rows, D]``, ``y`` ``[seeds]`` int64,
    and the caching allocator's slack on ``x`` (``y`` is small: rounded to 512 B)."""
    return _cuda_bytes(rows * row_bytes) + _cuda_bytes(seeds * 8) + CUDA_BLOCK_SLACK


def device_batches_held(prefetch: int) -> int:
    """Batches a CUDA loader can have on the device at once. Pipelined: the one being
    copied, ``prefetch`` waiting in the queue, the one just handed to the training loop
    and the previous one, which the loop's variable still holds until the next batch
    arrives (a ``for`` loop rebinds only then). ``prefetch=0`` (reads in the training
    loop's thread): the batch being read and the previous one."""
    return 2 if prefetch == 0 else prefetch + 3


def device_charges(*, largest_batch_rows: int, row_bytes: int, max_seeds: int, prefetch: int,
                   gpu_tier_rows: int, already_charged: int = 0) -> list[tuple[str, int]]:
    """What a CUDA loader charges to the GPU budget besides the GPU tier itself, as
    ``(what, bytes)``: the batches on the device (:func:`device_batches_held`, less the
    ``already_charged`` bytes the tiered reader charged for its device batch), and, with
    a GPU tier of ``gpu_tier_rows`` on the device, the scratch of its gather (the rows
    gathered before they are placed, and two int64 index vectors) plus the allocator's
    slack on the tier."""
    return [(i.name, i.nbytes) for i in device_items(
        largest_batch_rows=largest_batch_rows, row_bytes=row_bytes, max_seeds=max_seeds,
        prefetch=prefetch, gpu_tier_rows=gpu_tier_rows, already_charged=already_charged)]


def device_items(*, largest_batch_rows: int, row_bytes: int, max_seeds: int, prefetch: int,
                 gpu_tier_rows: int, already_charged: int = 0) -> WorkingSet:
    """:func:`device_charges` as items of the ``gpu`` tier."""
    held = device_batches_held(prefetch)
    per_batch = device_batch_bytes(largest_batch_rows, row_bytes, max_seeds)
    where = ("1 being read + 1 with the training loop" if prefetch == 0 else
             f"1 being copied + {prefetch} prefetched + 2 with the training loop")
    items = [Item(f"{held} device batches ({where})",
                  max(0, held * per_batch - int(already_charged)), "gpu",
                  "x and y of every batch on the device, with the allocator's slack")]
    if gpu_tier_rows:
        g = min(int(largest_batch_rows), int(gpu_tier_rows))
        items.append(Item("gpu-tier gather scratch",
                          _cuda_bytes(g * row_bytes) + 2 * _cuda_bytes(g * 8) + CUDA_BLOCK_SLACK,
                          "gpu", "rows gathered from the gpu tier before they are placed"))
        items.append(Item("allocator rounding of the gpu tier", CUDA_BLOCK_SLACK, "gpu",
                          "the caching allocator's slack on the tier's block"))
    return WorkingSet(items)


def device_overhead(largest_batch_rows: int, row_bytes: int, seeds: int, gpu_rows: int) -> int:
    """GPU memory a CUDA run needs besides the GPU tier, at the smallest prefetch depth
    the loader runs with (1): the reader's device batch and the loader's device batches,
    gather scratch and allocator slack (:func:`device_charges`)."""
    staging = largest_batch_rows * row_bytes
    return staging + device_items(largest_batch_rows=largest_batch_rows, row_bytes=row_bytes,
                                  max_seeds=int(seeds), prefetch=1, gpu_tier_rows=int(gpu_rows),
                                  already_charged=staging).total("gpu")


def choose_depth(fits: Callable[[int], bool], prefetch: int | None, max_depth: int) -> int:
    """The prefetch depth: ``prefetch`` when given, else the largest ``1..max_depth`` for
    which ``fits(depth)``; 0 when not even depth 1 fits (the caller refuses that)."""
    if prefetch is not None:
        return int(prefetch)
    depth = 0
    while depth < max_depth and fits(depth + 1):
        depth += 1
    return depth


# -- the minimum a pack records ---------------------------------------------------------

def pack_minimum(*, largest_batch_rows: int, row_bytes: int, largest_segment_bytes: int,
                 cpu_tier_bytes: int, gpu_tier_bytes: int, base_read_bytes: int,
                 labels_bytes: int, tables_bytes: int, plan_record_bytes: int,
                 batch_size: int, gpu_rows: int) -> WorkingSet:
    """The minimum working set of a pack, itemised. The ``cpu`` items are what a loader
    on the CPU device charges at prefetch depth 0 (the GPU tier held in host memory);
    the ``gpu`` items what a CUDA loader charges on the device at depth 1."""
    staging = int(largest_batch_rows) * int(row_bytes)
    records = int(plan_record_bytes)
    n = MIN_BATCHES_IN_FLIGHT
    items = [
        Item("cpu tier", int(cpu_tier_bytes), "cpu", "rows cached in host memory"),
        Item("gpu tier held on the host", int(gpu_tier_bytes), "cpu",
             "on a cpu device the gpu tier's rows live in host memory"),
        Item("largest segment", int(largest_segment_bytes), "cpu",
             "a packed segment is read whole before its batches are assembled"),
        Item(f"{n} batches of staging", n * staging, "cpu",
             "the batch being assembled and the one the training loop holds"),
        Item(f"{n} plan records", n * records, "cpu", "each batch's decoded record"),
        Item("base-row read buffers", int(base_read_bytes), "cpu",
             "batches past the packed segments read rows from the base array"),
        Item("labels", int(labels_bytes), "cpu", "every node's label, for the seeds' targets"),
        Item("plan index and pack tables", int(tables_bytes), "cpu",
             "per-batch and per-segment tables and checksum scratch"),
        Item("gpu tier", int(gpu_tier_bytes), "gpu", "rows cached on the device"),
        Item("device batch", staging, "gpu", "the reader's batch on the device"),
    ]
    return WorkingSet(items) + device_items(
        largest_batch_rows=int(largest_batch_rows), row_bytes=int(row_bytes),
        max_seeds=int(batch_size), prefetch=1, gpu_tier_rows=int(gpu_rows),
        already_charged=staging)


def working_set(*, largest_batch_rows: int, row_bytes: int, largest_segment_bytes: int,
                cpu_tier_bytes: int, gpu_tier_bytes: int, base_read_bytes: int,
                labels_bytes: int, tables_bytes: int, plan_record_bytes: int,
                batch_size: int, gpu_rows: int) -> dict:
    """The minimum working set of a pack as recorded in the catalog: the totals of
    :func:`pack_minimum` (``cpu``: a CPU-device loader at prefetch depth 0, which reads in
    the training loop's thread; every prefetched batch costs ``prefetch_bytes`` more,
    and a CUDA loader needs ``cpu - gpu_tier_bytes + prefetch_bytes`` of host memory;
    ``gpu``: a CUDA loader at depth 1) and the parts :func:`floor_items` itemises
    again. One formula for the packer, the loader and ``oocstore plan-budget``."""
    ws = pack_minimum(largest_batch_rows=largest_batch_rows, row_bytes=row_bytes,
                      largest_segment_bytes=largest_segment_bytes, cpu_tier_bytes=cpu_tier_bytes,
                      gpu_tier_bytes=gpu_tier_bytes, base_read_bytes=base_read_bytes,
                      labels_bytes=labels_bytes, tables_bytes=tables_bytes,
                      plan_record_bytes=plan_record_bytes, batch_size=batch_size,
                      gpu_rows=gpu_rows)
    staging = int(largest_batch_rows) * int(row_bytes)
    records = int(plan_record_bytes)
    return {"cpu": ws.total("cpu"), "gpu": ws.total("gpu"),
            "largest_segment_bytes": int(largest_segment_bytes), "staging_bytes": staging,
            "cpu_tier_bytes": int(cpu_tier_bytes), "gpu_tier_bytes": int(gpu_tier_bytes),
            "base_read_bytes": int(base_read_bytes), "labels_bytes": int(labels_bytes),
            "loader_batches_bytes": staging, "tables_bytes": int(tables_bytes),
            "plan_record_bytes": records, "prefetch_bytes": staging + records,
            "batches_in_flight": MIN_BATCHES_IN_FLIGHT}


# -- the loader's floor, from a recorded minimum ----------------------------------------

_PARTS = ("cpu_tier_bytes", "gpu_tier_bytes", "largest_segment_bytes", "staging_bytes",
          "plan_record_bytes", "base_read_bytes", "labels_bytes", "tables_bytes",
          "batches_in_flight", "prefetch_bytes")


def recorded_minimum(mws: dict, *, gpu_tier_on_host: bool = True) -> WorkingSet:
    """The ``cpu`` items of a pack's recorded minimum working set ``mws`` (what a CPU-device
    loader charges at its smallest depth), part by part where the record has every part
    and they add up to its total, else the total as one item (packs recorded by older
    versions); ``gpu_tier_on_host=False`` leaves the GPU tier out (a CUDA run holds it on
    the device)."""
    if all(k in mws for k in _PARTS):
        items = pack_minimum(
            largest_batch_rows=1, row_bytes=int(mws["staging_bytes"]),
            largest_segment_bytes=mws["largest_segment_bytes"],
            cpu_tier_bytes=mws["cpu_tier_bytes"], gpu_tier_bytes=mws["gpu_tier_bytes"],
            base_read_bytes=mws["base_read_bytes"], labels_bytes=mws["labels_bytes"],
            tables_bytes=mws["tables_bytes"], plan_record_bytes=mws["plan_record_bytes"],
            batch_size=0, gpu_rows=0).of("cpu")
        if sum(i.nbytes for i in items) == int(mws["cpu"]):
            return WorkingSet(i for i in items
                              if gpu_tier_on_host or i.name != "gpu tier held on the host")
    need = int(mws["cpu"]) - (0 if gpu_tier_on_host else int(mws.get("gpu_tier_bytes", 0)))
    return WorkingSet([Item("recorded minimum working set"
                            + ("" if gpu_tier_on_host else " less the gpu tier"),
                            need, "cpu", "the pack's record")])


def floor_items(mws: dict, device_type: str = "cpu", *, labels: int = 0) -> WorkingSet:
    """The CPU items a loader needs at its smallest prefetch depth on ``device_type``,
    from a pack's recorded minimum working set ``mws`` (:func:`recorded_minimum`): on a
    CUDA device the GPU tier leaves the host and the staging ring's one prefetched batch
    comes in. Older records: packs recorded before the depth-0 floor counted three
    batches in flight and carry no ``batches_in_flight`` (their figure stands); packs
    older still did not count the labels (``labels``: their bytes) or the two batches the
    loader holds, which are added."""
    cuda = device_type != "cpu"
    items = list(recorded_minimum(mws, gpu_tier_on_host=not cuda))
    if "labels_bytes" not in mws:
        items.append(Item("labels", int(labels), "cpu", "not in the pack's record"))
        items.append(Item("2 batches of staging", 2 * int(mws.get("staging_bytes", 0)), "cpu",
                          "not in the pack's record"))
    if cuda and "batches_in_flight" in mws:
        items.append(Item("1 prefetched batch (staging ring)", int(mws["prefetch_bytes"]), "cpu",
                          "a CUDA loader's staging ring prefetches one batch"))
    return WorkingSet(items)


def loader_floor(mws: dict, device_type: str = "cpu", *, labels: int = 0) -> int:
    """CPU bytes a loader needs at its smallest prefetch depth on ``device_type``, from a
    pack's recorded minimum working set (:func:`floor_items`)."""
    return floor_items(mws, device_type, labels=labels).total("cpu")


def refuse_floor(mws: dict, device_type: str, limit: int | None, pack: str, *,
                 labels: int = 0, gpu: bool = False) -> None:
    """Raise :class:`BudgetError` when a loader over ``pack`` cannot run inside ``limit``
    bytes of CPU (or, with ``gpu``, of GPU: the pack's recorded ``gpu`` minimum), listing
    the items of its floor."""
    if limit is None:
        return
    tier = "gpu" if gpu else "cpu"
    if gpu:
        need, detail = int(mws["gpu"]), "gpu tier and batches on the device"
    else:
        ws = floor_items(mws, device_type, labels=labels)
        need, detail = ws.total("cpu"), ws.describe("cpu")
    if need > limit:
        raise BudgetError(
            f"{tier} budget {format_size(limit)} is too small for pack {pack!r}: the minimum "
            f"needed is {format_size(need)} ({detail}): raise {tier}_budget to at least "
            f"{format_size(need)}, or re-pack with a smaller {tier} cache (`oocstore pack "
            f"--{tier}-cache`) or within the budget (`oocstore pack --{tier}-budget`)")


def refuse_prefetch(budget, one: WorkingSet, held: dict[str, int]) -> None:
    """Raise :class:`BudgetError` for a CUDA loader whose budgets (``budget``, a
    :class:`~oocstore.budget.MemoryBudget`) leave no room for one prefetched batch:
    ``one`` is what that batch adds, ``held`` what each tier holds already."""
    cpu, gpu = budget.cpu, budget.gpu
    raise BudgetError(
        f"cpu budget {format_size(cpu) if cpu else 'unlimited'} / gpu budget "
        f"{format_size(gpu) if gpu is not None else 'unlimited'} cannot prefetch even one "
        f"batch: that needs {format_size(one.total('cpu'))} of cpu ({one.describe('cpu')}) on "
        f"top of {format_size(held['cpu'])} of cpu, and {format_size(one.total('gpu'))} of "
        f"device batches ({one.describe('gpu')}) on top of {format_size(held['gpu'])} of gpu; "
        "raise cpu_budget / gpu_budget, or re-pack with a smaller gpu cache "
        "(`oocstore pack --gpu-cache`)")


def refuse_split(cpu_budget: int, plan: str, mws: dict) -> None:
    """Raise :class:`BudgetError` for an automatic split that found no cache size whose
    pack fits ``cpu_budget``: ``mws`` is the smallest pack's minimum working set (one-batch
    segments, no caches), whose items the message lists."""
    ws = floor_items(mws, "cpu")
    raise BudgetError(
        f"cpu budget {format_size(cpu_budget)} cannot hold one batch of plan {plan!r}: the "
        f"minimum working set is {format_size(mws['cpu'])} ({ws.describe('cpu')}); raise the "
        "cpu budget or sample with a smaller batch size")


def check_budget(layout, options, name: str) -> None:
    """Refuse, with the items and the fix, a pack layout (its ``min_working_set``) that
    cannot run inside ``options``' ``cpu_budget`` / ``gpu_budget``."""
    mws = layout.min_working_set
    for tier, limit in (("cpu", options.cpu_budget), ("gpu", options.gpu_budget)):
        if limit is not None and mws[tier] > limit:
            if tier == "cpu":
                detail = floor_items(mws, "cpu").describe("cpu")
            else:
                detail = f"gpu tier {format_size(mws['gpu_tier_bytes'])} + batches on the device"
            raise BudgetError(
                f"pack {name!r} needs a minimum {tier} working set of {format_size(mws[tier])} "
                f"({detail}) > {tier} budget {format_size(limit)}: lower {tier}_cache, sample "
                f"with a smaller batch size (`oocstore plan-budget STORE --{tier}-budget {limit}` "
                f"lists what fits), or raise {tier}_budget to at least {format_size(mws[tier])}")


# -- what the tiered reader charges -----------------------------------------------------

def reader_items(meta, *, tables_bytes: int, gpu_on_host: bool,
                 base_read_bytes: int) -> WorkingSet:
    """The buffers a :class:`~oocstore.tiers.reader.TieredReader` over pack ``meta`` (a
    :class:`~oocstore.pack.format.PackMeta`) must hold, in the order it charges them:
    the tables, the GPU tier and its device batch when the tier is on the device, the
    host tiers, one segment buffer, the batch staging, and the base-row read buffers
    when the pack leaves batches to the base array (``base_read_bytes``: the scratch of
    the reader's base-row tier; optional read-ahead buffers: :func:`read_ahead_buffers`)."""
    rb = meta.row_bytes
    mws = meta.min_working_set
    items = [Item("plan index and pack tables (per batch and per segment)", int(tables_bytes),
                  "cpu", "per-batch and per-segment tables and checksum scratch")]
    if not gpu_on_host:
        items += [Item("gpu tier", meta.gpu_rows * rb, "gpu", "rows cached on the device"),
                  Item("device batch", meta.largest_batch_rows * rb, "gpu",
                       "the reader's batch on the device")]
    host_rows = meta.cpu_rows + (meta.gpu_rows if gpu_on_host else 0)
    items.append(Item("cpu tier (incl. gpu tier held on the host)" if meta.gpu_rows and gpu_on_host
                      else "cpu tier", host_rows * rb, "cpu", "rows cached in host memory"))
    items.append(Item("segment buffer", int(mws["largest_segment_bytes"]), "cpu",
                      "the largest packed segment, read whole"))
    items.append(Item("batch staging", meta.largest_batch_rows * rb, "cpu",
                      "the batch being assembled"))
    if mws.get("base_read_bytes"):
        items.append(Item("base-row read buffers", int(base_read_bytes), "cpu",
                          "batches past the packed segments read rows from the base array"))
    return WorkingSet(items)


#: Segment buffers read ahead at most (each charged, and taken only where the budget
#: has room after everything required).
READ_AHEAD_SEGMENTS = 2


def read_ahead_buffers(fits: Callable[[int], bool], segment_bytes: int, reserve: int) -> WorkingSet:
    """The segment read-ahead buffers to take: up to :data:`READ_AHEAD_SEGMENTS`, each only
    while ``fits(bytes)`` says the budget still has room for it plus ``reserve`` (what a
    caller still needs for required buffers). The first overlaps the next read with this
    batch's work; the second keeps the disk busy through a batch whose work took longer
    than its read."""
    items: list[Item] = []
    while segment_bytes and len(items) < READ_AHEAD_SEGMENTS and \
            fits(segment_bytes * (len(items) + 1) + reserve):
        items.append(Item(f"segment read-ahead buffer {len(items) + 1}", int(segment_bytes),
                          "cpu", "overlaps the next segment's read with this batch's work"))
    return WorkingSet(items)


#: Base-array reads in flight at most (the required ones, one per I/O thread, and the
#: optional deeper queue together). 64: random reads of dblp's 6,556 B rows (two or three
#: pages each) by native AIO reached about 500 MB/s at 8 in flight, 780 MB/s at 32 and
#: 900 MB/s at 64 and 128 on this machine's disk (``bench/loader_cpu.py --io-threads``).
MAX_BASE_READS_IN_FLIGHT = 64


def base_queue_bytes(slot_bytes: int, required_slots: int) -> int:
    """Bytes of the deepest optional base-read queue (:func:`base_read_queue`): what an
    automatic cache size leaves free for it."""
    return max(0, MAX_BASE_READS_IN_FLIGHT - int(required_slots)) * int(slot_bytes)


def base_read_queue(fits: Callable[[int], bool], *, slot_bytes: int, required_slots: int,
                    reserve: int) -> WorkingSet:
    """Optional scratch slots for more base-array reads in flight than the required
    ``required_slots`` (one per I/O thread, charged as "base-row read buffers"): as many
    as ``fits`` the budget beside ``reserve``, up to :data:`MAX_BASE_READS_IN_FLIGHT` in
    all. A deeper queue cuts the wall time of a batch read row by row, never the bytes."""
    extra = max(0, MAX_BASE_READS_IN_FLIGHT - int(required_slots))
    while extra and not fits(extra * int(slot_bytes) + reserve):
        extra //= 2
    if not extra or not slot_bytes:
        return WorkingSet()
    return WorkingSet([Item(f"base-row read queue ({extra} more reads in flight)",
                            extra * int(slot_bytes), "cpu",
                            "more base-array rows in flight: less waiting per batch")])


# -- what the loader charges ------------------------------------------------------------

def loader_required(*, labels_bytes: int, record_bytes: int, staging_bytes: int,
                    device_type: str) -> WorkingSet:
    """The loader's own buffers at every depth, on top of the reader's: the labels, the
    plan records of the batch being read and of the one the training loop holds, and on
    a CPU device that batch's staging (a CUDA loader's staging ring holds it instead)."""
    items = [Item("labels", int(labels_bytes), "cpu", "every node's label"),
             Item("plan records of the batch being read and the one the training loop holds",
                  2 * int(record_bytes), "cpu", "each batch's decoded record")]
    if device_type == "cpu":
        items.append(Item("batch held by the training loop", int(staging_bytes), "cpu",
                          "a for loop rebinds its variable only when the next batch arrives"))
    return WorkingSet(items)


def loader_depth_items(depth: int, *, record_bytes: int, staging_bytes: int, device_type: str,
                       gpu: WorkingSet | None = None) -> WorkingSet:
    """The buffers that grow with the prefetch depth: on a CPU device ``depth``
    prefetched batches (staging and plan record each); on CUDA the pinned staging ring
    (``depth + 1`` slots), the prefetched batches' plan records and the device items
    ``gpu`` (:func:`device_items`)."""
    if device_type == "cpu":
        return WorkingSet([Item(f"{depth} prefetched batch(es) (features and plan records)",
                                depth * (int(staging_bytes) + int(record_bytes)), "cpu",
                                "batches waiting for the training loop")])
    return WorkingSet([
        Item(f"pinned staging ring ({depth + 1} slots)", (depth + 1) * int(staging_bytes), "cpu",
             "page-locked buffers the batches are assembled in"),
        Item(f"plan records of {depth} prefetched batch(es)", depth * int(record_bytes), "cpu",
             "each prefetched batch's decoded record")]) + (gpu or WorkingSet())


def cpu_depth(fits: Callable[[int], bool], per_batch: int, max_depth: int) -> int:
    """The largest prefetch depth ``<= max_depth`` whose batches (``per_batch`` bytes
    each) ``fits`` the CPU budget; 0 when none does (batches are then read in the
    training loop's thread)."""
    return choose_depth(lambda depth: fits(depth * per_batch), None, max_depth)
