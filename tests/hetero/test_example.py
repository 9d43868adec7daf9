"""examples/train_own_hetero_model.py runs as its docstring says, at toy size, and its
to_hetero GraphSAGE learns through the relations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from oocstore.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_example_trains_a_users_hetero_model(tmp_path):
    store = tmp_path / "s"
    assert main(["ingest", "hetero-synthetic", str(store), "--papers", "1500", "--paper-dim",
                 "16", "--author-dim", "8", "--classes", "4", "--add-reverse", "--quiet"]) == 0
    assert main(["sample", str(store), "--fanouts", "5,3", "--batch-size", "128",
                 "--quiet"]) == 0
    assert main(["pack", str(store), "--cpu-budget", "2MiB", "--quiet"]) == 0
    out = subprocess.run([sys.executable, str(REPO / "examples" / "train_own_hetero_model.py"),
                          str(store), "--cpu-budget", "2MiB", "--epochs", "4", "--hidden", "16"],
                         capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    last_val = [float(line.rsplit(" ", 1)[1]) for line in out.stdout.splitlines()
                if line.startswith("epoch ")][-1]
    # paper features alone: about 1 - 0.6 * 3/4 = 0.55
    assert last_val > 0.7, out.stdout
    assert "paper: cpu-tier hit rate" in out.stdout and "field" not in out.stdout
