"""The backend-neutral GNN training loop, and the in-memory feature reference.

The loop does not know where features come from: it consumes an iterable of
``(SampledBatch, x, y)`` triples (or the :class:`~oocstore.loader.Batch` objects a
``NodeLoader`` yields, which carry the same three), ``x`` ``[num_input, D]`` the features of
``batch.input_nodes`` in that order (any float dtype, on any device) and ``y``
``[num_seeds]`` int64 the seeds' labels. An out-of-core loader and
:class:`InMemoryFeatures` (everything in RAM, the ``--in-memory`` parity reference)
produce the same triples for the same plan, so the same seeds give the same model.

Backends: a model with a ``forward_batch(batch, x)`` method turns the batch into its
library's form itself (:class:`~oocstore.train.GraphSAGE`: PyG layers;
:class:`~oocstore.train.dgl_model.DGLGraphSAGE`: DGL blocks); one of PyG's ready-made
models (``torch_geometric.nn.models.GraphSAGE``, ``GAT``, ``GCN``, ...) gets the batch as
one ``edge_index`` with trim-to-layer counts
(:func:`~oocstore.integrations.pyg.to_pyg_hops`) and its seed rows are kept; any other
model is called PyG-style, ``model(x, layers)``.

Data parallelism: DDP synchronises gradients only when the forward pass goes through
its wrapper, so a model is wrapped as ``DistributedDataParallel(BatchForward(model))``
(:func:`ddp_model`): the wrapper's ``forward(batch, x)`` calls the model's own
``forward_batch``, and the loop calls the wrapper with ``(batch, x)``.

Determinism: the loop draws random numbers only through torch's global generator
(dropout, and whatever the caller's model init drew); seed it with
``torch.manual_seed`` before building the model and the runs repeat exactly on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..integrations.pyg import is_pyg_basic_gnn, to_pyg, to_pyg_hops
from ..plan import PlanReader, SampledBatch
from ..store import Store

log = logging.getLogger(__name__)

BatchTriple = tuple[SampledBatch, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class RunOptions:
    """What every homogeneous GNN training run is given, with its defaults: node
    classification (:class:`~oocstore.train.run.TrainConfig`) and link prediction
    (:class:`~oocstore.train.link.LinkTrainConfig`) add their own options and check
    these their own way."""

    epochs: int = 10
    hidden: int = 256
    lr: float = 0.003
    dropout: float = 0.5
    device: str = "cpu"
    cpu_budget: int | None = None
    gpu_budget: int | None = None
    in_memory: bool = False
    seed: int = 0
    weight_decay: float = 0.0  # Adam's L2 penalty


def check_optimizer_options(lr: float, dropout: float, weight_decay: float) -> None:
    """A run's learning rate, dropout and Adam weight decay, checked with its other
    options: torch refuses them only when the optimizer is made or the first batch runs
    (a ValueError), after the run has written its evaluation plans and packs."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UsageError(f"lr={lr!r}: give a finite learning rate > 0")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise UsageError(f"dropout={dropout!r}: give a value in [0, 1)")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay)
            and weight_decay >= 0):
        raise UsageError(f"weight_decay={weight_decay!r}: give a finite value >= 0 "
                         "(0 turns it off)")


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _prepare(batch: SampledBatch, x: torch.Tensor, y: torch.Tensor, device: torch.device):
    num_input, num_seeds = int(batch.input_nodes.shape[0]), int(batch.seeds.shape[0])
    if x.shape[0] != num_input or y.shape[0] != num_seeds:
        raise UsageError(f"batch {batch.batch} of epoch {batch.epoch}: got {x.shape[0]} feature "
                         f"rows and {y.shape[0]} labels for {num_input} input nodes and "
                         f"{num_seeds} seeds: the feature source must deliver rows for "
                         "batch.input_nodes and labels for batch.seeds")
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()


class BatchForward(nn.Module):
    """``forward(batch, x)`` = the wrapped model's :func:`_forward`: what DDP wraps, so
    that its forward hooks (gradient synchronisation) see every training step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: SampledBatch, x: torch.Tensor) -> torch.Tensor:
        return _forward(self.model, batch, x)


def ddp_model(model: nn.Module) -> nn.Module:
    """``model`` wrapped for data-parallel training in the initialised process group
    (its parameters are broadcast from rank 0). The caller keeps ``model`` for
    evaluation, which needs no synchronisation."""
    from torch.nn.parallel import DistributedDataParallel

    # Single-device modules: no device_ids, so DDP leaves the (numpy) batch untouched.
    return DistributedDataParallel(BatchForward(model), device_ids=None)


def _forward(model: nn.Module, batch: SampledBatch, x: torch.Tensor) -> torch.Tensor:
    """The seeds' logits. A model that defines ``forward_batch(batch, x)`` converts the
    batch to its library's form itself (PyG layers, DGL blocks); any other model is
    called PyG-style, ``model(x, layers)``."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model(batch, x)  # wraps a BatchForward (see ddp_model)
    forward_batch = getattr(model, "forward_batch", None)
    if forward_batch is not None:
        return forward_batch(batch, x)
    if is_pyg_basic_gnn(model):
        hops = to_pyg_hops(batch).to(x.device, non_blocking=True)
        out = model(x.to(torch.float32), hops.edge_index,
                    num_sampled_nodes_per_hop=hops.num_sampled_nodes,
                    num_sampled_edges_per_hop=hops.num_sampled_edges)
        return out[:hops.num_seeds]
    return model(x, to_pyg(batch).to(x.device, non_blocking=True).layers)


def _triples(batches: Iterable[Any]) -> Iterator[BatchTriple]:
    """``(batch, x, y)`` triples from triples or from :class:`~oocstore.loader.Batch`
    objects (what iterating a ``NodeLoader`` gives)."""
    for item in batches:
        sample = getattr(item, "sample", None)
        if sample is not None and hasattr(item, "x"):
            yield sample, item.x, item.y
        else:
            yield item


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                batches: Iterable[BatchTriple], device: torch.device | str, *,
                on_batch: Callable[[int, float], Any] | None = None) -> dict[str, Any]:
    """One pass over ``batches``: cross-entropy on the seeds, one optimizer step per batch
    (``on_batch(seeds, loss)`` after each, e.g. for a progress bar).

    Returns ``loss`` and ``train_accuracy`` (seed-weighted means over the epoch),
    ``batches``, ``seeds``, ``seconds`` (wall time) and ``data_seconds`` (time spent
    waiting for the next triple: the share the feature source did not hide).
    """
    device = torch.device(device)
    model.train()
    total_loss = 0.0
    correct = 0
    seen = 0
    count = 0
    data_s = 0.0
    t0 = time.perf_counter()
    it = _triples(batches)
    while True:
        t = time.perf_counter()
        try:
            batch, x, y = next(it)
        except StopIteration:
            break
        data_s += time.perf_counter() - t
        x, y = _prepare(batch, x, y, device)
        optimizer.zero_grad(set_to_none=True)
        out = _forward(model, batch, x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        n = int(y.shape[0])
        batch_loss = float(loss.detach())
        total_loss += batch_loss * n
        if on_batch is not None:
            on_batch(n, batch_loss)
        correct += int((out.detach().argmax(dim=1) == y).sum())
        seen += n
        count += 1
    if count == 0:
        raise UsageError("train_epoch got no batches: the plan epoch is empty")
    return {"loss": total_loss / seen, "train_accuracy": correct / seen, "batches": count,
            "seeds": seen, "seconds": time.perf_counter() - t0, "data_seconds": data_s}


def evaluate(model: nn.Module, batches: Iterable[BatchTriple],
             device: torch.device | str | None = None) -> float:
    """Accuracy in ``[0, 1]`` of ``model`` on the seeds of ``batches`` (eval mode: no
    dropout, no gradients): a ``NodeLoader`` (e.g. ``train_loader.eval_loader("val")``)
    or triples. ``device`` defaults to the model's. The model may be a
    :class:`~oocstore.train.GraphSAGE`, one of PyG's ready-made models, or any module
    called ``model(x, layers)`` (see the module docstring)."""
    correct, seen = evaluate_counts(model, batches, device)
    if seen == 0:
        raise UsageError("evaluate got no batches: the evaluation plan is empty")
    return correct / seen


@torch.no_grad()
def evaluate_counts(model: nn.Module, batches: Iterable[BatchTriple],
                    device: torch.device | str | None = None) -> tuple[int, int]:
    """``(correct, seeds)`` of ``model`` on ``batches``: counts, so that ranks evaluating
    shards can add theirs up before dividing."""
    device = _model_device(model) if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    correct = 0
    seen = 0
    try:
        for batch, x, y in _triples(batches):
            x, y = _prepare(batch, x, y, device)
            correct += int((_forward(model, batch, x).argmax(dim=1) == y).sum())
            seen += int(y.shape[0])
    finally:
        model.train(was_training)
    return correct, seen


class InMemoryFeatures:
    """All features and labels of ``store`` in RAM: the reference feature source.

    Features keep the store's dtype (float16 stays float16; the model casts on the
    device). ``batches(reader, epoch)`` yields the triples the training loop consumes.
    """

    def __init__(self, store: Store):
        if not store.has_array("features") or not store.has_array("labels"):
            raise UsageError(f"store {store.path} lacks features or labels: ingest a dataset "
                             "with node features and labels to train on it")
        from ..checked_read import read_checked

        fix = "the store is damaged: re-ingest it, or run `oocstore verify` to see what"
        # Read whole with every chunk's checksum checked, as the out-of-core path reads.
        self.features = torch.from_numpy(read_checked(store, "features", fix=fix))  # [N, D]
        self.labels = torch.from_numpy(
            read_checked(store, "labels", fix=fix).astype(np.int64, copy=False))  # [N]
        if self.features.ndim != 2 or self.features.shape[0] != self.labels.shape[0]:
            raise UsageError(f"store {store.path}: features {tuple(self.features.shape)} and "
                             f"labels {tuple(self.labels.shape)} disagree: re-create the store")
        log.info("holding %d x %d %s features in memory (%.1f MiB)", self.features.shape[0],
                 self.features.shape[1], self.features.dtype,
                 self.features.numel() * self.features.element_size() / 2**20)

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    @property
    def feat_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.numel() else 0

    def gather(self, batch: SampledBatch) -> BatchTriple:
        """``(batch, features[input_nodes], labels[seeds])``."""
        nodes = torch.from_numpy(np.array(batch.input_nodes, dtype=np.int64))
        return (batch, self.features.index_select(0, nodes),
                self.labels.index_select(0, nodes[:batch.seeds.shape[0]]))

    def batches(self, reader: PlanReader, epoch: int,
                order: Sequence[int] | np.ndarray | None = None) -> Iterator[BatchTriple]:
        """Triples for plan epoch ``epoch``, batches in ``order`` (default: as sampled)."""
        if order is None:
            order = range(reader.num_batches(epoch))
        for b in order:
            yield self.gather(reader.read_batch(epoch, int(b)))
