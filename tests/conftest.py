"""Shared fixtures: small stores made by the project's own synthetic generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Detailed assertion messages from the conformance suites shipped in oocstore/testing.
pytest.register_assert_rewrite("oocstore.testing")

from helpers import copy_of, make_synthetic  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def small_store_template(tmp_path_factory) -> Path:
    """A tiny ingested store, built once; copy it (``small_store``) before changing it."""
    return make_synthetic(tmp_path_factory.mktemp("template") / "small")


@pytest.fixture
def small_store(small_store_template: Path, tmp_path: Path) -> Path:
    return copy_of(small_store_template, tmp_path / "small")
