"""Gaussian-splatting training: stream vs all-on-device vs naive offload, one run.

Ingests the scene once (``oocstore ingest scene``, optionally tiled), then trains a copy
of it in each mode with ``oocstore gs-train --json`` in its own process (so peak RSS is
per mode), same steps, seed, render size and view order. Prints and writes
(``--out``, default ``bench/results/gs_train.json``) per mode the held-out PSNR, bytes
moved per step (h2d + d2h), median step time, and the ratios against the targets:

* PSNR of stream within 0.3 dB of all-on-device;
* bytes moved per step by stream >= 70 % below naive offload;
* step time of stream / all-on-device (target <= 1.5x on the GPU machine).

On ``--device cpu`` the "device" is a budgeted region of host memory and times are CPU
times of the reference rasterizer on a shared machine: ratios, not absolute speeds.
Use ``--toy`` for a seconds-long run on a generated scene (the test runs that).
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("all-on-device", "naive-offload", "stream")
GARDEN = REPO.parent / "shared" / "data" / "gsplat" / "test_garden.npz"


def toy_source(path: Path) -> Path:
    g = np.random.default_rng(0)
    n = 3000
    means = np.stack([g.uniform(-8, 8, n), g.uniform(-8, 8, n), g.uniform(-1, 1, n)], 1)
    np.savez(path, means3d=means.astype(np.float32),
             colors=g.integers(0, 255, (n, 3)).astype(np.uint8))
    return path


def run_mode(scene: Path, mode: str, args) -> dict:
    cmd = [sys.executable, "-m", "oocstore", "gs-train", str(scene), "--steps", str(args.steps),
           "--mode", mode, "--device", args.device, "--seed", str(args.seed), "--json", "--quiet"]
    if args.size:
        cmd += ["--size", args.size]
    if args.gpu_budget and mode != "all-on-device":
        cmd += ["--gpu-budget", args.gpu_budget]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"gs-train --mode {mode} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(GARDEN), help="scene source (.ply / .npz)")
    ap.add_argument("--tile", default="2x2", help="replicate the scene KxK (default 2x2)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--size", default="108x70", help="render size WxH (default 108x70)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--gpu-budget", default=None, help="device budget for stream / naive offload "
                                                      "(default: gs-train's rule)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per run (default 1: the machine is shared)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gs_train.json"))
    ap.add_argument("--toy", action="store_true", help="a tiny generated scene, 3 steps")
    args = ap.parse_args(argv)
    work = Path(args.dir or tempfile.mkdtemp(prefix="gs_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.toy:
        args.src = str(toy_source(work / "toy.npz"))
        args.tile, args.steps, args.size = "1x1", 3, "32x24"
    if not Path(args.src).exists():
        raise SystemExit(f"scene source {args.src} is missing: pass --src, or use --toy")

    from oocstore.gs.ingest import ingest_scene

    base = work / "scene"
    if base.exists():
        shutil.rmtree(base)
    ingest_kw = dict(tile=args.tile)
    if args.toy:
        ingest_kw.update(block_size=256, views=12)
    ingest_scene(args.src, base, **ingest_kw).close()
    results = {}
    for mode in MODES:
        copy = work / f"scene-{mode}"
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(base, copy)
        results[mode] = run_mode(copy, mode, args)
        shutil.rmtree(copy)
        r = results[mode]
        print(f"{mode:14s} PSNR {r['psnr']:.3f} dB (start {r['psnr_start']:.3f}), moved "
              f"{r['bytes_moved_per_step'] / 2**20:.2f} MiB/step, step {r['step_time_s']:.3f} s, "
              f"hit rate {r['cache_hit_rate']:.3f}, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB",
              file=sys.stderr)
    a, n, s = results["all-on-device"], results["naive-offload"], results["stream"]
    ratios = {
        "psnr_stream_minus_all_db": s["psnr"] - a["psnr"],
        "bytes_per_step_reduction_vs_naive": 1.0 - s["bytes_moved_per_step"] / max(n["bytes_moved_per_step"], 1),
        "step_time_stream_over_all": s["step_time_s"] / a["step_time_s"],
        "step_time_naive_over_all": n["step_time_s"] / a["step_time_s"],
    }
    targets = {"psnr_within_0.3db": abs(ratios["psnr_stream_minus_all_db"]) <= 0.3,
               "bytes_70pct_below_naive": ratios["bytes_per_step_reduction_vs_naive"] >= 0.70}
    summary = {
        "bench": "gs_train", "src": Path(args.src).name, "tile": args.tile, "steps": args.steps,
        "size": args.size, "device": args.device, "threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cores (shared), "
                   + (_gpu_name() if args.device == "cuda" else "no GPU: device = budgeted host memory"),
        "gaussians": s["gaussians"], "scene_bytes": s["scene_bytes"],
        "device_budget": s.get("device_budget"), "modes": results, "ratios": ratios,
        "targets_met": targets, "toy": bool(args.toy),
    }
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}", file=sys.stderr)
    if not args.toy or args.out != ap.get_default("out"):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, sort_keys=True))
    return 0


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda unavailable"


if __name__ == "__main__":
    raise SystemExit(main())
