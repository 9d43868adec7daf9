"""Rows held in host memory (the CPU tier, and the in-memory reference tier)."""

from __future__ import annotations

import numba
import numpy as np

from .base import Tier


@numba.njit(cache=True, nogil=True, parallel=True)
def gather_rows(src, slots, out):
    """``out[i] = src[slots[i]]`` with numba threads, releasing the GIL."""
    for i in numba.prange(slots.shape[0]):
        out[i] = src[slots[i]]


class MemoryTier(Tier):
    """A ``[rows, D]`` numpy array in RAM."""

    name = "cpu"

    def __init__(self, rows: np.ndarray, *, name: str = "cpu"):
        super().__init__()
        self.rows = np.ascontiguousarray(rows)
        self.name = name

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes)

    @property
    def num_rows(self) -> int:
        return int(self.rows.shape[0])

    def _gather(self, slots: np.ndarray, out: np.ndarray) -> None:
        if slots.size:
            gather_rows(self.rows, slots, out)
