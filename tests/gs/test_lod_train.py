"""Training with a level-of-detail cut: streamed == an in-memory oracle with the same cuts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.gs import layout
from oocstore.gs.adam import AdamConfig, masked_adam_
from oocstore.gs.lod import in_cut
from oocstore.gs.lod_build import build_lod_scene
from oocstore.gs.lod_fit import FitConfig
from oocstore.gs.render import render
from oocstore.gs.scene import Scene
from oocstore.gs.stream import AllOnDevice, Streamer
from oocstore.gs.train import GsTrainConfig, perturb_scene, render_view, run_gs_training, train_steps
from oocstore.samplers.views import lod_views, view_order, visibility_sets

from test_stream import DEG, H, STEPS, W, stream_plan, strip_scene

LOD_PX = 3.0


@pytest.fixture(scope="module")
def lod_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lodtrain")
    src, cams = strip_scene(root / "src")
    # merged nodes fitted to their leaves (gs-lod build's default): training and the
    # oracle start from the fitted values
    scene = build_lod_scene(src, root / "scene", fit=FitConfig(steps=8, lod_pixels=(LOD_PX,)))
    assert scene.lod_meta["fit_steps"] == 8
    src.close()
    h = scene.hierarchy()
    vis_full = visibility_sets(scene.block_bounds, cams)
    leaves = lod_views(h, cams, vis_full, range(len(cams)), 0.0)
    targets = {v: render_view(scene, cams, vis_full[v], v, "cpu", cut=leaves[v])
               for v in range(len(cams))}
    perturb_scene(scene, seed=1)
    cuts = lod_views(h, cams, vis_full, range(len(cams)), LOD_PX)
    vis = [cuts[v].blocks for v in range(len(cams))]
    plan_views = np.resize(view_order(vis, seed=0, randomness=0.1), STEPS)
    interior = ~h.is_leaf
    cut_ids = {v: cuts[v].ids for v in cuts}
    prefix: dict = {}
    for lv in cuts.values():
        for b, k in zip(lv.blocks.tolist(), lv.prefix.tolist()):
            prefix[b] = max(prefix.get(b, 0), k)
    # the cuts mix levels: interior nodes are rendered, and not every leaf
    assert any(in_cut(h.ids[interior], cut_ids[v]).any() for v in plan_views)
    scene.close()
    return root / "scene", cams, vis, plan_views, targets, cut_ids, prefix


def _oracle(path, cams, vis, plan_views, targets, cut_ids, lr, adam):
    """All records in one RAM tensor; a step's rows: its cut's ids in its blocks."""
    with Scene.open(path) as scene:
        blocks = [scene.read_block(b) for b in range(scene.num_blocks)]
    ids = np.concatenate([b[0] for b in blocks])
    rec = torch.from_numpy(np.concatenate([b[1] for b in blocks]))
    start = np.cumsum([0] + [len(b[0]) for b in blocks])
    p = layout.param_width(DEG)
    for step, v in enumerate(plan_views, 1):
        rows = np.concatenate([np.arange(start[b], start[b + 1]) for b in vis[v]])
        rows = torch.from_numpy(rows[np.isin(ids[rows], cut_ids[v])])
        r = rec[rows]
        params = r[:, :p].clone().requires_grad_(True)
        out = render(params, DEG, torch.from_numpy(cams.viewmats[v]), torch.from_numpy(cams.Ks[v]),
                     W, H)
        torch.abs(out.image - targets[v]).mean().backward()
        m1, m2 = r[:, p:2 * p].clone(), r[:, 2 * p:].clone()
        prm = params.detach().clone()
        masked_adam_(prm, m1, m2, params.grad, out.visible, lr, step, adam)
        rec[rows] = torch.cat([prm, m1, m2], 1)
    order = np.argsort(ids)
    return ids[order], rec.numpy()[order]


@pytest.mark.parametrize("mode", ["stream", "all"])
def test_streamed_lod_training_equals_the_oracle_with_the_same_cuts(lod_setup, tmp_path, mode):
    base, cams, vis, plan_views, targets, cut_ids, prefix = lod_setup
    path = tmp_path / "scene"
    shutil.copytree(base, path)
    adam = AdamConfig()
    lr = adam.column_lrs(DEG, 3.0)
    ids_o, rec_o = _oracle(base, cams, vis, plan_views, targets, cut_ids, lr, adam)
    with Scene.open(path) as scene:
        kw = dict(device="cpu", adam=adam, lr=lr)
        if mode == "stream":
            budget = 4 * scene.block_capacity * scene.record_bytes
            plan = stream_plan(scene, cams, vis, plan_views, budget)
            kw["device_budget"] = budget
            cls = Streamer
        else:
            from oocstore.gs.stream import TrainPlan

            plan, cls = TrainPlan(plan_views, vis), AllOnDevice
        plan.lod_cuts = cut_ids
        if mode == "stream":  # prefix reads: each block's rows up to the cuts' last
            plan.lod_prefix = prefix
            full = sum(int(scene.block_counts[b]) for b in prefix)
            assert sum(prefix.values()) < full
        kw["accountant"] = BudgetAccountant(MemoryBudget(gpu=None, cpu=None))
        counts, reads, read_block = scene.block_counts, [], scene.read_block

        def spy(b, rows=None):
            reads.append((int(b), rows))
            return read_block(b, rows=rows)

        scene.read_block = spy
        with cls(scene, plan, **kw) as store:
            train_steps(store, DEG, cams, targets, len(plan_views), device="cpu")
            store.checkpoint()
            rendered = store.stats().get("rendered_rows")
    with Scene.open(path) as scene:
        ids, rec = scene.read_all()
    assert np.array_equal(ids, ids_o)
    np.testing.assert_allclose(rec, rec_o, rtol=1e-5, atol=1e-6)
    if rendered is not None:  # only cut rows were rendered, from prefixes of the blocks
        assert rendered <= sum(len(cut_ids[v]) for v in plan_views)
        short = [(b, k) for b, k in reads if k is not None and k < counts[b]]
        assert short and all(k == prefix[b] for b, k in short)


def test_gs_train_with_lod_streams_like_all_on_device_and_trains_interior_nodes(lod_setup,
                                                                              tmp_path):
    base = lod_setup[0]
    out = {}
    for mode in ("stream", "all-on-device"):
        path = tmp_path / mode
        shutil.copytree(base, path)
        with Scene.open(path) as scene:
            before = dict(zip(*scene.read_all()))
        cfg = GsTrainConfig(steps=6, mode=mode, lod_pixels=LOD_PX, width=W, height=H, seed=2)
        summary = run_gs_training(path, cfg)
        assert summary["lod_pixels"] == LOD_PX and summary["gaussians"]["end"] == len(before)
        with Scene.open(path, readonly=True) as scene:
            ids, rec = scene.read_all()
            interior = np.setdiff1d(ids, scene.hierarchy().ids[scene.hierarchy().is_leaf])
        out[mode] = rec
        moved = [i for i in interior if not np.array_equal(before[i], rec[np.searchsorted(ids, i)])]
        assert moved  # interior nodes selected by the cuts were trained
    np.testing.assert_allclose(out["stream"], out["all-on-device"], rtol=1e-5, atol=1e-6)


def test_densification_with_a_hierarchy_streams_like_all_on_device_with_the_new_cuts(
        lod_setup, tmp_path, monkeypatch):
    """A refinement rebuilds the hierarchy; the following segment plans and renders the
    rebuilt hierarchy's cuts (a stale cut is refused by the step's row check); stream ==
    all-on-device."""
    from oocstore.gs import train as train_mod
    from oocstore.gs.lod import hierarchy_problems

    real = train_mod._Run.segment
    seen = {}  # first step of a segment -> (store version, its cuts)

    def segment(self, scene, vis_sets, first, last):
        seg = real(self, scene, vis_sets, first, last)
        if not isinstance(scene, Scene):  # a refinement's proposed layout, being vetted
            return seg
        if first:  # after the refinement: the cuts of the committed, rebuilt hierarchy
            want = lod_views(scene.hierarchy(), self.cams,
                             visibility_sets(scene.block_bounds, self.cams), list(seg.lod_cuts),
                             LOD_PX)
            assert all(np.array_equal(seg.lod_cuts[v], want[v].ids) for v in seg.lod_cuts)
        seen[first] = (scene.version, {v: c.copy() for v, c in seg.lod_cuts.items()})
        return seg

    monkeypatch.setattr(train_mod._Run, "segment", segment)
    real_spans = train_mod._Run.check_spans
    vetted = []

    def check_spans(self, scene, vis_sets, spans, acct):
        if not isinstance(scene, Scene):  # the refinement's proposal: with its own cuts
            vetted.append(({v: c.copy() for v, c in self.lod_cuts.items()}, dict(self.lod_prefix)))
            # step batches sized for the proposal's cut sizes, not its blocks' every row
            assert all(self.proposal_rows[v] == len(c) for v, c in self.lod_cuts.items())
        return real_spans(self, scene, vis_sets, spans, acct)

    monkeypatch.setattr(train_mod._Run, "check_spans", check_spans)
    out = {}
    for mode in ("stream", "all-on-device"):
        path = tmp_path / mode
        shutil.copytree(lod_setup[0], path)
        seen.clear()
        vetted.clear()
        cfg = GsTrainConfig(steps=6, mode=mode, lod_pixels=LOD_PX, width=W, height=H, seed=2,
                            recipe={"densify_every": 3, "grow_grad2d": 1e-5})
        summary = run_gs_training(path, cfg)
        (r,) = summary["refinements"]
        assert r["cloned"] + r["split"] > 0 and r["remerged_nodes"] > 0
        assert sorted(seen) == [0, 3]
        (v0, cuts0), (v1, cuts1) = seen[0], seen[3]
        assert v1 > v0 and any(not np.array_equal(cuts0[v], cuts1[v]) for v in cuts1)
        # the budget vetting saw the rebuilt hierarchy's cuts, the ones trained next
        assert len(vetted) == 1
        vcuts = vetted[0][0]
        assert vcuts.keys() == cuts1.keys()
        assert all(np.array_equal(vcuts[v], cuts1[v]) for v in cuts1)
        with Scene.open(path, readonly=True) as scene:
            assert hierarchy_problems(scene.store) == []
            out[mode] = scene.read_all()
    assert np.array_equal(out["stream"][0], out["all-on-device"][0])
    np.testing.assert_allclose(out["stream"][1], out["all-on-device"][1], rtol=1e-5, atol=1e-6)




def test_two_densifications_in_one_run_each_plan_the_committed_cuts(lod_setup, tmp_path,
                                                                    monkeypatch):
    """After every refinement of a run (not only the first) the next segment trains the
    cuts of the hierarchy committed last, and their block prefixes."""
    from oocstore.gs import train as train_mod
    from oocstore.gs.lod import hierarchy_problems

    real = train_mod._Run.segment
    seen = []

    def segment(self, scene, vis_sets, first, last):
        seg = real(self, scene, vis_sets, first, last)
        if isinstance(scene, Scene) and first:
            want = lod_views(scene.hierarchy(), self.cams,
                             visibility_sets(scene.block_bounds, self.cams), list(seg.lod_cuts),
                             LOD_PX)
            assert all(np.array_equal(seg.lod_cuts[v], want[v].ids) for v in seg.lod_cuts)
            pre: dict = {}
            for lv in want.values():
                for b, k in zip(lv.blocks.tolist(), lv.prefix.tolist()):
                    pre[b] = max(pre.get(b, 0), k)
            assert self.lod_prefix == pre
            seen.append((first, scene.version))
        return seg

    monkeypatch.setattr(train_mod._Run, "segment", segment)
    path = tmp_path / "s"
    shutil.copytree(lod_setup[0], path)
    cfg = GsTrainConfig(steps=9, mode="stream", lod_pixels=LOD_PX, width=W, height=H, seed=2,
                        recipe={"densify_every": 3, "grow_grad2d": 1e-5})
    summary = run_gs_training(path, cfg)
    assert [r["growth"] for r in summary["refinements"]] == ["done", "done"]
    version = dict(seen)  # (the check of a segment plans it too)
    assert sorted(version) == [3, 6] and version[6] > version[3]
    with Scene.open(path, readonly=True) as scene:
        assert hierarchy_problems(scene.store) == []


def test_a_hierarchy_rebuild_beyond_the_host_budget_is_skipped(lod_setup, tmp_path):
    """The rebuild holds every node's record (and copies) in host memory: with a host
    budget that the segments fit but the rebuild does not, the densification is skipped
    (nothing written) and the run goes on."""
    from oocstore.gs.lod_densify import host_bytes

    path = tmp_path / "s"
    shutil.copytree(lod_setup[0], path)
    with Scene.open(path, readonly=True) as scene:
        need, n0 = host_bytes(scene), scene.num_gaussians
    cfg = GsTrainConfig(steps=6, mode="stream", lod_pixels=LOD_PX, width=W, height=H, seed=2,
                        cpu_budget=need, recipe={"densify_every": 3, "grow_grad2d": 1e-5})
    summary = run_gs_training(path, cfg)
    (r,) = summary["refinements"]
    assert r["growth"] == "skipped" and r["cloned"] == r["split"] == r["pruned"] == 0
    assert "the hierarchy's rebuild" in r["refused_because"] and r["blocks_written"] == 0
    assert summary["gaussians"]["end"] == n0 and summary["peak_cpu_charged_bytes"] <= need
    with Scene.open(path, readonly=True) as scene:
        assert scene.num_gaussians == n0


def test_a_photo_scene_builds_and_trains_with_its_cut_from_the_command_line(tmp_path, capsys):
    import json

    from oocstore.cli import main
    from oocstore.gs.synthetic import write_photo_dataset

    src = write_photo_dataset(tmp_path / "photos", "colmap", views=8, width=32, height=24,
                              gaussians=400, seed=1)
    assert main(["ingest", "scene", str(src), str(tmp_path / "scene"), "--test-every", "4",
                 "--quiet"]) == 0
    assert main(["gs-lod", "build", str(tmp_path / "scene"), str(tmp_path / "lod"),
                 "--fit-steps", "20", "--json"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert built["leaves"] == 400 and built["nodes"] > 400 and built["fit_steps"] == 20
    with Scene.open(tmp_path / "scene", readonly=True) as a, \
            Scene.open(tmp_path / "lod", readonly=True) as b:
        assert b.num_images == a.num_images and np.array_equal(b.read_image(3), a.read_image(3))
        assert list(b.test_views) == list(a.test_views)
    # the photo recipe densifies by default: off with a hierarchy, unless asked for
    assert main(["gs-train", str(tmp_path / "lod"), "--steps", "4", "--json", "--quiet",
                 "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["lod_pixels"] == 1.0 and out["target"] == "photos"
    assert out["recipe"]["densify_every"] == 0 and out["gaussians"]["end"] == built["nodes"]
    assert main(["gs-render", str(tmp_path / "lod"), "--out", str(tmp_path / "png"),
                 "--lod-pixels", "0", "--quiet"]) == 0
    assert len(list((tmp_path / "png").glob("*.png"))) == 2
    assert main(["verify", str(tmp_path / "lod"), "--quiet"]) == 0


def test_growth_with_a_hierarchy_beyond_an_explicit_budget_is_refused(lod_setup, tmp_path):
    """The first segment fits the budget exactly; the refinement's rebuilt cuts need more:
    its growth is refused, the run goes on, the scene stays valid."""
    from oocstore.gs.lod import hierarchy_problems

    out = {}
    for budget in (None, "min"):
        path = tmp_path / str(budget)
        shutil.copytree(lod_setup[0], path)
        gpu = None if budget is None else str(out[None]["min_device_budget"])
        cfg = GsTrainConfig(steps=6, mode="stream", lod_pixels=LOD_PX, width=W, height=H, seed=2,
                            gpu_budget=gpu, recipe={"densify_every": 3, "grow_grad2d": 1e-5})
        out[budget] = run_gs_training(path, cfg)
        with Scene.open(path, readonly=True) as scene:
            assert hierarchy_problems(scene.store) == []
    grown, capped = out[None]["refinements"][0], out["min"]["refinements"][0]
    assert grown["growth"] == "done" and grown["split"] + grown["cloned"] > 0
    # refused, pruning only; or skipped: a proposal's step batches are sized for its cuts'
    # sizes (the frustum counts need the written scene), above the running check's
    assert capped["growth"] in ("refused", "skipped")
    assert capped["split"] == capped["cloned"] == 0
    assert "device working set" in capped["refused_because"]
    assert out["min"]["device_budget"] == out[None]["min_device_budget"]
