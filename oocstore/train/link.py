"""``oocstore train --task link``: link prediction (GraphSAGE encoder, dot or MLP
decoder, binary cross-entropy) from a link plan, out of core or in memory.

Composition root, like :mod:`.run`. Training batches come from a link plan
(:mod:`oocstore.samplers.link`): out of core through the plan's pack with the same
:class:`~oocstore.loader.NodeLoader` node classification uses (link batches carry
``pos`` / ``neg``), or, with ``in_memory``, from the same plan with every feature in RAM
— the parity reference: the same batches, the same seeds, so the same losses and
metrics.

Evaluation (after every epoch on validation, at the end on test) scores the stored
held-out edges and their fixed negatives (:mod:`oocstore.linksplit`): the endpoints'
embeddings are computed on the message-passing graph (held-out edges removed) with
neighbourhoods sampled by the plan's fanouts under a fixed key, so every evaluation of a
run, and both modes, see the same neighbourhoods. Evaluation features are read from the
store's feature array, not through the pack, whose segments only cover the training
batches: in memory from the loaded array, out of core with O_DIRECT row reads into
buffers charged to the loader's budget (:mod:`.link_eval`).
"""

from __future__ import annotations

import logging
import random
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..budget import MemoryBudget
from ..errors import FormatError, StoreNotFoundError, UsageError
from ..checked_read import read_checked
from ..linksplit import EdgeSplit, read_edge_split
from ..plan import PlanMeta, PlanReader, list_plans
from ..store import Store
from .link_metrics import link_metrics
from .loop import RunOptions, check_optimizer_options

log = logging.getLogger(__name__)

DECODERS = ("dot", "mlp")
#: Seeds per evaluation batch (embeddings of held-out endpoints).
EVAL_BATCH = 2048
#: Epoch key of evaluation neighbourhoods (far from any training epoch's key).
_EVAL_EPOCH = 1 << 20


@dataclass(frozen=True)
class LinkTrainConfig(RunOptions):
    decoder: str = "dot"
    # torch's deterministic algorithms while training on a CPU: without them the
    # backward of the sampled aggregation and of the pair gathers (parallel
    # accumulations) differs in the last bits from run to run, so two runs of one plan
    # drift apart over an epoch (facebook_combined, 10 epochs: test AUC 0.97138 vs
    # 0.97139); with them, out of core and in memory are identical. CUDA runs keep
    # torch's setting (its deterministic mode needs CUBLAS_WORKSPACE_CONFIG).
    deterministic: bool = True

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise UsageError(f"decoder={self.decoder!r} is not one of {', '.join(DECODERS)}")
        for what, v in (("epochs", self.epochs), ("hidden", self.hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"{what}={v!r}: give a positive integer")
        check_optimizer_options(self.lr, self.dropout, self.weight_decay)


class MLPDecoder(nn.Module):
    """Score of a pair: a two-layer MLP over the endpoints' elementwise product
    (symmetric, like the dot product it generalises)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, hu: torch.Tensor, hv: torch.Tensor) -> torch.Tensor:  # [n, d] -> [n]
        return self.net(hu * hv).squeeze(-1)


class DotDecoder(nn.Module):
    def forward(self, hu: torch.Tensor, hv: torch.Tensor) -> torch.Tensor:  # [n, d] -> [n]
        return (hu * hv).sum(dim=-1)


def build_link_model(in_dim: int, num_layers: int, cfg: LinkTrainConfig) -> nn.ModuleDict:
    """``{"encoder": GraphSAGE -> hidden, "decoder": dot | mlp}``."""
    from .model import GraphSAGE

    enc = GraphSAGE(in_dim, cfg.hidden, cfg.hidden, num_layers, cfg.dropout)
    dec = DotDecoder() if cfg.decoder == "dot" else MLPDecoder(cfg.hidden)
    return nn.ModuleDict({"encoder": enc, "decoder": dec})


def link_plan(store: Store, plan: str | None) -> PlanMeta:
    """The meta of link plan ``plan`` (default: the most recently sampled link plan);
    refuses a node-classification plan."""
    plans = list_plans(store)
    if plan is None:
        links = {n: m for n, m in plans.items() if m.task == "link"}
        if not links:
            raise StoreNotFoundError(f"store {store.path} has no link plan: sample one with "
                                     f"`oocstore sample {store.path} --task link --fanouts 10,5 "
                                     "--batch-size 512 --neg-ratio 1`")
        plan = max(links, key=lambda n: (store.array_meta(links[n].arrays["index"]).version, n))
    meta = plans.get(plan)
    if meta is None:
        raise StoreNotFoundError(f"store {store.path} has no plan {plan!r} (it has: "
                                 f"{', '.join(sorted(plans)) or 'none'})")
    if meta.task != "link":
        raise UsageError(f"plan {plan!r} of {store.path} is a node-classification plan: train "
                         "it without --task link, or sample a link plan with `oocstore sample "
                         f"{store.path} --task link --neg-ratio 1 ...` and name it with --plan")
    return meta


def check_node_plan(store_path, plan: str | None) -> None:
    """Refuse node-classification training on a named link plan (an unnamed plan is
    never a link plan: :func:`oocstore.plan.newest_plan`)."""
    if plan is None:
        return
    with Store(store_path) as store:
        meta = list_plans(store).get(plan)
        if meta is not None and meta.task == "link":
            raise UsageError(f"plan {plan!r} of {store.path} is a link-prediction plan: train "
                             "it with --task link, or name a node-classification plan with "
                             "--plan")


def _check_split(store: Store, meta: PlanMeta) -> EdgeSplit:
    split = read_edge_split(store)
    if meta.link.get("split_fingerprint") != split.meta.fingerprint:
        raise FormatError(f"link plan {meta.name!r} of {store.path} was sampled on another edge "
                          f"split than the store's: re-sample it with `oocstore sample "
                          f"{store.path} --task link --name {meta.name} --overwrite ...`")
    return split


def _scores(model: nn.ModuleDict, h: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    return model["decoder"](h[pairs[0]], h[pairs[1]])


def _batch_loss(model, sample, x: torch.Tensor, device) -> torch.Tensor:
    h = model["encoder"].forward_batch(sample, x)
    pos = torch.from_numpy(sample.pos).to(device)
    neg = torch.from_numpy(sample.neg).to(device)
    sp, sn = _scores(model, h, pos), _scores(model, h, neg)
    logits = torch.cat([sp, sn])
    target = torch.cat([torch.ones_like(sp), torch.zeros_like(sn)])
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


def _eval_samples(nodes: np.ndarray, split: EdgeSplit, meta: PlanMeta) -> Iterator:
    """The evaluation batches of ``nodes`` (``EVAL_BATCH`` seeds each, under the fixed
    evaluation key): the same at every budget and in both modes."""
    from oocstore.samplers.neighbor import sample_batches
    from ..plan import decode_record

    indptr = np.ascontiguousarray(split.indptr, dtype=np.int64)
    for lo in range(0, nodes.size, EVAL_BATCH):
        seeds = nodes[lo:lo + EVAL_BATCH]
        (record, layers), = sample_batches(indptr, split.indices, seeds, fanouts=meta.fanouts,
                                           batch_size=seeds.size, seed=meta.seed,
                                           epoch=_EVAL_EPOCH, first_batch=lo // EVAL_BATCH)
        row = np.concatenate([[0, record.size, seeds.size, layers[0, 0]], layers.reshape(-1)])
        yield decode_record(record, row, meta.num_layers)


def _eval_nodes(split: EdgeSplit, part: str) -> np.ndarray:
    pos, neg = split.held_out(part)
    return np.unique(np.concatenate([pos.ravel(), neg.ravel()]))


class EvalSamples:
    """The evaluation batches of the held-out parts of one run.

    Every evaluation draws the same neighbourhoods (a fixed key): the validation after
    each epoch, the test at the end and the budget check before training
    (:func:`max_eval_rows`). With ``keep`` (a run without a CPU budget) they are sampled
    on first use and kept (node ids and blocks; the feature rows are read per
    evaluation). A budgeted run keeps none: the blocks of every evaluation batch held at
    once are not in its budget (several times the features on a small graph), so each
    evaluation samples its batches again, one at a time, and gets the same ones."""

    def __init__(self, split: EdgeSplit, meta: PlanMeta, *, keep: bool = True):
        self.split, self.meta, self.keep = split, meta, keep
        self._parts: dict[str, tuple[np.ndarray, list]] = {}

    def of(self, part: str) -> tuple[np.ndarray, Iterable]:
        """``(nodes, batches)`` of ``part``: its endpoints (ascending, distinct) and their
        evaluation batches (a list when kept, else a fresh iterator to use once)."""
        if not self.keep:
            nodes = _eval_nodes(self.split, part)
            return nodes, _eval_samples(nodes, self.split, self.meta)
        if part not in self._parts:
            nodes = _eval_nodes(self.split, part)
            self._parts[part] = (nodes, list(_eval_samples(nodes, self.split, self.meta)))
        return self._parts[part]


def max_eval_rows(split: EdgeSplit, meta: PlanMeta, samples: EvalSamples | None = None) -> int:
    """Input nodes of the largest evaluation batch (validation or test): the feature
    rows one evaluation batch holds at once. ``samples``: the run's, to keep."""
    samples = samples or EvalSamples(split, meta)
    most = 0
    for part in ("val", "test"):
        if split.held_out(part)[0].shape[0]:
            for sample in samples.of(part)[1]:
                most = max(most, int(sample.input_nodes.size))
    return most


@torch.no_grad()
def embed_nodes(model: nn.ModuleDict, nodes: np.ndarray, split: EdgeSplit, meta: PlanMeta,
                features: Callable[[np.ndarray], torch.Tensor], device,
                batches: list | None = None) -> torch.Tensor:
    """``[len(nodes), hidden]`` embeddings of ``nodes`` (ascending, distinct) on the
    message-passing graph, neighbourhoods sampled with the plan's fanouts under a
    fixed key (``batches``: those already sampled, :class:`EvalSamples`).
    ``features(ids)``: the rows of ``ids``; where it has a ``release()``,
    that is called once a batch's rows are no longer used (a budgeted buffer)."""
    model.eval()
    release = getattr(features, "release", lambda: None)
    out = []
    for sample in batches if batches is not None else _eval_samples(nodes, split, meta):
        x = features(sample.input_nodes).to(device)
        out.append(model["encoder"].forward_batch(sample, x))
        del x
        release()
    return torch.cat(out)


@torch.no_grad()
def evaluate_link(model: nn.ModuleDict, split: EdgeSplit, part: str, meta: PlanMeta,
                  features: Callable[[np.ndarray], torch.Tensor], device,
                  samples: EvalSamples | None = None) -> dict[str, float]:
    """Hits@K, MRR and AUC of ``part`` (``val`` or ``test``) with its fixed negatives
    (``samples``: the run's evaluation batches, sampled once)."""
    pos, neg = split.held_out(part)
    if pos.shape[0] == 0:
        return {}
    nodes, batches = (samples or EvalSamples(split, meta)).of(part)
    h = embed_nodes(model, nodes, split, meta, features, device, batches)
    u = torch.from_numpy(np.searchsorted(nodes, pos[:, 0])).to(device)
    v = torch.from_numpy(np.searchsorted(nodes, pos[:, 1])).to(device)
    w = torch.from_numpy(np.searchsorted(nodes, neg)).to(device)  # [P, M]
    sp = model["decoder"](h[u], h[v])
    m = neg.shape[1]
    # Negatives scored EVAL_BATCH positives at a time: the gathered endpoint pairs are
    # [rows x M x hidden], 450 MB at once for facebook's 8,823 test edges x 100 x 128.
    sn = torch.cat([model["decoder"](h[u[lo:lo + EVAL_BATCH]].repeat_interleave(m, 0),
                                     h[w[lo:lo + EVAL_BATCH].reshape(-1)]).reshape(-1, m)
                    for lo in range(0, u.shape[0], EVAL_BATCH)])
    return link_metrics(sp, sn)


def _batches_in_memory(reader: PlanReader, feats: torch.Tensor, epoch: int) -> Iterator:
    e = epoch % reader.num_epochs
    for b in range(reader.num_batches(e)):
        sample = reader.read_batch(e, b)
        yield sample, feats[torch.from_numpy(sample.input_nodes)]


def _batches_out_of_core(loader, epoch: int) -> Iterator:
    loader.set_epoch(epoch)
    for batch in loader:
        yield batch.sample, batch.x


def run_link_training(store_path, plan: str | None, cfg: LinkTrainConfig, *,
                      progress: Callable[[int, int], Any] | None = None) -> dict[str, Any]:
    """Train and evaluate; returns the summary ``oocstore train --task link --json``
    prints. Everything that can refuse the run is checked before training; nothing is
    written to the store."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={cfg.device!r}: no CUDA device is available on this "
                         "machine; use device='cpu'")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    with Store(store_path) as store:
        meta = link_plan(store, plan)
        split = _check_split(store, meta)
        evals = EvalSamples(split, meta, keep=cfg.in_memory or cfg.cpu_budget is None)
        if cfg.in_memory:
            # Checked chunk by chunk, as the out-of-core loader's reads are.
            feats = torch.from_numpy(read_checked(
                store, "features", fix="the store's features are damaged: re-ingest it"))
            features = lambda idx: feats[torch.from_numpy(idx)]  # noqa: E731
            reader = PlanReader(store, meta.name)
            batches = lambda epoch: _batches_in_memory(reader, feats, epoch)  # noqa: E731
            closing = reader
        else:
            from ..loader import NodeLoader
            from .link_eval import BudgetedFeatures, check_eval_budget

            if cfg.cpu_budget is not None:
                check_eval_budget(store.path, cfg.cpu_budget,
                                  max_eval_rows(split, meta, evals),
                                  store.array_meta("features").row_bytes)
            loader = NodeLoader(store, meta.name, device=device, world_size=1, rank=0,
                                budget=MemoryBudget(cpu=cfg.cpu_budget, gpu=cfg.gpu_budget))
            try:
                features = BudgetedFeatures(store, loader)
            except BaseException:
                loader.close()
                raise
            batches = lambda epoch: _batches_out_of_core(loader, epoch)  # noqa: E731
            closing = loader
        was = torch.are_deterministic_algorithms_enabled()
        if cfg.deterministic and device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        try:
            summary = _train_loop(store, meta, split, cfg, device, batches, features, progress,
                                  evals)
            summary["pack"] = None if cfg.in_memory else closing.pack_name
            if not cfg.in_memory:
                st = closing.stats()
                summary.update({k: st.get(k) for k in ("bytes_read", "useful_bytes",
                                                        "read_amplification", "hit_rate",
                                                        "prefetch")})
                summary["eval_bytes_read"] = features.bytes_read
                summary["cpu_peak_charged"] = features.peak
            return summary
        finally:
            torch.use_deterministic_algorithms(was)
            if not cfg.in_memory:
                features.close()
            closing.close()


def _train_loop(store, meta, split, cfg, device, batches, features, progress,
                evals: EvalSamples) -> dict[str, Any]:
    model = build_link_model(store.feature_dim, meta.num_layers, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs = []
    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        total, count = 0.0, 0
        for sample, x in batches(epoch):
            opt.zero_grad()
            loss = _batch_loss(model, sample, x.to(device), device)
            loss.backward()
            opt.step()
            n = int(sample.pos.shape[1])
            total += float(loss.detach()) * n
            count += n
        val = evaluate_link(model, split, "val", meta, features, device, evals)
        epochs.append({"epoch": epoch, "loss": total / max(1, count),
                       "time_s": time.perf_counter() - t0, "val": val})
        if progress is not None:
            progress(epoch + 1, cfg.epochs)
    test = evaluate_link(model, split, "test", meta, features, device, evals)
    return {"task": "link", "plan": meta.name, "in_memory": cfg.in_memory,
            "decoder": cfg.decoder, "device": str(device), "epochs": epochs,
            "val": epochs[-1]["val"] if epochs else {}, "test": test,
            "neg_ratio": meta.link.get("neg_ratio"), "neg_sampler": meta.link.get("neg_sampler"),
            "edge_split": {"fractions": list(split.meta.fractions),
                           "train": split.meta.num_train, "val": split.meta.num_val,
                           "test": split.meta.num_test,
                           "eval_negatives": split.meta.eval_negatives},
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


__all__ = ["LinkTrainConfig", "build_link_model", "check_node_plan", "evaluate_link",
           "link_plan", "run_link_training"]
