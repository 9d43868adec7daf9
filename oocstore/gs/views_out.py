"""Outputs for viewers: rendered views (``oocstore gs-render``) and graphdeco's
``cameras.json`` (written by ``oocstore export-scene``).

``gs-render SCENE --views test|train|orbit --out DIR`` renders with the reference
rasterizer (gsplat on CUDA) from the committed scene, one view at a time from its
visible blocks (never the whole scene in memory), on the scene's background (black
for scenes without one):

* ``test`` / ``train``: the scene's held-out / training views (photo scenes: the
  ingest's split; other scenes: every 8th view held out, as ``gs-train`` does), written
  as ``NNNNN_<image name>.png`` at the stored image size; with ``--with-photos`` a
  ``NNNNN_<image name>_vs_photo.png`` beside each, the render left of the photograph;
* ``orbit``: ``--frames`` cameras on a circle around the point the scene's cameras look
  at, at their mean distance and height, with the first camera's intrinsics;
  ``--video PATH`` also writes them as one animation through imageio (``.gif`` needs
  only pillow; ``.mp4`` needs the ``imageio-ffmpeg`` plugin -- checked before rendering).

``cameras.json`` follows graphdeco's ``utils/camera_utils.camera_to_JSON``: per view
``id``, ``img_name``, ``width``, ``height``, ``position`` (the camera centre in world
space), ``rotation`` (camera-to-world rotation, rows of the 3x3 matrix; OpenCV axes:
x right, y down, z forward), ``fx``, ``fy`` in pixels of that size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from oocstore.errors import UsageError

VIEW_SETS = ("test", "train", "orbit")


def cameras_json(cams) -> list[dict]:
    """graphdeco viewer entries of ``cams`` (see the module docstring)."""
    out = []
    for i in range(len(cams)):
        vm = cams.viewmats[i].astype(np.float64)
        r, t = vm[:3, :3], vm[:3, 3]
        out.append({"id": i, "img_name": Path(cams.names[i]).stem,
                    "width": int(cams.width), "height": int(cams.height),
                    "position": (-r.T @ t).tolist(), "rotation": r.T.tolist(),
                    "fy": float(cams.Ks[i, 1, 1]), "fx": float(cams.Ks[i, 0, 0])})
    return out


def write_cameras_json(scene, path: str | os.PathLike) -> int:
    """Write the scene's cameras (at the stored images' size for photo scenes) to
    ``path`` (atomically: temp file + rename); returns the number of views."""
    cams = _scene_cameras(scene)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cameras_json(cams), indent=1))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(cams)


def _scene_cameras(scene):
    cams = scene.cameras
    if getattr(scene, "has_images", False):
        w, h = (int(x) for x in scene.image_size)
        if (cams.width, cams.height) != (w, h):
            cams = cams.resized(w, h)
    return cams


def split_of(scene) -> tuple[np.ndarray, np.ndarray]:
    """(train views, test views) as gs-train uses them."""
    if getattr(scene, "has_images", False):
        return (np.asarray(scene.train_views, dtype=np.int64),
                np.asarray(scene.test_views, dtype=np.int64))
    from .train import split_views

    return split_views(len(scene.cameras), 8)


def orbit_cameras_of(cams, frames: int):
    """``frames`` cameras circling the point the scene's cameras look at."""
    from .cameras import Cameras, look_at, optical_axes_equations

    vm = cams.viewmats.astype(np.float64)
    centers = cams.centers
    fwd = vm[:, 2, :3]  # camera z axes in world coordinates
    a, b = optical_axes_equations(centers, fwd)  # the point nearest to every optical axis
    target = np.linalg.lstsq(a, b, rcond=None)[0] if len(centers) > 1 else centers[0] + fwd[0]
    up = -vm[:, 1, :3].mean(0)  # OpenCV y points down
    up /= max(np.linalg.norm(up), 1e-12)
    rel = centers - target
    height = float((rel @ up).mean())
    flat = rel - np.outer(rel @ up, up)
    radius = float(np.linalg.norm(flat, axis=1).mean()) or float(np.linalg.norm(rel, axis=1).mean())
    e1 = flat[0] / max(np.linalg.norm(flat[0]), 1e-12) if np.linalg.norm(flat[0]) > 1e-9 else \
        np.cross(up, [1.0, 0, 0])
    e2 = np.cross(up, e1)
    mats = [look_at(target + radius * (np.cos(th) * e1 + np.sin(th) * e2) + height * up, target, up)
            for th in np.linspace(0, 2 * np.pi, frames, endpoint=False)]
    return Cameras(np.stack(mats), np.repeat(cams.Ks[:1], frames, 0), cams.width, cams.height,
                   tuple(f"orbit{i:04d}" for i in range(frames)), "orbit")


def check_video_path(video: str | os.PathLike | None) -> None:
    """UsageError unless imageio can write ``video`` here (checked before rendering)."""
    if video is None:
        return
    suffix = Path(video).suffix.lower()
    try:
        import imageio  # noqa: F401
    except ImportError:
        raise UsageError(f"video={str(video)!r}: imageio is not installed (pip install "
                         "imageio), or render without a video") from None
    if suffix in (".mp4", ".mkv", ".mov", ".avi"):
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise UsageError(f"video={str(video)!r}: {suffix} needs the imageio-ffmpeg plugin "
                             "(pip install imageio-ffmpeg); or write a .gif") from None
    elif suffix != ".gif":
        raise UsageError(f"video={str(video)!r}: unknown animation format {suffix!r}: use .gif "
                         "or .mp4")
    if not Path(video).parent.is_dir():
        raise UsageError(f"video={str(video)!r}: folder {Path(video).parent} does not exist")


def render_scene_views(scene, which: str, out_dir: str | os.PathLike, *, device: str = "cpu",
                       frames: int = 60, video: str | os.PathLike | None = None,
                       with_photos: bool = False, sh_degree: int | None = None,
                       progress: Callable[[int], None] | None = None,
                       lod_pixels=None) -> list[Path]:
    """Render ``which`` (test | train | orbit) into ``out_dir`` as PNGs; returns them.

    A scene with a level-of-detail hierarchy renders each view's cut (``lod_pixels``,
    default 1 px; 0: the leaves; :mod:`oocstore.gs.lod`), read as block prefixes."""
    import torch
    from PIL import Image
    from oocstore.samplers.views import visibility_sets

    from .train import render_view

    if which not in VIEW_SETS:
        raise UsageError(f"which={which!r} unknown: use one of {', '.join(VIEW_SETS)}")
    if frames < 1:
        raise UsageError(f"frames={frames} must be at least 1")
    if with_photos and not getattr(scene, "has_images", False):
        raise UsageError(f"with_photos=True: the scene {scene.path} holds no photographs")
    if with_photos and which == "orbit":
        raise UsageError("with_photos=True needs the test or train views (orbit views have no photo)")
    if video is not None and which != "orbit":
        raise UsageError(f"video={str(video)!r} needs the orbit views")
    check_video_path(video)
    from .lod import resolve_lod_pixels

    lod = resolve_lod_pixels(scene, lod_pixels)
    deg = scene.sh_degree if sh_degree is None else sh_degree
    if not 0 <= deg <= scene.sh_degree:
        raise UsageError(f"sh_degree={deg} must lie in 0..{scene.sh_degree}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device='cuda' but torch sees no CUDA device: use device='cpu'")
    cams = _scene_cameras(scene)
    if which == "orbit":
        cams = orbit_cameras_of(cams, frames)
        views = np.arange(frames)
    else:
        train, test = split_of(scene)
        views = test if which == "test" else train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vis = visibility_sets(scene.block_bounds, cams)
    bg = scene.background if getattr(scene, "has_images", False) else None
    bg = None if bg is None else torch.tensor(bg, dtype=torch.float32)
    written, frames_rgb = [], []
    cuts = None
    if lod is not None:
        from oocstore.samplers.views import lod_views

        cuts = lod_views(scene.hierarchy(), cams, vis, views, lod)
    for v in views:
        img = render_view(scene, cams, vis[v], int(v), device, sh_degree=deg, background=bg,
                          cut=None if cuts is None else cuts[int(v)])
        rgb = (img.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        name = f"{int(v):05d}_{Path(cams.names[v]).stem}"
        path = out / f"{name}.png"
        Image.fromarray(rgb).save(path)
        written.append(path)
        if with_photos:
            side = np.concatenate([rgb, scene.read_image(int(v))], axis=1)
            Image.fromarray(side).save(out / f"{name}_vs_photo.png")
        if video is not None:
            frames_rgb.append(rgb)
        if progress:
            progress(1)
    if video is not None:
        import imageio

        if Path(video).suffix.lower() == ".gif":
            imageio.mimsave(video, frames_rgb, duration=1 / 24, loop=0)
        else:
            imageio.mimsave(video, frames_rgb, fps=24)
    return written
