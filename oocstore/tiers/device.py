"""The GPU tier: rows in a device tensor, gathered on the device by slot."""

from __future__ import annotations

import numpy as np
import torch

from .base import Tier


class DeviceTier(Tier):
    """A ``[rows, D]`` tensor on ``device`` (a CUDA device in real use; any torch device
    works, which is how the CPU-only test suite exercises this path)."""

    name = "gpu"

    def __init__(self, rows: np.ndarray, device: torch.device):
        super().__init__()
        self.device = torch.device(device)
        self.rows = torch.from_numpy(np.ascontiguousarray(rows)).to(self.device)

    @property
    def nbytes(self) -> int:
        return int(self.rows.numel() * self.rows.element_size())

    @property
    def num_rows(self) -> int:
        return int(self.rows.shape[0])

    def _gather(self, slots: np.ndarray, out: np.ndarray) -> None:
        if slots.size:
            idx = torch.from_numpy(slots).to(self.device)
            out[:] = self.rows.index_select(0, idx).cpu().numpy()

    def gather_into(self, slots: torch.Tensor, positions: torch.Tensor, x: torch.Tensor) -> None:
        """``x[positions] = rows[slots]`` on the device (``x`` already there)."""
        if slots.numel():
            if int(slots.max()) >= self.num_rows or int(slots.min()) < 0:
                raise IndexError(f"gpu tier: slot outside 0..{self.num_rows - 1}")
            x[positions.to(x.device)] = self.rows.index_select(0, slots.to(self.device))
            self.hits += int(slots.numel())

    def gather_into_async(self, slots: torch.Tensor, positions: torch.Tensor,
                          x: torch.Tensor) -> None:
        """``x[positions] = rows[slots]``, enqueued on the current stream without waiting
        for it. ``slots`` and ``positions`` are host int64 tensors, checked here on the
        host (checking on the device would wait for the stream); the caller keeps them
        alive until the stream has passed this point (the staging ring keeps them with
        its slot)."""
        n = int(slots.numel())
        if not n:
            return
        lo, hi = int(slots.min()), int(slots.max())
        if lo < 0 or hi >= self.num_rows:
            raise IndexError(f"gpu tier: slot {lo if lo < 0 else hi} outside "
                             f"0..{self.num_rows - 1}")
        idx = slots.to(self.device, non_blocking=True)
        pos = positions.to(x.device, non_blocking=True)
        x.index_copy_(0, pos, self.rows.index_select(0, idx))
        self.hits += n
