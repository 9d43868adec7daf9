"""Array ingest: edge_index / features / labels from .npy, features from zarr v3."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from oocstore import cli
from oocstore.errors import SourceError, UsageError
from oocstore.ingest import build_store, common
from oocstore.ingest.arrays import arrays_source

N, D = 11, 4


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(5)
    ei = np.stack([rng.integers(0, N, 30), rng.integers(0, N, 30)])
    ei[:, 0] = (3, 3)  # a self-loop
    ei[:, 1] = ei[:, 2]  # a duplicate
    x = rng.standard_normal((N, D))  # float64, stored as float32
    y = rng.integers(0, 4, N)
    for name, arr in (("ei", ei), ("x", x), ("y", y)):
        np.save(tmp_path / f"{name}.npy", arr)
    return tmp_path, ei, x, y


def _source(folder, **kw):
    args = dict(edge_index=folder / "ei.npy", features=folder / "x.npy", features_zarr=None,
                labels=folder / "y.npy", directed=False)
    args.update(kw)
    return arrays_source(**args)


def _zarr(path, data, chunks, shards=None):
    z = zarr.create_array(str(path), shape=data.shape, chunks=chunks, shards=shards,
                          dtype=data.dtype)
    z[:] = data
    return path


@pytest.mark.parametrize("directed", [False, True])
def test_round_trip_npy(tmp_path, files, h, directed):
    folder, ei, x, y = files
    got = h.read_store(build_store(tmp_path / "s", _source(folder, directed=directed)))
    np.testing.assert_array_equal(got["features"], x.astype(np.float32))
    np.testing.assert_array_equal(got["labels"], y)
    assert h.same_graph(got["adj"], h.expected_adj(N, ei[0], ei[1], directed=directed))
    assert got["graph"].directed == directed


@pytest.mark.parametrize("shards", [None, (6, D)])
def test_round_trip_zarr_chunk_aligned(tmp_path, files, h, monkeypatch, shards):
    folder, ei, x, y = files
    path = _zarr(folder / "x.zarr", x.astype(np.float32), chunks=(3, D) if shards is None
                 else (2, D), shards=shards)
    monkeypatch.setattr(common, "FEATURE_BLOCK_BYTES", 7 * D * 4)  # 7 rows' worth
    g = _source(folder, features=None, features_zarr=path)
    blocks = list(g.features)
    assert [b.shape[0] for b in blocks] == [6, 5]  # whole chunks (3) or shards (6) in 7 rows
    np.testing.assert_array_equal(np.concatenate(blocks), x.astype(np.float32))
    got = h.read_store(build_store(tmp_path / "s", _source(folder, features=None,
                                                           features_zarr=path)))
    np.testing.assert_array_equal(got["features"], x.astype(np.float32))
    assert got["source"]["features_format"] == "zarr"


@pytest.mark.parametrize("bad,match", [
    (np.zeros(N), r"x\.npy have shape \(11,\); they must be 2-D"),
    (np.zeros((N, 2, 2)), r"x\.npy have shape \(11, 2, 2\); they must be 2-D"),
    (np.zeros((N, D), dtype=bool), r"x\.npy have dtype bool .*must be real numbers"),
    (np.zeros((N, D), dtype=np.complex64), r"x\.npy have dtype complex64 .*real numbers"),
    (np.zeros((N, D), dtype="U3"), r"x\.npy have dtype <U3 .*astype\(np\.float32\)"),
])
def test_bad_features_npy(files, fails, bad, match):
    folder = files[0]
    np.save(folder / "x.npy", bad)
    fails(lambda: _source(folder), SourceError, match)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((N, D), dtype=np.complex64), r"x\.zarr have dtype complex64"),
    (np.zeros((N, D), dtype=bool), r"x\.zarr have dtype bool"),
    (np.zeros(N, dtype=np.float32), r"x\.zarr have shape \(11,\); they must be 2-D"),
])
def test_bad_features_zarr(files, fails, bad, match):
    folder = files[0]
    path = _zarr(folder / "x.zarr", bad, chunks=bad.shape)
    fails(lambda: _source(folder, features=None, features_zarr=path), SourceError, match)


def test_zarr_path_is_not_an_array(files, fails):
    folder = files[0]
    zarr.create_group(str(folder / "grp.zarr"))
    fails(lambda: _source(folder, features=None, features_zarr=folder / "grp.zarr"), SourceError,
          r"grp\.zarr is not a readable zarr array .*not a group")
    fails(lambda: _source(folder, features=None, features_zarr=folder / "none.zarr"), SourceError,
          r"zarr array .*none\.zarr does not exist")


def test_labels_length_mismatch(files, fails):
    folder = files[0]
    np.save(folder / "y.npy", np.zeros(N - 1, dtype=np.int64))
    fails(lambda: _source(folder), SourceError,
          r"y\.npy has 10 labels but .*x\.npy has 11 feature rows")


def test_bad_edge_index(files, fails):
    folder, ei, _, _ = files
    np.save(folder / "ei.npy", ei.T)
    fails(lambda: _source(folder), SourceError, r"ei\.npy: edge_index has shape \(30, 2\), "
                                                r"expected \[2, E\] .*transpose")
    np.save(folder / "ei.npy", ei.astype(np.float32))
    fails(lambda: _source(folder), SourceError, r"ei\.npy: edge_index has dtype float32")
    ei = ei.copy()
    ei[1, 4] = N
    np.save(folder / "ei.npy", ei)
    fails(lambda: _source(folder), SourceError,
          r"ei\.npy: edge_index names node 11, but .*x\.npy has 11 feature rows")


@pytest.mark.parametrize("damage,match", [
    ("truncate", r"labels file .*y\.npy is not a readable \.npy"),
    ("text", r"labels file .*y\.npy is not a readable \.npy"),
    ("pickle", r"labels file .*y\.npy is not a readable \.npy .*holds Python objects"),
    ("npz", r"labels file .*y\.npy is an \.npz archive"),
    ("missing", r"labels file .*y\.npy does not exist"),
])
def test_unreadable_npy(files, fails, damage, match):
    folder = files[0]
    path = folder / "y.npy"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:90])
    elif damage == "text":
        path.write_text("1,2,3\n")
    elif damage == "pickle":
        np.save(path, np.array([1, "a", None], dtype=object), allow_pickle=True)
    elif damage == "npz":
        with open(path, "wb") as f:
            np.savez(f, y=np.zeros(N))
    else:
        path.unlink()
    fails(lambda: _source(folder), SourceError, match)


def test_exactly_one_feature_source(files):
    folder = files[0]
    with pytest.raises(UsageError, match="exactly one"):
        _source(folder, features_zarr=folder / "x.zarr")


def test_cli(tmp_path, files, capsys, h):
    folder = files[0]
    out = tmp_path / "s"
    common_args = ["ingest", "arrays", str(out), "--edge-index", str(folder / "ei.npy"),
                   "--labels", str(folder / "y.npy"), "--quiet"]
    np.save(folder / "bad.npy", np.zeros(N, dtype=bool))
    assert cli.main([*common_args, "--features", str(folder / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.npy have shape (11,)" in err
    h.nothing_left(out)
    assert cli.main([*common_args, "--features", str(folder / "x.npy")]) == 0
    assert h.read_store(out)["features"].shape == (N, D)


def test_non_finite_features_name_the_parameter_that_keeps_them(tmp_path, files, capsys, h):
    """build_store says allow_nonfinite=True; `oocstore ingest` writes --allow-nonfinite."""
    folder, _, x, _ = files
    x[4, 2] = np.nan
    np.save(folder / "x.npy", x)
    out = tmp_path / "s"
    with pytest.raises(SourceError) as err:
        build_store(out, _source(folder))
    assert str(err.value).endswith("pass allow_nonfinite=True to keep them")
    assert "--" not in str(err.value)
    h.nothing_left(out)
    assert cli.main(["ingest", "arrays", str(out), "--edge-index", str(folder / "ei.npy"),
                     "--labels", str(folder / "y.npy"), "--features", str(folder / "x.npy"),
                     "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("pass --allow-nonfinite to keep them"), err
    h.nothing_left(out)
