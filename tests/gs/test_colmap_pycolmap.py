"""The COLMAP reader (text and binary) against pycolmap on the same files, both ways:
models this project writes, read by pycolmap; and models pycolmap writes, read by us.

pycolmap runs in a subprocess: it ships its own zlib, and importing it into a process
that then encodes PNGs with Pillow crashes that process."""

import json
import subprocess
import sys

import numpy as np
import pytest

from oocstore.gs.cameras import Cameras
from oocstore.gs.colmap import read_colmap_model, write_colmap_model
from oocstore.gs.synthetic import photo_scene_params, random_cameras

pytest.importorskip("pycolmap", reason="pycolmap (dev extra) not installed")

_DUMP = r"""
import json, sys
import pycolmap
out = {}
for src, conv in json.loads(sys.argv[1]):
    r = pycolmap.Reconstruction(src)
    cams = {str(i): [c.model.name, c.width, c.height, list(map(float, c.params))]
            for i, c in r.cameras.items()}
    imgs = {}
    for i, im in r.images.items():
        cfw = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        imgs[im.name] = [im.camera_id, cfw.matrix().tolist()]
    pts = {str(i): [list(map(float, p.xyz)), list(map(int, p.color))]
           for i, p in r.points3D.items()}
    out[src] = {"cameras": cams, "images": imgs, "points": pts}
    if conv:
        r.write_binary(conv + "/bin")
        r.write_text(conv + "/txt")
print(json.dumps(out))
"""


def _pycolmap(pairs):
    res = subprocess.run([sys.executable, "-c", _DUMP, json.dumps(pairs)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def _compare(ours, theirs):
    assert {str(k) for k in ours.cameras} == set(theirs["cameras"])
    for cid, cam in ours.cameras.items():
        model, w, h, params = theirs["cameras"][str(cid)]
        assert (cam.model, cam.width, cam.height) == (model, w, h)
        np.testing.assert_allclose(cam.params, params, rtol=1e-12)
    assert {im.name for im in ours.images} == set(theirs["images"])
    for im in ours.images:
        cam_id, m = theirs["images"][im.name]
        assert im.camera_id == cam_id
        np.testing.assert_allclose(im.viewmat[:3], np.array(m), atol=1e-12)
    assert len(ours.point_ids) == len(theirs["points"])
    for j, pid in enumerate(ours.point_ids):
        xyz, rgb = theirs["points"][str(pid)]
        np.testing.assert_allclose(ours.points[j], xyz, rtol=1e-12)
        assert ours.colors[j].tolist() == rgb


def test_reader_agrees_with_pycolmap(tmp_path):
    params = photo_scene_params(50, seed=1)
    base = random_cameras(params, 5, width=80, height=60, seed=2)
    cams = Cameras(base.viewmats, base.Ks, 80, 60, tuple(f"v{i}.jpg" for i in range(5)))
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, size=(50, 3))
    pairs = []
    for model, dist in (("PINHOLE", (0, 0, 0, 0)), ("OPENCV", (0.05, -0.01, 0.001, -0.002)),
                        ("SIMPLE_RADIAL", (0.03, 0, 0, 0)), ("RADIAL", (0.03, -0.005, 0, 0))):
        for binary in (False, True):
            d = tmp_path / f"{model}-{'bin' if binary else 'txt'}"
            write_colmap_model(d, cams, binary=binary, points=params[:, :3], colors=colors,
                               model=model, distortion=dist)
            conv = tmp_path / f"{d.name}-conv"
            (conv / "bin").mkdir(parents=True)
            (conv / "txt").mkdir()
            pairs.append((str(d), str(conv)))
    theirs = _pycolmap(pairs)
    for d, conv in pairs:
        ours = read_colmap_model(d)
        _compare(ours, theirs[d])
        # the files pycolmap wrote from our model read back the same through our reader
        for form in ("bin", "txt"):
            again = read_colmap_model(f"{conv}/{form}")
            assert again.binary == (form == "bin")
            _compare(again, theirs[d])
