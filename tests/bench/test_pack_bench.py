"""The packer / SSD-tier / cache-policy benchmarks run at toy size, so they cannot rot."""

import json
import subprocess
import sys

from helpers import REPO


def run_toy(name, tmp_path):
    out = tmp_path / f"{name}.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--toy",
                        "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["bench"] == name and res["toy"]
    assert json.loads(out.read_text())["bench"] == name
    assert out.with_suffix(".png").stat().st_size > 0
    return res, r.stdout


def test_pack_speed_toy(tmp_path):
    res, stdout = run_toy("pack_speed", tmp_path)
    assert res["bytes_written"] > res["row_bytes_written"] > 0
    for key in ("pack_MBps", "disk_write_MBps", "ratio_to_disk", "peak_rss"):
        assert res[key] > 0, key
    assert res["blowup"] <= res["max_disk_blowup"]
    stages = res["stages_seconds"]
    for stage in ("placement", "segment sizing", "assignment", "base scan reads (O_DIRECT)",
                  "writes (crc32 + write)", "fsync"):
        assert stage in stages, stage
    assert res["proc_read_bytes"] >= res["feature_bytes"]  # the cold base scan hit the disk
    assert "x the disk's write speed" in stdout


def test_ssd_epoch_toy(tmp_path):
    res, stdout = run_toy("ssd_epoch", tmp_path)
    m = res["methods"]
    assert set(m) == {"ours", "fallback", "mmap", "mmap-evict", "seq-read"}
    assert res["fallback_pack"]["packed_batches"] == 0
    ours = m["ours"]
    assert ours["batches"] == res["epoch_batches"] and ours["rows"] > 0
    assert 1.0 <= res["amplification"] <= 1.05  # one aligned request per segment
    if ours["direct_io"]:  # O_DIRECT reads show up in /proc/self/io
        assert ours["proc_read_bytes"] >= 0.95 * ours["bytes_read"]
        assert m["fallback"]["amplification"] > res["amplification"]
    assert res["ratio_to_seq_read"] > 0
    assert set(ours["split_seconds"]) == {"segment reads (preadv)", "gather / assemble (numba)",
                                          "rest of read_batch"}
    assert "x sequential O_DIRECT read" in stdout


def test_cache_policies_toy(tmp_path):
    res, stdout = run_toy("cache_policies", tmp_path)
    rows = res["rows"]
    assert [r["fraction"] for r in rows] == [0.05, 0.10, 0.25]
    for r in rows:
        # Belady is optimal among dynamic caches; a static top-k can still beat it on the
        # compulsory misses it does not pay, but never the infinite-cache ceiling
        assert 0 < r["static_hit_rate"] < 1 and 0 < r["belady_hit_rate"] < 1
        assert r["belady_hit_rate"] <= r["compulsory_floor_hit_rate"] + 1e-12
    assert rows == sorted(rows, key=lambda r: r["static_hit_rate"])  # more cache, more hits
    assert rows == sorted(rows, key=lambda r: r["belady_hit_rate"])
    assert "Belady" in stdout
    for r in rows:  # the registry's policies as packed: none serves more than Belady's
        pol = r["policies"]
        assert sorted(pol) == ["belady", "s3fifo", "sieve", "static"]
        for name in ("s3fifo", "sieve", "static"):
            assert 0 < pol[name]["hit_rate"] <= pol["belady"]["hit_rate"], name
        assert pol["static"]["admissions_per_epoch"] == 0 < pol["sieve"]["admissions_per_epoch"]
