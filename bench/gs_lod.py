"""Level of detail on tiled gardens seen from far / aerial cameras, one run.

For each tiling (``--tiles``, default 1x1,2x2,4x4,8x8) of the garden point cloud
(``oocstore ingest scene ... --tile KxK --sh-degree 0``), the script

1. builds the hierarchy (:func:`oocstore.gs.lod_build.build_lod_scene`, what ``oocstore
   gs-lod build`` runs; ``--fit-steps`` steps fit the merged nodes to their leaves'
   renders, :mod:`oocstore.gs.lod_fit`, over ``--fit-pixels``' cuts) with an **aerial camera set** in place of the ingest's views:
   ``--views`` cameras on a ring around the tiled scene's centre, each looking at a
   point within 10 % of the scene's extent of the centre, 50..70 degrees down, from a
   distance at which the scene's robust horizontal extent (2nd..98th percentile of the
   Gaussians' positions, perpendicular to the scene's up) fills 0.9..1.3 times a 60
   degree field of view; ``--size`` pixels (default 162x105, gs-train's CPU size);
2. measures each view's **working set**: without level of detail, the visible blocks
   of the ingested scene and their Gaussians (what the streamer loads today); with it
   (``--lod-pixels``, default 1; or each of ``--lod-pixels-list``), the blocks holding
   the view's cut, the prefix rows read from them and the cut's size
   (:func:`oocstore.samplers.views.lod_views`);
3. times rendering a few views (``--render-views``) from the cut (prefix reads +
   the reference rasterizer) and, where the scene has at most ``--leaves-max``
   Gaussians, from all leaves (``--lod-pixels 0``);
4. on ``--psnr-tile`` only: trains the scene (``gs-train`` synthetic target: the
   teacher's leaf renders, the student perturbed, ``--steps`` streamed steps with the
   cut) and reports the held-out PSNR of the trained scene rendered with the cut and
   with its leaves, against the same targets; and the same two PSNRs of the teacher
   (untrained: the cut's own approximation error). With ``--refit``, the trained
   scene is also rebuilt from its leaves with the fit (``gs-lod build`` of the trained
   scene) and rendered with its new cut: a variant of the pipeline (train, then fit
   the hierarchy to the trained leaves), reported beside the plain one.

Writes ``--out`` (JSON) and prints a summary. Times are CPU times of the reference
rasterizer on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GARDEN = REPO.parent / "shared" / "data" / "gsplat" / "test_garden.npz"
T0 = time.perf_counter()


def note(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def aerial_cameras(means: np.ndarray, up: np.ndarray, n: int, width: int, height: int, *,
                   fov_deg: float = 60.0, seed: int = 0):
    """The aerial camera set of the module docstring."""
    from oocstore.gs.cameras import Cameras, look_at

    g = np.random.default_rng(seed)
    up = up / np.linalg.norm(up)
    e1 = np.cross(up, [1.0, 0, 0] if abs(up[0]) < 0.9 else [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    sample = means[:: max(1, len(means) // 200_000)].astype(np.float64)
    h = np.stack([sample @ e1, sample @ e2], 1)
    lo, hi = np.percentile(h, 2, axis=0), np.percentile(h, 98, axis=0)
    extent = float((hi - lo).max())
    mid = (lo + hi) / 2
    centre = mid[0] * e1 + mid[1] * e2 + float(np.median(sample @ up)) * up
    tan = math.tan(math.radians(fov_deg) / 2)
    fx = (width / 2) / tan
    mats = []
    for i in range(n):
        th = 2 * math.pi * i / n + g.uniform(-0.2, 0.2)
        pitch = math.radians(g.uniform(50, 70))
        dist = 0.5 * extent / tan * g.uniform(0.9, 1.3)
        target = centre + 0.1 * extent * (g.uniform(-1, 1) * e1 + g.uniform(-1, 1) * e2)
        eye = target + dist * (math.cos(pitch) * (math.cos(th) * e1 + math.sin(th) * e2)
                               + math.sin(pitch) * up)
        mats.append(look_at(eye, target, up))
    K = np.array([[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1]])
    return Cameras(np.stack(mats).astype(np.float32), np.repeat(K[None], n, 0).astype(np.float32),
                   width, height, tuple(f"aerial{i:03d}" for i in range(n)), "aerial"), extent


def working_sets(src, lod, cams, lod_pixels: float) -> dict:
    from oocstore.samplers.views import lod_views, visibility_sets

    vis_src = visibility_sets(src, cams)
    counts = src.block_counts
    vis = visibility_sets(lod, cams)
    t = time.perf_counter()
    cuts = lod_views(lod.hierarchy(), cams, vis, range(len(cams)), lod_pixels)
    cut_s = (time.perf_counter() - t) / len(cams)
    row = lod.disk_row_bytes
    per = []
    for v in range(len(cams)):
        lv = cuts[v]
        per.append({"view": v, "blocks_no_lod": len(vis_src[v]),
                    "gaussians_no_lod": int(counts[vis_src[v]].sum()),
                    "blocks_lod": len(lv.blocks), "cut": len(lv.ids), "prefix_rows": lv.rows,
                    "block_rows_lod": int(lod.block_counts[lv.blocks].sum())})
    key = lambda k: [p[k] for p in per]  # noqa: E731
    nb_src, nb = src.num_blocks, lod.num_blocks
    return {
        "blocks_src": nb_src, "blocks_lod_scene": nb, "cut_seconds_per_view": cut_s,
        "no_lod_block_fraction_mean": float(np.mean(key("blocks_no_lod")) / nb_src),
        "no_lod_block_fraction_max": float(np.max(key("blocks_no_lod")) / nb_src),
        "no_lod_gaussians_max": int(np.max(key("gaussians_no_lod"))),
        "lod_block_fraction_mean": float(np.mean(key("blocks_lod")) / nb),
        "lod_block_fraction_max": float(np.max(key("blocks_lod")) / nb),
        "lod_cut_max": int(np.max(key("cut"))), "lod_cut_mean": float(np.mean(key("cut"))),
        "lod_prefix_rows_max": int(np.max(key("prefix_rows"))),
        "lod_prefix_bytes_max": int(np.max(key("prefix_rows"))) * row,
        "lod_block_bytes_max": int(np.max(key("block_rows_lod"))) * row,
        "no_lod_bytes_max": int(np.max(key("gaussians_no_lod"))) * src.disk_row_bytes,
        "per_view": per}, cuts, vis


def render_times(lod, cams, vis, cuts, leaf_cuts, views, with_leaves: bool) -> dict:
    import torch

    from oocstore.gs.train import render_view

    out = {"lod_s": [], "leaves_s": [], "lod_cpu_s": [], "leaves_cpu_s": [],
           "views": list(map(int, views))}
    render_view(lod, cams, vis[views[0]], int(views[0]), "cpu", cut=cuts[int(views[0])])  # warm-up

    def timed(kind: str, cut, v) -> None:
        t, c = time.perf_counter(), time.process_time()
        render_view(lod, cams, vis[v], int(v), "cpu", cut=cut)
        out[f"{kind}_s"].append(time.perf_counter() - t)
        out[f"{kind}_cpu_s"].append(time.process_time() - c)  # CPU seconds: less noisy

    for v in views:
        timed("lod", cuts[int(v)], v)
        if with_leaves:
            timed("leaves", leaf_cuts[int(v)], v)
    for kind in ("lod", "leaves"):
        for unit in ("s", "cpu_s"):
            got = out[f"{kind}_{unit}"]
            out[f"{kind}_median_{unit}"] = float(np.median(got)) if got else None
    del torch
    return out


def psnr_study(lod_path: Path, work: Path, cams, args, pxs) -> dict:
    """For each threshold of ``pxs``: train a copy of the LoD scene with its cuts, and
    the held-out PSNR with the cut / the leaves; the teacher's cut against its leaves."""
    from oocstore.gs.losses import psnr
    from oocstore.gs.scene import Scene
    from oocstore.gs.train import GsTrainConfig, render_view, run_gs_training, split_views
    from oocstore.samplers.views import lod_views, visibility_sets

    train, held = split_views(len(cams), 8)
    # the training views beside the held-out ones: how much better the cut fits the views
    # it was trained on than the views it was not (the held-out gap's share of overfitting)
    near = np.unique(np.concatenate([(held + d) % len(cams) for d in (-1, 1)]))
    near = np.intersect1d(near, train)
    shown = np.concatenate([held, near])

    def renders(p: Path, px: float) -> dict:
        with Scene.open(p, readonly=True) as s:
            vis = visibility_sets(s, cams)
            cuts = lod_views(s.hierarchy(), cams, vis, shown, px)
            return {int(v): render_view(s, cams, vis[v], int(v), "cpu", cut=cuts[int(v)])
                    .clamp(0, 1) for v in shown}

    targets = renders(lod_path, 0.0)  # the teacher's leaves: gs-train's synthetic targets

    def mean_psnr(imgs, views=held):
        return float(np.mean([psnr(imgs[v], targets[v]) for v in views]))

    out = {}
    for px in pxs:
        t = time.perf_counter()
        teacher_cut = renders(lod_path, px)
        path = work / "trained"
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(lod_path, path)
        w, h = cams.width, cams.height
        cfg = GsTrainConfig(steps=args.steps, mode="stream", lod_pixels=px, width=w,
                            height=h, seed=0)
        summary = run_gs_training(path, cfg)
        note(f"psnr: {px:g} px: trained {args.steps} steps")
        trained_cut, trained_leaves = renders(path, px), renders(path, 0.0)
        r = {"lod_pixels": px, "held_out_views": [int(v) for v in held], "steps": args.steps,
             "teacher_psnr_cut_vs_leaves": mean_psnr(teacher_cut),
             "trained_psnr_cut": mean_psnr(trained_cut),
             "trained_psnr_leaves": mean_psnr(trained_leaves),
             "training_views_shown": [int(v) for v in near],
             "trained_psnr_cut_training_views": mean_psnr(trained_cut, near),
             "trained_psnr_leaves_training_views": mean_psnr(trained_leaves, near),
             "gs_train_psnr_start": summary["psnr_start"], "gs_train_psnr_end": summary["psnr"],
             "train_step_time_s": summary["step_time_s"],
             "rendered_rows_per_step": summary["rendered_rows"] / args.steps,
             "seconds": time.perf_counter() - t}
        r["cut_minus_leaves_db"] = r["trained_psnr_cut"] - r["trained_psnr_leaves"]
        if args.refit:
            r.update(refit_variant(path, work, args, px, renders, mean_psnr))
        out[f"{px:g}"] = r
        note(f"psnr: {px:g} px: " + json.dumps({k: v for k, v in r.items()
                                                if not isinstance(v, list)}))
        shutil.rmtree(path, ignore_errors=True)
    return out


def refit_variant(trained: Path, work: Path, args, px: float, renders, mean_psnr) -> dict:
    """The trained scene rebuilt from its leaves with the fit, rendered with its cut."""
    from oocstore.gs.lod_build import build_lod_scene
    from oocstore.gs.scene import Scene

    out = work / "refit"
    t = time.perf_counter()
    with Scene.open(trained, readonly=True) as s:
        build_lod_scene(s, out, overwrite=True, fit=args.fit).close()
    cut, leaves = renders(out, px), renders(out, 0.0)
    note(f"psnr: {px:g} px: refit in {time.perf_counter() - t:.1f} s")
    res = {"refit_psnr_cut": mean_psnr(cut), "refit_psnr_leaves": mean_psnr(leaves),
           "refit_seconds": time.perf_counter() - t}
    res["refit_cut_minus_leaves_db"] = res["refit_psnr_cut"] - res["refit_psnr_leaves"]
    shutil.rmtree(out, ignore_errors=True)
    return res


def one_tiling(tile: str, work: Path, args) -> dict:
    from oocstore.gs.cameras import scene_up
    from oocstore.gs.ingest import ingest_scene
    from oocstore.gs.lod_build import build_lod_scene
    from oocstore.gs.scene import Scene
    from oocstore.samplers.views import lod_views

    w, h = (int(x) for x in args.size.lower().split("x"))
    src_path, lod_path = work / f"g{tile}", work / f"g{tile}.lod"
    for p in (src_path, lod_path):
        shutil.rmtree(p, ignore_errors=True)
    t = time.perf_counter()
    kw = dict(block_size=256, views=12) if args.toy else {}
    ingest_scene(args.src, src_path, tile=tile, sh_degree=0, **kw).close()
    ingest_s = time.perf_counter() - t
    note(f"{tile}: ingested in {ingest_s:.1f} s")
    with Scene.open(src_path, readonly=True) as src:
        _, prm = src.read_params()
        up = scene_up(prm[:, :3], src.cameras)
        cams, extent = aerial_cameras(prm[:, :3], up, args.views, w, h, seed=args.seed)
        del prm
        t = time.perf_counter()
        fit_report: dict = {}
        lod = build_lod_scene(src, lod_path, cameras=cams, fit=args.fit,
                              progress=lambda m: fit_report.setdefault("log", []).append(m))
        build_s = time.perf_counter() - t
        note(f"{tile}: hierarchy built in {build_s:.1f} s")
        with lod:
            sweep = {}
            for px in args.pxs:  # the first threshold's figures stay at the top level
                ws, cuts_px, vis = working_sets(src, lod, cams, px)
                sweep[f"{px:g}"] = {k: v for k, v in ws.items() if k != "per_view"}
                if px == args.pxs[0]:
                    first, cuts = ws, cuts_px
            note(f"{tile}: working sets measured")
            with_leaves = src.num_gaussians <= args.leaves_max
            leaf_cuts = lod_views(lod.hierarchy(), cams, vis, range(len(cams)), 0.0) \
                if with_leaves else None
            views = np.linspace(0, len(cams) - 1, args.render_views).round().astype(int)
            rt = render_times(lod, cams, vis, cuts, leaf_cuts, views, with_leaves)
            for px in args.pxs[1:]:
                cuts_px = lod_views(lod.hierarchy(), cams, vis, views, px)
                rt_px = render_times(lod, cams, vis, cuts_px, None, views, False)
                sweep[f"{px:g}"]["render_lod_median_cpu_s"] = rt_px["lod_median_cpu_s"]
            sweep[f"{args.pxs[0]:g}"]["render_lod_median_cpu_s"] = rt["lod_median_cpu_s"]
            note(f"{tile}: renders timed")
            res = {"tile": tile, "leaves": src.num_gaussians, "nodes": lod.num_gaussians,
                   "levels": lod.lod_meta["levels"], "extent": extent,
                   "ingest_s": ingest_s, "build_s": build_s,
                   "fit_steps": args.fit.steps, "fit_log": fit_report.get("log", [])[-1:],
                   **first, "render": rt,
                   "by_lod_pixels": sweep}
    if tile == args.psnr_tile:
        by_px = psnr_study(lod_path, work, cams, args, args.pxs)
        res["psnr"] = by_px[f"{args.pxs[0]:g}"]
        for k, v in by_px.items():
            sweep[k]["psnr"] = v
    if not args.keep:
        shutil.rmtree(src_path, ignore_errors=True)
        shutil.rmtree(lod_path, ignore_errors=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(GARDEN))
    ap.add_argument("--tiles", default="1x1,2x2,4x4,8x8")
    ap.add_argument("--views", type=int, default=48,
                    help="aerial cameras (every 8th, from view 0, held out; default 48)")
    ap.add_argument("--size", default="162x105")
    ap.add_argument("--lod-pixels", type=float, default=1.0)
    ap.add_argument("--lod-pixels-list", default=None, metavar="PX,PX,...",
                    help="measure these thresholds (working set, cut render, held-out PSNR); "
                         "the first one's figures are the top-level ones (default: --lod-pixels)")
    ap.add_argument("--render-views", type=int, default=3)
    ap.add_argument("--leaves-max", type=int, default=2_500_000,
                    help="render all leaves only on scenes up to this many Gaussians")
    ap.add_argument("--psnr-tile", default="4x4")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-steps", default="0",
                    help="gs-lod build --fit-steps: steps fitting the merged nodes (0: none)")
    ap.add_argument("--fit-pixels", default=None, metavar="PX[,PX]",
                    help="gs-lod build --fit-pixels (default 1)")
    ap.add_argument("--refit", action="store_true",
                    help="also rebuild the trained scene with the fit and measure its cut")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scenes in --work")
    ap.add_argument("--toy", action="store_true", help="a generated scene, seconds")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gs_lod.json"))
    args = ap.parse_args(argv)
    args.pxs = ([float(x) for x in args.lod_pixels_list.split(",")] if args.lod_pixels_list
                else [args.lod_pixels])
    args.lod_pixels = args.pxs[0]
    from oocstore.gs.lod_fit import fit_config

    args.fit = fit_config(args.fit_steps, args.fit_pixels)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="gs_lod_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.toy:
        from gs_train import toy_source  # noqa: E402  (bench/ is the script's folder)

        args.src = str(toy_source(work / "toy.npz"))
        args.tiles, args.psnr_tile, args.steps, args.size = "1x1,2x2", "2x2", 4, "48x32"
        args.views = 16
    results = []
    for tile in args.tiles.split(","):
        t = time.perf_counter()
        r = one_tiling(tile, work, args)
        r["seconds"] = time.perf_counter() - t
        results.append(r)
        rt = r["render"]
        print(f"{tile}: {r['leaves']:,} leaves, {r['nodes']:,} nodes, {r['blocks_lod_scene']} "
              f"blocks; blocks per view no LoD {100 * r['no_lod_block_fraction_max']:.0f}% max "
              f"-> LoD {100 * r['lod_block_fraction_max']:.1f}% max "
              f"({100 * r['lod_block_fraction_mean']:.1f}% mean); cut <= {r['lod_cut_max']:,}; "
              f"render LoD {rt['lod_median_cpu_s']:.2f} CPU-s"
              + (f", leaves {rt['leaves_median_cpu_s']:.2f} CPU-s" if rt["leaves_cpu_s"] else ""),
              flush=True)
        for px, w in r["by_lod_pixels"].items():
            print(f"  {px} px: blocks per view {100 * w['lod_block_fraction_max']:.1f}% max, "
                  f"cut <= {w['lod_cut_max']:,}, render {w['render_lod_median_cpu_s']:.2f} CPU-s",
                  flush=True)
            if "psnr" in w:
                p = w["psnr"]
                print(f"    PSNR after {p['steps']} steps: cut {p['trained_psnr_cut']:.2f} dB, "
                      f"leaves {p['trained_psnr_leaves']:.2f} dB "
                      f"({p['cut_minus_leaves_db']:+.2f}); teacher cut vs leaves "
                      f"{p['teacher_psnr_cut_vs_leaves']:.2f} dB; training views beside them: cut "
                      f"{p['trained_psnr_cut_training_views']:.2f} dB, leaves "
                      f"{p['trained_psnr_leaves_training_views']:.2f} dB", flush=True)
                if "refit_psnr_cut" in p:
                    print(f"    refit after training: cut {p['refit_psnr_cut']:.2f} dB, leaves "
                          f"{p['refit_psnr_leaves']:.2f} dB "
                          f"({p['refit_cut_minus_leaves_db']:+.2f})", flush=True)
    doc = {"bench": "gs_lod", "src": Path(args.src).name, "size": args.size,
           "views": args.views, "lod_pixels": args.lod_pixels, "fit_steps": args.fit.steps,
           "fit_pixels": list(args.fit.lod_pixels), "lod_pixels_list": args.pxs, "steps": args.steps,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "note": "2 CPU cores shared with other jobs"},
           "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
           "results": results}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
