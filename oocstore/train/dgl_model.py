"""GraphSAGE over sampled batches with DGL ``SAGEConv`` layers (mean aggregation).

The same architecture as :class:`oocstore.train.model.GraphSAGE` (the PyG model), so
accuracies of the two are comparable: ``num_layers`` convolutions, each
``W_self h_dst + W_neigh mean(h_src over in-edges) + b`` (destinations without edges get
a zero mean), ReLU and dropout between layers, none after the last. Only the
initialisation differs: DGL draws Glorot-uniform weights (ReLU gain), PyG keeps torch's
``Linear`` defaults (and DGL's bias sits in ``fc_self``, PyG's in the neighbour linear).

``forward(blocks, x)`` takes the blocks of :func:`oocstore.integrations.dgl.to_dgl` and
``x`` ``[num_input, in_dim]``, the features of ``batch.input_nodes`` in that order;
``forward_batch(batch, x)`` converts a :class:`~oocstore.plan.SampledBatch` first, which
is how :func:`oocstore.train.train_epoch` drives it. Needs the DGL environment
(``make test-dgl``); runs on torch 2.2.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..integrations.dgl import require_dgl, to_dgl
from ..plan import SampledBatch
from .model import layer_dims


class DGLGraphSAGE(nn.Module):
    """``num_layers`` mean-aggregation DGL SAGE convolutions; ReLU and dropout between
    layers, none after the last (its output are class logits)."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, num_layers: int,
                 dropout: float = 0.5):
        super().__init__()
        require_dgl()
        from dgl.nn import SAGEConv

        dims = layer_dims(in_dim, hidden, num_classes, num_layers, dropout)
        self.dropout = float(dropout)
        self.convs = nn.ModuleList(SAGEConv(dims[i], dims[i + 1], aggregator_type="mean")
                                   for i in range(num_layers))

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    def forward(self, blocks: Sequence,  # dgl blocks, blocks[0] on the input side
                x: torch.Tensor,  # [num_input, in_dim], input_nodes order, any float dtype
                ) -> torch.Tensor:  # [num_seeds, num_classes] logits
        if len(blocks) != len(self.convs):
            raise UsageError(f"the batch has {len(blocks)} layers but the model has "
                             f"{len(self.convs)}: sample the plan with one fanout per model layer")
        if x.shape[0] != blocks[0].num_src_nodes():
            raise UsageError(f"x has {x.shape[0]} rows but the batch's first layer has "
                             f"{blocks[0].num_src_nodes()} source nodes: deliver features for "
                             "input_nodes")
        h = x.to(torch.float32)
        last = len(self.convs) - 1
        for i, (conv, block) in enumerate(zip(self.convs, blocks)):
            # destinations are a prefix of the sources (see oocstore.plan)
            h = conv(block, (h, h[:block.num_dst_nodes()]))
            if i < last:
                h = F.relu(h)
                h = F.dropout(h, p=self.dropout, training=self.training)
        return h

    def forward_batch(self, batch: SampledBatch,
                      x: torch.Tensor,  # [num_input, in_dim] on the model's device
                      ) -> torch.Tensor:  # [num_seeds, num_classes]
        """Logits for the seeds of ``batch`` (the training loop's entry point)."""
        return self(to_dgl(batch, device=x.device), x)
