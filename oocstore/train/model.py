"""GraphSAGE over sampled batches (PyG ``SAGEConv`` layers, mean aggregation).

The model consumes a batch in the form :func:`oocstore.integrations.pyg.to_pyg` gives:
``x`` ``[num_input, D]`` holds the features of ``batch.input_nodes`` in that order, and
``layers`` is the per-layer ``(edge_index, size)`` list, input side first. Because every
layer's destinations are a prefix of its sources, layer ``l`` is
``conv((h, h[:num_dst_l]), edge_index_l, size=(num_src_l, num_dst_l))`` and its output
has ``num_dst_l`` rows, which are the next layer's sources; the last layer's output rows
are the seeds.

Aggregation: by default each layer's edges become a CSR adjacency ``[num_dst, num_src]``
and ``SAGEConv`` aggregates with one sparse-dense product (``torch.sparse.mm`` with
``reduce="mean"``), which never materialises the ``[num_edges, D]`` message matrix that
the ``edge_index`` path gathers — on 6,805-dimensional features and 30k edges that
matrix alone is 0.8 GB per layer. ``sparse=False`` uses the ``edge_index`` path (gather
+ scatter); both compute the same mean (destinations without edges get zeros).

Features may be stored as float16 (half the bytes to read and move); they are cast to
float32 where ``x`` already is, on the training device, so only the narrow type crosses
the host-device link.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FormatError, UsageError
from ..integrations.pyg import require_pyg, to_pyg
from ..plan import SampledBatch


def _positive(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"GraphSAGE {what} {value!r} is not a positive integer")
    return value


def layer_dims(in_dim: int, hidden: int, num_classes: int, num_layers: int,
               dropout: float) -> list[int]:
    """Validated layer widths ``[in_dim, hidden, ..., num_classes]`` of a GraphSAGE, the
    same for every backend (PyG here, DGL in ``dgl_model.py``)."""
    dims = [_positive(in_dim, "in_dim")]
    dims += [_positive(hidden, "hidden")] * (_positive(num_layers, "num_layers") - 1)
    dims += [_positive(num_classes, "num_classes")]
    if not 0.0 <= float(dropout) < 1.0:
        raise UsageError(f"GraphSAGE dropout {dropout!r} is not in [0, 1)")
    return dims


def check_batch_input(batch_layers: int, model_layers: int, x: torch.Tensor,
                      input_nodes: int | None) -> None:
    """A batch of ``batch_layers`` layers whose first layer has ``input_nodes`` sources
    (``None``: no layer) fits a model of ``model_layers`` layers, with one row of ``x``
    per input node."""
    if batch_layers != model_layers:
        raise UsageError(f"the batch has {batch_layers} layers but the model has "
                         f"{model_layers}: sample the plan with one fanout per model layer")
    if x.shape[0] != input_nodes:
        raise UsageError(f"x has {x.shape[0]} rows but the batch's first layer has "
                         f"{input_nodes} source nodes: deliver features for input_nodes")


def relu_dropout(h: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """What follows every layer but the last: ReLU, then dropout while training."""
    return F.dropout(F.relu(h), p=p, training=training)


class SAGEStack(nn.Module):
    """The layers of a GraphSAGE model of any backend: ``convs``, one convolution
    ``make_conv(in, out)`` per layer, and the ``dropout`` applied between them."""

    def __init__(self, make_conv: Callable[[int, int], nn.Module], in_dim: int, hidden: int,
                 num_classes: int, num_layers: int, dropout: float):
        super().__init__()
        dims = layer_dims(in_dim, hidden, num_classes, num_layers, dropout)
        self.dropout = float(dropout)
        self.convs = nn.ModuleList(make_conv(dims[i], dims[i + 1]) for i in range(num_layers))

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    def _layers(self, x: torch.Tensor, layers: Sequence,
                apply: Callable[[nn.Module, torch.Tensor, Any], torch.Tensor]) -> torch.Tensor:
        """``x`` (as float32) through every convolution: ``apply(conv, h, layer)`` gives
        the output rows of one layer of the batch (its destinations, a prefix of its
        sources); ReLU and dropout between layers, none after the last."""
        h = x.to(torch.float32)
        last = len(self.convs) - 1
        for i, (conv, layer) in enumerate(zip(self.convs, layers)):
            h = apply(conv, h, layer)
            if i < last:
                h = relu_dropout(h, self.dropout, self.training)
        return h


class GraphSAGE(SAGEStack):
    """``num_layers`` mean-aggregation SAGE convolutions; ReLU and dropout between
    layers, none after the last (its output are class logits)."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, num_layers: int,
                 dropout: float = 0.5, *, sparse: bool = True):
        require_pyg()
        from torch_geometric.nn import SAGEConv

        super().__init__(lambda i, o: SAGEConv(i, o, aggr="mean"), in_dim, hidden,
                         num_classes, num_layers, dropout)
        self.sparse = bool(sparse)

    def forward(self, x: torch.Tensor,  # [num_input, in_dim], input_nodes order, any float dtype
                layers: Sequence[tuple[torch.Tensor, tuple[int, int]]],  # (edge_index [2, E], size)
                ) -> torch.Tensor:  # [num_seeds, num_classes] logits
        check_batch_input(len(layers), len(self.convs), x, layers[0][1][0] if layers else None)
        return self._layers(x, layers, self._sage_layer)

    def _sage_layer(self, conv: nn.Module, h: torch.Tensor, layer) -> torch.Tensor:
        edge_index, size = layer
        num_src, num_dst = int(size[0]), int(size[1])
        if self.sparse:
            return conv((h, h[:num_dst]), csr_adjacency(edge_index, num_src, num_dst))
        return conv((h, h[:num_dst]), edge_index, size=(num_src, num_dst))

    def forward_batch(self, batch: SampledBatch,
                      x: torch.Tensor,  # [num_input, in_dim] on the model's device
                      ) -> torch.Tensor:  # [num_seeds, num_classes]
        """Logits for the seeds of ``batch`` (the training loop's entry point)."""
        return self(x, to_pyg(batch).to(x.device, non_blocking=True).layers)


def csr_adjacency(edge_index: torch.Tensor,  # [2, E] int64 (row 0 source, row 1 destination)
                  num_src: int, num_dst: int) -> torch.Tensor:  # sparse CSR [num_dst, num_src]
    """The transposed adjacency (one row per destination) of one layer, values 1.

    Plans store each layer's edges grouped by ascending destination, so the row pointers
    are one ``searchsorted``; edges in any other order are sorted first.
    """
    src, dst = edge_index[0], edge_index[1]
    if dst.numel() > 1 and bool((dst[1:] < dst[:-1]).any()):
        order = torch.argsort(dst, stable=True)
        src, dst = src[order], dst[order]
    crow = torch.searchsorted(dst, torch.arange(num_dst + 1, device=dst.device))
    values = torch.ones(src.shape[0], device=src.device)
    if src.numel() and (int(src.min()) < 0 or int(src.max()) >= num_src):
        raise FormatError(f"a layer has a source id outside 0..{num_src - 1}: the batch is "
                          "damaged; re-sample the plan with --overwrite")
    # torch's invariant check would also demand sorted columns within a row, which the
    # mean does not need; the bounds, which it does need, were checked above.
    global _csr_warning_seen
    if _csr_warning_seen:
        return torch.sparse_csr_tensor(crow, src, values, size=(num_dst, num_src),
                                       check_invariants=False)
    # torch warns once per process that sparse CSR is "in beta"; that note is not about
    # this program, so the first construction swallows it (later ones cannot warn).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta",
                                category=UserWarning)
        # some torch builds (2.11 with CUDA) also note, once, that the invariant check is
        # off: it is, on purpose (above)
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly",
                                category=UserWarning)
        adj = torch.sparse_csr_tensor(crow, src, values, size=(num_dst, num_src),
                                      check_invariants=False)
    _csr_warning_seen = True
    return adj


_csr_warning_seen = False
