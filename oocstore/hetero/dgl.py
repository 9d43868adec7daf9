"""DGL form of a heterogeneous batch, and the DGL versions of the heterogeneous models.

:func:`to_dgl_blocks` turns a :class:`~oocstore.hetero.loader.HeteroBatch` into what
``dgl.dataloading.NeighborSampler`` hands a model on a heterograph: one
``dgl.create_block`` per layer (``blocks[0]`` the input side), typed edges
``(src_type, relation, dst_type)`` in local ids, per type ``num_src`` / ``num_dst``
nodes (destinations a prefix of the sources per type, as in the plan), the global ids
in ``srcdata[dgl.NID]`` / ``dstdata[dgl.NID]``, the features in
``blocks[0].srcdata["feat"]`` (feature-bearing types) and the seeds' labels in
``blocks[-1].dstdata["label"]`` (target type; its first ``num_seeds`` destinations are
the seeds, the other destinations of the last layer get -1).

:class:`DGLHeteroSAGE` and :class:`DGLRGCN` compute exactly the functions of
:class:`~oocstore.hetero.models.HeteroSAGE` and :class:`~oocstore.hetero.models.RGCN`
with DGL layers (``HeteroGraphConv`` of ``GraphConv(norm="right")``, i.e. a mean of
the relation's in-neighbours times a weight, summed over the relations into a type);
``oocstore train --backend dgl`` uses them. DGL lives in its own environment (DGL 2.1
needs torch 2.2 and numpy < 2): :func:`~oocstore.integrations.dgl.require_dgl` names
the fix when it is absent, so this module uses only torch APIs that torch 2.2 has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ..integrations.dgl import require_dgl
from .inputs import TypeInputs
from .schema import EdgeType, HeteroSchema, edge_key

if TYPE_CHECKING:  # pragma: no cover - typing only
    import dgl


def to_dgl_blocks(batch,
                  device: torch.device | str | None = None) -> list["dgl.DGLGraph"]:
    """``batch`` as DGL heterograph blocks, ``blocks[0]`` the input-side layer (on
    ``device``; default: where the batch's tensors are)."""
    dgl = require_dgl()
    blocks = []
    last = len(batch.blocks) - 1
    for layer, b in enumerate(batch.blocks):
        sizes = b["sizes"]
        data = {et: (ei[0].to(torch.int64), ei[1].to(torch.int64))
                for et, ei in b["edge_index"].items()}
        block = dgl.create_block(data, num_src_nodes={t: int(s) for t, (s, _) in sizes.items()},
                                 num_dst_nodes={t: int(d) for t, (_, d) in sizes.items()},
                                 idtype=torch.int64, device=_device_of(batch, device))
        for t, (n_src, n_dst) in sizes.items():
            ids = batch.n_id[t].to(block.device)
            block.srcnodes[t].data[dgl.NID] = ids[:n_src].clone()
            block.dstnodes[t].data[dgl.NID] = ids[:n_dst].clone()
            if layer == 0 and t in batch.x_dict:
                block.srcnodes[t].data["feat"] = batch.x_dict[t][:n_src].to(block.device)
        if layer == last:
            n_dst = sizes[batch.target][1]
            y = torch.full((n_dst,), -1, dtype=torch.int64, device=block.device)
            y[:batch.num_seeds] = batch.y.to(block.device)
            block.dstnodes[batch.target].data["label"] = y
        blocks.append(block)
    return blocks


def _device_of(batch, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return batch.y.device


class _Inputs(TypeInputs):
    """The PyG models' inputs (same parameter names) read from
    ``blocks[0].srcdata["feat"]``."""

    def forward(self, block) -> dict[str, torch.Tensor]:
        return self.embed({t: block.srcnodes[t].data["feat"] for t in self.lin},
                          {t: block.num_src_nodes(t) for t in self.emb})


def _relation_convs(relations: Sequence[EdgeType], hidden: int, bias: bool):
    from dgl.nn import GraphConv, HeteroGraphConv

    # keyed by canonical edge type: relation names need not be unique across types
    return HeteroGraphConv({et: GraphConv(hidden, hidden, norm="right", weight=True, bias=bias,
                                          allow_zero_in_degree=True) for et in relations},
                           aggregate="sum")


def _split(h: dict[str, torch.Tensor], block) -> tuple[dict, dict]:
    """Source and destination inputs of ``block`` (destinations a prefix per type)."""
    src = {t: h[t][:block.num_src_nodes(t)] for t in block.srctypes if t in h}
    dst = {t: h[t][:block.num_dst_nodes(t)] for t in block.dsttypes if t in h}
    return src, dst


class _DGLStack(nn.Module):
    """The layer loop both DGL models share: per block, the relation messages of
    ``convs[layer]``, combined with the destinations by :meth:`_combine`, then ReLU and
    dropout; the logits of the target type's seeds. The modules are built in one
    order for both models (inputs, convs, the subclass's :meth:`_per_layer`, out), so a
    seeded model draws its initial weights in the same sequence."""

    def __init__(self, schema: HeteroSchema, relations: Sequence[EdgeType], hidden: int,
                 num_classes: int, num_layers: int, dropout: float = 0.5):
        super().__init__()
        require_dgl()
        self.target = schema.target
        self.relations = [tuple(et) for et in relations]
        self.inputs = _Inputs(schema, hidden)
        self.convs = nn.ModuleList(_relation_convs(self.relations, hidden, False)
                                   for _ in range(num_layers))
        self._per_layer(schema, hidden, num_layers)
        self.out = nn.Linear(hidden, num_classes)
        self.dropout = dropout

    def _per_layer(self, schema: HeteroSchema, hidden: int, num_layers: int) -> None:
        raise NotImplementedError

    def forward_blocks(self, blocks, num_seeds: int) -> torch.Tensor:
        h = self.inputs(blocks[0])
        for layer, block in enumerate(blocks):
            src, dst = _split(h, block)
            new = self._combine(layer, block, self.convs[layer](block, (src, dst)), dst)
            h = {t: F.dropout(F.relu(v), self.dropout, self.training) for t, v in new.items()}
        return self.out(h[self.target][:num_seeds])

    def forward(self, batch) -> torch.Tensor:
        return self.forward_blocks(to_dgl_blocks(batch), batch.num_seeds)


class DGLHeteroSAGE(_DGLStack):
    """:class:`~oocstore.hetero.models.HeteroSAGE` with DGL layers: per layer and
    relation the mean of the in-neighbours through a linear layer, summed into the
    destination type, plus a root linear layer per type; ReLU and dropout. A relation's
    bias is added only where the block has edges of it (as PyG's model skips a relation
    without edges; DGL 2.1's ``HeteroGraphConv`` calls every relation's module), so the
    relation modules have none and the biases sit in ``biases``."""

    def _per_layer(self, schema: HeteroSchema, hidden: int, num_layers: int) -> None:
        self.biases = nn.ModuleList(nn.ParameterDict({
            edge_key(et): nn.Parameter(torch.zeros(hidden)) for et in self.relations})
            for _ in range(num_layers))
        self.roots = nn.ModuleList(nn.ModuleDict({t: nn.Linear(hidden, hidden)
                                                  for t in schema.node_types})
                                   for _ in range(num_layers))

    def _combine(self, layer: int, block, msgs: dict, dst: dict) -> dict:
        for et in block.canonical_etypes:
            if et[2] in msgs and block.num_edges(et):
                msgs[et[2]] = msgs[et[2]] + self.biases[layer][edge_key(et)]
        new = {}
        for t, x in dst.items():
            if x.shape[0]:
                root = self.roots[layer][t](x)
                new[t] = root + msgs[t] if t in msgs else root
        return new


class DGLRGCN(_DGLStack):
    """:class:`~oocstore.hetero.models.RGCN` (PyG ``RGCNConv``, mean aggregation) with
    DGL layers: per relation the mean of the in-neighbours times a weight (no bias),
    summed, plus one root weight and bias shared by all types; ReLU and dropout."""

    def _per_layer(self, schema: HeteroSchema, hidden: int, num_layers: int) -> None:
        self.roots = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_layers))

    def _combine(self, layer: int, block, msgs: dict, dst: dict) -> dict:
        return {t: self.roots[layer](x) + msgs[t] if t in msgs else self.roots[layer](x)
                for t, x in dst.items()}
