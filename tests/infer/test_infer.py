"""Out-of-core layer-wise inference (``oocstore infer``): its logits equal the model's own
full-graph forward in memory, and bad input is refused before anything is written."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from helpers import make_synthetic
from oocstore.cli import main
from oocstore.errors import BudgetError, FormatError, UsageError
from oocstore.infer import gather_rows, infer_embeddings
from oocstore.store import Store
from oocstore.train.model import GraphSAGE

REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def full_forward(store: Store, model: GraphSAGE) -> np.ndarray:
    """The model's own forward on the whole graph, every feature in memory."""
    indptr, indices = store.csc()
    x = torch.from_numpy(np.array(store.array("features"))).float()
    dst = torch.from_numpy(np.repeat(np.arange(store.num_nodes), np.diff(indptr)))
    edge_index = torch.stack([torch.from_numpy(np.asarray(indices, dtype=np.int64)), dst])
    size = (store.num_nodes, store.num_nodes)
    with torch.no_grad():
        return model(x, [(edge_index, size)] * model.num_layers).numpy()


def saved_model(path: Path, store: Store, *, hidden: int = 24, layers: int = 2,
                in_dim: int | None = None, seed: int = 0) -> GraphSAGE:
    torch.manual_seed(seed)
    model = GraphSAGE(in_dim or store.feature_dim, hidden, store.num_classes, layers,
                      dropout=0.0).eval()
    torch.save(model.state_dict(), path)
    return model


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("infer") / "s", nodes=1500, feat_dim=12,
                          avg_degree=6.0)


@pytest.mark.parametrize("layers,kw", [(2, {"layer_batch": 97}), (3, {"cpu_budget": 6 << 20}),
                                       (1, {})])
def test_matches_full_graph_forward(store_path, tmp_path, layers, kw):
    with Store(store_path) as store:
        model = saved_model(tmp_path / "m.pt", store, layers=layers)
        ref = full_forward(store, model)
        summary = infer_embeddings(store, tmp_path / "m.pt", tmp_path / "emb.zarr", **kw)
    out = zarr.open_array(str(tmp_path / "emb.zarr"), mode="r")
    assert out.metadata.zarr_format == 3
    assert out.shape == ref.shape and out.chunks[1] == ref.shape[1]
    np.testing.assert_allclose(out[:], ref, atol=1e-5, rtol=1e-5)
    assert summary.nodes == 1500 and len(summary.chunks) == layers
    if "layer_batch" in kw:
        assert summary.chunks == [-(-1500 // 97)] * layers
    if "cpu_budget" in kw:
        assert summary.chunks[0] > 1  # the budget split the nodes
    # nothing left beside the output: hidden states and temporaries are removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.zarr", "m.pt"]


def test_budget_sizes_chunks_and_floor(store_path, tmp_path):
    with Store(store_path) as store:
        saved_model(tmp_path / "m.pt", store)
        small = infer_embeddings(store, tmp_path / "m.pt", tmp_path / "a.zarr",
                                 cpu_budget=5_900_000)
        large = infer_embeddings(store, tmp_path / "m.pt", tmp_path / "b.zarr",
                                 cpu_budget=64 << 20)
        with pytest.raises(BudgetError, match=r"below the .* give cpu_budget of at least"):
            infer_embeddings(store, tmp_path / "m.pt", tmp_path / "c.zarr", cpu_budget=1 << 20)
    assert small.chunks[0] > large.chunks[0] == 1
    assert small.peak_chunk_bytes <= 5_900_000
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "a.zarr"))[:],
                               zarr.open_array(str(tmp_path / "b.zarr"))[:], atol=1e-6)
    assert not (tmp_path / "c.zarr").exists()


def test_checkpoint_dir_and_overwrite(store_path, tmp_path):
    """A training checkpoint DIR is read through its own layout checks; --overwrite
    replaces an existing output whole."""
    from oocstore.train.checkpoint import save_checkpoint

    with Store(store_path) as store:
        model = saved_model(tmp_path / "m.pt", store)
        opt = torch.optim.Adam(model.parameters())
        save_checkpoint(tmp_path / "ck", {"plan": "p", "epoch": 0, "history": [],
                                          "model": model.state_dict(),
                                          "optimizer": opt.state_dict(), "rng": {}})
        ref = full_forward(store, model)
        zarr.create_array(store=str(tmp_path / "emb.zarr"), shape=(2, 2), dtype="float32")
        (tmp_path / "emb.zarr" / "stale").write_text("old")
        infer_embeddings(store, tmp_path / "ck", tmp_path / "emb.zarr", overwrite=True)
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "emb.zarr"))[:], ref, atol=1e-5)
    assert not (tmp_path / "emb.zarr" / "stale").exists()


def test_gather_rows_spans():
    data = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)
    calls = []

    def read(a, b):
        if b > a:
            calls.append((a, b))
        return data[a:b].copy()

    ids = np.array([0, 1, 2, 5, 400, 401, 999])
    np.testing.assert_array_equal(gather_rows(read, ids, 12, gap_bytes=48, span_bytes=1 << 20),
                                  data[ids])
    assert calls == [(0, 6), (400, 402), (999, 1000)]
    calls.clear()
    np.testing.assert_array_equal(gather_rows(read, np.arange(0, 1000, 2), 12, gap_bytes=48,
                                              span_bytes=120), data[::2])
    assert all(b - a <= 10 for a, b in calls)
    # in place: the same rows, spans read into the caller's buffers
    into = []

    def read_into(buf, a, b):
        into.append((a, b))
        buf[...] = data[a:b]

    np.testing.assert_array_equal(gather_rows(read, ids, 12, gap_bytes=48, span_bytes=1 << 20,
                                              read_into=read_into), data[ids])
    assert into == [(0, 6), (400, 402), (999, 1000)]


# -- bad input ----------------------------------------------------------------------

def _cli(*args) -> int:
    return main(["infer", *map(str, args)])


@pytest.mark.parametrize("case", ["in_dim", "layers", "classes", "exists", "missing",
                                  "corrupt", "pickle", "not_sage", "budget", "inside_store",
                                  "hidden_widths", "parent_file", "symlink_dir", "user_dir",
                                  "dotdot", "fifo"])
def test_bad_input_refused_nothing_written(store_path, tmp_path, capsys, case):
    with Store(store_path) as store:
        good = tmp_path / "m.pt"
        saved_model(good, store)
        ckpt, out, extra = good, tmp_path / "emb.zarr", []
        match = {"in_dim": "takes 5-dimensional input but store .* has 12 feature columns",
                 "layers": "has 2 layers, not --layers 3",
                 "classes": "outputs 3 classes but store",
                 "exists": "exists: pass --overwrite",
                 "missing": "does not exist",
                 "corrupt": "cannot be read .* truncated or damaged",
                 "pickle": "names Python objects other than tensors",
                 "not_sage": "not a PyG GraphSAGE",
                 "budget": "below the .* give --cpu-budget of at least",
                 "inside_store": "inside or above store",
                 "hidden_widths": "hidden layers of widths 8, 6; .* one hidden width",
                 "parent_file": r"m\.pt is not a directory; give a path in a directory",
                 "symlink_dir": "exists and is a symbolic link: overwrite replaces only a "
                                "zarr array",
                 "user_dir": "holds no zarr array .* overwrite replaces only a zarr array",
                 "dotdot": "names no new entry of a directory",
                 "fifo": "is not a regular file"}[case]
        if case == "in_dim":
            ckpt = tmp_path / "m5.pt"
            saved_model(ckpt, store, in_dim=5)
        elif case == "layers":
            extra = ["--layers", 3]
        elif case == "classes":
            torch.manual_seed(0)
            torch.save(GraphSAGE(12, 8, 3, 2, dropout=0.0).state_dict(), tmp_path / "c3.pt")
            ckpt = tmp_path / "c3.pt"
        elif case == "exists":
            out.mkdir()
            (out / "keep").write_text("mine")
        elif case == "missing":
            ckpt = tmp_path / "nope.pt"
        elif case == "corrupt":
            ckpt = tmp_path / "bad.pt"
            ckpt.write_bytes(good.read_bytes()[:200])
        elif case == "pickle":
            import pickle
            ckpt = tmp_path / "evil.pt"

            class Evil:
                def __reduce__(self):
                    return (os.system, ("touch " + str(tmp_path / "pwned"),))
            torch.save({"x": Evil()}, ckpt, pickle_module=pickle)
        elif case == "not_sage":
            ckpt = tmp_path / "lin.pt"
            torch.save(torch.nn.Linear(12, 3).state_dict(), ckpt)
        elif case == "budget":
            extra = ["--cpu-budget", "1MiB"]
        elif case == "inside_store":
            out = store_path / "emb.zarr"
        elif case == "hidden_widths":
            from torch_geometric.nn import SAGEConv

            ckpt = tmp_path / "widths.pt"
            convs = [SAGEConv(12, 8), SAGEConv(8, 6), SAGEConv(6, store.num_classes)]
            torch.save({f"convs.{i}.{k}": v for i, c in enumerate(convs)
                        for k, v in c.state_dict().items()}, ckpt)
        elif case == "parent_file":
            out = good / "emb.zarr"
        elif case == "symlink_dir":
            (tmp_path / "elsewhere").mkdir()
            (tmp_path / "elsewhere" / "keep").write_text("mine")
            out.symlink_to(tmp_path / "elsewhere")
            extra = ["--overwrite"]
        elif case == "user_dir":
            out.mkdir()
            (out / "keep").write_text("mine")
            extra = ["--overwrite"]
        elif case == "fifo":
            ckpt = tmp_path / "pipe.pt"
            os.mkfifo(ckpt)
        elif case == "dotdot":
            (tmp_path / "sub").mkdir()
            out, extra = tmp_path / "sub" / "..", ["--overwrite"]
    before = tree_digest(store_path)
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert _cli(store_path, "--checkpoint", ckpt, "--out", out, "--quiet", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("oocstore: error: ")
    import re
    assert re.search(match, err), err
    assert tree_digest(store_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    if case in ("exists", "symlink_dir", "user_dir"):
        assert (out / "keep").read_text() == "mine"
    assert not (tmp_path / "pwned").exists()


def test_cli_writes_and_reports(store_path, tmp_path, capsys):
    with Store(store_path) as store:
        model = saved_model(tmp_path / "m.pt", store)
        ref = full_forward(store, model)
    assert _cli(store_path, "--checkpoint", tmp_path / "m.pt", "--out", tmp_path / "e.zarr",
                "--layer-batch", 300, "--quiet", "--json") == 0
    import json
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["chunks"] == [5, 5] and summary["bytes_read"] > 0
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "e.zarr"))[:], ref, atol=1e-5)


@pytest.mark.skipif(not (REAL_DATA / "graphdata" / "cora_ml.npz").exists(),
                    reason=f"real data {REAL_DATA}/graphdata/cora_ml.npz not present: this test "
                           "needs the shared data folder beside the checkout")
def test_matches_full_graph_forward_cora_ml(tmp_path):
    from oocstore.ingest import build_store
    from oocstore.ingest.npz import npz_source

    path = build_store(tmp_path / "cora", npz_source(REAL_DATA / "graphdata" / "cora_ml.npz",
                                                      trust_pickle=True))
    with Store(path) as store:
        model = saved_model(tmp_path / "m.pt", store, hidden=32)
        ref = full_forward(store, model)
        summary = infer_embeddings(store, tmp_path / "m.pt", tmp_path / "e.zarr",
                                   cpu_budget=16 << 20)
    assert summary.nodes == 2995 and summary.chunks[0] > 1
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "e.zarr"))[:], ref, atol=1e-5,
                               rtol=1e-5)


def test_failure_midway_keeps_previous_output(store_path, tmp_path):
    """A run stopped in its last layer leaves the previous output as it was and no
    temporary files (hidden states included)."""
    with Store(store_path) as store:
        saved_model(tmp_path / "m.pt", store)
        infer_embeddings(store, tmp_path / "m.pt", tmp_path / "emb.zarr")
        before = tree_digest(tmp_path / "emb.zarr")

        def stop(layer, layers, done, total):
            if layer == layers - 1 and done > total // 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            infer_embeddings(store, tmp_path / "m.pt", tmp_path / "emb.zarr", layer_batch=100,
                             overwrite=True, progress=stop)
    assert tree_digest(tmp_path / "emb.zarr") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.zarr", "m.pt"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_written_meanwhile_is_kept(store_path, tmp_path, overwrite):
    """Another process writing ``out`` while a run works (a second ``infer`` with the same
    ``out``) keeps its output: the later run is refused rather than replacing it, unless
    it was told to overwrite a directory."""
    with Store(store_path) as store:
        saved_model(tmp_path / "m.pt", store)

        def other_run(layer, layers, done, total):
            if layer == layers - 1 and done == total:
                if overwrite:  # not an array: never replaced, even with overwrite
                    (tmp_path / "emb.zarr").mkdir()
                    (tmp_path / "emb.zarr" / "keep").write_text("mine")
                else:
                    infer_embeddings(store, tmp_path / "m.pt", tmp_path / "emb.zarr")
                    (tmp_path / "emb.zarr" / "keep").write_text("mine")

        with pytest.raises(UsageError, match="created by another process while inference ran"
                           if not overwrite else "holds no zarr array"):
            infer_embeddings(store, tmp_path / "m.pt", tmp_path / "emb.zarr",
                             overwrite=overwrite, progress=other_run)
    assert (tmp_path / "emb.zarr" / "keep").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.zarr", "m.pt"]


def test_corrupt_features_refused(store_path, tmp_path, capsys):
    """A flipped bit in the features is caught by the chunk checksums: exit 2, no output."""
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(store_path, copy)
    with Store(copy) as store:
        saved_model(tmp_path / "m.pt", store)
        meta = store.array_meta("features")
        path = store.file_path(meta)
    with open(path, "r+b") as f:
        f.seek(meta.offset + 1000)
        b = f.read(1)
        f.seek(meta.offset + 1000)
        f.write(bytes([b[0] ^ 0x10]))
    assert _cli(copy, "--checkpoint", tmp_path / "m.pt", "--out", tmp_path / "e.zarr",
                "--quiet") == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "features" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "s"]


def test_plan_layer_count_mismatch(store_path, tmp_path, capsys):
    """--plan (or a checkpoint DIR's own plan) with another layer count is refused."""
    import shutil

    from oocstore.samplers import sample_plan
    from oocstore.train.checkpoint import save_checkpoint

    copy = tmp_path / "s"
    shutil.copytree(store_path, copy)
    with Store(copy, readonly=False) as store:
        sample_plan(store, fanouts="5,5,5", batch_size=256, epochs=1, name="three")
    with Store(copy) as store:
        model = saved_model(tmp_path / "m.pt", store, layers=2)
    save_checkpoint(tmp_path / "ck", {"plan": "three", "epoch": 0, "history": [],
                                      "model": model.state_dict(),
                                      "optimizer": torch.optim.Adam(model.parameters())
                                      .state_dict(), "rng": {}})
    before = tree_digest(copy)
    assert _cli(copy, "--checkpoint", tmp_path / "m.pt", "--out", tmp_path / "e.zarr",
                "--plan", "three", "--quiet") == 2
    assert "has 2 layers but --plan three samples 3" in capsys.readouterr().err
    assert _cli(copy, "--checkpoint", tmp_path / "ck", "--out", tmp_path / "e.zarr",
                "--quiet") == 2
    assert "has 2 layers but its training plan 'three' samples 3" in capsys.readouterr().err
    assert tree_digest(copy) == before and not (tmp_path / "e.zarr").exists()
