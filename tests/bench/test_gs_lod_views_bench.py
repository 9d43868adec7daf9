"""bench/gs_lod_views.py on a small LoD scene: it trains, evaluates and writes its JSON."""

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gs_lod_views_bench_small(tmp_path):
    from oocstore.gs.lod_build import build_lod_scene
    from oocstore.gs.synthetic import random_scene

    random_scene(tmp_path / "src", 1500, sh_degree=0, block_size=128, views=16).close()
    from oocstore.gs.scene import Scene

    with Scene.open(tmp_path / "src", readonly=True) as src:
        build_lod_scene(src, tmp_path / "lod").close()
    out = tmp_path / "views.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gs_lod_views.py"),
                        str(tmp_path / "lod"), "--steps", "4", "--eval-every", "2",
                        "--jitter", "0.8,1,1.25", "--train-views", "--threads", "1",
                        "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["views"] == 16 and doc["jitter"] == [0.8, 1.0, 1.25]
    assert [e["step"] for e in doc["evals"]] == [0, 2, 4]
    for e in doc["evals"]:
        assert e["held_out"]["views"] == [0, 8]
        assert e["training"]["views"] == [1, 7, 9, 15]
        for part in ("held_out", "training"):
            d = e[part]
            assert all(math.isfinite(x) and x > 5 for x in d["cut"] + d["leaves"])
            mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
            assert abs(d["gap_db"] - (mean(d["cut"]) - mean(d["leaves"]))) < 1e-9
    assert doc["evals"][-1]["rows_per_step"] > 0
    # the steps move the cut's rows: the held-out cut renders differently after them
    assert doc["evals"][-1]["held_out"]["cut"] != doc["evals"][0]["held_out"]["cut"]
