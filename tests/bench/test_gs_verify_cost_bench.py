"""bench/gs_verify_cost.py at toy size: the JSON fields are there and sane."""

import json
import subprocess
import sys

from helpers import REPO


def test_gs_verify_cost_toy(tmp_path):
    out = tmp_path / "gs_verify_cost.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gs_verify_cost.py"), "--toy",
                        "--dir", str(tmp_path), "--out", str(out)], capture_output=True,
                       text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["bench"] == "gs_verify_cost" and res["toy"]
    assert res["read_s_verify_on"] > 0 and res["read_s_verify_off"] > 0
    assert res["overhead"] == res["read_s_verify_on"] / res["read_s_verify_off"] - 1
    assert res["bytes_read"] == 4000 * (8 + 3 * 23 * 4) and res["blocks"] == 8
    assert res["crc32_gbps"] > 0
    assert json.loads(out.read_text())["bench"] == "gs_verify_cost"
