"""``oocstore train``: GraphSAGE node classification over a store, out of core.

Composition root: puts the store, the samplers (for evaluation plans the store lacks),
the packer, the loader and the model together. Training reads features through the
pack's tiers with :class:`~oocstore.loader.NodeLoader` inside the given budgets;
``in_memory`` instead holds every feature in RAM and runs the same plans (the parity
reference). Validation and test accuracy are measured after the last epoch through
plans sampled on those splits (created once, with the training plan's fanouts, and
packed with the same CPU cache size, when the store has none).
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

from ..budget import MemoryBudget
from ..errors import FormatError, UsageError
from ..loader import NodeLoader, latest_pack
from ..plan import PlanReader, list_plans
from ..store import Store
from ..tiers.reader import list_packs
from .loop import InMemoryFeatures, evaluate, train_epoch
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


def train_plan(store: Store, name: str | None) -> str:
    plans = list_plans(store)
    if name:
        if name not in plans:
            raise UsageError(f"store {store.path} has no plan {name!r} (it has: "
                             f"{', '.join(sorted(plans)) or 'none'}): sample it with "
                             f"`oocstore sample {store.path} --name {name} ...`")
        return name
    train = [n for n, m in plans.items() if m.split == "train"]
    if not train:
        raise UsageError(f"store {store.path} has no training plan: create one with "
                         f"`oocstore sample {store.path} --fanouts 10,5 --batch-size 1024`")
    return max(train, key=lambda n: (store.array_meta(plans[n].arrays["index"]).version, n))


def _ensure_eval_plan(store: Store, split: str, like: PlanReader, packed_like: str | None,
                      seed: int, cpu_budget: int | None) -> str:
    """A one-epoch plan (and pack) on ``split`` with the training plan's fanouts and batch
    size; its CPU cache is the training pack's, shrunk to fit ``cpu_budget``."""
    from samplers.neighbor import sample_plan  # composition root: may use samplers

    from ..pack import PackOptions, pack_plan
    from ..pack.packer import plan_layout
    name = f"{split}-eval"
    meta = list_plans(store).get(name)
    if meta is None or meta.fanouts != like.meta.fanouts or meta.batch_size != like.meta.batch_size:
        log.info("sampling evaluation plan %r", name)
        sample_plan(store, fanouts=list(like.meta.fanouts), batch_size=like.meta.batch_size,
                    epochs=1, seed=seed, name=name, split=split, overwrite=meta is not None)
    from ..pack.packer import plan_version

    version = plan_version(store, PlanReader(store, name))
    current = [p for p in list_packs(store).values()
               if p.plan == name and p.plan_version == version]
    if packed_like is not None and not current:
        ref = list_packs(store)[packed_like]
        opts = PackOptions(cpu_cache=ref.cpu_rows * ref.row_bytes,
                           max_disk_blowup=max(ref.max_disk_blowup, 1.0))
        if cpu_budget is not None:
            floor = plan_layout(store, PlanReader(store, name),
                                PackOptions(max_disk_blowup=opts.max_disk_blowup)).min_working_set
            opts = PackOptions(cpu_cache=max(0, min(opts.cpu_cache, cpu_budget - floor["cpu"])),
                               max_disk_blowup=opts.max_disk_blowup, cpu_budget=cpu_budget)
        # The eval pack is named after its plan, so a re-sampled plan replaces it.
        pack_plan(store, name, options=opts, overwrite=True)
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
    with Store(store_path, readonly=False) as store:
        name = train_plan(store, plan)
        reader = PlanReader(store, name)
        pack = None if cfg.in_memory else latest_pack(store, name)
        evals = {s: _ensure_eval_plan(store, s, reader, pack, cfg.seed, cfg.cpu_budget)
                 for s in ("val", "test") if s in store.splits}
    store = Store(store_path)
    try:
        # Peak RSS is measured from here: training and evaluation, not the one-off
        # preparation of evaluation plans above. The RSS already in use (interpreter,
        # libraries) is reported as rss_before_training_bytes.
        from ..tiers.assemble import warm_up

        warm_up(store.array_meta("features").np_dtype)
        if cfg.backend == "pyg":  # the layer library's import is not the loader's memory
            from ..integrations.pyg import require_pyg

            require_pyg().nn  # noqa: B018
        before = _reset_peak_rss()
        summary = _train(store, name, pack, evals, cfg, budget, device, progress)
        summary["rss_before_training_bytes"] = before
        return summary
    finally:
        store.close()


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


def _train(store, name, pack, evals, cfg: TrainConfig, budget, device, progress) -> dict[str, Any]:
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
        if state.get("plan") != name:
            raise FormatError(f"checkpoint {path} is for plan {state.get('plan')!r}, not {name!r}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], state["history"]
        loader_state = state.get("loader")
    mem = InMemoryFeatures(store) if cfg.in_memory else None
    stats: dict[str, Any] = {}
    if cfg.in_memory:
        for epoch in range(start_epoch, cfg.epochs):
            pe = epoch % reader.num_epochs
            r = train_epoch(model, optimizer, mem.batches(reader, pe), device)
            history.append({"epoch": epoch, "time_s": r["seconds"], "wait_s": r["data_seconds"],
                            "loss": r["loss"]})
            _after_epoch(ckdir, model, optimizer, name, epoch, history, None, progress, cfg)
    else:
        with NodeLoader(store, name, pack=pack, device=device, budget=budget) as loader:
            if loader_state is not None:
                loader.load_state_dict(loader_state)
            for epoch in range(start_epoch, cfg.epochs):
                if loader_state is None or epoch != loader_state["epoch"]:
                    loader.set_epoch(epoch)
                loader_state = None
                r = train_epoch(model, optimizer, ((b.sample, b.x, b.y) for b in loader), device)
                es = loader.stats()["epochs"][-1]
                history.append({"epoch": epoch, "time_s": r["seconds"], "wait_s": es["wait_s"],
                                "loss": r["loss"]})
                _after_epoch(ckdir, model, optimizer, name, epoch, history, loader.state_dict(),
                             progress, cfg)
            stats = loader.stats()
        del loader  # its tiers are freed by close(); drop the last reference too
    accs = {}
    for split, plan_name in evals.items():
        er = PlanReader(store, plan_name)
        if cfg.in_memory:
            accs[split] = evaluate(model, mem.batches(er, 0), device)
        else:
            with NodeLoader(store, plan_name, device=device, budget=budget) as ev:
                accs[split] = evaluate(model, ((b.sample, b.x, b.y) for b in ev), device)
            del ev  # one evaluation loader's buffers at a time
    return {
        "plan": name, "pack": pack, "in_memory": cfg.in_memory, "backend": cfg.backend,
        "device": str(device), "seed": cfg.seed,
        "val_acc": accs.get("val"), "test_acc": accs.get("test"),
        "epochs": history,
        "bytes_read": stats.get("bytes_read", 0), "useful_bytes": stats.get("useful_bytes", 0),
        "read_amplification": stats.get("read_amplification"),
        "hit_rate": stats.get("hit_rate", {}), "prefetch": stats.get("prefetch"),
        "peak_rss_bytes": _peak_rss(),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "budget": budget.to_dict(),
    }


def _after_epoch(ckdir, model, optimizer, name, epoch, history, loader_state, progress, cfg):
    if ckdir is not None:
        _save_checkpoint(ckdir, {"plan": name, "epoch": epoch + 1, "history": history,
                                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "loader": loader_state, "config": cfg.__dict__})
    if progress is not None:
        progress(epoch, cfg.epochs)


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, sort_keys=True, default=float)
