"""Stores for the link-prediction tests: a small synthetic graph with a link plan
(sampled and packed once; copy it before changing it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import copy_of, make_synthetic
from oocstore.pack import PackOptions, pack_plan
from oocstore.samplers.link import sample_link_plan
from oocstore.store import Store

from linkopts import LINK


@pytest.fixture(scope="session")
def link_template(tmp_path_factory) -> Path:
    path = make_synthetic(tmp_path_factory.mktemp("link") / "s", nodes=300, avg_degree=6.0,
                          feat_dim=8)
    with Store(path, readonly=False) as store:
        sample_link_plan(store, name="link", **LINK)
        # Every sampled epoch packed whole, so the loader and the in-memory run cycle the
        # same epochs.
        pack_plan(store, "link", name="link", options=PackOptions(max_disk_blowup=100.0))
    return path


@pytest.fixture
def link_store(link_template: Path, tmp_path: Path) -> Path:
    return copy_of(link_template, tmp_path / "s")


@pytest.fixture
def plain_store(small_store_template: Path, tmp_path: Path) -> Path:
    """A store with a graph and no edge split or link plan."""
    return copy_of(small_store_template, tmp_path / "plain")
