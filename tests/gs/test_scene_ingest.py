"""``oocstore ingest scene`` / ``export-scene`` end to end, and the ingest library."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import make_cameras, make_params
from oocstore.cli import main
from oocstore.errors import SourceError, UsageError
from oocstore.gs import layout
from oocstore.gs.cameras import write_colmap_text
from oocstore.gs.ingest import SH_C0, change_sh_degree, ingest_scene, init_from_points, parse_tile
from oocstore.gs.ply import read_ply, write_ply
from oocstore.gs.scene import Scene

GARDEN = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsplat" / "test_garden.npz"


def _cloud(tmp_path, n=3000, cams=True, **extra):
    rng = np.random.default_rng(0)
    means = rng.uniform(-2, 2, size=(n, 3)).astype(np.float32)
    arrays = {"means3d": means, "colors": rng.integers(0, 256, size=(n, 3), dtype=np.uint8)}
    if cams:
        c = make_cameras(make_params(10, 0), 4, width=64, height=48)
        arrays.update(viewmats=c.viewmats, Ks=c.Ks, width=np.int64(64), height=np.int64(48))
    arrays.update(extra)
    np.savez(tmp_path / "cloud.npz", **arrays)
    return tmp_path / "cloud.npz", arrays


def test_ply_ingest_export_round_trip(tmp_path, capsys):
    params = make_params(3000, 2, seed=4)
    write_ply(tmp_path / "in.ply", params, 2)
    assert main(["ingest", "scene", str(tmp_path / "in.ply"), str(tmp_path / "s"), "--block-size",
                 "512", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["gaussians"] == 3000 and summary["blocks"] == 6 and summary["sh_degree"] == 2
    assert summary["views"] == 32  # generated: a .ply brings no cameras
    assert 0 < summary["visible_blocks_mean"] <= 6
    assert main(["export-scene", str(tmp_path / "s"), str(tmp_path / "out.ply"), "--quiet"]) == 0
    got, deg = read_ply(tmp_path / "out.ply")
    assert deg == 2 and np.array_equal(got, params)
    assert (tmp_path / "out.ply").read_bytes() == (tmp_path / "in.ply").read_bytes()
    assert main(["verify", str(tmp_path / "s"), "--quiet"]) == 0
    assert main(["inspect", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "scene: 3,000 Gaussians, SH degree 2, 6 blocks" in out
    assert "scene/block/" not in out  # blocks are summarised
    assert main(["inspect", str(tmp_path / "s"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["scene"]["gaussians"] == 3000 and info["scene"]["blocks"] == 6


def test_npz_point_cloud_init(tmp_path):
    src, arrays = _cloud(tmp_path)
    with ingest_scene(src, tmp_path / "s", sh_degree=1, views=20) as scene:
        ids, p = scene.read_params()
        assert scene.sh_degree == 1 and len(scene.cameras) == 20  # 4 own + 16 generated
        assert np.allclose(scene.cameras.viewmats[:4], arrays["viewmats"])
        assert np.array_equal(p[:, :3], arrays["means3d"])
        assert np.all(p[:, 3] == 1) and np.all(p[:, 4:7] == 0)
        assert np.allclose(p[:, 10], math.log(0.1 / 0.9))
        dc = layout.split_params(p, 1)["sh"][:, 0, :]
        assert np.allclose(dc * SH_C0 + 0.5, arrays["colors"] / 255.0, atol=1e-6)
        assert np.all(layout.split_params(p, 1)["sh"][:, 1:] == 0)
    # scale: mean distance to the 3 nearest neighbours
    ref = init_from_points(arrays["means3d"], None, 0)
    m = arrays["means3d"].astype(np.float64)
    d = np.linalg.norm(m[:50, None] - m[None, :], axis=2)
    nn = np.sort(d, axis=1)[:, 1:4]
    assert np.allclose(np.exp(ref[:50, 7]), np.sqrt((nn ** 2).mean(1)), rtol=1e-4)


def test_tile_replicates_scene_and_cameras(tmp_path):
    src, arrays = _cloud(tmp_path, n=2000)
    with ingest_scene(src, tmp_path / "s", tile="2x3", sh_degree=0, block_size=1000) as scene:
        assert scene.num_gaussians == 6 * 2000 and len(scene.cameras) == 6 * 32
        ids, p = scene.read_params()
        base = p[:2000, :3]
        offsets = [p[t * 2000:(t + 1) * 2000, :3] - base for t in range(6)]
        for off in offsets:
            assert np.allclose(off, off[0], atol=1e-4)  # every tile a translated copy
        assert len({tuple(np.round(o[0], 3)) for o in offsets}) == 6
        assert np.array_equal(p[2000:4000, 3:], p[:2000, 3:])


def test_colmap_cameras_option_and_fp16(tmp_path):
    src, _ = _cloud(tmp_path, cams=False)
    cams = make_cameras(make_params(10, 0), 20, width=80, height=60)
    write_colmap_text(tmp_path / "sparse", cams)
    with ingest_scene(src, tmp_path / "s", cameras=tmp_path / "sparse", sh_degree=0,
                      moments="float16") as scene:
        assert len(scene.cameras) == 20 and scene.cameras.width == 80  # enough: none generated
        assert scene.disk_row_bytes == 8 + 4 * 14 + 4 * 14


def test_change_sh_degree():
    p = make_params(5, 2)
    up = change_sh_degree(p, 2, 3)
    assert np.array_equal(up[:, :layout.param_width(2)], p) and np.all(up[:, 38:] == 0)
    assert np.array_equal(change_sh_degree(up, 3, 2), p)


@pytest.mark.parametrize("kw, said", [
    (dict(tile="4y4"), "tile='4y4' is not KxK: give two grid sizes such as 4x4"),
    (dict(tile=(65, 1)), "tile=65x1: each grid size must be 1..64"),
    (dict(views=0), "views=0 must be a positive number of views"),
])
def test_a_python_caller_reads_the_parameter_it_passed(tmp_path, kw, said):
    """ingest_scene's refusals name its parameters (the CLI writes its flags in, see
    test_bad_tile and test_cli_writes_the_flags_in)."""
    src, _ = _cloud(tmp_path, n=50)
    with pytest.raises(UsageError) as err:
        ingest_scene(src, tmp_path / "s", **kw)
    assert said in str(err.value) and "--" not in str(err.value)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("flags, said", [
    (["--tile", "4y4"], "oocstore: error: --tile 4y4 is not KxK"),
    (["--tile", "65x1"], "oocstore: error: --tile 65x1: each grid size must be 1..64"),
    (["--views", "0"], "oocstore: error: --views 0 must be a positive number of views"),
])
def test_cli_writes_the_flags_in(tmp_path, capsys, flags, said):
    src, _ = _cloud(tmp_path, n=50)
    assert main(["ingest", "scene", str(src), str(tmp_path / "s"), "--quiet", *flags]) == 2
    assert capsys.readouterr().err.startswith(said)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("tile", ["4y4", "4x", "0x2", "65x1", "x", "-1x2"])
def test_bad_tile(tmp_path, capsys, tile):
    src, _ = _cloud(tmp_path, n=50)
    assert main(["ingest", "scene", str(src), str(tmp_path / "s"), f"--tile={tile}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("oocstore: error: --tile") and "Traceback" not in err
    assert not (tmp_path / "s").exists()
    with pytest.raises(UsageError, match="KxK|1..64"):
        parse_tile(tile)


@pytest.mark.parametrize("arrays,match", [
    ({"points": np.zeros((3, 3))}, "has no 'means3d' array"),
    ({"means3d": np.zeros((3, 2))}, "means3d has shape"),
    ({"means3d": np.array([[0, 0, np.nan]] * 3)}, "point 0 of means3d is not finite"),
    ({"means3d": np.zeros((3, 3)), "colors": np.zeros((2, 3), np.uint8)}, "colors have shape"),
    ({"means3d": np.zeros((3, 3)), "viewmats": np.eye(4)[None]}, "lacks Ks, width, height"),
    ({"means3d": np.zeros((3, 3)), "viewmats": np.zeros((1, 4, 4)), "Ks": np.eye(3)[None],
      "width": 4, "height": 4}, "singular"),
    ({"means3d": np.zeros((3, 3)), "viewmats": np.eye(4)[None], "Ks": np.zeros((1, 3, 3)),
      "width": 4, "height": 4}, "focal length"),
])
def test_bad_npz(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SourceError, match=match):
        ingest_scene(tmp_path / "bad.npz", tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_empty_or_absurd_ply_is_refused(tmp_path):
    write_ply(tmp_path / "empty.ply", np.zeros((0, layout.param_width(0)), np.float32), 0)
    with pytest.raises(SourceError, match=r"empty.ply holds no Gaussians \(element vertex 0\)"):
        ingest_scene(tmp_path / "empty.ply", tmp_path / "s")
    params = make_params(10, 0)
    params[4, layout.LOG_SCALES.start + 2] = 710.0  # e^710 overflows even float64
    write_ply(tmp_path / "big.ply", params, 0)
    with pytest.raises(SourceError, match=r"Gaussian 4 has scale_2 = 710, a log-scale whose "
                                          r"exponential overflows float32"):
        ingest_scene(tmp_path / "big.ply", tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_bad_sources(tmp_path, capsys):
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SourceError, match="not a readable .npz"):
        ingest_scene(tmp_path / "x.npz", tmp_path / "s")
    (tmp_path / "x.obj").write_text("v 0 0 0")
    with pytest.raises(SourceError, match="neither .ply nor .npz"):
        ingest_scene(tmp_path / "x.obj", tmp_path / "s")
    assert main(["ingest", "scene", str(tmp_path / "none.ply"), str(tmp_path / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["ingest", "scene", str(tmp_path / "x.obj"), str(tmp_path / "s"),
                 "--sh-degree", "5"]) == 2
    assert "--sh-degree 5 is out of range" in capsys.readouterr().err  # the flag typed


@pytest.mark.skipif(not GARDEN.exists(), reason=f"third-party data {GARDEN} is not present")
def test_garden(tmp_path, capsys):
    assert main(["ingest", "scene", str(GARDEN), str(tmp_path / "g"), "--sh-degree", "0",
                 "--quiet", "--json"]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["gaussians"] == 138_766 and s["views"] == 32 and s["blocks"] == 34
    with Scene.open(tmp_path / "g", readonly=True) as scene:
        assert (scene.cameras.width, scene.cameras.height) == (648, 420)


def test_existing_output_refused_before_work(tmp_path, capsys):
    src, _ = _cloud(tmp_path, n=100)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine")
    assert main(["ingest", "scene", str(src), str(tmp_path / "s"), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["ingest", "scene", str(src), str(tmp_path / "s"), "--quiet", "--overwrite"]) == 2
    assert "exists and is not an oocstore store" in capsys.readouterr().err
    assert (tmp_path / "s" / "keep.txt").read_text() == "mine"
    assert main(["ingest", "scene", str(src), str(tmp_path / "t"), "--quiet", "--sh-degree", "0"]) == 0
    assert main(["ingest", "scene", str(src), str(tmp_path / "t"), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["ingest", "scene", str(src), str(tmp_path / "t"), "--quiet", "--overwrite"]) == 0
    with Scene.open(tmp_path / "t", readonly=True) as scene:
        assert scene.sh_degree == 3 and scene.num_gaussians == 100


def test_flythrough_over_tiles(tmp_path):
    src, _ = _cloud(tmp_path, n=500, cams=False)
    with ingest_scene(src, tmp_path / "s", tile="2x2", sh_degree=0, views=5,
                      camera_path="flythrough") as scene:
        assert len(scene.cameras) == 20 and scene.cameras.names[0] == "fly00000"
    with pytest.raises(UsageError, match="camera path 'spiral'"):
        ingest_scene(src, tmp_path / "t", camera_path="spiral")
