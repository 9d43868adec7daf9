"""The minimum working set of a pack and the budget checks built on it.

:func:`working_set` is the one formula the packer (what it records and checks), the
loader (what it refuses up front) and the budget helper use; :func:`check_budget`
refuses a layout that cannot run inside the budgets, before anything is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BudgetError
from ..tiers.staging import device_charges
from ..units import format_size

if TYPE_CHECKING:
    from .layout import Layout
    from .options import PackOptions


#: Batches a CPU-device loader holds at its smallest prefetch depth (0): the one being
#: assembled and the one the training loop holds. Each prefetched batch adds one more
#: (``prefetch_bytes`` in the minimum working set).
MIN_BATCHES_IN_FLIGHT = 2


def working_set(*, largest_batch_rows: int, row_bytes: int, largest_segment_bytes: int,
                cpu_tier_bytes: int, gpu_tier_bytes: int, base_read_bytes: int,
                labels_bytes: int, tables_bytes: int, plan_record_bytes: int,
                batch_size: int, gpu_rows: int) -> dict:
    """The minimum working set of a pack from its parts: one formula for the packer (what
    it records and checks), the loader (what it refuses up front) and the budget helper
    (``oocstore plan-budget``, which estimates the parts before sampling).

    ``cpu``: what a loader on the CPU device charges at prefetch depth 0 — the tiers
    (on a CPU-only run the GPU tier is held in host memory too), one segment buffer, the
    base-row read buffers if batches fall back to the base array, the labels, the plan
    index and pack tables, and :data:`MIN_BATCHES_IN_FLIGHT` batches (staging and plan
    record each: the batch being assembled and the one the training loop holds).
    Depth 0 reads in the training loop's thread; every prefetched batch costs
    ``prefetch_bytes`` more, and a CUDA loader (whose staging ring always prefetches at
    least one batch) needs ``cpu - gpu_tier_bytes + prefetch_bytes`` of host memory.
    ``gpu``: what the CUDA loader charges at depth 1."""
    staging = int(largest_batch_rows) * int(row_bytes)
    records = int(plan_record_bytes)
    cpu = (int(largest_segment_bytes) + MIN_BATCHES_IN_FLIGHT * (staging + records)
           + int(cpu_tier_bytes) + int(gpu_tier_bytes) + int(base_read_bytes)
           + int(labels_bytes) + int(tables_bytes))
    return {"cpu": cpu,
            "gpu": int(gpu_tier_bytes) + device_overhead(int(largest_batch_rows), int(row_bytes),
                                                         int(batch_size), int(gpu_rows)),
            "largest_segment_bytes": int(largest_segment_bytes), "staging_bytes": staging,
            "cpu_tier_bytes": int(cpu_tier_bytes), "gpu_tier_bytes": int(gpu_tier_bytes),
            "base_read_bytes": int(base_read_bytes), "labels_bytes": int(labels_bytes),
            "loader_batches_bytes": staging, "tables_bytes": int(tables_bytes),
            "plan_record_bytes": records, "prefetch_bytes": staging + records,
            "batches_in_flight": MIN_BATCHES_IN_FLIGHT}


def loader_floor(mws: dict, device_type: str = "cpu", *, labels: int = 0) -> int:
    """CPU bytes a loader needs at its smallest prefetch depth on ``device_type``, from a
    pack's recorded minimum working set (packs recorded before the depth-0 floor counted
    three batches in flight and carry no ``batches_in_flight``: their figure stands;
    ``labels``: the labels' bytes, for packs older still, which did not count them)."""
    need = int(mws["cpu"])
    if "labels_bytes" not in mws:
        need += int(labels) + 2 * int(mws.get("staging_bytes", 0))
    if device_type != "cpu":
        need -= int(mws.get("gpu_tier_bytes", 0))  # that tier lives on the device
        if "batches_in_flight" in mws:
            need += int(mws["prefetch_bytes"])  # the staging ring prefetches one batch
    return need


def device_overhead(largest_batch_rows: int, row_bytes: int, seeds: int, gpu_rows: int) -> int:
    """GPU memory a CUDA run needs besides the GPU tier, at the smallest prefetch depth
    the loader runs with (1): the reader's device batch and the loader's device batches,
    gather scratch and allocator slack (:func:`oocstore.tiers.staging.device_charges`)."""
    staging = largest_batch_rows * row_bytes
    return staging + sum(b for _, b in device_charges(
        largest_batch_rows=largest_batch_rows, row_bytes=row_bytes, max_seeds=int(seeds),
        prefetch=1, gpu_tier_rows=int(gpu_rows), already_charged=staging))


def check_budget(layout: Layout, options: PackOptions, name: str) -> None:
    """Refuse, with the numbers and the fix, a layout that cannot run inside the budgets."""
    mws = layout.min_working_set
    for tier, limit in (("cpu", options.cpu_budget), ("gpu", options.gpu_budget)):
        if limit is not None and mws[tier] > limit:
            raise BudgetError(
                f"pack {name!r} needs a minimum {tier} working set of {format_size(mws[tier])} "
                f"({tier} tier {format_size(mws[f'{tier}_tier_bytes'])} + "
                + (f"largest segment {format_size(mws['largest_segment_bytes'])} + "
                   f"{mws.get('batches_in_flight', 3)} batches of staging "
                   f"{format_size(mws['staging_bytes'])} each + plan tables "
                   f"{format_size(mws.get('tables_bytes', 0))}" if tier == "cpu" else
                   "batches on the device") + f") > {tier} budget "
                f"{format_size(limit)}: lower --{tier}-cache, sample with a smaller batch size "
                f"(`oocstore plan-budget STORE --{tier}-budget {limit}` lists what "
                f"fits), or raise --{tier}-budget to at least {format_size(mws[tier])}")
