"""The data-parallel scaling bench runs at toy size (1 process vs 2 under torchrun)."""

import json

import pytest

from helpers import load_bench


@pytest.mark.slow  # a torchrun launch of two processes (each imports torch and PyG)
def test_distributed_scaling_toy(tmp_path, capsys):
    out = tmp_path / "r.json"
    result = load_bench("distributed_scaling").main(
        ["--toy", "--work", str(tmp_path / "work"), "--out", str(out), "--baseline-in-process"])
    runs = result["runs"]
    assert [r["world_size"] for r in runs] == [1, 2]
    assert [r["batch_per_rank"] for r in runs] == [256, 128]
    assert [r["threads_per_rank"] for r in runs] == [max(1, result["machine"]["cpus"] // w)
                                                     for w in (1, 2)]
    # both cover the whole training split every epoch
    assert runs[0]["seeds_per_epoch"] == runs[1]["seeds_per_epoch"] == 1200
    for r in runs:
        assert 0.3 < r["test_acc"] <= 1 and r["samples_per_s"] > 0 and r["epoch_s"] > 0
        assert len(r["loss"]) == 2
    ratio = result["summary"]["ratios"]["2"]
    assert ratio["samples_per_s_ratio"] == runs[1]["samples_per_s"] / runs[0]["samples_per_s"]
    assert abs(ratio["test_acc_diff"]) < 0.7
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["bench"] == "distributed_scaling" and "2" in line["ratios"]
    assert json.loads(out.read_text())["runs"] == runs
    assert out.with_suffix(".png").stat().st_size > 0
