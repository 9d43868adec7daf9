"""The synthetic generator: deterministic, skewed, homophilous, and informative in the
way the demo and benchmarks rely on (the graph adds accuracy a feature-only model lacks)."""

import numpy as np
import pytest
import torch

from oocstore import Store
from oocstore.errors import UsageError
from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_features, synthetic_source


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and "catalog.lmdb" not in p.parts}


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    spec = SyntheticSpec(nodes=3000, avg_degree=8, feat_dim=16, classes=4, seed=7)
    build_store(tmp_path / "a", synthetic_source(spec))
    build_store(tmp_path / "b", synthetic_source(spec))
    build_store(tmp_path / "c", synthetic_source(SyntheticSpec(nodes=3000, avg_degree=8,
                                                               feat_dim=16, classes=4, seed=8)))
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys() and a["arrays/features.1.bin"] != c["arrays/features.1.bin"]


def test_feature_blocks_do_not_depend_on_how_they_are_consumed():
    spec = SyntheticSpec(nodes=5000, feat_dim=8, classes=3, seed=1)
    labels = np.zeros(spec.nodes, dtype=np.int64)
    whole = np.concatenate(list(synthetic_features(spec, labels)))
    again = np.concatenate(list(synthetic_features(spec, labels)))
    assert whole.shape == (5000, 8) and np.array_equal(whole, again)


def test_graph_is_skewed_and_homophilous(tmp_path):
    spec = SyntheticSpec(nodes=20000, avg_degree=16, feat_dim=8, classes=8, seed=0)
    build_store(tmp_path / "s", synthetic_source(spec))
    store = Store(tmp_path / "s")
    indptr, indices = (np.asarray(a) for a in store.csc())
    labels = np.asarray(store.array("labels"))
    deg = np.diff(indptr)
    assert 12 <= deg.mean() <= 16.5          # duplicates and self-loops dropped
    assert deg.max() > 50 * np.median(deg)   # R-MAT hubs
    dst = np.repeat(np.arange(spec.nodes), deg)
    same = (labels[dst] == labels[indices]).mean()
    assert same > 0.6                        # 1/8 if labels ignored the graph


def _accuracy(x, y, train, test, epochs=150):
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[train]), y[train]).backward()
        opt.step()
    with torch.no_grad():
        return (model(x[test]).argmax(1) == y[test]).float().mean().item()


def test_graph_adds_accuracy_a_feature_only_model_cannot_reach(tmp_path):
    # Default generator settings at a small size: a linear model on a node's own features
    # stays well under 80 %; the same model on [own, mean of neighbours] features (one
    # GraphSAGE-style aggregation) gains more than 10 points.
    spec = SyntheticSpec(nodes=20000, seed=3)
    build_store(tmp_path / "s", synthetic_source(spec))
    store = Store(tmp_path / "s")
    x = torch.from_numpy(np.array(store.array("features")))
    y = torch.from_numpy(np.array(store.array("labels")))
    indptr, indices = (np.asarray(a) for a in store.csc())
    deg = np.diff(indptr)
    dst = torch.from_numpy(np.repeat(np.arange(spec.nodes), deg))
    agg = torch.zeros_like(x).index_add_(0, dst, x[torch.from_numpy(indices.astype(np.int64))])
    agg /= torch.from_numpy(np.maximum(deg, 1)).float()[:, None]
    train, test = (torch.from_numpy(np.array(store.split(s))) for s in ("train", "test"))
    own = _accuracy(x, y, train, test)
    graph = _accuracy(torch.cat([x, agg], 1), y, train, test)
    assert own <= 0.80
    assert graph >= own + 0.10


@pytest.mark.parametrize("kwargs, match", [
    ({"nodes": 1}, "nodes=1"),
    ({"classes": 1}, "classes=1"),
    ({"feat_dim": 0}, "feat_dim=0"),
    ({"rmat": (0.5, 0.5, 0.5, 0.5)}, "rmat=0.5,0.5,0.5,0.5"),
    ({"homophily": 1.5}, "homophily=1.5"),
])
def test_bad_parameters_are_refused(kwargs, match):
    with pytest.raises(UsageError, match=match):
        SyntheticSpec(**kwargs)


def test_an_unsupported_dtype_is_refused_by_its_parameter_name(tmp_path):
    source = synthetic_source(SyntheticSpec(nodes=100, avg_degree=2, feat_dim=4))
    with pytest.raises(UsageError, match=r"^dtype='float64' is not supported: use float32 or "
                                         r"float16$"):
        build_store(tmp_path / "s", source, dtype="float64")
    assert not (tmp_path / "s").exists()


def test_an_empty_training_split_is_refused_by_its_parameter_name(tmp_path, capsys):
    """build_store names split_fractions; `oocstore ingest` writes --split in instead."""
    from oocstore.cli import main

    source = synthetic_source(SyntheticSpec(nodes=100, avg_degree=2, feat_dim=4))
    with pytest.raises(UsageError) as err:
        build_store(tmp_path / "s", source, split_fractions=(0.001, 0.5, 0.4))
    assert str(err.value) == ("split_fractions gives an empty training set for 100 nodes: raise "
                              "the training fraction")
    assert not (tmp_path / "s").exists()
    assert main(["ingest", "synthetic", str(tmp_path / "s"), "--nodes", "100", "--feat-dim", "4",
                 "--split", "0.001,0.5,0.4", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == ("oocstore: error: --split gives an empty training "
                                               "set for 100 nodes: raise the training fraction")
    assert not (tmp_path / "s").exists()
