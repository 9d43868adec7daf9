"""Heterogeneous GNNs over typed blocks: relational GraphSAGE and R-GCN (PyG layers).

Both models project each node type to ``hidden`` units (a linear layer of the type's
features; a learned vector for a type without features, so such types cost no feature
reads), then apply one typed layer per block, input side first: layer ``l`` maps the
block's source rows of every type to its destination rows (a prefix per type), and the
target type's first ``num_seeds`` rows of the last layer are classified.

``hetero-sage`` (:class:`HeteroSAGE`)
    per relation a PyG ``SAGEConv`` (mean of the relation's neighbours, no root weight),
    summed over the relations into a type, plus one root linear layer per type.
``rgcn`` (:class:`RGCN`)
    PyG ``RGCNConv`` (one weight per relation, mean aggregation, a root weight) on the
    block flattened to one node set with an edge type per relation.

Both take a :class:`~oocstore.hetero.loader.HeteroBatch` (``forward(batch)``).
:mod:`oocstore.hetero.dgl` has the same two models with DGL layers (``--backend dgl``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .inputs import TypeInputs
from .schema import EdgeType, HeteroSchema, edge_key

MODELS = ("hetero-sage", "rgcn")


class _Inputs(TypeInputs):
    """Per type: ``Linear(width, hidden)`` of its features, or a learned vector."""

    def forward(self, batch) -> dict[str, torch.Tensor]:
        return self.embed(batch.x_dict, batch.num_nodes)


class HeteroSAGE(nn.Module):
    def __init__(self, schema: HeteroSchema, relations: Sequence[EdgeType], hidden: int,
                 num_classes: int, num_layers: int, dropout: float = 0.5):
        super().__init__()
        from torch_geometric.nn import SAGEConv

        self.target = schema.target
        self.relations = list(relations)
        self.inputs = _Inputs(schema, hidden)
        self.convs = nn.ModuleList(nn.ModuleDict({
            edge_key(et): SAGEConv((hidden, hidden), hidden, aggr="mean", root_weight=False)
            for et in self.relations}) for _ in range(num_layers))
        self.roots = nn.ModuleList(nn.ModuleDict({t: nn.Linear(hidden, hidden)
                                                  for t in schema.node_types})
                                   for _ in range(num_layers))
        self.out = nn.Linear(hidden, num_classes)
        self.dropout = dropout

    def forward(self, batch) -> torch.Tensor:
        h = self.inputs(batch)
        for layer, block in enumerate(batch.blocks):
            new = {}
            for t, (_, n_dst) in block["sizes"].items():
                if n_dst:
                    new[t] = self.roots[layer][t](h[t][:n_dst])
            for et in self.relations:
                s, _, d = et
                n_src, n_dst = block["sizes"][s][0], block["sizes"][d][1]
                ei = block["edge_index"][et]
                if not n_dst or not ei.shape[1]:
                    continue
                new[d] = new[d] + self.convs[layer][edge_key(et)](
                    (h[s][:n_src], h[d][:n_dst]), ei, size=(n_src, n_dst))
            h = {t: F.dropout(F.relu(v), self.dropout, self.training) for t, v in new.items()}
        return self.out(h[self.target][:batch.num_seeds])


class RGCN(nn.Module):
    def __init__(self, schema: HeteroSchema, relations: Sequence[EdgeType], hidden: int,
                 num_classes: int, num_layers: int, dropout: float = 0.5):
        super().__init__()
        from torch_geometric.nn import RGCNConv

        self.target = schema.target
        self.types = sorted(schema.node_types)
        self.relations = list(relations)
        self.inputs = _Inputs(schema, hidden)
        self.convs = nn.ModuleList(RGCNConv(hidden, hidden, num_relations=len(self.relations),
                                            aggr="mean") for _ in range(num_layers))
        self.out = nn.Linear(hidden, num_classes)
        self.dropout = dropout

    def forward(self, batch) -> torch.Tensor:
        h = self.inputs(batch)
        for layer, block in enumerate(batch.blocks):
            sizes = block["sizes"]
            src_off, dst_off, so, do = {}, {}, 0, 0
            for t in self.types:
                src_off[t], dst_off[t] = so, do
                so += sizes[t][0]
                do += sizes[t][1]
            x_src = torch.cat([h[t][:sizes[t][0]] for t in self.types])
            x_dst = torch.cat([h[t][:sizes[t][1]] for t in self.types])
            eis, kinds = [], []
            for ri, et in enumerate(self.relations):
                ei = block["edge_index"][et]
                eis.append(torch.stack([ei[0] + src_off[et[0]], ei[1] + dst_off[et[2]]]))
                kinds.append(torch.full((ei.shape[1],), ri, dtype=torch.long, device=ei.device))
            out = self.convs[layer]((x_src, x_dst), torch.cat(eis, dim=1), torch.cat(kinds))
            out = F.dropout(F.relu(out), self.dropout, self.training)
            h = {t: out[dst_off[t]:dst_off[t] + sizes[t][1]] for t in self.types}
        return self.out(h[self.target][:batch.num_seeds])


BACKENDS = ("pyg", "dgl")


def build_hetero_model(name: str, schema: HeteroSchema, relations: Sequence[EdgeType], *,
                       hidden: int, num_layers: int, dropout: float = 0.5,
                       backend: str = "pyg") -> nn.Module:
    """Model ``name`` with PyG layers, or with DGL layers (``backend="dgl"``: the same
    function, :mod:`oocstore.hetero.dgl`; needs the DGL environment)."""
    from ..errors import UsageError

    classes = schema.node_types[schema.target].num_classes
    if backend == "dgl" and name in MODELS:
        from .dgl import DGLHeteroSAGE, DGLRGCN

        cls = DGLHeteroSAGE if name == "hetero-sage" else DGLRGCN
        return cls(schema, relations, hidden, classes, num_layers, dropout)
    if backend not in BACKENDS:
        raise UsageError(f"backend={backend!r}: use one of {', '.join(BACKENDS)}")
    if name == "hetero-sage":
        return HeteroSAGE(schema, relations, hidden, classes, num_layers, dropout)
    if name == "rgcn":
        return RGCN(schema, relations, hidden, classes, num_layers, dropout)
    raise UsageError(f"model={name!r} is not a heterogeneous model: use one of {', '.join(MODELS)}")
