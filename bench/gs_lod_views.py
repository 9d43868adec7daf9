"""How the held-out gap of level-of-detail training depends on the camera set (in memory).

``bench/gs_lod.py`` measures the gap the issue's target names (held-out PSNR of the
trained scene rendered with its cut, minus the same scene rendered with its leaves)
through ``gs-train``. This script repeats that training **in memory** on a LoD scene
that ``gs_lod.py --keep`` left behind, so that variants cost minutes: the number of
aerial cameras (``--views``: every 8th, from view 0, held out), and a jittered cut
threshold (``--jitter``: each step's cut at ``--lod-pixels`` times one of the given
factors, chosen at random). It uses the library's own pieces: the synthetic student of
``gs-train`` (the teacher's records with its noise), the cut of
:func:`oocstore.samplers.views.lod_cut`, the reference rasterizer, the L1 loss of the
synthetic recipe and the masked Adam rows update (:func:`oocstore.gs.adam.adam_rows_`,
the rates of ``gs-train``); the streamer is left out (it is tested to give the same
steps as the in-memory oracle).

Every ``--eval-every`` steps it prints, for the held-out views, the PSNR of the cut and
of the leaves against the targets (the teacher's leaves) and the gap; with
``--train-views`` also for the training views beside the held-out ones (how far the cut
fits the views it was trained on better than the others: overfitting).

    PYTHONPATH=$PWD python bench/gs_lod_views.py /tmp/lod/g4x4.lod --views 48 --steps 240
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def student(params: np.ndarray, seed: int) -> np.ndarray:
    """gs-train's synthetic student: the noise of :func:`oocstore.gs.train.perturbed_block`
    (means by 0.5x the largest scale, log-scales by 0.2, opacity logits by 0.5, SH by
    0.2), drawn for the whole table at once."""
    from oocstore.gs import layout

    g = np.random.default_rng(seed)
    p = params.copy()
    n = len(p)
    scale = np.exp(p[:, layout.LOG_SCALES]).max(1, keepdims=True)
    p[:, layout.MEANS] += (0.5 * scale * g.standard_normal((n, 3))).astype(np.float32)
    p[:, layout.LOG_SCALES] += (0.2 * g.standard_normal((n, 3))).astype(np.float32)
    p[:, layout.OPACITY] += (0.5 * g.standard_normal((n, 1))).astype(np.float32)
    k = layout.sh_slice(0)
    p[:, k] += (0.2 * g.standard_normal((n, k.stop - k.start))).astype(np.float32)
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scene", help="a LoD scene (e.g. the g4x4.lod that gs_lod.py --keep leaves)")
    ap.add_argument("--views", type=int, default=0,
                    help="aerial cameras made as gs_lod.py makes them (0: the scene's own)")
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--lod-pixels", type=float, default=1.0)
    ap.add_argument("--jitter", default="1", metavar="F,F,...",
                    help="factors on --lod-pixels, one drawn per step (default 1: none)")
    ap.add_argument("--eval-every", type=int, default=120)
    ap.add_argument("--train-views", action="store_true",
                    help="also evaluate the training views beside the held-out ones")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON of every evaluation")
    args = ap.parse_args(argv)

    import torch

    from oocstore.gs import layout
    from oocstore.gs.adam import AdamConfig, adam_rows_
    from oocstore.gs.losses import photo_loss, psnr
    from oocstore.gs.render import render_on
    from oocstore.gs.scene import Scene
    from oocstore.gs.train import scene_scale, split_views
    from oocstore.samplers.views import lod_cut

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with Scene.open(args.scene, readonly=True) as s:
        cams, hier, deg = s.cameras, s.hierarchy(), s.sh_degree
        ids, prm = s.read_params()
    width = layout.param_width(deg)
    prm = np.ascontiguousarray(prm[:, :width])
    if args.views:
        from gs_lod import aerial_cameras

        from oocstore.gs.cameras import scene_up

        up = scene_up(prm[:, :3], cams)
        cams, _ = aerial_cameras(prm[:, :3], up, args.views, cams.width, cams.height, seed=0)
    order = np.argsort(ids)
    row = order[np.searchsorted(ids[order], hier.ids)]  # hierarchy node -> table row
    leaf = hier.is_leaf
    train, held = split_views(len(cams), 8)
    near = np.intersect1d(np.unique(np.concatenate([(held + d) % len(cams) for d in (-1, 1)])),
                          train)

    def render(p, v):
        return render_on(p, deg, torch.from_numpy(cams.viewmats[v]),
                         torch.from_numpy(cams.Ks[v]), cams.width, cams.height).image

    cuts: dict = {}

    def cut_rows(v, px):
        if (v, px) not in cuts:
            cuts[v, px] = torch.from_numpy(row[lod_cut(hier, cams.viewmats[v], cams.Ks[v], px,
                                                       is_leaf=leaf)])
        return cuts[v, px]

    with torch.no_grad():
        leaves = torch.from_numpy(prm[row[leaf]])
        targets = {int(v): render(leaves, int(v)).clamp(0, 1) for v in range(len(cams))}
    print(f"[{time.perf_counter() - t0:6.0f} s] {len(cams)} targets rendered", flush=True)
    table = torch.from_numpy(student(prm, args.seed))
    m1, m2 = torch.zeros_like(table), torch.zeros_like(table)
    adam = AdamConfig()
    lr = adam.column_lrs(deg, scene_scale(cams))
    factors = [float(x) for x in args.jitter.split(",")]
    rng = np.random.default_rng(args.seed + 1)
    views: list = []
    while len(views) < args.steps:
        views += list(rng.permutation(train))
    evals, rows_sum = [], 0

    def evaluate(step):
        with torch.no_grad():
            lv = table[row[leaf]]
            out = {"step": step, "rows_per_step": rows_sum / max(step, 1)}
            for name, vs in (("held_out", held), ("training", near if args.train_views else [])):
                if not len(vs):
                    continue
                c = [psnr(render(table[cut_rows(int(v), args.lod_pixels)], int(v)).clamp(0, 1),
                          targets[int(v)]) for v in vs]
                lf = [psnr(render(lv, int(v)).clamp(0, 1), targets[int(v)]) for v in vs]
                out[name] = {"views": [int(v) for v in vs], "cut": c, "leaves": lf,
                             "gap_db": float(np.mean(c) - np.mean(lf))}
        evals.append(out)
        h = out["held_out"]
        print(f"[{time.perf_counter() - t0:6.0f} s] step {step}: held-out cut "
              f"{np.mean(h['cut']):.2f} dB, leaves {np.mean(h['leaves']):.2f} dB, gap "
              f"{h['gap_db']:+.2f} dB" + (f"; training views cut {np.mean(out['training']['cut']):.2f}"
                                          f" dB, leaves {np.mean(out['training']['leaves']):.2f} dB"
                                          if "training" in out else ""), flush=True)

    evaluate(0)
    for i in range(args.steps):
        v = int(views[i])
        px = args.lod_pixels * float(factors[rng.integers(len(factors))]) \
            if len(factors) > 1 else args.lod_pixels
        r = cut_rows(v, px)
        rows_sum += len(r)
        p = table[r].clone().requires_grad_(True)
        photo_loss(render(p, v), targets[v], 0.0).backward()
        adam_rows_(table, m1, m2, r, p.grad, lr, i + 1, adam)
        if (i + 1) % args.eval_every == 0 or i + 1 == args.steps:
            evaluate(i + 1)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "bench": "gs_lod_views", "scene": str(args.scene), "views": len(cams),
            "steps": args.steps, "lod_pixels": args.lod_pixels, "jitter": factors,
            "seed": args.seed, "command": " ".join(["gs_lod_views.py"] + (argv or sys.argv[1:])),
            "evals": evals}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
