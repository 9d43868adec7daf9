"""bench/link_prediction.py at toy size: the three runs complete on one split, the
out-of-core and in-memory runs agree exactly, and the PyG reference reports the same
metrics."""

import json

from helpers import load_bench


def test_link_prediction_bench_toy(tmp_path, capsys):
    out = tmp_path / "link.json"
    assert load_bench("link_prediction").main(["--toy", "--dir", str(tmp_path / "work"),
                                               "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["bench"] == "link_prediction" and res["identical"] is True
    assert res["out_of_core"]["test"] == res["in_memory"]["test"]
    assert set(res["pyg_reference"]["test"]) == set(res["out_of_core"]["test"])
    assert res["out_of_core"]["bytes_read"] > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == res
