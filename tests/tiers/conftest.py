"""The tiered reader tests' store."""

from __future__ import annotations

import pytest

from helpers import opened, policy_packs, sampled_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An open (writable) 3000-node store, average degree 8, with a one-epoch plan
    (fanouts 4,4, batches of 128) packed as ``p`` by the static policy with a 300-row CPU
    cache; built once per module. A module that needs another store defines its own
    ``store`` fixture, which pytest uses there instead."""
    packs = policy_packs({"p": "static"}, cpu_cache=300 * 64, max_disk_blowup=64)
    yield from opened(sampled_store(tmp_path_factory.mktemp("tiers") / "s",
                                    dict(fanouts="4,4", batch_size=128, epochs=1, seed=0),
                                    packs=packs, nodes=3000, avg_degree=8), readonly=False)
