import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_loader_overlap_toy(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "loader_overlap.py"), "--toy",
                        "--dir", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["modes"]["prefetch off"]["prefetch"] == 0
    assert result["modes"]["prefetch on"]["prefetch"] >= 1
