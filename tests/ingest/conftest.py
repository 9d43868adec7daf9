"""Helpers shared by the ingest tests: store read-back, leftovers check, real data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from oocstore.ingest import build_store
from oocstore.store import Store

#: Real third-party data beside the checkout (``../shared/data``); absent in a fresh clone.
REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def real_data():
    """``real_data("planetoid", "ind.cora.x")`` -> the folder, or skip when it is absent."""

    def get(folder: str, *required: str) -> Path:
        root = REAL_DATA / folder
        missing = [r for r in required if not (root / r).exists()]
        if not root.is_dir() or missing:
            pytest.skip(f"real data {root} (files {', '.join(required)}) not present: these "
                        "tests need the shared data folder beside the checkout")
        return root

    return get


def read_store(path: Path) -> dict:
    """Everything an ingest wrote, as in-memory arrays; ``adj`` is the stored graph as a
    scipy matrix with ``adj[src, dst] = 1`` for each edge ``src -> dst``."""
    with Store(path) as s:
        indptr, indices = s.csc()
        n = s.graph.num_nodes
        # CSC: column j lists the sources of the edges into j, so this is A[src, dst].
        adj = sp.csc_matrix((np.ones(indices.size), np.array(indices), np.array(indptr)),
                            shape=(n, n))
        return {"features": np.array(s.array("features")), "labels": np.array(s.array("labels")),
                "adj": adj, "graph": s.graph, "source": s.get("meta")["source"],
                "splits": {k: s.split(k) for k in s.splits}}


def expected_adj(n: int, src, dst, *, directed: bool) -> sp.csr_matrix:
    """The 0/1 adjacency ``build_store`` must write: symmetrised unless directed, without
    self-loops or duplicates."""
    a = sp.coo_matrix((np.ones(len(src)), (np.asarray(src), np.asarray(dst))), shape=(n, n)).tocsr()
    if not directed:
        a = a + a.T
    a.setdiag(0)
    a.eliminate_zeros()
    a.data[:] = 1
    return a


def same_graph(a, b) -> bool:
    a = sp.csr_matrix(a)
    b = sp.csr_matrix(b)
    return a.shape == b.shape and (a != b).nnz == 0


def assert_nothing_left(out: Path) -> None:
    """A failed ingest leaves neither the store nor its hidden staging directory."""
    assert not out.exists(), f"{out} was created by a failed ingest"
    left = [p.name for p in out.parent.glob(f".{out.name}.*")]
    assert not left, f"staging directory or lock left behind: {left}"


@pytest.fixture
def h():
    """The helpers above, for test modules (which cannot import conftest by name)."""
    return SimpleNamespace(read_store=read_store, expected_adj=expected_adj,
                           same_graph=same_graph, nothing_left=assert_nothing_left)


@pytest.fixture
def fails(tmp_path):
    """``fails(make_source, Error, match)``: building a store from ``make_source()`` raises
    ``Error`` with a message matching ``match`` and leaves nothing at the output path."""

    def check(make, error, match):
        out = tmp_path / "failed-store"
        with pytest.raises(error, match=match):
            build_store(out, make())
        assert_nothing_left(out)

    return check
