"""PyG's ready-made models (torch_geometric.nn.models) on oocstore batches.

The one-``edge_index`` form (:func:`to_pyg_hops`) with trim-to-layer must compute what
our layer-wise GraphSAGE computes on the same weights wherever the two forms mean the
same thing (full neighbourhoods, or one layer), and GAT / GCN must train on it through
the project's own loop and loader.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from oocstore.budget import MemoryBudget
from oocstore.integrations.pyg import to_pyg, to_pyg_hops
from oocstore.loader import NodeLoader
from oocstore.pack import PackOptions, pack_plan
from oocstore.plan import PlanReader
from oocstore.store import Store
from oocstore.train import GraphSAGE, evaluate, train_epoch
from oocstore.samplers import sample_plan

pyg_models = pytest.importorskip("torch_geometric.nn.models")


def _store(template, tmp_path, **plans):
    path = tmp_path / "s"
    shutil.copytree(template, path)
    with Store(path, readonly=False) as store:
        for name, (fanouts, split) in plans.items():
            sample_plan(store, fanouts=fanouts, batch_size=64, epochs=1, seed=0, name=name,
                        split=split)
    return path


def _copy_weights(ours: GraphSAGE, theirs) -> None:
    """PyG's SAGEConv inside both: the same parameter names, layer by layer."""
    for a, b in zip(ours.convs, theirs.convs):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("fanouts", ["all,all", "all,all,all", "7"])
def test_pyg_graphsage_matches_layerwise_form(small_store_template, tmp_path, fanouts):
    """Full neighbourhoods (every layer has the same in-edges for a node) or one layer:
    PyG's GraphSAGE on the single edge_index == our layer-wise GraphSAGE, same weights."""
    path = _store(small_store_template, tmp_path, p=(fanouts, "train"))
    layers = len(fanouts.split(","))
    with Store(path) as store:
        reader = PlanReader(store, "p")
        feats = torch.from_numpy(np.array(store.array("features")))
        torch.manual_seed(0)
        ours = GraphSAGE(store.feature_dim, 16, store.num_classes, layers, dropout=0.0).eval()
        theirs = pyg_models.GraphSAGE(store.feature_dim, 16, layers, store.num_classes,
                                      dropout=0.0).eval()
        _copy_weights(ours, theirs)
        checked = 0
        for batch in reader.iter_batches(0):
            x = feats[torch.from_numpy(batch.input_nodes.astype(np.int64))]
            hops = to_pyg_hops(batch)
            want = ours(x, to_pyg(batch).layers)
            got = theirs(x, hops.edge_index, num_sampled_nodes_per_hop=hops.num_sampled_nodes,
                         num_sampled_edges_per_hop=hops.num_sampled_edges)[:hops.num_seeds]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            # and without trimming: the extra rows change nothing for the seeds
            untrimmed = theirs(x, hops.edge_index)[:hops.num_seeds]
            torch.testing.assert_close(untrimmed, want, rtol=1e-4, atol=1e-5)
            checked += 1
        assert checked == reader.num_batches(0) > 1


def test_hop_form_layout_on_sampled_fanouts(small_store_template, tmp_path):
    """Sampled fanouts: nodes grouped seeds-first by hop, edges by their destination's
    hop, each destination's edges those of the block nearest the seeds that has it."""
    path = _store(small_store_template, tmp_path, p=("5,3", "train"))
    with Store(path) as store:
        batch = PlanReader(store, "p").read_batch(0, 0)
    hops = to_pyg_hops(batch)
    b0, b1 = batch.blocks
    assert hops.num_sampled_nodes == [batch.seeds.size, b1.num_src - b1.num_dst,
                                      b0.num_src - b0.num_dst]
    assert sum(hops.num_sampled_nodes) == batch.input_nodes.size
    e_seed, e_hop1 = hops.num_sampled_edges
    assert e_seed == b1.num_edges  # every edge of the last block ends at a seed
    ei = hops.edge_index.numpy()
    np.testing.assert_array_equal(ei[:, :e_seed], np.stack([b1.src, b1.dst]))
    hop1 = (b0.dst >= b1.num_dst)
    np.testing.assert_array_equal(ei[:, e_seed:], np.stack([b0.src[hop1], b0.dst[hop1]]))
    assert e_hop1 == int(hop1.sum()) > 0
    # PyG's trim at layer 1 keeps exactly the seeds' edges and the nodes they reach
    assert ei[:, :e_seed].max() < batch.seeds.size + hops.num_sampled_nodes[1]


def _packed_store(template, tmp_path):
    path = _store(template, tmp_path, train=("5,3", "train"), val=("5,3", "val"))
    with Store(path, readonly=False) as store:
        for plan in ("train", "val"):
            pack_plan(store, plan, name=plan, options=PackOptions(cpu_cache=16 * 2**10))
    return path


@pytest.mark.parametrize("kind", ["GAT", "GCN", "GraphSAGE"])
def test_ready_made_models_train_through_the_loader(small_store_template, tmp_path, kind):
    """train_epoch and evaluate take a NodeLoader and a PyG model as they are: the loss
    falls, and evaluate gives the accuracy counted by hand from to_pyg_data()."""
    path = _packed_store(small_store_template, tmp_path)
    torch.manual_seed(0)
    with Store(path) as store, NodeLoader(store, "train", budget=MemoryBudget(cpu="16MiB")) \
            as loader, NodeLoader(store, "val", budget=MemoryBudget(cpu="16MiB")) as val:
        model = getattr(pyg_models, kind)(store.feature_dim, 32, loader.num_layers,
                                          store.num_classes)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        losses = []
        for epoch in range(3):
            loader.set_epoch(epoch)
            losses.append(train_epoch(model, opt, loader, "cpu")["loss"])
        assert losses[-1] < 0.9 * losses[0], losses
        acc = evaluate(model, val)
        correct = seen = 0
        model.eval()
        with torch.no_grad():
            for batch in val:
                d = batch.to_pyg_data()
                assert d.x.shape[0] == sum(d.num_sampled_nodes) and d.y.shape[0] == d.batch_size
                out = model(d.x, d.edge_index, num_sampled_nodes_per_hop=d.num_sampled_nodes,
                            num_sampled_edges_per_hop=d.num_sampled_edges)[:d.batch_size]
                correct += int((out.argmax(1) == d.y).sum())
                seen += d.batch_size
        assert seen == store.split("val").size
        assert acc == correct / seen
