"""``oocstore gs-train``: train a scene against targets rendered from itself.

The run, identical in every ``--mode`` except where the records live (see
:mod:`oocstore.gs.stream`):

1. **Cameras.** The scene's views at the render size (default: the largest size within
   162x105 on CPU keeping the aspect -- a quarter of the garden's 648x420 -- and the
   source size on CUDA), intrinsics scaled. Every ``holdout``-th view (default 8) is
   held out for evaluation; the rest train.
2. **Targets.** The *teacher* is the scene as it is when the run starts; each view's
   target image is rendered from its visible blocks once, before training (only the
   views the run uses).
3. **Student.** The teacher's parameters perturbed with a seeded, per-block noise (means
   by 0.5x each Gaussian's scale, log-scales by 0.2, opacity logits by 0.5, SH by 0.2),
   moments zeroed, written to the scene in one commit. Training is in place: after the
   run the scene holds the student (re-ingest to start over).
4. **Plan.** Visibility sets of the training views against the block bounds, a view
   order keeping consecutive views similar (``samplers.views.view_order``), cycled to
   ``--steps``; for ``--mode stream`` the Belady load/evict schedule inside the device
   budget, whose default is ``max(1/4 of the scene's record bytes, 1.25 x the largest
   view's working set)`` (logged).
5. **Steps.** Render the student's candidate rows, L1 loss against the target, backward,
   visibility-masked Adam (global step count), write back. ``checkpoint()`` at the end
   (and every ``--checkpoint-every`` steps) commits the scene. Every block read from
   the scene is checked against its chunk checksums first (``--no-verify-reads``: not).
6. **Evaluation.** PSNR over the held-out views, rendered from the committed scene.

This module is a composition root: it puts ``samplers.views`` and the store together.
"""

from __future__ import annotations

import logging
import math
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.errors import UsageError
from oocstore.units import format_size, parse_size

from . import layout
from .densify import DensifyConfig, GradStats, densify_scene

# torch and the modules using it are imported inside the functions that need them, so
# registering the subcommand keeps `oocstore ingest` and friends free of torch
from .cli import MODE_NAMES  # noqa: E402  (one definition, shared with the parser)

log = logging.getLogger(__name__)

# Default render size on CPU: the scene's size scaled to fit 162x105 (a quarter of the
# garden's 648x420 each way, within the 324x210 the reference is meant for): about 1.5 M
# (Gaussian, pixel) pairs and ~2 CPU-seconds per step for the garden's 77k visible
# Gaussians, so 200 steps take minutes; 324x210 costs ~3x that (--size 324x210).
CPU_MAX_SIZE = (162, 105)


@dataclass(frozen=True)
class GsTrainConfig:
    steps: int = 200
    mode: str = "stream"
    device: str = "cpu"
    gpu_budget: int | None = None  # device budget; None: the default rule
    cpu_budget: int | None = None
    seed: int = 0
    width: int | None = None  # render size; None: see the module docstring
    height: int | None = None
    holdout: int = 8
    randomness: float = 0.1
    checkpoint_every: int = 0
    prefetch_depth: int = 2
    perturb: float = 1.0  # multiplies the student's perturbation
    densify_every: int = 0  # refine every N steps (0: never); statistics from step 1
    verify_reads: bool = True  # check block checksums on every SSD read

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UsageError(f"--steps {self.steps} must be at least 1")
        if self.mode not in MODE_NAMES:
            raise UsageError(f"--mode {self.mode!r} unknown: use one of {', '.join(MODE_NAMES)}")
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"--device {self.device!r} unknown: use cpu or cuda")
        if self.holdout < 2:
            raise UsageError(f"holdout {self.holdout} must be >= 2 (every k-th view is held out)")


def render_size(cams, cfg: GsTrainConfig) -> tuple[int, int]:
    if cfg.width and cfg.height:
        return cfg.width, cfg.height
    w, h = cams.width, cams.height
    if cfg.device == "cpu":
        f = min(1.0, CPU_MAX_SIZE[0] / w, CPU_MAX_SIZE[1] / h)
        w, h = max(1, int(w * f)), max(1, int(h * f))
    return w, h


def scene_scale(cams) -> float:
    """3DGS's spatial learning-rate scale: 1.1 x the cameras' radius around their centre."""
    c = cams.centers
    r = float(np.linalg.norm(c - c.mean(0), axis=1).max()) if len(c) > 1 else 1.0
    return 1.1 * max(r, 1e-6)


def split_views(n: int, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """(train views, held-out views): every ``holdout``-th view, from view 0, is held out."""
    held = np.arange(0, n, holdout, dtype=np.int64)
    if n < 2:
        raise UsageError(f"the scene has {n} view(s): at least 2 are needed (one held out); "
                         "re-ingest with --views")
    train = np.setdiff1d(np.arange(n, dtype=np.int64), held)
    return train, held


def view_params(scene, blocks):
    import torch

    parts = [scene.read_block(int(b))[1][:, :scene.param_width] for b in blocks]
    if not parts:
        return torch.zeros(0, scene.param_width)
    return torch.from_numpy(np.concatenate(parts))


def render_views(scene, cams, vis_sets, views, device) -> list:
    """Images [H, W, 3] of ``views``, each rendered from its visible blocks (no autograd)."""
    import torch

    from .render import render_on

    out = []
    with torch.no_grad():
        for v in views:
            p = view_params(scene, vis_sets[v]).to(device)
            out.append(render_on(p, scene.sh_degree, torch.from_numpy(cams.viewmats[v]),
                                 torch.from_numpy(cams.Ks[v]), cams.width, cams.height).image)
    return out


def perturb_scene(scene, seed: int, strength: float = 1.0) -> None:
    """Write the student: seeded per-block noise on the teacher, moments zeroed (one commit)."""
    p = scene.param_width
    k = layout.sh_slice(scene.sh_degree)
    with scene.writer() as w:
        for b in range(scene.num_blocks):
            ids, rec = scene.read_block(b)
            if not len(ids):
                continue
            g = np.random.default_rng([seed, b])
            prm = rec[:, :p].copy()
            scale = np.exp(prm[:, layout.LOG_SCALES]).max(1, keepdims=True)
            prm[:, layout.MEANS] += strength * 0.5 * scale * g.standard_normal((len(ids), 3))
            prm[:, layout.LOG_SCALES] += strength * 0.2 * g.standard_normal((len(ids), 3))
            prm[:, layout.OPACITY] += strength * 0.5 * g.standard_normal((len(ids), 1))
            prm[:, k] += strength * 0.2 * g.standard_normal((len(ids), k.stop - k.start))
            w.write_block(b, ids, layout.make_records(prm))
        w.commit()


def make_plan(scene, cams, train_views, steps: int, seed: int, randomness: float):
    from samplers.views import view_order, visibility_sets

    from .stream import TrainPlan

    vis_sets = visibility_sets(scene.block_bounds, cams)
    sub = [vis_sets[v] for v in train_views]
    order = train_views[view_order(sub, seed=seed, randomness=randomness)]
    views = np.resize(order, steps)
    return TrainPlan(views, vis_sets), vis_sets


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_gs_training(path, cfg: GsTrainConfig, *,
                    progress: Callable[[int], None] | None = None) -> dict:
    """Train the scene at ``path``; returns the JSON-able summary."""
    import torch

    from .adam import AdamConfig
    from .scene import Scene
    from .stream import MODES, TrainPlan, allocator_slack, check_device_budget, largest_view

    device = torch.device(cfg.device)
    slack = allocator_slack(device)  # charged by a streaming run on CUDA
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but torch sees no CUDA device: use --device cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(cfg.seed)
    with Scene.open(path, verify_reads=cfg.verify_reads) as scene:
        w, h = render_size(scene.cameras, cfg)
        cams = scene.cameras.resized(w, h)
        train_views, held = split_views(len(cams), cfg.holdout)
        plan, vis_sets = make_plan(scene, cams, train_views, cfg.steps, cfg.seed, cfg.randomness)
        start_gaussians = scene.num_gaussians
        scene_bytes = start_gaussians * scene.record_bytes
        view, need = largest_view(scene, plan)
        if cfg.gpu_budget is None:
            dev_budget = max(scene_bytes // 4, int(math.ceil(1.25 * need)) + slack)
            log.info("device budget %s (default: max(1/4 of %s, 1.25 x view %d's working set %s))",
                     format_size(dev_budget), format_size(scene_bytes), view, format_size(need))
        else:
            dev_budget = parse_size(cfg.gpu_budget, what="--gpu-budget")
        if cfg.mode != "all-on-device":
            check_device_budget(scene, plan, dev_budget, slack)
        budget = MemoryBudget(gpu=None if cfg.mode == "all-on-device" else dev_budget,
                              cpu=cfg.cpu_budget)
        acct = BudgetAccountant(budget)
        extra = {}
        if cfg.mode == "stream":
            extra = {"prefetch_depth": cfg.prefetch_depth}

        used = np.unique(np.concatenate([plan.views, held]))  # views the run renders
        targets = dict(zip(used.tolist(), render_views(scene, cams, vis_sets, used, device)))
        perturb_scene(scene, cfg.seed, cfg.perturb)
        psnr_start = _eval_psnr(scene, cams, vis_sets, held, targets, device)

        adam = AdamConfig()
        sscale = scene_scale(cams)
        lr = adam.column_lrs(scene.sh_degree, sscale)
        stats = GradStats(scene.next_id) if cfg.densify_every else None
        refine = cfg.densify_every or cfg.steps
        times, losses, refinements, traffic, peaks = [], [], [], {}, []
        memory: dict = {}  # device memory per step, on CUDA (see train_steps)
        views_all = plan.views
        for first in range(0, cfg.steps, refine):
            n = min(refine, cfg.steps - first)
            if first:  # a refinement changed the blocks: visibility against the new bounds
                refinements.append(densify_scene(scene, stats, sscale, DensifyConfig(),
                                                 cfg.seed + first))
                vis_sets = replan(scene, cams)
            seg = TrainPlan(views_all[first:first + n], vis_sets)
            if first and cfg.gpu_budget is None and cfg.mode != "all-on-device":
                # the default budget follows the scene as densification grows it
                _, need_now = largest_view(scene, seg)
                grown = max(scene.num_gaussians * scene.record_bytes // 4,
                            int(math.ceil(1.25 * need_now)) + slack)
                if grown > dev_budget:
                    log.info("device budget raised to %s after densification", format_size(grown))
                    dev_budget = grown
                    peaks.append(acct.peak("gpu"))
                    acct = BudgetAccountant(MemoryBudget(gpu=dev_budget, cpu=cfg.cpu_budget))
            if cfg.mode != "all-on-device":
                check_device_budget(scene, seg, dev_budget, slack)
            if cfg.mode == "stream":
                seg.schedule = schedule_for(scene, seg, dev_budget, slack)
            kw = dict(device=device, accountant=acct, adam=adam, lr=lr, step_offset=first)
            if cfg.mode == "stream":
                kw.update(device_budget=dev_budget, prefetch_depth=cfg.prefetch_depth)
            if device.type == "cuda":  # what the device holds before the store exists
                memory["outside"] = torch.cuda.memory_allocated()
            with MODES[cfg.mode](scene, seg, **kw) as store:
                t, lo = train_steps(store, scene.sh_degree, cams, targets, n, device=device,
                                    memory=memory,
                                    checkpoint_every=cfg.checkpoint_every, progress=progress,
                                    stats=stats)
                store.checkpoint()
                for key, v in store.stats().items():  # counters add up over segments
                    summed = key.startswith(("bytes_", "block_")) or key == "stall_s"
                    traffic[key] = traffic.get(key, 0) + v if summed else v
            times += t
            losses += lo
        stats_out = dict(traffic, cache_hit_rate=1.0 - traffic["block_ssd_misses"]
                         / max(traffic["block_accesses"], 1))
        end_gaussians = scene.num_gaussians
        final_psnr = _eval_psnr(scene, cams, vis_sets, held, targets, device)
    peak_gpu = (max(torch.cuda.max_memory_allocated(), memory.get("peak", 0))
                if device.type == "cuda" else max(peaks + [acct.peak("gpu")]))
    gpu_parts = ({"peak_gpu_held_bytes": int(memory.get("held", 0)),
                  "gpu_outside_store_bytes": int(memory.get("outside", 0)),
                  "gpu_library_state_bytes": int(memory.get("lazy", 0)),
                  "gpu_library_state_last_bytes": int(memory.get("lazy_last", 0)),
                  "render_workspace_bytes": int(memory.get("workspace", 0))}
                 if device.type == "cuda" else {})
    return {
        "mode": cfg.mode, "device": cfg.device, "steps": cfg.steps, "seed": cfg.seed,
        "verify_reads": cfg.verify_reads,
        "render_size": [w, h], "train_views": len(train_views), "heldout_views": len(held),
        "psnr": final_psnr, "psnr_start": psnr_start,
        "loss_first": losses[0], "loss_last": losses[-1],
        "step_time_s": statistics.median(times[1:] if len(times) > 1 else times),
        **stats_out, "refinements": refinements,
        "bytes_moved_per_step": (stats_out["bytes_h2d"] + stats_out["bytes_d2h"]) / cfg.steps,
        "peak_rss_bytes": peak_rss_bytes(), "peak_gpu_bytes": int(peak_gpu), **gpu_parts,
        "gaussians": {"start": int(start_gaussians), "end": int(end_gaussians)},
        "scene_bytes": int(scene_bytes), "largest_view_working_set": int(need), **extra,
        **({"device_budget": dev_budget} if cfg.mode != "all-on-device" else {}),
    }


def schedule_for(scene, plan: TrainPlan, dev_budget: int, slack: int = 0):
    """The Belady schedule of ``plan`` inside the device budget less the step batch and
    the allocator ``slack`` (:func:`~oocstore.gs.stream.allocator_slack`)."""
    from samplers.views import belady_block_schedule

    from .stream import block_bytes, step_batch_bytes

    counts = scene.block_counts
    max_rows = max(int(counts[plan.vis_sets[v]].sum()) for v in np.unique(plan.views))
    return belady_block_schedule(plan.views, plan.vis_sets, block_bytes(scene),
                                 dev_budget - step_batch_bytes(max_rows, scene) - slack)


def replan(scene, cams) -> list[np.ndarray]:
    """Visibility sets of every view against the blocks after a refinement."""
    from samplers.views import visibility_sets

    return visibility_sets(scene.block_bounds, cams)


def train_steps(store, sh_degree: int, cams, targets: dict, steps: int, *, device,
                checkpoint_every: int = 0, progress=None,
                stats: GradStats | None = None,
                memory: dict | None = None) -> tuple[list[float], list[float]]:
    """``steps`` training steps through ``store`` (any mode): render the step's rows, L1
    loss against the view's target, backward, masked Adam. Returns (step times, losses).
    On CUDA, ``memory`` (a dict) collects ``held`` — the most device memory allocated
    when a step's batch is ready, less ``memory["outside"]`` (what was allocated before
    the store was made: the target images, library workspaces such as cuBLAS's) and,
    from the second step, less ``memory["lazy"]`` (state libraries made during the first
    step and kept: what is allocated after it beyond the outside and the store's
    resident slots; ``lazy_last`` is the same after the last step): the store's slots
    and step batch — and ``workspace`` — the most the rasterizer's forward and backward
    allocated on top."""
    import torch

    from .render import render_on

    times, losses = [], []
    device = torch.device(device)
    track = memory is not None and device.type == "cuda"
    for i in range(steps):
        t0 = time.perf_counter()
        batch = store.begin_step()
        if track:
            held = torch.cuda.memory_allocated()
            before = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        v = batch.view
        out = render_on(batch.params, sh_degree, torch.from_numpy(cams.viewmats[v]),
                        torch.from_numpy(cams.Ks[v]), cams.width, cams.height)
        loss = torch.abs(out.image - targets[v]).mean()
        loss.backward()
        if stats is not None:
            g = out.means2d.grad.reshape(-1, 2)
            stats.add(batch.ids.cpu().numpy(), g.cpu().numpy(), out.visible.cpu().numpy(),
                      cams.width, cams.height)
        store.end_step(batch, out.visible)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if track:
            peak = torch.cuda.max_memory_allocated()
            memory["held"] = max(memory.get("held", 0), held - memory.get("outside", 0)
                                 - (memory.get("lazy", 0) if i else 0))
            memory["workspace"] = max(memory.get("workspace", 0), peak - held)
            memory["peak"] = max(memory.get("peak", 0), peak, before)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
        # Drop this step's batch, image and graph now: held until the names are rebound,
        # they would sit beside the next step's batch (two batches on the device at once).
        del batch, out, loss
        if track:
            # Between steps the device holds the store's slots and what existed before
            # it; the rest is state libraries made on first use (the rasterizer's,
            # autograd's): measured after the first step, charged to neither, and
            # checked again after the last one (growth there would be a leak).
            rest = torch.cuda.memory_allocated() - memory.get("outside", 0) \
                - store.device_resident_bytes()
            if i == 0:
                memory["lazy"] = max(memory.get("lazy", 0), rest)
            memory["lazy_last"] = rest
        if checkpoint_every and (i + 1) % checkpoint_every == 0:
            store.checkpoint()
        if progress:
            progress(1)
    return times, losses


def _eval_psnr(scene, cams, vis_sets, held, targets, device) -> float:
    from .render import psnr

    imgs = render_views(scene, cams, vis_sets, held, device)
    return float(np.mean([psnr(img.clamp(0, 1), targets[int(v)].clamp(0, 1))
                          for v, img in zip(held, imgs)]))


# -- command line ------------------------------------------------------------------------

def cmd_gs_train(args) -> int:
    """``oocstore gs-train`` (registered by :mod:`oocstore.gs.cli`, which imports this
    module only when the command runs: it needs torch)."""
    import json
    import sys

    width = height = None
    if args.size:
        try:
            width, height = (int(x) for x in args.size.lower().split("x"))
        except ValueError:
            raise UsageError(f"--size {args.size!r} is not WxH (e.g. 162x105)") from None
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise UsageError(f"--threads {args.threads} must be at least 1")
        torch.set_num_threads(args.threads)
    cpu_budget = None if args.cpu_budget is None else parse_size(args.cpu_budget, what="--cpu-budget")
    cfg = GsTrainConfig(steps=args.steps, mode=args.mode, device=args.device,
                        gpu_budget=args.gpu_budget, cpu_budget=cpu_budget, seed=args.seed,
                        width=width, height=height, checkpoint_every=args.checkpoint_every,
                        densify_every=args.densify_every,
                        verify_reads=not args.no_verify_reads)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc=f"gs-train {args.mode}", unit="step", file=sys.stderr)
    try:
        summary = run_gs_training(args.scene, cfg, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"gs-train {summary['mode']} on {summary['device']}: {summary['steps']} steps, "
              f"PSNR {summary['psnr_start']:.2f} -> {summary['psnr']:.2f} dB on "
              f"{summary['heldout_views']} held-out views, median step "
              f"{summary['step_time_s']:.3f} s")
        print(f"  moved {format_size(summary['bytes_moved_per_step'])} per step (h2d "
              f"{format_size(summary['bytes_h2d'])}, d2h {format_size(summary['bytes_d2h'])}), "
              f"SSD read {format_size(summary['bytes_ssd_read'])}, written "
              f"{format_size(summary['bytes_ssd_written'])}, cache hit rate "
              f"{summary['cache_hit_rate']:.1%}, peak RSS {format_size(summary['peak_rss_bytes'])}")
    return 0
