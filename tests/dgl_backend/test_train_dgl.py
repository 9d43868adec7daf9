"""DGLGraphSAGE through the backend-neutral loop, against a plain-torch reference.

PyG is not in the DGL environment, so the reference is the same mean-aggregator SAGE
written with ``index_add`` (``RefSAGE``), started from the DGL model's weights and
trained with the same seeds on the same batches: the two compute the same function
(up to float summation order) and draw the same dropout masks, so their accuracies must
agree closely. A feature-only model (every edge removed) gives the margin the graph
must add (see tests/train/test_loop.py: the synthetic graph hides 35 % of the labels in
the features, homophilous neighbours recover them).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import make_synthetic
from oocstore.plan import PlanReader, SampledBatch
from oocstore.store import Store
from oocstore.train import InMemoryFeatures, epoch_schedule, evaluate, train_epoch
from oocstore.train.dgl_model import DGLGraphSAGE
from oocstore.samplers import sample_plan

EPOCHS = 4


class RefConv(nn.Module):
    """``fc_self(h_dst) + fc_neigh(mean of in-neighbours)``; parameter names as DGL's."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc_neigh = nn.Linear(in_dim, out_dim, bias=False)
        self.fc_self = nn.Linear(in_dim, out_dim)

    def forward(self, h, src, dst, num_dst):  # h [num_src, D]; src, dst [E] -> [num_dst, out]
        total = torch.zeros(num_dst, h.shape[1]).index_add_(0, dst, h[src])
        deg = torch.zeros(num_dst).index_add_(0, dst, torch.ones(dst.shape[0]))
        mean = total / deg.clamp(min=1).unsqueeze(1)
        return self.fc_self(h[:num_dst]) + self.fc_neigh(mean)


class RefSAGE(nn.Module):
    def __init__(self, dims, dropout):
        super().__init__()
        self.dropout = dropout
        self.convs = nn.ModuleList(RefConv(a, b) for a, b in zip(dims, dims[1:]))

    def forward_batch(self, batch: SampledBatch, x):
        h = x.float()
        for i, (conv, block) in enumerate(zip(self.convs, batch.blocks)):
            h = conv(h, torch.from_numpy(block.src), torch.from_numpy(block.dst), block.num_dst)
            if i < len(self.convs) - 1:
                h = F.dropout(F.relu(h), p=self.dropout, training=self.training)
        return h


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = make_synthetic(tmp_path_factory.mktemp("dgltrain") / "s", nodes=3000, feat_dim=32,
                          avg_degree=8)
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="5,5", batch_size=256, epochs=2, seed=0, name="train")
        sample_plan(s, fanouts="all,all", batch_size=1024, epochs=1, name="test", split="test")
    s = Store(path)
    yield s
    s.close()


@pytest.fixture(scope="module")
def feats(store):
    return InMemoryFeatures(store)


def without_edges(triples):
    for batch, x, y in triples:
        blocks = [dataclasses.replace(b, src=b.src[:0], dst=b.dst[:0]) for b in batch.blocks]
        yield dataclasses.replace(batch, blocks=blocks), x, y


def build(feats, backend, seed):
    torch.manual_seed(seed)
    model = DGLGraphSAGE(feats.feat_dim, 32, feats.num_classes, 2, dropout=0.5)
    if backend == "ref":
        ref = RefSAGE([feats.feat_dim, 32, feats.num_classes], 0.5)
        ref.load_state_dict(model.state_dict())  # same names, same starting weights
        model = ref
    return model


def fit(store, feats, backend, *, seed=0, graph=True):
    model = build(feats, backend, seed)
    torch.manual_seed(seed + 1)  # the dropout stream starts at the same state for every backend
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    reader = PlanReader(store, "train")
    wrap = (lambda t: t) if graph else without_edges
    history = []
    for e in range(EPOCHS):
        plan_epoch, order = epoch_schedule(reader, e, reuse="shuffle")
        history.append(train_epoch(model, opt, wrap(feats.batches(reader, plan_epoch, order)),
                                   "cpu"))
    return history, evaluate(model, wrap(feats.batches(PlanReader(store, "test"), 0)))


def test_reference_computes_the_dgl_model(store, feats):
    dgl_model, ref = build(feats, "dgl", 0).eval(), build(feats, "ref", 0).eval()
    batch, x, _ = next(feats.batches(PlanReader(store, "train"), 0))
    with torch.no_grad():
        np.testing.assert_allclose(dgl_model.forward_batch(batch, x).numpy(),
                                   ref.forward_batch(batch, x).numpy(), rtol=1e-4, atol=1e-5)


def test_dgl_trains_to_reference_accuracy(store, feats):
    history, acc = fit(store, feats, "dgl")
    ref_history, ref_acc = fit(store, feats, "ref")
    _, mlp_acc = fit(store, feats, "dgl", graph=False)
    # Measured over seeds 0-2 (4 epochs): DGL 0.805-0.823, reference identical,
    # feature-only 0.570-0.583. (The PyG model reaches 0.885-0.902 in the same 4 epochs
    # from torch's Linear initialisation; DGL's Glorot start converges a little later:
    # 0.857-0.878 after 6 epochs.)
    assert acc >= 0.78, acc
    assert abs(acc - ref_acc) <= 0.02, (acc, ref_acc)
    assert acc >= mlp_acc + 0.15, (acc, mlp_acc)
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.6 * losses[0], losses
    np.testing.assert_allclose(losses, [h["loss"] for h in ref_history], rtol=1e-3)
    assert all(h["batches"] == 8 and h["seeds"] == 1800 for h in history)
