"""``oocstore gs-train``: JSON summary, training improves PSNR, densification, bad budgets."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from helpers import refused, strip_scene
from oocstore.cli import main
from oocstore.errors import UsageError
from oocstore.gs import layout
from oocstore.gs.scene import Scene
from oocstore.gs.train import GsTrainConfig, run_gs_training

FIELDS = ("psnr", "steps", "step_time_s", "bytes_h2d", "bytes_d2h", "bytes_ssd_read",
          "bytes_ssd_written", "cache_hit_rate", "peak_rss_bytes", "peak_gpu_bytes", "gaussians")


@pytest.fixture
def toy_scene(tmp_path):
    return strip_scene(tmp_path / "scene", n=400, scales=(0.08, 0.2), sh_coeffs=1, sh_degree=0,
                       focal=20.0, size=(24, 16), block_size=32)


def run_json(capsys, *args) -> dict:
    assert main(["gs-train", *map(str, args), "--json", "--quiet", "--threads", "1"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_stream_json_summary_and_training_improves(toy_scene, capsys):
    out = run_json(capsys, toy_scene, "--steps", 8, "--mode", "stream", "--seed", 1)
    for key in FIELDS:
        assert key in out
    assert out["steps"] == 8 and out["render_size"] == [24, 16]
    assert out["psnr"] > out["psnr_start"] + 0.1  # the student moved towards the teacher
    assert out["gaussians"] == {"start": 400, "end": 400}
    assert out["bytes_ssd_written"] > 0  # the checkpoint wrote the trained blocks back
    assert out["peak_gpu_bytes"] <= out["device_budget"]
    assert main(["verify", str(toy_scene), "--quiet"]) == 0


def test_densification_changes_the_scene_and_keeps_it_valid(toy_scene, capsys):
    out = run_json(capsys, toy_scene, "--steps", 6, "--densify-every", 3, "--mode", "stream")
    assert len(out["refinements"]) == 1
    r = out["refinements"][0]
    changed = r["cloned"] + r["split"] + r["pruned"]
    assert changed > 0
    assert out["gaussians"]["end"] == 400 + r["cloned"] + r["split"] - r["pruned"]
    with Scene.open(toy_scene) as scene:
        ids, _ = scene.read_all()
        assert len(np.unique(ids)) == len(ids) == out["gaussians"]["end"]
    assert main(["verify", str(toy_scene), "--quiet"]) == 0


def test_budget_too_small_is_refused_up_front(toy_scene, capsys):
    assert main(["gs-train", str(toy_scene), "--steps", "2", "--gpu-budget", "4KiB", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "view" in err and "raise --gpu-budget to at least" in err
    assert "Traceback" not in err


def test_bad_size_is_a_usage_error(toy_scene, capsys):
    assert main(["gs-train", str(toy_scene), "--size", "big", "--quiet"]) == 2
    assert "is not WxH" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, said", [
    (dict(steps=0), "steps=0 must be at least 1"),
    (dict(mode="fast"), "mode='fast' unknown: use one of"),
    (dict(device="tpu"), "device='tpu' unknown: use 'cpu' or 'cuda'"),
    (dict(target="noise"), "target='noise' unknown: use 'photos' or 'synthetic'"),
    (dict(eval_every=-1), "eval_every=-1 must be >= 0"),
    (dict(checkpoint_every=-2), "checkpoint_every=-2 must be >= 0"),
    (dict(prefetch_depth=0), "prefetch_depth=0 must be at least 1"),
    (dict(optimizer_device="gpu"), "optimizer_device 'gpu' unknown: use cpu"),
    (dict(randomness=1.5), "randomness=1.5 must lie in [0, 1]"),
])
def test_a_python_caller_reads_the_parameter_it_passed(kwargs, said):
    """GsTrainConfig's refusals name its parameters (the CLI writes its flags in, see
    test_cli_writes_the_flags_in)."""
    with pytest.raises(UsageError) as err:
        GsTrainConfig(**kwargs)
    assert said in str(err.value) and "--" not in str(err.value)


@pytest.mark.parametrize("kwargs, said", [
    (dict(target="photos"), "target='photos' but the scene "),
    (dict(sh_degree=2), "sh_degree=2 must lie in 0..0 (the scene's SH degree; re-ingest with "
                        "sh_degree for more)"),
    (dict(width=20, height=10, recipe={"ssim_lambda": 0.2}), "use ssim_lambda=0 or larger"),
])
def test_scene_checks_name_the_parameter(toy_scene, kwargs, said):
    with pytest.raises(UsageError) as err:
        run_gs_training(toy_scene, GsTrainConfig(steps=2, **kwargs))
    assert said in str(err.value) and "--" not in str(err.value)


@pytest.mark.parametrize("args, said", [
    (["--steps", "0"], "oocstore: error: --steps 0 must be at least 1"),
    (["--eval-every", "-1"], "oocstore: error: --eval-every -1 must be >= 0"),
    (["--checkpoint-every", "-2"], "oocstore: error: --checkpoint-every -2 must be >= 0"),
    (["--prefetch-depth", "0"], "oocstore: error: --prefetch-depth 0 must be at least 1"),
    (["--threads", "0"], "oocstore: error: --threads 0 must be at least 1"),
    (["--size", "big"], "oocstore: error: --size big is not WxH (e.g. 162x105)"),
    (["--target", "photos"], "or use --target synthetic"),
    (["--sh-degree", "2"], "(the scene's SH degree; re-ingest with --sh-degree for more)"),
    (["--ssim-lambda", "0.2", "--size", "20x10"], "use --ssim-lambda 0 or larger images"),
])
def test_cli_writes_the_flags_in(toy_scene, capsys, args, said):
    err = refused(capsys, ["gs-train", str(toy_scene), "--quiet", *args], said)
    assert not re.search(r"\w=", err), err  # no parameter=value left


def test_sigkill_while_checkpointing_leaves_a_committed_scene(toy_scene):
    """Checkpoint every step, SIGKILL mid-run: the scene reopens at a committed version
    whose every block reads back and verifies."""
    import os
    import signal
    import subprocess
    import sys
    import time

    with Scene.open(toy_scene, readonly=True) as scene:
        v0 = scene.version
    proc = subprocess.Popen([sys.executable, "-m", "oocstore", "gs-train", str(toy_scene),
                             "--steps", "400", "--checkpoint-every", "1", "--quiet",
                             "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the perturbed student, then >= 2 checkpoints
            with Scene.open(toy_scene, readonly=True) as scene:
                if scene.version >= v0 + 3:
                    break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        else:
            pytest.fail("gs-train made no checkpoint within 120 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    with Scene.open(toy_scene) as scene:  # removes the uncommitted files of the killed run
        assert scene.version >= v0 + 3
        ids, rec = scene.read_all()
    assert len(ids) == 400 and np.all(np.isfinite(rec))
    assert main(["verify", str(toy_scene), "--quiet"]) == 0


def test_corrupt_block_is_one_error_line_unless_verify_reads_is_off(toy_scene, capsys):
    with Scene.open(toy_scene, readonly=True) as scene:
        rel = scene._files[3]
    f = toy_scene / rel
    data = bytearray(f.read_bytes())
    data[100] ^= 0x08  # inside the first row's exp_avg: a finite value either way
    f.write_bytes(bytes(data))
    assert main(["gs-train", str(toy_scene), "--steps", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"block 3 (file {rel}), chunk 0: checksum mismatch" in err
    assert "--no-verify-reads" in err and "Traceback" not in err
    out = run_json(capsys, toy_scene, "--steps", 2, "--no-verify-reads")
    assert out["verify_reads"] is False and out["steps"] == 2


def snapshot(path) -> dict:
    """Every file of a store and its bytes, except LMDB's reader lock table (``lock.mdb``:
    runtime state that any open rewrites, no data)."""
    from pathlib import Path

    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(Path(path).rglob("*"))
            if f.is_file() and f.name != "lock.mdb"}


@pytest.mark.parametrize("args,match", [
    (["--cpu-budget", "60KiB"], "prefetch buffers"),  # refused after the student, before
    (["--gpu-budget", "4KiB"], "raise --gpu-budget to at least"),
    (["--sh-degree", "2"], "--sh-degree 2 must lie in 0..0"),
    (["--target", "photos"], "holds no images"),
    (["--ssim-lambda", "0.2", "--size", "20x10"], "smaller than the 11x11 SSIM window"),
    (["--densify-every", "-3"], "--densify-every"),
    (["--optimizer-device", "gpu"], "--optimizer-device 'gpu' unknown: use cpu"),
    (["--view-randomness", "1.5"], "--view-randomness 1.5 must lie in [0, 1]"),
    (["--optimizer-device", "device", "--gpu-budget", "20KiB"],
     "raise --gpu-budget to at least"),
])
def test_refused_run_leaves_the_scene_byte_identical(toy_scene, capsys, args, match):
    before = snapshot(toy_scene)
    assert main(["gs-train", str(toy_scene), "--steps", "2", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert snapshot(toy_scene) == before


def _need_bytes(toy_scene, capsys) -> int:
    import re

    assert main(["gs-train", str(toy_scene), "--steps", "6", "--gpu-budget", "1KiB",
                 "--quiet"]) == 2
    return int(re.search(r"\((\d+) bytes", capsys.readouterr().err).group(1))


def test_growth_that_would_not_fit_the_device_budget_is_refused_before_it_is_written(
        toy_scene, capsys):
    budget = _need_bytes(toy_scene, capsys)  # the initial layout fits exactly
    out = run_json(capsys, toy_scene, "--steps", 6, "--densify-every", 3, "--grow-grad2d", 0,
                   "--gpu-budget", budget)
    r = out["refinements"][0]
    assert r["growth"] in ("refused", "skipped") and "device budget" in r["refused_because"]
    assert r["cloned"] == r["split"] == 0
    assert out["gaussians"]["end"] == 400 - r["pruned"]
    assert out["peak_gpu_bytes"] <= budget and out["device_budget"] == budget
    assert main(["verify", str(toy_scene), "--quiet"]) == 0


def test_growth_within_the_budget_goes_ahead(toy_scene, capsys):
    out = run_json(capsys, toy_scene, "--steps", 6, "--densify-every", 3, "--grow-grad2d", 0,
                   "--gpu-budget", "64MiB")
    r = out["refinements"][0]
    assert r["growth"] == "done" and r["cloned"] + r["split"] > 0
    assert out["gaussians_curve"] == [[0, 400], [3, out["gaussians"]["end"]],
                                      [6, out["gaussians"]["end"]]]


def test_sh_schedule_keeps_higher_coefficients_until_their_degree_is_on(tmp_path, capsys):
    from oocstore.gs.synthetic import random_scene

    random_scene(tmp_path / "s", 1500, 1, block_size=256).close()
    with Scene.open(tmp_path / "s", readonly=True) as scene:
        _, rec0 = scene.read_all()
    out = run_json(capsys, tmp_path / "s", "--steps", 4, "--sh-every", 1000, "--seed", 3)
    assert out["recipe"]["sh_every"] == 1000
    with Scene.open(tmp_path / "s", readonly=True) as scene:
        _, rec1 = scene.read_all()
    p = layout.param_width(1)
    rest = slice(layout.SH_START + 3, p)  # degree-1 coefficients: frozen at the student's
    moved = np.abs(rec1[:, :p] - rec0[:, :p]).max(0)
    assert moved[layout.SH_START:layout.SH_START + 3].max() > 0  # DC trained (and perturbed)
    # the student's perturbation moved them once; training (degree 0) left the moments at 0
    assert np.all(rec1[:, p + rest.start:p + rest.stop] == 0)
    assert np.all(rec1[:, 2 * p + rest.start:2 * p + rest.stop] == 0)
    assert np.any(rec1[:, p + layout.SH_START:p + layout.SH_START + 3] != 0)


def test_evaluation_every_n_steps_reports_psnr_and_ssim(toy_scene, capsys):
    out = run_json(capsys, toy_scene, "--steps", 4, "--eval-every", 2)
    assert [e["step"] for e in out["evals"]] == [0, 2, 4]
    assert out["psnr_test"] == out["evals"][-1]["psnr"] and out["ssim_test"] is not None
    assert 0 < out["ssim_test"] <= 1 and out["lpips_test"] is None
    for k in ("train", "eval", "checkpoint", "plan", "checks"):
        assert out["stage_seconds"][k] >= 0


def test_segments_checked_together_are_those_of_one_block_layout():
    from oocstore.gs.recipe import resolve
    from oocstore.gs.train import segment_edges, spans_from

    r = resolve(100, densify_every=20, densify_from=30, densify_until=70,
                opacity_reset_every=50)
    edges = segment_edges(100, r, eval_every=25)
    assert edges == [0, 25, 40, 50, 60, 75, 100]
    # up front: every segment before the first densification (after step 40)
    assert spans_from(edges, 0, r) == [(0, 25), (25, 40)]
    # at the refinement after 40: its segments until the next one (after 60)
    assert spans_from(edges, 2, r) == [(40, 50), (50, 60)]
    assert spans_from(edges, 4, r) == [(60, 75), (75, 100)]


def test_cpu_optimizer_needs_less_device_memory_and_trains_the_same(tmp_path, toy_scene, capsys):
    """The smallest accepted device budget of each optimizer (from the refusal), a run at
    exactly that budget, and the same trained scene from both."""
    import re
    import shutil

    def minimum(path, optimizer):
        assert main(["gs-train", str(path), "--steps", "4", "--gpu-budget", "1KiB", "--quiet",
                     "--optimizer-device", optimizer]) == 2
        err = capsys.readouterr().err
        assert re.search(r"view \d+ needs a device working set", err), err
        return int(re.search(r"\((\d+) bytes", err).group(1))

    other = tmp_path / "copy"
    shutil.copytree(toy_scene, other)
    out = {}
    for path, optimizer in ((toy_scene, "cpu"), (other, "device")):
        need = minimum(path, optimizer)
        out[optimizer] = run_json(capsys, path, "--steps", 4, "--gpu-budget", need,
                                  "--optimizer-device", optimizer)
        r = out[optimizer]
        assert r["min_device_budget"] == need == r["device_budget"]
        assert r["peak_gpu_bytes"] <= need and r["optimizer_device"] == optimizer
    # the device holds the step's culled parameters and gradient, not blocks with moments
    assert out["cpu"]["min_device_budget"] < out["device"]["min_device_budget"] / 2
    assert out["cpu"]["psnr"] == pytest.approx(out["device"]["psnr"], abs=1e-4)
    with Scene.open(toy_scene) as a, Scene.open(other) as b:
        (ia, ra), (ib, rb) = a.read_all(), b.read_all()
    assert np.array_equal(ia, ib)
    np.testing.assert_allclose(ra, rb, rtol=1e-5, atol=1e-6)


def test_densify_with_a_hierarchy_refines_leaves_and_keeps_the_scene_valid(toy_scene, tmp_path,
                                                                          capsys):
    lod = tmp_path / "lod"
    assert main(["gs-lod", "build", str(toy_scene), str(lod), "--quiet"]) == 0
    with Scene.open(lod) as scene:
        nodes0, leaves0 = scene.lod_meta["nodes"], scene.lod_meta["leaves"]
    out = run_json(capsys, lod, "--steps", 6, "--densify-every", 3, "--mode", "stream",
                   "--grow-grad2d", "1e-5")
    (r,) = out["refinements"]
    assert r["cloned"] + r["split"] > 0 and r["growth"] == "done"
    with Scene.open(lod) as scene:
        meta = scene.lod_meta
        assert meta["leaves"] == leaves0 + r["cloned"] + r["split"] - r["pruned"]
        assert meta["nodes"] == scene.num_gaussians == out["gaussians"]["end"] != nodes0
    assert main(["verify", str(lod), "--quiet"]) == 0
