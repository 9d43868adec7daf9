"""OocFeatureStore: PyG's FeatureStore contract over a store, against a numpy oracle."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oocstore.errors import OocError, UsageError
from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.store import Store

pytest.importorskip("torch_geometric", reason="needs PyTorch Geometric (oocstore[pyg])")

from torch_geometric.data import TensorAttr  # noqa: E402

from oocstore.integrations.pyg_store import (OocFeatureStore, RowIndexError,  # noqa: E402
                                             TensorNotFoundError)

N, D = 500, 8


@pytest.fixture(scope="module", params=["float32", "float16"])
def template(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"pygstore-{request.param}") / "s"
    return build_store(path, synthetic_source(SyntheticSpec(nodes=N, feat_dim=D, seed=5)),
                       dtype=request.param, seed=5)


@pytest.fixture
def oracle(template):
    with Store(template) as store:
        return {"x": np.array(store.array("features")), "y": np.array(store.array("labels"))}


@pytest.fixture
def fs(template):
    with OocFeatureStore(template, node_type="paper") as fs:
        yield fs


@pytest.fixture
def writable(template, tmp_path):
    path = tmp_path / "w"
    shutil.copytree(template, path)
    with OocFeatureStore(path, readonly=False, node_type="paper") as fs:
        yield fs


IDS = np.array([17, 3, 499, 3, 0, 250, 17], dtype=np.int64)  # unsorted, repeated, both ends
# (numpy index arrays are absent: PyG's own TensorAttr.is_set cannot compare them)
INDEX_FORMS = [
    (None, slice(None)),
    (torch.from_numpy(IDS), IDS),
    (IDS.tolist(), IDS),
    (torch.from_numpy(IDS).to(torch.int32), IDS),
    (torch.empty(0, dtype=torch.long), np.empty(0, dtype=np.int64)),
    (slice(10, 40), slice(10, 40)),
    (slice(None, None, 7), slice(None, None, 7)),
    (slice(-5, None), slice(-5, None)),
    (slice(480, 900), slice(480, 900)),  # slices clip, as they do on tensors
    (range(100, 130), slice(100, 130)),
    (range(0, 60, 4), slice(0, 60, 4)),
    (42, 42),
    (torch.from_numpy(np.arange(N) % 3 == 0), np.arange(N) % 3 == 0),
]


@pytest.mark.parametrize("index, np_index", INDEX_FORMS,
                         ids=[f"{type(i).__name__}{k}" for k, (i, _) in enumerate(INDEX_FORMS)])
@pytest.mark.parametrize("group", [None, "paper"])
def test_get_matches_oracle_for_every_index_form(fs, oracle, group, index, np_index):
    for attr in ("x", "y"):
        want = oracle[attr][np_index]
        got = fs.get_tensor(group, attr, index)
        assert isinstance(got, torch.Tensor)
        assert got.dtype == torch.from_numpy(np.asarray(want)).dtype  # float16 stays float16
        np.testing.assert_array_equal(got.numpy(), want)
        assert tuple(got.shape) == fs.get_tensor_size(group, attr, index)


def test_float16_features_stay_float16(template, fs):
    with Store(template) as store:
        dtype = store.array_meta("features").np_dtype
    assert fs["paper", "x", None].numpy().dtype == dtype


def test_results_are_writable_copies(fs, oracle):
    x = fs.get_tensor("paper", "x", torch.tensor([1, 2]))
    x += 1  # would raise on a read-only memory map
    full = fs.get_tensor(None, "x", None)
    full[0] = 1000
    np.testing.assert_array_equal(fs.get_tensor(None, "x", None)[1:].numpy(), oracle["x"][1:])
    assert fs.get_tensor(None, "x", 0)[0] != 1000


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.integers(0, N - 1), max_size=300))
def test_get_random_ids_property(template, ids):
    with OocFeatureStore(template) as fs, Store(template) as store:
        x, y = fs.multi_get_tensor([TensorAttr(None, "x", torch.tensor(ids, dtype=torch.long)),
                                    TensorAttr(None, "y", torch.tensor(ids, dtype=torch.long))])
        np.testing.assert_array_equal(x.numpy(), np.asarray(store.array("features"))[ids])
        np.testing.assert_array_equal(y.numpy(), np.asarray(store.array("labels"))[ids])


def test_multi_get_equals_individual_gets(fs):
    shared = torch.tensor([9, 1, 400, 9, 77])
    attrs = [TensorAttr("paper", "x", shared), TensorAttr(None, "y", shared),
             TensorAttr("paper", "y", slice(5, 9)), TensorAttr(None, "x", None),
             TensorAttr("paper", "x", torch.tensor([3]))]
    many = fs.multi_get_tensor(attrs)
    assert len(many) == len(attrs)
    for attr, got in zip(attrs, many):
        assert torch.equal(got, fs.get_tensor(attr))


def test_views_and_item_access(fs, oracle):
    ids = torch.tensor([4, 2, 8])
    want = oracle["x"][[4, 2, 8]]
    for got in (fs["paper", "x", ids], fs["paper"].x[ids], fs["paper"]["x"][ids],
                fs[None, "x"][ids], fs.view(group_name="paper", attr_name="x")[ids]):
        np.testing.assert_array_equal(got.numpy(), want)
    view = fs.view(group_name="paper", attr_name="y")
    view.index = ids
    np.testing.assert_array_equal(view().numpy(), oracle["y"][[4, 2, 8]])
    np.testing.assert_array_equal(fs["paper"].y().numpy(), oracle["y"])  # call: all rows
    with pytest.raises(ValueError, match="not fully specified"):
        fs.get_tensor(TensorAttr("paper", "x"))


def test_size_and_all_attrs(fs):
    assert fs.get_tensor_size("paper", "x") == (N, D)
    assert fs.get_tensor_size(None, "y") == (N,)
    assert fs.get_tensor_size("paper", "x", torch.tensor([1, 2, 3])) == (3, D)
    assert fs.get_tensor_size("paper", "x", 5) == (D,)
    assert fs.get_tensor_size("paper", "nope") is None
    assert [(a.group_name, a.attr_name) for a in fs.get_all_tensor_attrs()] == [
        ("paper", "x"), ("paper", "y")]  # graph/split arrays are not node tensors
    with OocFeatureStore(fs.store) as plain:
        assert [(a.group_name, a.attr_name) for a in plain.get_all_tensor_attrs()] == [
            (None, "x"), (None, "y")]


def test_put_get_round_trip_commits_atomically(writable):
    path = writable.store.path
    version = writable.store.version
    emb = torch.randn(N, 4, generator=torch.Generator().manual_seed(0)).half()
    assert writable.put_tensor(emb, group_name="paper", attr_name="emb", index=None)
    paper_count = torch.arange(30, dtype=torch.int32)
    writable["author", "count", None] = paper_count  # another group: any row count
    assert writable.store.version == version + 2
    with OocFeatureStore(path, node_type="paper") as fresh:  # a new reader sees the commit
        got = fresh["paper", "emb", torch.tensor([7, 0])]
        assert got.dtype == torch.float16 and torch.equal(got, emb[[7, 0]])
        assert torch.equal(fresh["author"].count(), paper_count)
        assert fresh.get_tensor_size("author", "count") == (30,)
        assert [(a.group_name, a.attr_name) for a in fresh.get_all_tensor_attrs()] == [
            ("paper", "x"), ("paper", "y"), ("paper", "emb"), ("author", "count")]
    with Store(path) as store:
        assert store.array_meta("emb").shape == (N, 4)
        assert store.array_meta("pyg/author/count").dtype == "int32"


def test_put_whole_tensor_replaces_and_update_is_one_commit(writable, oracle):
    version = writable.store.version
    new_y = torch.from_numpy(oracle["y"][::-1].copy())
    writable.put_tensor(new_y, None, "y", torch.arange(N))  # an index covering every row
    assert torch.equal(writable[None, "y", None], new_y)
    writable.update_tensor(new_y + 1, "paper", "y", None)
    assert writable.store.version == version + 2
    with Store(writable.store.path) as store:
        np.testing.assert_array_equal(store.array("labels"), oracle["y"][::-1] + 1)


def test_put_with_partial_index_is_refused(writable):
    with pytest.raises(UsageError, match="immutable.*index=None"):
        writable.put_tensor(torch.zeros(2, D), "paper", "x", torch.tensor([3, 4]))
    with pytest.raises(UsageError, match="partial index.*index=None"):
        writable.put_tensor(torch.zeros(2, 3), "author", "new", torch.tensor([5, 6]))
    with pytest.raises(UsageError, match="500.*another group_name"):
        writable.put_tensor(torch.zeros(7, 3), None, "short", None)
    with pytest.raises(UsageError, match="bfloat16"):
        writable.put_tensor(torch.zeros(N, 2, dtype=torch.bfloat16), None, "bf", None)
    assert not writable.store.has_array("pyg/author/new") and not writable.store.has_array("short")


def test_remove(writable):
    writable.put_tensor(torch.ones(N, 2), "paper", "tmp", None)
    writable.put_tensor(torch.ones(3), "author", "tmp", None)
    assert writable.remove_tensor("paper", "tmp", None)
    del writable["author", "tmp"]
    assert not writable.remove_tensor("paper", "tmp", None)  # nothing left to remove
    with OocFeatureStore(writable.store.path) as fresh:
        assert [a.attr_name for a in fresh.get_all_tensor_attrs()] == ["x", "y"]
    with pytest.raises(TensorNotFoundError):
        writable["paper", "tmp", None]
    with pytest.raises(UsageError, match="store's 'features' array.*put_tensor"):
        writable.remove_tensor("paper", "x", None)
    with pytest.raises(UsageError, match="immutable"):
        writable.remove_tensor("paper", "y", torch.tensor([1]))


def test_read_only_writes_name_the_fix(fs, template):
    with pytest.raises(UsageError, match=r"read-only.*readonly=False"):
        fs.put_tensor(torch.zeros(N, 2), "paper", "z", None)
    with pytest.raises(UsageError, match=r"read-only.*readonly=False"):
        fs.remove_tensor("paper", "x", None)
    with Store(template) as ro, pytest.raises(UsageError, match="readonly=False"):
        OocFeatureStore(ro, readonly=False)


def test_unknown_attr_names_what_exists(fs):
    with pytest.raises(KeyError, match=r"no tensor \('author', 'x'\).*\('paper', 'x'\)"):
        fs["author", "x", None]
    with pytest.raises(TensorNotFoundError, match="'graph'|has no tensor"):
        fs.multi_get_tensor([TensorAttr(None, "x", None), TensorAttr(None, "indptr", None)])
    with pytest.raises(OocError):  # graph arrays have N + 1 rows: not node tensors
        fs[None, "graph/indptr", None]


@pytest.mark.parametrize("index", [torch.tensor([0, N]), torch.tensor([-1]), N, range(490, 510),
                                   torch.ones(N + 1, dtype=torch.bool)])
def test_index_out_of_range(fs, index):
    with pytest.raises(IndexError, match=f"outside 0..{N - 1}|mask needs shape"):
        fs.get_tensor("paper", "x", index)
    assert issubclass(RowIndexError, OocError)


def test_bad_index_type(fs):
    with pytest.raises(UsageError, match="integer"):
        fs.get_tensor("paper", "x", torch.tensor([1.0, 2.0]))
    with pytest.raises(UsageError, match="not supported"):
        fs.get_tensor("paper", "x", "abc")


def test_package_import_does_not_load_pyg():
    code = ("import sys, oocstore.integrations; "
            "assert 'torch_geometric' not in sys.modules, 'torch_geometric imported'; "
            "assert 'oocstore.integrations.pyg_store' not in sys.modules")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
