"""Random Gaussian scenes for tests, the crash harness and benchmarks (deterministic for a
seed): no input file needed, any size and SH degree; and a streamed training segment
that needs no cameras or renderer (:func:`synthetic_streamer`, :func:`synthetic_step`)."""

from __future__ import annotations

import math
import os

import numpy as np

from . import layout
from .cameras import Cameras, orbit_cameras


def random_params(n: int, sh_degree: int = 1, *, seed: int = 0,
                  extent: float = 4.0) -> np.ndarray:
    """``n`` random Gaussians in an ``extent``-wide cube: params float32 [n, P], scales
    e^-5..e^-3, every other parameter standard normal."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, layout.param_width(sh_degree))).astype(np.float32)
    p[:, layout.MEANS] = rng.uniform(-extent / 2, extent / 2, size=(n, 3))
    p[:, layout.LOG_SCALES] = rng.uniform(-5, -3, size=(n, 3))
    return p


def random_cameras(params: np.ndarray, n: int = 8, *, width: int = 64, height: int = 48,
                   seed: int = 0):
    """``n`` orbit cameras around ``params``' means."""
    return orbit_cameras(params[:, layout.MEANS], n, width=width, height=height, seed=seed)


def random_scene(path: str | os.PathLike, n: int, sh_degree: int = 1, *, block_size: int = 256,
                 views: int = 8, seed: int = 0, moments: str = "float32",
                 overwrite: bool = False):
    """Create a scene of ``n`` random Gaussians at ``path``; returns it open for writing."""
    from .scene import Scene

    params = random_params(n, sh_degree, seed=seed)
    return Scene.create(path, None, params, sh_degree, random_cameras(params, views, seed=seed),
                        block_size=block_size, moments=moments, overwrite=overwrite,
                        source={"kind": "random", "seed": seed})


def synthetic_streamer(scene, *, steps: int = 12, window: int = 4, stride: int = 3,
                       cpu_slots: int = 2):
    """A :class:`~oocstore.gs.stream.Streamer` over a plan without cameras: view ``v``
    sees blocks ``v .. v + window - 1`` (mod the block count) and step ``s`` shows view
    ``s * stride``, so blocks keep leaving and re-entering the device. The device holds
    the view's blocks and one more (device optimizer: the slots are on the device), the
    CPU tier ``cpu_slots`` blocks: dirty blocks are
    written back to the scene before any checkpoint. Drive it with
    :func:`synthetic_step`; the result is the same byte for byte on every run."""
    from ..budget import BudgetAccountant, MemoryBudget
    from .adam import AdamConfig
    from .stream import Streamer, TrainPlan, block_bytes, step_batch_bytes
    from oocstore.samplers.views import belady_block_schedule

    nb = scene.num_blocks
    vis = [np.arange(v, v + window) % nb for v in range(nb)]
    views = (np.arange(steps) * stride) % nb
    bb = block_bytes(scene)
    counts = scene.block_counts
    batch = max(step_batch_bytes(int(counts[vis[v]].sum()), scene, "device") for v in views)
    device = (window + 1) * bb + batch
    plan = TrainPlan(views, vis, belady_block_schedule(views, vis, bb, device - batch))
    loads = max(len(st.load) for st in plan.schedule.steps)
    # prefetch (depth 2), 2 write-backs, the slots' ids, the tier
    cpu = (3 * loads + 2 + cpu_slots) * bb + (window + 1) * scene.block_capacity * 8
    adam = AdamConfig()
    return Streamer(scene, plan, device="cpu", device_budget=device, adam=adam,
                    optimizer="device",
                    accountant=BudgetAccountant(MemoryBudget(gpu=device, cpu=cpu)),
                    lr=adam.column_lrs(scene.sh_degree, 3.0))


def synthetic_step(store) -> None:
    """One step of ``store`` (any training mode) with a fixed function of the parameters
    as the gradient instead of a rendering loss; every row takes the Adam step."""
    import torch

    b = store.begin_step()
    b.params.grad = torch.sin(3 * b.params.detach() + b.ids[:, None].float())
    store.end_step(b, torch.ones(len(b.ids), dtype=torch.bool))


def photo_scene_params(n: int, *, seed: int = 0, extent: float = 2.0) -> np.ndarray:
    """``n`` opaque, coloured, SH-degree-0 Gaussians in an ``extent``-wide cube, large
    enough (scales e^-3..e^-2 of a 2-wide cube) to paint small test photographs."""
    rng = np.random.default_rng(seed)
    p = np.zeros((n, layout.param_width(0)), dtype=np.float32)
    p[:, layout.MEANS] = rng.uniform(-extent / 2, extent / 2, size=(n, 3))
    p[:, 3:7] = rng.normal(size=(n, 4))
    p[:, layout.LOG_SCALES] = rng.uniform(-3.0, -2.0, size=(n, 3))
    p[:, 10] = rng.uniform(1.0, 3.0, size=n)
    p[:, layout.sh_slice(0)] = rng.uniform(-1.5, 1.5, size=(n, 3))
    return p


def render_views(params: np.ndarray, cameras, background=(0.0, 0.0, 0.0)):
    """``(rgb float32 [H, W, 3], alpha [H, W])`` of each camera (a generator): the
    SH-degree-0 ``params`` rendered by the project's reference rasterizer."""
    import torch

    from .render import render

    pt = torch.from_numpy(np.asarray(params, dtype=np.float32))
    bg = torch.tensor(background, dtype=torch.float32)
    with torch.no_grad():
        for i in range(len(cameras)):
            out = render(pt, 0, torch.from_numpy(cameras.viewmats[i]),
                         torch.from_numpy(cameras.Ks[i]), cameras.width, cameras.height,
                         background=bg)
            yield out.image.clamp(0, 1).numpy(), out.alpha.clamp(0, 1).numpy()


def distort_image(rgb: np.ndarray, K: np.ndarray, dist) -> np.ndarray:
    """The photo a lens with OpenCV distortion ``dist`` = (k1, k2, p1, p2) takes of the
    pinhole image ``rgb`` (float [H, W, C]): each distorted pixel centre is undistorted
    by fixed-point iteration and the pinhole image sampled there (bilinear)."""
    from scipy.ndimage import map_coordinates

    from .photos import distort_points

    h, w = rgb.shape[:2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    ud, vd = (xs - cx) / fx, (ys - cy) / fy
    u, v = ud.copy(), vd.copy()
    for _ in range(50):
        du, dv = distort_points(u, v, dist)
        u, v = u - (du - ud), v - (dv - vd)
    coords = np.stack([fy * v + cy - 0.5, fx * u + cx - 0.5])
    return np.stack([map_coordinates(rgb[..., c], coords, order=1, mode="nearest")
                     for c in range(rgb.shape[2])], axis=-1)


def write_photo_dataset(out_dir: str | os.PathLike, kind: str = "colmap", *, views: int = 12,
                        width: int = 64, height: int = 48, gaussians: int = 2000, seed: int = 0,
                        rgba: bool = False, distortion=None):
    """A small photo dataset for tests, rendered from a random scene
    (:func:`photo_scene_params`) by the project's rasterizer from ``views`` orbit
    cameras; deterministic for a seed. Returns the path to give ``oocstore ingest
    scene``: the model directory ``out_dir/sparse/0`` (``kind`` "colmap": text,
    "colmap-bin": binary; images in ``out_dir/images``, the scene's means as coloured
    points3D) or ``out_dir/transforms.json`` (``kind`` "transforms": poses in the
    OpenGL/Blender convention; NeRF-synthetic style ``camera_angle_x`` with extensionless
    ``train/r_<i>`` paths, or instant-ngp style ``fl_x fl_y cx cy w h`` + ``k1 k2 p1 p2``
    with ``distortion``).

    ``rgba``: images are RGBA PNGs whose alpha is the rendered opacity (the colour is
    un-premultiplied), as NeRF-synthetic's. ``distortion`` = (k1, k2, p1, p2): the photos
    are distorted by that OpenCV model (COLMAP OPENCV cameras). The ground truth stays
    reachable: the scene parameters are saved as ``out_dir/scene_params.npy`` and the
    cameras (OpenCV, world-to-camera) as ``out_dir/cameras.npz``.
    """
    from pathlib import Path

    from .colmap import write_colmap_model
    from .ingest import SH_C0

    if kind not in ("colmap", "colmap-bin", "transforms"):
        raise ValueError(f"kind {kind!r} must be 'colmap', 'colmap-bin' or 'transforms'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = photo_scene_params(gaussians, seed=seed)
    cams = orbit_cameras(params[:, layout.MEANS], views, width=width, height=height, seed=seed)
    ngp = kind == "transforms" and distortion is not None
    if kind == "transforms":
        names = [f"images/{i:04d}.png" if ngp else f"train/r_{i}.png" for i in range(views)]
    else:
        names = [f"img_{i:04d}.png" for i in range(views)]
    _write_photos(params, cams, out if kind == "transforms" else out / "images", names,
                  rgba=rgba, distortion=distortion)
    np.save(out / "scene_params.npy", params)
    np.savez(out / "cameras.npz", viewmats=cams.viewmats, Ks=cams.Ks, width=width,
             height=height)
    if kind == "transforms":
        return _write_transforms(out / "transforms.json", cams, names, ngp=ngp,
                                 distortion=distortion)
    colors = np.clip(params[:, layout.sh_slice(0)] * SH_C0 + 0.5, 0, 1)
    named = Cameras(cams.viewmats, cams.Ks, width, height, tuple(names))
    write_colmap_model(out / "sparse" / "0", named, binary=kind == "colmap-bin",
                       points=params[:, layout.MEANS], colors=np.rint(colors * 255),
                       model="PINHOLE" if distortion is None else "OPENCV",
                       distortion=distortion if distortion is not None else (0, 0, 0, 0))
    return out / "sparse" / "0"


def _write_photos(params: np.ndarray, cams: Cameras, image_dir, names: list[str], *,
                  rgba: bool, distortion) -> None:
    """Render the scene from each camera and save view ``i`` as PNG ``image_dir/names[i]``
    (distorted by ``distortion`` when given; RGBA with un-premultiplied colour when
    ``rgba``)."""
    from PIL import Image

    for i, (rgb, alpha) in enumerate(render_views(params, cams)):
        if distortion is not None:
            both = distort_image(np.dstack([rgb, alpha]), cams.Ks[i].astype(np.float64),
                                 distortion)
            rgb, alpha = both[..., :3], both[..., 3]
        if rgba:
            colour = rgb / np.maximum(alpha, 1e-6)[..., None]  # un-premultiplied
            pix = np.dstack([colour, alpha])
            mode = "RGBA"
        else:
            pix, mode = rgb, "RGB"
        path = image_dir / names[i]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(np.rint(pix * 255), 0, 255).astype(np.uint8), mode).save(path)


def _write_transforms(path, cams: Cameras, names: list[str], *, ngp: bool, distortion):
    """Write the cameras as a transforms file at ``path`` (poses in OpenGL/Blender axes):
    NeRF-synthetic style (``camera_angle_x``, extensionless paths), or with ``ngp``
    instant-ngp style (``fl_x fl_y cx cy w h`` and ``k1 k2 p1 p2``). Returns ``path``."""
    import json

    frames = []
    for i in range(len(cams)):
        c2w = np.linalg.inv(cams.viewmats[i].astype(np.float64))
        c2w[:3, 1:3] *= -1  # OpenCV -> OpenGL/Blender camera axes
        fp = names[i] if ngp else "./" + names[i][:-len(".png")]
        frames.append({"file_path": fp, "transform_matrix": c2w.tolist()})
    k = cams.Ks[0].astype(np.float64)
    width, height = cams.width, cams.height
    doc: dict = {"camera_angle_x": 2 * math.atan(0.5 * width / k[0, 0])}
    if ngp:
        k1, k2, p1, p2 = (float(x) for x in distortion)
        doc.update({"fl_x": k[0, 0], "fl_y": k[1, 1], "cx": k[0, 2], "cy": k[1, 2],
                    "w": float(width), "h": float(height), "k1": k1, "k2": k2, "p1": p1,
                    "p2": p2})
    doc["frames"] = frames
    path.write_text(json.dumps(doc, indent=2))
    return path
