"""to_pyg: PyG edge_index form of sampled batches, and the lazy optional import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from oocstore.errors import FormatError
from oocstore.integrations import MissingDependencyError, PygBatch, require_pyg, to_pyg
from oocstore.plan import Block, PlanReader, SampledBatch
from oocstore.store import Store
from oocstore.samplers import sample_plan


@pytest.fixture(scope="module")
def plan_store(small_store_template, tmp_path_factory):
    import shutil

    path = tmp_path_factory.mktemp("pyg") / "s"
    shutil.copytree(small_store_template, path)
    with Store(path, readonly=False) as store:
        sample_plan(store, fanouts="4,3", batch_size=64, epochs=2, seed=3, name="train")
    return path


def test_to_pyg_matches_plan_blocks(plan_store):
    with Store(plan_store) as store:
        reader = PlanReader(store, "train")
        for epoch in range(reader.num_epochs):
            for batch in reader.iter_batches(epoch):
                pyg = to_pyg(batch)
                assert isinstance(pyg, PygBatch)
                assert (pyg.epoch, pyg.batch, pyg.num_seeds) == (epoch, batch.batch,
                                                                 batch.seeds.size)
                assert torch.equal(pyg.input_nodes, torch.from_numpy(batch.input_nodes))
                assert torch.equal(pyg.seeds, torch.from_numpy(batch.seeds))
                assert len(pyg.layers) == len(batch.blocks) == 2
                for layer, block in zip(pyg.layers, batch.blocks):
                    edge_index, size = layer  # unpacks like PyG's (edge_index, size) pairs
                    assert edge_index.dtype == torch.int64
                    assert edge_index.shape == (2, block.num_edges)
                    np.testing.assert_array_equal(edge_index.numpy(), block.edge_index())
                    assert size == (block.num_src, block.num_dst)
                assert pyg.layers[0].size[0] == batch.input_nodes.size
                assert pyg.layers[-1].size[1] == batch.seeds.size
                assert pyg.num_edges == batch.num_edges


def test_to_pyg_copies_and_moves(plan_store):
    with Store(plan_store) as store:
        batch = PlanReader(store, "train").read_batch(0, 0)
    pyg = to_pyg(batch).to("cpu")
    pyg.layers[0].edge_index[0, 0] = -7  # the plan's arrays are not aliased
    assert batch.blocks[0].src[0] != -7


def _batch(sizes, num_input, num_seeds):
    blocks = [Block(num_src=s, num_dst=d, src=np.zeros(0, np.int64), dst=np.zeros(0, np.int64))
              for s, d in sizes]
    nodes = np.arange(num_input, dtype=np.int64)
    return SampledBatch(epoch=0, batch=5, seeds=nodes[:num_seeds], blocks=blocks, input_nodes=nodes)


@pytest.mark.parametrize("sizes,num_input,num_seeds", [
    ([(9, 4), (4, 2)], 10, 2),  # first layer's sources are not the input nodes
    ([(10, 4), (5, 2)], 10, 2),  # layer 1's sources are not layer 0's destinations
    ([(10, 4), (4, 3)], 10, 2),  # the last layer does not end at the seeds
])
def test_to_pyg_refuses_broken_prefix_chain(sizes, num_input, num_seeds):
    with pytest.raises(FormatError, match="batch 5 of epoch 0.*re-sample it with --overwrite"):
        to_pyg(_batch(sizes, num_input, num_seeds))


def test_missing_pyg_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'oocstore\[pyg\]'") as info:
        require_pyg()
    assert isinstance(info.value, ImportError)
    from oocstore.train import GraphSAGE

    with pytest.raises(MissingDependencyError, match=r"oocstore\[pyg\]"):
        GraphSAGE(4, 8, 2, 2)


def test_importing_integrations_does_not_import_pyg():
    code = ("import sys, oocstore.integrations, oocstore.integrations.pyg, oocstore.train; "
            "sys.exit('torch_geometric' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
