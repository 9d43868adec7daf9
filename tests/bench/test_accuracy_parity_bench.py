"""The accuracy-parity study runs at toy size through the real CLI, so it cannot rot."""

import json

from helpers import load_bench


def test_accuracy_parity_toy(tmp_path, capsys):
    out = tmp_path / "r.json"
    doc = load_bench("accuracy_parity").main(["--toy", "--seeds", "0", "--work",
                                              str(tmp_path / "work"), "--out", str(out)])
    (entry,) = doc["datasets"]
    rows = {(r["plan"], r["mode"]): r for r in entry["summary"]}
    assert set(rows) == {("train-k4", "out-of-core"), ("train-k4", "in-memory"),
                         ("train-k1", "out-of-core")}
    for row in rows.values():
        assert row["seeds"] == 1
        assert 0.8 < row["test_acc_mean"] <= 1.0  # learns from the graph (features alone ~0.7)
    # The CPU cache is 10 % of the features, so the out-of-core runs read through the SSD tier.
    assert entry["config"]["cpu_cache_bytes"] == int(0.1 * 3000 * 32 * 4)
    ooc = [r for r in entry["runs"] if r["mode"] == "out-of-core"]
    assert all(r["summary"]["bytes_read"] > 0 for r in ooc)
    assert all(r["summary"]["bytes_read"] == 0 for r in entry["runs"] if r["mode"] == "in-memory")
    assert abs(entry["ooc_minus_in_memory_points"]) <= 100
    stdout = capsys.readouterr().out
    assert "out-of-core − in-memory" in stdout
    assert json.loads(stdout.strip().splitlines()[-1])["bench"] == "accuracy_parity"
    assert json.loads(out.read_text())["datasets"][0]["dataset"] == "toy-synthetic"
