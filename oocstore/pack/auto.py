"""The pack options of a run, with the cache sizes chosen automatically inside a budget.

Given cache sizes, they are used as given. Given only a CPU budget, the GPU/CPU tier
sizes and the segment length with the smallest predicted epoch load time are chosen by
the cost model (:func:`oocstore.pack.costmodel.choose_split`) from bandwidths probed on
the store's disk, for the CPU-tier policy asked for (its tables count), leaving room
for the loader's deep base-array read queue when rows are left to the base array. Either way the result carries the bandwidths a prediction is made
with, so a caller reports the predicted epoch load time of what it packed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import BudgetError
from ..plan import PlanReader
from ..store import Store
from ..tiers.ssd import DEFAULT_IO_THREADS, base_read_buffer_bytes
from ..workingset import base_queue_bytes
from .costmodel import Bandwidths, choose_split, predict_epoch, probe
from .packer import PackOptions, plan_layout


@dataclass(frozen=True)
class PackChoice:
    """The options to pack with and how they were chosen."""

    options: PackOptions
    #: ``True`` when the cache sizes were chosen inside the CPU budget.
    auto: bool
    #: Bandwidths of the prediction (probed on this disk, or the defaults).
    bandwidths: Bandwidths
    probed: bool
    #: The cost model's prediction for the chosen sizes (``None`` until :func:`prediction`).
    predicted: dict[str, Any] | None = None


def choose_options(store: Store, plan: PlanReader, *, gpu_cache: int | None = None,
                   cpu_cache: int | None = None, cpu_budget: int | None = None,
                   gpu_budget: int | None = None, max_disk_blowup: float = 4.0,
                   policy: str | None = "static", segment_batches: int | None = None,
                   copy: str = "auto", window_bytes: int | None = None,
                   probe_disk: bool = True, exhaustive: bool = False) -> PackChoice:
    """The options to pack ``plan`` with.

    Without ``gpu_cache`` and ``cpu_cache`` but with ``cpu_budget``, the cache sizes (and
    the segment length, unless ``segment_batches`` is given) are chosen by the cost model
    inside the budgets, from bandwidths probed on the store's disk (``probe_disk=False``:
    the default bandwidths). Otherwise the given sizes are used (``None`` is 0) and the
    budgets only bound the pack's working set.

    ``policy=None``: with automatic sizes, the CPU-tier policy of
    :data:`AUTO_POLICIES` whose split has the smallest predicted epoch time (ties go to
    the first); with given sizes, ``"static"``. ``exhaustive``: evaluate every candidate
    split (:func:`~oocstore.pack.costmodel.choose_split`; the same choice, more work)."""
    auto = cpu_cache is None and gpu_cache is None and cpu_budget is not None
    predicted = None
    if auto:
        bw = probe(store) if probe_disk else Bandwidths()
        splits = [(p, *_split(store, plan, cpu_budget=cpu_budget, gpu_budget=gpu_budget,
                              max_disk_blowup=max_disk_blowup, bw=bw, policy=p,
                              exhaustive=exhaustive))
                  for p in ([policy] if policy is not None else AUTO_POLICIES)]
        policy, options, predicted = min(splits, key=lambda c: c[2]["mean_epoch_s"])
        options = dataclasses.replace(options, policy=policy,
                                      segment_batches=segment_batches or options.segment_batches)
    else:
        policy = policy or "static"
        bw = Bandwidths()
        options = PackOptions(gpu_cache=gpu_cache or 0, cpu_cache=cpu_cache or 0,
                              max_disk_blowup=max_disk_blowup, cpu_budget=cpu_budget,
                              gpu_budget=gpu_budget, segment_batches=segment_batches,
                              policy=policy)
    options = dataclasses.replace(options, copy=copy, window_bytes=options.window_bytes
                                  if window_bytes is None else window_bytes)
    return PackChoice(options=options, auto=auto, bandwidths=bw, probed=auto and probe_disk,
                      predicted=predicted)


#: CPU-tier policies an automatic split chooses between (``policy=None``). Belady needs
#: the plan's future, which a pack has; at the same bytes it holds the rows the next
#: batches read (dblp, 25 % budget, 10,5 x 32 seeds: 15 % fewer base-array bytes per
#: epoch than the static hottest rows, though its schedule's tables take 1 MiB of the
#: cache's bytes).
AUTO_POLICIES = ("static", "belady")


def queue_reserve(store: Store) -> int:
    """CPU bytes an automatic cache size leaves free for the base-array reads the loader
    puts in flight beyond the required ones (:func:`~oocstore.workingset.base_read_queue`):
    a batch read row by row waits less with more reads in flight, and a cache that fills
    the budget to the byte would leave the queue none."""
    rb = store.array_meta("features").row_bytes
    return base_queue_bytes(base_read_buffer_bytes(rb, 1), DEFAULT_IO_THREADS)


def _split(store: Store, plan: PlanReader, *, cpu_budget: int, gpu_budget: int | None,
           max_disk_blowup: float, bw: Bandwidths, policy: str,
           exhaustive: bool = False) -> tuple[PackOptions, dict]:
    """The cost model's split for ``policy``, its cache sized to leave the deep base-read
    queue its room (:func:`queue_reserve`) where the split leaves rows to the base array;
    the options carry the whole ``cpu_budget`` (what the pack is checked against)."""
    reserve = queue_reserve(store)
    empties: dict = {}  # the two searches' layouts with no CPU tier are the same
    if reserve and cpu_budget > reserve:
        found = None  # no split beside the queue, or one that packs every batch
        try:
            found = choose_split(store, plan, cpu_budget=cpu_budget - reserve,
                                 gpu_budget=gpu_budget, max_disk_blowup=max_disk_blowup, bw=bw,
                                 policy=policy, exhaustive=exhaustive, base_reads_only=True,
                                 empty_layouts=empties)
        except BudgetError:
            pass  # the floor fits the budget, not beside the queue: no queue then
        if found is not None:
            options, predicted, tried = found
            # the chosen candidate's working set (no second layout of the same options)
            mws = next(c["min_working_set"] for c in tried if c["options"] == options)
            if mws.get("base_read_bytes"):
                return dataclasses.replace(options, cpu_budget=cpu_budget), predicted
    options, predicted, _ = choose_split(store, plan, cpu_budget=cpu_budget,
                                         gpu_budget=gpu_budget, max_disk_blowup=max_disk_blowup,
                                         bw=bw, policy=policy, exhaustive=exhaustive,
                                         empty_layouts=empties)
    return options, predicted


def prediction(store: Store, plan_name: str, choice: PackChoice) -> dict[str, Any]:
    """The predicted epoch-0 load of ``plan_name`` packed with ``choice`` (the cost
    model's figure from the automatic choice, else one worked out from its layout)."""
    if choice.predicted is not None:
        return choice.predicted
    return predict_epoch(plan_layout(store, PlanReader(store, plan_name), choice.options),
                         choice.bandwidths)
