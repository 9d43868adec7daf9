"""PyTorch Geometric form of a sampled batch.

A :class:`~oocstore.plan.SampledBatch` already is what PyG's bipartite message passing
wants: every layer's source and destination nodes are prefixes of ``input_nodes``, so
layer ``l`` is one ``edge_index`` ``[2, E_l]`` in local ids (row 0 source, row 1
destination) plus its ``size = (num_src_l, num_dst_l)``. A model computes layer ``l`` as
``conv((h, h[:num_dst_l]), edge_index_l, size=size_l)`` and keeps the ``num_dst_l``
output rows; after the last layer the rows are the seeds, in ``batch.seeds`` order.

:func:`to_pyg` needs only torch. :func:`require_pyg` imports ``torch_geometric`` on
demand (it is the ``oocstore[pyg]`` extra) and says how to install it when missing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch

from ..errors import FormatError
from ..plan import SampledBatch

PYG_INSTALL_HINT = "pip install 'oocstore[pyg]'"


def require_pyg() -> ModuleType:
    """Import and return ``torch_geometric``, or raise
    :class:`~oocstore.integrations.MissingDependencyError` naming the extra to install."""
    try:
        import torch_geometric
    except ImportError as err:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(
            f"PyTorch Geometric is not installed (import torch_geometric failed: {err}): "
            f"install it with `{PYG_INSTALL_HINT}`") from err
    return torch_geometric


class PygLayer(NamedTuple):
    """One layer (message-flow graph) in PyG form; unpacks as ``edge_index, size``."""

    edge_index: torch.Tensor  # [2, num_edges] int64: row 0 local source, row 1 local destination
    size: tuple[int, int]  # (num_src, num_dst)


@dataclass(frozen=True)
class PygBatch:
    """A sampled batch as PyG tensors. ``layers[0]`` is the input-side layer,
    ``layers[-1]`` ends at the seeds (``input_nodes[:num_seeds]``)."""

    layers: list[PygLayer]
    input_nodes: torch.Tensor  # [num_input] int64 global ids (feature rows, in this order)
    num_seeds: int
    epoch: int = -1
    batch: int = -1

    @property
    def seeds(self) -> torch.Tensor:  # [num_seeds] int64 global ids
        return self.input_nodes[:self.num_seeds]

    @property
    def num_edges(self) -> int:
        return sum(int(layer.edge_index.shape[1]) for layer in self.layers)

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> "PygBatch":
        """The same batch with its tensors on ``device``."""
        layers = [PygLayer(layer.edge_index.to(device, non_blocking=non_blocking), layer.size)
                  for layer in self.layers]
        return dataclasses.replace(self, layers=layers,
                                   input_nodes=self.input_nodes.to(device, non_blocking=non_blocking))


def to_pyg(batch: SampledBatch) -> PygBatch:
    """Convert ``batch`` to PyG tensors (CPU; one copy of the edge lists).

    Checks the prefix chain that the model relies on (layer ``l``'s destinations are
    layer ``l + 1``'s sources, the first layer's sources are the input nodes, the last
    layer's destinations are the seeds) and raises :class:`~oocstore.errors.FormatError`
    if a batch breaks it.
    """
    num_input = int(batch.input_nodes.shape[0])
    num_seeds = int(batch.seeds.shape[0])
    where = f"batch {batch.batch} of epoch {batch.epoch}"
    expected_src = num_input
    layers = []
    for i, block in enumerate(batch.blocks):
        if block.num_src != expected_src or block.num_dst > block.num_src:
            raise FormatError(f"{where}: layer {i} has {block.num_src} source and {block.num_dst} "
                              f"destination nodes, expected {expected_src} sources and at most as "
                              "many destinations: the plan is damaged; re-sample it with --overwrite")
        edge_index = torch.from_numpy(np.stack([np.asarray(block.src, dtype=np.int64),
                                                np.asarray(block.dst, dtype=np.int64)]))
        layers.append(PygLayer(edge_index, (int(block.num_src), int(block.num_dst))))
        expected_src = block.num_dst
    if layers and expected_src != num_seeds:
        raise FormatError(f"{where}: the last layer ends at {expected_src} nodes but the batch has "
                          f"{num_seeds} seeds: the plan is damaged; re-sample it with --overwrite")
    return PygBatch(layers=layers,
                    input_nodes=torch.from_numpy(np.asarray(batch.input_nodes, dtype=np.int64).copy()),
                    num_seeds=num_seeds, epoch=batch.epoch, batch=batch.batch)


# -- one edge_index for PyG's ready-made models (trim-to-layer form) ----------------------

@dataclass(frozen=True)
class PygHops:
    """A sampled batch as one graph over all its nodes, the form PyG's ``NeighborLoader``
    gives and its ready-made models (``torch_geometric.nn.models.GraphSAGE``, ``GAT``,
    ``GCN``, ...) consume with trim-to-layer::

        out = model(x, hops.edge_index,
                    num_sampled_nodes_per_hop=hops.num_sampled_nodes,
                    num_sampled_edges_per_hop=hops.num_sampled_edges)[:hops.num_seeds]

    Nodes are ``input_nodes`` (seeds first, then the nodes each hop added, in order), so
    ``num_sampled_nodes[h]`` is the number of nodes first reached at hop ``h`` (hop 0:
    the seeds). Edges are grouped by the hop of their destination: the destinations at
    hop ``h`` have the in-edges of block ``L - 1 - h`` (the block whose fanout the plan
    drew for that hop; ``fanouts[-1]`` is the seeds'), and ``num_sampled_edges[h]`` counts
    them. PyG's layer ``i`` drops the last ``i`` node and edge groups, so it sees the
    destinations of hops ``0 .. L - 1 - i`` with all their sources.

    Difference from the layer-wise form (:func:`to_pyg`): a plan samples each layer's
    neighbours for all of that layer's destinations afresh, so a node that is a
    destination in several layers may have a different neighbour sample in each; here it
    keeps one (its hop's), as in PyG's own sampler. With full neighbourhoods
    (``--fanouts all``) or one layer the two forms compute the same thing.
    """

    edge_index: torch.Tensor  # [2, E] int64 local ids (row 0 source, row 1 destination)
    num_sampled_nodes: list[int]  # [L + 1]: seeds, then the nodes each hop added
    num_sampled_edges: list[int]  # [L]: in-edges of the destinations of hop 0, 1, ...
    input_nodes: torch.Tensor  # [num_input] int64 global ids (feature rows, in this order)
    num_seeds: int

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> "PygHops":
        return dataclasses.replace(
            self, edge_index=self.edge_index.to(device, non_blocking=non_blocking),
            input_nodes=self.input_nodes.to(device, non_blocking=non_blocking))


def to_pyg_hops(batch: SampledBatch) -> PygHops:
    """Convert ``batch`` to the one-``edge_index`` form of :class:`PygHops` (CPU).

    Checks the same prefix chain as :func:`to_pyg` (FormatError if a batch breaks it)."""
    layers = to_pyg(batch).layers  # checked
    num_layers = len(layers)
    num_input = int(batch.input_nodes.shape[0])
    num_seeds = int(batch.seeds.shape[0])
    # Hop h's destinations are those of block L-1-h that the block nearer the seeds
    # (block L-h) does not have: local ids [num_dst of block L-h, num_dst of block L-1-h).
    nodes = [num_seeds]
    edges = []
    parts = []
    for h in range(num_layers):
        b = num_layers - 1 - h
        edge_index, (num_src, num_dst) = layers[b]
        lo = 0 if h == 0 else layers[b + 1].size[1]
        dst = edge_index[1]
        part = edge_index[:, (dst >= lo) & (dst < num_dst)]
        parts.append(part)
        edges.append(int(part.shape[1]))
        nodes.append(num_src - num_dst)
    if not num_layers:
        nodes = [num_input]
    edge_index = (torch.cat(parts, dim=1) if parts else torch.zeros((2, 0), dtype=torch.int64))
    return PygHops(edge_index=edge_index, num_sampled_nodes=nodes, num_sampled_edges=edges,
                   input_nodes=torch.from_numpy(np.asarray(batch.input_nodes,
                                                           dtype=np.int64).copy()),
                   num_seeds=num_seeds)


def is_pyg_basic_gnn(model) -> bool:
    """Whether ``model`` is one of PyG's ready-made models (``BasicGNN``: GraphSAGE, GAT,
    GCN, GIN, PNA, EdgeCNN), which take one ``edge_index`` and trim-to-layer counts.
    False without importing PyG when it was never imported."""
    import sys

    mod = sys.modules.get("torch_geometric.nn.models.basic_gnn")
    return mod is not None and isinstance(model, mod.BasicGNN)
