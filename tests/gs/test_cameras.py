import numpy as np
import pytest

from conftest import make_params
from oocstore.errors import SourceError
from oocstore.gs.cameras import (Cameras, look_at, orbit_cameras, parse_colmap_cameras,
                                 read_colmap_text, rot_to_quat, write_colmap_text)
from oocstore.gs.colmap import _quat_to_rot

CAMS_TXT = """# Camera list with one line of data per camera:
1 PINHOLE 640 480 500 510 320 240
2 SIMPLE_PINHOLE 320 240 250 160 120
3 SIMPLE_RADIAL 640 480 505 321 241 0.01
4 OPENCV 640 480 500 502 320 240 0.1 0.01 0.001 0.002
"""
IMAGES_TXT = """# Image list with two lines of data per image:
1 1 0 0 0 0 0 3 1 b.png
10 20 30 1
2 0.7071067811865476 0 0.7071067811865476 0 1 2 3 2 a.png

3 1 0 0 0 0 0 0 3 c.png
1 2 -1
4 1 0 0 0 0 0 0 4 d.png

"""


def _model(tmp_path, cams=CAMS_TXT, images=IMAGES_TXT):
    (tmp_path / "cameras.txt").write_text(cams)
    (tmp_path / "images.txt").write_text(images)
    return tmp_path


def test_colmap_text(tmp_path):
    cams = read_colmap_text(_model(tmp_path))
    assert cams.names == ("a.png", "b.png", "c.png", "d.png")  # sorted by name
    assert (cams.width, cams.height) == (320, 240)  # the first (sorted) image's camera
    # b.png: PINHOLE at 640x480 rescaled to 320x240
    assert np.allclose(cams.Ks[1], [[250, 0, 160], [0, 255, 120], [0, 0, 1]])
    assert np.allclose(cams.Ks[2], [[252.5, 0, 160.5], [0, 252.5, 120.5], [0, 0, 1]])
    assert np.allclose(cams.viewmats[1], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]])
    # a.png: 90 degrees about y; world-to-camera maps its centre to the origin
    r = cams.viewmats[0, :3, :3]
    assert np.allclose(r, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-6)
    c = cams.centers[0]
    assert np.allclose(cams.viewmats[0, :3, :3] @ c + cams.viewmats[0, :3, 3], 0, atol=1e-5)


def test_colmap_write_read_round_trip(tmp_path):
    params = make_params(100, 0)
    cams = orbit_cameras(params[:, :3], 5, width=80, height=60)
    write_colmap_text(tmp_path, cams)
    again = read_colmap_text(tmp_path)
    assert np.allclose(again.viewmats, cams.viewmats, atol=1e-5)
    assert np.allclose(again.Ks, cams.Ks)


@pytest.mark.parametrize("cams,images,match", [
    ("1 FISHEYE 640 480 1 2 3\n", None, "model 'FISHEYE' is not supported"),
    ("1 PINHOLE 640 480 500 320 240\n", None, "PINHOLE takes 4 parameters, got 3"),
    ("1 PINHOLE 640 480 0 500 320 240\n", None, "focal length 0"),
    ("1 PINHOLE 640 480 500 nan 320 240\n", None, "not finite"),
    ("1 PINHOLE 0 480 500 500 320 240\n", None, "not a positive pixel count"),
    ("1 PINHOLE 640 480 500 500 320 240\n1 PINHOLE 640 480 500 500 320 240\n", None, "appears twice"),
    ("# nothing\n", None, "lists no cameras"),
    ("1 PINHOLE 640 480 500 500 320 240\n", "1 0 0 0 0 0 0 0 1 a.png\n\n", "zero rotation quaternion"),
    ("1 PINHOLE 640 480 500 500 320 240\n", "1 1 0 0 0 0 0 0 7 a.png\n\n", "camera 7, which"),
    ("1 PINHOLE 640 480 500 500 320 240\n", "1 1 0 0 0 0 0\n", "expected 'IMAGE_ID"),
    ("1 PINHOLE 640 480 500 500 320 240\n2 PINHOLE 480 480 500 500 320 240\n",
     "1 1 0 0 0 0 0 0 1 a.png\n\n2 1 0 0 0 0 0 0 2 b.png\n\n", "share an aspect ratio"),
])
def test_colmap_bad_input(tmp_path, cams, images, match):
    _model(tmp_path, cams, images or IMAGES_TXT)
    with pytest.raises(SourceError, match=match):
        read_colmap_text(tmp_path)


def test_unnormalised_quaternions_are_normalised_without_overflow(tmp_path):
    model = _model(tmp_path, "1 PINHOLE 640 480 800 800 320 240\n",
                   "1 1e308 0 0 1e308 0 0 0 1 a.png\n\n2 2 0 0 2 0 0 0 1 b.png\n\n")
    cams = read_colmap_text(model)  # a warning would fail the test
    assert np.allclose(cams.viewmats[0], cams.viewmats[1])
    assert np.allclose(cams.viewmats[0, :3, :3], _quat_to_rot(np.array([1.0, 0, 0, 1])))


def test_values_beyond_float32_are_refused(tmp_path):
    model = _model(tmp_path, "1 PINHOLE 640 480 800 800 -1e308 240\n",
                   "1 1 0 0 0 0 0 0 1 a.png\n\n")
    with pytest.raises(SourceError, match=r"camera a.png holds the value 1e\+308, beyond "
                                          r"float32's range"):
        read_colmap_text(model)


def test_missing_model(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_colmap_text(tmp_path)


def test_camera_checks():
    vm = np.eye(4)[None].repeat(2, 0)
    k = np.array([[100, 0, 32], [0, 100, 24], [0, 0, 1.0]])[None].repeat(2, 0)
    Cameras(vm, k, 64, 48)
    sing = vm.copy()
    sing[1, :3, :3] = [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    with pytest.raises(SourceError, match="cameras: camera 1 has a singular or non-rotation pose"):
        Cameras(sing, k, 64, 48)
    refl = vm.copy()
    refl[0, 0, 0] = -1  # a mirror: orthonormal but det -1
    with pytest.raises(SourceError, match="det -1"):
        Cameras(refl, k, 64, 48)
    zero_f = k.copy()
    zero_f[0, 1, 1] = 0
    with pytest.raises(SourceError, match="focal length fx=100, fy=0"):
        Cameras(vm, zero_f, 64, 48)
    with pytest.raises(SourceError, match="image width 0"):
        Cameras(vm, k, 0, 48)
    nan = vm.copy()
    nan[0, 0, 3] = np.nan
    with pytest.raises(SourceError, match="NaN"):
        Cameras(nan, k, 64, 48)


def test_orbit_cameras_look_at_the_scene():
    params = make_params(500, 0, extent=2.0)
    cams = orbit_cameras(params[:, :3], 12, width=64, height=48, seed=3)
    assert len(cams) == 12
    centre = params[:, :3].mean(0)
    for v in range(12):
        pc = cams.viewmats[v, :3, :3] @ centre + cams.viewmats[v, :3, 3]
        assert pc[2] > 0  # in front
        u = cams.Ks[v] @ pc / pc[2]
        assert abs(u[0] - 32) < 3 and abs(u[1] - 24) < 3  # near the image centre


def test_look_at_and_quaternions_agree():
    vm = look_at([3, 1, 2], [0, 0, 0], [0, 0, 1])
    r = vm[:3, :3]
    assert np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1)
    assert np.allclose(_quat_to_rot(rot_to_quat(r)), r)


# Fuzzing of COLMAP text models: component "colmap" of tools/fuzz_inputs.py
# (tests/reliability/test_fuzz.py runs it).


def test_parse_cameras_non_utf8(tmp_path):
    (tmp_path / "cameras.txt").write_bytes(b"\xff\xfe1 PINHOLE")
    with pytest.raises(SourceError, match="not UTF-8"):
        parse_colmap_cameras(tmp_path / "cameras.txt")


def test_flythrough_views_are_local_and_look_down():
    from oocstore.gs.cameras import flythrough_cameras
    from oocstore.samplers.views import visibility_sets

    gx, gy = np.meshgrid(np.arange(-20, 20), np.arange(-10, 10))
    lo = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)
    bounds = np.stack([lo, lo + [1, 1, 0.5]], axis=1).astype(np.float32)
    rng = np.random.default_rng(0)
    means = np.concatenate([lo + rng.uniform(0, 1, size=lo.shape) * [1, 1, 0.5]] * 4)
    cams = flythrough_cameras(means, 40, width=64, height=48, up=np.array([0, 0, 1.0]))
    assert len(cams) == 40
    forward = cams.viewmats[:, 2, :3]  # camera z axis in world coordinates
    assert np.allclose(forward[:, 2], -np.sin(np.radians(60)), atol=1e-5)
    vis = visibility_sets(bounds, cams)
    sizes = np.array([len(v) for v in vis])
    assert sizes.min() > 0 and sizes.max() < 0.15 * len(bounds)
    covered = np.unique(np.concatenate(vis))
    assert len(covered) > 0.5 * len(bounds)  # together the views see most of the scene
    centers = cams.centers
    assert np.ptp(centers[:, 0]) > 25 and np.ptp(centers[:, 1]) > 8  # it covers the scene
