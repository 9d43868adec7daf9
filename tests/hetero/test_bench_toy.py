"""bench/hetero.py at toy size, so the benchmark cannot rot: both pack layouts train
the same model as the in-memory run, with features several times the budget."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_hetero_toy(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_hetero", REPO / "bench" / "hetero.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--toy", "--dir", str(tmp_path)])
    assert out["feature_bytes_over_budget"] > 1.5
    assert set(out["runs"]) == {"in_memory", "segments", "rows"}
    for layout in ("segments", "rows"):
        assert out["max_weight_difference"][layout] == 0.0
        assert out["runs"][layout]["test_acc"] == out["runs"]["in_memory"]["test_acc"]
        assert out["runs"][layout]["cpu_charged_peak"] <= 2560 << 10
        assert out["runs"][layout]["types"]["paper"]["bytes_read"] > 0
