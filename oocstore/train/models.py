"""The models ``oocstore train --model`` builds: GraphSAGE, GCN and GAT over sampled
batches, behind one factory (:func:`build_model`).

Every model consumes a batch as :class:`~oocstore.train.model.GraphSAGE` does: ``x``
``[num_input, D]`` (the features of ``batch.input_nodes`` in that order) and ``layers``,
the per-layer ``(edge_index, size)`` list of :func:`oocstore.integrations.pyg.to_pyg`,
input side first. Each layer is a bipartite block whose destinations are a prefix of its
sources (local id ``i < num_dst`` is the same node on both sides), so layer ``l`` maps
``num_src_l`` rows to ``num_dst_l`` rows and the last layer's rows are the seeds' logits.
ReLU and dropout follow every layer but the last, as in GraphSAGE.

- ``sage``: :class:`~oocstore.train.model.GraphSAGE` (mean aggregation), unchanged.
- ``gcn``: a graph convolution with self-loops and right (mean) normalisation on the
  sampled block, ``h'_i = W · (h_i + Σ_{j ∈ N(i)} h_j) / (|N(i)| + 1) + b`` where ``N(i)``
  are the sampled in-neighbours of destination ``i``. PyG's ``GCNConv`` cannot normalise
  a bipartite block itself (its symmetric norm counts degrees on one node set), so it
  runs with ``normalize=False, add_self_loops=False`` over an adjacency that already
  holds the self-loops and the ``1 / (|N(i)| + 1)`` weights (:func:`gcn_adjacency`): one
  sparse-dense product per layer, no pyg-lib or torch-sparse needed.
- ``gat``: PyG ``GATConv`` on ``(h, h[:num_dst])`` with self-loops (destination ``i``
  attends to itself and its sampled in-neighbours). Hidden layers have ``heads`` heads
  of ``hidden // heads`` channels, concatenated (width ``hidden``); the last layer has
  ``heads`` heads of ``classes`` channels, averaged. Attention gathers per-edge messages
  (``[E, hidden]``, after the projection, so the input width does not enter).

The DGL backend offers ``sage`` only (:data:`BACKEND_MODELS`).

A model's kind and hyper-parameters are a :class:`ModelSpec`; training checkpoints keep
it (entry ``model_spec``) so that evaluation rebuilds the model with
:func:`model_from_checkpoint`; checkpoints without the entry hold a GraphSAGE.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import FormatError, UsageError
from ..integrations.pyg import require_pyg, to_pyg
from ..plan import SampledBatch
from ..units import format_size
from .model import GraphSAGE, SAGEStack, check_batch_input, csr_adjacency

MODELS = ("sage", "gcn", "gat")
BACKEND_MODELS = {"pyg": MODELS, "dgl": ("sage",)}
DEFAULT_HEADS = 4  # gat's heads when --heads is not given


@dataclass(frozen=True)
class ModelSpec:
    """What :func:`build_model` needs to rebuild a model (kept in checkpoints)."""

    kind: str
    in_dim: int
    hidden: int
    classes: int
    layers: int
    heads: int | None = None  # gat only
    dropout: float = 0.5
    backend: str = "pyg"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Any, where: str) -> "ModelSpec":
        names = set(cls.__dataclass_fields__)
        if not isinstance(value, dict) or not set(value) <= names:
            raise FormatError(f"{where}: entry 'model_spec' is not a model description "
                              f"(keys {', '.join(sorted(names))}): it is damaged or was not "
                              "written by `oocstore train`")
        try:
            spec = cls(**value)
            for key in ("in_dim", "hidden", "classes", "layers"):
                v = getattr(spec, key)
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise UsageError(f"{key} {v!r} is not a positive integer")
            if not isinstance(spec.dropout, (int, float)) or not 0 <= spec.dropout < 1:
                raise UsageError(f"dropout {spec.dropout!r} is not in [0, 1)")
            check_model_args(spec.kind, spec.hidden, spec.heads, spec.backend)
        except (TypeError, UsageError) as err:
            raise FormatError(f"{where}: entry 'model_spec' {value!r} does not describe a "
                              f"model ({err}): it is damaged or was not written by "
                              "`oocstore train`") from err
        return spec


def check_model_args(kind: str, hidden: int, heads: int | None, backend: str = "pyg",
                     dropout: float | None = None) -> None:
    """Refuse a model choice that cannot be built: an unknown kind, a kind the backend
    does not offer, ``hidden < 1``, a dropout outside [0, 1), ``heads`` for a model
    without attention, ``heads < 1``, a hidden width that does not split into the heads.
    (``oocstore train`` checks this before it writes evaluation plans.)"""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise UsageError(f"hidden={hidden}: give 1 or more hidden units")
    if dropout is not None and not 0.0 <= float(dropout) < 1.0:
        raise UsageError(f"dropout={dropout}: give a probability in [0, 1)")
    if kind not in MODELS:
        raise UsageError(f"model={kind!r}: use one of {', '.join(MODELS)}")
    offered = BACKEND_MODELS.get(backend, ())
    if kind not in offered:
        raise UsageError(f"model={kind!r} is not offered by the {backend} backend (it offers: "
                         f"{', '.join(offered)}): use backend='pyg' or model='sage'")
    if heads is not None:
        if kind != "gat":
            raise UsageError(f"heads={heads}: only model='gat' has attention heads; use "
                             "model='gat', or leave the heads out")
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise UsageError(f"heads={heads}: give 1 or more attention heads")
        if hidden % heads:
            raise UsageError(f"hidden={hidden} does not split into heads={heads} equal heads: "
                             f"give hidden={-(-hidden // heads) * heads} (or another multiple "
                             f"of {heads})")


def check_layers(layers: int | None, plan_layers: int, plan: str) -> None:
    """``--layers`` must equal the plan's number of fanouts (one sampled hop per layer)."""
    if layers is not None and layers != plan_layers:
        raise UsageError(f"layers={layers} does not match plan {plan!r}, which samples "
                         f"{plan_layers} layer(s) (one per fanout): give layers={plan_layers}, "
                         f"or sample a plan with {layers} fanouts (`oocstore sample STORE "
                         "--fanouts ...`)")


def gcn_adjacency(edge_index: torch.Tensor,  # [2, E] int64 (source, destination)
                  num_src: int, num_dst: int) -> torch.Tensor:  # sparse CSR [num_dst, num_src]
    """The block's adjacency with a self-loop on every destination and each row
    scaled to sum to 1: weight ``1 / (|N(i)| + 1)`` on the edges into destination ``i``."""
    loops = torch.arange(num_dst, device=edge_index.device)
    with_loops = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
    adj = csr_adjacency(with_loops, num_src, num_dst)
    crow, col = adj.crow_indices(), adj.col_indices()
    deg = crow.diff()
    values = (1.0 / deg.to(torch.float32)).repeat_interleave(deg)
    return torch.sparse_csr_tensor(crow, col, values, size=(num_dst, num_src),
                                   check_invariants=False)


class _Stack(SAGEStack):
    """Layer loop shared by GCN and GAT: ``_conv(i, conv, h, edge_index, num_src, num_dst)``
    gives layer ``i``'s ``num_dst`` output rows."""

    def forward(self, x: torch.Tensor,  # [num_input, in_dim], input_nodes order
                layers: Sequence[tuple[torch.Tensor, tuple[int, int]]],
                ) -> torch.Tensor:  # [num_seeds, num_classes] logits
        check_batch_input(len(layers), len(self.convs), x, layers[0][1][0] if layers else None)
        return self._layers(x, layers, lambda conv, h, layer: self._conv(
            conv, h, layer[0], int(layer[1][0]), int(layer[1][1])))

    def forward_batch(self, batch: SampledBatch, x: torch.Tensor) -> torch.Tensor:
        """Logits for the seeds of ``batch`` (the training loop's entry point)."""
        return self(x, to_pyg(batch).to(x.device, non_blocking=True).layers)


class GCN(_Stack):
    """``num_layers`` graph convolutions with self-loops and mean normalisation on the
    sampled block (module docstring)."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, num_layers: int,
                 dropout: float = 0.5):
        require_pyg()
        from torch_geometric.nn import GCNConv

        super().__init__(lambda i, o: GCNConv(i, o, add_self_loops=False, normalize=False),
                         in_dim, hidden, num_classes, num_layers, dropout)

    def _conv(self, conv, h, edge_index, num_src, num_dst):
        # GCNConv projects all num_src rows, then the [num_dst, num_src] product keeps
        # the destinations' rows only
        return conv(h, gcn_adjacency(edge_index, num_src, num_dst))


class GAT(_Stack):
    """``num_layers`` ``GATConv`` layers with ``heads`` heads (module docstring)."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, num_layers: int,
                 dropout: float = 0.5, heads: int = DEFAULT_HEADS):
        require_pyg()
        from torch_geometric.nn import GATConv

        check_model_args("gat", hidden, heads)
        last = num_layers - 1
        count = iter(range(num_layers))

        def make(i_dim: int, o_dim: int) -> nn.Module:
            if next(count) == last:
                return GATConv(i_dim, o_dim, heads=heads, concat=False)
            return GATConv(i_dim, o_dim // heads, heads=heads, concat=True)

        super().__init__(make, in_dim, hidden, num_classes, num_layers, dropout)
        self.heads = heads

    def _conv(self, conv, h, edge_index, num_src, num_dst):
        return conv((h, h[:num_dst]), edge_index, size=(num_src, num_dst))


def build_model(name: str, in_dim: int, hidden: int, classes: int, layers: int,
                heads: int | None = None, dropout: float = 0.5, *,
                backend: str = "pyg") -> nn.Module:
    """The model ``name`` (``sage``, ``gcn`` or ``gat``) of ``layers`` layers from
    ``in_dim`` features to ``classes`` logits; ``heads`` for gat only (default
    :data:`DEFAULT_HEADS`). Refuses what :func:`check_model_args` refuses."""
    check_model_args(name, hidden, heads, backend)
    if backend == "dgl":
        from .dgl_model import DGLGraphSAGE

        return DGLGraphSAGE(in_dim, hidden, classes, layers, dropout)
    if name == "gcn":
        return GCN(in_dim, hidden, classes, layers, dropout)
    if name == "gat":
        return GAT(in_dim, hidden, classes, layers, dropout,
                   heads=DEFAULT_HEADS if heads is None else heads)
    return GraphSAGE(in_dim, hidden, classes, layers, dropout=dropout)


def build_from_spec(spec: ModelSpec) -> nn.Module:
    """:func:`build_model` of ``spec``; the model keeps it as ``model.spec`` (what
    checkpoints and the model file record)."""
    model = build_model(spec.kind, spec.in_dim, spec.hidden, spec.classes, spec.layers,
                        spec.heads, spec.dropout, backend=spec.backend)
    model.spec = spec
    return model


def model_bytes(spec: ModelSpec) -> int:
    """Bytes the model of ``spec`` holds while it trains: its float32 weights, their
    gradients and Adam's two moments (4 copies), counted on a model without storage."""
    with torch.device("meta"):
        model = build_model(spec.kind, spec.in_dim, spec.hidden, spec.classes, spec.layers,
                            spec.heads, spec.dropout, backend=spec.backend)
    return 4 * sum(p.numel() * 4 for p in model.parameters())


def check_model_fits(spec: ModelSpec, limit: int | None = None) -> None:
    """Refuse a model that cannot be held in ``limit`` bytes (default: this machine's
    memory) while it trains, before anything is allocated or written: ``--hidden
    100000000000`` is a clear error, not an allocator's traceback."""
    if limit is None:
        try:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    need = model_bytes(spec)
    if need > limit:
        raise UsageError(f"hidden={spec.hidden} layers={spec.layers} gives a {spec.kind} "
                         f"model of {format_size(need)} (weights, gradients and Adam's "
                         f"state), more than this machine's {format_size(limit)} of memory: "
                         f"lower hidden={spec.hidden}")


def heads_of(kind: str, heads: int | None) -> int | None:
    """The heads a model of ``kind`` is built with (gat's default when not given)."""
    return (DEFAULT_HEADS if heads is None else heads) if kind == "gat" else None


def check_resume_model(state: Mapping[str, Any], cfg: Any, path: Any) -> None:
    """Refuse to resume a checkpoint of another model than ``cfg``'s (``--model``,
    ``--heads``); a checkpoint written before the choice existed holds a sage model."""
    saved = state.get("model_spec")
    if not isinstance(saved, dict):
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
        saved = {"kind": config.get("model", "sage"), "heads": config.get("heads")}
    kind, heads = saved.get("kind"), heads_of(str(saved.get("kind")), saved.get("heads"))
    mine = (cfg.model, heads_of(cfg.model, cfg.heads))
    if (kind, heads) != mine:
        def say(k, h):
            return f"--model {k}" + (f" --heads {h}" if h is not None else "")
        raise FormatError(f"checkpoint {path} holds a {say(kind, heads)} model, this run asks "
                          f"for {say(*mine)}: resume with {say(kind, heads)}, or start a new "
                          "run without --resume")


def spec_of_checkpoint(state: Mapping[str, Any], where: str) -> ModelSpec:
    """The model a training checkpoint holds: its ``model_spec``, or, for a checkpoint
    written before models had a choice, a GraphSAGE sized from its weights and config."""
    if "model_spec" in state:
        return ModelSpec.from_dict(state["model_spec"], where)
    weights = state["model"]
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    try:
        n = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("convs."))
        first = weights["convs.0.lin_l.weight"]
        out = weights[f"convs.{n - 1}.lin_l.weight"]
    except (KeyError, ValueError, IndexError) as err:
        raise FormatError(f"{where}: its weights are not a GraphSAGE's and it names no "
                          "model (entry 'model_spec'): it was not written by `oocstore "
                          "train`") from err
    return ModelSpec("sage", int(first.shape[1]), int(first.shape[0]) if n > 1 else
                     int(config.get("hidden", 256)), int(out.shape[0]), n,
                     dropout=float(config.get("dropout", 0.5)),
                     backend=str(config.get("backend", "pyg")))


def check_spec_fits(spec: ModelSpec, weights: Mapping[str, Any], where: str) -> None:
    """Refuse weights whose names or shapes are not those of ``spec``'s model. Compared
    on a model without storage, so a damaged or crafted spec (``hidden`` of 10**12) is
    refused before its model is allocated."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_from_spec(spec).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if have != shapes:
        bad = sorted(k for k in shapes.keys() | have.keys() if shapes.get(k) != have.get(k))
        raise FormatError(f"{where}: its weights do not fit the {spec.kind} model it names "
                          f"(model spec {spec.to_dict()}; {bad[0]}: weights "
                          f"{have.get(bad[0])}, model {shapes.get(bad[0])}): it is damaged or "
                          "was not written by `oocstore train`")


def spec_of_state_dict(state: Mapping[str, Any], where: str) -> ModelSpec | None:
    """The model a ``--save-model`` file names (:func:`oocstore.train.selection.save_model`
    keeps it in the state_dict's metadata), or None for a file without it (a sage model
    written before models had a choice). A spec the weights do not fit is refused."""
    meta = getattr(state, "_metadata", None) or {}
    value = meta.get("", {}).get("oocstore_model") if isinstance(meta.get(""), dict) else None
    if value is None:
        return None
    spec = ModelSpec.from_dict(value, where)
    check_spec_fits(spec, state, where)
    return spec


def model_from_checkpoint(state: Mapping[str, Any], where: str) -> tuple[nn.Module, ModelSpec]:
    """The model of a loaded training checkpoint, rebuilt and with its weights."""
    spec = spec_of_checkpoint(state, where)
    weights = state["model"] if isinstance(state.get("model"), Mapping) else {}
    check_spec_fits(spec, weights, where)
    model = build_from_spec(spec)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise FormatError(f"{where}: its weights do not fit the {spec.kind} model it names "
                          f"({str(err).splitlines()[0][:200]}): it is damaged") from err
    return model, spec
