"""Shared fixtures of the reliability tests: a small store with a plan and a pack."""

from __future__ import annotations

import pytest

from oocstore import Store
from oocstore.pack import PackOptions, pack_plan
from oocstore.samplers import sample_plan

from helpers import copy_of, make_synthetic

NODES, DIM = 3000, 16


@pytest.fixture(scope="session")
def packed_store(tmp_path_factory):
    """A store with plan ``train`` and pack ``train`` (read-only template: copy it)."""
    path = tmp_path_factory.mktemp("rel") / "s"
    make_synthetic(path, nodes=NODES, feat_dim=DIM, seed=0)
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="5,5", batch_size=256, epochs=2, seed=1)
        pack_plan(s, options=PackOptions(cpu_cache=NODES * DIM * 4 // 10, max_disk_blowup=8))
    return path


@pytest.fixture
def store_copy(packed_store, tmp_path):
    return copy_of(packed_store, tmp_path / "s")
