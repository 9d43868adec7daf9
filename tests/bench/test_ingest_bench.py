"""The ingest benchmarks run at toy size, so they cannot rot."""

import json
import subprocess
import sys

from helpers import REPO, load_bench


def test_ingest_throughput_toy():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "ingest_throughput.py"), "--toy"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["bench"] == "ingest_throughput" and result["toy"]
    assert result["feature_bytes"] == 20_000 * 32 * 4
    assert result["bytes_written"] > result["feature_bytes"]
    for key in ("ingest_feature_MBps", "disk_write_MBps", "ratio_to_disk", "peak_rss"):
        assert result[key] > 0, key
    stages = result["stages_seconds"]
    for stage in ("rmat_edges", "build_csc (incl. rmat_edges)",
                  "build_csc: sort + de-duplicate ranges", "feature generation",
                  "checksums (crc32)", "file writes", "fsync"):
        assert stage in stages, stage
    assert "x the disk's write speed" in r.stdout
    assert not list((REPO / "bench" / "data").glob("ingest-*"))  # cleaned up


def test_ingest_memory_toy(tmp_path):
    r = load_bench("ingest_memory").ingest_peak(tmp_path / "s", nodes=5000, feat_dim=16,
                                                 avg_degree=2)
    assert r["peak_rss"] >= r["baseline_rss"] > 0
    assert r["feature_bytes"] == 5000 * 16 * 4
