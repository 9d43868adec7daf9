"""`oocstore train --eval full` under torchrun (two CPU processes, gloo): rank 0 runs the
layer-wise pass, every rank reports the same exact accuracies, and they equal the saved
model's forward over the whole graph in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from helpers import REPO, make_synthetic
from oocstore.samplers.neighbor import sample_plan
from oocstore.store import Store
from oocstore.train.models import build_from_spec, spec_of_state_dict


def test_eval_full_under_torchrun_equals_in_memory_forward(tmp_path):
    store = make_synthetic(tmp_path / "s", nodes=1200, feat_dim=12, avg_degree=6.0)
    sample_plan(store, fanouts="3,3", batch_size=100, epochs=1, world_size=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "oocstore", "train", str(store), "--epochs", "2", "--hidden", "16",
         "--in-memory", "--eval", "full", "--save-model", str(tmp_path / "m.pt"), "--json",
         "--quiet"], capture_output=True, text=True, timeout=240, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["world_size"] == 2 and out["eval"] == "full"
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    spec = spec_of_state_dict(state, "m.pt")
    model = build_from_spec(spec)
    model.load_state_dict(state)
    with Store(store) as s, torch.no_grad():
        indptr, indices = s.csc()
        x = torch.from_numpy(np.array(s.array("features"))).float()
        dst = torch.from_numpy(np.repeat(np.arange(s.num_nodes), np.diff(indptr)))
        ei = torch.stack([torch.from_numpy(np.asarray(indices, dtype=np.int64)), dst])
        pred = model.eval()(x, [(ei, (s.num_nodes, s.num_nodes))] * spec.layers).argmax(1)
        y = torch.from_numpy(np.array(s.array("labels"), dtype=np.int64))
        for split in ("val", "test"):
            ids = torch.from_numpy(np.array(s.split(split), dtype=np.int64))
            assert out[f"{split}_acc"] == int((pred[ids] == y[ids]).sum()) / len(ids)
