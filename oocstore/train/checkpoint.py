"""Training checkpoints (``oocstore train --checkpoint DIR``): saved without code, loaded
without running any.

A checkpoint file (``DIR/checkpoint.pt``, written atomically: temporary file, fsync,
rename) holds only tensors and plain values — dicts, lists, str, int, float, bool, None —
so it is read with ``torch.load(weights_only=True)``, whose unpickler builds nothing
else. A file that names any other Python object (a crafted ``__reduce__`` would
otherwise run a command while it loads) is refused with :class:`FormatError` before
anything in it is used, and so is a file whose entries do not have the layout below.

Layout (``format`` 2)::

    format      2
    plan        the plan (or shard group) trained on
    epoch       epochs completed; history has one entry per completed epoch
    history     [{"epoch", "time_s", "wait_s", "loss", "seeds", "samples_per_s"}, ...]
                (plus "val_acc", "val_s" where the store has a validation split)
    model       the model's state_dict (tensors)
    optimizer   the optimizer's state_dict (tensors and plain values)
    loader      NodeLoader.state_dict() (per rank in rank order under DDP) or None
    world_size  processes that trained
    config      TrainConfig as a dict
    rng         random states at the end of the last epoch (per rank under DDP):
                torch (CPU generator, uint8 tensor), cuda (one per device, or []),
                numpy (MT19937 keys as int64 tensor, pos, has_gauss, cached_gaussian),
                python (version, state as int64 tensor, gauss)
    best        the best validation epoch so far (optional): epoch, val_acc, model (its
                state_dict on the CPU), stopped (early stopping ended the run); checked
                by :meth:`~oocstore.train.selection.BestModel.from_checkpoint`
    model_spec  the model's kind and hyper-parameters (optional; absent: a GraphSAGE),
                :class:`oocstore.train.models.ModelSpec` as a dict

Restoring the random states makes a resumed run repeat the uninterrupted one exactly
(dropout masks draw from torch's generator). Checkpoints of format 1 (no ``format``
key, no ``rng``) still load; their runs continue with a freshly seeded generator.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import random
import re
import signal
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import FormatError
from ..store.files import fsync_dir

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 2

_FIX = "start a new run without --resume (or give another --checkpoint DIR)"


# -- random states ---------------------------------------------------------------------

def rng_state(device: torch.device | str = "cpu") -> dict[str, Any]:
    """torch's, numpy's and Python's global random states as tensors and plain values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    cuda = []
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {"torch": torch.get_rng_state().clone(), "cuda": cuda,
            "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)},
            "python": {"version": int(version),
                       "state": torch.tensor(internal, dtype=torch.int64),
                       "gauss": None if gauss is None else float(gauss)}}


def _parse_rng(state: Mapping[str, Any], where: str | Path):
    try:
        t, n, p = state["torch"], state["numpy"], state["python"]
        if not (isinstance(n, dict) and isinstance(p, dict)):
            raise TypeError("its numpy and python parts are not dicts")
        keys = n["keys"]
        py = p["state"]
        ok = (isinstance(t, torch.Tensor) and t.dtype == torch.uint8
              and t.shape == torch.get_rng_state().shape
              and isinstance(keys, torch.Tensor) and keys.shape == (624,)
              and not keys.is_floating_point() and bool(((keys >= 0) & (keys < 2**32)).all())
              and isinstance(py, torch.Tensor) and py.shape == (625,)
              and not py.is_floating_point() and bool(((py >= 0) & (py < 2**32)).all())
              and isinstance(state["cuda"], list)
              and all(isinstance(c, torch.Tensor) for c in state["cuda"]))
        np_state = ("MT19937", keys.numpy().astype(np.uint32), int(n["pos"]),
                    int(n["has_gauss"]), float(n["cached_gaussian"]))
        py_state = (int(p["version"]), tuple(int(v) for v in py.tolist()),
                    None if p["gauss"] is None else float(p["gauss"]))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError,
            OverflowError) as err:
        raise FormatError(f"checkpoint {where}: its random state is malformed "
                          f"({type(err).__name__}: {err}): {_FIX}") from err
    if (not ok or not 0 <= np_state[2] <= 624 or np_state[3] not in (0, 1)
            or not math.isfinite(np_state[4]) or py_state[0] != 3
            or not 0 <= py_state[1][-1] <= 624
            or not (py_state[2] is None or math.isfinite(py_state[2]))):
        raise FormatError(f"checkpoint {where}: its random state is malformed: {_FIX}")
    return t, np_state, py_state, state["cuda"]


def check_rng_state(state: Mapping[str, Any], where: str | Path) -> None:
    """Refuse (FormatError naming ``where``) what :func:`rng_state` did not return."""
    _parse_rng(state, where)


def set_rng_state(state: Mapping[str, Any], where: str | Path,
                  device: torch.device | str = "cpu") -> None:
    """Restore what :func:`rng_state` returned; :class:`FormatError` naming ``where`` if
    it is not such a state (checked in full before anything is set)."""
    t, np_state, py_state, cuda = _parse_rng(state, where)
    saved = torch.get_rng_state()
    try:
        torch.set_rng_state(t.cpu())
        np.random.set_state(np_state)
        random.setstate(py_state)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        torch.set_rng_state(saved)
        raise FormatError(f"checkpoint {where}: its random state is malformed "
                          f"({type(err).__name__}: {err}): {_FIX}") from err
    if cuda and torch.device(device).type == "cuda" and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            log.warning("checkpoint %s holds %d CUDA random states for %d devices: the CUDA "
                        "generators start fresh", where, len(cuda), torch.cuda.device_count())
        else:
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# -- files -----------------------------------------------------------------------------

@contextlib.contextmanager
def _interrupt_after():
    """Ctrl-C (SIGINT) inside the block is held until the block ends, then raised.
    A KeyboardInterrupt raised inside ``torch.save`` does not reliably stop a run (it
    can come out as a RuntimeError of torch's zip writer; a run was seen training on
    after it); held, the checkpoint is written whole and the interrupt stops the run
    right after; a second Ctrl-C is raised at once (the temporary file is removed).
    Main thread only (elsewhere the
    block runs as it is: signals are handled in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list = []

    def hold(signum, frame):
        if got:  # a second Ctrl-C: the user insists (a save stuck on a slow disk)
            raise KeyboardInterrupt
        got.append(frame)

    old = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        if callable(old):
            old(signal.SIGINT, got[-1])  # Python's default handler raises KeyboardInterrupt
        elif old == signal.SIG_DFL:
            raise KeyboardInterrupt


def save_atomic(obj: Any, path: Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically and durably: written to a fresh
    temporary file beside it (created exclusively, so a symlink planted at a fixed
    temporary name is not followed and two writers never share one), fsynced, renamed
    over ``path``, directory fsynced. A failure leaves ``path`` as it was; a Ctrl-C
    meanwhile is raised once the file is in place (:func:`_interrupt_after`)."""
    parent = path.parent if str(path.parent) else Path(".")
    with _interrupt_after():
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        fsync_dir(parent)
    return path


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus ``format``) to ``directory/checkpoint.pt`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    return save_atomic({"format": CHECKPOINT_FORMAT, **state}, directory / CHECKPOINT_FILE)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, read without running code and checked for the layout
    in the module docstring; :class:`FormatError` naming the file otherwise."""
    state = load_weights_only(path, map_location)
    check_layout(state, path)
    return state


def _check_crc(path: Path, fix: str) -> None:
    """A ``torch.save`` file is a zip archive with a CRC-32 per entry, which
    ``torch.load`` does not check: a flipped bit in a tensor's bytes would load as other
    weights. Every entry is checked here first (one more read of the file)."""
    try:
        if not zipfile.is_zipfile(path):
            return  # the legacy format, or not a checkpoint: torch.load says which
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        raise FormatError(f"checkpoint {path} cannot be read ({_first_line(err)}): it is "
                          f"truncated or damaged; {fix}") from err
    if bad is not None:
        raise FormatError(f"checkpoint {path}: entry {bad} fails its CRC-32 check: the file "
                          f"is damaged; {fix}")


def load_weights_only(path: Path, map_location: torch.device | str = "cpu", *,
                      fix: str = _FIX) -> Any:
    """What the file at ``path`` holds, read with ``torch.load(weights_only=True)``: a
    file naming other Python objects (which could run code) or a damaged one is a
    :class:`FormatError` naming the file and ``fix``; its layout is not checked."""
    with open(path, "rb"):
        pass  # permissions, a vanished file: an OSError naming the path
    _check_crc(path, fix)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch reports every refusal of its restricted unpickler this way; a global it
        # would not build is the code-running kind, anything else a damaged file.
        if not re.search(r"\bglobal\b", str(err), re.IGNORECASE):
            detail = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines()
            raise FormatError(f"checkpoint {path} cannot be read (UnpicklingError: "
                              f"{detail[0][:200] if detail else ''}): it is truncated or damaged, "
                              f"or not a checkpoint; {fix}") from err
        raise FormatError(f"checkpoint {path} names Python objects other than tensors and "
                          "plain values (loading them could run code), so it was not loaded: "
                          f"it was not written by `oocstore train`; {fix}") from err
    except Exception as err:  # noqa: BLE001 - any parse failure of a damaged file
        raise FormatError(f"checkpoint {path} cannot be read ({_first_line(err)}): it is "
                          f"truncated or damaged; {fix}") from err
    return state


def _bad(path: Path, what: str) -> FormatError:
    return FormatError(f"checkpoint {path}: {what}: it is damaged or was not written by "
                       f"`oocstore train`; {_FIX}")


_HISTORY = ("epoch", "time_s", "wait_s", "loss", "seeds", "samples_per_s")


def _describe(value: Any) -> str:
    """A short one-line description of a checkpoint value for an error message."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any, *, integral: bool = False, optional: bool = False) -> bool:
    if value is None:
        return optional
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integral else isinstance(value, (int, float))


def check_optimizer_state(saved: dict[str, Any], optimizer, path: Path) -> None:
    """Refuse an optimizer state that ``optimizer.load_state_dict`` would accept but a
    training step would fail on: per-parameter tensors of another shape, a step that is
    not a number, hyperparameters of another kind than the optimizer's own."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    groups = saved["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise _bad(path, f"the optimizer has {len(groups)} parameter group(s), not "
                         f"{len(optimizer.param_groups)}")
    for mine, theirs in zip(optimizer.param_groups, groups):
        if not isinstance(theirs, dict):
            raise _bad(path, "an optimizer parameter group is not a dict")
        for key, value in mine.items():
            if key == "params":
                continue
            other = theirs.get(key)
            same = (type(value) is type(other) or (_is_number(value) and _is_number(other))
                    or (isinstance(value, (tuple, list)) and isinstance(other, (tuple, list))
                        and len(value) == len(other) and all(_is_number(v) for v in other)))
            numbers = [other] if _is_number(other) else \
                list(other) if isinstance(other, (tuple, list)) else []
            if same and not all(math.isfinite(v) and 0 <= v < 2**53 for v in numbers):
                same = False  # a rate, an epsilon or a decay: finite, >= 0, a double
            if same and key == "betas" and not all(v < 1 for v in numbers):
                same = False  # 1 - beta ** step would be 0
            if not same:
                raise _bad(path, f"optimizer setting {key!r} is {_describe(other)}, not "
                                 f"like {_describe(value)}")
    ids = [i for g in groups for i in (g.get("params") if isinstance(g.get("params"), list)
                                       else [None])]
    if ids != list(range(len(params))):
        raise _bad(path, "the optimizer's parameter lists do not number this model's "
                         f"{len(params)} parameters in order")
    for index, per in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(per, dict):
            raise _bad(path, f"optimizer state entry {_describe(index)} does not name a "
                             "parameter")
        for key, value in per.items():
            if key == "step":  # a count: a number or a 0-d tensor, finite and >= 0
                ok = _is_number(value) or (isinstance(value, torch.Tensor) and value.dim() == 0
                                           and not value.is_complex())
                ok = ok and math.isfinite(float(value)) and float(value) >= 0
            else:  # moments and the like: one value per element of the parameter
                ok = isinstance(value, torch.Tensor) and value.shape == params[index].shape
            if not ok:
                raise _bad(path, f"optimizer state {key!r} of parameter {index} is "
                                 f"{_describe(value)}, which does not fit the parameter of "
                                 f"shape {tuple(params[index].shape)}")


def check_layout(state: Any, path: Path) -> None:
    """Refuse a loaded checkpoint whose entries are missing or of the wrong type."""
    if not isinstance(state, dict):
        raise _bad(path, f"holds a {type(state).__name__}, not a dict of entries")
    fmt = state.get("format", 1)
    if not isinstance(fmt, int) or fmt not in (1, CHECKPOINT_FORMAT):
        raise FormatError(f"checkpoint {path} has format {fmt!r}; this version of oocstore "
                          f"reads formats 1 and {CHECKPOINT_FORMAT}: {_FIX}")
    expect = {"plan": str, "epoch": int, "history": list, "model": dict, "optimizer": dict}
    for key, kind in expect.items():
        if key not in state:
            raise _bad(path, f"entry {key!r} is missing")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise _bad(path, f"entry {key!r} is a {type(state[key]).__name__}, not a "
                             f"{kind.__name__}")
    if state["epoch"] < 0 or len(state["history"]) != state["epoch"]:
        raise _bad(path, f"epoch {state['epoch']} does not match its {len(state['history'])} "
                         "history entries")
    for entry in state["history"]:
        if not isinstance(entry, dict) or not all(
                _is_number(entry.get(k), integral=k in ("epoch", "seeds"),
                           optional=k == "samples_per_s") for k in _HISTORY):
            raise _bad(path, f"history entry {_describe(entry)} is not a dict of the numbers "
                             f"{', '.join(_HISTORY)}")
        if not _is_number(entry.get("val_acc"), optional=True):
            raise _bad(path, f"history entry {_describe(entry)}: val_acc is not a number")
    for key, value in state["model"].items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise _bad(path, f"model entry {key!r} is not a named tensor")
    opt = state["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        raise _bad(path, "entry 'optimizer' is not an optimizer state_dict")
    world = state.get("world_size", 1)
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise _bad(path, f"world_size {world!r} is not a positive int")
    loader = state.get("loader")
    if loader is not None and not isinstance(loader, (dict, list)):
        raise _bad(path, f"entry 'loader' is a {type(loader).__name__}")
    if fmt >= 2 and not isinstance(state.get("rng"), (dict, list)):
        raise _bad(path, "entry 'rng' (the random states) is missing")
