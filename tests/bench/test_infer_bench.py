"""bench/infer.py at toy size: it completes and its JSON reports the RSS growth against
the budget, throughput and bytes read."""

import json

from helpers import load_bench


def test_infer_bench_toy(tmp_path, capsys):
    out = tmp_path / "infer.json"
    assert load_bench("infer").main(["--toy", "--work", str(tmp_path / "work"),
                                     "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["nodes"] == 20_000 and len(res["chunks"]) == 2 and res["chunks"][0] > 1
    assert 0 < res["rss_growth_bytes"] and res["node_layers_per_s"] > 0
    assert res["bytes_read"] >= res["feature_bytes"]  # every feature row is read at least once
    assert "RSS growth" in capsys.readouterr().out
