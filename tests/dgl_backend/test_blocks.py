"""to_dgl: DGL blocks of sampled batches, and DGL's SAGEConv on them against a hand mean."""

from __future__ import annotations

import dataclasses
import shutil
import sys

import dgl
import numpy as np
import pytest
import torch

from oocstore.errors import FormatError, OocError, UsageError
from oocstore.integrations import MissingDependencyError
from oocstore.integrations.dgl import require_dgl, to_dgl
from oocstore.plan import PlanReader
from oocstore.store import Store
from oocstore.train.dgl_model import DGLGraphSAGE
from oocstore.samplers import sample_plan


@pytest.fixture(scope="module")
def plan_store(small_store_template, tmp_path_factory):
    path = tmp_path_factory.mktemp("dgl") / "s"
    shutil.copytree(small_store_template, path)
    with Store(path, readonly=False) as store:
        sample_plan(store, fanouts="4,3", batch_size=64, epochs=2, seed=3, name="train")
    return path


@pytest.fixture(scope="module")
def batches(plan_store):
    with Store(plan_store) as store:
        reader = PlanReader(store, "train")
        return [b for e in range(reader.num_epochs) for b in reader.iter_batches(e)]


def hand_sage(conv, block, h):  # h [num_src, D] -> [num_dst, out]
    """W_self h_dst + W_neigh mean_{in-edges}(h_src) + b, with numpy loops."""
    src, dst = (t.numpy() for t in block.edges(order="eid"))
    hn = h.numpy().astype(np.float64)
    mean = np.zeros((block.num_dst_nodes(), hn.shape[1]))
    for d in range(block.num_dst_nodes()):
        nbrs = src[dst == d]
        if nbrs.size:
            mean[d] = hn[nbrs].mean(axis=0)
    w_self = conv.fc_self.weight.detach().numpy().astype(np.float64)
    w_neigh = conv.fc_neigh.weight.detach().numpy().astype(np.float64)
    bias = conv.fc_self.bias.detach().numpy().astype(np.float64)  # DGL 2.1 keeps it there
    return hn[:block.num_dst_nodes()] @ w_self.T + mean @ w_neigh.T + bias


def test_to_dgl_matches_plan_blocks(batches):
    for batch in batches:
        blocks = to_dgl(batch)
        assert len(blocks) == len(batch.blocks) == 2
        for block, plan_block in zip(blocks, batch.blocks):
            assert block.is_block and block.idtype == torch.int64
            assert block.device == torch.device("cpu")
            assert (block.num_src_nodes(), block.num_dst_nodes()) == (plan_block.num_src,
                                                                     plan_block.num_dst)
            assert block.srcnodes().numel() == plan_block.num_src
            assert block.dstnodes().numel() == plan_block.num_dst
            assert block.num_edges() == plan_block.num_edges
            src, dst = block.edges(order="eid")
            np.testing.assert_array_equal(src.numpy(), plan_block.src)
            np.testing.assert_array_equal(dst.numpy(), plan_block.dst)
            np.testing.assert_array_equal(block.srcdata[dgl.NID].numpy(),
                                          batch.input_nodes[:plan_block.num_src])
            np.testing.assert_array_equal(block.dstdata[dgl.NID].numpy(),
                                          batch.input_nodes[:plan_block.num_dst])
        assert blocks[0].num_src_nodes() == batch.input_nodes.size
        np.testing.assert_array_equal(blocks[-1].dstdata[dgl.NID].numpy(), batch.seeds)
        # a block's destinations are the next block's sources
        for a, b in zip(blocks, blocks[1:]):
            assert a.num_dst_nodes() == b.num_src_nodes()


def test_to_dgl_device_and_no_aliasing(batches):
    batch = batches[0]
    blocks = to_dgl(batch, device="cpu")
    assert all(b.device == torch.device("cpu") for b in blocks)
    blocks[0].srcdata[dgl.NID][0] = -7  # the plan's arrays are not aliased
    assert batch.input_nodes[0] != -7


def test_to_dgl_refuses_broken_prefix_chain(batches):
    batch = batches[0]
    bad = dataclasses.replace(batch.blocks[1], num_src=batch.blocks[0].num_dst + 1)
    with pytest.raises(FormatError, match="re-sample it with --overwrite"):
        to_dgl(dataclasses.replace(batch, blocks=[batch.blocks[0], bad]))


@pytest.mark.parametrize("in_dim,out_dim", [(16, 5), (3, 8)])  # DGL projects first iff in > out
def test_dgl_sageconv_on_our_blocks_is_the_mean(batches, in_dim, out_dim):
    from dgl.nn import SAGEConv

    torch.manual_seed(0)
    conv = SAGEConv(in_dim, out_dim, aggregator_type="mean")
    for batch in batches[:3]:
        for block in to_dgl(batch):
            h = torch.randn(block.num_src_nodes(), in_dim)
            with torch.no_grad():
                got = conv(block, (h, h[:block.num_dst_nodes()]))
            np.testing.assert_allclose(got.numpy(), hand_sage(conv, block, h), rtol=1e-4,
                                       atol=1e-5)


def test_dgl_graphsage_forward_batch(batches):
    torch.manual_seed(0)
    model = DGLGraphSAGE(16, 8, 4, 2, dropout=0.5).eval()
    batch = batches[1]
    x = torch.randn(batch.input_nodes.size, 16, dtype=torch.float64).to(torch.float16)
    with torch.no_grad():
        out = model.forward_batch(batch, x)
    assert out.shape == (batch.seeds.size, 4) and out.dtype == torch.float32
    blocks = to_dgl(batch)
    h = torch.from_numpy(hand_sage(model.convs[0], blocks[0], x.float())).float().relu()
    want = hand_sage(model.convs[1], blocks[1], h)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)


def test_dgl_graphsage_refuses_mismatch(batches):
    model = DGLGraphSAGE(16, 8, 4, 3)
    batch = batches[0]
    with pytest.raises(UsageError, match="one fanout per model layer"):
        model.forward_batch(batch, torch.zeros(batch.input_nodes.size, 16))
    with pytest.raises(UsageError, match="deliver features for input_nodes"):
        DGLGraphSAGE(16, 8, 4, 2).forward_batch(batch, torch.zeros(3, 16))
    with pytest.raises(UsageError, match="dropout"):
        DGLGraphSAGE(16, 8, 4, 2, dropout=1.0)


def test_missing_dgl_names_the_environment(monkeypatch):
    monkeypatch.setitem(sys.modules, "dgl", None)  # `import dgl` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"make test-dgl.*tools/dgl_env\.sh") as info:
        require_dgl()
    assert isinstance(info.value, ImportError) and isinstance(info.value, OocError)
    with pytest.raises(MissingDependencyError, match="torch 2.2"):
        DGLGraphSAGE(4, 4, 2, 2)
