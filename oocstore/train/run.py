"""``oocstore train``: GraphSAGE node classification over a store, out of core.

Composition root: puts the store, the samplers (for evaluation plans the store lacks),
the packer, the loader and the model together. Training reads features through the
pack's tiers with :class:`~oocstore.loader.NodeLoader` inside the given budgets;
``in_memory`` instead holds every feature in RAM and runs the same plans (the parity
reference). Validation accuracy is measured after every epoch and test accuracy at the
end, through plans sampled on those splits (``val-eval``, ``test-eval``: created once,
sized to the run's budget, when the store has none); out of core, the validation loader
takes turns with the training loader in the one budget
(:meth:`~oocstore.loader.NodeLoader.eval_loader`). ``eval="full"`` (``--eval full``)
measures them exactly instead, over every node of the splits with full neighbourhoods
(:mod:`.full_eval`), and needs no evaluation plans. With early stopping or a model file
(:mod:`.selection`) the run's result is its best validation epoch: those weights are
tested and saved.

Data parallelism (``docs/DISTRIBUTED.md``): when ``torch.distributed`` is initialised
with ``W > 1`` processes (``torchrun``), every rank trains on its own shard of a plan
sampled with ``--world-size W`` through its own loader and budget, the model is wrapped
in DDP (gradients all-reduced every step; every rank has the same number of batches
per epoch, checked at each epoch), and evaluation counts are summed over the ranks'
evaluation shards. One process per machine (the lowest rank there) prepares missing
evaluation plans while the others wait, since a store has one writer at a time. Every
rank returns the same reduced summary; the CLI prints rank 0's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import random
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import distributed as dist
from ..budget import MemoryBudget
from ..errors import FormatError, OocError, UsageError
from ..loader import NodeLoader, latest_pack
from ..plan import PlanReader, list_plans
from ..store import Store
from .checkpoint import (CHECKPOINT_FILE, check_optimizer_state, check_rng_state,
                         load_checkpoint, rng_state, save_checkpoint, set_rng_state)
from .full_eval import EVAL_MODES, check_full_eval, full_counts
from .loop import InMemoryFeatures, RunOptions, ddp_model, evaluate_counts, train_epoch
from .models import (ModelSpec, build_from_spec, check_layers, check_model_args, check_model_fits,
                     check_resume_model)
from .progress import TrainProgress, _EpochCallback
from .selection import BestModel, check_model_path, save_model
from .prepare import WRITER_WAIT_S, WriteLog, apply_eval, check_loader_fits, plan_eval, writer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig(RunOptions):
    backend: str = "pyg"
    checkpoint: str | None = None
    resume: bool = False
    writer_wait: float = WRITER_WAIT_S  # s to wait for another writer (evaluation plans)
    allow_eval_split: bool = False  # train on a plan of val/test (refused otherwise)
    early_stop: int | None = None  # stop after this many epochs without a better val_acc
    save_model: str | None = None  # write the best validation epoch's state_dict here
    overwrite: bool = False  # save_model may replace an existing file
    model: str = "sage"  # sage, gcn or gat (oocstore.train.models)
    heads: int | None = None  # gat's attention heads (None: its default)
    layers: int | None = None  # must equal the plan's fanouts when given
    eval: str = "sampled"  # val/test accuracy: "sampled" (evaluation plans) or "full" graph

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"epochs={self.epochs}: give 1 or more")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"weight_decay={self.weight_decay}: give a finite value >= 0 "
                             "(0 turns it off)")
        if self.early_stop is not None and self.early_stop < 1:
            raise UsageError(f"early_stop={self.early_stop}: give the number of epochs "
                             "without a better validation accuracy to stop after (1 or more)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"lr={self.lr}: give a finite learning rate > 0")
        if self.backend not in ("pyg", "dgl"):
            raise UsageError(f"backend={self.backend!r}: use pyg or dgl")
        if self.resume and not self.checkpoint:
            raise UsageError("resume=True needs checkpoint=DIR (where the run saved its state)")
        check_model_args(self.model, self.hidden, self.heads, self.backend, self.dropout)
        if self.eval not in EVAL_MODES:
            raise UsageError(f"eval={self.eval!r}: use one of {', '.join(EVAL_MODES)}")
        if self.eval == "full" and self.backend != "pyg":
            raise UsageError(f"eval='full' runs the model's PyG layers over the whole graph; "
                             f"backend={self.backend!r} builds another model: use "
                             "backend='pyg' or eval='sampled'")

    @property
    def selects(self) -> bool:
        """Whether the run picks its result by validation accuracy (the best epoch's
        weights are reported, and saved)."""
        return self.early_stop is not None or self.save_model is not None


def train_plan(store: Store, name: str | None, rank: int = 0, world_size: int = 1, *,
               allow_eval_split: bool = False) -> str:
    """The training plan this rank reads: ``name`` (a plan or a shard group), or the
    newest training plan for this world size; for a group, the rank's shard. A plan of
    an evaluation split is refused unless ``allow_eval_split``
    (:func:`~oocstore.distributed.check_training_plan`)."""
    plans = list_plans(store)
    if name:
        if name not in plans and not dist.group_shards(store, name, plans):
            have = sorted({dist.group_of(m) for m in plans.values()})
            raise UsageError(f"store {store.path} has no plan {name!r} (it has: "
                             f"{', '.join(have) or 'none'}): sample it with "
                             f"`oocstore sample {store.path} --name {name} ...`")
    else:
        if not any(m.split == "train" for m in plans.values()):
            raise UsageError(f"store {store.path} has no training plan: create one with "
                             f"`oocstore sample {store.path} --fanouts 10,5 --batch-size 1024`")
        name = dist.default_plan(store, world_size, split="train")
    resolved = dist.resolve_plan(store, name, rank=rank, world_size=world_size)
    dist.check_training_plan(store, resolved, allow_eval_split=allow_eval_split)
    return resolved


def _status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int:
    """Current RSS; on Linux also resets the peak (VmHWM) so it measures training only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status("VmRSS:") or 0


def _peak_rss() -> int:
    return _status("VmHWM:") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_training(store_path: str | os.PathLike, plan: str | None, cfg: TrainConfig, *,
                 progress: TrainProgress | Callable[[int, int], Any] | None = None,
                 writes: WriteLog | None = None) -> dict[str, Any]:
    """Train and evaluate; returns the summary ``oocstore train --json`` prints.

    Everything that can refuse the run (plans, packs, budgets, the checkpoint to resume
    from, the model file) is checked before the first write. ``writes`` records what the
    run committed to the store (evaluation plans and packs) and wrote beside it
    (checkpoints, the model file), as soon as each is durable, for a caller that reports
    an interrupt or a failure. ``progress``: a :class:`TrainProgress`, or a callable
    ``(epoch, epochs)`` called after every epoch."""
    if progress is not None and not isinstance(progress, TrainProgress):
        progress = _EpochCallback(progress, cfg.epochs)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={cfg.device!r}: no CUDA device is available on this "
                         "machine; use device='cpu'")
    if cfg.backend == "dgl":
        from ..integrations.dgl import require_dgl

        require_dgl()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    budget = MemoryBudget(cpu=cfg.cpu_budget, gpu=cfg.gpu_budget)
    rank, world = dist.current_rank()
    writes = writes if writes is not None else WriteLog(str(store_path))
    # Refused before any write: a checkpoint that cannot be resumed from, a checkpoint
    # directory that cannot be written (rank 0 writes it).
    if cfg.resume:
        _on_every_rank(lambda: _check_resume(store_path, plan, cfg, rank, world))
    if cfg.checkpoint:
        _on_every_rank(lambda: rank == 0 and _check_checkpoint_dir(Path(cfg.checkpoint)))
    if cfg.save_model:
        _on_every_rank(lambda: rank == 0 and check_model_path(cfg.save_model, cfg.overwrite))
    if cfg.selects:
        _on_every_rank(lambda: _check_has_val(store_path, cfg))
    _prepare(store_path, plan, cfg, budget, device, rank, world, writes)
    store = Store(store_path)
    try:
        def resolve():
            name = train_plan(store, plan, rank, world, allow_eval_split=cfg.allow_eval_split)
            meta = list_plans(store)[name]
            if rank == 0 and dist.is_evaluation_split(meta.split):  # allowed: said once
                log.warning("training on plan %r of the %r split (allow_eval_split): accuracy "
                            "on that split is no longer a held-out estimate",
                            dist.group_of(meta), meta.split)
            pack = None if cfg.in_memory else latest_pack(store, name)
            # --eval full needs no evaluation plans: it runs over the splits' nodes
            evals = {s: None if cfg.eval == "full" else
                     dist.resolve_plan(store, f"{s}-eval", rank=rank, world_size=world)
                     for s in ("val", "test") if s in store.splits}
            return name, pack, evals

        name, pack, evals = _on_every_rank(resolve)
        # Peak RSS is measured from here: training and evaluation, not the one-off
        # preparation of evaluation plans above. The RSS already in use (interpreter,
        # libraries) is reported as rss_before_training_bytes.
        from ..tiers.assemble import warm_up

        warm_up(store.array_meta("features").np_dtype)
        if cfg.backend == "pyg":  # the layer library's import is not the loader's memory
            from ..integrations.pyg import require_pyg

            require_pyg().nn  # noqa: B018
        before = _reset_peak_rss()
        summary = _train(store, name, pack, evals, cfg, budget, device, progress, rank, world,
                         writes)
        summary["rss_before_training_bytes"] = before
        return summary
    finally:
        store.close()


def prepare_evaluation(store_path: str | os.PathLike, plan: str | None = None, *,
                       budget: MemoryBudget | None = None, device: str = "cpu", seed: int = 0,
                       writer_wait: float = WRITER_WAIT_S) -> WriteLog:
    """Create the evaluation plans and packs (``val-eval``, ``test-eval``) that the
    loader of training plan ``plan`` (default: the newest) evaluates with
    (:meth:`~oocstore.loader.NodeLoader.eval_loader`), sized to ``budget``, unless the
    store has them: what ``oocstore train`` does before it trains. The training pack is
    checked against the budget first; nothing is written if anything would be refused.
    Returns what was committed."""
    budget = budget or MemoryBudget()
    cfg = TrainConfig(epochs=1, device=device, cpu_budget=budget.cpu, gpu_budget=budget.gpu,
                      seed=seed, writer_wait=writer_wait)
    rank, world = dist.current_rank()
    writes = WriteLog(str(store_path))
    _prepare(store_path, plan, cfg, budget, torch.device(device), rank, world, writes)
    return writes


def _prepare(store_path, plan: str | None, cfg: TrainConfig, budget: MemoryBudget,
             device: torch.device, rank: int, world: int, writes: WriteLog) -> None:
    """Check that the run fits, then create missing evaluation plans and packs.

    Every rank checks its training pack against its budgets first (a refusal on any
    rank stops every rank, before anything is written). Then one process per machine
    (the store has one writer) looks at the evaluation plans on a read-only snapshot;
    if any must be written, it takes the writer lock (waiting for another writer, e.g.
    a second ``train`` preparing the same plans), checks everything again on the latest
    commit — sampling missing plans in memory and laying out their packs against the
    budgets — and only then commits them (:mod:`.prepare`). The other ranks wait."""
    def check() -> None:
        with Store(store_path) as store:
            name = train_plan(store, plan, rank, world, allow_eval_split=cfg.allow_eval_split)
            layers = PlanReader(store, name).num_layers
            check_layers(cfg.layers, layers, name)
            spec = _spec(store, layers, cfg)
            if cfg.eval == "full" and rank == 0:  # rank 0 runs the pass (_full_counts)
                check_full_eval(store, spec, cfg.cpu_budget)
            if not cfg.in_memory:
                check_loader_fits(store, latest_pack(store, name), budget, device.type)

    def prepare() -> None:
        if cfg.eval == "full":  # no evaluation plans to prepare
            return

        def look(store: Store, sample: bool):
            name = train_plan(store, plan, rank, world, allow_eval_split=cfg.allow_eval_split)
            pack = None if cfg.in_memory else latest_pack(store, name)
            return plan_eval(store, PlanReader(store, name).meta, pack, cfg.seed, budget,
                             device.type, world, sample=sample)

        with Store(store_path) as store:
            if not look(store, sample=False):
                return
        with writer(store_path, cfg.writer_wait) as store:
            work = look(store, sample=True)  # the latest commit, which nobody changes now
            apply_eval(store, work, writes)

    _on_every_rank(check)
    _on_every_rank(prepare if dist.node_ranks()[0] == rank else lambda: None)


def _check_has_val(store_path, cfg: TrainConfig) -> None:
    with Store(store_path) as store:
        if "val" not in store.splits:
            flag = "early_stop" if cfg.early_stop is not None else "save_model"
            raise UsageError(f"{flag}: store {store.path} has no 'val' split to choose the "
                             "best epoch by (it has: "
                             f"{', '.join(sorted(store.splits)) or 'none'}): re-ingest with "
                             "--split TR,VA,TE, or train without it")


def _check_checkpoint_dir(directory: Path) -> None:
    """Refuse a --checkpoint DIR that is not a directory or cannot be created or written."""
    if directory.exists():
        if not directory.is_dir():
            raise UsageError(f"checkpoint={str(directory)!r}: not a directory; give a directory to "
                             "save the run's state in")
        target = directory
    else:
        target = next((p for p in directory.parents if p.exists()), Path("."))
        if not target.is_dir():
            raise UsageError(f"checkpoint={str(directory)!r}: {target} is not a directory; give a "
                             "directory to save the run's state in")
    if not os.access(target, os.W_OK | os.X_OK):
        raise UsageError(f"checkpoint={str(directory)!r}: {target} is not writable; give a "
                         "directory this user can write")


def _checkpoint_path(cfg: TrainConfig) -> Path:
    path = Path(cfg.checkpoint) / CHECKPOINT_FILE
    if not path.exists():
        raise UsageError(f"resume=True: no checkpoint at {path}; run without resume=True first")
    return path


def _on_every_rank(fn: Callable[[], Any]) -> Any:
    """``fn()`` on this rank; if it raised a user error on any rank, raise on every rank
    (rather than leave the others waiting in a collective for a rank that quit)."""
    error: OocError | None = None
    result = None
    try:
        result = fn()
    except OocError as err:
        error = err
    failed = [(r, e) for r, e in enumerate(dist.all_gather_object(
        None if error is None else (type(error).__name__, str(error)))) if e is not None]
    if error is not None:
        raise error
    if failed:
        r, (kind, text) = failed[0]
        raise UsageError(f"rank {r} stopped ({kind}): {text}")
    return result


def _spec(store: Store, layers: int, cfg: TrainConfig) -> ModelSpec:
    """The model of this run, refused if it cannot be held in memory (:func:`check_model_fits`)."""
    spec = ModelSpec(cfg.model, store.feature_dim, cfg.hidden, store.num_classes, layers,
                     cfg.heads, cfg.dropout, cfg.backend)
    check_model_fits(spec)
    return spec


def _model(store: Store, reader: PlanReader, cfg: TrainConfig, device: torch.device):
    return build_from_spec(_spec(store, reader.num_layers, cfg)).to(device)


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _check_equal_batches(count: int, name: str, epoch: int) -> None:
    """DDP needs every rank to take the same number of steps."""
    hi, neg_lo = dist.all_reduce([count, -count], "max")
    if hi != -neg_lo:
        raise FormatError(f"plan {name!r}: epoch {epoch} has {count} batch(es) on this rank but "
                          f"{int(-neg_lo)}..{int(hi)} across ranks: the shards were not sampled "
                          "together; re-sample with `oocstore sample ... --world-size W "
                          "--overwrite` and pack again")


def _epoch_entry(epoch: int, r: dict[str, Any], wait_s: float) -> dict[str, Any]:
    """History entry of one epoch; time and seeds over all ranks (slowest rank, sum)."""
    time_s, seeds = dist.all_reduce([r["seconds"], r["seeds"]], "max")[0], \
        dist.all_reduce([r["seeds"]], "sum")[0]
    return {"epoch": epoch, "time_s": time_s, "wait_s": wait_s, "loss": r["loss"],
            "seeds": int(seeds), "samples_per_s": seeds / time_s if time_s > 0 else None}


def _resume(cfg: TrainConfig, model, optimizer, reader: PlanReader, device, rank: int,
            world: int, *, restore_rng: bool = True
            ) -> tuple[int, list, dict | None, BestModel]:
    """Load the checkpoint of ``cfg`` into ``model`` and ``optimizer`` and (with
    ``restore_rng``) restore the random states; returns (epochs done, history, this
    rank's loader state, the best epoch so far). Every way the checkpoint may not fit
    is a FormatError."""
    path = _checkpoint_path(cfg)
    state = load_checkpoint(path, map_location=device)
    if state["plan"] != dist.group_of(reader.meta):
        raise FormatError(f"checkpoint {path} is for plan {state['plan']!r}, not "
                          f"{dist.group_of(reader.meta)!r}: resume with the same --plan")
    if state.get("world_size", 1) != world:
        raise FormatError(f"checkpoint {path} was saved by {state.get('world_size', 1)} "
                          f"process(es), this run has {world}: resume with the same world size")
    check_resume_model(state, cfg, path)
    try:
        model.load_state_dict(state["model"])
        check_optimizer_state(state["optimizer"], optimizer, path)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
        text = str(err).strip().splitlines()
        raise FormatError(f"checkpoint {path} does not fit this model ({type(err).__name__}: "
                          f"{text[0][:200] if text else ''}): resume with the --hidden, "
                          "--backend and plan of the run that wrote it, or start a new run "
                          "without --resume") from err
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    decay = saved.get("weight_decay", 0.0)
    if decay != cfg.weight_decay:
        # the optimizer state would bring its own decay back and override the flag
        raise FormatError(f"checkpoint {path} was trained with --weight-decay {decay!r}, not "
                          f"{cfg.weight_decay}: resume with the same --weight-decay, or start "
                          "a new run without --resume")
    loader_state = _rank_entry(state.get("loader"), rank, world, path, "loader")
    rng = _rank_entry(state.get("rng"), rank, world, path, "rng")
    if rng is not None:
        (set_rng_state(rng, path, device) if restore_rng else check_rng_state(rng, path))
    elif restore_rng:
        log.warning("checkpoint %s holds no random states (written by an older version): "
                    "the resumed run does not repeat an uninterrupted one exactly", path)
    best = BestModel.from_checkpoint(state.get("best"), cfg.early_stop, path, state["epoch"])
    if "best" not in state and state["epoch"] > 0 and cfg.selects and not restore_rng:
        log.warning("checkpoint %s was written by an older version and holds no best epoch: "
                    "the best epoch is chosen among the epochs from now on (or is the last "
                    "one)", path)
    if best.state is not None:
        mine = model.state_dict()
        if set(best.state) != set(mine) or any(best.state[k].shape != mine[k].shape
                                               for k in mine):
            raise FormatError(f"checkpoint {path}: the best epoch's weights do not fit this "
                              "model: it is damaged or was not written by this run; start a "
                              "new run without --resume")
    return state["epoch"], state["history"], loader_state, best


def _check_resume(store_path, plan: str | None, cfg: TrainConfig, rank: int, world: int) -> None:
    """Refuse, before anything is written, a checkpoint this run cannot resume from: it
    is loaded into a model built like the run's (random states left untouched)."""
    with Store(store_path) as store, torch.random.fork_rng(devices=[]):
        reader = PlanReader(store, train_plan(store, plan, rank, world,
                                              allow_eval_split=cfg.allow_eval_split))
        model = _model(store, reader, cfg, torch.device("cpu"))
        optimizer = _optimizer(model, cfg)
        state = np.random.get_state(), random.getstate()
        try:
            _resume(cfg, model, optimizer, reader, "cpu", rank, world, restore_rng=False)
        finally:
            np.random.set_state(state[0])
            random.setstate(state[1])


def _rank_entry(value: Any, rank: int, world: int, path: Path, key: str) -> Any:
    """This rank's part of checkpoint entry ``key`` (one per rank, in rank order, under
    DDP), checked to be a dict (or absent)."""
    if value is not None and world > 1:
        if not isinstance(value, list) or len(value) != world:
            raise FormatError(f"checkpoint {path}: entry {key!r} does not hold one state per "
                              f"rank ({world}): start a new run without --resume")
        value = value[rank]
    if value is not None and not isinstance(value, dict):
        raise FormatError(f"checkpoint {path}: entry {key!r} is a {type(value).__name__}, not "
                          "a dict: start a new run without --resume")
    if key == "loader" and value is not None and not all(
            isinstance(value.get(k), int) and value[k] >= 0 for k in ("epoch", "next_batch")):
        raise FormatError(f"checkpoint {path}: the loader state lacks a valid epoch and next "
                          "batch: start a new run without --resume")
    return value


def _start(store: Store, reader: PlanReader, cfg: TrainConfig, device, rank: int, world: int):
    """The run's model and optimizer and where it starts: (model, optimizer, first epoch,
    history, loader state, best epoch so far), from the checkpoint of ``cfg`` when it
    resumes."""
    model = _model(store, reader, cfg, device)
    optimizer = _optimizer(model, cfg)
    if cfg.resume:
        return (model, optimizer) + _resume(cfg, model, optimizer, reader, device, rank, world)
    return model, optimizer, 0, [], None, BestModel(patience=cfg.early_stop)


def _train(store, name, pack, evals, cfg: TrainConfig, budget, device,
           progress: TrainProgress | None, rank: int = 0, world: int = 1,
           writes: WriteLog | None = None) -> dict[str, Any]:
    reader = PlanReader(store, name)
    model, optimizer, start_epoch, history, loader_state, best = _start(store, reader, cfg,
                                                                        device, rank, world)
    ckdir = Path(cfg.checkpoint) if cfg.checkpoint else None
    # DDP broadcasts rank 0's parameters once and all-reduces gradients every step;
    # ``model`` stays the plain module (evaluation and checkpoints).
    step_model = ddp_model(model) if world > 1 else model
    mem = InMemoryFeatures(store) if cfg.in_memory else None
    on_batch = progress.batch if progress is not None else None
    stats: dict[str, Any] = {}
    val_plan = evals.get("val")
    sources: dict[str, Any] = {}

    def validate(epoch: int, entry: dict[str, Any], source) -> None:
        """Validation accuracy of this epoch's model (summed over the ranks)."""
        if "val" not in evals:
            return
        t0 = time.perf_counter()
        if cfg.eval == "full":
            if "lend" in sources:
                sources["lend"]()  # the training loader's budget is the pass's now
            correct, seen = _full_counts(store, model, ["val"], cfg, rank)["val"]
        else:
            correct, seen = dist.all_reduce(evaluate_counts(model, source(), device), "sum")
        if seen == 0:
            what = "split 'val'" if cfg.eval == "full" else f"evaluation plan {val_plan!r}"
            raise UsageError(f"{what} has no nodes: re-sample it (or re-ingest with --split)")
        entry["val_acc"] = correct / seen
        entry["val_eval"] = cfg.eval
        entry["val_s"] = dist.all_reduce([time.perf_counter() - t0], "max")[0]
        best.update(epoch, entry["val_acc"], model)

    def run_epochs(epochs, batches, loader=None) -> None:
        for epoch in epochs:
            if best.stopped:
                break
            count, source = batches(epoch)
            _check_equal_batches(count, name, epoch)
            if progress is not None:
                done = loader.state_dict()["next_batch"] if loader is not None else 0
                progress.epoch_start(epoch, cfg.epochs, count, done)
            r = train_epoch(step_model, optimizer, source, device, on_batch=on_batch)
            wait = loader.stats()["epochs"][-1]["wait_s"] if loader is not None else \
                r["data_seconds"]
            entry = _epoch_entry(epoch, r, wait)
            loader_state = loader.state_dict() if loader is not None else None
            validate(epoch, entry, val_source)
            history.append(entry)
            _after_epoch(ckdir, model, optimizer, reader.meta, epoch, history, loader_state,
                         progress, cfg, rank, world, writes, device, best)

    if cfg.in_memory:
        val_reader = PlanReader(store, val_plan) if val_plan else None

        def val_source():
            return mem.batches(val_reader, 0)

        def batches(epoch):
            pe = epoch % reader.num_epochs
            return reader.num_batches(pe), mem.batches(reader, pe)

        run_epochs(range(start_epoch, cfg.epochs), batches)
    else:
        def val_source():
            return sources["val"]()

        stats = _train_out_of_core(store, name, pack, device, budget, rank, world, loader_state,
                                   val_plan, sources, lambda batches, loader: run_epochs(
                                       range(start_epoch, cfg.epochs), batches, loader))
    accs = _final_accuracies(store, model, evals, cfg, best, history, mem, device, budget,
                             rank, world)
    model_file = _save_best(cfg, best, rank, writes, model.spec.to_dict())
    return _summary(store, reader, pack, cfg, device, budget, rank, world, stats, accs, history,
                    best, model_file, name)


def _train_out_of_core(store, name, pack, device, budget, rank, world, loader_state, val_plan,
                       sources: dict[str, Any], run) -> dict[str, Any]:
    """Train through a :class:`NodeLoader` (``run(batches, loader)`` runs the epochs), with
    validation batches from an evaluation loader in the same budget
    (``sources["val"]``); the loader's stats."""
    # A budget one rank's shard does not fit stops every rank.
    with _on_every_rank(lambda: NodeLoader(store, name, pack=pack, device=device,
                                           budget=budget, rank=rank,
                                           world_size=world)) as loader:
        if loader_state is not None:
            loader.load_state_dict(loader_state)
        resumed_at = loader_state["epoch"] if loader_state is not None else None
        evaluation: list[NodeLoader] = []

        def val_source():
            # Opened on first use, in the training loader's budget: beside it where
            # that leaves room, else the two take turns (NodeLoader.eval_loader).
            if not evaluation:
                evaluation.append(_on_every_rank(lambda: loader.eval_loader(plan=val_plan)))
            return evaluation[0]

        def batches(epoch):
            if epoch != resumed_at:
                loader.set_epoch(epoch)
            loader.take_turn()  # re-opened here if validation borrowed its budget
            return len(loader), ((b.sample, b.x, b.y) for b in loader)

        sources["val"] = val_source
        # --eval full: the training loader releases its buffers and charges for the
        # layer-wise pass (as it does for an evaluation loader, NodeLoader.eval_loader)
        # and re-opens them on its next epoch (take_turn)
        sources["lend"] = loader.lend_budget
        try:
            run(batches, loader)
        finally:
            for ev in evaluation:
                ev.close()
            evaluation.clear()
            sources.clear()
        # its tiers are freed by close(); the last references go when this returns
        return loader.stats()


def _final_accuracies(store, model, evals, cfg: TrainConfig, best: BestModel, history, mem,
                      device, budget, rank: int, world: int) -> dict[str, float]:
    """The reported accuracies: validation of the selected (best) epoch or of the last,
    and every other evaluation split measured now, one evaluation loader at a time."""
    accs = {}
    if cfg.selects and best.state is not None:
        model.load_state_dict(best.state)  # report (and save) the best validation epoch
        accs["val"] = best.val_acc
    elif history and "val_acc" in history[-1]:
        accs["val"] = history[-1]["val_acc"]  # the model as it is now: measured already
    if cfg.selects and best.state is None and history:
        # resumed from a checkpoint without a best epoch and nothing left to train: the
        # model as it is stands for it
        best.epoch = len(history) - 1
        best.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if cfg.eval == "full":
        left = [s for s in evals if s not in accs]
        for split, (correct, seen) in _full_counts(store, model, left, cfg, rank).items():
            if seen == 0:
                raise UsageError(f"split {split!r} has no nodes: re-ingest with --split")
            accs[split] = correct / seen
        return accs
    for split, plan_name in evals.items():
        if split in accs:
            continue
        er = PlanReader(store, plan_name)
        if cfg.in_memory:
            counts = evaluate_counts(model, mem.batches(er, 0), device)
        else:
            with NodeLoader(store, plan_name, device=device, budget=budget, rank=rank,
                            world_size=world) as ev:
                counts = evaluate_counts(model, ((b.sample, b.x, b.y) for b in ev), device)
            del ev  # one evaluation loader's buffers at a time
        correct, seen = dist.all_reduce(counts, "sum")
        if seen == 0:
            raise UsageError(f"evaluation plan {plan_name!r} has no seeds: re-sample it")
        accs[split] = correct / seen
    return accs


def _full_counts(store, model, splits: list[str], cfg: TrainConfig, rank: int
                 ) -> dict[str, tuple[int, int]]:
    """``--eval full``: ``{split: (correct, nodes)}`` over every node of ``splits``. Rank 0
    runs the layer-wise pass (every rank holds the same weights under DDP) in its CPU
    budget while the other ranks wait; a failure there stops every rank."""
    counts = _on_every_rank(lambda: full_counts(store, model, splits, cpu_budget=cfg.cpu_budget)
                            if rank == 0 else {s: (0, 0) for s in splits})
    return {s: tuple(dist.all_reduce(list(counts[s]), "sum")) for s in splits}


def _save_best(cfg: TrainConfig, best: BestModel, rank: int, writes: WriteLog | None,
               spec: dict[str, Any]):
    """Save the selected model (``spec``: what it is, so it can be rebuilt) where
    ``--save-model`` says (rank 0); its path or None."""
    model_file = cfg.save_model if cfg.save_model and best.state is not None else None
    if model_file is not None:
        if rank == 0:
            save_model(Path(model_file), best.state, spec)
            if writes is not None:
                writes.wrote_file(model_file, f"the model of epoch {best.epoch}")
        dist.barrier()
    return model_file


def _summary(store, reader, pack, cfg: TrainConfig, device, budget, rank: int, world: int,
             stats: dict[str, Any], accs: dict[str, float], history, best: BestModel,
             model_file, name) -> dict[str, Any]:
    """The run's summary (``train --json``), gathered over the ranks."""
    peak = _peak_rss()
    mine = {"rank": rank, "plan": name, "pack": pack, "bytes_read": stats.get("bytes_read", 0),
            "useful_bytes": stats.get("useful_bytes", 0), "hit_rate": stats.get("hit_rate", {}),
            "wait_s": stats.get("wait_s"), "peak_rss_bytes": peak}
    ranks = dist.all_gather_object(mine)
    read = sum(r["bytes_read"] for r in ranks)
    useful = sum(r["useful_bytes"] for r in ranks)
    summary = {
        "plan": dist.group_of(reader.meta), "pack": pack, "in_memory": cfg.in_memory,
        "backend": cfg.backend, "device": str(device), "seed": cfg.seed, "world_size": world,
        "model": cfg.model, "eval": cfg.eval,
        "val_acc": accs.get("val"), "test_acc": accs.get("test"),
        "epochs": history,
        "best_epoch": best.epoch if best.epoch >= 0 else None,
        "early_stopped": best.stopped, "model_file": model_file,
        "bytes_read": read, "useful_bytes": useful,
        "read_amplification": stats.get("read_amplification") if world == 1 else
        (read / useful if useful else None),
        "hit_rate": stats.get("hit_rate", {}), "prefetch": stats.get("prefetch"),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ranks),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "budget": budget.to_dict(),
    }
    if world > 1:
        summary["ranks"] = ranks  # per rank: its shard, pack, reads, hit rates, peak RSS
    return summary


def _after_epoch(ckdir, model, optimizer, meta, epoch, history, loader_state,
                 progress: TrainProgress | None, cfg, rank: int = 0, world: int = 1,
                 writes: WriteLog | None = None, device: torch.device | str = "cpu",
                 best: BestModel | None = None):
    if ckdir is not None:
        rng = rng_state(device)  # after the epoch: what the next epoch draws from
        if world > 1:
            loader_state = dist.all_gather_object(loader_state)  # one per rank, rank order
            rng = dist.all_gather_object(rng)
        if rank == 0:
            path = save_checkpoint(ckdir, {
                "plan": dist.group_of(meta), "epoch": epoch + 1, "history": history,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "loader": loader_state, "world_size": world, "config": dict(cfg.__dict__),
                "rng": rng, "best": best.to_checkpoint() if best is not None else None,
                "model_spec": model.spec.to_dict()})
            if writes is not None:
                writes.wrote_file(path, f"a checkpoint after epoch {epoch + 1}")
        dist.barrier()  # no rank runs ahead of a checkpoint that is not yet on disk
    if progress is not None:
        progress.epoch_end(history[-1])


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, sort_keys=True, default=float)
