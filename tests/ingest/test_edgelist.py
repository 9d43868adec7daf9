"""Edge-list ingest: parsing (plain, gzip, comments, chunk edges), remapping, generated or
given features and labels, and every refused line."""

from __future__ import annotations

import gzip
import time

import numpy as np
import pytest

from oocstore import cli
from oocstore.errors import SourceError, UsageError
from oocstore.ingest import build_store
from oocstore.ingest import edgelist as el
from oocstore.ingest.edgelist import edgelist_source, homophilous_labels

TEXT = (b"# Directed graph: tiny\n"
        b"# FromNodeId\tToNodeId\n"
        b"10\t20\n"
        b"20 10\n"
        b"\n"
        b"  5   1000\r\n"
        b"1000\t1000\n"
        b"   # an indented comment 1 2 3\n"
        b"7 5\n"
        b"5 20")  # no final newline
ORIG = np.array([5, 7, 10, 20, 1000])  # node i of the store is the i-th smallest id
SRC = np.array([10, 20, 5, 1000, 7, 5])
DST = np.array([20, 10, 1000, 1000, 5, 20])


def _ids(a):
    return np.searchsorted(ORIG, a)


def _source(path, **kw):
    args = dict(directed=False, feat_dim=4, classes=3, features=None, labels=None, seed=0)
    args.update(kw)
    return edgelist_source(path, **args)


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "g.txt"
    path.write_bytes(TEXT)
    return path


@pytest.mark.parametrize("directed", [False, True])
def test_round_trip(tmp_path, plain, h, directed):
    got = h.read_store(build_store(tmp_path / "s", _source(plain, directed=directed)))
    assert got["graph"].num_nodes == ORIG.size and got["graph"].directed == directed
    assert h.same_graph(got["adj"], h.expected_adj(ORIG.size, _ids(SRC), _ids(DST),
                                                   directed=directed))
    assert got["features"].shape == (ORIG.size, 4) and got["features"].dtype == np.float32
    assert got["source"]["edges_read"] == SRC.size and got["source"]["ids_remapped"]
    assert got["source"]["max_original_id"] == 1000


def test_gzip_is_detected_by_content_and_chunks_do_not_matter(tmp_path, plain, monkeypatch):
    gz = tmp_path / "g.txt"  # gzip data under a plain name
    plain.rename(tmp_path / "plain.txt")
    gz.write_bytes(gzip.compress(TEXT))
    ref = el.read_edge_list(tmp_path / "plain.txt")
    for read_bytes in (1, 7, 64):  # lines split across reads
        monkeypatch.setattr(el, "READ_BYTES", read_bytes)
        for path in (gz, tmp_path / "plain.txt"):
            src, dst, info = el.read_edge_list(path)
            np.testing.assert_array_equal(src, ref[0])
            np.testing.assert_array_equal(dst, ref[1])
            assert info["gzip"] == (path == gz)
    np.testing.assert_array_equal(ref[0], SRC)
    np.testing.assert_array_equal(ref[1], DST)


def test_given_features_and_labels(tmp_path, plain, h):
    x = np.random.default_rng(0).standard_normal((ORIG.size, 3))
    y = np.array([2, 0, 1, 1, 0])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    got = h.read_store(build_store(tmp_path / "s", _source(
        plain, features=tmp_path / "x.npy", labels=tmp_path / "y.npy")))
    np.testing.assert_array_equal(got["features"], x.astype(np.float32))
    np.testing.assert_array_equal(got["labels"], y)


def test_generated_data_is_deterministic_and_homophilous(tmp_path):
    # Two cliques of 30 joined by one edge: smoothed labels mostly agree inside a clique.
    lines = [f"{a} {b}" for base in (0, 30) for a in range(base, base + 30)
             for b in range(a + 1, base + 30)] + ["0 30"]
    path = tmp_path / "g.txt"
    path.write_text("\n".join(lines) + "\n")
    a, b, c = (_source(path, seed=s, classes=4) for s in (1, 1, 0))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)
    np.testing.assert_array_equal(np.concatenate(list(a.features)),
                                  np.concatenate(list(b.features)))
    same = np.mean(a.labels[a.src] == a.labels[a.dst])
    assert same > 0.9  # random labels: about 1/4


def test_homophilous_labels_keep_isolated_nodes_and_all_classes():
    src = np.array([0, 1, 2])
    dst = np.array([1, 2, 0])
    y = homophilous_labels(1000, src, dst, classes=5, seed=3)
    assert y.shape == (1000,) and set(np.unique(y)) == set(range(5))
    assert len(set(y[:3])) == 1  # the triangle agrees after smoothing


@pytest.mark.parametrize("text,match", [
    (b"1 2\n3 4 1.5\n", r"g\.txt, line 2: '3 4 1\.5' has 3 fields; each line must be exactly "
                        r"two node ids"),
    (b"# c\n1 2\n3\n", r"g\.txt, line 3: '3' has 1 fields"),
    (b"1 2\na b\n", r"g\.txt, line 2: 'a b' is not two non-negative integer node ids"),
    (b"1 2\n-1 2\n", r"line 2: '-1 2' is not two non-negative integer"),
    (b"1 2\n1.0 2\n", r"line 2: '1\.0 2' is not two non-negative"),
    (b"1 12345678901234567890\n", r"line 1: node id of 20 digits is too large"),
    (b"# only a comment\n\n", r"g\.txt holds no edges"),
    (b"3 3\n", r"edges name only 1 distinct node"),
    (b"\x00\x01\x02 \xff\n", r"line 1: .* is not two non-negative"),
])
def test_bad_lines(tmp_path, fails, text, match):
    path = tmp_path / "g.txt"
    path.write_bytes(text)
    fails(lambda: _source(path), SourceError, match)


def test_bad_line_number_across_reads(tmp_path, fails, monkeypatch):
    monkeypatch.setattr(el, "READ_BYTES", 5)
    path = tmp_path / "g.txt"
    path.write_bytes(b"# head\n" + b"".join(b"%d %d\n" % (i, i + 1) for i in range(50))
                     + b"1 x\n")
    fails(lambda: _source(path), SourceError, r"g\.txt, line 52: '1 x'")


def test_truncated_gzip(tmp_path, fails):
    data = gzip.compress(b"".join(b"%d %d\n" % (i, i + 1) for i in range(20000)))
    path = tmp_path / "g.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    fails(lambda: _source(path), SourceError, r"g\.txt\.gz: the gzip stream is truncated or "
                                              r"corrupt near line \d+ .*re-download it")


def test_corrupt_gzip(tmp_path, fails):
    data = bytearray(gzip.compress(b"".join(b"%d %d\n" % (i, i + 1) for i in range(2000))))
    data[30:40] = b"\xff" * 10
    path = tmp_path / "g.txt.gz"
    path.write_bytes(bytes(data))
    fails(lambda: _source(path), SourceError, r"g\.txt\.gz: the gzip stream is truncated or corrupt")


def test_missing_file(tmp_path, fails):
    fails(lambda: _source(tmp_path / "nope.txt"), SourceError, r"nope\.txt does not exist")


def test_features_and_labels_must_match_node_count(tmp_path, plain, fails):
    np.save(tmp_path / "x.npy", np.zeros((3, 2), dtype=np.float32))
    fails(lambda: _source(plain, features=tmp_path / "x.npy"), SourceError,
          r"x\.npy has 3 feature rows but .*g\.txt has 5 nodes \(distinct ids\)")
    np.save(tmp_path / "y.npy", np.zeros(7, dtype=np.int64))
    fails(lambda: _source(plain, labels=tmp_path / "y.npy"), SourceError,
          r"y\.npy has 7 labels but .*g\.txt has 5 nodes")
    np.save(tmp_path / "f.npy", np.zeros(5, dtype=np.float32))
    fails(lambda: _source(plain, labels=tmp_path / "f.npy"), SourceError,
          r"f\.npy: labels have shape \(5,\) and dtype float32")


def test_generator_options_are_checked(plain):
    with pytest.raises(UsageError, match=r"classes=1: give between 2 and 65536"):
        _source(plain, classes=1)
    with pytest.raises(UsageError, match=r"feat_dim=0: give at least 1"):
        _source(plain, feat_dim=0)


def test_cli(tmp_path, plain, capsys, h):
    out = tmp_path / "s"
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n")
    assert cli.main(["ingest", "edgelist", str(bad), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.txt, line 1" in err
    h.nothing_left(out)
    assert cli.main(["ingest", "edgelist", str(plain), str(out), "--feat-dim", "8", "--quiet"]) == 0
    assert h.read_store(out)["features"].shape == (ORIG.size, 8)


def test_real_slashdot(tmp_path, real_data, h):
    path = real_data("snap", "soc-Slashdot0902.txt.gz") / "soc-Slashdot0902.txt.gz"
    t0 = time.perf_counter()
    got = h.read_store(build_store(tmp_path / "s", _source(path, feat_dim=16, classes=8)))
    elapsed = time.perf_counter() - t0
    assert got["graph"].num_nodes == 82168
    assert got["source"]["edges_read"] == 948464
    assert got["graph"].num_edges == 1008460  # 504,230 undirected pairs, both directions
    assert elapsed < 30, f"ingest of Slashdot took {elapsed:.1f} s"
