"""Level of detail, bad input: one-line errors (exit 2) and nothing written; damaged
hierarchies found by ``oocstore verify``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from oocstore.cli import main
from oocstore.gs.lod import NODES_ARRAY, leaf_ids
from oocstore.gs.lod_build import build_lod_scene
from oocstore.gs.scene import Scene
from oocstore.store import Store

from conftest import make_cameras, make_params
from helpers import refused, scene_files


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("lodbad")
    params = make_params(600, 0, seed=5)
    src = Scene.create(root / "src", None, params, 0, make_cameras(params, 4), block_size=128)
    build_lod_scene(src, root / "lod").close()
    src.close()
    return root / "src", root / "lod"


@pytest.mark.parametrize("value,match", [("-1", "must be a finite number >= 0"),
                                         ("abc", "is not a number"),
                                         ("nan", "must be a finite number >= 0"),
                                         ("inf", "must be a finite number >= 0")])
def test_bad_lod_pixels_are_refused_by_render_and_train(scenes, tmp_path, capsys, value, match):
    lod = tmp_path / "lod"
    shutil.copytree(scenes[1], lod)
    before = scene_files(lod)
    refused(capsys, ["gs-render", str(lod), "--out", str(tmp_path / "png"), "--lod-pixels",
                     value, "--quiet"], match)
    assert not (tmp_path / "png").exists()
    refused(capsys, ["gs-train", str(lod), "--steps", "2", "--lod-pixels", value, "--quiet"],
            match)
    assert scene_files(lod) == before


def test_lod_asked_of_a_scene_without_hierarchy_names_the_build_command(scenes, tmp_path,
                                                                        capsys):
    src = tmp_path / "src"
    shutil.copytree(scenes[0], src)
    before = scene_files(src)
    fix = f"`oocstore gs-lod build {src} OUT`"
    refused(capsys, ["gs-render", str(src), "--out", str(tmp_path / "png"), "--lod-pixels",
                     "1", "--quiet"], fix)
    assert not (tmp_path / "png").exists()
    refused(capsys, ["gs-train", str(src), "--steps", "2", "--lod-pixels", "0", "--quiet"], fix)
    assert scene_files(src) == before


def test_gs_lod_build_refuses_bad_input_without_writing(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    refused(capsys, ["gs-lod", "build", str(scenes[0]), str(out), "--cell", "-1"],
            "--cell -1.0 must be a positive length")
    refused(capsys, ["gs-lod", "build", str(tmp_path / "none"), str(out)], "none")
    refused(capsys, ["gs-lod", "build", str(scenes[0]), str(scenes[0])], "is SRC")
    assert not out.exists()
    assert main(["gs-lod", "build", str(scenes[0]), str(out), "--fit-steps", "10",
                 "--quiet"]) == 0
    assert main(["verify", str(out), "--quiet"]) == 0
    # a scene with a hierarchy is rebuilt from its leaves (e.g. after training)
    again = tmp_path / "again"
    assert main(["gs-lod", "build", str(out), str(again), "--fit-steps", "10", "--quiet"]) == 0
    with Scene.open(out, readonly=True) as a, Scene.open(again, readonly=True) as b:
        ia, pa = a.read_params()
        ib, pb = b.read_params()
        la, lb = leaf_ids(a), leaf_ids(b)
        assert np.array_equal(la, lb) and len(la) == 600
        assert np.array_equal(pa[np.isin(ia, la)], pb[np.isin(ib, lb)])
        assert b.num_gaussians == a.num_gaussians  # the same merged nodes, new ids
        assert ib.max() > ia.max()


def _damage(path: Path, edit) -> None:
    """Rewrite the node table with ``edit(nodes)`` applied (checksums kept valid: only
    the structure is wrong)."""
    with Store(path, readonly=False) as store:
        nodes = np.array(store.array(NODES_ARRAY))
        edit(nodes)
        with store.transaction() as txn:
            txn.write_array(NODES_ARRAY, nodes)


@pytest.mark.parametrize("kind,match", [("range", "which is out of range"),
                                        ("cycle", "form a cycle"),
                                        ("row", "which is not in the scene"),
                                        ("block", "which is not in the scene"),
                                        ("level", "not below its parent's")])
def test_verify_finds_a_damaged_hierarchy(scenes, tmp_path, capsys, kind, match):
    lod = tmp_path / "lod"
    shutil.copytree(scenes[1], lod)
    assert main(["verify", str(lod), "--quiet"]) == 0
    capsys.readouterr()

    def edit(nodes):
        ids = nodes[:, 0]
        if kind == "range":
            nodes[3, 1] = ids.max() + 10
        elif kind == "row":
            nodes[3, 4] = 10_000
        elif kind == "block":
            nodes[3, 3] = -1
        elif kind == "level":
            nodes[nodes[:, 1] < 0, 2] = 0
        else:  # a root's parent becomes one of its descendants
            root = int(np.flatnonzero(nodes[:, 1] < 0)[0])
            child = int(np.flatnonzero(nodes[:, 1] == ids[root])[0])
            nodes[root, 1] = ids[child]

    _damage(lod, edit)
    assert main(["verify", str(lod), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert match in err and "gs-lod build" in err
    # and a reader refuses it with the same reason
    refused(capsys, ["gs-render", str(lod), "--out", str(tmp_path / "png"), "--quiet"], match)
    assert not (tmp_path / "png").exists()


def test_lod_build_into_or_around_src_is_refused(scenes, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(scenes[0], src)
    before = scene_files(src)
    refused(capsys, ["gs-lod", "build", str(src), str(src / "sub"), "--quiet"], "nest")
    (tmp_path / "link").symlink_to(src)
    refused(capsys, ["gs-lod", "build", str(src), str(tmp_path / "link"), "--overwrite",
                     "--quiet"], "is SRC")
    assert scene_files(src) == before and (tmp_path / "link").is_symlink()


def test_a_node_table_row_not_holding_its_node_is_refused_by_render(scenes, tmp_path, capsys):
    lod = tmp_path / "lod"
    shutil.copytree(scenes[1], lod)

    def edit(nodes):  # every node claims row 0 of its block: the prefix misses the rest
        nodes[:, 4] = 0

    _damage(lod, edit)
    refused(capsys, ["gs-render", str(lod), "--out", str(tmp_path / "png"), "--lod-pixels",
                     "0", "--quiet"], "prefixes hold")
    assert not list((tmp_path / "png").glob("*.png"))  # found at the first view's read
