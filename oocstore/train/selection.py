"""Model selection by validation accuracy: the best epoch, early stopping, the model file.

``oocstore train`` measures validation accuracy after every epoch (when the store has a
``val`` split). :class:`BestModel` keeps the best epoch so far — the first epoch that
reached the highest accuracy — with a CPU copy of its weights, and says when
``patience`` epochs in a row brought no improvement (early stopping). Its state travels
in the training checkpoint (entry ``best``), so a resumed run keeps counting where the
interrupted one stopped and still has the best weights.

The model file (``--save-model PATH``) is the best epoch's ``state_dict`` — tensors
under their parameter names, plus the model's kind and hyper-parameters in the dict's
``_metadata`` (which ``load_state_dict`` ignores) — so ``torch.load(PATH,
weights_only=True)`` reads it, ``model.load_state_dict`` takes it and
:func:`oocstore.train.models.spec_of_state_dict` says which model to build for it. It
is written once, when training ends, atomically (temporary file in the same directory,
fsync, rename, fsync of the directory): an interrupted run leaves no half-written file,
and an existing file is replaced only with ``--overwrite`` (checked before training
starts).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FormatError, UsageError
from .checkpoint import save_atomic


@dataclass
class BestModel:
    """The best validation epoch so far and whether to stop (``patience`` epochs
    without a strictly higher validation accuracy; None: never stop early)."""

    patience: int | None = None
    epoch: int = -1
    val_acc: float | None = None
    state: dict[str, torch.Tensor] | None = None  # CPU copy of the best epoch's weights
    stopped: bool = False

    def update(self, epoch: int, val_acc: float, model: nn.Module) -> bool:
        """Record epoch ``epoch``'s accuracy; True when training should stop now (and,
        once stopped, for good: later epochs change nothing)."""
        if self.stopped:
            return True
        if self.val_acc is None or val_acc > self.val_acc:
            self.epoch, self.val_acc = epoch, float(val_acc)
            self.state = {k: v.detach().to("cpu", copy=True)
                          for k, v in model.state_dict().items()}
        elif self.patience is not None and epoch - self.epoch >= self.patience:
            self.stopped = True
        return self.stopped

    def to_checkpoint(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "val_acc": self.val_acc, "model": self.state,
                "stopped": self.stopped}

    @classmethod
    def from_checkpoint(cls, entry: Any, patience: int | None, path: Path,
                        epochs_done: int) -> "BestModel":
        """The state saved by :meth:`to_checkpoint` after ``epochs_done`` epochs (None: a
        checkpoint written before validation ran every epoch; selection starts afresh)."""
        if entry is None:
            return cls(patience=patience)
        ok = (isinstance(entry, dict) and isinstance(entry.get("epoch"), int)
              and not isinstance(entry.get("epoch"), bool)
              and -1 <= entry["epoch"] < epochs_done
              and isinstance(entry.get("stopped"), bool)
              and (entry.get("val_acc") is None or (
                  isinstance(entry["val_acc"], float) and 0.0 <= entry["val_acc"] <= 1.0))
              and (entry["epoch"] == -1) == (entry.get("val_acc") is None)
              and (entry.get("model") is None or (isinstance(entry["model"], dict) and all(
                  isinstance(k, str) and isinstance(v, torch.Tensor)
                  for k, v in entry["model"].items()))))
        if not ok:
            raise FormatError(f"checkpoint {path}: entry 'best' is not the best epoch's "
                              "record (epoch, val_acc, model, stopped): it is damaged or was "
                              "not written by `oocstore train`; start a new run without "
                              "--resume")
        return cls(patience=patience, epoch=entry["epoch"], val_acc=entry["val_acc"],
                   state=entry["model"], stopped=entry["stopped"])


def check_model_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse, before training, a ``--save-model`` path that cannot or must not be
    written: an existing file without ``overwrite``, a directory, a missing or
    read-only parent directory."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"save_model={str(p)!r}: is a directory; give a file name, e.g. "
                         f"{p / 'model.pt'}")
    if p.exists() and not overwrite:
        raise UsageError(f"save_model={str(p)!r}: the file exists; give overwrite=True to "
                         "replace it, or another path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"save_model={str(p)!r}: directory {parent} does not exist; create it "
                         "first or give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"save_model={str(p)!r}: directory {parent} is not writable; give a "
                         "path this user can write")
    return p


def save_model(path: Path, state: dict[str, torch.Tensor],
               spec: dict[str, Any] | None = None) -> Path:
    """Write ``state`` (a state_dict) to ``path`` atomically. ``spec``, the model's kind
    and hyper-parameters (:class:`oocstore.train.models.ModelSpec`), travels in the
    state_dict's metadata (``_metadata[""]["oocstore_model"]``), which ``torch.load``
    restores and ``load_state_dict`` ignores, so the file stays a plain state_dict."""
    if spec is not None:
        state = OrderedDict(state)
        meta = OrderedDict({"": {"oocstore_model": dict(spec)}})
        state._metadata = meta  # type: ignore[attr-defined]
    return save_atomic(state, path)
