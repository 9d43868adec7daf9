"""Streamed training equals an in-memory oracle; write-back then reopen gives its result."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.errors import BudgetError, ChecksumError
from oocstore.gs import layout
from oocstore.gs.adam import AdamConfig, masked_adam_
from oocstore.gs.cameras import Cameras
from oocstore.gs.render import render
from oocstore.gs.scene import Scene
from oocstore.gs.stream import (AllOnDevice, NaiveOffload, Streamer, TrainPlan, block_bytes,
                                check_device_budget, slot_bytes, step_batch_bytes)
from oocstore.gs.train import perturb_scene, render_views, train_steps
from oocstore.samplers.views import belady_block_schedule, view_order, visibility_sets

DEG = 1
W, H = 24, 16
STEPS = 10


def strip_scene(path, n=480, block_size=24, seed=0):
    """Gaussians along a strip in x, cameras looking at pieces of it (each sees ~1/3)."""
    g = np.random.default_rng(seed)
    k = (DEG + 1) ** 2
    means = np.stack([g.uniform(-6, 6, n), g.uniform(-1, 1, n), g.uniform(-0.4, 0.4, n)], 1)
    params = layout.join_params(means, g.normal(size=(n, 4)), np.log(g.uniform(0.08, 0.2, (n, 3))),
                                g.uniform(-1, 1.5, n), g.normal(scale=0.4, size=(n, k, 3)))
    xs = np.linspace(-5, 5, 10)
    vm = np.tile(np.eye(4), (len(xs), 1, 1))
    vm[:, 0, 3] = -xs
    vm[:, 2, 3] = 3.0
    K = np.tile(np.array([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]]), (len(xs), 1, 1))
    cams = Cameras(vm, K, W, H)
    return Scene.create(path, None, params, DEG, cams, block_size=block_size), cams


@pytest.fixture(scope="module")
def base_setup(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("strip")
    scene, cams = strip_scene(tmp_path / "scene")
    vis = visibility_sets(scene.block_bounds, cams)
    views = view_order(vis, seed=0, randomness=0.1)
    plan_views = np.resize(views, STEPS)
    targets = dict(enumerate(render_views(scene, cams, vis, range(len(cams)), "cpu")))
    perturb_scene(scene, seed=1)
    scene.close()
    adam = AdamConfig()
    lr = adam.column_lrs(DEG, 3.0)
    expected = oracle(tmp_path / "scene", cams, vis, plan_views, targets, lr, adam)
    return tmp_path / "scene", cams, vis, plan_views, targets, expected


@pytest.fixture
def trained_setup(base_setup, tmp_path):
    """A fresh copy of the perturbed scene per test, and the oracle's result."""
    path = tmp_path / "scene"
    shutil.copytree(base_setup[0], path)
    return (path,) + tuple(base_setup[1:])


def oracle(path, cams, vis, plan_views, targets, lr, adam):
    """All records in one RAM tensor; rows of a step = the live rows of its visible blocks."""
    with Scene.open(path) as scene:
        blocks = [scene.read_block(b) for b in range(scene.num_blocks)]
    ids = np.concatenate([b[0] for b in blocks])
    rec = torch.from_numpy(np.concatenate([b[1] for b in blocks]))
    start = np.cumsum([0] + [len(b[0]) for b in blocks])
    p = layout.param_width(DEG)
    for step, v in enumerate(plan_views, 1):
        rows = torch.from_numpy(np.concatenate([np.arange(start[b], start[b + 1]) for b in vis[v]]))
        r = rec[rows]
        params = r[:, :p].clone().requires_grad_(True)
        out = render(params, DEG, torch.from_numpy(cams.viewmats[v]), torch.from_numpy(cams.Ks[v]), W, H)
        torch.abs(out.image - targets[v]).mean().backward()
        m1, m2 = r[:, p:2 * p].clone(), r[:, 2 * p:].clone()
        prm = params.detach().clone()
        masked_adam_(prm, m1, m2, params.grad, out.visible, lr, step, adam)
        rec[rows] = torch.cat([prm, m1, m2], 1)
    order = np.argsort(ids)
    return ids[order], rec.numpy()[order]


def stream_plan(scene, cams, vis, plan_views, device_budget, optimizer="cpu", cull=True):
    """The streamer's plan: culled per Gaussian (with the cameras and the culled counts)
    or not, and its schedule for ``optimizer``."""
    from oocstore.gs.cull import culled_counts
    from oocstore.gs.train import schedule_for

    plan = TrainPlan(plan_views, vis)
    if cull:
        plan.cameras = cams
        plan.cull_rows = np.zeros(len(vis), dtype=np.int64)
        views = np.unique(plan_views)
        plan.cull_rows[views] = culled_counts(scene, cams, vis, views)
    plan.schedule = schedule_for(scene, plan, device_budget, 0, optimizer)
    return plan


def cpu_charges(scene, plan, optimizer) -> int:
    """The streamer's fixed CPU charges (the CPU tier takes what a budget leaves)."""
    return sum(n for tier, n, *_ in Streamer.requirements(scene, plan, optimizer=optimizer)
               if tier == "cpu")


def run_mode(mode, path, cams, vis, plan_views, *, device_budget=None, cpu_budget=None,
             targets=None, lr=None, adam=None, optimizer="cpu", cull=True, cpu_tier=None):
    with Scene.open(path) as scene:
        plan = TrainPlan(plan_views, vis)
        kw = dict(device="cpu", adam=adam, lr=lr)
        if mode is Streamer:
            plan = stream_plan(scene, cams, vis, plan_views, device_budget, optimizer, cull)
            kw.update(device_budget=device_budget, optimizer=optimizer)
            if cpu_tier is not None:  # the fixed charges, then ``cpu_tier`` block slots
                cpu_budget = cpu_charges(scene, plan, optimizer) + cpu_tier * block_bytes(scene)
        kw["accountant"] = BudgetAccountant(MemoryBudget(gpu=device_budget, cpu=cpu_budget))
        with mode(scene, plan, **kw) as store:
            train_steps(store, DEG, cams, targets, len(plan_views), device="cpu")
            store.checkpoint()
            stats = store.stats()
    with Scene.open(path) as scene:  # reopen: what was committed
        ids, rec = scene.read_all()
    return ids, rec, stats


@pytest.mark.parametrize("mode", ["stream", "stream-no-cpu-tier", "stream-device-optimizer",
                                  "stream-device-optimizer-no-cull",
                                  "stream-device-optimizer-no-cpu-tier", "naive", "all"])
def test_modes_equal_the_oracle_and_survive_reopen(trained_setup, tmp_path, mode):
    path, cams, vis, plan_views, targets, (ids_o, rec_o) = trained_setup
    adam = AdamConfig()
    lr = adam.column_lrs(DEG, 3.0)
    optimizer = "device" if "device-optimizer" in mode else "cpu"
    with Scene.open(path) as scene:
        ids0, rec0 = scene.read_all()
        counts = scene.block_counts
        # device optimizer: room for the largest view + 2 block slots on the device; the
        # CPU optimizer's host slots hold twice the largest view's blocks (of 20)
        plan = TrainPlan(plan_views, vis)
        need = max(len(vis[v]) * slot_bytes(scene)
                   + step_batch_bytes(int(counts[vis[v]].sum()), scene, "device")
                   for v in plan_views)
        device_budget = need + 2 * slot_bytes(scene)
        assert check_device_budget(scene, plan, device_budget, 0, optimizer) is None
    cls = Streamer if mode.startswith("stream") else {"naive": NaiveOffload, "all": AllOnDevice}[mode]
    # a 3-block CPU tier (or none: evicted dirty blocks go straight to the writer and come
    # back from SSD), so blocks are evicted, written back to SSD and read again
    extra = dict(device_budget=device_budget)
    if cls is Streamer:
        extra.update(optimizer=optimizer, cull="no-cull" not in mode,
                     cpu_tier=0 if "no-cpu-tier" in mode else 3)
    ids, rec, stats = run_mode(cls, path, cams, vis, plan_views, targets=targets, lr=lr,
                               adam=adam, **extra)
    assert np.array_equal(ids, ids_o) and np.array_equal(ids, ids0)
    assert not np.allclose(rec, rec0)  # training changed the scene
    np.testing.assert_allclose(rec, rec_o, rtol=1e-5, atol=1e-6)
    if cls is Streamer:
        assert stats["bytes_ssd_written"] > 0 and stats["bytes_d2h"] > 0
        assert 0 < stats["cache_hit_rate"] < 1
        assert stats["cpu_slots"] == (0 if "no-cpu-tier" in mode else 3)
        assert stats["optimizer_device"] == optimizer
        # every step rendered a subset of its culled rows, a subset of its blocks' rows
        assert 0 < stats["rendered_rows"] <= stats["culled_rows"] <= stats["candidate_rows"]
        # with the CPU optimizer, the rows the next step does not read take their Adam
        # step on the oocstore-gs-adam thread, beside the next step's rendering
        assert (stats["adam_overlapped_rows"] > 0) == (optimizer == "cpu")
        if optimizer == "device":
            # loads of the student's blocks bring no moments; reloads of trained ones do
            assert 0 < stats["zero_moment_rows"]
            # write-backs: only the rows that stepped when the host copy a slot was filled
            # from is alive, else the whole block (without a CPU tier, mostly)
            assert 0 < stats["write_back_rows"]
        if "no-cull" in mode:
            assert stats["culled_rows"] == stats["candidate_rows"]
        else:
            assert stats["culled_rows"] < stats["candidate_rows"]


def test_streaming_moves_fewer_bytes_than_naive_offload(trained_setup):
    path, cams, vis, plan_views, targets, _ = trained_setup
    adam = AdamConfig()
    lr = adam.column_lrs(DEG, 3.0)
    budget = 10 * 1024 * 1024
    _, _, naive = run_mode(NaiveOffload, path, cams, vis, plan_views, targets=targets, lr=lr, adam=adam)
    _, _, stream = run_mode(Streamer, path, cams, vis, plan_views, device_budget=budget,
                            targets=targets, lr=lr, adam=adam)
    moved = lambda s: s["bytes_h2d"] + s["bytes_d2h"]  # noqa: E731
    assert moved(stream) < moved(naive)


def test_budget_too_small_names_the_view_and_minimum(trained_setup):
    path, cams, vis, plan_views, _, _ = trained_setup
    with Scene.open(path) as scene:
        plan = TrainPlan(plan_views, vis)
        with pytest.raises(BudgetError, match=r"view \d+ needs a device working set of .* raise "
                                              r"--gpu-budget to at least"):
            check_device_budget(scene, plan, 1000)


@pytest.mark.parametrize("optimizer", ["cpu", "device"])
def test_cuda_runs_charge_the_allocator_slack_up_front(trained_setup, optimizer):
    from oocstore.gs.stream import allocator_slack, largest_view
    from oocstore.gs.train import schedule_for
    from oocstore.tiers.staging import CUDA_BLOCK_SLACK

    assert allocator_slack("cpu") == 0
    slack = allocator_slack("cuda")
    assert slack == 6 * CUDA_BLOCK_SLACK
    path, cams, vis, plan_views, _, _ = trained_setup
    what = {"cpu": r"its step batch \(the parameters and gradient of the Gaussians in its "
                   r"frustum\)", "device": "its visible blocks plus the step batch"}[optimizer]
    with Scene.open(path) as scene:
        plan = TrainPlan(plan_views, vis)
        _, need = largest_view(scene, plan, optimizer)
        check_device_budget(scene, plan, need, 0, optimizer)  # fits exactly off CUDA
        with pytest.raises(BudgetError, match=f"{what} and {slack} bytes of other device buffers"):
            check_device_budget(scene, plan, need + slack - 1, slack, optimizer)
        budget = need + 4 * slack
        shrink = (schedule_for(scene, plan, budget, 0, optimizer).budget_bytes
                  - schedule_for(scene, plan, budget, slack, optimizer).budget_bytes)
        # device slots share the device budget: they shrink by exactly the slack; the CPU
        # optimizer's slots are in host memory
        assert shrink == (slack if optimizer == "device" else 0)


def _flip_block(path, b):
    with Scene.open(path, readonly=True) as scene:
        rel = scene._files[b]
    f = path / rel
    data = bytearray(f.read_bytes())
    data[100] ^= 0x08
    f.write_bytes(bytes(data))
    return rel


@pytest.mark.parametrize("verify", [True, False])
def test_a_corrupt_block_stops_training_naming_block_file_and_step(trained_setup, verify):
    path, cams, vis, _, targets, _ = trained_setup
    # a block first seen after the first step (read by the prefetch thread ahead of time)
    plan_views = np.array([0, 1, 2, 3, 4])
    first = set(vis[plan_views[0]].tolist())
    later = [int(b) for v in plan_views[1:] for b in vis[v] if int(b) not in first]
    b = later[0]
    step = 1 + next(i for i, v in enumerate(plan_views) if b in vis[v])
    rel = _flip_block(path, b)
    adam = AdamConfig()
    with Scene.open(path, verify_reads=verify) as scene:
        bb = block_bytes(scene)
        counts = scene.block_counts
        batch = step_batch_bytes(max(int(counts[vis[v]].sum()) for v in plan_views), scene)
        budget = max(len(vis[v]) for v in plan_views) * bb + batch
        plan = TrainPlan(plan_views, vis)
        plan.schedule = belady_block_schedule(plan_views, vis, bb, budget - batch)
        acct = BudgetAccountant(MemoryBudget(gpu=budget))
        with Streamer(scene, plan, device="cpu", accountant=acct, adam=adam,
                      lr=adam.column_lrs(DEG, 3.0), device_budget=budget) as store:
            if verify:
                with pytest.raises(ChecksumError, match=rf"block {b} \(file {rel}\), chunk 0: "
                                   rf"checksum mismatch.*training step {step}\]"):
                    train_steps(store, DEG, cams, targets, len(plan_views), device="cpu")
                assert store.step == step
            else:  # unchecked, the flipped bytes are trained on
                train_steps(store, DEG, cams, targets, step, device="cpu")
        if verify:  # the baselines read every block up front
            with pytest.raises(ChecksumError, match=rf"block {b} \(file {rel}\)"):
                AllOnDevice(scene, plan, device="cpu", accountant=BudgetAccountant(MemoryBudget()),
                            adam=adam, lr=adam.column_lrs(DEG, 3.0))


def test_a_step_with_more_gaussians_in_its_frustum_than_planned_stops_with_the_fix(trained_setup):
    """The step batch is sized by the plan's culled counts: a step that finds more rows
    (here: counts planned as 0, so 64 rows of headroom) stops before it renders."""
    path, cams, vis, plan_views, targets, _ = trained_setup
    adam = AdamConfig()
    with Scene.open(path) as scene:
        plan = stream_plan(scene, cams, vis, plan_views, 1 << 30)
        plan.cull_rows = np.zeros(len(vis), dtype=np.int64)
        acct = BudgetAccountant(MemoryBudget())
        with Streamer(scene, plan, device="cpu", accountant=acct, adam=adam,
                      lr=adam.column_lrs(DEG, 3.0), device_budget=1 << 30) as store:
            assert store.batch_cap == 64
            with pytest.raises(BudgetError, match=r"training step 1 \(view \d+\) has \d+ Gaussians "
                               r"in its frustum, more than the 64 rows its step batch was "
                               r"planned for .*--eval-every"):
                store.begin_step()
