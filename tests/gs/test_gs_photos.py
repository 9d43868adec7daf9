"""gs-train on a scene ingested from photographs: the recipe improves held-out quality,
images stream inside the CPU budget, stream == all-on-device, refusals write nothing;
gs-render and export-scene's cameras.json."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.cli import main
from oocstore.errors import BudgetError, UsageError
from oocstore.gs.images import IMAGES_IN_HAND, ImageStream, image_buffer_bytes
from oocstore.gs.scene import Scene
from oocstore.gs.synthetic import write_photo_dataset



def run_json(capsys, *args) -> dict:
    assert main(["gs-train", *map(str, args), "--json", "--quiet", "--threads", "1"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def snapshot(path) -> dict:
    """Every file of a store and its bytes, except LMDB's reader lock table."""
    from pathlib import Path

    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(Path(path).rglob("*"))
            if f.is_file() and f.name != "lock.mdb"}


@pytest.fixture(scope="module")
def photo_source(tmp_path_factory):
    return write_photo_dataset(tmp_path_factory.mktemp("photos") / "src", "colmap", views=12,
                               width=40, height=32, gaussians=600, seed=1)


@pytest.fixture
def photo_scene(photo_source, tmp_path):
    out = tmp_path / "scene"
    assert main(["ingest", "scene", str(photo_source), str(out), "--test-every", "4",
                 "--quiet"]) == 0
    return out


PLAIN = ["--densify-every", "0", "--opacity-reset-every", "0"]


def test_photo_training_improves_heldout_psnr_and_ssim(photo_scene, capsys):
    out = run_json(capsys, photo_scene, "--steps", 12, *PLAIN, "--seed", 2)
    with Scene.open(photo_scene, readonly=True) as scene:
        image_bytes, images_bytes = scene.image_bytes, scene.images_bytes
        assert out["heldout_views"] == len(scene.test_views) == 3
        assert out["render_size"] == list(scene.image_size) == [40, 32]
    assert out["target"] == "photos" and out["recipe"]["ssim_lambda"] == 0.2
    assert out["psnr_test"] > out["psnr_start"] + 0.5
    assert out["ssim_test"] > out["ssim_start"]
    assert out["images_bytes"] == images_bytes
    assert out["image_buffers_bytes"] == (2 + IMAGES_IN_HAND) * image_bytes
    assert out["lpips_test"] is None and "offline" in out["lpips_note"]
    assert main(["verify", str(photo_scene), "--quiet"]) == 0


def test_image_stream_holds_a_few_images_whatever_their_number(photo_scene):
    with Scene.open(photo_scene, readonly=True) as scene:
        views = np.resize(scene.train_views, 60)
        reads, alive, peak = [], [0], [0]
        real = scene.read_image

        def counting(v):
            img = real(v)
            reads.append(v)
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            return img

        scene.read_image = counting
        acct = BudgetAccountant(MemoryBudget(cpu=image_buffer_bytes(scene, 2)))
        with ImageStream(scene, views, accountant=acct, depth=2) as stream:
            for v in views:
                img = stream.next(int(v))
                alive[0] -= 1
                np.testing.assert_array_equal(img, real(int(v)))
            assert acct.charged("cpu") == image_buffer_bytes(scene, 2)
        assert reads == views.tolist()
        assert peak[0] <= 2 + IMAGES_IN_HAND - 1  # queued + being read + the one in use
        assert acct.charged("cpu") == 0
        too_small = BudgetAccountant(MemoryBudget(cpu=image_buffer_bytes(scene, 2) - 1))
        with pytest.raises(BudgetError, match="image prefetch buffers"):
            ImageStream(scene, views, accountant=too_small, depth=2)


def test_cpu_budget_below_the_image_buffers_is_refused_before_any_write(photo_scene, capsys):
    with Scene.open(photo_scene, readonly=True) as scene:
        need = image_buffer_bytes(scene, 2)
    before = snapshot(photo_scene)
    assert main(["gs-train", str(photo_scene), "--steps", "4", "--cpu-budget", str(need - 1),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "image prefetch buffers" in err and "--cpu-budget" in err and "Traceback" not in err
    assert snapshot(photo_scene) == before
    # room for the images but not the block prefetch buffers: refused too, nothing written
    assert main(["gs-train", str(photo_scene), "--steps", "4", "--cpu-budget",
                 str(need + 1024), "--quiet"]) == 2
    assert "prefetch buffers" in capsys.readouterr().err
    assert snapshot(photo_scene) == before
    assert main(["gs-train", str(photo_scene), "--size", "20x16", "--quiet"]) == 2
    assert "photos train at their stored size" in capsys.readouterr().err
    assert snapshot(photo_scene) == before


def test_stream_and_all_on_device_train_identically_with_densification(photo_scene, tmp_path,
                                                                        capsys):
    copy = tmp_path / "copy"
    shutil.copytree(photo_scene, copy)
    args = ["--steps", 9, "--densify-every", 3, "--densify-from", 1, "--densify-until", 100,
            "--opacity-reset-every",
            6, "--sh-every", 3, "--random-background"]
    s = run_json(capsys, photo_scene, "--mode", "stream", *args)
    a = run_json(capsys, copy, "--mode", "all-on-device", *args)
    assert len(s["refinements"]) == 2 and s["opacity_resets"] and s["gaussians"]["end"] > 600
    assert s["gaussians_curve"] == a["gaussians_curve"]
    assert s["psnr_test"] == a["psnr_test"] and s["ssim_test"] == a["ssim_test"]
    recs = []
    for p in (photo_scene, copy):
        with Scene.open(p, readonly=True) as scene:
            ids, rec = scene.read_all()
        recs.append((ids[np.argsort(ids)], rec[np.argsort(ids)]))
    np.testing.assert_array_equal(recs[0][0], recs[1][0])
    assert recs[0][1].tobytes() == recs[1][1].tobytes()


def test_damaged_image_stops_training_with_one_line_naming_it(photo_scene, capsys):
    with Scene.open(photo_scene, readonly=True) as scene:
        v = int(scene.train_views[0])
        path, offset, _ = scene.image_location(v)
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 0x40
    path.write_bytes(bytes(data))
    assert main(["gs-train", str(photo_scene), "--steps", "20", *PLAIN, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"image {v}" in err and "checksum mismatch" in err and "Traceback" not in err


def test_gs_render_test_views_beside_photos_and_orbit(photo_scene, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "r"
    assert main(["gs-render", str(photo_scene), "--views", "test", "--out", str(out),
                 "--with-photos", "--quiet"]) == 0
    with Scene.open(photo_scene, readonly=True) as scene:
        test = scene.test_views
        photo = scene.read_image(int(test[0]))
    pngs = sorted(out.glob("*.png"))
    renders = [p for p in pngs if not p.stem.endswith("_vs_photo")]
    assert len(renders) == len(test) == len(pngs) // 2
    assert renders[0].name.startswith(f"{int(test[0]):05d}_")
    with Image.open(renders[0]) as im:
        assert im.size == (40, 32)
    with Image.open(pngs[1]) as im:
        side = np.asarray(im)
    assert side.shape == (32, 80, 3)
    np.testing.assert_array_equal(side[:, 40:], photo)
    gif = tmp_path / "orbit.gif"
    assert main(["gs-render", str(photo_scene), "--views", "orbit", "--frames", "4", "--out",
                 str(tmp_path / "o"), "--video", str(gif), "--quiet"]) == 0
    assert len(list((tmp_path / "o").glob("*.png"))) == 4 and gif.stat().st_size > 0
    frames = []
    for p in sorted((tmp_path / "o").glob("*.png")):
        with Image.open(p) as im:
            frames.append(np.asarray(im))
    assert not np.array_equal(frames[0], frames[2])  # the camera moved
    assert main(["gs-render", str(photo_scene), "--views", "orbit", "--out", str(tmp_path / "x"),
                 "--video", str(tmp_path / "a.xyz"), "--quiet"]) == 2
    assert "unknown animation format" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_python_caller_reads_the_parameter_it_passed(photo_scene, tmp_path):
    """The render and training refusals name the parameters a Python caller passed (the
    CLI writes its flags in, see test_cli_writes_the_flags_in)."""
    from oocstore.gs.train import GsTrainConfig, run_gs_training
    from oocstore.gs.views_out import check_video_path, render_scene_views

    calls = [
        (lambda: check_video_path(tmp_path / "a.xyz"),
         f"video='{tmp_path / 'a.xyz'}': unknown animation format '.xyz': use .gif or .mp4"),
        (lambda: check_video_path(tmp_path / "no" / "a.gif"),
         f"video='{tmp_path / 'no' / 'a.gif'}': folder {tmp_path / 'no'} does not exist"),
        (lambda: render_scene_views(None, "all", tmp_path / "out"),
         "which='all' unknown: use one of"),
        (lambda: run_gs_training(photo_scene, GsTrainConfig(steps=2, width=20, height=16)),
         "width=20, height=16: photos train at their stored size 40x32"),
    ]
    for call, said in calls:
        with pytest.raises(UsageError) as err:
            call()
        assert said in str(err.value) and "--" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_flags_in(photo_scene, tmp_path, capsys):
    video = tmp_path / "no" / "a.gif"
    assert main(["gs-render", str(photo_scene), "--views", "orbit", "--out", str(tmp_path / "o"),
                 "--video", str(video), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (f"oocstore: error: --video {video}: folder "
                                               f"{video.parent} does not exist")
    assert main(["gs-train", str(photo_scene), "--size", "20x16", "--quiet"]) == 2
    assert "photos train at their stored size 40x32" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_export_scene_writes_graphdeco_cameras_json(photo_scene, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    assert main(["export-scene", str(photo_scene), str(out / "point_cloud.ply"), "--quiet"]) == 0
    entries = json.loads((out / "cameras.json").read_text())
    with Scene.open(photo_scene, readonly=True) as scene:
        cams = scene.cameras
        names = scene.image_names
    assert len(entries) == len(cams)
    for i, e in enumerate(entries):
        assert set(e) == {"id", "img_name", "width", "height", "position", "rotation", "fx", "fy"}
        assert e["id"] == i and (e["width"], e["height"]) == (40, 32)
        assert e["img_name"] == names[i].rsplit(".", 1)[0]
        c2w = np.array(e["rotation"])
        np.testing.assert_allclose(c2w @ c2w.T, np.eye(3), atol=1e-5)
        # graphdeco: rotation = camera-to-world, position = centre; back to world-to-camera
        vm = cams.viewmats[i].astype(np.float64)
        np.testing.assert_allclose(c2w.T, vm[:3, :3], atol=1e-6)
        np.testing.assert_allclose(-c2w.T @ np.array(e["position"]), vm[:3, 3], atol=1e-5)
        assert e["fx"] == pytest.approx(float(cams.Ks[i, 0, 0]))
    assert main(["export-scene", str(photo_scene), str(tmp_path / "b.ply"), "--cameras-json",
                 str(tmp_path / "missing" / "c.json"), "--quiet"]) == 2
    assert not (tmp_path / "b.ply").exists()
