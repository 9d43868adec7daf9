"""Node classification on a heterogeneous store (``oocstore train`` on such a store).

The training plan's batches stream through its pack (CPU tier per type over aligned
base reads, one budget); validation and test plans of the target type are sampled with
the training plan's fanouts when the store has none and read through the same tiers.
``in_memory`` runs the same plans with every feature array in RAM: the parity reference
(the same batches, the same features, so the same model up to floating-point order).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..budget import MemoryBudget
from ..errors import UsageError
from ..store import Store
from .loader import HeteroLoader
from .models import BACKENDS, MODELS, build_hetero_model
from .pack import list_hetero_packs, pack_hetero
from .plan import HeteroPlanReader, list_hetero_plans
from .sampler import sample_hetero_plan
from .schema import require_schema


@dataclass(frozen=True)
class HeteroTrainConfig:
    epochs: int = 5
    model: str = "hetero-sage"
    hidden: int = 64
    lr: float = 0.005
    dropout: float = 0.3
    weight_decay: float = 0.0
    cpu_budget: int | None = None
    in_memory: bool = False
    seed: int = 0
    device: str = "cpu"
    pack: str | None = None  # default: the pack named like the plan
    evaluate: bool = True
    backend: str = "pyg"  # "dgl": the same models with DGL layers (DGL environment)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise UsageError(f"model={self.model!r} is not a heterogeneous model: use one of "
                             f"{', '.join(MODELS)}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise UsageError(f"epochs={self.epochs!r}: give at least 1")
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise UsageError(f"hidden={self.hidden!r}: give at least 1")
        if self.backend not in BACKENDS:
            raise UsageError(f"backend={self.backend!r}: use one of {', '.join(BACKENDS)}")
        from ..train.loop import check_optimizer_options

        check_optimizer_options(self.lr, self.dropout, self.weight_decay)


def _eval_plan(store: Store, split: str, train_meta: dict) -> str | None:
    """The plan of ``split`` (sampled with the training plan's fanouts if missing)."""
    schema = require_schema(store)
    if split not in schema.node_types[train_meta["target"]].splits:
        return None
    name = f"{train_meta['name']}-{split}"
    plans = list_hetero_plans(store)
    if name in plans and plans[name].get("fingerprint") == train_meta["fingerprint"]:
        return name
    sample_hetero_plan(store, fanouts=train_meta["fanouts"], batch_size=train_meta["batch_size"],
                       split=split, target=train_meta["target"], name=name, overwrite=True,
                       seed=train_meta["seed"])
    return name


def _eval_pack(store: Store, plan: str, train_pack: dict, budget: int | None) -> None:
    """Give evaluation plan ``plan`` a pack like the training pack's, if it lacks a
    current one (a ``segments`` pack serves its own plan only)."""
    have = list_hetero_packs(store).get(plan)
    pm = list_hetero_plans(store)[plan]
    if have is not None and have.get("plan") == plan and have.get("layout") == "segments" \
            and have.get("plan_fingerprint") == pm["fingerprint"] \
            and have.get("plan_version") == pm["store_version"]:
        return
    budget = budget if budget is not None else train_pack.get("cpu_budget")
    pack_hetero(store, plan, name=plan, cpu_budget=budget,
                cpu_cache=None if budget is not None else train_pack["cache_bytes"],
                overwrite=True, layout="segments",
                max_disk_blowup=train_pack.get("max_disk_blowup", 4.0))


def _accuracy(model, loader: HeteroLoader) -> float:
    import torch

    model.eval()
    right = total = 0
    with torch.no_grad():
        for b in loader.epoch(0):
            right += int((model(b).argmax(-1) == b.y).sum())
            total += b.num_seeds
    model.train()
    return right / total if total else float("nan")


def run_hetero_training(path: str, plan: str | None, cfg: HeteroTrainConfig,
                        progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on heterogeneous plan ``plan`` (default ``train``) of the store
    at ``path``; returns the summary (losses, accuracies, per-type tier statistics)."""
    import torch

    if cfg.backend == "dgl":
        from ..integrations.dgl import require_dgl

        require_dgl()  # before evaluation plans or packs are written
    with Store(path, readonly=False) as store:
        schema = require_schema(store)
        plan = plan or "train"
        reader = HeteroPlanReader(store, plan)
        meta = reader.meta
        reader.close()
        if meta["split"] in ("val", "test"):
            raise UsageError(f"plan {plan!r} samples the {meta['split']} split: train on a "
                             "plan of the train split")
        pack = None
        if not cfg.in_memory:
            pack = cfg.pack or plan
            if pack not in list_hetero_packs(store):
                raise UsageError(f"store {path} has no pack {pack!r} for plan {plan!r}: create "
                                 f"it with `oocstore pack {path} --plan {plan} --cpu-budget SIZE`"
                                 " (or train with --in-memory)")
        evals = {s: _eval_plan(store, s, meta) for s in ("val", "test")} if cfg.evaluate else {}
        if pack is not None and list_hetero_packs(store)[pack].get("layout") == "segments":
            for ev in evals.values():
                if ev:
                    _eval_pack(store, ev, list_hetero_packs(store)[pack], cfg.cpu_budget)
        torch.manual_seed(cfg.seed)
        model = build_hetero_model(cfg.model, schema, reader.relations, hidden=cfg.hidden,
                                   num_layers=int(meta["num_layers"]), dropout=cfg.dropout,
                                   backend=cfg.backend)
        model = model.to(cfg.device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        budget = MemoryBudget(cpu=cfg.cpu_budget)
        epochs = []
        with HeteroLoader(store, plan, pack=pack, budget=budget, in_memory=cfg.in_memory,
                          device=cfg.device) as loader:
            for epoch in range(cfg.epochs):
                if epoch:
                    loader.set_plan(plan, pack)
                t0, losses, waited = time.perf_counter(), [], 0.0
                it = loader.epoch(epoch)
                while True:
                    w0 = time.perf_counter()
                    batch = next(it, None)
                    waited += time.perf_counter() - w0
                    if batch is None:
                        break
                    opt.zero_grad()
                    loss = torch.nn.functional.cross_entropy(model(batch), batch.y)
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
                row = {"epoch": epoch, "loss": float(np.mean(losses)),
                       "time_s": time.perf_counter() - t0, "wait_s": waited}
                if evals.get("val"):
                    loader.set_plan(evals["val"])
                    row["val_acc"] = _accuracy(model, loader)
                epochs.append(row)
                if progress:
                    progress(epoch, cfg.epochs, row["loss"])
            test_acc = None
            if evals.get("test"):
                loader.set_plan(evals["test"])
                test_acc = _accuracy(model, loader)
            stats = loader.stats()
            peak = loader.accountant.peak("cpu")
    return {"model": cfg.model, "backend": cfg.backend, "plan": plan, "pack": pack, "in_memory": cfg.in_memory,
            "epochs": epochs, "val_acc": epochs[-1].get("val_acc"), "test_acc": test_acc,
            "types": stats, "cpu_budget": cfg.cpu_budget, "cpu_charged_peak": peak,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
