"""The tier interface: a tier holds some feature rows and gathers them by slot.

Contract (every tier passes :class:`oocstore.testing.TierConformance`):

* ``gather(slots, out)`` writes row ``slots[i]`` of the tier into ``out[i]`` for every
  ``i``; ``slots`` is an int array, ``out`` a ``[len(slots), D]`` array of the tier's
  dtype. A slot outside the tier raises ``IndexError`` naming the tier, never returns
  garbage.
* ``stats()`` returns counters: ``hits`` (rows gathered), ``bytes_read`` (bytes moved
  from storage — 0 for memory tiers), ``useful_bytes`` (bytes of the needed rows among
  them; ``bytes_read / useful_bytes`` is the tier's read amplification).
* ``nbytes`` is the memory the tier holds (what it charged to the budget).
* A tier never knows which tier sits below it; :class:`~oocstore.tiers.reader.TieredReader`
  composes them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Tier(ABC):
    name: str = "tier"

    def __init__(self) -> None:
        self.hits = 0
        self.bytes_read = 0
        self.useful_bytes = 0

    @property
    @abstractmethod
    def nbytes(self) -> int: ...

    @property
    @abstractmethod
    def num_rows(self) -> int: ...

    def gather(self, slots: np.ndarray, out: np.ndarray) -> None:
        slots = np.asarray(slots, dtype=np.int64)
        if slots.size:
            lo, hi = int(slots.min()), int(slots.max())
            if lo < 0 or hi >= self.num_rows:
                bad = lo if lo < 0 else hi
                raise IndexError(f"{self.name} tier: slot {bad} outside 0..{self.num_rows - 1}")
        self._gather(slots, out)
        self.hits += int(slots.size)

    @abstractmethod
    def _gather(self, slots: np.ndarray, out: np.ndarray) -> None: ...

    def stats(self) -> dict[str, Any]:
        return {"hits": self.hits, "bytes_read": self.bytes_read, "useful_bytes": self.useful_bytes,
                "nbytes": self.nbytes}

    def close(self) -> None:
        pass
