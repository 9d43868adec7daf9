"""Ingest streams features: its peak RSS stays far below the size of the features.

300k x 256 float32 (293 MiB of features) with a sparse graph (avg degree 2), so the
in-memory topology (~24 B per stored edge) is small and the features dominate. Measured
here: imports alone ~32 MiB, the whole ingest ~115 MiB.
"""

from pathlib import Path

from helpers import load_bench

ingest_peak = load_bench("ingest_memory").ingest_peak

MiB = 1 << 20

#: Fixed overhead allowed on top of the imports: a few 16 MiB feature blocks and their
#: temporaries, plus labels, splits and the small topology.
OVERHEAD = 128 * MiB


def test_ingest_peak_rss_well_below_features(tmp_path: Path):
    r = ingest_peak(tmp_path / "s", nodes=300_000, feat_dim=256, avg_degree=2)
    assert r["feature_bytes"] == 300_000 * 256 * 4
    assert r["baseline_rss"] < 160 * MiB
    assert r["peak_rss"] < r["baseline_rss"] + OVERHEAD, r
    assert r["peak_rss"] < r["feature_bytes"] / 2, r
