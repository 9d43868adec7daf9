"""Data-parallel training with ``torch.distributed``: the launcher's variables, the
process group and the few collectives ``oocstore train`` and ``pack`` need.

oocstore does not launch processes: ``torchrun`` (or any launcher that initialises
``torch.distributed``) does, and DDP synchronises the gradients. This module only

* reads the launcher's variables when the CLI passes them in (:func:`launch_info`; the
  library itself never reads the environment) and opens the process group (gloo on
  CPU, nccl on CUDA);
* wraps the collectives used for bookkeeping (sums, gathers, barriers) so that they
  are no-ops in a single process.

Which plan shard a rank reads, and which plan a run uses when none is named, is found
with the other plan lookups in :mod:`oocstore.plan` (:func:`~oocstore.plan.resolve_plan`,
:func:`~oocstore.plan.default_plan`, ...); those names are re-exported here.
"""

from __future__ import annotations

import datetime
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from .errors import PeerError, UsageError
# Which plan or shard a rank reads is found in oocstore.plan; re-exported for old callers.
from .plan import (TRAIN_SPLIT, check_rank, check_training_plan, default_plan,  # noqa: F401
                   group_of, group_shards, is_evaluation_split, newest_plan, plans_to_pack,
                   resolve_plan)

log = logging.getLogger(__name__)


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
            raise UsageError("device='cuda': no CUDA device is available on this machine; use "
                             "device='cpu' (gloo)")
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


#: Seconds a finished rank waits at the teardown barrier for its peers. Every rank
#: reaches it right after the run's last collective (only rank 0's report lies
#: between), so a peer missing for this long has failed: its rank says why.
TEARDOWN_TIMEOUT_S = 60.0


def destroy_process_group(*, wait_for_peers: bool = True,
                          timeout_s: float | None = None) -> None:
    """Leave the process group. With ``wait_for_peers`` (a rank that finished its work)
    every rank first meets the others at a barrier: gloo aborts a process (``terminate
    called without an active exception``) whose peer tears its connections down while
    this rank's pair threads still use them. A rank leaving on an error skips the barrier,
    which its peers (busy elsewhere) would never reach.

    The barrier waits at most ``timeout_s`` (:data:`TEARDOWN_TIMEOUT_S`), not the
    group's half hour; a peer that failed (its connections closed) or does not come in
    time raises :class:`~oocstore.errors.PeerError`, one line, after the group is left."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    error = None
    try:
        if wait_for_peers:
            _teardown_barrier(TEARDOWN_TIMEOUT_S if timeout_s is None else timeout_s)
    except RuntimeError as err:  # gloo / nccl: a peer's connection closed, or a timeout
        rank, world = current_rank()
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        error = PeerError(f"rank {rank} of {world} finished, but another rank failed or left "
                          f"before the end ({reason}): that rank's output says why")
    finally:
        torch.distributed.destroy_process_group()
    if error is not None:
        raise error


def _teardown_barrier(timeout_s: float) -> None:
    """A barrier that gives up after ``timeout_s``: gloo's monitored barrier (it names a
    rank that did not come), else an asynchronous barrier waited on with the timeout."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if torch.distributed.get_backend() == "gloo":
        torch.distributed.monitored_barrier(timeout=timeout)
    else:
        torch.distributed.barrier(async_op=True).wait(timeout=timeout)


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
