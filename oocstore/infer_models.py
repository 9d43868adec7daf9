"""The models layer-wise inference (:mod:`oocstore.layerwise`) runs: GraphSAGE, GCN and GAT
as ``oocstore train --model`` builds them, one layer over one block at a time.

Layer-wise inference cuts each layer into blocks of consecutive destinations ``lo..hi-1``
with *all* their in-neighbours. A block is laid out as the sampled blocks the models are
trained on: its sources are the destinations first (local ids ``0..hi-lo-1``), then the
other in-neighbours, so the model's own layer code applies unchanged
(:meth:`LayerwiseModel.layer`) and the result equals the model's forward on the whole
graph as one block ``(edge_index, (n, n))``:

- ``sage``: ``SAGEConv((h, h[:num_dst]), adjacency)``, the mean over all in-neighbours;
- ``gcn``: the model's mean normalisation over the full in-neighbourhood plus the
  self-loop, ``(h_i + Σ_j h_j) / (deg_in(i) + 1)`` (:func:`~oocstore.train.models.
  gcn_adjacency`) — the normalisation the model was trained with, so its full-graph
  forward is what its weights mean (aggregated before the projection, which is the same
  linear map applied to fewer rows);
- ``gat``: ``GATConv((h, h[:num_dst]), edge_index)``: per head, a softmax over every
  in-neighbour of a destination and its self-loop; a block holds whole in-neighbourhoods,
  so each destination's softmax is complete within its block.

:meth:`LayerwiseModel.chunk_cost` gives the bytes a block holds per destination and per
edge for each kind (the rows read, the projections, per-edge attention and messages), which
sizes the blocks within a CPU budget.

Weights come from the file ``train --save-model`` writes (its model description rides in
the state_dict's metadata), from a training checkpoint (entry ``model_spec``), or from a
plain ``state_dict`` whose kind is read from its parameter names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import FormatError, UsageError

#: Fix named when the model file cannot be used.
MODEL_FIX = ("give the file `oocstore train --save-model PATH` wrote (or the "
             "`--checkpoint DIR` of a training run)")

#: Bytes a chunk holds per edge besides the neighbour's row: the neighbour id as read,
#: as int64, its local id in the block, the sparse adjacency's column index and value,
#: and sorting temporaries.
EDGE_BYTES = 56
#: gcn: bytes per adjacency entry (edges and self-loops) of the normalised adjacency:
#: the edge list with the loops appended (2 x int64), the sort by destination (order,
#: sorted copies), column indices, the ones and the 1/degree values.
GCN_ENTRY_BYTES = 72
#: gat: bytes per edge (self-loops included) of GATConv's edge bookkeeping: the edge
#: list without self-loops and with them appended again (2 x int64 each) and masks.
GAT_ENTRY_BYTES = 48


@dataclass
class LayerwiseModel:
    """A trained model, in eval mode on the CPU, and what it is (``spec``)."""

    spec: Any  # oocstore.train.models.ModelSpec
    model: nn.Module
    source: Path
    plan: str | None = None  # the plan a --checkpoint DIR was trained on

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def num_layers(self) -> int:
        return self.spec.layers

    @property
    def dims(self) -> list[int]:
        """Layer widths, input first: ``[in_dim, hidden, ..., classes]``."""
        s = self.spec
        return [s.in_dim] + [s.hidden] * (s.layers - 1) + [s.classes]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())

    def layer(self, i: int,
              x: torch.Tensor,  # [num_src, dims[i]] float32, destinations first
              edge_index: torch.Tensor,  # [2, E] int64 (local source, local destination)
              num_dst: int) -> torch.Tensor:  # [num_dst, dims[i + 1]]
        """Layer ``i`` of the model on one block (ReLU after every layer but the last)."""
        conv = self.model.convs[i]
        num_src = int(x.shape[0])
        with torch.no_grad():
            if self.kind == "sage":
                from .train.model import csr_adjacency

                h = conv((x, x[:num_dst]), csr_adjacency(edge_index, num_src, num_dst))
            elif self.kind == "gcn":
                from .train.models import gcn_adjacency

                # GCNConv is linear before its bias, A (x W) + b = (A x) W + b: aggregating
                # first projects the block's num_dst rows instead of all its sources
                adj = gcn_adjacency(edge_index, num_src, num_dst)
                h = conv.lin(torch.sparse.mm(adj, x))
                if conv.bias is not None:
                    h = h + conv.bias
            else:
                h = self.model._conv(conv, x, edge_index, num_src, num_dst)
            return torch.relu(h) if i < self.num_layers - 1 else h

    def chunk_cost(self, i: int, in_row_bytes: int) -> tuple[int, int]:
        """``(bytes per destination, bytes per edge)`` a block of layer ``i`` holds, its
        input rows stored as ``in_row_bytes`` bytes each.

        Every kind: each source's row as read and as float32 (a block's sources are at
        most its destinations and edges) and :data:`EDGE_BYTES` per edge; per destination
        its ``indptr`` entry, the root term's product and the output's temporaries (two
        products, their sum, ReLU). ``gcn`` adds the aggregated rows and their projection
        per destination and the normalised adjacency's entries (edges and self-loops).
        ``gat`` adds, per source, the projection to ``heads x channels`` and the
        attention product's temporary; per edge (and per destination, for its
        self-loop) the gathered messages, their weighted copy and the scatter's share
        (3 x ``heads x channels``), about ten ``[E, heads]`` temporaries of the softmax
        and the edge bookkeeping; per destination, the destinations' own projection, its
        attention product and the concatenated (or head-averaged) output."""
        d_in, d_out = self.dims[i], self.dims[i + 1]
        row = in_row_bytes + 4 * d_in
        per_dst, per_edge = row + 8 * d_in + 8 + 16 * d_out, row + EDGE_BYTES
        if self.kind == "gcn":
            per_dst += 4 * d_in + 4 * d_out + GCN_ENTRY_BYTES
            per_edge += GCN_ENTRY_BYTES
        elif self.kind == "gat":
            heads = self.spec.heads or 1
            hc = heads * (d_out if i == self.num_layers - 1 else d_out // heads)
            src = 8 * hc + 4 * heads
            edge = 12 * hc + 40 * heads + GAT_ENTRY_BYTES
            per_dst += src + edge + 16 * hc
            per_edge += src + edge
        return per_dst, per_edge


def load_layerwise_model(path: str | os.PathLike) -> LayerwiseModel:
    """The trained model in ``path``: a model file (a ``state_dict``) or a training
    checkpoint (``DIR`` or ``DIR/checkpoint.pt``; its ``model`` entry, the last epoch's
    weights, where the model file holds the best validation epoch's). Read without
    running code; :class:`~oocstore.errors.FormatError` naming the file if it is damaged,
    names an unknown model, or holds weights layer-wise inference cannot run."""
    from .train.checkpoint import CHECKPOINT_FILE, check_layout, load_weights_only
    from .train.models import build_from_spec, check_spec_fits, spec_of_checkpoint

    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_FILE
    if not p.exists():
        raise UsageError(f"checkpoint {p} does not exist: {MODEL_FIX}")
    if not p.is_file():  # a FIFO or a device would block or stream forever
        raise UsageError(f"checkpoint {p} is not a regular file: {MODEL_FIX}")
    raw = load_weights_only(p, "cpu", fix=MODEL_FIX)
    plan, where = None, f"checkpoint {p}"
    if isinstance(raw, dict) and "optimizer" in raw and "model" in raw:
        check_layout(raw, p)  # a training checkpoint: its own layout checks
        plan = raw.get("plan")
        spec = spec_of_checkpoint(raw, where) if "model_spec" in raw else None
        raw = raw["model"]
    else:
        spec = None
    if not isinstance(raw, dict) or not raw or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise FormatError(f"{where} does not hold a state_dict (named tensors): {MODEL_FIX}")
    if spec is None:
        spec = _described(raw, where)
    if spec is None:
        spec = _spec_from_names(raw, p)
    if spec.backend != "pyg":
        raise UsageError(f"{where} holds a {spec.backend} model (--backend {spec.backend}); "
                         "layer-wise inference runs PyG layers: train with --backend pyg")
    spec = replace(spec, dropout=0.0)
    check_spec_fits(spec, raw, where)
    model = build_from_spec(spec)
    model.load_state_dict({k: v.to(torch.float32) for k, v in raw.items()})
    model.eval()
    return LayerwiseModel(spec=spec, model=model, source=p, plan=plan)


def _described(raw: Any, where: str):
    """The model description ``train --save-model`` keeps in the state_dict's metadata
    (:func:`oocstore.train.selection.save_model`), or None; not yet checked against the
    weights (a model of another backend is refused before it is built)."""
    from .train.models import ModelSpec

    meta = getattr(raw, "_metadata", None) or {}
    entry = meta.get("") if isinstance(meta, Mapping) else None
    value = entry.get("oocstore_model") if isinstance(entry, Mapping) else None
    return None if value is None else ModelSpec.from_dict(value, where)


def _spec_from_names(raw: Mapping[str, torch.Tensor], p: Path):
    """The model a plain ``state_dict`` (no model description) holds, from its parameter
    names and shapes: ``convs.i.lin_l`` / ``lin_r`` (sage), ``convs.i.lin`` and
    ``convs.i.bias`` (gcn), ``convs.i.att_src`` (gat, heads from its shape)."""
    from .train.models import ModelSpec

    n = 0
    while any(k.startswith(f"convs.{n}.") for k in raw):
        n += 1
    first, last = "convs.0.", f"convs.{n - 1}."
    if n and first + "lin_l.weight" in raw:
        return _sage_spec(raw, p, n)
    if n and first + "lin.weight" in raw and last + "lin.weight" in raw:
        w0, wl = raw[first + "lin.weight"], raw[last + "lin.weight"]
        att = raw.get(first + "att_src")
        if att is None and w0.dim() == 2 and wl.dim() == 2:
            hidden = int(w0.shape[0]) if n > 1 else int(wl.shape[0])
            return ModelSpec("gcn", int(w0.shape[1]), hidden, int(wl.shape[0]), n)
        if att is not None and att.dim() == 3 and w0.dim() == 2 and wl.dim() == 2:
            heads = int(att.shape[1])
            hidden = int(w0.shape[0]) if n > 1 else heads
            return ModelSpec("gat", int(w0.shape[1]), hidden, int(wl.shape[0]) // heads, n,
                             heads=heads)
    raise FormatError(f"checkpoint {p} has no convs.0.lin_l.weight, convs.0.lin.weight or "
                      "convs.0.att_src: it is not a PyG GraphSAGE's, GCN's or GAT's state_dict "
                      f"(`oocstore train --backend pyg --model sage|gcn|gat`); {MODEL_FIX}")


def _sage_spec(raw: Mapping[str, torch.Tensor], p: Path, n: int):
    """A GraphSAGE's spec from its ``state_dict``, every layer's shapes checked."""
    from .train.models import ModelSpec

    dims: list[int] = []
    for i in range(n):
        wl, bl = raw.get(f"convs.{i}.lin_l.weight"), raw.get(f"convs.{i}.lin_l.bias")
        wr = raw.get(f"convs.{i}.lin_r.weight")
        ok = (wl is not None and wl.dim() == 2 and wr is not None and wr.shape == wl.shape
              and bl is not None and bl.shape == (wl.shape[0],)
              and all(t.is_floating_point() for t in (wl, bl, wr))
              and (not dims or wl.shape[1] == dims[-1]) and min(wl.shape) >= 1)
        if not ok:
            raise FormatError(f"checkpoint {p}: layer {i}'s weights (convs.{i}.lin_l / "
                              f"lin_r) are not those of a SAGEConv following the layer "
                              f"before: {MODEL_FIX}")
        if not dims:
            dims.append(int(wl.shape[1]))
        dims.append(int(wl.shape[0]))
    if len(set(dims[1:-1])) > 1:
        raise FormatError(f"checkpoint {p}: hidden layers of widths "
                          f"{', '.join(map(str, dims[1:-1]))}; oocstore's GraphSAGE has one "
                          f"hidden width: {MODEL_FIX}")
    expected = {f"convs.{i}.{k}" for i in range(n)
                for k in ("lin_l.weight", "lin_l.bias", "lin_r.weight")}
    extra = sorted(set(raw) - expected)
    if extra:
        raise FormatError(f"checkpoint {p} has entries {', '.join(extra[:3])}: it is not a "
                          "PyG GraphSAGE's state_dict (`oocstore train --backend pyg --model "
                          f"sage`); {MODEL_FIX}")
    return ModelSpec("sage", dims[0], dims[1] if n > 1 else dims[-1], dims[-1], n)


def layerwise_from_module(model: nn.Module, source: str = "the training run's model"
                          ) -> LayerwiseModel:
    """A :class:`LayerwiseModel` of a model built by :func:`~oocstore.train.models.
    build_from_spec` (``model.spec``): a CPU copy of its current weights, in eval mode
    (what ``train --eval full`` evaluates each epoch)."""
    from .train.models import build_from_spec

    spec = getattr(model, "spec", None)
    if spec is None:
        raise UsageError("the model has no .spec (build it with oocstore.train.models."
                         "build_from_spec): layer-wise inference needs to know its kind")
    if spec.backend != "pyg":
        raise UsageError(f"full-graph evaluation runs PyG layers; this model is a "
                         f"{spec.backend} model: use --backend pyg or --eval sampled")
    spec = replace(spec, dropout=0.0)
    copy = build_from_spec(spec)
    copy.load_state_dict({k: v.detach().to("cpu", torch.float32)
                          for k, v in model.state_dict().items()})
    copy.eval()
    return LayerwiseModel(spec=spec, model=copy, source=Path(source))


__all__ = ["EDGE_BYTES", "LayerwiseModel", "MODEL_FIX", "layerwise_from_module",
           "load_layerwise_model"]
