"""Stores for the sampler tests: a synthetic R-MAT graph and a hand-made graph with a
hub, isolated nodes and zero-degree seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import make_synthetic
from oocstore.ingest import build_store
from oocstore.ingest.common import GraphSource

HUB_DEGREE = 400
N_SPECIAL = 600


@pytest.fixture(scope="session")
def rmat_store(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("rmat") / "g", nodes=3000, avg_degree=8.0)


def special_source() -> GraphSource:
    """Node 0 has in-neighbours 1..HUB_DEGREE; a ring over 401..549; 550..599 isolated."""
    hub_src = np.arange(1, HUB_DEGREE + 1)
    ring = np.arange(401, 550)
    src = np.concatenate([hub_src, ring])
    dst = np.concatenate([np.zeros(HUB_DEGREE, dtype=np.int64), np.roll(ring, 1)])
    rng = np.random.default_rng(0)
    train = np.array([0, 5, 401, 402, 550, 551, 599, *range(10, 60)], dtype=np.int64)
    return GraphSource(num_nodes=N_SPECIAL, src=src, dst=dst, directed=True,
                       features=[rng.standard_normal((N_SPECIAL, 4)).astype(np.float32)],
                       feat_dim=4, labels=np.zeros(N_SPECIAL, dtype=np.int64),
                       splits={"train": np.sort(train), "val": np.arange(560, 570)},
                       where="special graph")


@pytest.fixture(scope="session")
def special_store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("special") / "s", special_source())
