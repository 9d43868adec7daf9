"""Evaluation features of ``train --task link`` out of core, within the CPU budget.

Evaluation embeds the held-out edges' endpoints batch by batch (:func:`.link.embed_nodes`);
each batch needs the feature rows of its input nodes at once. The pack covers only the
training batches, so these rows are read from the store's feature array, one O_DIRECT
row read each (:class:`~oocstore.tiers.ssd.BaseRowTier`), into a buffer charged to the
training loader's budget accountant: while evaluation runs, the loader lends it its
budget (:meth:`~oocstore.loader.NodeLoader._suspend`) and re-opens on its next epoch.
A memory map would not be charged, and its touched pages would stay resident.

The evaluation batches are those of the in-memory run (``EVAL_BATCH`` seeds each, the
same neighbourhood keys), so both modes give identical metrics at any budget; the budget
must hold the largest of them, which :func:`eval_chunk_bytes` computes before training.
"""

from __future__ import annotations

import numpy as np
import torch

from ..budget import BudgetAccountant, Charge
from ..errors import BudgetError
from ..tiers.ssd import DEFAULT_IO_THREADS, BaseRowTier, base_read_buffer_bytes
from ..units import format_size


def eval_chunk_bytes(max_rows: int, row_bytes: int, threads: int = DEFAULT_IO_THREADS) -> int:
    """CPU bytes one evaluation batch holds: its input nodes' rows and the row reader's
    scratch."""
    return max_rows * row_bytes + base_read_buffer_bytes(row_bytes, threads)


def check_eval_budget(store_path, cpu_budget: int | None, max_rows: int, row_bytes: int) -> None:
    """Refuse a ``cpu_budget`` that cannot hold the largest evaluation batch (the error
    names the minimum)."""
    need = eval_chunk_bytes(max_rows, row_bytes)
    if cpu_budget is not None and need > cpu_budget:
        raise BudgetError(f"cpu_budget={format_size(cpu_budget)!r} cannot hold one link "
                          f"evaluation batch of {store_path} ({max_rows} feature rows of "
                          f"{row_bytes} B and the row reader's scratch: {format_size(need)}): "
                          f"give cpu_budget={need} or more, or use in_memory=True")


class BudgetedFeatures:
    """``features(ids)`` for :func:`.link.embed_nodes` out of core: the rows of ``ids``
    read with O_DIRECT into a buffer charged to ``loader``'s accountant, held until
    :meth:`release` (after the batch's forward pass)."""

    def __init__(self, store, loader):
        self.loader = loader
        meta = store.array_meta("features")
        self.tier = BaseRowTier(store.file_path(meta), meta)
        self.row_bytes = self.tier.row_bytes
        self._charge: Charge | None = None
        self.peak = 0  # the largest charge of the accountants evaluation charged to

    @property
    def accountant(self) -> BudgetAccountant:
        return self.loader.accountant  # a new one each time the loader re-opens

    def __call__(self, ids: np.ndarray) -> torch.Tensor:
        self.release()
        self.loader._suspend()  # its buffers and charges are this evaluation's now
        ids = np.asarray(ids, dtype=np.int64)
        acct = self.accountant
        self._charge = acct.charge("cpu", ids.size * self.row_bytes + self.tier.nbytes,
                                   "link evaluation feature rows",
                                   fix="raise cpu_budget or use in_memory=True")
        out = np.empty((ids.size, self.tier.dim), dtype=self.tier.meta.np_dtype)
        self.tier.gather_at(ids, out, np.arange(ids.size, dtype=np.int64))
        self.peak = max(self.peak, acct.peak("cpu"))
        return torch.from_numpy(out)

    def release(self) -> None:
        if self._charge is not None:
            self._charge.release()
            self._charge = None

    @property
    def bytes_read(self) -> int:
        return int(self.tier.bytes_read)

    def close(self) -> None:
        self.release()
        self.tier.close()


__all__ = ["BudgetedFeatures", "check_eval_budget", "eval_chunk_bytes"]
