"""bench/scale.py runs at quick size, so it cannot rot."""

import json
import subprocess
import sys

from helpers import REPO


def test_scale_quick(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "--quick",
                        "--workdir", str(tmp_path)], capture_output=True, text=True,
                       timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["bench"] == "scale" and res["quick"] and res["nodes"] == 50_000
    stages = {s["stage"]: s for s in res["stages"]}
    assert list(stages) == ["ingest", "sample", "pack", "epoch"]
    for s in stages.values():
        assert s["exit"] == 0 and s["seconds"] > 0 and s["peak_rss_bytes"] > 0, s
        if res["cgroup"].startswith("v1"):  # root with cgroup v1: every stage confined
            assert 0 < s["cgroup_peak_bytes"] <= res["limit_bytes"], s
    ep = stages["epoch"]["result"]
    assert ep["batches"] == -(-int(0.02 * 50_000) // 128) and ep["rows"] > 0
    assert "seconds" in r.stdout and "cgroup peak" in r.stdout
    assert not list(tmp_path.glob("papers-*"))  # the store is deleted without --keep
