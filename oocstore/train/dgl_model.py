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

from ..integrations.dgl import require_dgl, to_dgl
from ..plan import SampledBatch
from .model import SAGEStack, check_batch_input


class DGLGraphSAGE(SAGEStack):
    """``num_layers`` mean-aggregation DGL SAGE convolutions; ReLU and dropout between
    layers, none after the last (its output are class logits)."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, num_layers: int,
                 dropout: float = 0.5):
        require_dgl()
        from dgl.nn import SAGEConv

        super().__init__(lambda i, o: SAGEConv(i, o, aggregator_type="mean"), in_dim, hidden,
                         num_classes, num_layers, dropout)

    def forward(self, blocks: Sequence,  # dgl blocks, blocks[0] on the input side
                x: torch.Tensor,  # [num_input, in_dim], input_nodes order, any float dtype
                ) -> torch.Tensor:  # [num_seeds, num_classes] logits
        check_batch_input(len(blocks), len(self.convs), x,
                          blocks[0].num_src_nodes() if blocks else None)
        # destinations are a prefix of the sources (see oocstore.plan)
        return self._layers(x, blocks,
                            lambda conv, h, block: conv(block, (h, h[:block.num_dst_nodes()])))

    def forward_batch(self, batch: SampledBatch,
                      x: torch.Tensor,  # [num_input, in_dim] on the model's device
                      ) -> torch.Tensor:  # [num_seeds, num_classes]
        """Logits for the seeds of ``batch`` (the training loop's entry point)."""
        return self(to_dgl(batch, device=x.device), x)
