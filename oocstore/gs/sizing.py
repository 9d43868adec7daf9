"""How many bytes a Gaussian-splatting store holds where: the sizing rules of the
streamer (:mod:`oocstore.gs.stream`) in one place, shared by the stores' charges, the
schedule and ``gs-train``'s checks before any write.

Device working set of a plan (:func:`largest_view`): with the CPU optimizer the
largest step batch -- its rows (the culled count of the plan's largest view plus
``CULL_HEADROOM``, :func:`batch_rows`) x (parameters + gradient); with the device
optimizer that batch (+ an 8-byte row index per row) plus the slots of the view that
sees the most blocks (``block_capacity`` records each, :func:`slot_bytes`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from oocstore.errors import BudgetError, UsageError
from oocstore.units import format_size

ID_BYTES = 8
#: Device buffers a streaming run allocates on CUDA: the slab (device optimizer), and per
#: step the batch's parameters, their gradient, the row index and the culling scratch. The
#: caching allocator can count each up to ``CUDA_BLOCK_SLACK`` above its size (see
#: :mod:`oocstore.tiers.staging`): charged once per buffer.
STREAM_CUDA_BUFFERS = 6
#: Dirty blocks the streamer's write-back may hold in flight (each charged to the CPU).
WRITE_BACKS = 2
#: Where the Adam step of the rendered rows runs, and so where the moments live: ``cpu``
#: (the default; the device holds only the step's culled parameters and their gradient) or
#: ``device`` (block slots of whole records on the device, Adam there).
OPTIMIZER_DEVICES = ("cpu", "device")
#: What ``--optimizer-device`` accepts: ``auto`` (the default) picks one of
#: ``OPTIMIZER_DEVICES`` by the device budget (:func:`predicted_traffic`).
OPTIMIZER_CHOICES = ("auto", *OPTIMIZER_DEVICES)
#: Rows a step batch holds beyond the planned culled count of the largest view, for the
#: Gaussians that move into a view during a segment (the plan counts them at its start).
CULL_HEADROOM = 0.10
CULL_HEADROOM_ROWS = 64
#: Host staging buffers of a CUDA run's step uploads (one filling, one being copied).
UPLOAD_SLOTS = 2


def check_optimizer(optimizer: str) -> str:
    if optimizer not in OPTIMIZER_DEVICES:
        raise UsageError(f"optimizer device {optimizer!r} unknown: use one of "
                         f"{', '.join(OPTIMIZER_DEVICES)}")
    return optimizer


def predicted_traffic(scene, plan, schedule, optimizer: str, *,
                      zero_moments: bool = False) -> int:
    """Bytes a store over ``plan`` would move host <-> device, estimated before it runs
    (what ``--optimizer-device auto`` weighs). CPU optimizer: every step uploads its
    batch's parameters and brings as many gradients back (an upper bound: only rendered
    rows' come back). Device optimizer: every block load of ``schedule`` uploads its
    parameters, and its moments unless they are all zero (``zero_moments``: a scene
    never trained, on its first load); every loaded block is written back whole (an
    upper bound: only rows that stepped come back). A block of a level-of-detail plan
    moves only the prefix its cuts need (``plan.lod_prefix``), as the streamer loads it."""
    check_optimizer(optimizer)
    counts = np.array(scene.block_counts, dtype=np.int64)  # a copy: the prefixes cap it
    if plan.lod_prefix is not None:
        for b, k in plan.lod_prefix.items():
            counts[int(b)] = min(int(counts[int(b)]), int(k))
    param_bytes = 4 * scene.param_width
    if optimizer == "cpu":
        if plan.cull_rows is None:
            rows = sum(batch_rows(scene, plan, int(v)) for v in plan.views)
        else:  # the culled counts the plan found (no headroom: the expected rows)
            rows = int(np.asarray(plan.cull_rows)[plan.views].sum())
        return 2 * rows * param_bytes
    seen: set = set()
    total = 0
    for st in schedule.steps:
        for b in st.load:
            n = int(counts[int(b)])
            first = int(b) not in seen
            seen.add(int(b))
            up = n * param_bytes if (zero_moments and first) else n * scene.record_bytes
            total += up + n * scene.record_bytes
    return total


def allocator_slack(device) -> int:
    """Device bytes the streamer charges for the CUDA caching allocator's rounding
    (``0`` off CUDA, where buffers are exactly their size)."""
    from oocstore.tiers.staging import CUDA_BLOCK_SLACK

    return STREAM_CUDA_BUFFERS * CUDA_BLOCK_SLACK if torch.device(device).type == "cuda" else 0


def block_bytes(scene) -> int:
    """Bytes of one block in the host tiers: ``block_capacity`` records and their ids."""
    return scene.block_capacity * (scene.record_bytes + ID_BYTES)


def slot_bytes(scene) -> int:
    """Bytes of one slab slot: ``block_capacity`` records (the ids stay on the host)."""
    return scene.block_capacity * scene.record_bytes


def step_batch_bytes(rows: int, scene, optimizer: str = "cpu") -> int:
    """Device bytes of one step's batch of ``rows``: the parameters and their gradient,
    and with the device optimizer the int64 slab index of every row (with the CPU
    optimizer the index stays on the host)."""
    per_row = 8 * scene.param_width + (8 if optimizer == "device" else 0)
    return rows * per_row


def batch_rows(scene, plan, view: int) -> int:
    """Rows a step batch of ``view`` is sized for: the plan's culled count plus headroom
    (at most every row of its visible blocks), or every row without a culled count."""
    vis = np.asarray(plan.vis_sets[view], dtype=np.int64)
    rows = int(np.asarray(scene.block_counts)[vis].sum()) if len(vis) else 0
    if plan.cull_rows is None:
        return rows
    planned = int(plan.cull_rows[view])
    return min(rows, int(math.ceil(planned * (1 + CULL_HEADROOM))) + CULL_HEADROOM_ROWS)


def largest_view(scene, plan, optimizer: str = "cpu") -> tuple[int, int]:
    """(view, bytes): the plan's least device working set and the view that sets it. CPU
    optimizer: the largest step batch. Device optimizer: the most visible blocks' slots
    plus the largest step batch (one batch buffer serves every step, and the schedule
    keeps the slots inside what it leaves)."""
    check_optimizer(optimizer)
    views = [int(v) for v in np.unique(plan.views)]
    if not views:
        return -1, 0
    batches = {v: step_batch_bytes(batch_rows(scene, plan, v), scene, optimizer) for v in views}
    if optimizer == "cpu":
        view = max(views, key=lambda v: (batches[v], -v))
        return view, batches[view]
    view = max(views, key=lambda v: (len(plan.vis_sets[v]), batches[v], -v))
    return view, len(plan.vis_sets[view]) * slot_bytes(scene) + max(batches.values())


def max_batch_rows(scene, plan) -> int:
    return max((batch_rows(scene, plan, int(v)) for v in np.unique(plan.views)), default=0)


def host_slot_bytes(scene, plan) -> int:
    """Host slab of the CPU optimizer: room for twice the largest view's blocks (the view
    and the next one's new blocks; Belady keeps the rest by next use), at most every
    block."""
    most = max((len(plan.vis_sets[v]) for v in np.unique(plan.views)), default=0)
    return max(1, min(scene.num_blocks, 2 * most)) * slot_bytes(scene)


def schedule_slots(schedule) -> int:
    """Slab slots a schedule needs: the most blocks it keeps resident at once."""
    resident = peak = 0
    for st in schedule.steps:
        resident += len(st.load) - len(st.evict)
        peak = max(peak, resident)
    return max(1, peak)


def naive_batch_bytes(rows: int, scene) -> int:
    """Device bytes of a naive-offload step batch: whole records, ids, the parameter
    gradient and the int64 row index of every row of the visible blocks."""
    return rows * (scene.record_bytes + ID_BYTES + 4 * scene.param_width + 8)


def check_device_budget(scene, plan, budget: int, slack: int = 0,
                        optimizer: str = "cpu") -> None:
    """BudgetError naming the largest view and the minimum when it does not fit (with
    ``slack`` on top: :func:`allocator_slack`, and what else the caller keeps on the
    device, such as the step's target image)."""
    view, need = largest_view(scene, plan, optimizer)
    need += slack
    if need > budget:
        what = ("its step batch (the parameters and gradient of the Gaussians in its frustum)"
                if optimizer == "cpu" else "its visible blocks plus the step batch")
        raise BudgetError(
            f"view {view} needs a device working set of {format_size(need)} ({need} bytes: "
            f"{what}{f' and {slack} bytes of other device buffers' if slack else ''}), more "
            f"than the device budget {format_size(budget)}: raise --gpu-budget to at least "
            f"{format_size(need)}"
            + (", or use --optimizer-device cpu" if optimizer == "device" else
               ", or render smaller images (fewer Gaussians per view)"))
