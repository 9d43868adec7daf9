"""Gaussian-splatting training: stream vs all-on-device vs naive offload, one run.

Ingests the scene once (``oocstore ingest scene``, optionally tiled), then trains a copy
of it per run with ``oocstore gs-train --json`` in its own process (so peak RSS is per
run), same steps, seed, render size and view order:

* the three modes (``stream`` with the default ``--optimizer-device auto``), plus ``stream``
  with ``--optimizer-device cpu`` and ``device`` forced, and ``stream`` with a fully local
  (``--view-randomness 0``) and a random (``1``) view order (``--orders``);
* with ``--baseline-repo DIR`` (a checkout of an older version, e.g. ``git archive
  59d31ef``), that version's ``stream`` too, run from its own code.

Every streaming run gets the same device budget: ``--gpu-budget``, else the smallest
budget all of them accept. The smallest accepted budget of each is found from
gs-train's own refusal (``--gpu-budget 1KiB``: "view V needs ... (N bytes"), and
printed as a multiple of the scene's record bytes.

Prints and writes (``--out``, default ``bench/results/gs_train.json``) per run the
held-out PSNR, bytes moved per step (h2d + d2h), SSD bytes read, median step time, and
the ratios against the targets, beside the *floor* of a streamer that keeps the moments
in the scene: one upload of every Gaussian's parameters (the moments of a scene never
trained are zero: made on the device, not copied) and one write-back of parameters and
moments, over the run's steps (``floor_bytes_per_step``; ``baseline / floor`` is the most
any such streamer can gain over the baseline in this run): stream PSNR equal to all-on-device; minimum device
budget <= 0.5x the scene (garden) / 0.15x (4x4 tiled garden); bytes per step >= 3x
fewer than the baseline's streamer at the same budget; >= 70 % fewer than naive offload.

On ``--device cpu`` the "device" is a budgeted region of host memory and times are CPU
times of the reference rasterizer on a shared machine: ratios, not absolute speeds.
Use ``--toy`` for a seconds-long run on a generated scene (the test runs that).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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


def gs_train(scene: Path, mode: str, args, *, repo: Path = REPO, extra=(),
             budget: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "oocstore", "gs-train", str(scene), "--steps", str(args.steps),
           "--mode", mode, "--device", args.device, "--seed", str(args.seed), "--json", "--quiet",
           *extra]
    if args.size:
        cmd += ["--size", args.size]
    if budget and mode != "all-on-device":
        cmd += ["--gpu-budget", str(budget)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=str(repo))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env)


def run_mode(scene: Path, mode: str, args, *, repo: Path = REPO, extra=(),
             budget: str | None = None) -> dict:
    t0 = time.perf_counter()
    r = gs_train(scene, mode, args, repo=repo, extra=extra, budget=budget)
    if r.returncode != 0:
        raise SystemExit(f"gs-train --mode {mode} {' '.join(extra)} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def min_budget(scene: Path, args, *, repo: Path = REPO, extra=()) -> int:
    """The smallest device budget gs-train accepts, from its refusal of 1 KiB (nothing is
    written before the check)."""
    r = gs_train(scene, "stream", args, repo=repo, extra=extra, budget="1KiB")
    m = re.search(r"view \d+ needs a device working set of .*?\((\d+) bytes", r.stderr)
    if r.returncode != 2 or not m:
        raise SystemExit(f"no budget refusal from gs-train {' '.join(extra)}:\n{r.stderr[-2000:]}")
    return int(m.group(1))


ORDERS = (("local", 0.0), ("default", 0.1), ("random", 1.0))


def order_schedules(scene_path: Path, args, *, epochs: int = 3,
                    fractions=(0.25, 0.5)) -> dict:
    """Planning only (no training): the block loads of Belady's schedule for device slots
    of ``fraction`` x the scene's record bytes (at least the largest view's blocks), over
    ``epochs`` epochs of the training views, for a local, the default and a random view
    order (``--view-randomness`` 0, 0.1, 1; a new tour every epoch). The traffic the
    device optimizer's slots would see; with the CPU optimizer the same loads go to the
    host slots."""
    from oocstore.gs.scene import Scene
    from oocstore.gs.sizing import slot_bytes
    from oocstore.gs.train import split_views
    from oocstore.samplers.views import belady_block_schedule, epoch_orders, visibility_sets

    w, h = (int(x) for x in args.size.lower().split("x"))
    with Scene.open(scene_path, readonly=True) as scene:
        cams = scene.cameras.resized(w, h)
        train, _ = split_views(len(cams), 8)
        vis = visibility_sets(scene.block_bounds, cams)
        sub = [vis[v] for v in train]
        scene_bytes = scene.num_gaussians * scene.record_bytes
        sb = slot_bytes(scene)
        least = max(len(vis[v]) for v in train) * sb
        steps = epochs * len(train)
        out = {"epochs": epochs, "steps": steps, "slot_bytes": sb}
        for name, randomness in ORDERS:
            views = train[epoch_orders(sub, steps, seed=args.seed, randomness=randomness)]
            for frac in fractions:
                budget = max(int(frac * scene_bytes), least)
                sch = belady_block_schedule(views, vis, sb, budget)
                out[f"{name}@{frac}"] = {
                    "view_randomness": randomness, "slots_bytes": budget,
                    "loaded_over_scene": sch.bytes_loaded / scene_bytes,
                    "bytes_loaded_per_step": sch.bytes_loaded / steps}
    return out


def placement(scene_path: Path, args) -> dict:
    """Planning only (no training, nothing written): where ``--optimizer-device auto``
    puts the optimizer for ``--gpu-budget`` on an ingested scene, and why (the predicted
    bytes of both placements; gs-train's own setup, so the same rule)."""
    import torch

    from oocstore.gs.scene import Scene
    from oocstore.gs.train import GsTrainConfig, _Session

    w, h = (int(x) for x in args.size.lower().split("x"))
    cfg = GsTrainConfig(steps=args.steps, gpu_budget=args.gpu_budget, seed=args.seed,
                        width=w, height=h, target="synthetic")
    with Scene.open(scene_path, readonly=True) as scene:
        session = _Session(scene, cfg, torch.device(args.device), None)
        session.setup()
        return {**session.placement, "device_budget": session.run.dev_budget,
                "scene_bytes": int(session.scene_bytes), "steps": args.steps,
                "size": args.size}


#: Streaming runs besides the plain ``stream`` (CPU optimizer, default order):
#: name -> (gs-train flags, what the run shows).
VARIANTS = {
    "stream-cpu-optimizer": ["--optimizer-device", "cpu"],
    "stream-device-optimizer": ["--optimizer-device", "device"],
    "stream-local-order": ["--view-randomness", "0"],
    "stream-random-order": ["--view-randomness", "1"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(GARDEN), help="scene source (.ply / .npz)")
    ap.add_argument("--tile", default="2x2", help="replicate the scene KxK (default 2x2)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--size", default="108x70", help="render size WxH (default 108x70)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--gpu-budget", default=None,
                    help="device budget of every streaming run and naive offload (default: the "
                         "smallest that all streaming runs accept)")
    ap.add_argument("--baseline-repo", default=None, metavar="DIR",
                    help="a checkout of an older version: its stream mode runs too, from its code")
    ap.add_argument("--no-orders", action="store_true",
                    help="skip the local- and random-order runs")
    ap.add_argument("--modes", default="all-on-device,naive-offload",
                    help="baseline modes to run besides stream (comma-separated; '' for none)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per run (default 1: the machine is shared)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gs_train.json"))
    ap.add_argument("--toy", action="store_true", help="a tiny generated scene, 3 steps")
    ap.add_argument("--schedules-only", default=None, metavar="SCENE",
                    help="print the order schedules of an ingested SCENE and stop")
    ap.add_argument("--placement-only", default=None, metavar="SCENE",
                    help="print where --optimizer-device auto puts the optimizer on an "
                         "ingested SCENE at --gpu-budget, and stop")
    args = ap.parse_args(argv)
    if args.schedules_only:
        print(json.dumps(order_schedules(Path(args.schedules_only), args), sort_keys=True))
        return 0
    if args.placement_only:
        print(json.dumps(placement(Path(args.placement_only), args), sort_keys=True))
        return 0
    work = Path(args.dir or tempfile.mkdtemp(prefix="gs_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.toy:
        args.src = str(toy_source(work / "toy.npz"))
        args.tile, args.steps, args.size = "1x1", 3, "32x24"
    if not Path(args.src).exists():
        raise SystemExit(f"scene source {args.src} is missing: pass --src, or use --toy")
    baseline = Path(args.baseline_repo).resolve() if args.baseline_repo else None

    from oocstore.gs.ingest import ingest_scene

    base = work / "scene"
    if base.exists():
        shutil.rmtree(base)
    ingest_kw = dict(tile=args.tile)
    if args.toy:
        ingest_kw.update(block_size=256, views=12)
    ingest_scene(args.src, base, **ingest_kw).close()

    variants = {"stream": ([], REPO)}
    variants.update({k: (v, REPO) for k, v in VARIANTS.items()
                     if not (args.no_orders and "order" in k)})
    if baseline is not None:
        variants["baseline-stream"] = ([], baseline)
    schedules = order_schedules(base, args)
    minimum = {name: min_budget(base, args, repo=repo, extra=extra)
               for name, (extra, repo) in variants.items()}
    budget = args.gpu_budget or str(max(minimum.values()))
    results, runs = {}, {}
    order = [m for m in args.modes.split(",") if m] + list(variants)
    for name in order:
        copy = work / f"scene-{name}"
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(base, copy)
        extra, repo = variants.get(name, ([], REPO))
        mode = "stream" if name in variants else name
        r = run_mode(copy, mode, args, repo=repo, extra=extra, budget=budget)
        shutil.rmtree(copy)
        (results if name in MODES else runs)[name] = r
        print(f"{name:24s} PSNR {r['psnr']:.3f} dB (start {r['psnr_start']:.3f}), moved "
              f"{r['bytes_moved_per_step'] / 2**20:.2f} MiB/step, SSD read "
              f"{r['bytes_ssd_read'] / args.steps / 2**20:.2f} MiB/step, step "
              f"{r['step_time_s']:.3f} s, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB",
              file=sys.stderr)
    s = results["stream"]
    scene_bytes = s["scene_bytes"]
    every = {**results, **runs}
    ratios = {f"min_budget_over_scene[{k}]": v / scene_bytes for k, v in minimum.items()}
    if "all-on-device" in results:
        ratios["psnr_stream_minus_all_db"] = s["psnr"] - results["all-on-device"]["psnr"]
        ratios["step_time_stream_over_all"] = (s["step_time_s"]
                                               / results["all-on-device"]["step_time_s"])
    if "naive-offload" in results:
        n = results["naive-offload"]
        ratios["bytes_per_step_reduction_vs_naive"] = (
            1.0 - s["bytes_moved_per_step"] / max(n["bytes_moved_per_step"], 1))
        ratios["step_time_naive_over_all"] = (n["step_time_s"]
                                              / results["all-on-device"]["step_time_s"]
                                              if "all-on-device" in results else None)
    floor = traffic_floor(base, args.steps)
    ratios["floor_bytes_per_step"] = floor
    if "baseline-stream" in runs:
        old = runs["baseline-stream"]["bytes_moved_per_step"]
        for k in ("stream", "stream-cpu-optimizer", "stream-device-optimizer"):
            if k in every:
                ratios[f"bytes_per_step_baseline_over[{k}]"] = old / max(
                    every[k]["bytes_moved_per_step"], 1)
        ratios["bytes_per_step_baseline_over_floor"] = old / floor
        # the baseline uploaded an int64 slab index for every row of the visible blocks
        # each step without counting it (its counters: records and ids only)
        ratios["baseline_uncounted_row_index_bytes_per_step"] = (
            8 * s.get("candidate_rows", 0) / args.steps)
    targets = {}
    if "psnr_stream_minus_all_db" in ratios:
        targets["psnr_equal_to_all_on_device"] = abs(ratios["psnr_stream_minus_all_db"]) <= 1e-3
    if "bytes_per_step_reduction_vs_naive" in ratios:
        targets["bytes_70pct_below_naive"] = ratios["bytes_per_step_reduction_vs_naive"] >= 0.70
    limit = {"1x1": 0.5, "4x4": 0.15}.get(args.tile)
    if limit is not None and not args.toy:
        targets[f"min_budget_at_most_{limit}x_scene"] = (
            ratios["min_budget_over_scene[stream]"] <= limit)
    if "bytes_per_step_baseline_over[stream]" in ratios:
        targets["bytes_per_step_3x_below_baseline"] = (
            ratios["bytes_per_step_baseline_over[stream]"] >= 3.0)
    orders = {k: {"view_randomness": {"stream-local-order": 0.0, "stream": 0.1,
                                      "stream-random-order": 1.0}[k],
                  "bytes_moved_per_step": every[k]["bytes_moved_per_step"],
                  "bytes_ssd_read_per_step": every[k]["bytes_ssd_read"] / args.steps,
                  "cache_hit_rate": every[k]["cache_hit_rate"]}
              for k in ("stream-local-order", "stream", "stream-random-order") if k in every}
    summary = {
        "bench": "gs_train", "src": Path(args.src).name, "tile": args.tile, "steps": args.steps,
        "size": args.size, "device": args.device, "threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cores (shared), "
                   + (_gpu_name() if args.device == "cuda" else "no GPU: device = budgeted host memory"),
        "gaussians": s["gaussians"], "scene_bytes": scene_bytes,
        "device_budget": s.get("device_budget"), "min_device_budget": minimum,
        "baseline_repo": str(baseline) if baseline else None,
        "modes": results, "variants": runs, "orders": orders, "order_schedules": schedules,
        "ratios": ratios,
        "targets_met": targets, "toy": bool(args.toy),
    }
    for k, v in ratios.items():
        if v is not None:
            print(f"{k}: {v:.3f}", file=sys.stderr)
    print(f"floor (one upload of the parameters, one write-back of parameters and moments): "
          f"{floor / 2**20:.2f} MiB/step; stream ({s.get('optimizer_device')}, chosen by "
          f"--optimizer-device auto) {s['bytes_moved_per_step'] / 2**20:.2f} MiB/step"
          + (f"; baseline {runs['baseline-stream']['bytes_moved_per_step'] / 2**20:.2f} MiB/step"
             if "baseline-stream" in runs else ""), file=sys.stderr)
    for k, v in schedules.items():
        if isinstance(v, dict):
            print(f"order schedule {k}: Belady loads {v['loaded_over_scene']:.2f}x the scene over "
                  f"{schedules['steps']} steps", file=sys.stderr)
    if not args.toy or args.out != ap.get_default("out"):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, sort_keys=True))
    return 0


def traffic_floor(scene_path: Path, steps: int) -> float:
    """Bytes per step of the floor (see the module docstring): every Gaussian's parameters
    up once, its parameters and moments down once."""
    from oocstore.gs.scene import Scene

    with Scene.open(scene_path, readonly=True) as scene:
        n = scene.num_gaussians
        return n * (4 * scene.param_width + scene.record_bytes) / steps


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda unavailable"


if __name__ == "__main__":
    raise SystemExit(main())
