"""``oocstore gs-train``: train a scene from its photographs (or, for scale tests, from
targets rendered from itself).

**Targets** (``--target``). A scene ingested from photographs (``scene.has_images``)
trains against its photos: ``photos``, the default for such scenes. ``synthetic`` (the
default for scenes without images) is the scale-test set-up: the *teacher* is the
scene as the run starts, each used view's target is rendered from it once, and the
*student* -- the teacher perturbed with seeded per-block noise (means by 0.5x each
Gaussian's scale, log-scales by 0.2, opacity logits by 0.5, SH by 0.2), moments zeroed
-- is written to the scene and trained in place.

The run, identical in every ``--mode`` except where the records live (see
:mod:`oocstore.gs.stream`):

1. **Cameras and views.** Photos: the stored images' size and the scene's own split
   (``scene.train_views`` / ``scene.test_views``). Synthetic: the views at the render
   size (default: the largest size within 162x105 on CPU keeping the aspect, the source
   size on CUDA), every ``holdout``-th view (default 8) held out.
2. **Plan.** Visibility sets of the training views against the block bounds, a view
   order keeping consecutive views similar (``samplers.views.view_order``), cycled to
   ``--steps``; the run is cut into *segments* at every densification, opacity reset
   and evaluation (each segment one store over the current blocks). For ``--mode
   stream``: the Belady load/evict schedule inside the device budget, whose default is
   ``max(1/4 of the scene's record bytes, 1.25 x the largest view's working set)``
   (logged), raised as densification grows the scene.
3. **Checks, before any write.** Flags, device, data (the image size against the SSIM
   window, non-empty splits), the device working set of the largest view, and every
   budget charge of every segment before the first densification (the store's, the
   image prefetch buffers or the synthetic targets, the step's target image) are checked
   on a scratch ledger. A run refused here leaves the scene byte-identical. Each
   densification vets its layout against the segments it trains, before it writes.
4. **Steps.** Render the step's candidate rows at the active SH degree (on the random
   or the scene's background), loss against the target image (photos: streamed by
   :class:`~oocstore.gs.images.ImageStream`, a few images at a time inside the CPU
   budget), backward, visibility-masked Adam with the step's learning rates (global step
   count), write back. The recipe's schedules (:mod:`oocstore.gs.recipe`) decide the SH
   degree, the position rate, densification (inside the streamer: blocks gain and lose
   records, :mod:`oocstore.gs.densify`; growth that would not fit the budgets is refused
   before it is written) and opacity resets. ``checkpoint()`` ends every segment (and
   runs every ``--checkpoint-every`` steps) and commits the scene. Every block read from
   the scene is checked against its chunk checksums (``--no-verify-reads``: not).
5. **Evaluation.** PSNR and SSIM over the held-out views, rendered from the committed
   scene, before training, every ``--eval-every`` steps (before that step's
   densification or reset) and at the end. LPIPS needs network weights that are not
   available offline: not reported.

This module is a composition root: it puts ``samplers.views`` and the store together.
"""

from __future__ import annotations

import logging
import math
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.errors import BudgetError, UsageError
from oocstore.units import format_size, parse_size

from . import layout
from .densify import GradStats, densify_scene, reset_opacity_scene

# torch and the modules using it are imported inside the functions that need them, so
# registering the subcommand keeps `oocstore ingest` and friends free of torch
from .cli import MODE_NAMES  # noqa: E402  (one definition, shared with the parser)

log = logging.getLogger(__name__)

# Default render size on CPU: the scene's size scaled to fit 162x105 (a quarter of the
# garden's 648x420 each way, within the 324x210 the reference is meant for): about 1.5 M
# (Gaussian, pixel) pairs and ~2 CPU-seconds per step for the garden's 77k visible
# Gaussians, so 200 steps take minutes; 324x210 costs ~3x that (--size 324x210).
CPU_MAX_SIZE = (162, 105)


TARGETS = ("photos", "synthetic")
LPIPS_NOTE = "LPIPS not computed: its network weights are not available offline"


@dataclass(frozen=True)
class GsTrainConfig:
    steps: int = 200
    mode: str = "stream"
    device: str = "cpu"
    gpu_budget: int | None = None  # device budget; None: the default rule
    cpu_budget: int | None = None
    seed: int = 0
    width: int | None = None  # render size (synthetic); None: see the module docstring
    height: int | None = None
    holdout: int = 8  # synthetic: every holdout-th view is held out
    randomness: float = 0.1
    checkpoint_every: int = 0
    prefetch_depth: int = 2
    perturb: float = 1.0  # multiplies the student's perturbation
    densify_every: int | None = None  # kept for callers; same as recipe["densify_every"]
    verify_reads: bool = True  # check block checksums on every SSD read
    target: str | None = None  # photos | synthetic; None: photos when the scene has images
    eval_every: int = 0  # held-out evaluation every N steps (0: start and end only)
    sh_degree: int | None = None  # highest SH degree trained; None: the scene's
    recipe: dict = field(default_factory=dict)  # explicit recipe values (see .recipe)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UsageError(f"--steps {self.steps} must be at least 1")
        if self.mode not in MODE_NAMES:
            raise UsageError(f"--mode {self.mode!r} unknown: use one of {', '.join(MODE_NAMES)}")
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"--device {self.device!r} unknown: use cpu or cuda")
        if self.holdout < 2:
            raise UsageError(f"holdout {self.holdout} must be >= 2 (every k-th view is held out)")
        if self.target is not None and self.target not in TARGETS:
            raise UsageError(f"--target {self.target!r} unknown: use photos or synthetic")
        for k in ("eval_every", "checkpoint_every"):
            if getattr(self, k) < 0:
                raise UsageError(f"--{k.replace('_', '-')} {getattr(self, k)} must be >= 0")
        if self.prefetch_depth < 1:
            raise UsageError(f"--prefetch-depth {self.prefetch_depth} must be at least 1")

    def recipe_values(self) -> dict:
        given = dict(self.recipe)
        if self.densify_every is not None:
            given.setdefault("densify_every", self.densify_every)
        return given


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


def view_params(scene, blocks, width: int | None = None):
    import torch

    width = scene.param_width if width is None else width
    parts = [scene.read_block(int(b))[1][:, :width] for b in blocks]
    if not parts:
        return torch.zeros(0, width)
    return torch.from_numpy(np.concatenate(parts))


def render_views(scene, cams, vis_sets, views, device, *, sh_degree: int | None = None,
                 background=None) -> list:
    """Images [H, W, 3] of ``views``, each rendered from its visible blocks (no autograd)."""
    return [render_view(scene, cams, vis_sets[v], v, device, sh_degree=sh_degree,
                        background=background) for v in views]


def render_view(scene, cams, vis, v: int, device, *, sh_degree: int | None = None,
                background=None):
    """One view [H, W, 3] rendered from the blocks ``vis`` (no autograd)."""
    import torch

    from .render import render_on

    deg = scene.sh_degree if sh_degree is None else sh_degree
    with torch.no_grad():
        p = view_params(scene, vis, layout.param_width(deg)).to(device)
        return render_on(p, deg, torch.from_numpy(cams.viewmats[v]),
                         torch.from_numpy(cams.Ks[v]), cams.width, cams.height,
                         background=background).image


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
    from oocstore.samplers.views import view_order, visibility_sets

    from .stream import TrainPlan

    vis_sets = visibility_sets(scene.block_bounds, cams)
    sub = [vis_sets[v] for v in train_views]
    order = train_views[view_order(sub, seed=seed, randomness=randomness)]
    views = np.resize(order, steps)
    return TrainPlan(views, vis_sets), vis_sets


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class _Layout:
    """What the stores' budget rules read of a scene, for a layout not yet written
    (a refinement's proposal): counts, bounds and the record geometry."""

    def __init__(self, scene, counts: np.ndarray, bounds: np.ndarray):
        self.block_counts = np.asarray(counts, dtype=np.int64)
        self.block_bounds = bounds
        self.num_blocks = len(self.block_counts)
        self.num_gaussians = int(self.block_counts.sum())
        self.block_capacity = scene.block_capacity
        self.record_bytes = scene.record_bytes
        self.param_width = scene.param_width
        self.disk_row_bytes = scene.disk_row_bytes


def spans_from(edges: list[int], i: int, recipe) -> list[tuple[int, int]]:
    """The segments from ``edges[i]`` up to the next densification (exclusive): the ones
    trained on one layout of the blocks."""
    out = [(edges[i], edges[i + 1])]
    for j in range(i + 1, len(edges) - 1):
        if recipe.refine_after(edges[j]):
            break
        out.append((edges[j], edges[j + 1]))
    return out


def segment_edges(steps: int, recipe, eval_every: int) -> list[int]:
    """Step counts where the run pauses (0, every densification, reset or evaluation, and
    ``steps``): a segment runs ``edges[i]`` -> ``edges[i + 1]``."""
    cuts = [s for s in range(1, steps) if recipe.refine_after(s) or recipe.reset_after(s)
            or (eval_every and s % eval_every == 0)]
    return [0, *cuts, steps]


@dataclass
class _Run:
    """The budget rules of one run, shared by the up-front check and the growth check."""

    cfg: GsTrainConfig
    cams: object
    train_views: np.ndarray
    views_all: np.ndarray
    device: object
    slack: int  # allocator slack, on CUDA
    target_bytes: int  # the step's target image on the device
    dev_budget: int | None  # None: all-on-device
    default_budget: bool

    @property
    def extra(self) -> int:
        """Device bytes outside the block slots and the step batch."""
        return self.slack + self.target_bytes

    def grown_budget(self, scene, plan) -> int:
        from .stream import largest_view

        _, need = largest_view(scene, plan)
        return max(scene.num_gaussians * scene.record_bytes // 4,
                   int(math.ceil(1.25 * need)) + self.extra)

    def segment(self, scene, vis_sets, first: int, last: int):
        """The plan of steps ``first`` -> ``last`` (with its schedule when streaming)."""
        from .stream import TrainPlan

        seg = TrainPlan(self.views_all[first:last], vis_sets)
        if self.cfg.mode == "stream":
            seg.schedule = schedule_for(scene, seg, self.dev_budget, self.extra)
        return seg

    def check(self, scene, vis_sets, first: int, last: int, acct) -> None:
        """BudgetError unless the store of steps ``first`` -> ``last`` fits on top of what
        ``acct`` already holds (charged on a scratch basis, then released)."""
        from .stream import MODES, check_device_budget

        if self.cfg.mode != "all-on-device":
            from .stream import TrainPlan

            check_device_budget(scene, TrainPlan(self.views_all[first:last], vis_sets),
                                self.dev_budget, self.extra)
        seg = self.segment(scene, vis_sets, first, last)
        held = []
        try:
            for tier, nbytes, what, fix in MODES[self.cfg.mode].requirements(
                    scene, seg, device=self.device, prefetch_depth=self.cfg.prefetch_depth):
                held.append(acct.charge(tier, nbytes, what, fix=fix))
        finally:
            for c in held:
                c.release()

    def check_spans(self, scene, vis_sets, spans, acct) -> None:
        """:meth:`check` every segment of ``spans`` in order, the default device budget
        raised before each as the run raises it (restored afterwards)."""
        from .stream import TrainPlan

        saved, saved_budget = self.dev_budget, acct.budget
        try:
            for first, last in spans:
                if self.default_budget and self.cfg.mode != "all-on-device":
                    self.dev_budget = max(self.dev_budget, self.grown_budget(
                        scene, TrainPlan(self.views_all[first:last], vis_sets)))
                    acct.budget = MemoryBudget(gpu=self.dev_budget, cpu=saved_budget.cpu)
                self.check(scene, vis_sets, first, last, acct)
        finally:
            self.dev_budget, acct.budget = saved, saved_budget

    def admit(self, scene, acct, spans):
        """The densification vetting: ``admit(counts, bounds)`` -> None or why not, for
        the segments ``spans`` the refined layout trains (until the next refinement)."""
        from oocstore.samplers.views import visibility_sets

        def admit(counts, bounds):
            lay = _Layout(scene, counts, bounds)
            vis = visibility_sets(bounds, self.cams)
            try:
                self.check_spans(lay, vis, spans, acct)
            except BudgetError as err:
                return str(err)
            return None

        return admit


def run_gs_training(path, cfg: GsTrainConfig, *,
                    progress: Callable[[int], None] | None = None) -> dict:
    """Train the scene at ``path``; returns the JSON-able summary."""
    import torch

    from .adam import AdamConfig
    from .images import ImageStream, image_charge
    from .recipe import resolve
    from .scene import Scene
    from .stream import MODES, allocator_slack, largest_view

    t_run = time.perf_counter()
    stage = {k: 0.0 for k in ("plan", "checks", "targets", "train", "checkpoint", "densify",
                              "opacity_reset", "eval", "image_wait")}
    device = torch.device(cfg.device)
    slack = allocator_slack(device)  # charged by a streaming run on CUDA
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but torch sees no CUDA device: use --device cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(cfg.seed)
    with Scene.open(path, verify_reads=cfg.verify_reads) as scene:
        t0 = time.perf_counter()
        has_images = bool(getattr(scene, "has_images", False))
        target = cfg.target or ("photos" if has_images else "synthetic")
        photos = target == "photos"
        if photos and not has_images:
            raise UsageError(f"--target photos but the scene {scene.path} holds no images: "
                             "ingest it from a COLMAP model or a transforms.json, or use "
                             "--target synthetic")
        recipe = resolve(cfg.steps, synthetic=not photos, **cfg.recipe_values())
        sh_max = scene.sh_degree if cfg.sh_degree is None else cfg.sh_degree
        if not 0 <= sh_max <= scene.sh_degree:
            raise UsageError(f"--sh-degree {sh_max} must lie in 0..{scene.sh_degree} (the "
                             "scene's SH degree; re-ingest with --sh-degree for more)")
        if photos:
            w, h = (int(x) for x in scene.image_size)
            if cfg.width and (cfg.width, cfg.height) != (w, h):
                raise UsageError(f"--size {cfg.width}x{cfg.height} differs from the stored "
                                 f"images' {w}x{h}: photos train at their stored size (re-ingest "
                                 "with --images-downscale), drop --size")
            cams = scene.cameras
            if (cams.width, cams.height) != (w, h):
                cams = cams.resized(w, h)
            train_views = np.asarray(scene.train_views, dtype=np.int64)
            held = np.asarray(scene.test_views, dtype=np.int64)
            if not len(train_views) or not len(held):
                raise UsageError(f"the scene {scene.path} has {len(train_views)} training and "
                                 f"{len(held)} held-out views: both must be non-empty "
                                 "(re-ingest with --test-every)")
            background = scene.background
        else:
            w, h = render_size(scene.cameras, cfg)
            cams = scene.cameras.resized(w, h)
            train_views, held = split_views(len(cams), cfg.holdout)
            background = None
        if recipe.ssim_lambda > 0 and min(w, h) < 11:
            raise UsageError(f"images of {w}x{h} are smaller than the 11x11 SSIM window: "
                             "use --ssim-lambda 0 or larger images")
        plan, vis_sets = make_plan(scene, cams, train_views, cfg.steps, cfg.seed, cfg.randomness)
        edges = segment_edges(cfg.steps, recipe, cfg.eval_every)
        start_gaussians = scene.num_gaussians
        scene_bytes = start_gaussians * scene.record_bytes
        target_bytes = w * h * 3 * 4  # float32 target on the device
        run = _Run(cfg, cams, train_views, plan.views, device, slack, target_bytes, None,
                   cfg.gpu_budget is None)
        view, need = largest_view(scene, plan)
        if cfg.gpu_budget is None:
            dev_budget = max(scene_bytes // 4, int(math.ceil(1.25 * need)) + run.extra)
            log.info("device budget %s (default: max(1/4 of %s, 1.25 x view %d's working set %s))",
                     format_size(dev_budget), format_size(scene_bytes), view, format_size(need))
        else:
            dev_budget = parse_size(cfg.gpu_budget, what="--gpu-budget")
        run.dev_budget = dev_budget
        stage["plan"] += time.perf_counter() - t0

        # -- every check before the first write ---------------------------------------
        t0 = time.perf_counter()
        budget = MemoryBudget(gpu=None if cfg.mode == "all-on-device" else dev_budget,
                              cpu=cfg.cpu_budget)
        acct = BudgetAccountant(budget)
        used = np.unique(np.concatenate([plan.views, held]))  # views a synthetic run renders
        if photos:
            data = [image_charge(scene, cfg.prefetch_depth)]
        else:
            data = [("cpu", len(used) * target_bytes, f"{len(used)} synthetic target images",
                     "raise --cpu-budget, or use a smaller --size")]
        data.append(("gpu", target_bytes, "the step's target image",
                     "raise --gpu-budget, or use smaller images"))
        if cfg.mode != "all-on-device":  # the largest view first: the most telling refusal
            from .stream import check_device_budget

            check_device_budget(scene, plan, dev_budget, run.extra)
        held_charges = []
        try:
            for tier, nbytes, what, fix in data:
                if not (photos and tier == "cpu"):  # the image stream charges its own
                    held_charges.append(acct.charge(tier, nbytes, what, fix=fix))
            # the image stream's charge too (taken again by the stream once it starts)
            pre = acct.charge(*data[0][:3], fix=data[0][3]) if photos else None
            try:
                # every segment before the first densification (later ones: vetted
                # with the refined layout before each densification writes)
                run.check_spans(scene, vis_sets, spans_from(edges, 0, recipe), acct)
            finally:
                if pre is not None:
                    pre.release()
        except BaseException:
            for c in held_charges:
                c.release()
            raise
        stage["checks"] += time.perf_counter() - t0

        # -- targets ----------------------------------------------------------------
        t0 = time.perf_counter()
        images = None
        targets: dict = {}
        bg_eval = None if background is None else torch.tensor(background, dtype=torch.float32,
                                                               device=device)
        if photos:
            images = ImageStream(scene, plan.views, accountant=acct, depth=cfg.prefetch_depth)

            def target_of(view, img=None):
                img = images.next(view) if img is None else img
                return torch.from_numpy(np.ascontiguousarray(img)).to(device).float().div_(255)

            def eval_target(v):
                return target_of(v, images.read(v))
        else:
            targets = {int(v): img for v, img in
                       zip(used.tolist(), render_views(scene, cams, vis_sets, used, device))}

            def target_of(view):
                return targets[int(view)]

            eval_target = target_of
            perturb_scene(scene, cfg.seed, cfg.perturb)  # the first write
        stage["targets"] += time.perf_counter() - t0

        def evaluate(step):
            t = time.perf_counter()
            out = _evaluate(scene, cams, vis_sets, held, eval_target, device,
                            sh_degree=sh_max, background=bg_eval)
            stage["eval"] += time.perf_counter() - t
            out["step"] = step
            evals.append(out)
            log.info("step %d: held-out PSNR %.2f dB, SSIM %s", step, out["psnr"], out["ssim"])
            return out

        evals: list = []
        adam = AdamConfig(means=recipe.means_lr)
        sscale = scene_scale(cams)
        lr = adam.column_lrs(scene.sh_degree, sscale)

        def lr_at(step):  # the position rate decays with the global step
            out = lr.clone()
            out[layout.MEANS] = recipe.means_lr_at(step - 1, cfg.steps) * sscale
            return out

        stats = GradStats(scene.next_id) if recipe.densify_every else None
        times, losses, refinements, traffic = [], [], [], {}
        resets: list = []
        curve = [[0, int(start_gaussians)]]
        memory: dict = {}  # device memory per step, on CUDA (see train_steps)
        loop = dict(sh_max=sh_max, recipe=recipe, seed=cfg.seed, background=background)
        try:
            evaluate(0)
            for i, (first, last) in enumerate(zip(edges[:-1], edges[1:])):
                if first:
                    if cfg.eval_every and first % cfg.eval_every == 0:
                        evaluate(first)
                    if recipe.refine_after(first):
                        t = time.perf_counter()
                        r = densify_scene(scene, stats, sscale, recipe.densify,
                                          cfg.seed + first,
                                          prune_large=recipe.prune_large_after(first),
                                          admit=run.admit(scene, acct,
                                                          spans_from(edges, i, recipe)))
                        r["step"] = first
                        refinements.append(r)
                        curve.append([first, int(scene.num_gaussians)])
                        vis_sets = replan(scene, cams)
                        stage["densify"] += time.perf_counter() - t
                    if recipe.reset_after(first):
                        t = time.perf_counter()
                        resets.append([first, reset_opacity_scene(scene, recipe.reset_value)])
                        stage["opacity_reset"] += time.perf_counter() - t
                    if run.default_budget and cfg.mode != "all-on-device":
                        # the default budget follows the scene as densification grows it
                        from .stream import TrainPlan

                        grown = run.grown_budget(scene, TrainPlan(plan.views[first:last], vis_sets))
                        if grown > run.dev_budget:
                            log.info("device budget raised to %s after densification",
                                     format_size(grown))
                            run.dev_budget = grown
                            acct.budget = MemoryBudget(gpu=grown, cpu=cfg.cpu_budget)
                    run.check(scene, vis_sets, first, last, acct)
                seg = run.segment(scene, vis_sets, first, last)
                kw = dict(device=device, accountant=acct, adam=adam, lr=lr, lr_at=lr_at,
                          step_offset=first)
                if cfg.mode == "stream":
                    kw.update(device_budget=run.dev_budget, prefetch_depth=cfg.prefetch_depth)
                if device.type == "cuda":  # what the device holds before the store exists
                    memory["outside"] = torch.cuda.memory_allocated()
                with MODES[cfg.mode](scene, seg, **kw) as store:
                    t = time.perf_counter()
                    ts, lo = train_steps(store, scene.sh_degree, cams, target_of, last - first,
                                         device=device, memory=memory,
                                         checkpoint_every=cfg.checkpoint_every,
                                         progress=progress, stats=stats, **loop)
                    stage["train"] += time.perf_counter() - t
                    t = time.perf_counter()
                    store.checkpoint()
                    stage["checkpoint"] += time.perf_counter() - t
                    for key, v in store.stats().items():  # counters add up over segments
                        summed = key.startswith(("bytes_", "block_")) or key == "stall_s"
                        traffic[key] = traffic.get(key, 0) + v if summed else v
                times += ts
                losses += lo
            final = evaluate(cfg.steps)
        finally:
            if images is not None:
                stage["image_wait"] = images.wait_seconds
                images.close()
            for c in held_charges:
                c.release()
        stats_out = dict(traffic, cache_hit_rate=1.0 - traffic["block_ssd_misses"]
                         / max(traffic["block_accesses"], 1))
        end_gaussians = scene.num_gaussians
        if curve[-1][0] != cfg.steps:
            curve.append([cfg.steps, int(end_gaussians)])
        images_bytes = int(scene.images_bytes) if has_images else 0
        image_buffers = int(image_charge(scene, cfg.prefetch_depth)[1]) if photos else 0
    peak_gpu = (max(torch.cuda.max_memory_allocated(), memory.get("peak", 0))
                if device.type == "cuda" else acct.peak("gpu"))
    gpu_parts = ({"peak_gpu_held_bytes": int(memory.get("held", 0)),
                  "gpu_outside_store_bytes": int(memory.get("outside", 0)),
                  "gpu_library_state_bytes": int(memory.get("lazy", 0)),
                  "gpu_library_state_last_bytes": int(memory.get("lazy_last", 0)),
                  "render_workspace_bytes": int(memory.get("workspace", 0))}
                 if device.type == "cuda" else {})
    extra = {"prefetch_depth": cfg.prefetch_depth} if cfg.mode == "stream" else {}
    stage["total"] = time.perf_counter() - t_run
    return {
        "mode": cfg.mode, "device": cfg.device, "steps": cfg.steps, "seed": cfg.seed,
        "target": target, "verify_reads": cfg.verify_reads,
        "render_size": [w, h], "train_views": len(train_views), "heldout_views": len(held),
        "psnr": final["psnr"], "psnr_start": evals[0]["psnr"],
        "psnr_test": final["psnr"], "ssim_test": final["ssim"], "ssim_start": evals[0]["ssim"],
        "lpips_test": None, "lpips_note": LPIPS_NOTE, "evals": evals,
        "loss_first": losses[0], "loss_last": losses[-1],
        "step_time_s": statistics.median(times[1:] if len(times) > 1 else times),
        **stats_out, "refinements": refinements, "opacity_resets": resets,
        "recipe": recipe.to_dict(), "sh_degree": sh_max,
        "bytes_moved_per_step": (stats_out["bytes_h2d"] + stats_out["bytes_d2h"]) / cfg.steps,
        "peak_rss_bytes": peak_rss_bytes(), "peak_gpu_bytes": int(peak_gpu),
        "peak_cpu_charged_bytes": int(acct.peak("cpu")), **gpu_parts,
        "gaussians": {"start": int(start_gaussians), "end": int(end_gaussians)},
        "gaussians_curve": curve,
        "images_bytes": images_bytes, "image_buffers_bytes": image_buffers,
        "stage_seconds": {k: round(v, 4) for k, v in stage.items()},
        "scene_bytes": int(scene_bytes), "largest_view_working_set": int(need), **extra,
        **({"device_budget": run.dev_budget} if cfg.mode != "all-on-device" else {}),
    }


def schedule_for(scene, plan, dev_budget: int, slack: int = 0):
    """The Belady schedule of ``plan`` inside the device budget less the step batch and
    ``slack`` (device bytes outside the slots: the allocator's rounding,
    :func:`~oocstore.gs.stream.allocator_slack`, and the step's target image)."""
    from oocstore.samplers.views import belady_block_schedule

    from .stream import block_bytes, step_batch_bytes

    counts = scene.block_counts
    max_rows = max(int(counts[plan.vis_sets[v]].sum()) for v in np.unique(plan.views))
    return belady_block_schedule(plan.views, plan.vis_sets, block_bytes(scene),
                                 dev_budget - step_batch_bytes(max_rows, scene) - slack)


def replan(scene, cams) -> list[np.ndarray]:
    """Visibility sets of every view against the blocks after a refinement."""
    from oocstore.samplers.views import visibility_sets

    return visibility_sets(scene.block_bounds, cams)


def train_steps(store, sh_degree: int, cams, targets, steps: int, *, device,
                checkpoint_every: int = 0, progress=None,
                stats: GradStats | None = None,
                memory: dict | None = None, recipe=None, sh_max: int | None = None,
                seed: int = 0, background=None) -> tuple[list[float], list[float]]:
    """``steps`` training steps through ``store`` (any mode): render the step's rows, loss
    against the view's target, backward, masked Adam. Returns (step times, losses).

    ``targets``: a dict view -> image [H, W, 3], or a callable ``view -> image`` called
    once per step in step order (the image stream). ``recipe``
    (:class:`~oocstore.gs.recipe.Recipe`; None: L1, full SH degree) gives the loss, the
    active SH degree (up to ``sh_max``) and the random background (seeded by ``seed``
    and the global step); ``background`` is the fixed one otherwise.
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

    from .losses import photo_loss

    times, losses = [], []
    device = torch.device(device)
    target_of = targets.__getitem__ if isinstance(targets, dict) else targets
    sh_max = sh_degree if sh_max is None else sh_max
    lam = 0.0 if recipe is None else recipe.ssim_lambda
    fixed_bg = None if background is None else torch.tensor(background, dtype=torch.float32,
                                                            device=device)
    track = memory is not None and device.type == "cuda"
    for i in range(steps):
        t0 = time.perf_counter()
        batch = store.begin_step()
        if track:
            held = torch.cuda.memory_allocated()
            before = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        v = batch.view
        deg = sh_max if recipe is None else recipe.sh_degree_at(batch.step - 1, sh_max)
        params = batch.params if deg == sh_degree else batch.params[:, :layout.param_width(deg)]
        bg = fixed_bg
        if recipe is not None and recipe.random_background:
            bg = torch.from_numpy(np.random.default_rng([seed, batch.step]).random(3)
                                  .astype(np.float32)).to(device)
        target = target_of(v)
        out = render_on(params, deg, torch.from_numpy(cams.viewmats[v]),
                        torch.from_numpy(cams.Ks[v]), cams.width, cams.height, background=bg)
        loss = photo_loss(out.image, target, lam)
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
        del batch, out, loss, params, target
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


def _evaluate(scene, cams, vis_sets, held, target_of, device, *, sh_degree: int,
              background=None) -> dict:
    """Mean PSNR and SSIM over the held-out views (SSIM None below the 11x11 window)."""
    from .losses import psnr, ssim

    ps, ss = [], []
    for v in held:
        img = render_view(scene, cams, vis_sets[v], int(v), device, sh_degree=sh_degree,
                          background=background).clamp(0, 1)
        tgt = target_of(int(v)).clamp(0, 1)
        ps.append(psnr(img, tgt))
        if min(cams.width, cams.height) >= 11:
            ss.append(float(ssim(img.double(), tgt.double())))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)) if ss else None}


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
    from .cli import RECIPE_FLAGS
    from .recipe import resolve

    recipe = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k) is not None}
    resolve(args.steps, **recipe)  # bad recipe values: one line, before the scene is opened
    cfg = GsTrainConfig(steps=args.steps, mode=args.mode, device=args.device,
                        gpu_budget=args.gpu_budget, cpu_budget=cpu_budget, seed=args.seed,
                        width=width, height=height, checkpoint_every=args.checkpoint_every,
                        verify_reads=not args.no_verify_reads, target=args.target,
                        eval_every=args.eval_every, sh_degree=args.sh_degree,
                        prefetch_depth=args.prefetch_depth, recipe=recipe)
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
        ssim = summary["ssim_test"]
        print(f"gs-train {summary['mode']} on {summary['device']} ({summary['target']}): "
              f"{summary['steps']} steps, PSNR {summary['psnr_start']:.2f} -> "
              f"{summary['psnr']:.2f} dB"
              + (f", SSIM {ssim:.4f}" if ssim is not None else "")
              + f" on {summary['heldout_views']} held-out views, Gaussians "
              f"{summary['gaussians']['start']:,} -> {summary['gaussians']['end']:,}, median "
              f"step {summary['step_time_s']:.3f} s")
        print(f"  moved {format_size(summary['bytes_moved_per_step'])} per step (h2d "
              f"{format_size(summary['bytes_h2d'])}, d2h {format_size(summary['bytes_d2h'])}), "
              f"SSD read {format_size(summary['bytes_ssd_read'])}, written "
              f"{format_size(summary['bytes_ssd_written'])}, cache hit rate "
              f"{summary['cache_hit_rate']:.1%}, peak RSS {format_size(summary['peak_rss_bytes'])}")
    return 0
