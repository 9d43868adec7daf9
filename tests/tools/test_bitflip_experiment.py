"""tools/bitflip_experiment.py at toy size: it runs, and flips in index arrays of packs
and plans end in a clean refusal or identical batches."""

import json
import subprocess
import sys

from oocstore import Store
from oocstore.store.verify import verify_store

from helpers import REPO


def test_bitflip_experiment_toy(tmp_path):
    out = tmp_path / "flips.json"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "bitflip_experiment.py"),
                        "--flips", "4", "--seed", "3", "--nodes", "1500", "--feat-dim", "8",
                        "--work", str(tmp_path / "work"), "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    d = json.loads(out.read_text())
    assert len(d["results"]) == 4
    assert set(d["total"]) <= {"detected", "harmless"}, d["total"]
    for res in d["results"]:
        assert res["outcome"] != "detected" or res["detail"].startswith("oocstore: error:")
    # Each flip is undone after its run: the store verifies clean.
    with Store(tmp_path / "work" / "store") as s:
        assert verify_store(s) == []
