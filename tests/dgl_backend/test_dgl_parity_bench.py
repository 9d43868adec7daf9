"""bench/dgl_parity.py at toy size with the DGL backend (so it cannot rot)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO


def test_parity_bench_toy(tmp_path):
    out = tmp_path / "parity.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "dgl_parity.py"), "--backend", "dgl",
                        "--toy", "--seeds", "0", "--out", str(out)], capture_output=True,
                       text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["backend"] == "dgl" and line["toy"]
    doc = json.loads(out.read_text())
    assert doc["versions"]["dgl"].startswith("2.") and len(doc["runs"]) == 1
    assert 0.3 < doc["test_acc_mean"] <= 1.0  # 8 classes: chance is 0.125
