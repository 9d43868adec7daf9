"""Planetoid ingest: the standard split, CiteSeer's missing test ids, bad files."""

from __future__ import annotations

import collections
import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from oocstore import cli
from oocstore.errors import SourceError
from oocstore.ingest import build_store
from oocstore.ingest.planetoid import VAL_SIZE, planetoid_source

A, D, C = 510, 6, 3          # allx rows, features, classes (A >= len(y) + 500)
N_TRAIN = 4
TEST = np.array([A + 3, A, A + 2, A + 4])  # not sorted; id A + 1 is missing (CiteSeer-like)
N = A + 5


def _onehot(labels: np.ndarray) -> np.ndarray:
    return np.eye(C, dtype=np.int32)[labels]


@pytest.fixture
def tiny(tmp_path):
    """Planetoid files ind.tiny.* plus the arrays they encode, in node order."""
    rng = np.random.default_rng(1)
    allx = sp.random(A, D, density=0.3, format="csr", random_state=2, dtype=np.float32)
    tx = sp.random(TEST.size, D, density=0.5, format="csr", random_state=4, dtype=np.float32)
    ally_lab = rng.integers(0, C, size=A)
    ty_lab = rng.integers(1, C, size=TEST.size)  # never 0, so the missing node's 0 stands out
    graph = collections.defaultdict(list)
    src = rng.integers(0, N, size=40)
    dst = rng.integers(0, N, size=40)
    keep = (src != A + 1) & (dst != A + 1)  # the missing test id is isolated, as in CiteSeer
    src, dst = src[keep], dst[keep]
    for s, d in zip(src, dst):
        graph[int(s)].append(int(d))
    graph[int(src[0])].append(int(dst[0]))  # a duplicate
    graph[7].append(7)  # a self-loop
    objs = {"x": allx[:N_TRAIN], "y": _onehot(ally_lab[:N_TRAIN]), "allx": allx,
            "ally": _onehot(ally_lab), "tx": tx, "ty": _onehot(ty_lab), "graph": graph}
    for suffix, obj in objs.items():
        with open(tmp_path / f"ind.tiny.{suffix}", "wb") as f:
            pickle.dump(obj, f, protocol=2)
    (tmp_path / "ind.tiny.test.index").write_text("".join(f"{i}\n" for i in TEST))

    features = np.zeros((N, D), dtype=np.float32)
    features[:A] = allx.toarray()
    features[TEST] = tx.toarray()  # row i of tx belongs to node TEST[i]
    labels = np.zeros(N, dtype=np.int64)  # node A + 1: zero one-hot -> label 0
    labels[:A] = ally_lab
    labels[TEST] = ty_lab
    all_src = np.concatenate([src, [7]])
    all_dst = np.concatenate([dst, [7]])
    return tmp_path, features, labels, all_src, all_dst


def test_round_trip_and_standard_split(tmp_path, tiny, h):
    folder, features, labels, src, dst = tiny
    got = h.read_store(build_store(tmp_path / "s", planetoid_source(folder, "tiny")))
    np.testing.assert_array_equal(got["features"], features)
    np.testing.assert_array_equal(got["labels"], labels)
    assert got["labels"][A + 1] == 0 and not got["features"][A + 1].any()
    assert h.same_graph(got["adj"], h.expected_adj(N, src, dst, directed=False))
    np.testing.assert_array_equal(got["splits"]["train"], np.arange(N_TRAIN))
    np.testing.assert_array_equal(got["splits"]["val"], np.arange(N_TRAIN, N_TRAIN + VAL_SIZE))
    np.testing.assert_array_equal(got["splits"]["test"], np.sort(TEST))
    assert got["source"]["isolated_test_range_nodes"] == 1


def test_name_is_case_insensitive_when_files_are_lower_case(tiny):
    g = planetoid_source(tiny[0], "TINY")
    assert g.num_nodes == N


def test_missing_file(tiny, fails):
    folder = tiny[0]
    (folder / "ind.tiny.graph").unlink()
    fails(lambda: planetoid_source(folder, "tiny"), SourceError,
          r"ind\.tiny\.graph is missing: .* must hold ind\.tiny\.\{x,y,tx,ty,allx,ally,graph,"
          r"test\.index\}")


def test_wrong_name(tiny, fails):
    fails(lambda: planetoid_source(tiny[0], "cora"), SourceError,
          r"ind\.cora\.y is missing.*check DIR and NAME")


def test_tx_rows_disagree_with_test_index(tiny, fails):
    folder = tiny[0]
    (folder / "ind.tiny.test.index").write_text("".join(f"{i}\n" for i in TEST[:3]))
    fails(lambda: planetoid_source(folder, "tiny"), SourceError,
          r"ind\.tiny\.tx has 4 rows / ids but ind\.tiny\.test\.index has 3")


def test_bad_test_index_line(tiny, fails):
    folder = tiny[0]
    (folder / "ind.tiny.test.index").write_text(f"{A}\n{A + 2}\nabc\n")
    fails(lambda: planetoid_source(folder, "tiny"), SourceError,
          r"ind\.tiny\.test\.index, line 3: 'abc' is not a node id")


def test_test_ids_must_follow_allx(tiny, fails):
    folder = tiny[0]
    (folder / "ind.tiny.test.index").write_text("".join(f"{i + 1}\n" for i in TEST))
    fails(lambda: planetoid_source(folder, "tiny"), SourceError,
          rf"smallest test id is {A + 1}, but the test nodes must follow the {A} rows")


def test_truncated_pickle(tiny, fails):
    path = tiny[0] / "ind.tiny.allx"
    path.write_bytes(path.read_bytes()[:100])
    fails(lambda: planetoid_source(tiny[0], "tiny"), SourceError,
          r"ind\.tiny\.allx: cannot unpickle .*truncated or corrupt")


def test_unexpected_objects_are_not_unpickled(tiny, fails):
    with open(tiny[0] / "ind.tiny.graph", "wb") as f:
        pickle.dump(collections.Counter("ab"), f)
    fails(lambda: planetoid_source(tiny[0], "tiny"), SourceError,
          r"ind\.tiny\.graph: cannot unpickle \(refusing to load collections\.Counter")


def test_cli(tmp_path, tiny, capsys, h):
    out = tmp_path / "s"
    assert cli.main(["ingest", "planetoid", str(tiny[0]), "nope", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ind.nope.y is missing" in err
    h.nothing_left(out)
    assert cli.main(["ingest", "planetoid", str(tiny[0]), "tiny", str(out), "--quiet"]) == 0
    assert h.read_store(out)["graph"].num_nodes == N


@pytest.mark.parametrize("name,nodes,feats,split,edges", [
    ("cora", 2708, 1433, (140, 500, 1000), 10556),     # PyG: Cora edge_index 10,556
    ("citeseer", 3327, 3703, (120, 500, 1000), 9104),  # PyG: CiteSeer edge_index 9,104
])
def test_real(tmp_path, real_data, h, name, nodes, feats, split, edges):
    folder = real_data("planetoid", f"ind.{name}.x", f"ind.{name}.graph")
    got = h.read_store(build_store(tmp_path / "s", planetoid_source(folder, name)))
    assert got["features"].shape == (nodes, feats)
    assert tuple(got["splits"][k].size for k in ("train", "val", "test")) == split
    assert got["graph"].num_edges == edges
    assert got["labels"].max() + 1 == {"cora": 7, "citeseer": 6}[name]


def test_real_cora_matches_pyg(tmp_path, real_data, h):
    """PyG's own Planetoid reader on the same files is the reference."""
    folder = real_data("planetoid", "ind.cora.x")
    pyg_io = pytest.importorskip("torch_geometric.io", reason="PyG is not installed")
    got = h.read_store(build_store(tmp_path / "s", planetoid_source(folder, "cora")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its pickles name scipy.sparse.csr
        data = pyg_io.read_planetoid_data(str(folder), "cora")
    np.testing.assert_array_equal(got["features"], data.x.numpy())
    np.testing.assert_array_equal(got["labels"], data.y.numpy())
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(got["splits"][k],
                                      np.flatnonzero(getattr(data, f"{k}_mask").numpy()))
    ei = data.edge_index.numpy()
    assert h.same_graph(got["adj"], h.expected_adj(data.num_nodes, ei[0], ei[1], directed=True))
