"""The streamer on a real CUDA device: both optimizers train the same scene as
all-on-device (same rasterizer), at the smallest budget gs-train accepts, with the
device memory the store holds inside what it charged (``max_memory_allocated`` when a
step's batch is ready, less what existed before the store), and the CPU optimizer's
uploads through the pinned staging ring. The CPU side of the same logic is tested in
tests/gs/test_stream.py and tests/gs/test_gs_train.py."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from helpers import strip_scene
from oocstore.cli import main
from oocstore.gs.scene import Scene

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (torch.cuda.is_available() is False here)"),
]


@pytest.fixture
def strip(tmp_path):
    return strip_scene(tmp_path / "scene", n=3000, scales=(0.05, 0.15), sh_coeffs=4, sh_degree=1,
                       focal=40.0, size=(64, 48), block_size=256)


def _train(capsys, path, *args) -> dict:
    assert main(["gs-train", str(path), "--device", "cuda", "--steps", "6", "--json", "--quiet",
                 *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("optimizer", ["cpu", "device"])
def test_cuda_stream_trains_like_all_on_device_inside_its_charges(strip, tmp_path, capsys,
                                                                  optimizer):
    ref = tmp_path / "ref"
    shutil.copytree(strip, ref)
    assert main(["gs-train", str(strip), "--device", "cuda", "--steps", "6", "--quiet",
                 "--gpu-budget", "1KiB", "--optimizer-device", optimizer]) == 2
    need = int(re.search(r"\((\d+) bytes", capsys.readouterr().err).group(1))
    out = _train(capsys, strip, "--gpu-budget", need, "--optimizer-device", optimizer)
    _train(capsys, ref, "--mode", "all-on-device")
    assert out["device_budget"] == need
    # the store's slots and batch, measured when a batch is ready, within the charges
    assert out["peak_gpu_held_bytes"] <= need
    if optimizer == "cpu":
        assert out["upload_pinned"] is True
    with Scene.open(strip) as a, Scene.open(ref) as b:
        (ia, ra), (ib, rb) = a.read_all(), b.read_all()
    assert np.array_equal(ia, ib)
    np.testing.assert_allclose(ra, rb, rtol=1e-4, atol=1e-5)
