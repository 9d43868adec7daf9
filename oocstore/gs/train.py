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
   before it is written; with a level-of-detail hierarchy, off unless asked for: the
   leaves are refined, the hierarchy rebuilt locally, :mod:`oocstore.gs.lod_densify`, and
   every used view's cut computed again for the next segment) and opacity resets. ``checkpoint()`` ends every segment (and
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
from .recipe import MODE_NAMES  # noqa: E402  (one definition, shared with the parser)

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
    optimizer_device: str = "auto"  # stream: where Adam runs and the moments live
    lod_pixels: float | None = None  # level-of-detail cut; None: 1 px with a hierarchy

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UsageError(f"steps={self.steps} must be at least 1")
        if self.mode not in MODE_NAMES:
            raise UsageError(f"mode={self.mode!r} unknown: use one of {', '.join(MODE_NAMES)}")
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"device={self.device!r} unknown: use 'cpu' or 'cuda'")
        if self.holdout < 2:
            raise UsageError(f"holdout {self.holdout} must be >= 2 (every k-th view is held out)")
        if self.target is not None and self.target not in TARGETS:
            raise UsageError(f"target={self.target!r} unknown: use 'photos' or 'synthetic'")
        for k in ("eval_every", "checkpoint_every"):
            if getattr(self, k) < 0:
                raise UsageError(f"{k}={getattr(self, k)} must be >= 0")
        if self.prefetch_depth < 1:
            raise UsageError(f"prefetch_depth={self.prefetch_depth} must be at least 1")
        if self.optimizer_device not in ("auto", "cpu", "device"):
            raise UsageError(f"optimizer_device {self.optimizer_device!r} unknown: use cpu "
                             "(Adam on the host, moments off the device), device or auto (the "
                             "default: chosen by the device budget)")
        if not 0.0 <= self.randomness <= 1.0:
            raise UsageError(f"randomness={self.randomness!r} must lie in [0, 1] (0: a "
                             "fully local view order, 1: a random one)")

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
                background=None, cut=None):
    """One view [H, W, 3] rendered from the blocks ``vis`` (no autograd); with ``cut``
    (a :class:`~oocstore.samplers.views.LodView`), from its level-of-detail cut."""
    import torch

    from .render import render_on

    deg = scene.sh_degree if sh_degree is None else sh_degree
    with torch.no_grad():
        if cut is not None:
            from .lod import cut_params

            p = torch.from_numpy(cut_params(scene, cut, layout.param_width(deg))).to(device)
        else:
            p = view_params(scene, vis, layout.param_width(deg)).to(device)
        return render_on(p, deg, torch.from_numpy(cams.viewmats[v]),
                         torch.from_numpy(cams.Ks[v]), cams.width, cams.height,
                         background=background).image


def perturbed_block(rec: np.ndarray, b: int, sh_degree: int, seed: int,
                    strength: float = 1.0) -> np.ndarray:
    """The student's records [N, 3P] of block ``b``: seeded noise on the teacher's
    parameters, moments zeroed (what :func:`perturb_scene` writes)."""
    p = layout.param_width(sh_degree)
    k = layout.sh_slice(sh_degree)
    n = len(rec)
    g = np.random.default_rng([seed, b])
    prm = rec[:, :p].copy()
    scale = np.exp(prm[:, layout.LOG_SCALES]).max(1, keepdims=True)
    prm[:, layout.MEANS] += strength * 0.5 * scale * g.standard_normal((n, 3))
    prm[:, layout.LOG_SCALES] += strength * 0.2 * g.standard_normal((n, 3))
    prm[:, layout.OPACITY] += strength * 0.5 * g.standard_normal((n, 1))
    prm[:, k] += strength * 0.2 * g.standard_normal((n, k.stop - k.start))
    return layout.make_records(prm)


def perturb_scene(scene, seed: int, strength: float = 1.0) -> None:
    """Write the student: seeded per-block noise on the teacher, moments zeroed (one commit)."""
    with scene.writer() as w:
        for b in range(scene.num_blocks):
            ids, rec = scene.read_block(b)
            if not len(ids):
                continue
            w.write_block(b, ids, perturbed_block(rec, b, scene.sh_degree, seed, strength))
        w.commit()


def make_plan(scene, cams, train_views, steps: int, seed: int, randomness: float):
    """The run's plan (a new view order every epoch, ``samplers.views.epoch_orders``) and
    the visibility sets of every view."""
    from oocstore.samplers.views import epoch_orders, visibility_sets

    from .stream import TrainPlan

    vis_sets = visibility_sets(scene.block_bounds, cams)
    sub = [vis_sets[v] for v in train_views]
    views = train_views[epoch_orders(sub, steps, seed=seed, randomness=randomness)]
    return TrainPlan(views, vis_sets, cameras=cams), vis_sets


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


def _cut_plan(cuts: dict, vis_sets) -> tuple[list, dict, dict]:
    """``(vis_sets, lod_cuts, lod_prefix)`` of a plan with level-of-detail ``cuts``
    ({view: LodView}): a view's blocks are its cut's, its rows the cut's ids, and each
    block's read the longest prefix its views need."""
    vis = list(vis_sets)
    prefix: dict = {}
    for v, lv in cuts.items():
        vis[v] = lv.blocks
        for b, k in zip(lv.blocks.tolist(), lv.prefix.tolist()):
            prefix[b] = max(prefix.get(b, 0), k)
    return vis, {v: lv.ids for v, lv in cuts.items()}, prefix


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
    optimizer: str = "cpu"  # stream: where Adam runs (cfg.optimizer_device)
    # the synthetic student's block transform ``(b, rec) -> rec``, until it is written:
    # the up-front checks count the culled rows of the scene the run will train
    student: Callable | None = None
    _cull: tuple | None = field(default=None, repr=False)  # (vis_sets, counts) per layout
    lod_cuts: dict | None = None  # level of detail: {view: sorted ids of its cut}
    lod_prefix: dict | None = None  # {block: rows} the cuts need (prefix reads)
    # per view, the rows a refinement's proposal renders at most (its cut's size), if known
    proposal_rows: np.ndarray | None = None

    @property
    def extra(self) -> int:
        """Device bytes outside the block slots and the step batch."""
        return self.slack + self.target_bytes

    @property
    def working_optimizer(self) -> str:
        """Whose working-set rule sizes the device (naive offload: blocks and batch)."""
        return self.optimizer if self.cfg.mode == "stream" else "device"

    def grown_budget(self, scene, plan) -> int:
        """The default device budget: 1.25 x the largest view's working set (with the
        device optimizer, at least 1/4 of the scene's records, room for slots to cache)."""
        from .sizing import largest_view

        _, need = largest_view(scene, plan, self.working_optimizer)
        need = int(math.ceil(1.25 * need)) + self.extra
        if self.cfg.mode == "stream" and self.optimizer == "cpu":
            return need  # the device holds only the step batch
        return max(scene.num_gaussians * scene.record_bytes // 4, need)

    def choose_optimizer(self, scene, vis_sets, edges, *, zero_moments: bool) -> dict:
        """``--optimizer-device auto``: ``device`` when the device budget holds the device
        optimizer's working set (its least accepted budget) and its block loads and
        write-backs over the run's segments are predicted to move no more bytes than the
        CPU optimizer's per-step uploads and gradients
        (:func:`~oocstore.gs.sizing.predicted_traffic`), else ``cpu``. Without
        ``--gpu-budget`` there is no budget to weigh: ``cpu``, whose default budget rule
        sizes the device for the step batch. Sets :attr:`optimizer`; returns the reasons
        (the summary's ``optimizer_choice``)."""
        from .sizing import largest_view, predicted_traffic

        out: dict = {"requested": "auto"}
        if self.default_budget:
            self.optimizer = "cpu"
            out.update(chosen="cpu", reason="no --gpu-budget: the default budget is the "
                       "CPU optimizer's (the step batch)")
            return out
        full = self.plan(scene, vis_sets, 0, int(edges[-1]))
        need = largest_view(scene, full, "device")[1] + self.extra
        out["device_min_budget"] = int(need)
        if need > self.dev_budget:
            self.optimizer = "cpu"
            out.update(chosen="cpu", reason=f"the device budget {self.dev_budget} is below the "
                       f"device optimizer's working set ({need} bytes)")
            return out
        moved = {"cpu": 0, "device": 0}
        for i, (first, last) in enumerate(zip(edges[:-1], edges[1:])):
            seg = self.plan(scene, vis_sets, int(first), int(last))
            moved["cpu"] += predicted_traffic(scene, seg, None, "cpu")
            sched = schedule_for(scene, seg, self.dev_budget, self.extra, "device")
            moved["device"] += predicted_traffic(scene, seg, sched, "device",
                                                 zero_moments=zero_moments and i == 0)
        self.optimizer = "device" if moved["device"] <= moved["cpu"] else "cpu"
        out.update(chosen=self.optimizer, predicted_bytes=moved,
                   reason="the budget holds the device optimizer's working set; predicted "
                   f"traffic {moved['device']} bytes (device) vs {moved['cpu']} (cpu)")
        return out

    def cull_rows(self, scene, vis_sets) -> np.ndarray | None:
        """Per view, its Gaussians in the frustum (:func:`~oocstore.gs.cull.culled_counts`),
        counted once per block layout; None for a layout not yet written (a refinement's
        proposal: its step batches are then sized for every row of the visible blocks, or
        for :attr:`proposal_rows` where the proposal's cuts are known)."""
        if not hasattr(scene, "read_block"):
            return self.proposal_rows
        if self._cull is None or self._cull[0] is not vis_sets:
            from .cull import culled_counts

            views = np.unique(self.views_all)
            counts = np.zeros(len(vis_sets), dtype=np.int64)
            counts[views] = culled_counts(scene, self.cams, vis_sets, views,
                                          block_fn=self.student, cuts=self.lod_cuts)
            self._cull = (vis_sets, counts)
        return self._cull[1]

    def plan(self, scene, vis_sets, first: int, last: int):
        """The plan of steps ``first`` -> ``last`` without its schedule (streaming: with
        the cameras and culled counts, so steps render only their frustum's Gaussians)."""
        from .stream import TrainPlan

        seg = TrainPlan(self.views_all[first:last], vis_sets, lod_cuts=self.lod_cuts,
                        lod_prefix=self.lod_prefix)
        if self.cfg.mode == "stream":
            seg.cameras = self.cams
            seg.cull_rows = self.cull_rows(scene, vis_sets)
        return seg

    def segment(self, scene, vis_sets, first: int, last: int):
        """The plan of steps ``first`` -> ``last`` (with its schedule when streaming)."""
        seg = self.plan(scene, vis_sets, first, last)
        if self.cfg.mode == "stream":
            seg.schedule = schedule_for(scene, seg, self.dev_budget, self.extra, self.optimizer)
        return seg

    def check(self, scene, vis_sets, first: int, last: int, acct) -> None:
        """BudgetError unless the store of steps ``first`` -> ``last`` fits on top of what
        ``acct`` already holds (charged on a scratch basis, then released)."""
        from .sizing import check_device_budget
        from .stream import MODES

        if self.cfg.mode == "stream":
            check_device_budget(scene, self.plan(scene, vis_sets, first, last), self.dev_budget,
                                self.extra, self.optimizer)
        seg = self.segment(scene, vis_sets, first, last)
        held = []
        try:
            for tier, nbytes, what, fix in MODES[self.cfg.mode].requirements(
                    scene, seg, device=self.device, prefetch_depth=self.cfg.prefetch_depth,
                    optimizer=self.optimizer):
                held.append(acct.charge(tier, nbytes, what, fix=fix))
        finally:
            for c in held:
                c.release()

    def check_spans(self, scene, vis_sets, spans, acct) -> None:
        """:meth:`check` every segment of ``spans`` in order, the default device budget
        raised before each as the run raises it (restored afterwards)."""
        saved, saved_budget = self.dev_budget, acct.budget
        try:
            for first, last in spans:
                if self.default_budget and self.cfg.mode != "all-on-device":
                    self.dev_budget = max(self.dev_budget, self.grown_budget(
                        scene, self.plan(scene, vis_sets, first, last)))
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

    from .scene import Scene

    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device='cuda' but torch sees no CUDA device: use device='cpu'")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(cfg.seed)
    with Scene.open(path, verify_reads=cfg.verify_reads) as scene:
        session = _Session(scene, cfg, device, progress)
        session.setup()
        session.check()
        try:
            session.make_targets()
            session.train()
        finally:
            session.close()
        return session.summary()


class _Session:
    """One ``gs-train`` run, in the order it happens: :meth:`setup` (the config against
    the scene, the plan, the device budget), :meth:`check` (every budget charge, before
    any write), :meth:`make_targets` (a synthetic run's first write: the student),
    :meth:`train` (the segments), :meth:`close`, :meth:`summary`. What the stages share
    lives on the instance."""

    STAGES = ("plan", "checks", "targets", "train", "checkpoint", "densify", "opacity_reset",
              "eval", "image_wait")

    def __init__(self, scene, cfg: GsTrainConfig, device, progress):
        self.t_run = time.perf_counter()
        self.scene, self.cfg, self.device, self.progress = scene, cfg, device, progress
        self.stage = {k: 0.0 for k in self.STAGES}
        self.images = None
        self.held_charges: list = []
        self.evals: list = []
        self.times: list = []
        self.losses: list = []
        self.refinements: list = []
        self.resets: list = []
        self.traffic: dict = {}
        self.memory: dict = {}  # device memory per step, on CUDA (see train_steps)

    # -- before any write -----------------------------------------------------------
    def setup(self) -> None:
        """Target, recipe, SH degree, views and size checked against the scene; the plan,
        the budget rules (:class:`_Run`) and the device budget."""
        from .recipe import resolve
        from .sizing import allocator_slack, largest_view

        t0 = time.perf_counter()
        scene, cfg = self.scene, self.cfg
        self.has_images = bool(getattr(scene, "has_images", False))
        self.target = cfg.target or ("photos" if self.has_images else "synthetic")
        self.photos = self.target == "photos"
        if self.photos and not self.has_images:
            raise UsageError(f"target='photos' but the scene {scene.path} holds no images: "
                             "ingest it from a COLMAP model or a transforms.json, or use "
                             "target='synthetic'")
        self.lod = self._lod_pixels()
        given = cfg.recipe_values()
        if self.lod is not None:  # with a hierarchy densification is asked for (see
            given.setdefault("densify_every", 0)  # _lod_pixels), as the resets serving it
            given.setdefault("opacity_reset_every", 0)
        self.recipe = resolve(cfg.steps, synthetic=not self.photos, **given)
        self.sh_max = scene.sh_degree if cfg.sh_degree is None else cfg.sh_degree
        if not 0 <= self.sh_max <= scene.sh_degree:
            raise UsageError(f"sh_degree={self.sh_max} must lie in 0..{scene.sh_degree} (the "
                             "scene's SH degree; re-ingest with sh_degree for more)")
        self._views()
        w, h = self.size
        if self.recipe.ssim_lambda > 0 and min(w, h) < 11:
            raise UsageError(f"images of {w}x{h} are smaller than the 11x11 SSIM window: "
                             "use ssim_lambda=0 or larger images")
        self.plan, self.vis_sets = make_plan(scene, self.cams, self.train_views, cfg.steps,
                                             cfg.seed, cfg.randomness)
        self.cuts = self.leaf_cuts = None
        if self.lod is not None:
            self._lod_plan()
        self.edges = segment_edges(cfg.steps, self.recipe, cfg.eval_every)
        self.start_gaussians = scene.num_gaussians
        self.scene_bytes = self.start_gaussians * scene.record_bytes
        self.target_bytes = w * h * 3 * 4  # float32 target on the device
        student = None if self.photos else (
            lambda b, rec: perturbed_block(rec, b, scene.sh_degree, cfg.seed, cfg.perturb))
        run = self.run = _Run(cfg, self.cams, self.train_views, self.plan.views, self.device,
                              allocator_slack(self.device), self.target_bytes, None,
                              cfg.gpu_budget is None,
                              optimizer="cpu" if cfg.optimizer_device == "auto" else
                              cfg.optimizer_device,
                              student=student, lod_cuts=self.plan.lod_cuts,
                              lod_prefix=self.plan.lod_prefix)
        self.full = run.plan(scene, self.vis_sets, 0, cfg.steps)
        if cfg.gpu_budget is not None:
            run.dev_budget = parse_size(cfg.gpu_budget, what="--gpu-budget")
        self.placement = {"requested": cfg.optimizer_device, "chosen": run.optimizer}
        if cfg.mode == "stream" and cfg.optimizer_device == "auto":
            self.placement = run.choose_optimizer(scene, self.vis_sets, self.edges,
                                                  zero_moments=not self.photos)
            log.info("optimizer on the %s (--optimizer-device auto: %s)", run.optimizer,
                     self.placement["reason"])
        view, self.need = largest_view(scene, self.full, run.working_optimizer)
        if cfg.gpu_budget is None:
            run.dev_budget = run.grown_budget(scene, self.full)
            log.info("device budget %s (default: 1.25 x view %d's working set %s%s)",
                     format_size(run.dev_budget), view, format_size(self.need),
                     "" if cfg.mode == "stream" and run.optimizer == "cpu" else
                     f", at least 1/4 of {format_size(self.scene_bytes)}")
        self.stage["plan"] += time.perf_counter() - t0

    def _lod_pixels(self):
        """The cut's threshold (None: the scene has no hierarchy). With a hierarchy,
        densification is off by default (``densify_every`` 0, no opacity resets); an
        explicit ``densify_every`` above 0 refines the leaves and rebuilds the hierarchy
        locally (:mod:`oocstore.gs.lod_densify`), and the cuts are computed again for the
        following segment (:meth:`_between_segments`)."""
        from .lod import resolve_lod_pixels

        return resolve_lod_pixels(self.scene, self.cfg.lod_pixels)

    def _lod_plan(self) -> None:
        """Each used view's cut (samplers.views.lod_views): its blocks replace the view's
        visible blocks in the plan, and its ids pick the rows a step renders; the
        synthetic targets are rendered from the leaves."""
        from oocstore.samplers.views import lod_views

        h = self.scene.hierarchy()
        used = np.unique(np.concatenate([self.train_views, self.held]))
        self.cuts = lod_views(h, self.cams, self.vis_sets, used, self.lod)
        if not self.photos and self.leaf_cuts is None:  # the targets': once
            self.leaf_cuts = lod_views(h, self.cams, self.vis_sets, used, 0.0)
        vis, self.plan.lod_cuts, self.plan.lod_prefix = _cut_plan(self.cuts, self.vis_sets)
        self.vis_sets = vis
        self.plan.vis_sets = vis
        self._check_cuts()

    def _check_cuts(self) -> None:
        """Refuse, before the run's first write, a node table that puts a used view's cut
        node in a block or row where its id is not stored (or twice): the ids of each
        block's prefix are read once and every cut is matched against them, as each step
        and each render would (:func:`~oocstore.gs.lod.check_cut_rows`)."""
        from .lod import check_cut_rows, in_cut

        by_block: dict = {}
        for v, lv in self.cuts.items():
            for b, k in zip(lv.blocks.tolist(), lv.prefix.tolist()):
                by_block.setdefault(b, []).append((v, k))
        kept: dict = {v: [] for v in self.cuts}
        for b, uses in by_block.items():
            ids = self.scene.read_block(int(b), rows=int(self.plan.lod_prefix[b]))[0]
            for v, k in uses:
                part = ids[:k]
                kept[v].append(part[in_cut(part, self.cuts[v].ids)])
        for v, parts in kept.items():
            found = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            check_cut_rows(self.scene, len(self.cuts[v].ids), len(found))
            check_cut_rows(self.scene, len(self.cuts[v].ids), len(np.unique(found)))

    def _views(self) -> None:
        """Cameras at the training size, the training and held-out views, the background."""
        scene, cfg = self.scene, self.cfg
        if self.photos:
            w, h = (int(x) for x in scene.image_size)
            if cfg.width and (cfg.width, cfg.height) != (w, h):
                raise UsageError(f"width={cfg.width}, height={cfg.height}: photos train at their "
                                 f"stored size {w}x{h} (re-ingest with another "
                                 "images_downscale to change it); leave width and height unset")
            cams = scene.cameras
            self.cams = cams if (cams.width, cams.height) == (w, h) else cams.resized(w, h)
            self.train_views = np.asarray(scene.train_views, dtype=np.int64)
            self.held = np.asarray(scene.test_views, dtype=np.int64)
            if not len(self.train_views) or not len(self.held):
                raise UsageError(f"the scene {scene.path} has {len(self.train_views)} training "
                                 f"and {len(self.held)} held-out views: both must be non-empty "
                                 "(re-ingest with --test-every)")
            self.background = scene.background
        else:
            w, h = render_size(scene.cameras, cfg)
            self.cams = scene.cameras.resized(w, h)
            self.train_views, self.held = split_views(len(self.cams), cfg.holdout)
            self.background = None
        self.size = (w, h)

    def check(self) -> None:
        """Every budget charge of every segment before the first densification, on the
        ledger (:attr:`acct`); the data charges stay held for the run."""
        from .images import image_charge

        t0 = time.perf_counter()
        cfg, run, scene = self.cfg, self.run, self.scene
        self.acct = acct = BudgetAccountant(MemoryBudget(
            gpu=None if cfg.mode == "all-on-device" else run.dev_budget, cpu=cfg.cpu_budget))
        # views a synthetic run renders
        self.used = np.unique(np.concatenate([self.plan.views, self.held]))
        if self.photos:
            data = [image_charge(scene, cfg.prefetch_depth)]
        else:
            data = [("cpu", len(self.used) * self.target_bytes,
                     f"{len(self.used)} synthetic target images",
                     "raise --cpu-budget, or use a smaller --size")]
        data.append(("gpu", self.target_bytes, "the step's target image",
                     "raise --gpu-budget, or use smaller images"))
        if cfg.mode == "stream":  # the largest view first: the most telling refusal
            from .sizing import check_device_budget

            check_device_budget(scene, self.full, run.dev_budget, run.extra, run.optimizer)
        try:
            for tier, nbytes, what, fix in data:
                if not (self.photos and tier == "cpu"):  # the image stream charges its own
                    self.held_charges.append(acct.charge(tier, nbytes, what, fix=fix))
            # the image stream's charge too (taken again by the stream once it starts)
            pre = acct.charge(*data[0][:3], fix=data[0][3]) if self.photos else None
            try:
                # every segment before the first densification (later ones: vetted
                # with the refined layout before each densification writes)
                run.check_spans(scene, self.vis_sets, spans_from(self.edges, 0, self.recipe),
                                acct)
            finally:
                if pre is not None:
                    pre.release()
        except BaseException:
            self.release()
            raise
        self.stage["checks"] += time.perf_counter() - t0

    # -- the run ---------------------------------------------------------------------
    def make_targets(self) -> None:
        """``target_of(view)`` (in step order) and ``eval_target(view)``: the photos
        streamed, or the synthetic targets rendered from the teacher, then the student
        written (the run's first write)."""
        import torch

        from .images import ImageStream

        t0 = time.perf_counter()
        device, scene = self.device, self.scene
        if self.photos:
            images = self.images = ImageStream(scene, self.plan.views, accountant=self.acct,
                                               depth=self.cfg.prefetch_depth)

            def target_of(view, img=None):
                img = images.next(view) if img is None else img
                return torch.from_numpy(np.ascontiguousarray(img)).to(device).float().div_(255)

            self.target_of = target_of
            self.eval_target = lambda v: target_of(v, images.read(v))
        else:
            targets = {int(v): render_view(
                scene, self.cams, self.vis_sets[v], int(v), device,
                cut=None if self.leaf_cuts is None else self.leaf_cuts[int(v)])
                for v in self.used.tolist()}
            self.target_of = self.eval_target = lambda view: targets[int(view)]
            perturb_scene(scene, self.cfg.seed, self.cfg.perturb)  # the first write
            self.run.student = None  # written: later counts read it from the scene
        self.stage["targets"] += time.perf_counter() - t0

    def evaluate(self, step: int) -> dict:
        import torch

        t = time.perf_counter()
        bg = (None if self.background is None else
              torch.tensor(self.background, dtype=torch.float32, device=self.device))
        out = _evaluate(self.scene, self.cams, self.vis_sets, self.held, self.eval_target,
                        self.device, sh_degree=self.sh_max, background=bg, cuts=self.cuts)
        self.stage["eval"] += time.perf_counter() - t
        out["step"] = step
        self.evals.append(out)
        log.info("step %d: held-out PSNR %.2f dB, SSIM %s", step, out["psnr"], out["ssim"])
        return out

    def train(self) -> None:
        """Evaluate, then each segment: what happens between segments, then its steps."""
        from .adam import AdamConfig

        cfg, recipe = self.cfg, self.recipe
        self.adam = AdamConfig(means=recipe.means_lr)
        self.sscale = sscale = scene_scale(self.cams)
        self.lr = lr = self.adam.column_lrs(self.scene.sh_degree, sscale)

        def lr_at(step):  # the position rate decays with the global step
            out = lr.clone()
            out[layout.MEANS] = recipe.means_lr_at(step - 1, cfg.steps) * sscale
            return out

        self.lr_at = lr_at
        self.grad_stats = GradStats(self.scene.next_id) if recipe.densify_every else None
        self.curve = [[0, int(self.start_gaussians)]]
        self.evaluate(0)
        for i, (first, last) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            if first:
                self._between_segments(i, first, last)
            self._segment(first, last)
        self.final = self.evaluate(cfg.steps)

    def _between_segments(self, i: int, first: int, last: int) -> None:
        """Evaluation, densification, opacity reset due after step ``first``; then the
        next segment's budget (the default one grows with the scene) and its check."""
        cfg, recipe, run, scene = self.cfg, self.recipe, self.run, self.scene
        if cfg.eval_every and first % cfg.eval_every == 0:
            self.evaluate(first)
        if recipe.refine_after(first):
            t = time.perf_counter()
            r = self._densify(i, first)
            r["step"] = first
            self.refinements.append(r)
            self.curve.append([first, int(scene.num_gaussians)])
            self.vis_sets = replan(scene, self.cams)
            if self.lod is not None:  # the rebuilt hierarchy's cuts, for what follows
                self._lod_plan()
                run.lod_cuts, run.lod_prefix = self.plan.lod_cuts, self.plan.lod_prefix
            self.stage["densify"] += time.perf_counter() - t
        if recipe.reset_after(first):
            t = time.perf_counter()
            self.resets.append([first, reset_opacity_scene(scene, recipe.reset_value)])
            self.stage["opacity_reset"] += time.perf_counter() - t
        if run.default_budget and cfg.mode != "all-on-device":
            # the default budget follows the scene as densification grows it
            grown = run.grown_budget(scene, run.plan(scene, self.vis_sets, first, last))
            if grown > run.dev_budget:
                log.info("device budget raised to %s after densification", format_size(grown))
                run.dev_budget = grown
                self.acct.budget = MemoryBudget(gpu=grown, cpu=cfg.cpu_budget)
        run.check(scene, self.vis_sets, first, last, self.acct)

    def _densify(self, i: int, first: int) -> dict:
        """The refinement after step ``first``. With a hierarchy, the rebuild's host memory
        (:func:`~oocstore.gs.lod_densify.host_bytes`: every node's record, and copies) on
        top of what the run holds is checked against the host budget first; a refinement
        that does not fit is skipped, as growth beyond the device budget is, and the run
        goes on."""
        from .lod_densify import WRITE_COUNTS, host_bytes

        cfg, recipe, scene = self.cfg, self.recipe, self.scene
        spans = spans_from(self.edges, i, recipe)

        def run():
            admit = (self.run.admit(scene, self.acct, spans) if self.lod is None else
                     self._lod_admit(spans))
            return densify_scene(scene, self.grad_stats, self.sscale, recipe.densify,
                                 cfg.seed + first, prune_large=recipe.prune_large_after(first),
                                 admit=admit)

        if self.lod is None:
            return run()
        try:  # charged and released at once (the ledger's peak records it): the admit
            # check vets the next segment, whose buffers the rebuild does not overlap
            with self.acct.charge("cpu", host_bytes(scene), "the hierarchy's rebuild "
                                  "(every node's record in host memory)"):
                pass
        except BudgetError as err:
            log.info("densification after step %d skipped: %s", first, err)
            self.grad_stats.reset()
            return {**dict.fromkeys(("cloned", "split", "pruned", "remerged_nodes",
                                     "removed_nodes", *WRITE_COUNTS), 0),
                    "growth": "skipped", "refused_because": str(err)}
        return run()

    def _lod_admit(self, spans):
        """``admit(counts, bounds, hierarchy)`` for a refinement of a scene with a
        hierarchy: the segments ``spans`` checked as :meth:`_Run.admit` checks them, with
        the rebuilt hierarchy's cut of every used view (its blocks as the view's blocks,
        its prefixes as the reads; a step batch sized for the cut's node count, which the
        frustum test only lowers)."""
        from oocstore.samplers.views import lod_views, visibility_sets

        run, scene, acct = self.run, self.scene, self.acct
        used = np.unique(np.concatenate([self.train_views, self.held]))

        def admit(counts, bounds, hier):
            vis = visibility_sets(bounds, self.cams)
            cuts = lod_views(hier, self.cams, vis, used, self.lod)
            vis, lod_cuts, prefix = _cut_plan(cuts, vis)
            rows = np.zeros(len(vis), dtype=np.int64)
            for v, lv in cuts.items():
                rows[v] = len(lv.ids)
            saved = run.lod_cuts, run.lod_prefix, run.proposal_rows
            run.lod_cuts, run.lod_prefix, run.proposal_rows = lod_cuts, prefix, rows
            try:
                run.check_spans(_Layout(scene, counts, bounds), vis, spans, acct)
            except BudgetError as err:
                return str(err)
            finally:
                run.lod_cuts, run.lod_prefix, run.proposal_rows = saved
            return None

        return admit

    def _segment(self, first: int, last: int) -> None:
        """Steps ``first`` -> ``last`` through one store, then its checkpoint."""
        import torch

        from .stream import MODES

        cfg, run, device = self.cfg, self.run, self.device
        seg = run.segment(self.scene, self.vis_sets, first, last)
        kw = dict(device=device, accountant=self.acct, adam=self.adam, lr=self.lr,
                  lr_at=self.lr_at, step_offset=first)
        if cfg.mode == "stream":
            kw.update(device_budget=run.dev_budget, prefetch_depth=cfg.prefetch_depth,
                      optimizer=run.optimizer)
        if device.type == "cuda":  # what the device holds before the store exists
            self.memory["outside"] = torch.cuda.memory_allocated()
        with MODES[cfg.mode](self.scene, seg, **kw) as store:
            t = time.perf_counter()
            ts, lo = train_steps(store, self.scene.sh_degree, self.cams, self.target_of,
                                 last - first, device=device, memory=self.memory,
                                 checkpoint_every=cfg.checkpoint_every, progress=self.progress,
                                 stats=self.grad_stats, sh_max=self.sh_max, recipe=self.recipe,
                                 seed=cfg.seed, background=self.background)
            self.stage["train"] += time.perf_counter() - t
            t = time.perf_counter()
            store.checkpoint()
            self.stage["checkpoint"] += time.perf_counter() - t
            for key, v in store.stats().items():  # counters add up over segments
                summed = (key.startswith(("bytes_", "block_")) or key == "stall_s"
                          or key in ("rendered_rows", "culled_rows", "candidate_rows",
                                     "adam_overlapped_rows", "zero_moment_rows",
                                     "write_back_rows"))
                self.traffic[key] = self.traffic.get(key, 0) + v if summed else v
        self.times += ts
        self.losses += lo

    def release(self) -> None:
        for c in self.held_charges:
            c.release()
        self.held_charges = []

    def close(self) -> None:
        if self.images is not None:
            self.stage["image_wait"] = self.images.wait_seconds
            self.images.close()
            self.images = None
        self.release()

    # -- after the run ---------------------------------------------------------------
    def summary(self) -> dict:
        """The JSON-able summary (see ``docs/GAUSSIAN_SPLATTING.md``, Outputs)."""
        from .images import image_charge

        cfg, scene, run, final = self.cfg, self.scene, self.run, self.final
        traffic = dict(self.traffic, cache_hit_rate=1.0 - self.traffic["block_ssd_misses"]
                       / max(self.traffic["block_accesses"], 1))
        end_gaussians = int(scene.num_gaussians)
        if self.curve[-1][0] != cfg.steps:
            self.curve.append([cfg.steps, end_gaussians])
        self.stage["total"] = time.perf_counter() - self.t_run
        times = self.times[1:] if len(self.times) > 1 else self.times
        return {
            "mode": cfg.mode, "device": cfg.device, "steps": cfg.steps, "seed": cfg.seed,
            "target": self.target, "verify_reads": cfg.verify_reads,
            "render_size": list(self.size), "train_views": len(self.train_views),
            "heldout_views": len(self.held),
            "psnr": final["psnr"], "psnr_start": self.evals[0]["psnr"],
            "psnr_test": final["psnr"], "ssim_test": final["ssim"],
            "ssim_start": self.evals[0]["ssim"],
            "lpips_test": None, "lpips_note": LPIPS_NOTE, "evals": self.evals,
            "loss_first": self.losses[0], "loss_last": self.losses[-1],
            "step_time_s": statistics.median(times),
            **traffic, "refinements": self.refinements, "opacity_resets": self.resets,
            "recipe": self.recipe.to_dict(), "sh_degree": self.sh_max,
            "bytes_moved_per_step": (traffic["bytes_h2d"] + traffic["bytes_d2h"]) / cfg.steps,
            "peak_rss_bytes": peak_rss_bytes(), **self._memory_summary(),
            "gaussians": {"start": int(self.start_gaussians), "end": end_gaussians},
            "gaussians_curve": self.curve,
            "images_bytes": int(scene.images_bytes) if self.has_images else 0,
            "image_buffers_bytes": (int(image_charge(scene, cfg.prefetch_depth)[1])
                                    if self.photos else 0),
            "stage_seconds": {k: round(v, 4) for k, v in self.stage.items()},
            "scene_bytes": int(self.scene_bytes), "largest_view_working_set": int(self.need),
            "lod_pixels": self.lod,
            **({"prefetch_depth": cfg.prefetch_depth, "optimizer_device": run.optimizer,
                "optimizer_choice": self.placement} if cfg.mode == "stream" else {}),
            **({"device_budget": run.dev_budget, "min_device_budget": int(self.need + run.extra)}
               if cfg.mode != "all-on-device" else {}),
        }

    def _memory_summary(self) -> dict:
        import torch

        memory, acct = self.memory, self.acct
        out = {"peak_cpu_charged_bytes": int(acct.peak("cpu"))}
        if self.device.type != "cuda":
            out["peak_gpu_bytes"] = int(acct.peak("gpu"))
            return out
        out["peak_gpu_bytes"] = int(max(torch.cuda.max_memory_allocated(),
                                        memory.get("peak", 0)))
        out.update({"peak_gpu_held_bytes": int(memory.get("held", 0)),
                    "gpu_outside_store_bytes": int(memory.get("outside", 0)),
                    "gpu_library_state_bytes": int(memory.get("lazy", 0)),
                    "gpu_library_state_last_bytes": int(memory.get("lazy_last", 0)),
                    "render_workspace_bytes": int(memory.get("workspace", 0))})
        return out


def schedule_for(scene, plan, dev_budget: int, slack: int = 0, optimizer: str = "cpu"):
    """The Belady schedule of ``plan``'s block slots. Device optimizer: the slots are on
    the device, inside the device budget less the step batch and ``slack`` (device bytes
    outside the slots: the allocator's rounding,
    :func:`~oocstore.gs.stream.allocator_slack`, and the step's target image). CPU
    optimizer: the slots are in host memory, room for twice the largest view's blocks
    (:func:`~oocstore.gs.stream.host_slot_bytes`)."""
    from oocstore.samplers.views import belady_block_schedule

    from .sizing import host_slot_bytes, max_batch_rows, slot_bytes, step_batch_bytes

    if optimizer == "device":
        budget = (dev_budget - step_batch_bytes(max_batch_rows(scene, plan), scene, "device")
                  - slack)
    else:
        budget = host_slot_bytes(scene, plan)
    return belady_block_schedule(plan.views, plan.vis_sets, slot_bytes(scene), budget)


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
            held, before = _memory_at_batch()
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
            _memory_after_step(memory, i, held, before)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
        # Drop this step's batch, image and graph now: held until the names are rebound,
        # they would sit beside the next step's batch (two batches on the device at once).
        del batch, out, loss, params, target
        if track:
            _memory_between_steps(memory, i, store)
        if checkpoint_every and (i + 1) % checkpoint_every == 0:
            store.checkpoint()
        if progress:
            progress(1)
    return times, losses


def _memory_at_batch() -> tuple[int, int]:
    """(allocated now, the peak so far) when a step's batch is ready; resets the peak."""
    import torch

    held = torch.cuda.memory_allocated()
    before = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    return held, before


def _memory_after_step(memory: dict, i: int, held: int, before: int) -> None:
    """Fold step ``i``'s device memory into ``memory`` (see :func:`train_steps`)."""
    import torch

    peak = torch.cuda.max_memory_allocated()
    memory["held"] = max(memory.get("held", 0), held - memory.get("outside", 0)
                         - (memory.get("lazy", 0) if i else 0))
    memory["workspace"] = max(memory.get("workspace", 0), peak - held)
    memory["peak"] = max(memory.get("peak", 0), peak, before)


def _memory_between_steps(memory: dict, i: int, store) -> None:
    """Between steps the device holds the store's slots and what existed before it; the
    rest is state libraries made on first use (the rasterizer's, autograd's): measured
    after the first step, charged to neither, and checked again after the last one
    (growth there would be a leak)."""
    import torch

    rest = (torch.cuda.memory_allocated() - memory.get("outside", 0)
            - store.device_resident_bytes())
    if i == 0:
        memory["lazy"] = max(memory.get("lazy", 0), rest)
    memory["lazy_last"] = rest


def _evaluate(scene, cams, vis_sets, held, target_of, device, *, sh_degree: int,
              background=None, cuts=None) -> dict:
    """Mean PSNR and SSIM over the held-out views (SSIM None below the 11x11 window);
    with ``cuts`` ({view: LodView}), each view rendered from its level-of-detail cut."""
    from .losses import psnr, ssim

    ps, ss = [], []
    for v in held:
        img = render_view(scene, cams, vis_sets[v], int(v), device, sh_degree=sh_degree,
                          background=background,
                          cut=None if cuts is None else cuts[int(v)]).clamp(0, 1)
        tgt = target_of(int(v)).clamp(0, 1)
        ps.append(psnr(img, tgt))
        if min(cams.width, cams.height) >= 11:
            ss.append(float(ssim(img.double(), tgt.double())))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)) if ss else None}


# -- command line ------------------------------------------------------------------------

def cmd_gs_train(args) -> int:
    """``oocstore gs-train`` (registered by :mod:`oocstore.cli.scene`, which imports this
    module only when the command runs: it needs torch)."""
    import json
    import sys

    width = height = None
    if args.size:
        try:
            width, height = (int(x) for x in args.size.lower().split("x"))
        except ValueError:
            raise UsageError(f"size={args.size!r} is not WxH (e.g. 162x105)") from None
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise UsageError(f"threads={args.threads} must be at least 1")
        torch.set_num_threads(args.threads)
    cpu_budget = None if args.cpu_budget is None else parse_size(args.cpu_budget, what="--cpu-budget")
    from .recipe import RECIPE_FLAGS
    from .recipe import resolve

    from .lod import check_lod_pixels

    recipe = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k) is not None}
    resolve(args.steps, **recipe)  # bad recipe values: one line, before the scene is opened
    cfg = GsTrainConfig(steps=args.steps, mode=args.mode, device=args.device,
                        gpu_budget=args.gpu_budget, cpu_budget=cpu_budget, seed=args.seed,
                        width=width, height=height, checkpoint_every=args.checkpoint_every,
                        verify_reads=not args.no_verify_reads, target=args.target,
                        eval_every=args.eval_every, sh_degree=args.sh_degree,
                        prefetch_depth=args.prefetch_depth, recipe=recipe,
                        optimizer_device=args.optimizer_device,
                        randomness=args.view_randomness,
                        lod_pixels=None if args.lod_pixels is None else
                        check_lod_pixels(args.lod_pixels))
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
        choice = summary.get("optimizer_choice")
        if choice:
            print(f"  optimizer on the {choice['chosen']}"
                  + (f" (--optimizer-device auto: {choice['reason']})"
                     if choice["requested"] == "auto" else ""))
    return 0
