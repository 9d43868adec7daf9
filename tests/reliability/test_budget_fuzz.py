"""Budgets under fuzz: random cache sizes, policies, blowup caps and CPU budgets either
run inside the budget (charged bytes and measured peak RSS) or are refused up front."""

import json
import subprocess
import sys

from oocstore import Store
from oocstore.samplers import sample_plan

from helpers import REPO, make_synthetic


def test_random_budgets_run_inside_or_are_refused(tmp_path):
    path = make_synthetic(tmp_path / "s", nodes=20_000, feat_dim=64, seed=3)
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="5,5", batch_size=512, epochs=2, seed=0, name="a")
        sample_plan(s, fanouts="10", batch_size=256, epochs=1, seed=1, name="b")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "fuzz_inputs.py"), "--budget-cases",
                        "6", "--budget-store", str(path), "--seed", "4"],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cases = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(cases) == 6
    outcomes = {c["outcome"] for c in cases}
    assert "ran" in outcomes and outcomes & {"refused at pack", "refused at read"}, cases
    for c in cases:
        if c["outcome"] == "ran":
            assert c["charged"] <= c["budget"] and c["within"], c
        else:
            assert not c.get("committed") and "budget" in c["message"], c
