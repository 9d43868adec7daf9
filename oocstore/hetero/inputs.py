"""The input layer of the heterogeneous models, PyG's and DGL's alike
(:mod:`oocstore.hetero.models`, :mod:`oocstore.hetero.dgl`): one home, so both backends
have the same parameter names and compute the same function."""

from __future__ import annotations

import torch
from torch import nn

from .schema import HeteroSchema


class TypeInputs(nn.Module):
    """Per node type: ``Linear(width, hidden)`` of its features, or a learned vector for
    a type without features."""

    def __init__(self, schema: HeteroSchema, hidden: int):
        super().__init__()
        self.lin = nn.ModuleDict({t: nn.Linear(nt.feat_dim, hidden)
                                  for t, nt in schema.node_types.items() if nt.has_features})
        self.emb = nn.ParameterDict({t: nn.Parameter(torch.randn(hidden) * 0.1)
                                     for t, nt in schema.node_types.items() if not nt.has_features})

    def embed(self, features: dict[str, torch.Tensor],
              counts: dict[str, int]) -> dict[str, torch.Tensor]:
        """Hidden inputs from ``features`` (per type with features) and ``counts`` (rows per
        type, for the learned vectors)."""
        h = {t: lin(features[t].float()) for t, lin in self.lin.items()}
        for t, v in self.emb.items():
            h[t] = v.expand(counts[t], -1)
        return h
