"""bench/gnn_ooc.py: the quick size completes with the documented output; the targets
check, the time-to-train arithmetic, the memory cgroup helper and the native row reader
each do what they claim (and can report failure)."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "bench" / "baselines")]

import _memcg  # noqa: E402
import gnn_ooc  # noqa: E402
from native_rows import NativeRowReader  # noqa: E402

LOADER_FIELDS = ("epoch_time_s", "load_time_s", "epoch_full_s", "epoch_full_basis", "window",
                 "bytes_read", "useful_bytes", "peak_rss_bytes", "memcg", "budget_bytes")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("gnnooc") / "gnn_ooc.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gnn_ooc.py"), "--quick",
                        "--skip", "dgl", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text())["views"].keys() == res["views"].keys()
    return res, r.stdout, out


def test_quick_output_structure(quick):
    res, stdout, out = quick
    assert res["bench"] == "gnn_ooc" and res["quick"]
    assert set(res["views"]) == {"limited", "evict"}
    lim = res["views"]["limited"]["loaders"]
    assert {"pyg-mmap", "pyg-mmap-random", "ginex-python", "ginex-native", "oocstore", "in-memory",
            "oocstore-cache25"} <= set(lim)
    assert res["views"]["limited"]["skipped"]["dgl"] == "--skip"
    E = res["config"]["epoch_batches"]
    for name, v in lim.items():
        for f in LOADER_FIELDS:
            assert f in v, (name, f)
        assert 0 <= v["load_time_s"] and v["epoch_time_s"] > 0, name
        # whole epochs except the page-cache loaders, which say they are extrapolated
        assert v["window"] == (name in gnn_ooc.WINDOWED), name
        assert (v["batches"] == E) != v["window"]
        rows = res["config"]["epoch_rows"]
        assert v["epoch_full_s"] == pytest.approx(v["epoch_time_s"] * rows / v["rows"])
        assert ("extrapolated" in v["epoch_full_basis"]) == v["window"]
    ooc = lim["oocstore"]
    assert ooc["bytes_read"] > 0 and ooc["read_amplification"] >= 1.0
    tl = ooc["timeline"]
    assert {"training thread: compute", "training thread: wait for data"} <= set(tl["lanes"])
    assert len(tl["lanes"]["training thread: compute"]) == E
    assert "reads (O_DIRECT segments)" in tl["lanes"]
    for k in ("ginex-native", "ginex-python"):
        assert lim[k]["reads_per_s"] > 0 and lim[k]["misses"] > 0
    assert lim["ginex-native"]["io_threads"] == 8  # --quick: queue depth 8
    # the eviction view: a window for everyone, page-cache loaders cold per batch
    ev = res["views"]["evict"]["loaders"]
    assert ev["pyg-mmap"]["cold"] == "per-batch" and all(v["window"] for v in ev.values())
    # preprocessing and time to a trained model
    pre = res["preprocessing"]
    assert pre["oocstore"]["seconds"] >= res["config"]["preprocessing_s"]["sample"] > 0
    tt = res["time_to_train"]
    assert "ginex-python" not in tt["total_s"]
    for k, row in tt["total_s"].items():
        assert row["1"] < row["5"] < row["20"], k
        assert row["5"] == pytest.approx(pre[k]["seconds"] + 5 * lim[k]["epoch_full_s"])
    # no cgroup at quick size without --cgroup: said so
    assert res["cgroup_unavailable"] and "WITHOUT a limit" in stdout
    assert not res["graphbolt"]["runs"] and res["graphbolt"]["reason"]
    assert "GraphBolt DiskBasedFeature: cannot run here:" in stdout
    for name, t in res["targets"].items():
        assert t["met"] in (True, False, None), name
        if t["met"] is None:
            assert t["reason"], name
        elif t["met"] is False:
            assert t["bottleneck"], name
    # below 4x the limit the targets say they are outside their condition
    assert res["features_over_limit"] < 4
    assert any("condition" in t for t in res["targets"].values())
    assert out.with_suffix(".md").read_text().startswith("# gnn_ooc")
    if res.get("plot"):
        assert out.with_suffix(".png").stat().st_size > 0
    else:
        assert "matplotlib" in res["plot_note"]


def _fake(ooc_epoch=10.0, mmap_epoch=300.0, dgl_epoch=400.0, ginex_epoch=40.0,
          c25_epoch=12.0, mem_epoch=10.0, oom=False, peak=100):
    def L(epoch, **kw):
        return {"epoch_time_s": epoch, "epoch_full_s": epoch, "load_time_s": epoch / 2,
                "window": False, "epoch_full_basis": "measured (whole epoch)", **kw}

    ooc = L(ooc_epoch, stages_s={"segment reads (O_DIRECT)": 3.0, "assembly (numba)": 1.0},
            load_time_s=4.5, train_pass_wait_s=2.0, budget_peak_bytes=peak, budget_bytes=200,
            memcg={"oom_killed": oom, "max_usage_bytes": 900})
    return {"features_over_limit": 4.1, "graphbolt": {"runs": False, "reason": "no wheel"},
            "views": {"limited": {"loaders": {
                "oocstore": ooc, "pyg-mmap": L(mmap_epoch), "dgl": L(dgl_epoch),
                "ginex-native": L(ginex_epoch), "in-memory": L(mem_epoch),
                "oocstore-cache25": {**copy.deepcopy(ooc), "epoch_time_s": c25_epoch,
                                     "epoch_full_s": c25_epoch}}, "skipped": {}}}}


def test_targets_met_and_missed():
    t = gnn_ooc.check_targets(_fake())
    assert t["oocstore epoch vs pyg-mmap (x faster)"]["met"] is True
    assert t["oocstore epoch vs pyg-mmap (x faster)"]["value"] == pytest.approx(30.0)
    assert t["oocstore epoch vs ginex-native (x faster)"]["met"] is True
    assert t["oocstore epoch (25 % cache) / in-memory epoch"]["met"] is True
    assert t["oocstore epoch vs GraphBolt DiskBasedFeature (x faster)"]["met"] is None
    assert t["oocstore epoch vs GraphBolt DiskBasedFeature (x faster)"]["reason"] == "no wheel"
    budget_key = "oocstore within its budget (no OOM kill, accountant peak <= budget)"
    assert t[budget_key]["met"] is True
    # slower oocstore: every speed target fails and names the bottleneck stage
    bad = gnn_ooc.check_targets(_fake(ooc_epoch=50.0, c25_epoch=20.0))
    for k in ("oocstore epoch vs pyg-mmap (x faster)", "oocstore epoch vs dgl (x faster)",
              "oocstore epoch vs ginex-native (x faster)",
              "oocstore epoch (25 % cache) / in-memory epoch"):
        assert bad[k]["met"] is False, k
        assert "segment reads (O_DIRECT)" in bad[k]["bottleneck"], k
    assert bad["oocstore epoch (25 % cache) / in-memory epoch"]["value"] == pytest.approx(2.0)
    # an OOM kill or an accountant peak over the budget fails the budget target
    assert gnn_ooc.check_targets(_fake(oom=True))[budget_key]["met"] is False
    assert gnn_ooc.check_targets(_fake(peak=201))[budget_key]["met"] is False
    # a failed baseline: not checked, with the reason
    f = _fake()
    f["views"]["limited"]["loaders"]["dgl"] = {"failed": "OOM-killed by the cgroup"}
    d = gnn_ooc.check_targets(f)["oocstore epoch vs dgl (x faster)"]
    assert d["met"] is None and "OOM" in d["reason"]
    # features under 4x the limit: the condition is flagged on every checked target
    f = _fake()
    f["features_over_limit"] = 2.0
    assert "condition" in gnn_ooc.check_targets(f)["oocstore epoch vs pyg-mmap (x faster)"]


def test_time_to_train_break_even():
    L = {"oocstore": {"epoch_full_s": 10.0}, "slow": {"epoch_full_s": 30.0},
         "fast": {"epoch_full_s": 5.0}, "prepped": {"epoch_full_s": 12.0}}
    pre = {"oocstore": {"seconds": 100.0}, "slow": {"seconds": 0.0}, "fast": {"seconds": 0.0},
           "prepped": {"seconds": 200.0}}
    tt = gnn_ooc.time_to_train(pre, L)
    assert tt["total_s"]["oocstore"]["20"] == pytest.approx(300.0)
    # 100 + 10 n <= 30 n from n = 5
    assert tt["break_even_epochs"]["slow"] == 5
    assert tt["break_even_epochs"]["fast"] is None  # faster epochs, no preprocessing: never
    assert tt["break_even_epochs"]["prepped"] == 1  # less preprocessing and faster epochs


def test_native_rows_match_the_file(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30_000, 33)).astype(np.float32)  # 132-byte rows cross pages
    path = tmp_path / "rows.bin"
    path.write_bytes(b"\0" * 100 + a.tobytes())
    r = NativeRowReader(path, offset=100, row_bytes=132, depth=8)
    ids = rng.integers(0, a.shape[0], 3000)
    out = np.empty((ids.size, 33), np.float32)
    r.gather(ids, out)
    assert np.array_equal(out, a[ids])
    assert r.reads == ids.size and r.useful_bytes == ids.size * 132
    assert r.bytes_read >= ids.size * 4096  # one aligned page (or two) per row
    r.close()
    # a row past the end of the file: a clear error, not garbage
    r = NativeRowReader(path, offset=100, row_bytes=132, depth=2)
    with pytest.raises(OSError, match="short read"):
        r.gather(np.array([0, a.shape[0] + 10]), np.empty((2, 33), np.float32))
    r.close()


@pytest.mark.skipif(_memcg.unavailable() is not None,
                    reason=f"memory cgroup: {_memcg.unavailable()}")
def test_memcg_limits_and_reports():
    code = "import sys; b = bytearray(int(sys.argv[1])); b[::4096] = b'x' * len(b[::4096])"
    r, st = _memcg.run_limited([sys.executable, "-c", code, str(20 << 20)], 200 << 20,
                               f"oocstore-test-{os.getpid()}-a")
    assert r.returncode == 0 and not st["oom_killed"]
    assert 20 << 20 <= st["max_usage_bytes"] <= st["limit_bytes"]
    r, st = _memcg.run_limited([sys.executable, "-c", code, str(400 << 20)], 200 << 20,
                               f"oocstore-test-{os.getpid()}-b")
    assert r.returncode == -9 and st["oom_killed"] and st["failcnt"] > 0
    assert not (_memcg.ROOT / f"oocstore-test-{os.getpid()}-b").exists()  # removed


def test_report_redoes_the_analysis(quick, tmp_path, capsys):
    res, _, out = quick
    again = gnn_ooc.main(["--report", str(out), "--out", str(tmp_path / "again.json")])
    assert again["targets"].keys() == res["targets"].keys()
    for k, t in res["targets"].items():
        assert again["targets"][k]["met"] == t["met"], k
    assert again["time_to_train"] == res["time_to_train"]
    ratios = again["views"]["limited"]["ratios"]
    assert ratios["pyg-mmap"]["epoch_x"] == pytest.approx(
        res["views"]["limited"]["loaders"]["pyg-mmap"]["epoch_full_s"]
        / res["views"]["limited"]["loaders"]["oocstore"]["epoch_full_s"])
    assert (tmp_path / "again.md").is_file()


def test_bad_options_are_refused_before_any_work(tmp_path, monkeypatch):
    from oocstore.errors import UsageError

    out = str(tmp_path / "r.json")
    with pytest.raises(UsageError, match="--budget"):
        gnn_ooc.main(["--limit", "1GiB", "--budget", "2GiB", "--out", out])
    with pytest.raises(UsageError, match="--views"):
        gnn_ooc.main(["--views", "limited,nope", "--out", out])
    # no memory cgroup here: --cgroup yes says why and what to do instead
    monkeypatch.setattr(gnn_ooc._memcg, "unavailable", lambda: "needs root (uid 1000)")
    with pytest.raises(UsageError, match="needs root.*--cgroup no"):
        gnn_ooc.main(["--cgroup", "yes", "--out", out])
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_memcg_unavailable_says_why(tmp_path):
    assert "no cgroup-v1 memory controller" in _memcg.unavailable(tmp_path)
    with pytest.raises(RuntimeError, match="no cgroup-v1"):
        _memcg.MemCgroup("x", 1 << 30, root=tmp_path)
