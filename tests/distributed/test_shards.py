"""Plan shards in one process: the layout, sampling, shard resolution, packing every
shard, and the errors for a world size or a shard that does not fit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import make_synthetic
from oocstore.cli import main
from oocstore.distributed import plans_to_pack, resolve_plan
from oocstore.errors import StoreExistsError, StoreNotFoundError, UsageError
from oocstore.loader import NodeLoader
from oocstore.plan import PlanReader, list_plans
from oocstore.store import Store
from oocstore.samplers.neighbor import sample_plan, shard_layout


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 3000), w=st.integers(1, 8), b=st.integers(1, 300))
def test_shard_layout_covers_each_seed_once_with_equal_batch_counts(n, w, b):
    if n < w:
        with pytest.raises(UsageError, match="lower world_size"):
            shard_layout(n, w, b)
        return
    off = shard_layout(n, w, b)  # [batches, W + 1]
    assert off[0, 0] == 0 and off[-1, -1] == n
    np.testing.assert_array_equal(off[1:, 0], off[:-1, -1])  # global batches back to back
    sizes = np.diff(off, axis=1)
    assert sizes.min() >= 1 and sizes.max() <= b + 1
    assert sizes.shape[0] == max(1, -(-n // (w * b)) - (0 < n % (w * b) < w and n > w * b))
    full = n // (w * b) - (0 < n % (w * b) < w)  # global batches that hold exactly W x B
    assert (sizes[:full] == b).all()
    assert (sizes.max(axis=1) - sizes.min(axis=1) <= 1).all()  # balanced within a batch


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = make_synthetic(tmp_path_factory.mktemp("shards") / "s", nodes=2000, avg_degree=6.0)
    sample_plan(path, fanouts="4,3", batch_size=50, epochs=2, world_size=2)
    sample_plan(path, fanouts="4,3", batch_size=100, epochs=2, name="whole")
    return path


def _global_edges(batch, layer):
    nodes = batch.input_nodes
    blk = batch.blocks[layer]
    return {(int(nodes[d]), int(nodes[s])) for s, d in zip(blk.src, blk.dst)}


def test_shards_split_the_unsharded_batches_and_reuse_their_neighbour_draws(store):
    with Store(store) as s:
        train = np.sort(s.split("train"))
        shards = [PlanReader(s, f"train.rank{r}") for r in range(2)]
        whole = PlanReader(s, "whole")  # 1 process x 100 == 2 ranks x 50
        assert [m.meta.shard_rank for m in shards] == [0, 1]
        assert {m.meta.shard_group for m in shards} == {"train"}
        for epoch in range(2):
            n = whole.num_batches(epoch)
            assert shards[0].num_batches(epoch) == shards[1].num_batches(epoch) == n
            seen = []
            for g in range(n):
                full = whole.read_batch(epoch, g)
                parts = [sh.read_batch(epoch, g) for sh in shards]
                assert [p.seeds.size for p in parts] == [50, 50] or g == n - 1
                np.testing.assert_array_equal(np.concatenate([p.seeds for p in parts]),
                                              full.seeds)
                # the seed-side layer: each rank's edges are the unsharded batch's edges
                # into its seeds (same per-node draws)
                ref = _global_edges(full, -1)
                for p in parts:
                    mine = set(int(v) for v in p.seeds)
                    assert _global_edges(p, -1) == {e for e in ref if e[0] in mine}
                seen += [p.seeds for p in parts]
            np.testing.assert_array_equal(np.sort(np.concatenate(seen)), train)


def test_sampling_bad_world_sizes(store):
    with pytest.raises(UsageError, match="world_size=0"):
        sample_plan(store, fanouts="4", batch_size=10, world_size=0, name="x")
    with pytest.raises(UsageError, match="fewer than the ranks"):
        sample_plan(store, fanouts="4", batch_size=10, world_size=3, name="x",
                    seeds=np.array([1, 2]))
    with pytest.raises(StoreExistsError, match="train.rank0.*overwrite=True"):
        sample_plan(store, fanouts="4", batch_size=10, world_size=2)
    with pytest.raises(UsageError, match="shorter name"):
        sample_plan(store, fanouts="4", batch_size=10, world_size=2, name="n" * 60)


def test_loader_refuses_a_world_size_that_does_not_match_the_shards(store):
    with Store(store) as s:
        with pytest.raises(UsageError, match=r"sampled for world size 2 .* world size 3: launch 2 "
                                             r"processes.*--world-size 3 --overwrite"):
            NodeLoader(s, "train", rank=0, world_size=3)
        with pytest.raises(UsageError, match="unsharded plan.*--world-size 2"):
            NodeLoader(s, "whole", rank=1, world_size=2)
        with pytest.raises(UsageError, match="rank 2 of world size 2"):
            NodeLoader(s, "train", rank=2, world_size=2)
        with pytest.raises(UsageError, match="give both rank and world_size"):
            NodeLoader(s, "train", rank=0)
        # one process, no torch.distributed: the world size is 1
        with pytest.raises(UsageError, match="world size 1"):
            NodeLoader(s, "train")
        with pytest.raises(UsageError, match=r"no pack: create one with `oocstore pack .*"
                                             r"--plan train.rank1"):
            NodeLoader(s, "train", rank=1, world_size=2)


def test_missing_shard_is_named_with_the_fix(store, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(store, copy)
    with Store(copy, readonly=False) as s:
        s.catalog.commit({}, {"plan/train.rank1"})  # an incomplete catalog
    with Store(copy) as s:
        assert resolve_plan(s, "train", rank=0, world_size=2) == "train.rank0"
        with pytest.raises(StoreNotFoundError, match="no shard for rank 1 .*ranks 0 of 2.*copy "
                                                     "the whole store"):
            NodeLoader(s, "train", rank=1, world_size=2)


def test_resampling_for_fewer_ranks_leaves_stale_shards_ignored(tmp_path):
    path = make_synthetic(tmp_path / "s", nodes=600)
    sample_plan(path, fanouts="3", batch_size=20, epochs=1, world_size=3)
    sample_plan(path, fanouts="3", batch_size=20, epochs=1, world_size=2, overwrite=True)
    sample_plan(path, fanouts="3", batch_size=40, epochs=1)  # a whole plan named "train" too
    with Store(path) as s:
        assert "train.rank2" in list_plans(s)  # left in the catalog, but not current
        assert resolve_plan(s, "train", rank=1, world_size=2) == "train.rank1"
        assert resolve_plan(s, "train", rank=0, world_size=1) == "train"
        with pytest.raises(UsageError, match="sampled for world size 2"):
            resolve_plan(s, "train", rank=2, world_size=3)
        assert plans_to_pack(s, "train.rank0") == ["train.rank0", "train.rank1"]


def test_cli_packs_every_shard_and_a_copy_of_the_store_serves_the_same_batches(tmp_path,
                                                                               capsys):
    path = str(tmp_path / "s")
    assert main(["ingest", "synthetic", path, "--nodes", "1500", "--feat-dim", "8", "--quiet"]) == 0
    assert main(["sample", path, "--fanouts", "4,3", "--batch-size", "64", "--epochs", "1",
                 "--world-size", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--world-size 0" in err[0] and "e.g. --world-size 2" in err[0]
    assert main(["sample", path, "--fanouts", "4,3", "--batch-size", "64", "--epochs", "1",
                 "--world-size", "2", "--quiet"]) == 0
    assert main(["pack", path, "--cpu-cache", "8KiB", "--max-disk-blowup", "32", "--json",
                 "--quiet"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["plan"] for x in lines] == ["train.rank0", "train.rank1"]
    # a single process cannot train on a plan sampled for two
    assert main(["train", path, "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "world size 2" in err[0] and "--nproc-per-node 2" in err[0]
    # one copy of the store per node: plans and packs name their files relative to the
    # store, so a copied directory serves the same batches
    copy = tmp_path / "node1" / "s"
    shutil.copytree(path, copy)
    for rank in range(2):
        with Store(path) as a, Store(copy) as b:
            with NodeLoader(a, "train", rank=rank, world_size=2) as la, \
                    NodeLoader(b, "train", rank=rank, world_size=2) as lb:
                pairs = list(zip(la, lb))
                assert len(pairs) == len(la) > 0
                for x, y in pairs:
                    np.testing.assert_array_equal(x.seeds, y.seeds)
                    assert bool((x.x == y.x).all())
