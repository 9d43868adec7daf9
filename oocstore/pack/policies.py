"""CPU-tier cache policies: one class each, in one registry (:data:`POLICIES`).

A policy decides what the CPU tier holds while a plan is served. Because the plan's
access sequence is known before training, every policy is worked out at pack time:

* a **static** policy holds the same rows (the hottest, :func:`.placement.static_placement`)
  for the whole run and stores no schedule;
* a **scheduled** policy simulates its cache over each epoch of the plan
  (:meth:`CachePolicy.schedule`) and the pack stores the result — per input position the
  CPU slot serving it, and the admissions after each batch (``pack/<name>/inserts``,
  ``insert_offsets``; :mod:`.format`). The loader replays those arrays whatever policy
  made them: it decides from the pack's arrays, never from the policy's name.

Adding a policy: a class with ``name``, ``restarts_each_epoch`` and ``schedule`` (a
per-epoch simulation kernel with the signature of
:func:`.placement._belady_epoch`, run by :func:`.placement.scheduled_epochs`), one entry
in :data:`POLICIES`, and a test against a plain reference implementation. The command
line's ``--policy`` choices come from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Schedule:
    """What a scheduled CPU tier stores in a pack (:mod:`.format`: ``inserts``)."""

    hit: np.ndarray  # int32 [positions]: CPU slot serving each position, -1: not the CPU tier
    ins_pos: np.ndarray  # int64 [admissions]: position whose row is admitted after its batch
    ins_slot: np.ndarray  # int32 [admissions]: the CPU slot it is copied into
    ins_count: np.ndarray  # int64 [batches]: admissions per batch


@runtime_checkable
class CachePolicy(Protocol):
    """One CPU-tier policy. ``schedule`` gets the plan's records (``records``, batch ``b``
    at ``offs[b]``, ``ninput[b]`` input positions), the epoch starts (batch indices),
    ``node_tier`` (int8 [N]: 0 for GPU-tier nodes, which the CPU tier never holds), the
    CPU tier's ``capacity`` in rows and its epoch-start rows ``init_ids`` (the static
    choice, hottest first, in slot order). It returns ``None`` for a static tier."""

    name: str
    #: Whether the tier goes back to ``init_ids`` at every epoch start (a scheduled tier
    #: does, so the loader can serve any epoch on its own; a reset costs one read of the
    #: CPU tier's rows).
    restarts_each_epoch: bool

    def schedule(self, records: np.ndarray, offs: np.ndarray, ninput: np.ndarray,
                 epoch_starts: np.ndarray, node_tier: np.ndarray, capacity: int,
                 init_ids: np.ndarray) -> Schedule | None: ...


class _Scheduled:
    """A policy simulated per epoch by one kernel (loaded on first use: the kernels are
    numba-compiled, which the command line's parser should not pay for)."""

    restarts_each_epoch = True

    def _kernel(self):
        raise NotImplementedError

    def schedule(self, records, offs, ninput, epoch_starts, node_tier, capacity, init_ids):
        from .placement import scheduled_epochs

        return Schedule(*scheduled_epochs(self._kernel(), records, offs, ninput, epoch_starts,
                                          node_tier, capacity, init_ids))


class StaticPolicy:
    """The most accessed rows of the whole plan, fixed (the DiskGNN / GNNLab policy)."""

    name = "static"
    restarts_each_epoch = False

    def schedule(self, records, offs, ninput, epoch_starts, node_tier, capacity, init_ids):
        return None


class BeladyPolicy(_Scheduled):
    """Belady's optimal policy over the known future: evict the row used furthest ahead,
    do not admit a row used later than everything cached (as Ginex does). No policy
    serves more positions from a cache of the same size."""

    name = "belady"

    def _kernel(self):
        from .placement import _belady_epoch
        return _belady_epoch


class S3FifoPolicy(_Scheduled):
    """S3-FIFO (Yang et al., SOSP 2023; GraphBolt's ``s3-fifo``): a small FIFO filters
    rows seen once, a main FIFO with lazy promotion keeps the rest, a ghost queue
    remembers what the small FIFO dropped (:func:`.online._s3fifo_epoch`)."""

    name = "s3fifo"

    def _kernel(self):
        from .online import _s3fifo_epoch
        return _s3fifo_epoch


class SievePolicy(_Scheduled):
    """SIEVE (Zhang et al., NSDI 2024; GraphBolt's default ``sieve``): one FIFO with a
    visited bit and a moving hand (:func:`.online._sieve_epoch`)."""

    name = "sieve"

    def _kernel(self):
        from .online import _sieve_epoch
        return _sieve_epoch


#: Every CPU-tier policy by name (``PackOptions.policy``, ``oocstore pack --policy``).
POLICIES: dict[str, CachePolicy] = {p.name: p for p in (StaticPolicy(), BeladyPolicy(),
                                                        S3FifoPolicy(), SievePolicy())}
