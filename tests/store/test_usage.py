"""``inspect`` says what takes a store's disk space: every data file is counted once, by
owner (base arrays, plans, packs split into tier rows / segments / tables, evaluation
plans and packs, unreachable files that ``gc`` frees), and the parts add up to the
files on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, make_synthetic
from oocstore.cli import main
from oocstore.store import Store
from oocstore.store.usage import disk_usage, is_eval_name


def _files_on_disk(root) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root)
               for f in files if f.endswith(".bin"))


@pytest.fixture
def store(tmp_path):
    path = str(make_synthetic(tmp_path / "s", nodes=1500, feat_dim=32, avg_degree=5.0))
    assert main(["sample", path, "--fanouts", "4,3", "--batch-size", "100", "--epochs", "2",
                 "--quiet"]) == 0
    assert main(["sample", path, "--split", "val", "--fanouts", "4,3", "--batch-size", "100",
                 "--name", "val-eval", "--quiet"]) == 0
    assert main(["pack", path, "--cpu-cache", "64KiB", "--quiet"]) == 0
    assert main(["pack", path, "--plan", "val-eval", "--cpu-cache", "0", "--quiet"]) == 0
    return path


def test_eval_names():
    assert is_eval_name("val-eval") and is_eval_name("test-eval.rank1")
    assert not is_eval_name("train") and not is_eval_name("val")


def test_every_file_is_counted_once_by_owner(store, capsys):
    with Store(store) as s:
        d = disk_usage(s)
        tiers = sum(os.path.getsize(s.path / s.array_meta(f"pack/train/{a}").file)
                    for a in ("cpu_rows", "gpu_rows"))
        seg_rows = os.path.getsize(s.path / s.array_meta("pack/val-eval/rows").file)
        features = os.path.getsize(s.path / s.array_meta("features").file)
    assert (d["base_bytes"] + d["plans_bytes"] + d["packs_bytes"] + d["unreachable_bytes"]
            == _files_on_disk(store))
    assert d["catalog_bytes"] > 0 and d["total_bytes"] == _files_on_disk(store) + d["catalog_bytes"]
    assert d["feature_bytes"] == 1500 * 32 * 4 and d["base_bytes"] >= features
    assert set(d["plans"]) == {"train", "val-eval"} and set(d["packs"]) == {"train", "val-eval"}
    train = d["packs"]["train"]
    assert train["tiers_bytes"] == tiers > 0
    assert train["bytes"] == train["tiers_bytes"] + train["segments_bytes"] + train["tables_bytes"]
    assert d["packs"]["val-eval"]["segments_bytes"] == seg_rows > 0
    assert d["eval_plans_bytes"] == d["plans"]["val-eval"]
    assert d["eval_packs_bytes"] == d["packs"]["val-eval"]["bytes"]
    assert d["unreachable_bytes"] == 0
    # the same figures in inspect --json (the catalog holds reader registrations that
    # come and go), and in words
    assert main(["inspect", store, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["disk"]
    changing = ("catalog_bytes", "total_bytes", "times_features")
    assert {k: v for k, v in shown.items() if k not in changing} == {
        k: v for k, v in d.items() if k not in changing}
    assert main(["inspect", store]) == 0
    text = capsys.readouterr().out
    assert "  disk: " in text and "x the features" in text
    assert "evaluation plans and packs made by `train` (val-eval)" in text
    assert "    pack train: " in text and "tier rows" in text


def test_a_replaced_pack_held_by_a_reader_is_unreachable_until_gc(store, capsys):
    with Store(store) as s:
        old = s.path / s.array_meta("pack/train/cpu_rows").file
    # a live reader of the old version, in another process, keeps the old files
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sys; from oocstore.store import Store; "
         f"s = Store({store!r}); print('open', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert reader.stdout.readline().strip() == "open"
        assert main(["pack", store, "--cpu-cache", "32KiB", "--overwrite", "--quiet"]) == 0
        with Store(store) as s:
            d = disk_usage(s)
        assert old.relative_to(store).as_posix() in d["unreachable_files"]
        assert d["unreachable_bytes"] >= old.stat().st_size > 0
        assert main(["inspect", store]) == 0
        assert "no longer in the catalog" in capsys.readouterr().out
    finally:
        reader.communicate("", timeout=60)
    assert main(["gc", store, "--quiet"]) == 0
    with Store(store) as s:
        assert disk_usage(s)["unreachable_bytes"] == 0
    assert not old.exists()


def test_a_pack_of_a_resampled_plan_is_named_with_what_rm_frees(store, capsys):
    assert main(["sample", store, "--fanouts", "3", "--batch-size", "100", "--overwrite",
                 "--quiet"]) == 0
    with Store(store) as s:
        d = disk_usage(s)
    assert d["stale_packs"] == {"train": d["packs"]["train"]["bytes"]}
    assert main(["inspect", store]) == 0
    assert ("pack train was made from a plan that is gone or re-sampled: `oocstore rm STORE "
            "--pack train` frees") in capsys.readouterr().out


def test_a_replaced_pack_without_readers_leaves_nothing_behind(store):
    with Store(store) as s:
        before = disk_usage(s)
        old = s.path / s.array_meta("pack/train/cpu_rows").file
    assert main(["pack", store, "--cpu-cache", "0", "--overwrite", "--quiet"]) == 0
    with Store(store) as s:
        after = disk_usage(s)
    assert not old.exists() and after["unreachable_bytes"] == 0
    assert after["packs"]["train"]["tiers_bytes"] < before["packs"]["train"]["tiers_bytes"]
