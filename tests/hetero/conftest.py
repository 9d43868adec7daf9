"""A small heterogeneous store shared by the tests of a module (built once)."""

from __future__ import annotations

import hashlib
import os

import pytest

from oocstore.hetero import HeteroSpec, build_hetero_store, hetero_synthetic_source
from oocstore.hetero.sampler import sample_hetero_plan
from oocstore.store import Store

SPEC = HeteroSpec(papers=1200, paper_dim=24, author_dim=12, classes=4, fields=16, seed=3)


@pytest.fixture(scope="module")
def hstore(tmp_path_factory):
    """A synthetic store with reverse relations and a 2-layer train plan ('train')."""
    path = tmp_path_factory.mktemp("hetero") / "s"
    build_hetero_store(path, hetero_synthetic_source(SPEC), add_reverse=True)
    with Store(path, readonly=False) as store:
        sample_hetero_plan(store, fanouts="4,3", batch_size=100, epochs=2)
    return path


@pytest.fixture
def digest():
    """``digest(path)``: see :func:`tree_digest`."""
    return tree_digest


def tree_digest(path) -> str:
    """A digest of every file's name and bytes under ``path`` (is a store untouched?)."""
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".lock") or f == "lock.mdb" or d.endswith("readers"):
                continue
            p = os.path.join(d, f)
            h.update(os.path.relpath(p, path).encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()
