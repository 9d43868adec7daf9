"""Photo ingest: lens distortion removed, pixel formats converted, and bad input refused
with one line naming the file, the value and the fix, before anything is written (no
scene, no staging directory, an existing scene byte-identical)."""

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oocstore.cli import main
from oocstore.errors import SourceError, UsageError
from oocstore.gs.cameras import Cameras
from oocstore.gs.ingest import ingest_photos
from oocstore.gs.photos import check_downscale, parse_background
from oocstore.gs.synthetic import render_views, write_photo_dataset

from helpers import refused

W, H = 64, 48


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return {"colmap": write_photo_dataset(root / "colmap", "colmap", views=6, gaussians=300,
                                          seed=5),
            "transforms": write_photo_dataset(root / "tf", "transforms", views=6, gaussians=300,
                                              seed=5, rgba=True)}


def _copy(src: Path, tmp_path: Path) -> Path:
    """A writable copy of a dataset; returns the copy's SRC path."""
    root = src.parent if src.suffix == ".json" else src.parent.parent
    dst = tmp_path / "ds"
    shutil.copytree(root, dst)
    return dst / src.relative_to(root)


def _tree(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def _refused(src, tmp_path, match, exc=SourceError, **kw):
    """The ingest fails with ``match``, leaves no scene and no staging directory, and
    an existing scene it was to overwrite stays byte-identical."""
    out = tmp_path / "out"
    with pytest.raises(exc, match=match):
        ingest_photos(src, out, **kw)
    assert not out.exists() and not list(tmp_path.glob(".out.partial"))
    keep = tmp_path / "keep"
    if not keep.exists():
        good = tmp_path.parent / "good"
        if not good.is_dir():
            _good_scene(tmp_path.parent)
        shutil.copytree(good, keep)
    before = _tree(keep)
    with pytest.raises(exc, match=match):
        ingest_photos(src, keep, overwrite=True, **kw)
    assert _tree(keep) == before


def _good_scene(root: Path) -> Path:
    src = write_photo_dataset(root / "gooddata", "colmap", views=4, gaussians=50, seed=1)
    ingest_photos(src, root / "good", test_every=0).close()
    return root / "good"


# -- distortion and pixel formats ------------------------------------------------------------

@pytest.mark.parametrize("kind,downscale", [("colmap", 1), ("transforms", 2)])
def test_distorted_photos_are_undistorted(tmp_path, kind, downscale):
    """OPENCV-distorted photos come back as the pinhole renders (46 dB in the interior
    at full size, against 28 dB for the distorted photo itself)."""
    dist = (-0.15, 0.03, 0.002, -0.001)
    src = write_photo_dataset(tmp_path / "d", kind, views=3, width=96, height=72, gaussians=600,
                              seed=3, distortion=dist)
    root = tmp_path / "d"
    c = np.load(root / "cameras.npz")
    cams = Cameras(c["viewmats"], c["Ks"], 96, 72)
    truth = [np.rint(r * 255) for r, _ in render_views(np.load(root / "scene_params.npy"), cams)]
    w, h = 96 // downscale, 72 // downscale
    b = 6 // downscale

    def psnr(a, ref):
        return 10 * np.log10(255 ** 2 / np.mean((a[b:-b, b:-b] - ref[b:-b, b:-b]) ** 2))

    with ingest_photos(src, tmp_path / "s", images_downscale=downscale, test_every=0) as scene:
        assert scene.image_size == (w, h)
        for v, name in enumerate(scene.image_names):
            i = int(Path(name).stem.split("_")[-1])
            ref = truth[i].reshape(h, downscale, w, downscale, 3).mean(axis=(1, 3))
            with Image.open(root / ("images" if kind == "colmap" else "") / name) as im:
                photo = np.asarray(im)
            photo = photo.astype(float).reshape(h, downscale, w, downscale, 3).mean(axis=(1, 3))
            got = psnr(scene.read_image(v).astype(float), ref)
            assert got > (44 if downscale == 1 else 35)
            assert got > psnr(photo, ref) + 10


def test_colmap_models_map_to_pinhole_and_opencv_distortion():
    from oocstore.gs.colmap import ColmapCamera

    cases = {"SIMPLE_PINHOLE": ((50, 32, 24), (50, 50, 32, 24), (0, 0, 0, 0)),
             "PINHOLE": ((50, 52, 32, 24), (50, 52, 32, 24), (0, 0, 0, 0)),
             "SIMPLE_RADIAL": ((50, 32, 24, 0.1), (50, 50, 32, 24), (0.1, 0, 0, 0)),
             "RADIAL": ((50, 32, 24, 0.1, -0.02), (50, 50, 32, 24), (0.1, -0.02, 0, 0)),
             "OPENCV": ((50, 52, 32, 24, 0.1, -0.02, 0.003, 0.004), (50, 52, 32, 24),
                        (0.1, -0.02, 0.003, 0.004))}
    for model, (params, (fx, fy, cx, cy), dist) in cases.items():
        cam = ColmapCamera(1, model, 64, 48, params)
        np.testing.assert_allclose(cam.K, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        assert cam.distortion == dist


def test_outside_share():
    from oocstore.gs.photos import outside_share, undistort_image

    k = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    assert outside_share(k, (0, 0, 0, 0), (64, 48)) == 0.0
    assert outside_share(k, (-0.2, 0, 0, 0), (64, 48)) == 0.0  # barrel: all inside
    pin = outside_share(k, (0.2, 0, 0, 0), (64, 48))
    assert 0.01 < pin < 0.5
    _, share = undistort_image(np.zeros((48, 64, 3), np.uint8), k, (0.2, 0, 0, 0))
    assert share == pytest.approx(pin, abs=0.01)


def _png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow writes none)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0,
                                                                       0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_grayscale_palette_and_16_bit_images_are_converted(base, tmp_path):
    src = _copy(base["colmap"], tmp_path)
    images = src.parent.parent / "images"
    rgb = {}
    for n in ("img_0000.png", "img_0001.png", "img_0002.png", "img_0003.png", "img_0004.png"):
        with Image.open(images / n) as im:
            rgb[n] = np.asarray(im)
    gray = Image.fromarray(rgb["img_0001.png"]).convert("L")
    gray.save(images / "img_0001.png")
    pal = Image.fromarray(rgb["img_0002.png"]).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(images / "img_0002.png")
    g16 = (np.asarray(Image.fromarray(rgb["img_0003.png"]).convert("L")).astype(np.uint16) * 257
           + 100)
    Image.fromarray(g16).save(images / "img_0003.png")
    with Image.open(images / "img_0003.png") as im:
        assert im.mode.startswith("I")
    c16 = rgb["img_0004.png"].astype(np.uint16) * 257
    _png16(images / "img_0004.png", c16)
    report: dict = {}
    with ingest_photos(src, tmp_path / "s", test_every=0, report=report) as scene:
        got = {n: scene.read_image(v) for v, n in enumerate(scene.image_names)}
    assert set(report["image_conversions"]) == {"L converted to RGB", "palette converted to RGB",
                                                "16-bit grayscale reduced to 8-bit RGB"}
    np.testing.assert_array_equal(got["img_0001.png"], np.dstack([np.asarray(gray)] * 3))
    np.testing.assert_array_equal(got["img_0002.png"], np.asarray(pal.convert("RGB")))
    want16 = np.rint(g16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(got["img_0003.png"], np.dstack([want16] * 3))
    assert np.abs(got["img_0004.png"].astype(int) - rgb["img_0004.png"]).max() <= 1
    np.testing.assert_array_equal(got["img_0000.png"], rgb["img_0000.png"])


def test_float_image_is_refused(base, tmp_path):
    src = _copy(base["colmap"], tmp_path)
    img = src.parent.parent / "images" / "img_0002.png"
    Image.fromarray(np.zeros((H, W), np.float32)).save(img.with_suffix(".tif"))
    img.unlink()
    img.with_suffix(".tif").rename(img)  # a TIFF under the model's name
    _refused(src, tmp_path, r"img_0002\.png has pixel mode 'F' \(32-bit float\).*convert it")


# -- bad input ---------------------------------------------------------------------------------

def test_missing_images_refused_or_skipped(base, tmp_path):
    src = _copy(base["colmap"], tmp_path)
    (src.parent.parent / "images" / "img_0003.png").unlink()
    _refused(src, tmp_path, r"images/img_0003\.png does not exist \(1 of the 6 images .* are "
                            r"missing\): restore them, or pass skip_missing_images=True")
    report: dict = {}
    with ingest_photos(src, tmp_path / "s", skip_missing_images=True, report=report) as scene:
        assert scene.num_images == 5 and "img_0003.png" not in scene.image_names
    assert report["images_missing_skipped"] == 1


def test_image_size_disagreeing_with_camera(base, tmp_path):
    src = _copy(base["colmap"], tmp_path)
    img = src.parent.parent / "images" / "img_0004.png"
    with Image.open(img) as im:
        im.resize((W // 2, H // 2)).save(img)
    _refused(src, tmp_path, r"img_0004\.png is 32x24 but its camera .*cameras\.txt:\d+ says "
                            r"64x48: give the images the model was made from")


@pytest.mark.parametrize("binary", [False, True])
def test_unsupported_camera_model(base, tmp_path, binary):
    from oocstore.gs.colmap import read_colmap_model, write_colmap_model

    src = _copy(base["colmap"], tmp_path)
    model = read_colmap_model(src)
    cams = Cameras(np.stack([i.viewmat for i in model.images]),
                   np.stack([model.cameras[i.camera_id].K for i in model.images]), W, H,
                   tuple(i.name for i in model.images))
    for f in src.iterdir():
        f.unlink()
    write_colmap_model(src, cams, binary=binary, model="OPENCV")
    # patch the first camera's model to FULL_OPENCV (12 parameters) / OPENCV_FISHEYE
    if binary:
        data = bytearray((src / "cameras.bin").read_bytes())
        struct.pack_into("<i", data, 8 + 4, 5)  # model id 5: OPENCV_FISHEYE (8 params)
        (src / "cameras.bin").write_bytes(bytes(data))
        name = "OPENCV_FISHEYE"
    else:
        lines = (src / "cameras.txt").read_text().splitlines()
        lines[1] = lines[1].replace("OPENCV", "FULL_OPENCV") + " 0 0 0 0"
        (src / "cameras.txt").write_text("\n".join(lines) + "\n")
        name = "FULL_OPENCV"
    _refused(src, tmp_path, rf"camera 1: COLMAP camera model '{name}' is not supported: use one "
                            r"of SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV")


def _edit_json(src: Path, fn) -> None:
    doc = json.loads(src.read_text())
    fn(doc)
    src.write_text(json.dumps(doc))


def test_transforms_without_intrinsics(base, tmp_path):
    src = _copy(base["transforms"], tmp_path)
    _edit_json(src, lambda d: d.pop("camera_angle_x"))
    _refused(src, tmp_path, r"transforms\.json has no intrinsics \(neither camera_angle_x nor "
                            r"fl_x\): add camera_angle_x")


def test_non_rigid_pose(base, tmp_path):
    src = _copy(base["transforms"], tmp_path)

    def scale(d):
        m = np.array(d["frames"][2]["transform_matrix"])
        m[:3, :3] *= 1.5
        d["frames"][2]["transform_matrix"] = m.tolist()

    _edit_json(src, scale)
    _refused(src, tmp_path, r"frame 2 .*'\./train/r_2'.* is not a rigid transform "
                            r"\(\|R R\^T - I\| = 1\.25, det R = 3\.38\): give a rotation")


def test_transforms_malformed_matrix_and_json(base, tmp_path):
    src = _copy(base["transforms"], tmp_path)
    _edit_json(src, lambda d: d["frames"][1].update(transform_matrix=[[1, 0], [0, 1]]))
    _refused(src, tmp_path, r"frame 1 .*transform_matrix is not a finite 4x4 matrix")
    src.write_text("{not json")
    _refused(src, tmp_path, r"transforms\.json is not valid JSON")


def test_images_differing_in_size(base, tmp_path):
    """A transforms.json without w/h takes each image's size from its file: they must agree."""
    src = _copy(base["transforms"], tmp_path)
    img = src.parent / "train" / "r_4.png"
    with Image.open(img) as im:
        im.resize((W, H + 2)).save(img)
    _refused(src, tmp_path, r"r_4\.png is 64x50 but .*r_0\.png is 64x48: the views of one scene "
                            r"must share an image size")


def test_extra_files_in_the_images_folder_are_ignored_and_counted(base, tmp_path, caplog, capsys):
    src = _copy(base["colmap"], tmp_path)
    images = src.parent.parent / "images"
    for i in range(3):
        shutil.copy(images / "img_0000.png", images / f"extra_{i}.png")
    (images / "notes.txt").write_text("not an image")
    report: dict = {}
    with ingest_photos(src, tmp_path / "s", report=report) as scene:
        assert scene.num_images == 6
    assert report["images_unused"] == 3
    assert "3 image file(s) in" in caplog.text and "ignored" in caplog.text
    assert main(["ingest", "scene", str(src), str(tmp_path / "s2"), "--init-points", "10"]) == 0
    assert "3 image file(s) not in the model ignored" in capsys.readouterr().out


@pytest.mark.parametrize("value", [0, -2, "1.5", "abc", 2.5, True])
def test_downscale_must_be_a_positive_integer(value):
    with pytest.raises(UsageError, match=r"^images_downscale .* is not a positive integer: give "
                                         r"1 \(full size\), 2, 4 or 8"):
        check_downscale(value)


def test_cli_bad_flags_exit_2_and_write_nothing(base, tmp_path, capsys):
    out = tmp_path / "out"
    for flags, msg in ((["--images-downscale", "0"], "--images-downscale 0 is not a positive"),
                       (["--images-downscale", "x"], "--images-downscale 'x' is not a positive"),
                       (["--test-every", "-1"], "--test-every -1 must be a non-negative"),
                       (["--test-every", "1"], "--test-every 1 holds out all 6 images"),
                       (["--init-points", "0"], "--init-points 0 must be a positive"),
                       (["--background", "pink"], "--background pink must be white, black"),
                       (["--tile", "2x2"], "--tile does not apply to a photo dataset"),
                       (["--images", str(tmp_path / "nope")], "--images .*nope is not a dir")):
        err = refused(capsys, ["ingest", "scene", str(base["colmap"]), str(out), "--quiet",
                               *flags])
        assert re.search(msg, err), (flags, err)
        assert not out.exists()


@pytest.mark.parametrize("kind,kw,said", [
    ("colmap", dict(test_every=-1), "test_every=-1 must be a non-negative integer"),
    ("colmap", dict(test_every=1), "test_every=1 holds out all 6 images"),
    ("colmap", dict(init_points=0), "init_points=0 must be a positive number of points"),
    ("colmap", dict(images_downscale="x"), "images_downscale 'x' is not a positive integer"),
    ("colmap", dict(images_downscale=32), "images_downscale=32 makes 64x48 images 2x2"),
    ("colmap", dict(background="pink"), "background='pink' must be white, black or R,G,B"),
    ("colmap", dict(images="NOPE"), "images='NOPE' is not a directory"),
    ("transforms", dict(images="NOPE"), "images='NOPE' applies to COLMAP models only"),
])
def test_a_python_caller_reads_the_parameter_it_passed(base, tmp_path, kind, kw, said):
    """ingest_photos' refusals name its parameters (the CLI writes its flags in, see
    test_cli_writes_the_flags_in)."""
    kw = {k: str(tmp_path / v) if v == "NOPE" else v for k, v in kw.items()}
    said = said.replace("NOPE", str(tmp_path / "NOPE"))
    with pytest.raises((UsageError, SourceError)) as err:
        ingest_photos(base[kind], tmp_path / "out", **kw)
    assert said in str(err.value) and "--" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind,flags,said", [
    ("colmap", ["--images-downscale", "32"], "--images-downscale 32 makes 64x48 images 2x2"),
    ("colmap", ["--background", "2,300,1"], "--background 2,300,1: colour values must be"),
    ("transforms", ["--images", "NOPE"], "--images NOPE applies to COLMAP models only"),
])
def test_cli_writes_the_flags_in(base, tmp_path, capsys, kind, flags, said):
    flags = [str(tmp_path / f) if f == "NOPE" else f for f in flags]
    said = said.replace("NOPE", str(tmp_path / "NOPE"))
    assert main(["ingest", "scene", str(base[kind]), str(tmp_path / "out"), "--quiet",
                 *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == err.splitlines()[0] and said in err, err
    assert not (tmp_path / "out").exists()


def test_cli_names_the_flag_that_skips_missing_images(base, tmp_path, capsys):
    src = _copy(base["colmap"], tmp_path)
    (src.parent.parent / "images" / "img_0003.png").unlink()
    assert main(["ingest", "scene", str(src), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("restore them, or pass --skip-missing-images to ingest the "
                                "others"), err
    assert not (tmp_path / "out").exists()


def test_photo_flags_refused_for_point_sources(tmp_path, capsys):
    from oocstore.gs.ply import write_ply
    from oocstore.gs.synthetic import random_params

    write_ply(tmp_path / "s.ply", random_params(10, 0), 0)
    assert main(["ingest", "scene", str(tmp_path / "s.ply"), str(tmp_path / "out"), "--quiet",
                 "--images-downscale", "2"]) == 2
    assert "--images-downscale applies to photo datasets" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_damaged_image_found_while_decoding_leaves_no_scene(base, tmp_path):
    """A file whose header reads but whose data is cut short fails during the stream of
    decodes: the half-built scene is removed."""
    src = _copy(base["colmap"], tmp_path)
    img = src.parent.parent / "images" / "img_0005.png"
    img.write_bytes(img.read_bytes()[:200])
    _refused(src, tmp_path, r"img_0005\.png cannot be decoded .*: the file is damaged")


def test_parse_background():
    assert parse_background("white") == (1.0, 1.0, 1.0)
    assert parse_background("0,0.5,1") == (0.0, 0.5, 1.0)
    assert parse_background("255,0,51") == (1.0, 0.0, 0.2)
    for bad in ("1,2", "-1,0,0", "300,0,0", "nan,0,0"):
        with pytest.raises(UsageError, match=f"^background='{bad}'"):
            parse_background(bad)
