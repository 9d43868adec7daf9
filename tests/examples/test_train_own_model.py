"""examples/train_own_model.py runs as its docstring says, at toy size: a PyG GAT
trained out of core inside a budget, validated every epoch, stopped early, the best
epoch's weights saved and loadable."""

import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import REPO
from oocstore import Store
from oocstore.budget import MemoryBudget
from oocstore.cli import main
from oocstore.loader import NodeLoader
from oocstore.train import evaluate

pytest.importorskip("torch_geometric.nn.models")


def run_example(store, out, *extra):
    return subprocess.run([sys.executable, str(REPO / "examples" / "train_own_model.py"),
                           store, "--cpu-budget", "8MiB", "--hidden", "8", "--out", str(out),
                           *extra], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(REPO), os.environ.get("PYTHONPATH", "")])})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("example") / "s")
    assert main(["ingest", "synthetic", path, "--nodes", "1200", "--feat-dim", "16",
                 "--avg-degree", "6", "--quiet"]) == 0
    assert main(["sample", path, "--fanouts", "4,4", "--batch-size", "128", "--quiet"]) == 0
    assert main(["pack", path, "--cpu-cache", "8KiB", "--quiet"]) == 0
    return path


def test_example_trains_validates_and_saves_the_best(store, tmp_path):
    out = tmp_path / "gat.pt"
    r = run_example(store, out, "--epochs", "3", "--lr", "0.01")
    assert r.returncode == 0, r.stderr
    vals = [float(v) for v in re.findall(r"^epoch \d+: loss [0-9.]+, val acc ([0-9.]+)",
                                         r.stdout, re.M)]
    assert len(vals) == 3 and max(vals) > 0.3  # 8 classes: chance is 0.125
    best = re.search(r"best epoch (\d+): val acc ([0-9.]+), test acc ([0-9.]+)", r.stdout)
    assert best and int(best[1]) == vals.index(max(vals)) and float(best[2]) == max(vals)
    assert re.search(r"training read [0-9.]+ MiB from disk within 8MiB", r.stdout)
    # the file holds the best epoch's weights: they score its validation accuracy
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import train_own_model
    finally:
        sys.path.pop(0)
    with Store(store) as s, NodeLoader(s, "train", budget=MemoryBudget(cpu="8MiB")) as loader, \
            loader.eval_loader("val") as val:
        model = train_own_model.build_model(s, loader, 8)
        model.load_state_dict(torch.load(out, weights_only=True))
        assert round(evaluate(model, val), 4) == float(best[2])


def test_example_stops_early(store, tmp_path):
    # a learning rate too small to change a prediction: epoch 0 stays the best
    r = run_example(store, tmp_path / "m.pt", "--epochs", "10", "--patience", "1", "--lr",
                    "1e-12")
    assert r.returncode == 0, r.stderr
    assert len(re.findall(r"^epoch \d+:", r.stdout, re.M)) == 2
    assert "no better validation accuracy for 1 epochs: stopping" in r.stdout
    assert "best epoch 0:" in r.stdout
