"""NodeLoader on a packed link plan: the same batches as the plan, features from the
tiers, pairs exposed as tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oocstore.errors import UsageError
from oocstore.loader import NodeLoader
from oocstore.plan import PlanReader
from oocstore.store import Store


def test_link_batches_carry_pairs_and_the_plans_features(link_template):
    with Store(link_template) as store:
        feats = np.array(store.array("features"))
        reader = PlanReader(store, "link")
        with NodeLoader(store, "link", rank=0, world_size=1) as loader:
            loader.set_epoch(1)
            n = 0
            for batch in loader:
                ref = reader.read_batch(1, batch.index)
                assert torch.equal(batch.pos, torch.from_numpy(ref.pos))
                assert torch.equal(batch.neg, torch.from_numpy(ref.neg))
                assert batch.pos.dtype == torch.int64 and batch.pos.shape[0] == 2
                assert np.array_equal(batch.x.numpy(), feats[ref.input_nodes])
                d = batch.to_pyg_data()
                P, N = batch.pos.shape[1], batch.neg.shape[1]
                assert torch.equal(d.edge_label_index, torch.cat([batch.pos, batch.neg], 1))
                assert d.edge_label.tolist() == [1.0] * P + [0.0] * N
                assert len(batch.to_pyg().layers) == 2
                n += 1
            assert n == reader.num_batches(1)
        reader.close()


def test_node_batches_have_no_pairs(small_store):
    from oocstore.pack import pack_plan
    from oocstore.samplers import sample_plan

    with Store(small_store, readonly=False) as store:
        sample_plan(store, fanouts="3", batch_size=64, epochs=1)
        pack_plan(store, "train", name="p")
        with NodeLoader(store, "train", rank=0, world_size=1) as loader:
            batch = next(iter(loader))
            assert batch.sample.pos is None
            with pytest.raises(UsageError, match="node-classification plan.*--task link"):
                batch.pos
            assert not hasattr(batch.to_pyg_data(), "edge_label_index")
