"""Data-parallel training with ``torch.distributed``: which plan shard a rank reads, and
the few collectives the CLI and ``oocstore train`` need.

oocstore does not launch processes: ``torchrun`` (or any launcher that initialises
``torch.distributed``) does, and DDP synchronises the gradients. This module only

* maps ``(plan, rank, world_size)`` to the rank's plan shard (:func:`resolve_plan`),
  refusing a world size that does not match the plan's shard count, or a shard that is
  missing, with the command that fixes it;
* chooses the plan a command uses when none is named: the most recent plan of the
  **train** split (:func:`default_plan`), never a newer plan of ``val`` or ``test``
  (``val``, ``val-eval``, ...), and refuses to train on such a plan unless asked to
  (:func:`check_training_plan`);
* reads the launcher's variables when the CLI passes them in (:func:`launch_info`; the
  library itself never reads the environment) and opens the process group (gloo on
  CPU, nccl on CUDA);
* wraps the collectives used for bookkeeping (sums, gathers, barriers) so that they
  are no-ops in a single process.

Shard layout (``oocstore/plan.py``): sampling for ``W`` ranks writes the plans
``<group>.rank0 .. <group>.rank{W-1}`` in one transaction, each tagged with
``shard_group``, ``shard_rank`` and ``shard_world_size``. Re-sampling a group for fewer
ranks leaves the higher ranks' old shards in the catalog; they are recognised as stale
(sampled from an older store version than the group's newest shards) and ignored.
"""

from __future__ import annotations

import datetime
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from .errors import StoreNotFoundError, UsageError
from .plan import PlanMeta, list_plans, shard_name
from .store import Store

log = logging.getLogger(__name__)


# -- shards ----------------------------------------------------------------------------

def group_shards(store: Store, group: str, plans: Mapping[str, PlanMeta] | None = None
                 ) -> dict[int, PlanMeta]:
    """The current shards of ``group`` by rank (stale shards of an earlier, larger world
    size are left out); empty when ``group`` is not a sharded plan."""
    plans = list_plans(store) if plans is None else plans
    members = [m for m in plans.values() if m.shard_group == group]
    if not members:
        return {}
    newest = max(m.store_version for m in members)
    return {m.shard_rank: m for m in members if m.store_version == newest}


def group_of(meta: PlanMeta) -> str:
    """The name a user gives for ``meta``'s plan: its group for a shard, else its name."""
    return meta.shard_group or meta.name


#: The split whose plans are trained on, and chosen when no plan is named.
TRAIN_SPLIT = "train"


def is_evaluation_split(split: str) -> bool:
    """Whether a plan of ``split`` samples held-out nodes (``val``, ``test`` or any other
    named split of the store but ``train``); ``custom`` (explicit seeds the caller gave)
    is not one."""
    return split not in (TRAIN_SPLIT, "custom")


def default_plan(store: Store, world_size: int | None = 1, *, split: str | None = TRAIN_SPLIT
                 ) -> str:
    """The name (a plan's, or a shard group's) of :func:`newest_plan`."""
    chosen = group_of(newest_plan(store, world_size, split=split))
    log.info("no plan named: using %r, the most recent %s plan of %s", chosen,
             split or "sampled", store.path)
    return chosen


def newest_plan(store: Store, world_size: int | None = 1, *, split: str | None = TRAIN_SPLIT
                ) -> PlanMeta:
    """The meta of the most recently sampled plan (of a shard, for a shard group) of
    ``split`` (the training split unless told otherwise; ``None``: any split) for
    ``world_size`` ranks (``None``: any).

    Falls back to the newest plan of ``split`` for another world size, so that the
    mismatch is reported by :func:`resolve_plan` with its fix. A plan of another split is
    never chosen for the training split: evaluation plans (``val``, ``val-eval``, ...)
    are read only when named."""
    plans = list_plans(store)
    cands = {n: m for n, m in plans.items() if split is None or m.split == split}
    if not cands:
        what = f"{split!r} plan" if split else "plan"
        others = sorted({f"{group_of(m)} ({m.split})" for m in plans.values()})
        have = f" (it has: {', '.join(others)})" if others else ""
        flags = "" if split in (None, TRAIN_SPLIT) else f" --split {split}"
        raise StoreNotFoundError(f"store {store.path} has no {what}{have}: create one with "
                                 f"`oocstore sample {store.path}{flags} --fanouts 10,5 "
                                 "--batch-size 1024`, or name the plan to use")
    fitting = {n: m for n, m in cands.items()
               if world_size is None or m.shard_world_size == world_size}

    def newest(n: str) -> tuple[int, str]:
        return store.array_meta(cands[n].arrays["index"]).version, n

    return cands[max(fitting or cands, key=newest)]


def check_training_plan(store: Store, name: str, *, allow_eval_split: bool = False) -> PlanMeta:
    """The meta of plan ``name`` (a plan, shard or shard group) that a run is about to
    train on; refuses a plan of an evaluation split unless ``allow_eval_split`` (the
    caller then says, once, that it trains on one). Training on held-out nodes makes
    their accuracy meaningless, so it is never done without being asked for."""
    plans = list_plans(store)
    meta = plans.get(name)
    if meta is None:
        shards = group_shards(store, name, plans)
        if not shards:
            raise StoreNotFoundError(f"store {store.path} has no plan {name!r}")
        meta = shards[min(shards)]
    if is_evaluation_split(meta.split):
        if not allow_eval_split:
            raise UsageError(
                f"plan {group_of(meta)!r} of {store.path} samples the {meta.split!r} split, "
                "not the training split: training on it would fit the model to the nodes it "
                f"is evaluated on; train on a {TRAIN_SPLIT!r}-split plan (omit the plan to use "
                "the most recent one), or pass allow_eval_split=True (--allow-eval-split) to "
                "train on it deliberately")
    return meta


def resolve_plan(store: Store, plan: str | None, *, rank: int = 0, world_size: int = 1) -> str:
    """The name of the plan rank ``rank`` of ``world_size`` reads for ``plan`` (a plan
    name, a shard group name or a shard name; ``None``: :func:`default_plan`, the most
    recent training plan for this world size)."""
    rank, world_size = check_rank(rank, world_size)
    plans = list_plans(store)
    if plan is None:
        plan = default_plan(store, world_size)
    meta = plans.get(plan)
    if meta is not None and meta.sharded:
        plan = meta.shard_group  # a shard name stands for its group
    elif meta is not None and world_size == 1:
        return plan
    shards = group_shards(store, plan, plans)
    if not shards:
        if meta is not None:
            raise UsageError(
                f"plan {plan!r} of {store.path} is one unsharded plan but this run has world size "
                f"{world_size}: sample one shard per rank with `oocstore sample {store.path} "
                f"--name {plan} --world-size {world_size} ...` and pack it with `oocstore pack "
                f"{store.path} --plan {plan}`, or run a single process")
        have = ", ".join(sorted({group_of(m) for m in plans.values()})) or "none"
        raise StoreNotFoundError(f"store {store.path} has no plan {plan!r} (it has: {have}): "
                                 f"create it with `oocstore sample {store.path} --name {plan}"
                                 + (f" --world-size {world_size}`" if world_size > 1 else "`"))
    sampled_for = next(iter(shards.values())).shard_world_size
    if sampled_for != world_size:
        raise UsageError(
            f"plan {plan!r} of {store.path} was sampled for world size {sampled_for} "
            f"({sampled_for} shards) but this run has world size {world_size}: launch "
            f"{sampled_for} processes in all (e.g. `torchrun --nproc-per-node {sampled_for} ...`), "
            f"or re-sample for this world size with `oocstore sample {store.path} --name {plan} "
            f"--world-size {world_size} --overwrite ...` and pack it again")
    if rank not in shards:
        raise StoreNotFoundError(
            f"plan {plan!r} of {store.path} has no shard for rank {rank} (it has shards for "
            f"ranks {', '.join(map(str, sorted(shards)))} of {sampled_for}): the store is "
            f"incomplete (copy the whole store to every node), or re-sample with `oocstore "
            f"sample {store.path} --name {plan} --world-size {world_size} --overwrite ...`")
    return shard_name(plan, rank)


def plans_to_pack(store: Store, plan: str | None) -> list[str]:
    """The plans ``oocstore pack --plan PLAN`` packs outside ``torchrun``: every current
    shard of a group (in rank order), else the one plan. Without ``plan``: the most
    recently sampled training plan or shard group, for whatever world size it was
    sampled (outside ``torchrun`` the world size is not known; that is the plan the user
    just sampled for training)."""
    plans = list_plans(store)
    if plan is None:
        # By the chosen plan's meta, not its name: a shard group may share its name with
        # an older unsharded plan.
        meta = newest_plan(store, None)
        log.info("no --plan: packing %r, the most recent training plan of %s",
                 group_of(meta), store.path)
        plan = group_of(meta)
    else:
        meta = plans.get(plan)
    if meta is not None and not meta.sharded:
        return [plan]
    group = meta.shard_group if meta is not None else plan
    shards = group_shards(store, group, plans)
    if not shards:
        have = ", ".join(sorted({group_of(m) for m in plans.values()})) or "none"
        raise StoreNotFoundError(f"store {store.path} has no plan {plan!r} (it has: {have}): "
                                 f"create it with `oocstore sample {store.path} --name {plan}`")
    return [shards[r].name for r in sorted(shards)]


def check_rank(rank: Any, world_size: Any) -> tuple[int, int]:
    for value, what in ((world_size, "world_size"), (rank, "rank")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{what} {value!r} is not an integer: give the process's rank and "
                             "the number of processes (torch.distributed's get_rank / "
                             "get_world_size)")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} of world size {world_size}: the rank must be in "
                         f"0..world_size-1 and the world size at least 1")
    return rank, world_size


# -- process group ---------------------------------------------------------------------

def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def current_rank() -> tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` when initialised, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class LaunchInfo:
    """What a launcher such as ``torchrun`` tells each process."""

    rank: int
    world_size: int
    local_rank: int


def launch_info(environ: Mapping[str, str]) -> LaunchInfo | None:
    """The launcher's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from ``environ`` (the CLI
    passes ``os.environ``), or ``None`` when the process was not started by one."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    try:
        info = LaunchInfo(rank=int(environ["RANK"]), world_size=int(environ["WORLD_SIZE"]),
                          local_rank=int(environ.get("LOCAL_RANK", environ["RANK"])))
    except ValueError as err:
        raise UsageError(f"RANK={environ.get('RANK')!r} / WORLD_SIZE="
                         f"{environ.get('WORLD_SIZE')!r} / LOCAL_RANK="
                         f"{environ.get('LOCAL_RANK')!r} are not integers: start the "
                         "processes with torchrun") from err
    check_rank(info.rank, info.world_size)
    return info


def backend_for(device: torch.device | str) -> str:
    """gloo for CPU training, nccl for CUDA (the backends DDP recommends)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group(info: LaunchInfo, device: torch.device | str = "cpu", *,
                       timeout_s: float = 1800.0) -> tuple[torch.device, bool]:
    """Join the launcher's process group (``env://`` rendezvous) unless this process is
    already in one. Returns the device this rank trains on (``cuda:<local rank>`` for
    CUDA) and whether this call created the group (then its caller destroys it)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available on this machine; use "
                             "--device cpu (gloo)")
        if info.local_rank >= torch.cuda.device_count():
            raise UsageError(f"local rank {info.local_rank} has no GPU (this machine has "
                             f"{torch.cuda.device_count()}): lower --nproc-per-node")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    created = not torch.distributed.is_initialized()
    if created:
        torch.distributed.init_process_group(
            backend_for(device), init_method="env://", rank=info.rank,
            world_size=info.world_size, timeout=datetime.timedelta(seconds=timeout_s))
        log.info("rank %d of %d joined the %s process group", info.rank, info.world_size,
                 torch.distributed.get_backend())
    elif torch.distributed.get_world_size() != info.world_size:
        raise UsageError(f"this process is already in a process group of "
                         f"{torch.distributed.get_world_size()} ranks, but the launcher says "
                         f"{info.world_size}: start it with one launcher")
    return device, created


def destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# -- collectives (no-ops in one process) -------------------------------------------------

def _collective_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(values: Sequence[float], op: str = "sum") -> list[float]:
    """Element-wise ``sum`` / ``max`` / ``min`` of ``values`` over all ranks (float64)."""
    if not is_distributed():
        return [float(v) for v in values]
    ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX,
           "min": torch.distributed.ReduceOp.MIN}
    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=_collective_device())
    torch.distributed.all_reduce(t, op=ops[op])
    return [float(v) for v in t.cpu()]


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def node_ranks() -> list[int]:
    """The ranks running on this machine (same host name), in rank order."""
    rank, _ = current_rank()
    hosts = all_gather_object(socket.gethostname())
    return [r for r, h in enumerate(hosts) if h == hosts[rank]]


def in_turns_per_node(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on every rank, one rank at a time on each machine (machines in
    parallel): a store has one writer at a time, and each machine has its own copy."""
    rank, _ = current_rank()
    mine = node_ranks()
    turns = int(all_reduce([len(mine)], "max")[0])
    result = None
    for turn in range(turns):
        if mine.index(rank) == turn:
            result = fn()
        barrier()
    return result
