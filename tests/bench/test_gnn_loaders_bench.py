"""bench/gnn_loaders.py at toy size: it completes and its JSON has the documented fields
with sane values (the benchmark cannot rot)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("load_time_s", "epoch_time_s", "bytes_read", "useful_bytes", "read_amplification",
          "peak_rss_bytes", "cold")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gnnloaders") / "gnn_loaders.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gnn_loaders.py"), "--toy", "--json",
                        "--out", str(out), "--workdir", str(out.parent)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text())["loaders"].keys() == res["loaders"].keys()
    assert out.with_suffix(".png").stat().st_size > 0
    return res


def test_output_contract(result):
    assert result["seq_read_bytes_per_s"] > 0
    assert result["machine"]["cpus"] >= 1 and "loadavg_1min" in result["machine"]
    expected = {"in-memory", "mmap", "ginex", "oocstore-noprefetch", "oocstore"}
    assert expected <= set(result["loaders"])
    from_dgl = (REPO / ".venv-dgl" / "bin" / "python").is_file()
    assert ("dgl" in result["loaders"]) == from_dgl
    for name, L in result["loaders"].items():
        for f in FIELDS:
            assert f in L, (name, f)
        assert L["batches"] == result["configs"]["a"]["batches"]  # the same timed batches
        assert 0 <= L["load_time_s"] <= L["epoch_time_s"], name
        assert L["peak_rss_bytes"] > 0


def test_cold_loaders_read_from_disk(result):
    L = result["loaders"]
    assert L["in-memory"]["bytes_read"] == 0 and L["in-memory"]["read_amplification"] is None
    for name in ("mmap", "ginex", "oocstore-noprefetch", "oocstore") + (("dgl",) if "dgl" in L else ()):
        v = L[name]
        assert v["cold"] in ("per-run", "per-batch"), name
        assert v["bytes_read"] > 0 and v["useful_bytes"] > 0, name
        assert v["read_amplification"] >= 1.0, name
        assert v["proc_read_bytes"] >= v["bytes_read"] * 0.99, name  # /proc/self/io agrees
    assert L["mmap"]["cold"] == "per-batch"
    # O_DIRECT row reads of rows smaller than a page read whole pages (rows sharing a page
    # within one batch share its read)
    assert L["ginex"]["bytes_read"] % 4096 == 0
    assert L["ginex"]["read_amplification"] > 2.0
    assert L["ginex"]["io_threads"] >= 8


def test_ratios_and_targets_reported(result):
    a = result["configs"]["a"]
    assert set(a["ratios"]) >= {"in-memory", "mmap", "ginex", "oocstore-noprefetch"}
    for t in a["targets"].values():
        assert isinstance(t["met"], bool) and t["value"] > 0
        if not t["met"]:
            assert t["bottleneck"]  # a missed target names the stage that limits it
    c = result["configs"]["c"]
    assert "oocstore epoch / in-memory epoch (25 % cache)" in c["targets"]
    assert c["pack"]["cpu_cache_bytes"] >= 0.24 * c["feature_bytes"]
