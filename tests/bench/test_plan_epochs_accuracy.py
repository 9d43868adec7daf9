"""The plan-epochs accuracy study runs at toy size, so it cannot rot."""

import json

from helpers import load_bench


def test_plan_epochs_accuracy_toy(tmp_path, capsys):
    out = tmp_path / "r.json"
    result = load_bench("plan_epochs_accuracy").main(
        ["--toy", "--seeds", "0", "--ks", "1,E", "--epochs", "3", "--out", str(out)])
    assert result["toy"]
    summary = result["summary"]["toy-synthetic"]
    assert [row["k"] for row in summary] == [1, 3]
    assert [row["reuse"] for row in summary] == ["shuffle", "fresh"]
    for row in summary:
        assert 0.8 < row["test_acc_mean"] <= 1.0  # learns from the graph (feature-only ~0.7)
    stdout = capsys.readouterr().out
    assert "test acc (mean ± std)" in stdout
    assert json.loads(stdout.strip().splitlines()[-1])["bench"] == "plan_epochs_accuracy"
    doc = json.loads(out.read_text())
    (entry,) = doc["datasets"]
    assert entry["dataset"] == "toy-synthetic" and entry["command"].endswith(str(out))
    assert len(entry["runs"]) == 2 and len(entry["runs"][0]["val_acc"]) == 3
