import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cost_model_bench_toy(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "cost_model.py"), "--toy", "--dir",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(result["rows"]) == 7
    for row in result["rows"]:
        assert row["predicted_s"] > 0 and row["measured_s"] > 0
