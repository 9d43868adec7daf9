"""GPU check: gsplat's rasterizer against the pure-torch reference (>= 40 dB PSNR).

Needs a CUDA device and gsplat >= 1.5 (it JIT-builds its kernels on first use, about a
minute). Renders the same Gaussians from the same cameras with
:func:`oocstore.gs.render.render` (the reference, float32 on the GPU) and
:func:`oocstore.gs.render.render_gsplat`, and reports the PSNR between them per view;
exits 1 if any view is below ``--min-psnr`` (default 40 dB). Scenes: a seeded random
cloud, and the garden point cloud (``../shared/data/gsplat/test_garden.npz``, initialised
as ``oocstore ingest scene`` does) when present. Writes ``bench/results/gs_gpu_check.json``
naming the card.

Optionally (``--train SCENE``) runs ``oocstore gs-train SCENE --device cuda --mode stream``
with ``--gpu-budget`` and reports ``peak_gpu_bytes`` (``torch.cuda.max_memory_allocated``)
against the budget.

Without CUDA or gsplat it prints why and exits 0 (nothing to check on this machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GARDEN = REPO.parent / "shared" / "data" / "gsplat" / "test_garden.npz"


def random_cloud(n: int, deg: int, seed: int):
    from oocstore.gs import layout

    g = np.random.default_rng(seed)
    k = (deg + 1) ** 2
    return layout.join_params(g.uniform(-1, 1, (n, 3)), g.normal(size=(n, 4)),
                              np.log(g.uniform(0.005, 0.05, (n, 3))), g.uniform(-2, 3, n),
                              g.normal(scale=0.3, size=(n, k, 3)))


def orbit(n: int, width: int, height: int, radius: float = 3.0):
    from oocstore.gs.cameras import look_at

    vms, ks = [], []
    for a in np.linspace(0, 2 * np.pi, n, endpoint=False):
        eye = np.array([radius * np.cos(a), radius * np.sin(a), 0.8])
        vms.append(look_at(eye, np.zeros(3), np.array([0.0, 0.0, 1.0])))
        f = 0.8 * width
        ks.append(np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]))
    return np.array(vms), np.array(ks)


def compare(params: np.ndarray, deg: int, viewmats, Ks, width: int, height: int) -> list[float]:
    import torch

    from oocstore.gs.render import psnr, render, render_gsplat

    p = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32)).cuda()
    out = []
    for vm, K in zip(viewmats, Ks):
        vm_t = torch.as_tensor(vm, dtype=torch.float32, device="cuda")
        K_t = torch.as_tensor(K, dtype=torch.float32, device="cuda")
        with torch.no_grad():
            ref = render(p, deg, vm_t, K_t, width, height).image
            gs = render_gsplat(p, deg, vm_t, K_t, width, height).image
        out.append(psnr(ref.clamp(0, 1), gs.clamp(0, 1)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min-psnr", type=float, default=40.0)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--train", default=None, metavar="SCENE",
                    help="also run gs-train --device cuda --mode stream on SCENE")
    ap.add_argument("--gpu-budget", default="256MiB")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gs_gpu_check.json"))
    args = ap.parse_args(argv)
    import torch

    from oocstore.gs.render import gsplat_available

    if not torch.cuda.is_available() or not gsplat_available():
        print("gs_gpu_check: needs a CUDA device and gsplat>=1.5 "
              f"(cuda={torch.cuda.is_available()}, gsplat={gsplat_available()}); nothing checked")
        return 0
    result = {"card": torch.cuda.get_device_name(0), "min_psnr": args.min_psnr, "scenes": {}}
    vms, ks = orbit(args.views, 640, 480)
    result["scenes"]["random_20k_deg3"] = compare(random_cloud(20000, 3, 0), 3, vms, ks, 640, 480)
    if GARDEN.exists():
        from oocstore.gs.ingest import load_npz_source

        src = load_npz_source(GARDEN, 3)
        cams = src.cameras.resized(648, 420) if src.cameras is not None else None
        if cams is not None:
            result["scenes"]["garden"] = compare(src.params, 3, cams.viewmats, cams.Ks,
                                                 cams.width, cams.height)
    worst = min(min(v) for v in result["scenes"].values())
    result["worst_psnr"] = worst
    result["ok"] = worst >= args.min_psnr
    if args.train:
        cmd = [sys.executable, "-m", "oocstore", "gs-train", args.train, "--device", "cuda",
               "--mode", "stream", "--gpu-budget", args.gpu_budget, "--steps", str(args.steps),
               "--json", "--quiet"]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        train = json.loads(r.stdout.strip().splitlines()[-1])
        result["train"] = train
        # The device budget covers the streamer's slots and step batch; the rasterizer's
        # forward/backward workspace comes on top (as a GNN's activations do), and is
        # reported beside it.
        result["within_budget"] = train["peak_gpu_held_bytes"] <= train["device_budget"]
        result["peak_within_budget_plus_workspace"] = (
            train["peak_gpu_bytes"] <= train["device_budget"] + train["render_workspace_bytes"]
            + train["gpu_outside_store_bytes"] + train.get("gpu_library_state_bytes", 0))
        # Library state must not grow step by step (that would be a leak in the loop).
        result["library_state_stable"] = (train.get("gpu_library_state_last_bytes", 0)
                                          <= train.get("gpu_library_state_bytes", 0) + (1 << 20))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result, sort_keys=True))
    return 0 if result["ok"] and result.get("within_budget", True) \
        and result.get("library_state_stable", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
