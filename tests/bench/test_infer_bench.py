"""bench/infer.py at toy size: it completes and its JSON reports the RSS growth against
the budget, throughput beside the disk's limit, and bytes read."""

import json

import pytest

from helpers import load_bench


@pytest.mark.parametrize("model", ["sage", "gat"])
def test_infer_bench_toy(tmp_path, capsys, model):
    out = tmp_path / "infer.json"
    assert load_bench("infer").main(["--toy", "--model", model, "--heads", "2", "--work",
                                     str(tmp_path / "work"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["model"] == model and res["heads"] == (2 if model == "gat" else None)
    assert res["nodes"] == 20_000 and len(res["chunks"]) == 2 and res["chunks"][0] > 1
    assert 0 < res["rss_growth_bytes"] and res["node_layers_per_s"] > 0
    assert res["bytes_read"] >= res["feature_bytes"]  # every feature row is read at least once
    node_layers = res["nodes"] * res["layers"]
    assert res["bytes_read_per_node_layer"] == pytest.approx(res["bytes_read"] / node_layers)
    assert res["disk_limit_node_layers_per_s"] == pytest.approx(
        res["seq_read_bytes_per_s"] / res["bytes_read_per_node_layer"])
    text = capsys.readouterr().out
    assert "RSS growth" in text and "the disk's limit" in text
