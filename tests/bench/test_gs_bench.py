"""bench/gs_train.py at toy size: the three modes run and the JSON fields are sane."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gs_train_bench_toy(tmp_path):
    out = tmp_path / "gs_train.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gs_train.py"), "--toy",
                        "--dir", str(tmp_path / "work"), "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result
    modes = result["modes"]
    assert set(modes) == {"all-on-device", "naive-offload", "stream"}
    for m in modes.values():
        assert m["steps"] == 3
        for key in ("psnr", "step_time_s", "bytes_h2d", "bytes_d2h", "bytes_ssd_read",
                    "bytes_ssd_written", "cache_hit_rate", "peak_rss_bytes", "peak_gpu_bytes"):
            assert key in m
        assert 0 <= m["cache_hit_rate"] <= 1 and m["step_time_s"] > 0
        assert m["gaussians"]["start"] == m["gaussians"]["end"] == 3000
        assert 10 < m["psnr"] < 100
    # naive offload moves every visible row both ways each step: never less than stream
    assert modes["naive-offload"]["bytes_moved_per_step"] > 0
    assert modes["naive-offload"]["bytes_h2d"] == modes["naive-offload"]["bytes_d2h"]
    assert result["ratios"]["bytes_per_step_reduction_vs_naive"] <= 1.0
    assert abs(result["ratios"]["psnr_stream_minus_all_db"]) < 1e-3  # same training
    # the streaming variants ran at the same budget: the smallest all of them accept
    variants = result["variants"]
    assert set(variants) == {"stream-cpu-optimizer", "stream-device-optimizer",
                             "stream-local-order", "stream-random-order"}
    assert modes["stream"]["device_budget"] == max(result["min_device_budget"].values())
    for v in variants.values():
        assert v["device_budget"] == modes["stream"]["device_budget"]
        assert abs(v["psnr"] - modes["stream"]["psnr"]) < 1.0
    assert variants["stream-device-optimizer"]["optimizer_device"] == "device"
    assert variants["stream-cpu-optimizer"]["optimizer_device"] == "cpu"
    assert 0 < result["ratios"]["min_budget_over_scene[stream]"] \
        < result["ratios"]["min_budget_over_scene[stream-device-optimizer]"]
    # the default (auto) at a budget that holds the device optimizer's working set
    assert modes["stream"]["optimizer_choice"]["requested"] == "auto"
    assert result["ratios"]["floor_bytes_per_step"] > 0
    assert set(result["orders"]) == {"stream-local-order", "stream", "stream-random-order"}
    sched = result["order_schedules"]
    for name in ("local", "default", "random"):
        assert sched[f"{name}@0.25"]["loaded_over_scene"] > 0
