"""DGL form of a sampled batch: one message-flow graph (``dgl.create_block``) per layer.

A :class:`~oocstore.plan.SampledBatch` is laid out the way DGL blocks are: layer ``l``
has source nodes ``input_nodes[:num_src_l]`` and destination nodes
``input_nodes[:num_dst_l]`` (destinations first), its edges in local ids. So block ``l``
is ``dgl.create_block((src_l, dst_l), num_src_nodes=num_src_l, num_dst_nodes=num_dst_l)``
with the global ids in ``srcdata[dgl.NID]`` / ``dstdata[dgl.NID]``, exactly what
``dgl.dataloading.NeighborSampler`` hands a model: ``blocks[0]`` takes the features of
``input_nodes``, ``blocks[-1]`` ends at the seeds.

DGL is imported on demand (:func:`require_dgl`). PyPI's DGL 2.1 is a CPU build that
needs torch 2.2 and numpy < 2, so it does not live in the main environment: the DGL
environment ``.venv-dgl`` is made by ``make test-dgl`` (or ``tools/dgl_env.sh``). This
module therefore uses only torch APIs that torch 2.2 has.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch

from ..plan import SampledBatch
from .pyg import to_pyg

if TYPE_CHECKING:  # pragma: no cover - typing only
    import dgl

DGL_ENV_HINT = ("run `make test-dgl` (or `tools/dgl_env.sh`) to build the DGL environment "
                ".venv-dgl and use its python (.venv-dgl/bin/python): DGL 2.1 needs torch 2.2 "
                "and numpy<2, so it lives in its own virtual environment")


def require_dgl() -> ModuleType:
    """Import and return ``dgl``, or raise
    :class:`~oocstore.integrations.MissingDependencyError` saying how to get it."""
    try:
        import dgl
    except ImportError as err:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(f"DGL is not installed (import dgl failed: {err}): "
                                     f"{DGL_ENV_HINT}") from err
    if getattr(dgl, "__file__", None) is None:
        # A bare folder named ``dgl`` on sys.path (a test folder of that name, with its
        # parent on the path) imports as an empty namespace package when the real one is
        # absent.
        from ..errors import MissingDependencyError

        raise MissingDependencyError(f"DGL is not installed (`import dgl` found only the folder "
                                     f"{', '.join(getattr(dgl, '__path__', []))}): {DGL_ENV_HINT}")
    return dgl


def to_dgl(batch: SampledBatch, device: torch.device | str | None = None) -> list["dgl.DGLGraph"]:
    """``batch`` as DGL blocks, ``blocks[0]`` the input-side layer (on ``device``, default CPU).

    Block ``l`` has ``num_src_l`` source and ``num_dst_l`` destination nodes, the plan's
    edges of layer ``l`` (local ids, int64) and ``srcdata[dgl.NID]`` /
    ``dstdata[dgl.NID]`` set to ``input_nodes[:num_src_l]`` / ``input_nodes[:num_dst_l]``.
    The prefix chain is checked as in :func:`~oocstore.integrations.pyg.to_pyg`; a batch
    that breaks it raises :class:`~oocstore.errors.FormatError`.
    """
    dgl = require_dgl()
    pyg = to_pyg(batch)  # validates the prefix chain; int64 copies of the edge lists
    blocks = []
    for (edge_index, (num_src, num_dst)) in pyg.layers:
        block = dgl.create_block((edge_index[0], edge_index[1]), num_src_nodes=num_src,
                                 num_dst_nodes=num_dst, idtype=torch.int64)
        block.srcdata[dgl.NID] = pyg.input_nodes[:num_src]
        block.dstdata[dgl.NID] = pyg.input_nodes[:num_dst]
        blocks.append(block if device is None else block.to(device))
    return blocks
