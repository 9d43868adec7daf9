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
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import distributed as dist
from ..budget import MemoryBudget
from ..errors import FormatError, OocError, UsageError
from ..loader import NodeLoader, latest_pack
from ..plan import PlanReader, list_plans, shard_name
from ..store import Store
from ..tiers.reader import list_packs
from .loop import InMemoryFeatures, ddp_model, evaluate_counts, train_epoch
from .model import GraphSAGE

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


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

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"--epochs {self.epochs}: give 1 or more")
        if self.backend not in ("pyg", "dgl"):
            raise UsageError(f"--backend {self.backend!r}: use pyg or dgl")
        if self.resume and not self.checkpoint:
            raise UsageError("--resume needs --checkpoint DIR (where the run saved its state)")


def train_plan(store: Store, name: str | None, rank: int = 0, world_size: int = 1) -> str:
    """The training plan this rank reads: ``name`` (a plan or a shard group), or the
    newest training plan for this world size; for a group, the rank's shard."""
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
    return dist.resolve_plan(store, name, rank=rank, world_size=world_size)


def _ensure_eval_plan(store: Store, split: str, like: PlanReader, packed_like: str | None,
                      seed: int, cpu_budget: int | None, world_size: int = 1) -> str:
    """A one-epoch plan (and pack) on ``split`` with the training plan's fanouts and batch
    size, sharded like it; its CPU cache is the training pack's, shrunk to fit
    ``cpu_budget``. Returns the plan's (or shard group's) name."""
    from samplers.neighbor import sample_plan  # composition root: may use samplers

    from ..pack import PackOptions, pack_plan
    from ..pack.packer import plan_layout, plan_version
    name = f"{split}-eval"
    plans = list_plans(store)
    if world_size == 1:
        members = [name]
        meta = plans.get(name)
    else:
        members = [shard_name(name, r) for r in range(world_size)]
        shards = dist.group_shards(store, name, plans)
        meta = shards.get(0) if len(shards) == world_size else None
    if meta is None or meta.fanouts != like.meta.fanouts or meta.batch_size != like.meta.batch_size:
        log.info("sampling evaluation plan %r", name)
        sample_plan(store, fanouts=list(like.meta.fanouts), batch_size=like.meta.batch_size,
                    epochs=1, seed=seed, name=name, split=split, world_size=world_size,
                    overwrite=any(m in plans for m in members))
    for member in members:
        version = plan_version(store, PlanReader(store, member))
        current = [p for p in list_packs(store).values()
                   if p.plan == member and p.plan_version == version]
        if packed_like is None or current:
            continue
        ref = list_packs(store)[packed_like]
        opts = PackOptions(cpu_cache=ref.cpu_rows * ref.row_bytes,
                           max_disk_blowup=max(ref.max_disk_blowup, 1.0))
        if cpu_budget is not None:
            floor = plan_layout(store, PlanReader(store, member),
                                PackOptions(max_disk_blowup=opts.max_disk_blowup)).min_working_set
            opts = PackOptions(cpu_cache=max(0, min(opts.cpu_cache, cpu_budget - floor["cpu"])),
                               max_disk_blowup=opts.max_disk_blowup, cpu_budget=cpu_budget)
        # The eval pack is named after its plan, so a re-sampled plan replaces it.
        pack_plan(store, member, options=opts, overwrite=True)
    return name


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


def _save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, directory / CHECKPOINT_FILE)


def run_training(store_path: str | os.PathLike, plan: str | None, cfg: TrainConfig, *,
                 progress: Callable[[int, int], Any] | None = None) -> dict[str, Any]:
    """Train and evaluate; returns the summary ``oocstore train --json`` prints."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available on this machine; use "
                         "--device cpu")
    if cfg.backend == "dgl":
        from ..integrations.dgl import require_dgl

        require_dgl()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    budget = MemoryBudget(cpu=cfg.cpu_budget, gpu=cfg.gpu_budget)
    rank, world = dist.current_rank()
    _prepare(store_path, plan, cfg, rank, world)
    store = Store(store_path)
    try:
        def resolve():
            name = train_plan(store, plan, rank, world)
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
        summary = _train(store, name, pack, evals, cfg, budget, device, progress, rank, world)
        summary["rss_before_training_bytes"] = before
        return summary
    finally:
        store.close()


def _prepare(store_path, plan: str | None, cfg: TrainConfig, rank: int, world: int) -> None:
    """Check the training plan and create missing evaluation plans and packs: on one
    process per machine (the store has one writer), the other ranks waiting. A failure
    on the preparing process is raised on every rank."""
    def prepare() -> None:
        with Store(store_path, readonly=False) as store:
            name = train_plan(store, plan, rank, world)
            reader = PlanReader(store, name)
            pack = None if cfg.in_memory else latest_pack(store, name)
            for s in ("val", "test"):
                if s in store.splits:
                    _ensure_eval_plan(store, s, reader, pack, cfg.seed, cfg.cpu_budget, world)

    _on_every_rank(prepare if dist.node_ranks()[0] == rank else lambda: None)


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


def _train(store, name, pack, evals, cfg: TrainConfig, budget, device, progress,
           rank: int = 0, world: int = 1) -> dict[str, Any]:
    reader = PlanReader(store, name)
    model = _model(store, reader, cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ckdir = Path(cfg.checkpoint) if cfg.checkpoint else None
    start_epoch, history, loader_state = 0, [], None
    if cfg.resume:
        path = ckdir / CHECKPOINT_FILE
        if not path.exists():
            raise UsageError(f"--resume: no checkpoint at {path}; run without --resume first")
        state = torch.load(path, map_location=device, weights_only=False)
        if state.get("plan") != dist.group_of(reader.meta):
            raise FormatError(f"checkpoint {path} is for plan {state.get('plan')!r}, not "
                              f"{dist.group_of(reader.meta)!r}")
        if state.get("world_size", 1) != world:
            raise FormatError(f"checkpoint {path} was saved by {state.get('world_size', 1)} "
                              f"process(es), this run has {world}: resume with the same world "
                              "size")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], state["history"]
        loader_state = state.get("loader")
        if world > 1 and loader_state is not None:
            loader_state = loader_state[rank]
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
                         rank, world)
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
                             loader.state_dict(), progress, cfg, rank, world)
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
                 rank: int = 0, world: int = 1):
    if ckdir is not None:
        if world > 1:
            loader_state = dist.all_gather_object(loader_state)  # one per rank, rank order
        if rank == 0:
            _save_checkpoint(ckdir, {"plan": dist.group_of(meta), "epoch": epoch + 1,
                                     "history": history, "model": model.state_dict(),
                                     "optimizer": optimizer.state_dict(), "loader": loader_state,
                                     "world_size": world, "config": cfg.__dict__})
        dist.barrier()  # no rank runs ahead of a checkpoint that is not yet on disk
    if progress is not None:
        progress(epoch, cfg.epochs)


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, sort_keys=True, default=float)
