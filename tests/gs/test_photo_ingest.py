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

from helpers import flip_bits
from oocstore.cli import main
from oocstore.errors import ChecksumError, UsageError
from oocstore.gs.cameras import Cameras
from oocstore.gs.colmap import read_colmap_model
from oocstore.gs.ingest import ingest_photos
from oocstore.gs.photo_sources import view_chain
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


_TRUTH: dict = {}


def _truth(src, background=(0.0, 0.0, 0.0)):
    """Original cameras and the ground-truth renders of a written dataset (cached)."""
    key = (str(src), tuple(background))
    if key not in _TRUTH:
        root = src.parent if src.suffix == ".json" else src.parent.parent
        params = np.load(root / "scene_params.npy")
        c = np.load(root / "cameras.npz")
        cams = Cameras(c["viewmats"], c["Ks"], int(c["width"]), int(c["height"]))
        _TRUTH[key] = cams, [rgb for rgb, _ in render_views(params, cams, background)]
    return _TRUTH[key]


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
    flip_bits(path, offset + 100, 0xFF)
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


def test_decoding_keeps_a_bounded_number_of_photos_alive():
    """The ingest's decode pipeline holds at most workers + 1 results besides the one
    being stored, however many photos there are."""
    import threading

    from oocstore.gs.ingest import _ordered_map

    lock = threading.Lock()
    state = {"made": 0, "used": 0, "most": 0}

    def make(i):
        with lock:
            state["made"] += 1
            state["most"] = max(state["most"], state["made"] - state["used"])
        return i

    got = []
    for x in _ordered_map(make, range(50), workers=2):
        got.append(x)
        with lock:
            state["used"] += 1
    assert got == list(range(50))
    assert state["most"] <= 2 + 2


def test_ingest_memory_does_not_grow_with_the_photo_count(tmp_path):
    """40 photos of 400x300 (14 MB decoded): once the first one is stored, the traced
    memory never rises more than a few photos above that point."""
    import tracemalloc

    from PIL import Image

    from oocstore.gs.colmap import write_colmap_model
    from oocstore.gs.synthetic import photo_scene_params, random_cameras

    n, w, h = 40, 400, 300
    base = random_cameras(photo_scene_params(20), n, width=w, height=h)
    cams = Cameras(base.viewmats, base.Ks, w, h, tuple(f"p{i:03d}.png" for i in range(n)))
    write_colmap_model(tmp_path / "sparse" / "0", cams)
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"p{i:03d}.png", compress_level=0)
    tracemalloc.start()
    marks = []

    def progress(k):  # after the first photo: imports and set-up are done by then
        if not marks:
            marks.append(tracemalloc.get_traced_memory()[0])
            tracemalloc.reset_peak()

    try:
        with ingest_photos(tmp_path / "sparse" / "0", tmp_path / "s", init_points=50,
                           progress=progress) as scene:
            peak = tracemalloc.get_traced_memory()[1]
            assert scene.images_bytes == n * w * h * 3
    finally:
        tracemalloc.stop()
    assert peak - marks[0] < 6 * w * h * 3, (marks, peak)  # a handful of photos, not 40


def test_read_image_into_a_reused_buffer(datasets, tmp_path):
    with ingest_photos(datasets["colmap"], tmp_path / "s", init_points=50) as scene:
        buf = scene.image_buffer()
        assert buf.ctypes.data % 4096 == 0 and len(buf) % 4096 == 0
        for v in (0, 5, 9):
            got = scene.read_image(v, out=buf)
            assert np.shares_memory(got, buf)
            np.testing.assert_array_equal(got, scene.read_image(v))
        with pytest.raises(UsageError, match="image_buffer"):
            scene.read_image(0, out=np.zeros(len(buf), np.uint8)[1:])
        # a truncated file is refused with or without the buffer
        path, offset, slot = scene.image_location(VIEWS - 1)
        os.truncate(path, offset + slot // 2)
        for out in (None, buf):
            with pytest.raises(ChecksumError, match=rf"image {VIEWS - 1} .*truncated"):
                scene.read_image(VIEWS - 1, out=out)


def test_transforms_intrinsics_forms(tmp_path):
    """camera_angle_x (and _y), fl_x/fl_y/cx/cy/w/h with distortion, per-frame values."""
    import math

    from PIL import Image

    from oocstore.gs.photo_sources import read_transforms_views

    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    eye = np.eye(4).tolist()

    def views(doc):
        (tmp_path / "t.json").write_text(json.dumps(doc))
        return read_transforms_views(tmp_path / "t.json")

    v = views({"camera_angle_x": 1.0, "frames": [{"file_path": "a", "transform_matrix": eye}]})
    f = 20 / math.tan(0.5)
    np.testing.assert_allclose(v[0].K, [[f, 0, 20], [0, f, 15], [0, 0, 1]])
    assert (v[0].width, v[0].height, v[0].distorted, v[0].name) == (40, 30, False, "a.png")
    # OpenGL camera-to-world identity: the camera looks down -z with y up
    np.testing.assert_allclose(v[0].viewmat, np.diag([1.0, -1, -1, 1]))
    v = views({"camera_angle_x": 1.0, "camera_angle_y": 0.8,
               "frames": [{"file_path": "a.png", "transform_matrix": eye}]})
    assert v[0].K[1, 1] == pytest.approx(15 / math.tan(0.4))
    v = views({"fl_x": 50, "fl_y": 52, "cx": 19, "cy": 16, "w": 40, "h": 30, "k1": 0.1,
               "p2": 0.01, "frames": [{"file_path": "a.png", "transform_matrix": eye},
                                      {"file_path": "a.png", "transform_matrix": eye,
                                       "fl_x": 60, "k1": 0.0}]})
    np.testing.assert_allclose(v[0].K, [[50, 0, 19], [0, 52, 16], [0, 0, 1]])
    assert v[0].distortion == (0.1, 0.0, 0.0, 0.01) and v[0].distorted
    assert v[1].K[0, 0] == 60 and v[1].distortion == (0.0, 0.0, 0.0, 0.01)


def test_colmap_source_forms_and_a_model_without_points(datasets, tmp_path, caplog):
    """SRC may be the model (sparse/0), sparse/ or the dataset folder; a model without
    points3D gets random initial points, with a warning."""
    model = datasets["colmap"]
    names = None
    for i, src in enumerate((model, model.parent, model.parent.parent)):
        with ingest_photos(src, tmp_path / f"s{i}", sh_degree=0) as scene:
            assert scene.num_gaussians == N
            names = names or scene.image_names
            assert scene.image_names == names
    root = tmp_path / "nopoints"
    shutil.copytree(model.parent.parent, root)
    (root / "sparse" / "0" / "points3D.txt").unlink()
    report: dict = {}
    with ingest_photos(root / "sparse" / "0", tmp_path / "r", init_points=123,
                       report=report) as scene:
        assert scene.num_gaussians == 123
    assert report["init"].startswith("123 random points")
    assert "has no 3D points" in caplog.text


def test_images_survive_block_writes_and_reopen(datasets, tmp_path):
    """A writer's commits (training, densification) keep the photos and their checks."""
    with ingest_photos(datasets["colmap"], tmp_path / "s", block_size=128) as scene:
        before = [scene.read_image(v).copy() for v in range(VIEWS)]
        ids, rec = scene.read_block(0)
        with scene.writer() as w:
            rec = rec.copy()
            rec[:, 0] += 0.01
            w.write_block(0, ids, rec)
            w.commit()
        assert scene.has_images and scene.version == 3
        for v in range(VIEWS):
            np.testing.assert_array_equal(scene.read_image(v), before[v])
    with Scene.open(tmp_path / "s") as scene:  # reopened for writing: orphan sweep ran
        assert scene.num_images == VIEWS and list(scene.test_views) == [8, 9]
        np.testing.assert_array_equal(scene.read_image(4), before[4])
    assert main(["verify", str(tmp_path / "s")]) == 0
