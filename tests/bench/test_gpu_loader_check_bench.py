"""bench/gpu_loader_check.py at toy size (on the CPU here, on CUDA where there is one),
and its answer on a machine without CUDA."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "bench" / "gpu_loader_check.py")


def test_gpu_loader_check_toy(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, SCRIPT, "--toy", "--json", "--dir", str(tmp_path / "w"),
                        "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result
    assert result["ok"] and result["failed"] == [] and result["toy"]
    runs = result["exact_and_memory"]["runs"]
    assert runs["prefetch default"]["exact"] and runs["prefetch default"]["prefetch"] >= 1
    assert runs["prefetch 0"]["exact"] and runs["prefetch 0"]["prefetch"] == 0
    modes = result["overlap"]["modes"]
    assert set(modes) == {"prefetch on", "prefetch off", "features on device"}
    assert all(m["seconds"] > 0 and 0 <= m["wait_share"] <= 1 for m in modes.values())
    if result["cuda"]:
        assert result["card"] and result["stream_order"]["ok"] and result["h2d"]["ok"]
        assert all(r["within_charges"] for r in runs.values())


def test_gpu_loader_check_without_cuda_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA (the full check would run)")
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, SCRIPT, "--json", "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CUDA is not available" in r.stderr
    assert "CUDA is not available" in json.loads(out.read_text())["skipped"]
