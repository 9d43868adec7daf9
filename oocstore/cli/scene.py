"""Scene commands: ``ingest scene``, ``export-scene``, ``gs-train`` and ``gs-render``,
registered like every other command (:mod:`oocstore.cli`). Errors are
:class:`~oocstore.errors.OocError`s, printed by :func:`oocstore.cli.main` as one line.
``gs-train`` and ``gs-render`` import torch only when they run.
"""

from __future__ import annotations

import json
import time

from ..gs.recipe import MODE_NAMES, RECIPE_FLAGS
from ..units import format_size
from .common import add_device, add_flag, add_seed, add_store, command, progress


def add_ingest_scene(kinds) -> None:
    """Register ``ingest scene`` on the ``ingest`` subparsers ``kinds``."""
    p = command(kinds, "scene", _cmd_ingest_scene,
                "a Gaussian-splatting scene from photographs with poses (COLMAP model, "
                      "transforms.json), a 3DGS .ply or an .npz point cloud")
    p.add_argument("src", metavar="SRC",
                   help="COLMAP model dir, transforms.json (or its folder), .ply or .npz source")
    p.add_argument("out", metavar="OUT", help="scene store directory to create")
    p.add_argument("--tile", default=None, metavar="KxK",
                   help="replicate the scene (and its cameras) on a KxK grid, e.g. 4x4")
    p.add_argument("--sh-degree", type=int, default=None, metavar="D",
                   help="SH degree 0..3 (default: the .ply's; 3 for point clouds)")
    p.add_argument("--block-size", type=int, default=4096, metavar="N",
                   help="Gaussians per block at ingest (default 4096)")
    p.add_argument("--spare", type=float, default=0.25,
                   help="spare block capacity for densification, as a fraction (default 0.25)")
    p.add_argument("--views", type=int, default=None, metavar="N",
                   help="views per tile: orbit views are added up to N (default: the source's "
                        "own when it has 16 or more, else 32)")
    p.add_argument("--camera-path", choices=["orbit", "flythrough"], default="orbit",
                   help="how missing views are generated: rings around each tile (default), or "
                        "one lawnmower fly-through over the whole scene looking ahead and down")
    p.add_argument("--cameras", default=None, metavar="PATH",
                   help="cameras from a COLMAP text model directory (cameras.txt + images.txt) "
                        "or an .npz with viewmats, Ks, width, height")
    p.add_argument("--moments", choices=["float32", "float16"], default="float32",
                   help="precision of the stored Adam moments (float16 halves them)")
    g = p.add_argument_group("photographs (COLMAP model or transforms.json sources)")
    g.add_argument("--images", default=None, metavar="DIR",
                   help="the COLMAP model's images folder (default: images/ beside sparse/)")
    g.add_argument("--images-downscale", default=1, metavar="K",
                   help="store the photos downscaled by the integer K (1, 2, 4, 8; default 1)")
    g.add_argument("--test-every", type=int, default=None, metavar="N",
                   help="hold out every Nth image (3DGS: index %% N == 0) for evaluation; default: "
                        "the dataset's own test split (transforms_test.json) or 8; 0: none")
    g.add_argument("--init-points", type=int, default=None, metavar="N",
                   help="random initial Gaussians when the source has no point cloud "
                        "(default 100000, as 3DGS)")
    g.add_argument("--background", default=None, metavar="white|black|R,G,B",
                   help="colour RGBA photos are composited on (default white)")
    add_flag(g, "--skip-missing-images", "ingest the views whose image exists when some are "
                                         "missing (default: refuse)")
    add_seed(p, "seed for generated views and random initial points (default 0)")
    add_flag(p, "--overwrite", "replace OUT if it exists")
    add_flag(p, "--json", "print one JSON summary line")
    add_flag(p, "--quiet", "no progress bar")


def add_export_scene(sub) -> None:
    """Register the top-level ``export-scene`` subcommand."""
    p = command(sub, "export-scene", _cmd_export_scene,
                "write a scene's Gaussians as a standard 3DGS .ply")
    add_store(p, "scene", "scene store")
    p.add_argument("out", metavar="OUT.ply", help=".ply file to write")
    p.add_argument("--cameras-json", default=None, metavar="PATH",
                   help="graphdeco viewer cameras (default: cameras.json beside OUT.ply)")
    add_flag(p, "--no-cameras-json", "write only the .ply")
    add_flag(p, "--quiet", "no progress bar, nothing printed on success")


def visibility_summary(scene) -> dict:
    """Visible-block statistics of the scene's own cameras."""
    import numpy as np

    from oocstore.samplers.views import mean_consecutive_jaccard, view_order, visibility_sets

    vis = visibility_sets(scene, None)
    counts = np.array([len(v) for v in vis])
    bb = scene.block_capacity * scene.record_bytes
    order = view_order(vis, seed=0, randomness=0.0)
    rnd = np.random.default_rng(0).permutation(len(vis))
    return {"views": len(vis), "blocks": scene.num_blocks,
            "visible_blocks_mean": float(counts.mean()) if len(counts) else 0.0,
            "visible_blocks_max": int(counts.max()) if len(counts) else 0,
            "visible_fraction_mean": float(counts.mean() / max(scene.num_blocks, 1))
            if len(counts) else 0.0,
            "largest_view_working_set_bytes": int(counts.max()) * bb if len(counts) else 0,
            "consecutive_jaccard_ordered": mean_consecutive_jaccard(order, vis),
            "consecutive_jaccard_random": mean_consecutive_jaccard(rnd, vis)}


def _cmd_ingest_photos(args) -> int:
    import sys

    from ..errors import UsageError
    from ..gs.ingest import ingest_photos
    from ..gs.photos import check_downscale

    for flag, value in (("--tile", args.tile), ("--views", args.views),
                        ("--cameras", args.cameras)):
        if value is not None:
            raise UsageError(f"{flag} does not apply to a photo dataset ({args.src}): the "
                             "photos' own cameras are the views")
    ds = check_downscale(args.images_downscale)  # before the bar: errors stay one line
    t0 = time.perf_counter()
    report: dict = {}
    bar = None

    def on_loaded(n: int) -> None:  # every input is checked by now: the bar may start
        nonlocal bar
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="ingest photos", unit="image", dynamic_ncols=True,
                       file=sys.stderr)

    def update(n: int) -> None:
        if bar is not None:
            bar.update(n)

    try:
        scene = ingest_photos(args.src, args.out, images=args.images, images_downscale=ds,
                              test_every=args.test_every, init_points=args.init_points,
                              background=args.background, sh_degree=args.sh_degree,
                              block_size=args.block_size, spare=args.spare, moments=args.moments,
                              overwrite=args.overwrite, seed=args.seed,
                              skip_missing_images=args.skip_missing_images, progress=update,
                              on_loaded=on_loaded, report=report)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    try:
        summary = {"path": str(scene.path), "gaussians": scene.num_gaussians,
                   "sh_degree": scene.sh_degree, "blocks": scene.num_blocks,
                   "images": scene.num_images, "width": scene.image_size[0],
                   "height": scene.image_size[1], "test_views": len(scene.test_views),
                   "images_bytes": scene.images_bytes, "seconds": round(seconds, 3)}
        summary.update({k: v for k, v in report.items() if k not in summary})
    finally:
        scene.close()
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    elif not args.quiet:
        extra = ""
        if summary.get("images_unused"):
            extra += f"; {summary['images_unused']} image file(s) not in the model ignored"
        if summary.get("images_missing_skipped"):
            extra += f"; {summary['images_missing_skipped']} missing image(s) skipped"
        print(f"scene {summary['path']}: {summary['images']} photos of {summary['width']}x"
              f"{summary['height']} ({summary['test_views']} held out, "
              f"{format_size(summary['images_bytes'])}), {summary['gaussians']:,} Gaussians "
              f"from {summary['init']} (SH degree {summary['sh_degree']}), "
              f"{summary['blocks']} blocks; ingested in {summary['seconds']:.1f} s{extra}")
    return 0


def _cmd_ingest_scene(args) -> int:
    """Build a scene store: Gaussians (parameters + zeroed Adam moments) in
    Morton-ordered blocks, with training cameras. SRC is a COLMAP model directory
    (sparse/0 with cameras, images, points3D as .bin or .txt; the images folder beside
    sparse/ or --images) or a NeRF-synthetic / instant-ngp transforms*.json (or its
    folder): the photos are stored in the scene, downscaled, with every --test-every-th
    held out. Or SRC is a 3DGS .ply (any SH degree 0..3) or an .npz with means3d (+
    colors, viewmats, Ks, width, height); their cameras are generated on an orbit around
    the scene when the source has fewer than 16."""
    from ..gs.ingest import ingest_scene, parse_tile, source_count
    from ..gs.photo_sources import photo_source_kind

    if photo_source_kind(args.src) is not None:
        return _cmd_ingest_photos(args)
    from ..errors import UsageError

    for flag, value, default in (("--images", args.images, None),
                                 ("--images-downscale", args.images_downscale, 1),
                                 ("--test-every", args.test_every, None),
                                 ("--init-points", args.init_points, None),
                                 ("--background", args.background, None),
                                 ("--skip-missing-images", args.skip_missing_images, False)):
        if value != default:
            raise UsageError(f"{flag} applies to photo datasets (a COLMAP model or a "
                             f"transforms.json), not to {args.src}")
    t0 = time.perf_counter()
    kx, ky = parse_tile(args.tile)  # before the bar: errors stay one line
    count = source_count(args.src)
    total = count * kx * ky if count is not None else None
    with progress(args, total, "ingest scene", unit="gaussian") as update:
        scene = ingest_scene(args.src, args.out, tile=(kx, ky), sh_degree=args.sh_degree,
                             block_size=args.block_size, spare=args.spare, views=args.views,
                             cameras=args.cameras, moments=args.moments, overwrite=args.overwrite,
                             seed=args.seed, camera_path=args.camera_path, progress=update)
    seconds = time.perf_counter() - t0
    try:
        summary = {"path": str(scene.path), "gaussians": scene.num_gaussians,
                   "sh_degree": scene.sh_degree, "blocks": scene.num_blocks,
                   "block_capacity": scene.block_capacity, "record_bytes": scene.record_bytes,
                   "disk_row_bytes": scene.disk_row_bytes,
                   "scene_bytes": scene.num_gaussians * scene.record_bytes,
                   "seconds": round(seconds, 3),
                   "gaussians_per_s": round(scene.num_gaussians / max(seconds, 1e-9))}
        summary.update(visibility_summary(scene))
    finally:
        scene.close()
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    elif not args.quiet:
        print(f"scene {summary['path']}: {summary['gaussians']:,} Gaussians (SH degree "
              f"{summary['sh_degree']}), {summary['blocks']} blocks of up to "
              f"{summary['block_capacity']}, {format_size(summary['scene_bytes'])} of records; "
              f"{summary['views']} views see {summary['visible_blocks_mean']:.1f} blocks on "
              f"average (max {summary['visible_blocks_max']}, "
              f"{100 * summary['visible_fraction_mean']:.0f}%); ingested in "
              f"{summary['seconds']:.1f} s ({summary['gaussians_per_s']:,} Gaussians/s)")
    return 0


def _cmd_export_scene(args) -> int:
    """Write the scene's parameters (without optimizer state) as a binary little-endian
    3DGS .ply, in Gaussian id order, and the cameras as graphdeco's viewer cameras.json
    beside it."""
    from pathlib import Path

    from ..gs.scene import Scene
    from ..gs.views_out import write_cameras_json

    cams_path = None if args.no_cameras_json else Path(
        args.cameras_json or Path(args.out).parent / "cameras.json")
    if cams_path is not None and not cams_path.parent.is_dir():
        from ..errors import UsageError

        raise UsageError(f"--cameras-json {cams_path}: folder {cams_path.parent} does not exist: "
                         "create it or pass another path")
    with Scene.open(args.scene, readonly=True) as scene:
        with progress(args, scene.num_gaussians, "export scene", unit="gaussian") as update:
            n = scene.export_ply(args.out, progress=update)
        views = write_cameras_json(scene, cams_path) if cams_path is not None else 0
    if not args.quiet:
        print(f"wrote {n:,} Gaussians to {args.out}"
              + (f" and {views} cameras to {cams_path}" if cams_path is not None else ""))
    return 0


#: ``gs-train``'s description, one paragraph a string (each filled to 88 columns).
_GS_TRAIN_DESCRIPTION = (
    "Train a scene in place. A scene ingested from photographs trains against its photos with "
    "the 3DGS recipe (L1 + D-SSIM, SH degree schedule, decaying position rate, densification, "
    "opacity resets) and reports held-out PSNR / SSIM; --target synthetic (the default for "
    "scenes without images) trains a perturbed copy against renders of the scene itself, for "
    "scale tests.",
    "--mode stream puts on the device only each step's Gaussians in the frustum (parameters "
    "and gradient; Adam runs on the host, or in block slots on the device when --gpu-budget "
    "holds them: --optimizer-device) inside --gpu-budget (default 1.25 x the largest view's "
    "working set), fed from host slots, a CPU tier and the scene on SSD; images stream a few "
    "at a time inside --cpu-budget. all-on-device and naive-offload are the baselines. "
    "Every check (flags, device, data, budgets) runs before the first write.",
    "Schedules: the step counts of the recipe (--sh-every, --densify-from, --densify-until, "
    "--densify-every, --opacity-reset-every) are 3DGS's for a 30,000-step run; a shorter run "
    "left at the defaults uses each times steps/30000 (rounded, at least 1; the opacity reset "
    "period stays 30 densification periods, as 3000/100), e.g. 2,000 steps: densify from 33 "
    "to 1,000 every 7, reset every 210, SH up every 67. Explicit values are used as given. "
    "LPIPS is not reported: its weights are not available offline.",
)

#: The recipe flags of ``gs-train`` (:data:`~oocstore.gs.recipe.RECIPE_FLAGS` spelt
#: ``--ssim-lambda`` ...): type, metavar, help. Unset, each takes the recipe's default.
_RECIPE_ARGS = {
    "ssim_lambda": (float, "L", "loss (1-L) L1 + L (1-SSIM) (photos: 0.2)"),
    "sh_every": (int, "N", "raise the SH degree by one every N steps (photos: 1000, scaled)"),
    "means_lr": (float, "LR", "initial position learning rate x scene scale (1.6e-4)"),
    "means_lr_final": (float, "LR", "final position learning rate x scene scale (photos: "
                                    "1.6e-6; exponential decay)"),
    "densify_from": (int, "N", "densify after step N (photos: 500, scaled)"),
    "densify_until": (int, "N", "no densification or opacity reset from step N (photos: "
                                "15000, scaled)"),
    "densify_every": (int, "N", "clone / split / prune every N steps (photos: 100, scaled; "
                                "synthetic: 0, never)"),
    "opacity_reset_every": (int, "N", "clamp opacities to 2 x --prune-opa every N steps "
                                      "(photos: 3000, scaled)"),
    "grow_grad2d": (float, "G", "screen-space gradient threshold for clone/split (2e-4)"),
    "grow_scale3d": (float, "F", "clone below, split above F x scene scale (0.01)"),
    "prune_opa": (float, "O", "prune opacity below O (0.005)"),
    "prune_scale3d": (float, "F", "after the first opacity reset, prune Gaussians larger than "
                                  "F x scene scale (0.1)"),
}


def add_gs_train(sub) -> None:
    """Register ``oocstore gs-train`` on the top-level subparsers."""
    import argparse
    import textwrap

    p = command(sub, "gs-train", _cmd_gs_train, "train a Gaussian-splatting scene out of core",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                description="\n\n".join(textwrap.fill(par, 88) for par in _GS_TRAIN_DESCRIPTION))
    add_store(p, "scene")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--target", choices=["photos", "synthetic"], default=None,
                   help="photos (default when the scene has images) or synthetic")
    p.add_argument("--mode", choices=sorted(MODE_NAMES), default="stream")
    add_device(p)
    # Sizes are parsed by gs-train itself (its errors name the flag); --gpu-budget first.
    p.add_argument("--gpu-budget", default=None, metavar="SIZE",
                   help="device budget (on --device cpu: a budgeted region of host memory)")
    p.add_argument("--cpu-budget", default=None, metavar="SIZE",
                   help="CPU budget: the CPU tier, prefetch and write-back buffers, image "
                        "buffers")
    p.add_argument("--prefetch-depth", type=int, default=2, metavar="N",
                   help="steps of blocks and images read ahead (default 2)")
    p.add_argument("--optimizer-device", default="auto", metavar="WHERE",
                   help="stream: auto (default: device when --gpu-budget holds the device "
                        "optimizer's working set and it is predicted to move fewer bytes, "
                        "else cpu), cpu (Adam on the host, the device holds only the step's "
                        "culled parameters and gradient) or device (block slots of records "
                        "and Adam moments on the device)")
    p.add_argument("--view-randomness", type=float, default=0.1, metavar="R",
                   help="share of random jumps in the view order, 0..1 (default 0.1; 0: fully "
                        "local, 1: random)")
    add_seed(p)
    p.add_argument("--size", default=None, metavar="WxH",
                   help="synthetic render size (default: within 162x105 on cpu, the scene's on "
                        "cuda); photos train at their stored size")
    p.add_argument("--eval-every", type=int, default=0, metavar="N",
                   help="held-out PSNR/SSIM every N steps (default 0: at the start and the end)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N")
    p.add_argument("--sh-degree", type=int, default=None, metavar="D",
                   help="highest SH degree trained (default: the scene's)")
    p.add_argument("--lod-pixels", default=None, metavar="PX",
                   help="scenes with a level-of-detail hierarchy (gs-lod build): each step "
                        "renders and trains its view's cut, merged nodes below PX pixels "
                        "(default 1; 0: leaves only); densification is off unless "
                        "--densify-every N is given: it refines the leaves and rebuilds "
                        "the hierarchy locally")
    r = p.add_argument_group("recipe (photo defaults: 3DGS / gsplat DefaultStrategy; synthetic "
                             "defaults: L1, full SH, constant rates, no densification)")
    for name in RECIPE_FLAGS:
        flag = "--" + name.replace("_", "-")
        if name == "random_background":
            r.add_argument(flag, action="store_true", default=None,
                           help="render each training step on a random background colour")
        else:
            kind, metavar, text = _RECIPE_ARGS[name]
            r.add_argument(flag, type=kind, default=None, metavar=metavar, help=text)
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's; 1 is faster on a busy machine)")
    add_flag(p, "--no-verify-reads", "do not check block checksums when reading from SSD (on by "
                                     "default: a damaged block then stops training with an "
                                     "error naming it)")
    add_flag(p, "--json", "print one JSON object as the last line")
    add_flag(p, "--quiet", "no progress bar")
    # GsTrainConfig's parameter behind --view-randomness (errors name it; see with_flags)
    p.set_defaults(param_aliases={"randomness": "view_randomness"})


def add_gs_render(sub) -> None:
    """Register ``oocstore gs-render`` (it needs torch when it runs)."""
    p = command(sub, "gs-render", _cmd_gs_render,
                "render a scene's test, training or orbit views to PNGs")
    add_store(p, "scene")
    p.add_argument("--views", choices=["test", "train", "orbit"], default="test")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs")
    p.add_argument("--frames", type=int, default=60, metavar="N", help="orbit frames (60)")
    p.add_argument("--video", default=None, metavar="PATH", help="orbit animation (.gif/.mp4)")
    add_flag(p, "--with-photos", "also write each render beside its photograph (test/train "
                                 "views)")
    p.add_argument("--sh-degree", type=int, default=None, metavar="D")
    p.add_argument("--lod-pixels", default=None, metavar="PX",
                   help="scenes with a level-of-detail hierarchy: render each view's cut, "
                        "merged nodes below PX pixels (default 1; 0: leaves only)")
    add_device(p)
    add_flag(p, "--quiet", "no progress bar, nothing printed")
    # render_scene_views' parameter behind --views (errors name it; see with_flags)
    p.set_defaults(param_aliases={"which": "views"})


def _cmd_gs_render(args) -> int:
    """Render views of a scene from its committed Gaussians into DIR as PNGs: the
    held-out views (test), the training views (train) or a circle around the scene
    (orbit; --video writes an animation through imageio: .gif, or .mp4 with
    imageio-ffmpeg)."""
    from ..gs.scene import Scene
    from ..gs.views_out import render_scene_views

    with Scene.open(args.scene, readonly=True) as scene:
        with progress(args, None, "gs-render", unit="view") as update:
            paths = render_scene_views(scene, args.views, args.out, device=args.device,
                                       frames=args.frames, video=args.video,
                                       with_photos=args.with_photos, sh_degree=args.sh_degree,
                                       progress=update, lod_pixels=args.lod_pixels)
    if not args.quiet:
        print(f"wrote {len(paths)} {args.views} views to {args.out}"
              + (f" and {args.video}" if args.video else ""))
    return 0


def _cmd_gs_train(args) -> int:
    from ..gs.train import cmd_gs_train

    return cmd_gs_train(args)


def add_gs_lod(sub) -> None:
    """Register ``oocstore gs-lod build`` (level-of-detail hierarchies)."""
    p = command(sub, "gs-lod", None, "level-of-detail hierarchies of Gaussian-splatting scenes",
                description="Level of detail: `gs-lod build SRC OUT` writes SRC with a "
                            "hierarchy of merged Gaussians to OUT (see docs/SCENE_FORMAT.md).")
    lsub = p.add_subparsers(dest="lod_command", metavar="COMMAND", required=True)
    b = command(lsub, "build", _cmd_gs_lod_build, "write a scene with its level-of-detail "
                                                  "hierarchy to a new scene")
    add_store(b, "src", "scene store to read (left unchanged)")
    b.add_argument("out", metavar="OUT", help="scene store directory to create")
    b.add_argument("--cell", type=float, default=None, metavar="L",
                   help="side of the finest merge cell in scene units (default: twice the "
                        "median Gaussian scale); it doubles every level")
    b.add_argument("--block-size", type=int, default=None, metavar="N",
                   help="nodes per block (default: SRC's block size)")
    b.add_argument("--fit-steps", default=None, metavar="N",
                   help="steps fitting the merged nodes' opacity, colour and scales to "
                        "renders of their leaves from SRC's training views (default 200; "
                        "0: merge rules only)")
    b.add_argument("--fit-pixels", default=None, metavar="PX[,PX]",
                   help="the --lod-pixels threshold(s) whose cuts the fit matches to the "
                        "leaves, in turn (default 1)")
    add_flag(b, "--overwrite", "replace OUT if it exists")
    add_flag(b, "--json", "print one JSON summary line")
    add_flag(b, "--quiet", "nothing printed on success")


def _cmd_gs_lod_build(args) -> int:
    """Build a level-of-detail hierarchy over the Gaussians of the scene SRC and write the
    scene with it to OUT (format version 2): interior nodes are merged Gaussians over
    spatial cells that double in size every level, stored as ordinary records, ordered
    so that every view's cut is a prefix of each block. SRC is only read; every Adam
    moment of OUT starts at zero. A SRC with a hierarchy (after training) is rebuilt from
    its leaves. gs-train and gs-render then use the cut
    (--lod-pixels, default 1; 0: leaves only). Before OUT is written, --fit-steps
    steps fit the merged nodes to their leaves (oocstore.gs.lod_fit)."""
    import os

    from ..errors import UsageError
    from ..gs.lod_build import build_lod_scene
    from ..gs.lod_fit import fit_config
    from ..gs.scene import Scene

    src_real, out_real = os.path.realpath(args.src), os.path.realpath(args.out)
    if src_real == out_real:
        raise UsageError(f"OUT {args.out} is SRC: write the scene with its hierarchy to a new "
                         "directory")
    if os.path.commonpath([src_real, out_real]) in (src_real, out_real):
        raise UsageError(f"OUT {args.out} and SRC {args.src} nest (one holds the other): "
                         "write the scene with its hierarchy to a directory outside SRC")
    fit = fit_config(args.fit_steps, args.fit_pixels)
    t0 = time.perf_counter()
    with Scene.open(args.src, readonly=True) as src:
        with progress(args, fit.steps, "gs-lod fit", unit="step") as update:
            out = build_lod_scene(src, args.out, cell=args.cell, block_size=args.block_size,
                                  overwrite=args.overwrite, fit=fit, fit_progress=update)
    with out:
        meta = dict(out.lod_meta)
        summary = {"path": str(out.path), "nodes": meta["nodes"], "leaves": meta["leaves"],
                   "levels": meta["levels"], "cell": meta["cell"], "blocks": out.num_blocks,
                   "fit_steps": meta.get("fit_steps", 0), "seconds": round(time.perf_counter() - t0, 3)}
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    elif not args.quiet:
        print(f"built {summary['nodes'] - summary['leaves']:,} merged nodes over "
              f"{summary['leaves']:,} Gaussians in {summary['levels']} levels (base cell "
              f"{summary['cell']:.4g}; {summary['fit_steps']} fit steps): {summary['path']}, {summary['blocks']} blocks, "
              f"{summary['seconds']:.1f} s")
    return 0
