"""Gaussian splatting from photographs: held-out quality per step count, stream vs
all-on-device, Gaussian count curve, a rendered held-out view beside its photograph.

1. Ingest the photos (``oocstore ingest scene SRC --images-downscale K``; random initial
   Gaussians for a ``transforms.json``, the COLMAP points for a model).
2. **Identity**: train two copies ``--compare-steps`` steps, ``--mode stream`` and
   ``--mode all-on-device``, same seed and recipe; the trained scenes must hold the same
   records, byte for byte (densification included), and the same held-out PSNR.
3. **Quality**: train a copy ``--steps`` steps in stream mode with ``--eval-every``:
   held-out PSNR / SSIM per step count, the Gaussians' count after every refinement,
   per-stage times (``gs-train --json``).
4. Render the first held-out view beside its photograph into ``--png``.

Datasets: ``lego`` (``../shared/data/nerf_synthetic/lego/transforms_train.json``, every
8th image held out), ``fox`` (``../shared/data/instant_ngp_fox/transforms.json``), or
``--src`` any COLMAP model / transforms.json. ``--toy`` renders a small dataset with the
project's rasterizer (``oocstore.gs.synthetic.write_photo_dataset``) and trains a few
dozen steps: seconds, run by the test suite. CPU times are the reference rasterizer's on
a shared machine. LPIPS is not measured (its weights are not available offline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
DATASETS = {"lego": DATA / "nerf_synthetic" / "lego" / "transforms_train.json",
            "fox": DATA / "instant_ngp_fox" / "transforms.json"}


def oocstore(*args, what: str) -> dict:
    cmd = [sys.executable, "-m", "oocstore", *map(str, args), "--json", "--quiet"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"{what} failed ({' '.join(cmd[2:])}):\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def train(scene: Path, mode: str, steps: int, args, extra=()) -> dict:
    return oocstore("gs-train", scene, "--steps", steps, "--mode", mode, "--seed", args.seed,
                    "--threads", args.threads, *args.train_args, *extra,
                    what=f"gs-train --mode {mode}")


def records_identical(a: Path, b: Path) -> bool:
    import numpy as np

    from oocstore.gs.scene import Scene

    out = []
    for p in (a, b):
        with Scene.open(p, readonly=True) as s:
            ids, rec = s.read_all()
        order = np.argsort(ids)
        out.append((ids[order], rec[order]))
    return (np.array_equal(out[0][0], out[1][0])
            and out[0][1].tobytes() == out[1][1].tobytes())


def side_by_side(scene_path: Path, png: Path) -> dict:
    """The first held-out view rendered beside its photograph (one PNG)."""
    import numpy as np
    import torch
    from PIL import Image
    from oocstore.samplers.views import visibility_sets

    from oocstore.gs.losses import psnr
    from oocstore.gs.scene import Scene
    from oocstore.gs.train import render_view

    with Scene.open(scene_path, readonly=True) as s:
        v = int(s.test_views[0])
        cams = s.cameras
        vis = visibility_sets(s.block_bounds, cams)
        bg = None if s.background is None else torch.tensor(s.background, dtype=torch.float32)
        img = render_view(s, cams, vis[v], v, "cpu", background=bg).clamp(0, 1)
        photo = s.read_image(v)
        name = s.image_names[v]
    rgb = (img.numpy() * 255 + 0.5).astype(np.uint8)
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([rgb, photo], axis=1)).save(png)
    return {"view": v, "image": name, "psnr": psnr(img, torch.from_numpy(photo).float() / 255),
            "png": str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="lego")
    ap.add_argument("--src", default=None, help="a COLMAP model dir or transforms.json instead")
    ap.add_argument("--downscale", type=int, default=8, help="--images-downscale (default 8)")
    ap.add_argument("--init-points", type=int, default=None,
                    help="random initial Gaussians for transforms.json (ingest's default: 100000)")
    ap.add_argument("--test-every", type=int, default=None)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--compare-steps", type=int, default=100,
                    help="steps of the stream vs all-on-device identity check (0: skip)")
    ap.add_argument("--train-args", default="",
                    help="extra gs-train flags for every run, one string (e.g. '--random-background')")
    ap.add_argument("--ingest-args", default="",
                    help="extra ingest flags, one string (e.g. --ingest-args=--skip-missing-images)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--out", default=None, help="JSON result (default bench/results/gs_photos_<name>.json)")
    ap.add_argument("--png", default=None,
                    help="render beside photo (default bench/results/gs_photos_<name>_view.png)")
    ap.add_argument("--toy", action="store_true", help="a generated photo dataset, a few dozen steps")
    args = ap.parse_args(argv)
    args.train_args = args.train_args.split()
    work = Path(args.dir or tempfile.mkdtemp(prefix="gs_photos_"))
    work.mkdir(parents=True, exist_ok=True)
    ingest_args = []
    if args.toy:
        from oocstore.gs.synthetic import write_photo_dataset

        src = write_photo_dataset(work / "toy_src", "colmap", views=16, width=40, height=32,
                                  gaussians=800, seed=args.seed)
        name = "toy"
        args.downscale, args.test_every = 1, 4
        args.steps, args.eval_every, args.compare_steps = 30, 10, 12
        args.train_args += ["--densify-every", "10", "--densify-from", "5", "--densify-until",
                            "25", "--sh-every", "10", "--opacity-reset-every", "20"]
    else:
        src = Path(args.src) if args.src else DATASETS[args.dataset]
        name = args.dataset
        if args.src:  # a transforms*.json is named by its folder
            name = src.parent.name if src.suffix == ".json" else src.name
        if not src.exists():
            raise SystemExit(f"{src} is missing: pass --src, put the data in {DATA}, or use --toy")
    out = Path(args.out or REPO / "bench" / "results" / f"gs_photos_{name}.json")
    png = Path(args.png or REPO / "bench" / "results" / f"gs_photos_{name}_view.png")
    if args.toy and args.out is None:
        out = work / "gs_photos_toy.json"
    if args.toy and args.png is None:
        png = work / "gs_photos_toy_view.png"
    ingest_args = ["--images-downscale", args.downscale, "--seed", args.seed]
    if args.init_points:
        ingest_args += ["--init-points", args.init_points]
    if args.test_every is not None:
        ingest_args += ["--test-every", args.test_every]
    ingest_args += args.ingest_args.split()
    base = work / "scene"
    ingest = oocstore("ingest", "scene", src, base, "--overwrite", *ingest_args, what="ingest")
    print(f"ingested {ingest['images']} images ({ingest.get('width')}x{ingest.get('height')}), "
          f"{ingest['gaussians']:,} Gaussians in {ingest['wall_s']} s", file=sys.stderr)

    identity = None
    if args.compare_steps:
        runs = {}
        for mode in ("stream", "all-on-device"):
            copy = work / f"scene-{mode}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(base, copy)
            runs[mode] = train(copy, mode, args.compare_steps, args)
        same = records_identical(work / "scene-stream", work / "scene-all-on-device")
        s, a = runs["stream"], runs["all-on-device"]
        identity = {"steps": args.compare_steps, "records_identical": same,
                    "psnr_stream": s["psnr_test"], "psnr_all_on_device": a["psnr_test"],
                    "gaussians_stream": s["gaussians"], "gaussians_all_on_device": a["gaussians"],
                    "bytes_moved_per_step_stream": s["bytes_moved_per_step"],
                    "device_budget_stream": s.get("device_budget"),
                    "peak_gpu_bytes_stream": s["peak_gpu_bytes"],
                    "peak_gpu_bytes_all_on_device": a["peak_gpu_bytes"]}
        print(f"stream vs all-on-device, {args.compare_steps} steps: records identical {same}, "
              f"PSNR {s['psnr_test']:.3f} / {a['psnr_test']:.3f} dB", file=sys.stderr)
        for mode in runs:
            shutil.rmtree(work / f"scene-{mode}", ignore_errors=True)

    run_dir = work / "scene-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(base, run_dir)
    run = train(run_dir, "stream", args.steps, args, ["--eval-every", args.eval_every])
    view = side_by_side(run_dir, png)
    per_step = [{"step": e["step"], "psnr": round(e["psnr"], 3),
                 "ssim": None if e["ssim"] is None else round(e["ssim"], 4)} for e in run["evals"]]
    for e in per_step:
        print(f"step {e['step']:6d}: held-out PSNR {e['psnr']:.2f} dB, SSIM {e['ssim']}",
              file=sys.stderr)
    summary = {
        "bench": "gs_photos", "dataset": name, "toy": bool(args.toy),
        "src": str(src.relative_to(REPO.parent)) if src.is_relative_to(REPO.parent) else str(src),
        "downscale": args.downscale, "image_size": run["render_size"],
        "train_views": run["train_views"], "test_views": run["heldout_views"],
        "init": ingest.get("init"), "images_missing_skipped": ingest.get("images_missing_skipped"),
        "ingest_args": args.ingest_args.split(), "steps": args.steps, "seed": args.seed,
        "train_args": args.train_args, "threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cores (shared), no GPU: the "
                   "reference rasterizer, device = budgeted host memory",
        "heldout_per_step": per_step, "psnr_test": run["psnr_test"], "ssim_test": run["ssim_test"],
        "lpips_test": None, "lpips_note": run["lpips_note"],
        "gaussians_curve": run["gaussians_curve"], "gaussians": run["gaussians"],
        "recipe": run["recipe"], "stage_seconds": run["stage_seconds"],
        "step_time_s": run["step_time_s"], "wall_s": run["wall_s"],
        "images_bytes": run["images_bytes"], "image_buffers_bytes": run["image_buffers_bytes"],
        "peak_rss_bytes": run["peak_rss_bytes"], "device_budget": run.get("device_budget"),
        "stream_vs_all_on_device": identity, "heldout_view": view,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
