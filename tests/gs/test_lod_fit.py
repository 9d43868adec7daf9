"""Fitting the merged nodes to their leaves (``oocstore.gs.lod_fit``, ``gs-lod build
--fit-steps``): the cut's error against the leaves drops, only the interior nodes'
opacity and colour change, bad input is refused before anything is written, and an
interrupted fit leaves the source and any existing output as they were."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from oocstore.cli import main
from oocstore.errors import StoreExistsError
from oocstore.gs import layout
from oocstore.gs.lod import Hierarchy, build_hierarchy, in_cut, leaf_ids
from oocstore.gs.lod_build import build_lod_scene
from oocstore.gs.lod_fit import FitConfig, cut_psnr, cut_rows, fit_interior
from oocstore.gs.scene import Scene

from conftest import make_cameras, make_params
from helpers import refused, scene_files

PX = 2.0


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("lodfit")
    params = make_params(600, 0, seed=5)
    Scene.create(root / "src", None, params, 0, make_cameras(params, 6),
                 block_size=128).close()
    return root / "src"


def _tiny_hierarchy():
    """(params, hierarchy, cameras) of 600 Gaussians seen by 6 cameras, in memory."""
    params = make_params(600, 0, seed=5)
    cams = make_cameras(params, 6)
    prm, par, level, c, r, size, _ = build_hierarchy(params)
    n = len(prm)
    h = Hierarchy(np.arange(n), par, level, np.zeros(n, int), np.zeros(n, int), c, r, size)
    return prm, h, cams


def test_the_fit_lowers_the_cuts_error_and_changes_only_merged_opacity_colour_and_scales():
    prm, h, cams = _tiny_hierarchy()
    views = np.arange(6)
    interior = ~h.is_leaf
    assert all(interior[cut_rows(h, cams, v, PX)].any() for v in views)  # cuts mix levels
    before = cut_psnr(prm, h, 0, cams, views, PX)
    fitted, report = fit_interior(prm, h, 0, cams, views, FitConfig(steps=36, lod_pixels=(PX,)))
    after = cut_psnr(fitted, h, 0, cams, views, PX)
    assert report["mse_last"] < report["mse_first"]
    assert np.mean(list(after.values())) > np.mean(list(before.values())) + 1.0, (before, after)
    assert np.array_equal(fitted[~interior], prm[~interior])  # the leaves are frozen
    kept = np.ones(prm.shape[1], dtype=bool)
    kept[layout.OPACITY] = False
    kept[layout.SH_START:layout.SH_START + 3] = False
    kept[layout.LOG_SCALES] = False
    assert np.array_equal(fitted[:, kept], prm[:, kept])
    assert not np.array_equal(fitted[interior], prm[interior])
    again, _ = fit_interior(prm, h, 0, cams, views, FitConfig(steps=36, lod_pixels=(PX,)))
    assert np.array_equal(again, fitted)  # deterministic


def test_gs_lod_build_fits_by_default_and_keeps_the_leaves(src, tmp_path, capsys):
    import json

    assert main(["gs-lod", "build", str(src), str(tmp_path / "fit"), "--fit-steps", "12",
                 "--fit-pixels", "2,1", "--json", "--quiet"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert built["fit_steps"] == 12
    assert main(["gs-lod", "build", str(src), str(tmp_path / "plain"), "--fit-steps", "0",
                 "--quiet"]) == 0
    assert main(["verify", str(tmp_path / "fit"), "--quiet"]) == 0
    with Scene.open(tmp_path / "fit", readonly=True) as a, \
            Scene.open(tmp_path / "plain", readonly=True) as b, \
            Scene.open(src, readonly=True) as s:
        assert a.lod_meta["fit_steps"] == 12 and b.lod_meta["fit_steps"] == 0
        ia, pa = a.read_params()
        ib, pb = b.read_params()
        _, ps = s.read_params()
        leaves = in_cut(ia, leaf_ids(a))
        assert np.array_equal(ia, ib) and np.array_equal(pa[leaves], ps)
        assert np.array_equal(pa[leaves], pb[leaves])
        assert not np.array_equal(pa[~leaves], pb[~leaves])


@pytest.mark.parametrize("args,match", [
    (["--fit-steps", "-1"], "--fit-steps -1 must be >= 0"),
    (["--fit-steps", "1.5"], "--fit-steps 1.5 is not a whole number"),
    (["--fit-steps", "many"], "--fit-steps many is not a whole number"),
    (["--fit-pixels", "0"], "--fit-pixels 0: every threshold must be > 0"),
    (["--fit-pixels", "1,x"], "--fit-pixels x is not a number"),
])
def test_bad_fit_options_are_refused_before_anything_is_written(src, tmp_path, capsys, args,
                                                                 match):
    before = scene_files(src)
    out = tmp_path / "out"
    refused(capsys, ["gs-lod", "build", str(src), str(out), *args], match)
    assert not out.exists()
    existing = tmp_path / "existing"
    assert main(["gs-lod", "build", str(src), str(existing), "--fit-steps", "0",
                 "--quiet"]) == 0
    kept = scene_files(existing)
    refused(capsys, ["gs-lod", "build", str(src), str(existing), "--overwrite", *args], match)
    assert scene_files(existing) == kept and scene_files(src) == before


def test_an_interrupted_fit_leaves_the_source_and_the_existing_output_valid(src, tmp_path):
    before = scene_files(src)
    out = tmp_path / "out"
    with Scene.open(src, readonly=True) as s:
        build_lod_scene(s, out, fit=FitConfig(steps=0)).close()
    kept = scene_files(out)
    calls = []

    def interrupt(n):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with Scene.open(src, readonly=True) as s, pytest.raises(KeyboardInterrupt):
        build_lod_scene(s, out, overwrite=True, fit=FitConfig(steps=20), fit_progress=interrupt)
    assert len(calls) == 3
    assert scene_files(src) == before and scene_files(out) == kept
    assert main(["verify", str(src), "--quiet"]) == 0
    assert main(["verify", str(out), "--quiet"]) == 0
    fresh = tmp_path / "fresh"
    with Scene.open(src, readonly=True) as s, pytest.raises(KeyboardInterrupt):
        calls.clear()
        build_lod_scene(s, fresh, fit=FitConfig(steps=20), fit_progress=interrupt)
    assert not fresh.exists()
    shutil.rmtree(fresh, ignore_errors=True)


def test_a_python_caller_reads_the_parameters_it_passed():
    from oocstore.errors import UsageError
    from oocstore.gs.lod_fit import fit_config

    for steps, pixels, said in ((-1, None, "fit_steps=-1"), (2, "1,x", "fit_pixels='x'"),
                                (2, "0", "fit_pixels='0'")):
        with pytest.raises(UsageError) as e:
            fit_config(steps, pixels)
        assert said in str(e.value) and "--" not in str(e.value)


def test_an_existing_output_is_refused_before_the_hierarchy_is_fitted(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["gs-lod", "build", str(src), str(out), "--fit-steps", "0", "--quiet"]) == 0
    kept = scene_files(out)
    calls = []
    with Scene.open(src, readonly=True) as s, pytest.raises(StoreExistsError, match="exists"):
        build_lod_scene(s, out, fit=FitConfig(steps=50), fit_progress=calls.append)
    assert calls == []  # refused before the first fit step, not after the last
    refused(capsys, ["gs-lod", "build", str(src), str(out), "--fit-steps", "50"],
            "--overwrite")
    assert scene_files(out) == kept


def test_the_fit_renders_only_the_views_it_visits(monkeypatch):
    import oocstore.gs.lod_fit as lod_fit

    prm, h, cams = _tiny_hierarchy()
    renders, cuts = [], []
    render, cut = lod_fit._render, lod_fit.cut_rows
    monkeypatch.setattr(lod_fit, "_render", lambda p, d, cm, v: renders.append(v) or
                        render(p, d, cm, v))
    monkeypatch.setattr(lod_fit, "cut_rows", lambda hi, cm, v, px: cuts.append((v, px)) or
                        cut(hi, cm, v, px))
    _, report = fit_interior(prm, h, 0, cams, np.arange(6), FitConfig(steps=2, lod_pixels=(PX,)))
    assert report["fitted_nodes"] > 0
    # two steps: two leaves-only targets and two cut renders, not a target for every view
    assert len(renders) == 4 and len(set(renders)) == 2, renders
    assert {v for v, _ in cuts} == set(renders), cuts


def test_a_huge_step_count_starts_at_once_and_stops_on_interrupt():
    prm, h, cams = _tiny_hierarchy()
    calls = []

    def interrupt(k):
        calls.append(k)
        if len(calls) == 2:
            raise KeyboardInterrupt

    # the view order is drawn a round at a time: no array of 10**15 steps first
    with pytest.raises(KeyboardInterrupt):
        fit_interior(prm, h, 0, cams, np.arange(6), FitConfig(steps=10**15, lod_pixels=(PX,)),
                     progress=interrupt)
    assert len(calls) == 2


def test_a_scene_without_training_views_records_no_fit(src, tmp_path, monkeypatch):
    import oocstore.gs.lod_fit as lod_fit

    # a photo scene ingested with every view held out (--test-every 1) has no view to fit
    monkeypatch.setattr(lod_fit, "fit_views", lambda n, test_views=None: np.zeros(0, np.int64))
    with Scene.open(src, readonly=True) as s:
        with build_lod_scene(s, tmp_path / "out", fit=FitConfig(steps=5)) as out:
            assert out.lod_meta["fit_steps"] == 0
