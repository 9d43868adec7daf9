"""Where the optimizer runs (``--optimizer-device auto``) and what the device optimizer
moves: zero moments made on the device, resident blocks filled once, only rows that
stepped written back."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from helpers import strip_scene
from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.cli import main
from oocstore.gs.adam import AdamConfig
from oocstore.gs.cull import culled_counts
from oocstore.gs.scene import Scene
from oocstore.gs.sizing import predicted_traffic
from oocstore.gs.stream import Streamer, TrainPlan
from oocstore.gs.train import perturb_scene, render_views, schedule_for, train_steps
from oocstore.samplers.views import visibility_sets

import test_lod_train

lod_setup = test_lod_train.lod_setup  # the level-of-detail scene (a module fixture)

DEG = 1
BIG = 1 << 30  # a device budget whose slots hold every block


@pytest.fixture
def student(tmp_path):
    """The strip scene perturbed (moments zero, as a run's student), its cameras, visibility
    sets and targets rendered from the unperturbed scene."""
    path = strip_scene(tmp_path / "scene", n=400, scales=(0.08, 0.2), sh_coeffs=4,
                       sh_degree=DEG, focal=20.0, size=(24, 16), block_size=32)
    with Scene.open(path) as scene:
        cams = scene.cameras
        vis = visibility_sets(scene.block_bounds, cams)
        targets = dict(enumerate(render_views(scene, cams, vis, range(len(cams)), "cpu")))
        perturb_scene(scene, seed=1)
    return path, cams, vis, targets


def stream(path, cams, vis, targets, views, optimizer="device", budget=BIG):
    """Train ``views`` through a Streamer, checkpoint; (stats, loaded rows per fill)."""
    adam = AdamConfig()
    views = np.asarray(views)
    with Scene.open(path) as scene:
        plan = TrainPlan(views, vis, cameras=cams)
        plan.cull_rows = np.zeros(len(vis), dtype=np.int64)
        used = np.unique(views)
        plan.cull_rows[used] = culled_counts(scene, cams, vis, used)
        plan.schedule = schedule_for(scene, plan, budget, 0, optimizer)
        loads = np.concatenate([st.load for st in plan.schedule.steps]).astype(np.int64)
        filled = int(np.asarray(scene.block_counts)[loads].sum())
        acct = BudgetAccountant(MemoryBudget(gpu=budget))
        with Streamer(scene, plan, device="cpu", accountant=acct, adam=adam,
                      lr=adam.column_lrs(DEG, 3.0), device_budget=budget,
                      optimizer=optimizer) as store:
            train_steps(store, DEG, cams, targets, len(views), device="cpu")
            store.checkpoint()
            stats = store.stats()
        return stats, loads, filled, scene.param_width, scene.record_bytes


def moment_rows(path) -> int:
    """Rows of the scene whose Adam moments are not all zero bits."""
    with Scene.open(path) as scene:
        _, rec = scene.read_all()
        p = scene.param_width
    return int(rec[:, p:].view(np.uint32).any(axis=1).sum())


def test_zero_moments_are_made_on_the_device_not_uploaded(student):
    path, cams, vis, targets = student
    views = [0, 2, 4, 6, 8]
    stats, loads, filled, p, rb = stream(path, cams, vis, targets, views)
    assert moment_rows(path) > 0  # training gave moments to the rows that stepped
    # every filled row had zero moments: only its parameters crossed (plus the slots'
    # (start, count) pairs per step and the packed dirty-row masks of the write-back)
    assert stats["zero_moment_rows"] == filled
    params_up = filled * 4 * p
    overhead = 16 * sum(len(vis[v]) for v in views) + sum((32 + 7) // 8 for _ in loads)
    assert params_up <= stats["bytes_h2d"] <= params_up + overhead
    assert stats["bytes_h2d"] < filled * rb / 2  # whole records would be 3x the parameters

    # a second run over the trained scene: rows with moments bring them, the others not
    with_moments = moment_rows(path)
    stats2, _, filled2, _, _ = stream(path, cams, vis, targets, views)
    assert filled2 == filled
    assert stats2["zero_moment_rows"] == filled - with_moments


def test_resident_blocks_are_filled_once(student):
    """Slots that hold every block: a block seen by many steps crosses once."""
    path, cams, vis, targets = student
    views = [3, 4, 3, 5, 4, 3, 4, 5]
    stats, loads, filled, p, _ = stream(path, cams, vis, targets, views)
    distinct = np.unique(np.concatenate([vis[v] for v in views]))
    assert sorted(loads.tolist()) == distinct.tolist()
    with Scene.open(path) as scene:
        counts = np.asarray(scene.block_counts)
    assert stats["zero_moment_rows"] == filled == int(counts[distinct].sum())
    visits = sum(int(counts[vis[v]].sum()) for v in views)
    assert stats["bytes_h2d"] < visits * 4 * p / 2  # not once per visit


def test_write_back_brings_back_only_rows_that_stepped_and_trains_the_same(student, tmp_path):
    path, cams, vis, targets = student
    other = tmp_path / "copy"
    shutil.copytree(path, other)
    with Scene.open(path) as scene:
        ids0, rec0 = scene.read_all()
    views = [1, 2, 3]
    stats, _, filled, _, rb = stream(path, cams, vis, targets, views)
    with Scene.open(path) as scene:
        ids1, rec1 = scene.read_all()
    changed = int((rec1 != rec0).any(axis=1).sum())
    assert 0 < changed <= stats["write_back_rows"] <= stats["rendered_rows"]
    assert stats["write_back_rows"] < filled  # rows of the loaded blocks nobody drew stay
    masks = stats["bytes_d2h"] - stats["write_back_rows"] * rb
    assert 0 < masks < stats["candidate_rows"] + stats["culled_rows"]  # packed: 1/8 a row
    assert stats["bytes_d2h"] < filled * rb
    # the same records as the CPU optimizer (which writes whole blocks back)
    stream(other, cams, vis, targets, views, optimizer="cpu")
    with Scene.open(other) as scene:
        ids2, rec2 = scene.read_all()
    assert np.array_equal(ids1, ids2)
    np.testing.assert_allclose(rec1, rec2, rtol=1e-5, atol=1e-6)


def test_predicted_traffic_bounds_what_the_device_optimizer_moves(student):
    path, cams, vis, targets = student
    views = np.array([0, 1, 2, 3, 4])
    with Scene.open(path) as scene:
        plan = TrainPlan(views, vis, cameras=cams)
        plan.cull_rows = np.zeros(len(vis), dtype=np.int64)
        plan.cull_rows[np.unique(views)] = culled_counts(scene, cams, vis, np.unique(views))
        sched = schedule_for(scene, plan, BIG, 0, "device")
        device = predicted_traffic(scene, plan, sched, "device", zero_moments=True)
        loads = np.concatenate([st.load for st in sched.steps]).astype(np.int64)
        rows = int(np.asarray(scene.block_counts)[loads].sum())
        assert device == rows * (4 * scene.param_width + scene.record_bytes)
        assert predicted_traffic(scene, plan, sched, "device") == 2 * rows * scene.record_bytes
        cpu = predicted_traffic(scene, plan, None, "cpu")
        rb = scene.record_bytes
        assert cpu == 2 * 4 * scene.param_width * int(plan.cull_rows[views].sum())
    stats, *_ = stream(path, cams, vis, targets, views)
    # block data moved <= the prediction (which writes every loaded block back whole)
    assert stats["bytes_h2d"] + stats["write_back_rows"] * rb <= device


# -- gs-train --optimizer-device auto --------------------------------------------------------

@pytest.fixture
def toy_scene(tmp_path):
    return strip_scene(tmp_path / "toy", n=400, scales=(0.08, 0.2), sh_coeffs=1, sh_degree=0,
                       focal=20.0, size=(24, 16), block_size=32)


def device_minimum(capsys, path, steps=4) -> int:
    assert main(["gs-train", str(path), "--steps", str(steps), "--gpu-budget", "1KiB", "--quiet",
                 "--optimizer-device", "device"]) == 2
    err = capsys.readouterr().err
    assert "its visible blocks plus the step batch" in err, err
    return int(re.search(r"\((\d+) bytes", err).group(1))


def train_json(capsys, path, *args, steps=4) -> dict:
    assert main(["gs-train", str(path), "--steps", str(steps), "--json", "--quiet",
                 "--threads", "1", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_auto_picks_device_when_the_budget_holds_its_working_set_else_cpu(
        toy_scene, tmp_path, capsys):
    need = device_minimum(capsys, toy_scene)
    other = tmp_path / "copy"
    shutil.copytree(toy_scene, other)
    below = train_json(capsys, toy_scene, "--gpu-budget", need - 1)  # auto is the default
    assert below["optimizer_device"] == "cpu"
    assert below["optimizer_choice"]["requested"] == "auto"
    assert below["optimizer_choice"]["device_min_budget"] == need
    assert "below the device optimizer's working set" in below["optimizer_choice"]["reason"]
    at = train_json(capsys, other, "--gpu-budget", need)
    assert at["optimizer_device"] == "device" and at["device_slots"] > 0
    pred = at["optimizer_choice"]["predicted_bytes"]
    assert pred["device"] <= pred["cpu"]
    # the device optimizer moves fewer bytes here, and trains the same
    assert at["bytes_moved_per_step"] < below["bytes_moved_per_step"]
    assert at["psnr"] == pytest.approx(below["psnr"], abs=1e-4)
    # forced placements stay forced
    assert train_json(capsys, toy_scene, "--gpu-budget", need,
                      "--optimizer-device", "cpu")["optimizer_device"] == "cpu"


def test_auto_keeps_the_cpu_optimizer_when_the_device_would_move_more(
        toy_scene, tmp_path, capsys):
    """A budget that holds the device optimizer's working set, but a run too short to
    repay loading whole blocks: auto keeps the CPU optimizer, which moves less."""
    need = device_minimum(capsys, toy_scene, steps=2)
    other = tmp_path / "copy"
    shutil.copytree(toy_scene, other)
    auto = train_json(capsys, toy_scene, "--gpu-budget", need, steps=2)
    choice = auto["optimizer_choice"]
    assert auto["optimizer_device"] == "cpu" and choice["device_min_budget"] == need
    assert choice["predicted_bytes"]["device"] > choice["predicted_bytes"]["cpu"]
    forced = train_json(capsys, other, "--gpu-budget", need, "--optimizer-device", "device",
                        steps=2)
    assert forced["optimizer_device"] == "device"
    assert auto["bytes_moved_per_step"] < forced["bytes_moved_per_step"]


def test_auto_without_a_budget_is_the_cpu_optimizer(toy_scene, capsys):
    out = train_json(capsys, toy_scene)
    assert out["optimizer_device"] == "cpu"
    assert "no --gpu-budget" in out["optimizer_choice"]["reason"]


def test_unknown_optimizer_device_names_the_choices(toy_scene, capsys):
    before = {p: p.read_bytes() for p in toy_scene.rglob("*") if p.is_file()}
    assert main(["gs-train", str(toy_scene), "--steps", "2", "--quiet",
                 "--optimizer-device", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert all(w in err for w in ("'gpu'", "cpu", "device", "auto"))
    assert before == {p: p.read_bytes() for p in toy_scene.rglob("*") if p.is_file()}



def test_device_optimizer_with_level_of_detail_cuts_equals_the_oracle(lod_setup, tmp_path):
    """The device optimizer with a level-of-detail cut (the cut's rows picked on the device
    by a packed mask) and prefix reads (a write-back merges the stepped rows into the
    prefix it was filled from), in slots that evict: the oracle's records."""
    from test_lod_train import _oracle
    from test_stream import stream_plan

    from oocstore.gs.sizing import largest_view, slot_bytes

    base, cams, vis, plan_views, targets, cut_ids, prefix = lod_setup
    path = tmp_path / "dev"
    shutil.copytree(base, path)
    adam = AdamConfig()
    lr = adam.column_lrs(1, 3.0)
    ids_o, rec_o = _oracle(base, cams, vis, plan_views, targets, cut_ids, lr, adam)
    with Scene.open(path) as scene:
        plan = TrainPlan(plan_views, vis)
        budget = largest_view(scene, plan, "device")[1] + 2 * slot_bytes(scene)
        plan = stream_plan(scene, cams, vis, plan_views, budget, "device")
        plan.lod_cuts, plan.lod_prefix = cut_ids, prefix
        acct = BudgetAccountant(MemoryBudget(gpu=budget))
        with Streamer(scene, plan, device="cpu", accountant=acct, adam=adam, lr=lr,
                      device_budget=budget, optimizer="device") as store:
            train_steps(store, 1, cams, targets, len(plan_views), device="cpu")
            store.checkpoint()
            stats = store.stats()
    with Scene.open(path) as scene:
        ids, rec = scene.read_all()
    assert np.array_equal(ids, ids_o)
    np.testing.assert_allclose(rec, rec_o, rtol=1e-5, atol=1e-6)
    assert stats["rendered_rows"] <= sum(len(cut_ids[v]) for v in plan_views)
    assert stats["write_back_rows"] > 0 and stats["zero_moment_rows"] > 0


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100])
def test_masks_cross_packed_eight_rows_a_byte(n):
    import torch

    from oocstore.gs.stream import mask_to_device, mask_to_host

    mask = torch.from_numpy(np.random.default_rng(n).random(n) > 0.5)
    host, nbytes = mask_to_host(mask)
    assert torch.equal(host, mask) and nbytes == (n + 7) // 8
    dev, nbytes = mask_to_device(mask.numpy(), "cpu")
    assert torch.equal(dev, mask) and nbytes == (n + 7) // 8


def test_predicted_traffic_of_a_level_of_detail_plan_counts_the_prefixes_it_loads(lod_setup,
                                                                                 tmp_path):
    """The device optimizer loads (and writes back) only each block's prefix the cuts
    need: the prediction weighs those rows, not whole blocks, and still bounds what moves."""
    from test_stream import stream_plan

    from oocstore.gs.sizing import largest_view, slot_bytes

    base, cams, vis, plan_views, targets, cut_ids, prefix = lod_setup
    path = tmp_path / "dev"
    shutil.copytree(base, path)
    adam = AdamConfig()
    with Scene.open(path) as scene:
        plan = TrainPlan(plan_views, vis)
        budget = largest_view(scene, plan, "device")[1] + 2 * slot_bytes(scene)
        plan = stream_plan(scene, cams, vis, plan_views, budget, "device")
        whole = predicted_traffic(scene, plan, plan.schedule, "device")
        plan.lod_cuts, plan.lod_prefix = cut_ids, prefix
        counts = np.asarray(scene.block_counts).copy()
        predicted = predicted_traffic(scene, plan, plan.schedule, "device")
        assert np.array_equal(np.asarray(scene.block_counts), counts)  # the scene's, unchanged
        loads = np.concatenate([st.load for st in plan.schedule.steps]).astype(np.int64)
        rows = sum(min(int(counts[b]), prefix.get(int(b), int(counts[b]))) for b in loads)
        assert predicted == 2 * rows * scene.record_bytes < whole
        acct = BudgetAccountant(MemoryBudget(gpu=budget))
        with Streamer(scene, plan, device="cpu", accountant=acct, adam=adam,
                      lr=adam.column_lrs(1, 3.0), device_budget=budget,
                      optimizer="device") as store:
            train_steps(store, 1, cams, targets, len(plan_views), device="cpu")
            store.checkpoint()
            stats = store.stats()
    assert stats["bytes_h2d"] + stats["write_back_rows"] * scene.record_bytes <= predicted
