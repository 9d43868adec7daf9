"""The evaluation packs ``train`` creates take at most ``EVAL_DISK_SHARE`` x the feature
bytes on disk each (tier rows and segments together), whatever the training pack's
disk-blowup cap; batches past the share read rows from the base array, and the
accuracy is that of the in-memory run."""

from __future__ import annotations

import json

import pytest

from helpers import cli_store
from oocstore.cli import main
from oocstore.store import Store
from oocstore.tiers.reader import list_packs
from oocstore.train.prepare import EVAL_DISK_SHARE


def _store(tmp_path, cpu_cache: str) -> str:
    return cli_store(tmp_path / "s", ingest="--nodes 2000 --feat-dim 16 --avg-degree 8",
                     sample="--fanouts 5,5 --batch-size 64 --epochs 1",
                     pack=f"--cpu-cache {cpu_cache} --max-disk-blowup 8")


@pytest.mark.parametrize("cpu_cache", ["0", "40KiB"])
def test_eval_packs_stay_within_their_disk_share(tmp_path, capsys, cpu_cache):
    path = _store(tmp_path, cpu_cache)
    assert main(["train", path, "--epochs", "1", "--hidden", "8", "--json", "--quiet"]) == 0
    ooc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["train", path, "--epochs", "1", "--hidden", "8", "--json", "--quiet",
                 "--in-memory"]) == 0
    mem = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (ooc["val_acc"], ooc["test_acc"]) == (mem["val_acc"], mem["test_acc"])
    with Store(path) as s:
        features = s.array_meta("features").nbytes
        packs = list_packs(s)
        evals = [p for n, p in packs.items() if n.endswith("-eval")]
        assert len(evals) == 2
        for p in evals:
            on_disk = (p.packed_rows + p.cpu_rows + p.gpu_rows) * p.row_bytes
            assert on_disk <= EVAL_DISK_SHARE * features
            assert p.packed_batches < p.total_batches  # the share, not the plan, limited it
        assert packs["train"].blowup > 2  # the training pack kept its own cap


def test_defaults_keep_the_store_within_the_readme_figure(tmp_path, capsys):
    """README, "Disk space": with the defaults (one training pack, train's evaluation
    packs) feature rows on disk stay within 1 + (1 + 4) + 2 = 8x the feature bytes."""
    from oocstore.store.usage import disk_usage

    path = str(tmp_path / "s")
    assert main(["ingest", "synthetic", path, "--nodes", "2000", "--feat-dim", "16",
                 "--avg-degree", "8", "--quiet"]) == 0
    assert main(["sample", path, "--fanouts", "5,5", "--batch-size", "64", "--quiet"]) == 0
    assert main(["pack", path, "--cpu-cache", "0", "--quiet"]) == 0
    assert main(["train", path, "--epochs", "1", "--hidden", "8", "--quiet"]) == 0
    with Store(path) as s:
        d = disk_usage(s)
    rows = sum(p["tiers_bytes"] + p["segments_bytes"] for p in d["packs"].values())
    assert set(d["packs"]) == {"train", "val-eval", "test-eval"}
    assert d["packs"]["train"]["segments_bytes"] > 3 * d["feature_bytes"]  # near its 4x cap
    assert d["feature_bytes"] + rows <= 8 * d["feature_bytes"]
