"""Layer-wise inference of every ``train --model`` kind: GraphSAGE, GCN and GAT (several
heads), 1 to 3 layers, equal the model's own forward on the whole graph in memory, in
chunks sized by a layer batch or a CPU budget that the chunk estimates respect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from helpers import make_synthetic
from oocstore.cli import main
from oocstore.errors import BudgetError, FormatError
from oocstore.infer import infer_embeddings
from oocstore.infer_models import load_layerwise_model
from oocstore.store import Store
from oocstore.train.models import ModelSpec, build_from_spec
from oocstore.train.selection import save_model

REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def full_graph(store: Store) -> tuple[torch.Tensor, torch.Tensor]:
    """Every feature and the whole graph as ``edge_index`` (source, destination)."""
    indptr, indices = store.csc()
    x = torch.from_numpy(np.array(store.array("features"))).float()
    dst = torch.from_numpy(np.repeat(np.arange(store.num_nodes), np.diff(indptr)))
    return x, torch.stack([torch.from_numpy(np.asarray(indices, dtype=np.int64)), dst])


def reference(store: Store, model) -> np.ndarray:
    """The model's own forward with the whole graph as one block of every layer."""
    x, edge_index = full_graph(store)
    n = store.num_nodes
    with torch.no_grad():
        return model.eval()(x, [(edge_index, (n, n))] * model.num_layers).numpy()


def made_model(store: Store, kind: str, layers: int, *, hidden: int = 16, heads=None,
               seed: int = 0):
    torch.manual_seed(seed)
    spec = ModelSpec(kind, store.feature_dim, hidden, store.num_classes, layers, heads)
    model = build_from_spec(spec).eval()
    if kind == "gat":  # random attention vectors large enough that the softmax matters
        with torch.no_grad():
            for conv in model.convs:
                conv.att_src.mul_(4.0)
                conv.att_dst.mul_(4.0)
    return model, spec


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("infer_models") / "s", nodes=900,
                          feat_dim=10, avg_degree=5.0)


CASES = [("sage", 1, None), ("sage", 3, None), ("gcn", 1, None), ("gcn", 2, None),
         ("gcn", 3, None), ("gat", 1, 2), ("gat", 2, 4), ("gat", 3, 2), ("gat", 2, 1)]


@pytest.mark.parametrize("kind,layers,heads", CASES)
@pytest.mark.parametrize("chunking", ["layer_batch", "cpu_budget"])
def test_matches_full_graph_forward(store_path, tmp_path, kind, layers, heads, chunking):
    with Store(store_path) as store:
        model, spec = made_model(store, kind, layers, heads=heads)
        save_model(tmp_path / "m.pt", model.state_dict(), spec.to_dict())
        ref = reference(store, model)
        kw = {"layer_batch": 61} if chunking == "layer_batch" else {"cpu_budget": 6_000_000}
        summary = infer_embeddings(store, tmp_path / "m.pt", tmp_path / "e.zarr", **kw)
    got = zarr.open_array(str(tmp_path / "e.zarr"))[:]
    assert summary.model == kind and len(summary.chunks) == layers
    assert summary.chunks[0] > 1  # the nodes were split into several chunks
    # every layer's rows written once to a hidden-state file, then the logits to zarr
    assert summary.bytes_written == 4 * 900 * (sum(summary.dims[1:]) + summary.dims[-1])
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
    if chunking == "cpu_budget":  # the accountant's figures: chunks + fixed within it
        assert summary.accounted_peak_bytes == summary.peak_chunk_bytes + summary.fixed_bytes
        assert summary.accounted_peak_bytes <= 6_000_000


@pytest.mark.parametrize("kind,heads", [("gcn", None), ("gat", 2)])
def test_plain_state_dict_and_checkpoint(store_path, tmp_path, kind, heads):
    """A state_dict without the model description (its kind read from the parameter
    names, gat's heads from att_src) and a training checkpoint (its model_spec) give
    the same logits as the model file."""
    from oocstore.train.checkpoint import save_checkpoint

    with Store(store_path) as store:
        model, spec = made_model(store, kind, 2, heads=heads)
        torch.save(dict(model.state_dict()), tmp_path / "plain.pt")
        opt = torch.optim.Adam(model.parameters())
        save_checkpoint(tmp_path / "ck", {"plan": "p", "epoch": 0, "history": [],
                                          "model": model.state_dict(),
                                          "optimizer": opt.state_dict(), "rng": {},
                                          "model_spec": spec.to_dict()})
        ref = reference(store, model)
        for name, src in (("a", tmp_path / "plain.pt"), ("b", tmp_path / "ck")):
            assert load_layerwise_model(src).spec.heads == spec.heads
            infer_embeddings(store, src, tmp_path / f"{name}.zarr", layer_batch=200)
            np.testing.assert_allclose(zarr.open_array(str(tmp_path / f"{name}.zarr"))[:],
                                       ref, atol=2e-5, rtol=1e-4)


def test_gat_budget_floor_is_larger(store_path, tmp_path):
    """GAT holds per-edge attention and messages: its minimum budget is above
    GraphSAGE's at the same widths, and a budget below it is refused with it."""
    import re

    floors = {}
    with Store(store_path) as store:
        for kind, heads in (("sage", None), ("gat", 4)):
            model, spec = made_model(store, kind, 2, hidden=64, heads=heads)
            save_model(tmp_path / f"{kind}.pt", model.state_dict(), spec.to_dict())
            with pytest.raises(BudgetError, match="give cpu_budget of at least") as err:
                infer_embeddings(store, tmp_path / f"{kind}.pt", tmp_path / "x.zarr",
                                 cpu_budget=1 << 20)
            assert f"{kind} inference needs" in str(err.value)
            floors[kind] = float(re.search(r"at least ([0-9.]+) MiB", str(err.value))[1])
    assert floors["gat"] > floors["sage"]
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("case", ["unknown_kind", "dgl", "gat_bad_shapes"])
def test_unusable_model_refused(store_path, tmp_path, capsys, case):
    with Store(store_path) as store:
        model, spec = made_model(store, "gat", 2, heads=2)
    path = tmp_path / "m.pt"
    if case == "unknown_kind":
        save_model(path, model.state_dict(), {**spec.to_dict(), "kind": "gin"})
        match = r"model_spec.* does not describe a model \(model='gin': use one of"
    elif case == "dgl":
        sage = build_from_spec(ModelSpec("sage", 10, 16, spec.classes, 2))
        save_model(path, sage.state_dict(), {**ModelSpec("sage", 10, 16, spec.classes,
                                                         2).to_dict(), "backend": "dgl"})
        match = "holds a dgl model .* train with --backend pyg"
    else:
        state = dict(model.state_dict())
        state["convs.1.att_src"] = torch.zeros(1, 3, spec.classes)
        torch.save(state, path)
        match = "do not fit the gat model"
    with pytest.raises(FormatError if case != "dgl" else Exception, match=match):
        load_layerwise_model(path)
    rc = main(["infer", str(store_path), "--checkpoint", str(path), "--out",
               str(tmp_path / "e.zarr"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("oocstore: error: ")
    assert not (tmp_path / "e.zarr").exists()


@pytest.mark.skipif(not (REAL_DATA / "graphdata" / "cora_ml.npz").exists(),
                    reason=f"real data {REAL_DATA}/graphdata/cora_ml.npz not present: this test "
                           "needs the shared data folder beside the checkout")
@pytest.mark.parametrize("kind,heads", [("gcn", None), ("gat", 4)])
def test_matches_full_graph_forward_cora_ml(tmp_path, kind, heads):
    from oocstore.ingest import build_store
    from oocstore.ingest.npz import npz_source

    path = build_store(tmp_path / "cora", npz_source(REAL_DATA / "graphdata" / "cora_ml.npz",
                                                      trust_pickle=True))
    with Store(path) as store:
        model, spec = made_model(store, kind, 2, hidden=32, heads=heads)
        save_model(tmp_path / "m.pt", model.state_dict(), spec.to_dict())
        ref = reference(store, model)
        summary = infer_embeddings(store, tmp_path / "m.pt", tmp_path / "e.zarr",
                                   cpu_budget=24 << 20)
    assert summary.nodes == 2995 and summary.chunks[0] > 1
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "e.zarr"))[:], ref, atol=2e-5,
                               rtol=1e-4)


def test_too_little_disk_refused_before_writing(store_path, tmp_path, capsys, monkeypatch):
    """The hidden states need disk beside --out: with less free than a layer's output
    beside its input (and the zarr copy), the run is refused naming both sizes."""
    import collections

    import oocstore.layerwise as layerwise

    with Store(store_path) as store:
        model, spec = made_model(store, "gcn", 2)
        save_model(tmp_path / "m.pt", model.state_dict(), spec.to_dict())
        classes = store.num_classes
    usage = collections.namedtuple("usage", "total used free")
    # layer 1 writes [900, classes] float32 beside layer 0's [900, 16] (its input)
    need = max(4 * 900 * (16 + classes), 8 * 900 * classes)
    monkeypatch.setattr(layerwise.shutil, "disk_usage", lambda p: usage(10**9, 0, need - 1))
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["infer", str(store_path), "--checkpoint", str(tmp_path / "m.pt"), "--out",
               str(tmp_path / "e.zarr"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"needs {need / 1024:.2f} KiB of disk for its hidden states" in err
    assert "give --out on a disk with room" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    monkeypatch.setattr(layerwise.shutil, "disk_usage", lambda p: usage(10**9, 0, need))
    assert main(["infer", str(store_path), "--checkpoint", str(tmp_path / "m.pt"), "--out",
                 str(tmp_path / "e.zarr"), "--quiet"]) == 0
