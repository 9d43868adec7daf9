"""What a training run reports while it runs, and the CLI's per-batch progress bar.

:class:`TrainProgress` is the interface :func:`~oocstore.train.run.run_training` calls:
``epoch_start`` (with the number of batches), ``batch`` after every optimizer step and
``epoch_end`` with the epoch's history entry (its validation accuracy included).

:class:`BarProgress` draws one tqdm bar per epoch from the first batch on. Its rate is
seeds per second *after warm-up*: counted from the end of the epoch's first step, so
neither the setup before it (opening the loader, evaluation plans, numba and torch
warming up) nor the first batch's latency is averaged into the number; tqdm's own rate,
which includes both, is left out of the bar.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable


class TrainProgress:
    """What :func:`~oocstore.train.run.run_training` reports; override what you show."""

    def epoch_start(self, epoch: int, epochs: int, batches: int, done: int = 0) -> None:
        """Epoch ``epoch`` (of ``epochs``) starts; this rank reads ``batches`` batches, of
        which ``done`` were trained before a resume."""

    def batch(self, seeds: int, loss: float) -> None:
        """One training step on ``seeds`` seeds is done."""

    def epoch_end(self, entry: dict[str, Any]) -> None:
        """The epoch's history entry (with ``val_acc`` once validation ran)."""


class _EpochCallback(TrainProgress):
    """``progress(epoch, epochs)`` after every epoch: the older callback form."""

    def __init__(self, fn: Callable[[int, int], Any], epochs: int):
        self.fn, self.epochs = fn, epochs

    def epoch_end(self, entry: dict[str, Any]) -> None:
        self.fn(entry["epoch"], self.epochs)


class BarProgress(TrainProgress):
    """One tqdm bar per epoch on ``file`` (stderr): batches done, seeds/s after warm-up,
    the running loss, and the validation accuracy once the epoch is validated."""

    def __init__(self, file=None, clock: Callable[[], float] = time.perf_counter):
        self.file = file if file is not None else sys.stderr
        self.clock = clock
        self.bar = None

    def epoch_start(self, epoch: int, epochs: int, batches: int, done: int = 0) -> None:
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(total=batches, initial=done, desc=f"epoch {epoch + 1}/{epochs}",
                        unit="batch",
                        dynamic_ncols=True, file=self.file,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                   "[{elapsed}{postfix}]")
        self.steps = 0
        self.seeds = 0  # counted after the first step
        self.t_first: float | None = None
        self.t_last = 0.0
        self.loss_sum = 0.0
        self.loss_n = 0

    def rate(self) -> float | None:
        """Seeds per second since the end of the epoch's first step (None before a
        second step)."""
        if self.t_first is None or self.seeds == 0:
            return None
        elapsed = self.t_last - self.t_first  # to the last step: validation is not training
        return self.seeds / elapsed if elapsed > 0 else None

    def _postfix(self, val_acc: float | None = None, mode: str | None = None) -> str:
        parts = []
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:,.0f} seeds/s")
        if self.loss_n:
            parts.append(f"loss {self.loss_sum / self.loss_n:.4f}")
        if val_acc is not None:
            parts.append(f"val acc {val_acc:.4f}" + (f" ({mode})" if mode else ""))
        return ", ".join(parts)

    def batch(self, seeds: int, loss: float) -> None:
        self.steps += 1
        self.t_last = self.clock()
        if self.t_first is None:
            self.t_first = self.t_last
        else:
            self.seeds += seeds
        self.loss_sum += loss * seeds
        self.loss_n += seeds
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(), refresh=False)
            self.bar.update(1)

    def epoch_end(self, entry: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(entry.get("val_acc"), entry.get("val_eval")),
                                     refresh=True)
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
