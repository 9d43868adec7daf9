"""``oocstore train``: GraphSAGE node classification over a store, out of core.

Composition root: puts the store, the samplers (for evaluation plans the store lacks),
the packer, the loader and the model together. Training reads features through the
pack's tiers with :class:`~oocstore.loader.NodeLoader` inside the given budgets;
``in_memory`` instead holds every feature in RAM and runs the same plans (the parity
reference). Validation and test accuracy are measured after the last epoch through
plans sampled on those splits (created once, with the training plan's fanouts, and
packed with the same CPU cache size, when the store has none).

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
import os
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
from .loop import InMemoryFeatures, ddp_model, evaluate_counts, train_epoch
from .model import GraphSAGE
from .prepare import WRITER_WAIT_S, WriteLog, apply_eval, check_loader_fits, plan_eval, writer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    hidden: int = 256
    lr: float = 0.003
    dropout: float = 0.5
    device: str = "cpu"
    cpu_budget: int | None = None
    gpu_budget: int | None = None
    in_memory: bool = False
    backend: str = "pyg"
    seed: int = 0
    checkpoint: str | None = None
    resume: bool = False
    writer_wait: float = WRITER_WAIT_S  # s to wait for another writer (evaluation plans)
    allow_eval_split: bool = False  # train on a plan of val/test (refused otherwise)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"--epochs {self.epochs}: give 1 or more")
        if self.backend not in ("pyg", "dgl"):
            raise UsageError(f"--backend {self.backend!r}: use pyg or dgl")
        if self.resume and not self.checkpoint:
            raise UsageError("--resume needs --checkpoint DIR (where the run saved its state)")


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
                 progress: Callable[[int, int], Any] | None = None,
                 writes: WriteLog | None = None) -> dict[str, Any]:
    """Train and evaluate; returns the summary ``oocstore train --json`` prints.

    Everything that can refuse the run (plans, packs, budgets, the checkpoint to resume
    from) is checked before the first write. ``writes`` records what the run committed
    to the store (evaluation plans and packs) and wrote beside it (checkpoints), as soon
    as each is durable, for a caller that reports an interrupt or a failure."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available on this machine; use "
                         "--device cpu")
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
            evals = {s: dist.resolve_plan(store, f"{s}-eval", rank=rank, world_size=world)
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
            if not cfg.in_memory:
                check_loader_fits(store, latest_pack(store, name), budget, device.type)

    def prepare() -> None:
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


def _check_checkpoint_dir(directory: Path) -> None:
    """Refuse a --checkpoint DIR that is not a directory or cannot be created or written."""
    if directory.exists():
        if not directory.is_dir():
            raise UsageError(f"--checkpoint {directory}: not a directory; give a directory to "
                             "save the run's state in")
        target = directory
    else:
        target = next((p for p in directory.parents if p.exists()), Path("."))
        if not target.is_dir():
            raise UsageError(f"--checkpoint {directory}: {target} is not a directory; give a "
                             "directory to save the run's state in")
    if not os.access(target, os.W_OK | os.X_OK):
        raise UsageError(f"--checkpoint {directory}: {target} is not writable; give a "
                         "directory this user can write")


def _checkpoint_path(cfg: TrainConfig) -> Path:
    path = Path(cfg.checkpoint) / CHECKPOINT_FILE
    if not path.exists():
        raise UsageError(f"--resume: no checkpoint at {path}; run without --resume first")
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


def _model(store: Store, reader: PlanReader, cfg: TrainConfig, device: torch.device):
    fmeta = store.array_meta("features")
    labels = store.array("labels")
    classes = int(labels.max()) + 1 if labels.size else 1
    if cfg.backend == "dgl":
        from .dgl_model import DGLGraphSAGE

        model = DGLGraphSAGE(fmeta.shape[1], cfg.hidden, classes, reader.num_layers, cfg.dropout)
    else:
        model = GraphSAGE(fmeta.shape[1], cfg.hidden, classes, reader.num_layers,
                          dropout=cfg.dropout)
    return model.to(device)


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
            world: int, *, restore_rng: bool = True) -> tuple[int, list, dict | None]:
    """Load the checkpoint of ``cfg`` into ``model`` and ``optimizer`` and (with
    ``restore_rng``) restore the random states; returns (epochs done, history, this
    rank's loader state). Every way the checkpoint may not fit is a FormatError."""
    path = _checkpoint_path(cfg)
    state = load_checkpoint(path, map_location=device)
    if state["plan"] != dist.group_of(reader.meta):
        raise FormatError(f"checkpoint {path} is for plan {state['plan']!r}, not "
                          f"{dist.group_of(reader.meta)!r}: resume with the same --plan")
    if state.get("world_size", 1) != world:
        raise FormatError(f"checkpoint {path} was saved by {state.get('world_size', 1)} "
                          f"process(es), this run has {world}: resume with the same world size")
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
    loader_state = _rank_entry(state.get("loader"), rank, world, path, "loader")
    rng = _rank_entry(state.get("rng"), rank, world, path, "rng")
    if rng is not None:
        (set_rng_state(rng, path, device) if restore_rng else check_rng_state(rng, path))
    elif restore_rng:
        log.warning("checkpoint %s holds no random states (written by an older version): "
                    "the resumed run does not repeat an uninterrupted one exactly", path)
    return state["epoch"], state["history"], loader_state


def _check_resume(store_path, plan: str | None, cfg: TrainConfig, rank: int, world: int) -> None:
    """Refuse, before anything is written, a checkpoint this run cannot resume from: it
    is loaded into a model built like the run's (random states left untouched)."""
    with Store(store_path) as store, torch.random.fork_rng(devices=[]):
        reader = PlanReader(store, train_plan(store, plan, rank, world,
                                              allow_eval_split=cfg.allow_eval_split))
        model = _model(store, reader, cfg, torch.device("cpu"))
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
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


def _train(store, name, pack, evals, cfg: TrainConfig, budget, device, progress,
           rank: int = 0, world: int = 1, writes: WriteLog | None = None) -> dict[str, Any]:
    reader = PlanReader(store, name)
    model = _model(store, reader, cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ckdir = Path(cfg.checkpoint) if cfg.checkpoint else None
    start_epoch, history, loader_state = 0, [], None
    if cfg.resume:
        start_epoch, history, loader_state = _resume(cfg, model, optimizer, reader, device,
                                                     rank, world)
    # DDP broadcasts rank 0's parameters once and all-reduces gradients every step;
    # ``model`` stays the plain module (evaluation and checkpoints).
    step_model = ddp_model(model) if world > 1 else model
    mem = InMemoryFeatures(store) if cfg.in_memory else None
    stats: dict[str, Any] = {}
    if cfg.in_memory:
        for epoch in range(start_epoch, cfg.epochs):
            pe = epoch % reader.num_epochs
            _check_equal_batches(reader.num_batches(pe), name, epoch)
            r = train_epoch(step_model, optimizer, mem.batches(reader, pe), device)
            history.append(_epoch_entry(epoch, r, r["data_seconds"]))
            _after_epoch(ckdir, model, optimizer, reader.meta, epoch, history, None, progress, cfg,
                         rank, world, writes, device)
    else:
        # A budget one rank's shard does not fit stops every rank.
        with _on_every_rank(lambda: NodeLoader(store, name, pack=pack, device=device,
                                               budget=budget, rank=rank,
                                               world_size=world)) as loader:
            if loader_state is not None:
                loader.load_state_dict(loader_state)
            for epoch in range(start_epoch, cfg.epochs):
                if loader_state is None or epoch != loader_state["epoch"]:
                    loader.set_epoch(epoch)
                loader_state = None
                _check_equal_batches(len(loader), name, epoch)
                r = train_epoch(step_model, optimizer, ((b.sample, b.x, b.y) for b in loader),
                                device)
                es = loader.stats()["epochs"][-1]
                history.append(_epoch_entry(epoch, r, es["wait_s"]))
                _after_epoch(ckdir, model, optimizer, reader.meta, epoch, history,
                             loader.state_dict(), progress, cfg, rank, world, writes, device)
            stats = loader.stats()
        del loader  # its tiers are freed by close(); drop the last reference too
    accs = {}
    for split, plan_name in evals.items():
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
        "val_acc": accs.get("val"), "test_acc": accs.get("test"),
        "epochs": history,
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


def _after_epoch(ckdir, model, optimizer, meta, epoch, history, loader_state, progress, cfg,
                 rank: int = 0, world: int = 1, writes: WriteLog | None = None,
                 device: torch.device | str = "cpu"):
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
                "rng": rng})
            if writes is not None:
                writes.wrote_file(path, f"a checkpoint after epoch {epoch + 1}")
        dist.barrier()  # no rank runs ahead of a checkpoint that is not yet on disk
    if progress is not None:
        progress(epoch, cfg.epochs)


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, sort_keys=True, default=float)
