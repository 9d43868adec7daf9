"""A small heterogeneous store shared by the tests of a module (built once)."""

from __future__ import annotations

import hashlib
import os

import pytest

from helpers import hetero_store


@pytest.fixture(scope="module")
def hstore(tmp_path_factory):
    """A synthetic store with reverse relations and a 2-layer train plan ('train')."""
    return hetero_store(tmp_path_factory.mktemp("hetero") / "s",
                        dict(fanouts="4,3", batch_size=100, epochs=2))


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
