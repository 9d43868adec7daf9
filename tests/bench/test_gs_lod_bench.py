"""bench/gs_lod.py at toy size: it runs end to end and its JSON fields are consistent."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gs_lod_bench_toy(tmp_path):
    out = tmp_path / "gs_lod.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gs_lod.py"), "--toy", "--work",
                        str(tmp_path / "work"), "--out", str(out), "--threads", "1",
                        "--lod-pixels-list", "1,0.5", "--fit-steps", "4", "--refit"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [x["tile"] for x in doc["results"]] == ["1x1", "2x2"]
    for res in doc["results"]:
        assert res["nodes"] > res["leaves"] > 0
        assert 0 < res["lod_block_fraction_max"] <= 1
        for v in res["per_view"]:  # the cut's rows lie in prefixes of its blocks
            assert v["cut"] <= v["prefix_rows"] <= v["block_rows_lod"]
        assert res["render"]["lod_median_s"] > 0
    assert doc["fit_steps"] == 4 and all(r["fit_steps"] == 4 for r in doc["results"])
    psnr = doc["results"][1]["psnr"]
    assert 10 < psnr["trained_psnr_cut"] < 100 and 10 < psnr["trained_psnr_leaves"] < 100
    # the training views beside the held-out ones (views 0 and 8 of 16): 1, 7, 9 and 15
    assert psnr["training_views_shown"] == [1, 7, 9, 15]
    assert 10 < psnr["trained_psnr_cut_training_views"] < 100
    assert 10 < psnr["trained_psnr_leaves_training_views"] < 100
    for res in doc["results"]:  # each threshold measured; a finer one expands more nodes
        by = res["by_lod_pixels"]
        assert list(by) == ["1", "0.5"] and res["lod_cut_max"] == by["1"]["lod_cut_max"]
        assert by["0.5"]["lod_cut_max"] >= by["1"]["lod_cut_max"]
        assert by["0.5"]["lod_block_fraction_max"] >= by["1"]["lod_block_fraction_max"]
    for px in ("1", "0.5"):
        p = doc["results"][1]["by_lod_pixels"][px]["psnr"]
        assert p["lod_pixels"] == float(px) and 10 < p["trained_psnr_cut"] < 100
        # the refit variant: the trained leaves are kept (same leaves-only render)
        assert abs(p["refit_psnr_leaves"] - p["trained_psnr_leaves"]) < 1e-3, p
        assert 10 < p["refit_psnr_cut"] < 100
