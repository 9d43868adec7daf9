"""GraphSAGE over sampled batches: shapes, and SAGEConv against a hand-written mean."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from oocstore.errors import FormatError, UsageError
from oocstore.integrations import to_pyg
from oocstore.plan import PlanReader
from oocstore.store import Store
from oocstore.train import GraphSAGE
from oocstore.train.model import csr_adjacency
from oocstore.samplers import sample_plan

# A tiny 2-layer batch: 7 input nodes, layer 0 ends at 4 nodes, layer 1 at 2 seeds.
# Destination 3 of layer 0 and seed 1 of layer 1 have no in-edges (their mean is 0).
LAYERS = [
    (torch.tensor([[0, 4, 5, 2, 6, 1, 0], [0, 0, 0, 1, 1, 2, 2]]), (7, 4)),
    (torch.tensor([[1, 2, 3], [0, 0, 0]]), (4, 2)),
]


def dense_reference(model: GraphSAGE, x: torch.Tensor, layers) -> torch.Tensor:
    """mean over in-neighbours, then lin_l; plus lin_r of the destination itself."""
    h = x.float()
    for i, (conv, (edge_index, (ns, nd))) in enumerate(zip(model.convs, layers)):
        adj = torch.zeros(nd, ns)
        for s, d in edge_index.t().tolist():
            adj[d, s] += 1.0
        deg = adj.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean = (adj / deg) @ h
        w_l, b_l, w_r = conv.lin_l.weight, conv.lin_l.bias, conv.lin_r.weight
        assert conv.lin_r.bias is None
        h = mean @ w_l.t() + b_l + h[:nd] @ w_r.t()
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h


@pytest.mark.parametrize("sparse", [True, False])
def test_matches_dense_computation(sparse):
    torch.manual_seed(0)
    model = GraphSAGE(5, 8, 3, 2, dropout=0.5, sparse=sparse).eval()
    x = torch.randn(7, 5)
    out = model(x, LAYERS)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, dense_reference(model, x, LAYERS), rtol=1e-5, atol=1e-6)


def test_sparse_and_scatter_paths_agree_with_gradients():
    torch.manual_seed(1)
    model = GraphSAGE(5, 8, 3, 2, dropout=0.0)
    x = torch.randn(7, 5, requires_grad=True)
    grads = []
    for sparse in (True, False):
        model.sparse = sparse
        model.zero_grad()
        x.grad = None
        model(x, LAYERS).square().sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_float16_features_are_cast_on_the_device():
    torch.manual_seed(2)
    model = GraphSAGE(5, 8, 3, 2).eval()
    x = torch.randn(7, 5).half()
    out = model(x, LAYERS)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x.float(), LAYERS))


def test_output_has_one_row_per_seed(small_store_template, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(small_store_template, path)
    with Store(path, readonly=False) as store:
        sample_plan(store, fanouts="5,all,3", batch_size=100, epochs=1, seed=0, name="p")
        reader = PlanReader(store, "p")
        feats = torch.from_numpy(np.array(store.array("features")))
        torch.manual_seed(0)
        model = GraphSAGE(feats.shape[1], 16, 4, 3).eval()
        for batch in reader.iter_batches(0):
            pyg = to_pyg(batch)
            out = model(feats[pyg.input_nodes], pyg.layers)
            assert out.shape == (batch.seeds.size, 4)
            model.sparse = False
            torch.testing.assert_close(model(feats[pyg.input_nodes], pyg.layers), out,
                                       rtol=1e-4, atol=1e-5)
            model.sparse = True


def test_refuses_mismatched_batches():
    model = GraphSAGE(5, 8, 3, 2)
    with pytest.raises(UsageError, match="1 layers but the model has 2"):
        model(torch.randn(7, 5), LAYERS[:1])
    with pytest.raises(UsageError, match="x has 6 rows.*7 source nodes"):
        model(torch.randn(6, 5), LAYERS)


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_dim=0), "in_dim 0"), (dict(num_layers=0), "num_layers 0"),
    (dict(hidden=2.5), "hidden 2.5"), (dict(dropout=1.0), "dropout 1.0"),
])
def test_refuses_bad_shapes(kwargs, match):
    args = dict(in_dim=5, hidden=8, num_classes=3, num_layers=2) | kwargs
    with pytest.raises(UsageError, match=match):
        GraphSAGE(**args)


def test_csr_adjacency_sorts_and_checks_edges():
    edge_index = torch.tensor([[2, 0, 1, 2], [1, 0, 1, 0]])  # not grouped by destination
    adj = csr_adjacency(edge_index, 3, 2).to_dense()
    torch.testing.assert_close(adj, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    with pytest.raises(FormatError, match="source id outside 0..1"):
        csr_adjacency(edge_index, 2, 2)
