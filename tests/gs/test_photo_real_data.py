"""Photo ingest on real third-party data (skipped when ``../shared/data`` is absent):
NeRF-synthetic lego (RGBA, camera_angle_x, no test split) and instant-ngp's fox (real
JPEGs, fl_x/fl_y/cx/cy with OpenCV distortion, 17 of 67 frames without an image)."""

import json
from pathlib import Path

import numpy as np
import pytest

from oocstore.cli import main
from oocstore.errors import SourceError
from oocstore.gs.ingest import ingest_photos
from oocstore.gs.photo_sources import focus_box
from oocstore.gs.scene import Scene

REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LEGO = REAL_DATA / "nerf_synthetic" / "lego"
FOX = REAL_DATA / "instant_ngp_fox"


def _need(path: Path, *files: str) -> Path:
    missing = [f for f in files if not (path / f).exists()]
    if not path.is_dir() or missing:
        pytest.skip(f"real data {path} absent (needs {', '.join(files)}): see "
                    "../shared/data/README.md")
    return path


def _project(scene, point):
    vm = scene.cameras.viewmats.astype(np.float64)
    k = scene.cameras.Ks.astype(np.float64)
    cam = np.einsum("vij,j->vi", vm[:, :3, :3], point) + vm[:, :3, 3]
    return np.einsum("vij,vj->vi", k, cam)[:, :2] / cam[:, 2:3], cam[:, 2]


def _up_is_up(scene) -> float:
    """Share of views in which a point above the looked-at centre (+z, the datasets' up)
    appears above it: a flipped axis convention turns the images upside down."""
    lo, hi = focus_box(scene.cameras.viewmats, scene.cameras.Ks, *scene.image_size)
    centre, r = (lo + hi) / 2, float(hi[0] - lo[0]) / 2
    a, za = _project(scene, centre)
    b, _ = _project(scene, centre + [0, 0, 0.5 * r])
    assert np.all(za > 0)  # in front of every camera
    return float(np.mean(b[:, 1] < a[:, 1]))


def test_lego_downscale_8(tmp_path):
    src = _need(LEGO, "transforms_train.json", "train/r_0.png")
    with ingest_photos(src, tmp_path / "lego", images_downscale=8, init_points=2000) as scene:
        assert scene.num_images == 100 and scene.image_size == (100, 100)
        assert len(scene.test_views) == 13  # every 8th of 100 (no test split in the folder)
        assert scene.background == (1.0, 1.0, 1.0)
        assert _up_is_up(scene) == 1.0
        # the model sits at the origin: it projects onto the centre of each image's object
        origin, depth = _project(scene, np.zeros(3))
        assert np.all(depth > 0)
        errs = []
        for v in range(scene.num_images):
            img = scene.read_image(v).astype(int)
            ys, xs = np.nonzero(img.sum(axis=-1) < 740)  # not the white background
            errs.append(np.hypot(xs.mean() + 0.5 - origin[v, 0], ys.mean() + 0.5 - origin[v, 1]))
        assert np.median(errs) < 6 and np.max(errs) < 15  # pixels of 100
        # stored pixels: the RGBA file composited on white, then box-downscaled
        from PIL import Image

        v = scene.image_names.index("train/r_0.png")
        with Image.open(LEGO / "train" / "r_0.png") as im:
            rgba = np.asarray(im).astype(np.float64)
        a = rgba[..., 3:] / 255
        rgb = rgba[..., :3] * a + 255 * (1 - a)
        want = rgb.reshape(100, 8, 100, 8, 3).mean(axis=(1, 3))
        assert np.abs(scene.read_image(v) - want).max() <= 1.5


def test_fox_downscale_8(tmp_path, capsys):
    src = _need(FOX, "transforms.json", "images/0001.jpg")
    with pytest.raises(SourceError, match=r"images/0005\.jpg does not exist \(17 of the 67"):
        ingest_photos(src, tmp_path / "refused", images_downscale=8)
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "fox"
    assert main(["ingest", "scene", str(src), str(out), "--images-downscale", "8",
                 "--skip-missing-images", "--init-points", "2000", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images_missing_skipped"] == 17 and summary["images_unused"] == 0
    # k1 = 0.058 pushes the corners out: the pinhole image's corners lie outside the photo
    assert 0.005 < summary["undistort_outside_share"] < 0.05
    with Scene.open(out, readonly=True) as scene:
        assert scene.num_images == 50 and scene.image_size == (135, 240)
        assert len(scene.test_views) == 7 and scene.background is None
        assert _up_is_up(scene) == 1.0
        # the photos are centred on the fox: the looked-at point lands in the middle
        lo, hi = focus_box(scene.cameras.viewmats, scene.cameras.Ks, *scene.image_size)
        uv, _ = _project(scene, (lo + hi) / 2)
        frac = np.abs(uv / [135, 240] - 0.5)
        assert np.mean(np.all(frac < 0.25, axis=1)) > 0.9
        # distortion was removed with the scaled intrinsics; the image stays the photo
        img = scene.read_image(0).astype(np.float64)
        assert 40 < img.mean() < 220 and img.std() > 20
