"""Hostile input: parsers of untrusted files (graph sources, 3DGS .ply, COLMAP text) and
catalog entries fail only with the project's own errors (fuzzed with a few hundred
inputs each; ``tools/fuzz_inputs.py`` runs thousands), pickles need --trust-pickle, paths outside the store and absurd
declared sizes are refused before anything is allocated."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from oocstore import Store
from oocstore.errors import FormatError, SourceError
from oocstore.ingest.arrays import load_npy
from oocstore.ingest.npz import npz_source
from oocstore.store.catalog import Catalog

from helpers import load_tool, run_oocstore

fuzz = load_tool("fuzz_inputs")


@pytest.mark.parametrize("component, examples", [("edgelist", 40), ("npz", 100),
                                                 ("planetoid", 50), ("catalog", 150),
                                                 ("ply", 200), ("colmap", 200),
                                                 ("colmap-bin", 100), ("transforms", 100)])
def test_fuzz_component(tmp_path, component, examples):
    r = fuzz.run_component(component, examples, seed=1, tmp=tmp_path, deadline_ms=30000)
    assert r["findings"] == []
    assert r["inputs"] == examples and r["clean_errors"] > 0
    if component in ("ply", "colmap", "colmap-bin", "transforms"):  # valid inputs reach
        # the scene ingest too
        assert r["parsed"] >= examples // 20, r


def _npz_with_pickle(path):
    adj = sp.csr_matrix(np.array([[0, 1], [1, 0]], dtype=np.float32))
    np.savez(path, adj_matrix=np.array(adj, dtype=object), node_attr=np.ones((2, 2), np.float32),
             node_label=np.array([0, 1]))


def test_pickled_npz_needs_trust(tmp_path):
    src = tmp_path / "g.npz"
    _npz_with_pickle(src)
    r = run_oocstore("ingest", "npz", str(src), str(tmp_path / "out"), "--quiet")
    assert r.returncode == 2 and "--trust-pickle" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    assert npz_source(src, trust_pickle=True).num_nodes == 2


def _npy_header(shape, dtype="<f4"):
    text = repr({"descr": dtype, "fortran_order": False, "shape": shape})
    text += " " * (64 - (10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + b"\0" * 64


def test_absurd_declared_sizes_fail_before_allocating(tmp_path):
    huge = _npy_header((10**15, 128))
    (tmp_path / "x.npy").write_bytes(huge)
    with pytest.raises(SourceError, match=r"x.npy is not a readable .npy"):
        load_npy(tmp_path / "x.npy", "features")
    with zipfile.ZipFile(tmp_path / "g.npz", "w") as z:
        z.writestr("adj_data.npy", _npy_header((10**15,)))
        for k in ("adj_indices", "adj_indptr", "adj_shape", "labels", "attr_matrix"):
            z.writestr(f"{k}.npy", _npy_header((2,)))
    with pytest.raises(SourceError, match=r"member 'adj_data'.*declares shape \(1000000000000000,\)"
                                          r".*holds 64 bytes"):
        npz_source(tmp_path / "g.npz", trust_pickle=False)


def _commit_labels_entry(store, **changes) -> None:
    """Commit the catalog entry of array ``labels`` with ``changes``, as a hostile catalog
    would hold it."""
    with Store(store) as s:
        entry = s.get("array/labels")
    cat = Catalog(store, readonly=False)
    cat.commit({"array/labels": {**entry, **changes}})
    cat.close()


@pytest.mark.parametrize("file", ["/etc/passwd", "../outside.bin", "arrays/../../x.bin",
                                  "arrays\\..\\x.bin"])
def test_catalog_paths_outside_the_store_are_refused(store_copy, file):
    _commit_labels_entry(store_copy, file=file)
    with pytest.raises(FormatError, match="outside the store"):
        Store(store_copy)


@pytest.mark.parametrize("shape", [[10**15, 10**15], [2**62, 8], [-1]])
def test_catalog_absurd_shapes_are_refused(store_copy, shape):
    _commit_labels_entry(store_copy, shape=shape)
    with pytest.raises(FormatError, match="labels"):
        Store(store_copy)
