"""The staging ring, and what a CUDA loader holds on the device.

A batch bound for a CUDA device is assembled on the host (CPU-tier rows, SSD segment
rows, base-array reads) into a staging buffer, copied to the device on a side stream,
and the GPU tier's rows are gathered into it there (``TieredReader.read_batch_async``).
:class:`StagingRing` holds the staging buffers: ``slots`` of them, each sized for the
pack's largest batch, allocated once as one page-aligned block that its owner charges
to the CPU budget up front (``slots x rows x row_bytes``; the block's rounding to whole
4 KiB pages, at most 8 KiB, is part of the fixed overhead, ``docs/BUDGETS.md``).

Pinning: with ``pin=True`` (a CUDA device) the block is page-locked in place with
``cudaHostRegister``, so the copies are DMA at full bandwidth and do not block the
host. The block is registered at exactly its size, where torch's pinned allocator
(``pin_memory=True``) rounds each allocation up to a power of two (up to 2x what the
budget charged). If the driver refuses, the ring stays pageable and says so in the
log (slower copies, the same results; ``stats()["pinned"]`` is false).

Slot states (one producer thread at a time acquires and releases)::

    free --acquire--> held --release(event)--> in flight --event complete--> free

``acquire`` hands out the slots round-robin; when the slot's previous copy may still be
reading it (its event has not completed), ``acquire`` first waits on that event
(counted as ``waits`` / ``wait_s``). So a buffer is never overwritten while a copy can
read it, and with one copy stream (copies complete in issue order) the wait is always on
the oldest copy. ``release(slot, event=None)`` frees the slot at once: the CPU path,
where the copy out of the slot finished before ``release``. Host objects a copy reads
besides the slot (index tensors) travel with it (``keep``) and are dropped only when its
event is done.

Device memory: :func:`~oocstore.workingset.device_charges` (re-exported here) lists
what a CUDA loader holds on the GPU besides the GPU tier: the batches in flight and the
GPU-tier gather's scratch, each with the CUDA caching allocator's rounding, so that
``torch.cuda.max_memory_allocated()`` stays inside what was charged.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

# What a CUDA loader charges on the device is computed with the rest of the working set.
from ..workingset import (CUDA_BLOCK_SLACK, choose_depth, device_batch_bytes,  # noqa: F401,E402
                          device_batches_held, device_charges)

_PAGE = 4096


class _Block:
    """The ring's memory and its registration; freed by :meth:`free` (also run by a
    ``weakref.finalize`` if the ring is dropped without ``close``)."""

    def __init__(self, nbytes: int, pin: bool, device: Any):
        # Whole pages of a private allocation (what cudaHostRegister is used on most),
        # so the registered range shares no page with anything else.
        size = -(-max(int(nbytes), 1) // _PAGE) * _PAGE
        raw = np.empty(size + _PAGE, dtype=np.uint8)
        off = -raw.ctypes.data % _PAGE
        self.array = raw[off:off + size]
        self.registered = False
        self.events: list[Any] = []
        if pin:
            self.registered = _host_register(self.array, device)

    def free(self) -> None:
        for ev in self.events:
            if ev is not None:
                ev.synchronize()  # no copy may still read the block
        self.events = []
        if self.registered:
            self.registered = False
            _host_unregister(self.array)
        self.array = None


def _cuda_ok(rc: Any) -> bool:
    if isinstance(rc, tuple):
        rc = rc[0]
    try:
        return int(rc) == 0
    except (TypeError, ValueError):
        return str(rc).rsplit(".", 1)[-1] == "success"


def _host_register(array: np.ndarray, device: Any) -> bool:
    """Page-lock ``array`` for DMA (``cudaHostRegister``); False, logged, on failure."""
    try:
        import torch

        if not torch.cuda.is_available():
            log.warning("staging ring: CUDA is not available, the buffers stay pageable")
            return False
        with torch.cuda.device(device if device is not None else torch.cuda.current_device()):
            rc = torch.cuda.cudart().cudaHostRegister(array.ctypes.data, array.nbytes, 0)
        if _cuda_ok(rc):
            return True
        log.warning("staging ring: cudaHostRegister of %d bytes failed (%s); the buffers stay "
                    "pageable (slower copies, same results)", array.nbytes, rc)
    except Exception as err:  # noqa: BLE001 — degrade to pageable, never fail the loader
        log.warning("staging ring: cannot page-lock the buffers (%s: %s); they stay pageable",
                    type(err).__name__, err)
    return False


def _host_unregister(array: np.ndarray) -> None:
    try:
        import torch

        rc = torch.cuda.cudart().cudaHostUnregister(array.ctypes.data)
        if not _cuda_ok(rc):
            log.warning("staging ring: cudaHostUnregister failed (%s)", rc)
    except Exception as err:  # noqa: BLE001 — at teardown: log, never raise
        log.warning("staging ring: cudaHostUnregister failed (%s: %s)", type(err).__name__, err)


class StagingRing:
    """``slots`` host buffers of ``[rows, feat_dim]`` ``dtype``, reused round-robin once
    the copy that read each one has completed (see the module docstring)."""

    def __init__(self, slots: int, rows: int, feat_dim: int, dtype, *, pin: bool = False,
                 device: Any = None):
        if slots < 1:
            raise ValueError(f"a staging ring needs at least one slot, not {slots}")
        self.slots, self.rows, self.feat_dim = int(slots), int(rows), int(feat_dim)
        self.dtype = np.dtype(dtype)
        self.slot_bytes = self.rows * self.feat_dim * self.dtype.itemsize
        self._block = _Block(self.slots * self.slot_bytes, pin, device)
        self._block.events = [None] * self.slots
        self._finalizer = weakref.finalize(self, _Block.free, self._block)
        n = self.slots * self.rows * self.feat_dim
        self._buffers = self._block.array[:n * self.dtype.itemsize].view(self.dtype).reshape(
            self.slots, self.rows, self.feat_dim)
        self._keep: list[Any] = [None] * self.slots
        self._held: set[int] = set()
        self._next = 0
        self._lock = threading.Lock()
        self.acquires = 0
        self.waits = 0
        self.wait_s = 0.0

    @property
    def nbytes(self) -> int:
        """What the owner charges: ``slots x rows x row_bytes``."""
        return self.slots * self.slot_bytes

    @property
    def pinned(self) -> bool:
        return self._block.registered

    @property
    def closed(self) -> bool:
        return self._block.array is None

    def acquire(self, n: int) -> tuple[int, np.ndarray]:
        """The next slot, once its previous copy has completed, as ``(slot, view)``:
        ``view`` is that slot's first ``n`` rows, ``[n, feat_dim]``, C-contiguous."""
        if not 0 <= n <= self.rows:
            raise ValueError(f"a batch of {n} rows does not fit a staging slot of {self.rows} "
                             "rows (the pack's largest batch)")
        with self._lock:
            if self.closed:
                raise RuntimeError("the staging ring is closed")
            k = self._next
            if k in self._held:
                raise RuntimeError(f"staging slot {k} is still held: release it before the "
                                   f"ring comes round again ({self.slots} slots)")
            ev = self._block.events[k]
            if ev is not None:
                if not ev.query():
                    self.waits += 1
                    t0 = time.perf_counter()
                    ev.synchronize()
                    self.wait_s += time.perf_counter() - t0
                self._block.events[k] = None
            self._keep[k] = None
            self._next = (k + 1) % self.slots
            self.acquires += 1
            view = self._buffers[k, :n]
            self._held.add(k)  # last: a caller interrupted after it hands back the slot
            return k, view      # with release_new, even before it has the slot's number

    def held(self) -> frozenset:
        """The slots held now (acquired, not yet released)."""
        with self._lock:
            return frozenset(self._held)

    def release_new(self, before: frozenset) -> None:
        """Hand back (as :meth:`release` without an event) every slot held now that was
        not held in ``before`` (what :meth:`held` said before an :meth:`acquire`): a
        producer's clean-up that is right whether or not its ``acquire`` returned, or
        claimed a slot at all (an interrupt, Ctrl-C, may come between the claim and the
        caller storing the slot's number). Nothing may read those slots any more."""
        with self._lock:
            for slot in sorted(self._held - before):
                self._keep[slot] = None
                if not self.closed:
                    self._block.events[slot] = None
                self._held.discard(slot)

    def release(self, slot: int, event: Any = None, keep: Any = None) -> None:
        """Hand ``slot`` back. ``event`` (one with ``query()`` / ``synchronize()``, a
        ``torch.cuda.Event`` in real use) completes when nothing reads the slot any more;
        ``None`` means nothing does now. ``keep``: objects to hold until then."""
        with self._lock:
            if slot not in self._held:
                raise RuntimeError(f"staging slot {slot} is not held")
            if not self.closed:
                self._block.events[slot] = event
                self._keep[slot] = keep if event is not None else None
            self._held.discard(slot)  # last: never free while its event is unrecorded

    def in_flight(self) -> int:
        """Slots whose copy may still be running (their event has not completed)."""
        with self._lock:
            return sum(1 for ev in self._block.events if ev is not None and not ev.query())

    def stats(self) -> dict[str, Any]:
        return {"slots": self.slots, "slot_bytes": self.slot_bytes, "nbytes": self.nbytes,
                "pinned": self.pinned, "acquires": self.acquires, "waits": self.waits,
                "wait_s": self.wait_s}

    def close(self) -> None:
        """Wait for every copy still reading the ring, unpin and free it (idempotent)."""
        with self._lock:
            self._keep = [None] * self.slots
            self._buffers = None
            self._finalizer()


def stage_to_device(ring: StagingRing, n: int, fill: Callable[[np.ndarray], None], device: Any,
                    stream: Any) -> Any:
    """``n`` rows filled on the host by ``fill(view)`` (``view``: a ``[n, feat_dim]`` slot of
    ``ring``), as a new device tensor: copied on the side ``stream`` (DMA from the pinned
    slot), which the current stream waits for on the device (the host does not block). The
    slot is reused only once the copy's event has completed."""
    import torch

    before = ring.held()
    try:
        slot, view = ring.acquire(n)  # inside the try: see StagingRing.release_new
        fill(view)
        host = torch.from_numpy(view)
        with torch.cuda.stream(stream):
            out = host.to(device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        current = torch.cuda.current_stream(device)
        current.wait_event(event)
        out.record_stream(current)
        # inside the try: an interrupt just before the release still frees the slot
        ring.release(slot, event, keep=host)
    except BaseException:
        if stream is not None:
            stream.synchronize()  # nothing enqueued may still read the slot
        ring.release_new(before)
        raise
    return out
