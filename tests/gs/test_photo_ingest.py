"""``oocstore ingest scene`` from photographs: COLMAP models (text, binary) and
transforms.json, the images stored in the scene, and the Scene image accessors.

The datasets are rendered by the project's own rasterizer
(:func:`oocstore.gs.synthetic.write_photo_dataset`), so every stored image can be
compared with the ground truth: a render of the same scene from the original camera."""

import json
import os
import shutil

import numpy as np
import pytest

from oocstore.cli import main
from oocstore.errors import ChecksumError, UsageError
from oocstore.gs.cameras import Cameras, read_colmap_model
from oocstore.gs.ingest import ingest_photos, view_chain
from oocstore.gs.scene import Scene, scene_info
from oocstore.gs.synthetic import render_views, write_photo_dataset

VIEWS, W, H, N = 10, 64, 48, 600


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """One dataset of each kind (rendered once for the module)."""
    root = tmp_path_factory.mktemp("photos")
    out = {}
    for kind, extra in (("colmap", {}), ("colmap-bin", {}), ("transforms", {"rgba": True})):
        out[kind] = write_photo_dataset(root / kind, kind, views=VIEWS, width=W, height=H,
                                        gaussians=N, seed=3, **extra)
    return out


def _truth(src, background=(0.0, 0.0, 0.0), size=None):
    """Original cameras and the ground-truth renders of a written dataset."""
    root = src.parent if src.suffix == ".json" else src.parent.parent
    params = np.load(root / "scene_params.npy")
    c = np.load(root / "cameras.npz")
    cams = Cameras(c["viewmats"], c["Ks"], int(c["width"]), int(c["height"]))
    if size is not None:
        cams = cams.resized(*size)
    imgs = [rgb for rgb, _ in render_views(params, cams, background)]
    return cams, imgs


def _index(name: str) -> int:
    """Original view index of a written image name (img_0003.png, train/r_3.png)."""
    stem = os.path.splitext(os.path.basename(name))[0]
    return int(stem.split("_")[-1])


@pytest.mark.parametrize("kind", ["colmap", "colmap-bin", "transforms"])
def test_ingest_stores_the_photos_with_their_cameras(datasets, tmp_path, kind):
    src = datasets[kind]
    bg = (1.0, 1.0, 1.0) if kind == "transforms" else (0.0, 0.0, 0.0)
    cams, truth = _truth(src, bg)
    with ingest_photos(src, tmp_path / "s", init_points=300) as scene:
        assert scene.has_images and scene.image_size == (W, H)
        assert scene.num_images == len(scene.cameras) == VIEWS
        assert scene.image_bytes == W * H * 3 and scene.images_bytes == VIEWS * W * H * 3
        assert sorted(_index(n) for n in scene.image_names) == list(range(VIEWS))
        assert scene.background == ((1.0, 1.0, 1.0) if kind == "transforms" else None)
        for v, name in enumerate(scene.image_names):
            i = _index(name)
            # poses converted to world-to-camera OpenCV axes (transforms: from OpenGL c2w)
            np.testing.assert_allclose(scene.cameras.viewmats[v], cams.viewmats[i], atol=1e-5)
            np.testing.assert_allclose(scene.cameras.Ks[v], cams.Ks[i], rtol=1e-5)
            img = scene.read_image(v)
            assert img.dtype == np.uint8 and img.shape == (H, W, 3)
            want = np.clip(np.rint(truth[i] * 255), 0, 255)
            # PNG round trip; RGBA: the un-premultiplied colour is quantised, then composited
            assert np.abs(img.astype(int) - want).max() <= (2 if kind == "transforms" else 0)


def test_colmap_points_initialise_the_gaussians(datasets, tmp_path):
    src = datasets["colmap"]
    params = np.load(src.parent.parent / "scene_params.npy")
    with ingest_photos(src, tmp_path / "s", sh_degree=0) as scene:
        _, got = scene.read_params()
        assert scene.num_gaussians == N
        np.testing.assert_allclose(got[:, :3], params[:, :3], atol=1e-6)


def test_text_and_binary_models_read_the_same(datasets):
    a = read_colmap_model(datasets["colmap"])
    b = read_colmap_model(datasets["colmap-bin"])
    assert not a.binary and b.binary
    assert a.cameras.keys() == b.cameras.keys()
    for cid in a.cameras:
        assert a.cameras[cid].model == b.cameras[cid].model == "PINHOLE"
        np.testing.assert_allclose(a.cameras[cid].params, b.cameras[cid].params)
    assert [i.name for i in a.images] == [i.name for i in b.images]
    for x, y in zip(a.images, b.images):
        np.testing.assert_allclose(x.viewmat, y.viewmat, atol=1e-12)
    np.testing.assert_allclose(a.points, b.points)
    np.testing.assert_array_equal(a.colors, b.colors)


def test_downscale_is_an_area_filter_and_scales_the_intrinsics(datasets, tmp_path):
    src = datasets["colmap"]
    with ingest_photos(src, tmp_path / "full", init_points=100) as full, \
            ingest_photos(src, tmp_path / "half", images_downscale=2) as half:
        assert half.image_size == (W // 2, H // 2)
        assert list(half.image_names) == list(full.image_names)
        np.testing.assert_allclose(half.cameras.Ks[:, :2], full.cameras.Ks[:, :2] / 2, rtol=1e-6)
        for v in range(VIEWS):
            big = full.read_image(v).astype(np.float64)
            box = big.reshape(H // 2, 2, W // 2, 2, 3).mean(axis=(1, 3))
            assert np.abs(half.read_image(v) - box).max() <= 1.0


def test_background_choice_for_rgba_photos(datasets, tmp_path):
    src = datasets["transforms"]
    _, truth = _truth(src, (0.0, 0.0, 0.0))
    with ingest_photos(src, tmp_path / "s", background="black", init_points=100) as scene:
        assert scene.background == (0.0, 0.0, 0.0)
        for v, name in enumerate(scene.image_names):
            want = np.clip(np.rint(truth[_index(name)] * 255), 0, 255)
            assert np.abs(scene.read_image(v).astype(int) - want).max() <= 2


def test_test_split_every_nth_and_training_views_first(datasets, tmp_path):
    src = datasets["colmap"]  # names sorted: img_0000 .. img_0009
    with ingest_photos(src, tmp_path / "s", test_every=4) as scene:
        names = scene.image_names
        assert sorted(_index(names[v]) for v in scene.test_views) == [0, 4, 8]
        assert list(scene.test_views) == [7, 8, 9]  # held-out views stored last
        assert list(scene.train_views) == list(range(7))
        info = scene_info(scene.store)["images"]
        assert info["test_every"] == 4 and info["kind"] == "colmap" and info["downscale"] == 1
    with ingest_photos(src, tmp_path / "none", test_every=0) as scene:
        assert len(scene.test_views) == 0 and len(scene.train_views) == VIEWS


def test_dataset_test_split_is_used(datasets, tmp_path):
    """transforms_train.json + transforms_test.json: the test file's frames are held out."""
    d = tmp_path / "ds"
    shutil.copytree(datasets["transforms"].parent, d)
    doc = json.loads((d / "transforms.json").read_text())
    train = dict(doc, frames=doc["frames"][:7])
    test = dict(doc, frames=doc["frames"][7:])
    (d / "transforms_train.json").write_text(json.dumps(train))
    (d / "transforms_test.json").write_text(json.dumps(test))
    (d / "transforms.json").unlink()
    with ingest_photos(d, tmp_path / "s", init_points=100) as scene:
        assert scene.num_images == VIEWS
        assert sorted(_index(scene.image_names[v]) for v in scene.test_views) == [7, 8, 9]
        assert scene.images_meta.test_every == 0


def test_views_are_chained_by_proximity(datasets, tmp_path):
    """Consecutive stored training views are closer than in a random order."""
    with ingest_photos(datasets["colmap"], tmp_path / "s", test_every=0) as scene:
        c = scene.cameras.centers
        step = np.linalg.norm(np.diff(c, axis=0), axis=1).mean()
        rng = np.random.default_rng(0)
        rand = np.mean([np.linalg.norm(np.diff(c[rng.permutation(len(c))], axis=0), axis=1).mean()
                        for _ in range(20)])
        assert step < 0.7 * rand


def test_view_chain_on_a_ring_walks_around_it():
    from oocstore.gs.cameras import look_at

    ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    rng = np.random.default_rng(1)
    perm = rng.permutation(12)
    vms = np.stack([look_at([3 * np.cos(a), 3 * np.sin(a), 1], [0, 0, 0], [0, 0, 1])
                    for a in ang[perm]])
    order = view_chain(vms, np.arange(12))
    walked = perm[order]
    steps = np.abs(np.diff(walked)) % 12
    assert sorted(order.tolist()) == list(range(12))
    assert np.all((steps == 1) | (steps == 11))


def test_read_image_checks_its_crc(datasets, tmp_path):
    with ingest_photos(datasets["colmap"], tmp_path / "s", init_points=100) as scene:
        path, offset, slot = scene.image_location(3)
        before = scene.read_image(2).copy()
    with open(path, "r+b") as f:
        f.seek(offset + 100)
        b = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    with Scene.open(tmp_path / "s", readonly=True) as scene:
        np.testing.assert_array_equal(scene.read_image(2), before)  # others still read
        with pytest.raises(ChecksumError, match=r"image 3 \(img_00\d\d\.png\).*scene-images"):
            scene.read_image(3)
    with Scene.open(tmp_path / "s", readonly=True, verify_reads=False) as scene:
        assert scene.read_image(3).shape == (H, W, 3)
    assert main(["verify", str(tmp_path / "s")]) != 0


def test_scene_without_images(small_scene):
    scene, _ = small_scene
    assert not scene.has_images and scene.num_images == 0 and scene.images_bytes == 0
    assert len(scene.test_views) == 0 and len(scene.train_views) == len(scene.cameras)
    assert scene.image_names == [] and scene.background is None
    with pytest.raises(UsageError, match="holds no photographs"):
        scene.read_image(0)
    assert "images" not in scene_info(scene.store)


def test_cli_ingest_photos_json(datasets, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["ingest", "scene", str(datasets["transforms"]), str(out), "--images-downscale",
                 "2", "--init-points", "500", "--sh-degree", "1", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == VIEWS and (summary["width"], summary["height"]) == (32, 24)
    assert summary["gaussians"] == 500 and summary["test_views"] == 2
    assert summary["images_bytes"] == VIEWS * 32 * 24 * 3
    assert main(["inspect", str(out)]) == 0
    assert "images: 10 photos (transforms" in capsys.readouterr().out
