"""npz ingest: GraphData (pickled scipy matrices) and gnn-benchmark (CSR parts) layouts."""

from __future__ import annotations

import collections
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from oocstore import cli
from oocstore.errors import SourceError, UsageError
from oocstore.ingest import build_store, common
from oocstore.ingest.npz import npz_source

N, D = 9, 5


def _obj(value) -> np.ndarray:
    """A 0-d object array holding ``value`` (how GraphData stores scipy matrices)."""
    out = np.empty((), dtype=object)
    out[()] = value
    return out


@pytest.fixture
def graph():
    rng = np.random.default_rng(7)
    src = np.array([0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 2, 5])
    dst = np.array([1, 0, 2, 2, 4, 5, 6, 7, 8, 0, 1, 3])  # a reverse pair, a self-loop
    adj = sp.csr_matrix((np.ones(src.size), (src, dst)), shape=(N, N))
    attr = sp.random(N, D, density=0.4, format="csr", random_state=3, dtype=np.float64)
    labels = rng.integers(0, 3, size=N).astype(np.int32)
    return src, dst, adj, attr, labels


def write_graphdata(path, adj, attr, labels, **extra):
    np.savez(path, adj_matrix=_obj(adj), node_attr=attr if isinstance(attr, np.ndarray)
             else _obj(attr), node_label=labels, **extra)
    return path


def test_round_trip_graphdata(tmp_path, graph, h):
    src, dst, adj, attr, labels = graph
    path = write_graphdata(tmp_path / "g.npz", adj, attr, labels, metadata=_obj({"a": 1}))
    got = h.read_store(build_store(tmp_path / "s", npz_source(path, trust_pickle=True), seed=3))
    np.testing.assert_array_equal(got["features"], attr.toarray().astype(np.float32))
    np.testing.assert_array_equal(got["labels"], labels)
    assert h.same_graph(got["adj"], h.expected_adj(N, src, dst, directed=False))
    assert not got["graph"].directed
    assert sorted(got["splits"]) == ["test", "train", "val"]
    ids = np.concatenate(list(got["splits"].values()))
    assert np.unique(ids).size == ids.size  # generated splits are disjoint
    assert got["source"]["layout"] == "graphdata"


def test_dense_node_attr_and_explicit_zero_edges(tmp_path, graph, h):
    src, dst, adj, attr, labels = graph
    adj = adj.copy()
    adj.data[0] = 0.0  # an explicit zero is not an edge
    dense = attr.toarray()
    path = write_graphdata(tmp_path / "g.npz", adj, dense, labels)
    got = h.read_store(build_store(tmp_path / "s", npz_source(path, trust_pickle=True)))
    np.testing.assert_array_equal(got["features"], dense.astype(np.float32))
    assert h.same_graph(got["adj"], h.expected_adj(N, src[1:], dst[1:], directed=False))


def test_features_are_densified_block_by_block(tmp_path, graph, monkeypatch):
    _, _, adj, attr, labels = graph
    monkeypatch.setattr(common, "FEATURE_BLOCK_BYTES", 2 * D * attr.dtype.itemsize)  # 2 rows
    g = npz_source(write_graphdata(tmp_path / "g.npz", adj, attr, labels), trust_pickle=True)
    blocks = list(g.features)
    assert [b.shape[0] for b in blocks] == [2, 2, 2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(blocks), attr.toarray())


def test_gnn_benchmark_layout_needs_no_pickle(tmp_path, graph, h):
    src, dst, adj, attr, labels = graph
    path = tmp_path / "b.npz"
    np.savez(path, adj_data=adj.data, adj_indices=adj.indices, adj_indptr=adj.indptr,
             adj_shape=np.array(adj.shape), attr_data=attr.data, attr_indices=attr.indices,
             attr_indptr=attr.indptr, attr_shape=np.array(attr.shape), labels=labels)
    got = h.read_store(build_store(tmp_path / "s", npz_source(path, trust_pickle=False)))
    np.testing.assert_array_equal(got["features"], attr.toarray().astype(np.float32))
    assert h.same_graph(got["adj"], h.expected_adj(N, src, dst, directed=False))
    assert got["source"]["layout"] == "gnn-benchmark"


def test_csr_index_arrays_must_be_integers(tmp_path, graph, fails):
    """A float scalar where adj_indices belong (found by fuzzing: scipy cast it to int32
    with a warning instead of refusing it)."""
    _, _, adj, _, labels = graph
    path = tmp_path / "b.npz"
    np.savez(path, adj_data=adj.data, adj_indices=np.float32(1.9e33), adj_indptr=adj.indptr,
             adj_shape=np.array(adj.shape), attr_matrix=np.ones((N, 2), np.float32),
             labels=labels)
    fails(lambda: npz_source(path, trust_pickle=False), SourceError,
           r"b\.npz: adj_indices is float32 \(\), not a 1-D integer array")


def test_pickles_need_trust(tmp_path, graph, fails):
    path = write_graphdata(tmp_path / "g.npz", *graph[2:])
    fails(lambda: npz_source(path, trust_pickle=False), UsageError,
           r"g\.npz: array 'adj_matrix' is a pickled .*can run arbitrary code: pass --trust-pickle")


def test_missing_key_names_file_key_and_keys_present(tmp_path, graph, fails):
    _, _, adj, attr, _ = graph
    path = tmp_path / "g.npz"
    np.savez(path, adj_matrix=_obj(adj), node_attr=_obj(attr))
    fails(lambda: npz_source(path, trust_pickle=True), SourceError,
           r"g\.npz has no array 'node_label' \(it has: adj_matrix, node_attr\)")


def test_truncated_file(tmp_path, graph, fails):
    path = write_graphdata(tmp_path / "g.npz", *graph[2:])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    fails(lambda: npz_source(path, trust_pickle=True), SourceError,
           r"g\.npz is not a readable \.npz .*truncated")


def test_corrupt_member(tmp_path, graph, fails):
    """A zip whose member is cut short (central directory intact)."""
    src = write_graphdata(tmp_path / "g.npz", *graph[2:])
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            zout.writestr(name, data[:60] if name == "adj_matrix.npy" else data)
    fails(lambda: npz_source(path, trust_pickle=True), SourceError,
           r"bad\.npz.*'adj_matrix'.*truncated or corrupt")


def test_not_an_archive(tmp_path, fails):
    path = tmp_path / "g.npz"
    path.write_text("0 1\n1 2\n")
    fails(lambda: npz_source(path, trust_pickle=True), SourceError,
           r"g\.npz is not a readable \.npz")


def test_unexpected_pickled_objects_are_refused(tmp_path, graph, fails):
    _, _, adj, _, labels = graph
    path = tmp_path / "g.npz"
    np.savez(path, adj_matrix=_obj(adj), node_attr=_obj(collections.Counter("ab")),
             node_label=labels)
    fails(lambda: npz_source(path, trust_pickle=True), SourceError,
           r"node_attr.*refusing to load collections\.Counter")


def test_inconsistent_sizes(tmp_path, graph, fails):
    _, _, adj, attr, labels = graph
    path = write_graphdata(tmp_path / "g.npz", adj, attr[:-1], labels)
    fails(lambda: npz_source(path, trust_pickle=True), SourceError,
           r"features have 8 rows but the adjacency matrix has 9 nodes")
    path = write_graphdata(tmp_path / "h.npz", adj, attr, labels[:-2])
    fails(lambda: npz_source(path, trust_pickle=True), SourceError,
           r"labels have shape \(7,\) but the adjacency matrix has 9 nodes")


def test_cli(tmp_path, graph, capsys, h):
    path = str(write_graphdata(tmp_path / "g.npz", *graph[2:]))
    out = tmp_path / "s"
    assert cli.main(["ingest", "npz", path, str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("oocstore: error: ") and "--trust-pickle" in err
    h.nothing_left(out)
    assert cli.main(["ingest", "npz", path, str(out), "--trust-pickle", "--quiet"]) == 0
    assert h.read_store(out)["features"].shape == (N, D)


def test_real_amazon_photo(tmp_path, real_data, h):
    path = real_data("graphdata", "amazon_photo.npz") / "amazon_photo.npz"
    got = h.read_store(build_store(tmp_path / "s", npz_source(path, trust_pickle=True)))
    assert got["features"].shape == (7650, 745)
    assert got["graph"].num_edges == 238162  # PyG's Amazon Photo edge_index has 238,162
    assert got["labels"].max() == 7
