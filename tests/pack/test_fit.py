"""`oocstore plan-budget`: estimates that bound the packs they predict, a suggestion that
trains inside the budget with the README's commands, and clean refusals."""

import json
import os

import pytest

from oocstore import Store
from oocstore.cli import main
from oocstore.pack.fit import _expected_max, parse_batch_sizes
from oocstore.errors import UsageError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fit") / "s")
    assert main(["ingest", "synthetic", path, "--nodes", "3000", "--feat-dim", "64",
                 "--avg-degree", "8", "--quiet"]) == 0
    return path


def budget_json(capsys, *argv, rc=0):
    assert main(["plan-budget", *argv, "--json"]) == rc
    return json.loads(capsys.readouterr().out)


def pack_min(path, name):
    with Store(path) as s:
        return s.get(f"pack/{name}")["min_working_set"]["cpu"]


def test_estimates_bound_the_packs_they_predict(store, capsys):
    """For each candidate, the plan `oocstore sample` then writes, packed at the floor
    (no cache, one-batch segments), needs no more than the estimate, and the estimate
    is not more than a third above it."""
    res = budget_json(capsys, store, "--cpu-budget", "1GiB", "--fanouts", "5,5",
                      "--batch-sizes", "32,128,512", "--epochs", "2")
    assert [c["batch_size"] for c in res["candidates"]] == [32, 128, 512]
    assert res["suggestion"]["batch_size"] == 512
    for c in res["candidates"]:
        assert c["fits"] and c["probed"] == min(16, 2 * c["batches_per_epoch"])
        assert c["largest_seen"] <= c["largest_batch_rows"]
        name = f"b{c['batch_size']}"
        assert main(["sample", store, "--fanouts", "5,5", "--batch-size", str(c["batch_size"]),
                     "--epochs", "2", "--name", name, "--quiet"]) == 0
        assert main(["pack", store, "--plan", name, "--cpu-cache", "0", "--segment-batches",
                     "1", "--max-disk-blowup", "1000", "--quiet"]) == 0
        with Store(store) as s:
            real_rows = s.get(f"pack/{name}")["largest_batch_rows"]
        real = pack_min(store, name)
        assert real_rows <= c["largest_batch_rows"] <= 1.3 * real_rows, (c, real_rows)
        assert real <= c["min_working_set"] <= 1.35 * real, (c, real)


def test_the_suggestion_trains_with_the_readme_commands(store, capsys):
    """A budget too small for the larger batches: the suggestion is the largest batch that
    fits, and its sample / pack / train commands (evaluation plans included) run inside
    the budget without resizing anything."""
    wide = budget_json(capsys, store, "--cpu-budget", "1GiB", "--fanouts", "5,5",
                       "--batch-sizes", "64,256,1024")
    budget = wide["candidates"][1]["min_working_set"] + wide["candidates"][1]["prefetch_bytes"]
    assert main(["plan-budget", store, "--cpu-budget", str(budget), "--fanouts", "5,5",
                 "--batch-sizes", "64,256,1024"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("suggested: --fanouts 5,5 --batch-size 256") for line in out)
    commands = [line.split() for line in out if line.startswith("  oocstore ")]
    assert [c[1] for c in commands] == ["sample", "pack", "train"]
    for argv in commands:
        argv = argv[1:]
        if argv[0] == "train":
            argv = [*argv[:3], "1", *argv[4:], "--hidden", "8", "--json", "--quiet"]
        else:
            argv.append("--quiet")
        assert main(argv) == 0, argv
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["budget"]["cpu"] == budget and 0 <= summary["test_acc"] <= 1
    with Store(store) as s:
        packs = {k: v for k, v in s.items("pack/")}
    for name in ("pack/train", "pack/val-eval", "pack/test-eval"):
        assert packs[name]["min_working_set"]["cpu"] <= budget


def test_nothing_fits_exits_1_naming_the_smallest_minimum(store, capsys):
    assert main(["plan-budget", store, "--cpu-budget", "64KiB", "--fanouts", "5,5",
                 "--batch-sizes", "16,64"]) == 1
    out = capsys.readouterr().out
    assert "nothing fits: the smallest minimum is" in out and "(batch 16)" in out
    res = budget_json(capsys, store, "--cpu-budget", "64KiB", "--fanouts", "5,5",
                      "--batch-sizes", "16", rc=1)
    assert res["suggestion"] is None and not res["candidates"][0]["fits"]
    assert res["candidates"][0]["headroom"] < 0


@pytest.mark.parametrize("argv, words", [
    (["--cpu-budget", "0"], "--cpu-budget 0"),
    (["--cpu-budget", "8MiB", "--batch-sizes", "32,x"], "'x' is not a positive integer"),
    (["--cpu-budget", "8MiB", "--batch-sizes", "-4"], "is not a positive integer"),
    (["--cpu-budget", "8MiB", "--fanouts", "5,zero"], "--fanouts"),
    (["--cpu-budget", "8MiB", "--split", "nope"], "--split 'nope'"),
    (["--cpu-budget", "8MiB", "--probe", "0"], "--probe 0"),
    (["--cpu-budget", "8MiB", "--margin", "-1"], "--margin -1"),
    (["--cpu-budget", "8MiB", "--epochs", "0"], "--epochs 0"),
    (["--cpu-budget=-5MiB"], "negative"),
    (["--cpu-budget", "8MB"], "decimal unit"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_the_store_alone(store, capsys, argv, words):
    def files():
        return {os.path.join(d, f): os.path.getsize(os.path.join(d, f))
                for d, _, fs in os.walk(store) for f in fs if "lock" not in f}

    before = files()
    try:
        rc = main(["plan-budget", store, *argv])
    except SystemExit as exit_:  # argparse's own refusals (sizes) exit
        rc = exit_.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert files() == before


def test_a_store_that_does_not_exist_is_one_line(tmp_path, capsys):
    assert main(["plan-budget", str(tmp_path / "none"), "--cpu-budget", "8MiB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_expected_maximum_and_batch_size_parsing():
    import numpy as np

    rows = np.array([10, 12, 11, 9, 13, 10, 11, 12], dtype=float)
    assert _expected_max(rows, 4) == 13  # fewer draws than probes: the largest seen
    big = _expected_max(rows, 10_000)
    assert 13 < big < 13 + 5 * rows.std()  # grows with the draws, like a normal maximum
    assert parse_batch_sizes("64, 32,64") == (32, 64)
    with pytest.raises(UsageError):
        parse_batch_sizes("")
