"""``oocstore ingest scene``: a scene store from photographs with poses (a COLMAP model
or a ``transforms.json``, :func:`ingest_photos`), a 3DGS ``.ply`` or an ``.npz`` point
cloud (:func:`ingest_scene`).

Photo datasets (see docs/SCENE_FORMAT.md, "Scenes from photographs"): the views are
read into :class:`~oocstore.gs.photos.PhotoView` (world-to-camera OpenCV poses,
intrinsics and distortion at the files' resolution), every image header is checked,
then the photos are decoded one at a time (:func:`oocstore.gs.photos.load_photo`) and
streamed into the scene, training views first in a nearest-camera chain
(:func:`view_chain`), held-out views last.

Point sources:

- ``.ply``: a trained 3DGS scene (see :mod:`oocstore.gs.ply`), any SH degree 0..3.
- ``.npz``: ``means3d`` [N, 3] and optionally ``colors`` [N, 3] (uint8, or floats in
  0..1), ``viewmats`` [V, 4, 4], ``Ks`` [V, 3, 3], ``width``, ``height``. Gaussians are
  initialised as 3DGS does from a point cloud: isotropic scales from the mean distance
  to the 3 nearest neighbours (``scipy.spatial.cKDTree``), identity rotations,
  opacity 0.1 (as a logit), the SH DC term from the colour (grey without colours),
  higher SH coefficients zero.

Cameras come from the source (``.npz``), from ``cameras=`` (a COLMAP text model
directory or an ``.npz`` with ``viewmats`` + ``Ks``), and when there are fewer than
``min_views`` of them, generated views on an orbit around the scene are added up to
``views`` (see :func:`oocstore.gs.cameras.orbit_cameras`).

``tile=(kx, ky)`` replicates the scene on a kx x ky grid in the plane orthogonal to the
scene's up direction, spaced by its robust extent (2nd..98th percentile, +5 %); every
tile gets a copy of the cameras, so views stay local to their tile. Gaussian ids are
``tile * N + row``. Adam moments start at zero.
"""

from __future__ import annotations

import logging
import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import SourceError, UsageError
from ..store.format import align_up
from . import layout
from .cameras import (Cameras, cameras_from_arrays, flythrough_cameras, horizontal_axes,
                      orbit_cameras, read_colmap_text, robust_box, scene_up)
from .photo_sources import focus_box, photo_source_kind, view_chain  # noqa: F401 (API)
from .ply import check_params, read_ply

log = logging.getLogger(__name__)

SH_C0 = 0.28209479177387814  # the degree-0 real spherical harmonic, 1 / (2 sqrt(pi))
INIT_OPACITY = 0.1
MAX_TILE = 64
DEFAULT_SIZE = (648, 420)  # image size of generated views when the source names none
#: Least downward pitch of generated views of a tiled scene. At 50 degrees the garden's
#: views (47-degree vertical field of view) see the ground within ~2x their height, i.e.
#: mostly their own tile (the 4x4 garden: see docs/SCENE_FORMAT.md).
TILED_MIN_PITCH = 50.0


@dataclass
class SceneSource:
    params: np.ndarray  # [N, P] float32
    sh_degree: int
    cameras: Cameras | None
    name: str


def parse_tile(value: str | tuple | None) -> tuple[int, int]:
    """``"4x4"`` -> (4, 4); refuses anything else with the accepted form."""
    if value is None:
        return (1, 1)
    if isinstance(value, tuple):
        kx, ky = value
    else:
        m = re.fullmatch(r"\s*(\d{1,3})\s*[xX]\s*(\d{1,3})\s*", str(value))
        if not m:
            raise UsageError(f"tile={value!r} is not KxK: give two grid sizes such as 4x4 "
                             f"(each 1..{MAX_TILE})")
        kx, ky = int(m.group(1)), int(m.group(2))
    if not (1 <= kx <= MAX_TILE and 1 <= ky <= MAX_TILE):
        raise UsageError(f"tile={kx}x{ky}: each grid size must be 1..{MAX_TILE}")
    return kx, ky


def init_from_points(means: np.ndarray, colors: np.ndarray | None, sh_degree: int) -> np.ndarray:
    """3DGS's initialisation of Gaussians from a coloured point cloud -> params [N, P]."""
    from scipy.spatial import cKDTree

    means = np.asarray(means, dtype=np.float32)
    n = len(means)
    k = layout.num_sh_coeffs(sh_degree)
    p = np.zeros((n, layout.param_width(sh_degree)), dtype=np.float32)
    p[:, layout.MEANS] = means
    p[:, 3] = 1.0  # identity quaternion (w, x, y, z)
    if n > 1:
        nn = min(4, n)
        dist, _ = cKDTree(means).query(means, k=nn, workers=-1)
        d = np.sqrt(np.mean(np.square(dist[:, 1:]), axis=1))
        d = np.maximum(d, 1e-7)
    else:
        d = np.ones(n)
    p[:, layout.LOG_SCALES] = np.log(d)[:, None]
    p[:, 10] = math.log(INIT_OPACITY / (1 - INIT_OPACITY))
    rgb = np.full((n, 3), 0.5, dtype=np.float32) if colors is None else colors
    sh = p[:, layout.sh_slice(sh_degree)].reshape(n, k, 3)
    sh[:, 0, :] = (rgb - 0.5) / SH_C0
    p[:, layout.sh_slice(sh_degree)] = sh.reshape(n, 3 * k)
    return p


def change_sh_degree(params: np.ndarray, old: int, new: int) -> np.ndarray:
    """Parameters at another SH degree: higher coefficients dropped, or added as zeros."""
    if old == new:
        return params
    n = len(params)
    ko, kn = layout.num_sh_coeffs(old), layout.num_sh_coeffs(new)
    out = np.zeros((n, layout.param_width(new)), dtype=np.float32)
    out[:, :layout.SH_START] = params[:, :layout.SH_START]
    sh_old = params[:, layout.sh_slice(old)].reshape(n, ko, 3)
    sh_new = out[:, layout.sh_slice(new)].reshape(n, kn, 3)
    sh_new[:, :min(ko, kn)] = sh_old[:, :min(ko, kn)]
    out[:, layout.sh_slice(new)] = sh_new.reshape(n, 3 * kn)
    return out


def _load_npz(path: Path):
    if not zipfile.is_zipfile(path):  # checked first: np.load leaks its file on a bad zip
        raise SourceError(f"{path} is not a readable .npz (no zip directory found): the file is "
                          "truncated or not an npz archive")
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise SourceError(f"{path} is not a readable .npz ({err}): the file is truncated or "
                          "not an npz archive") from err
    except ValueError as err:
        raise SourceError(f"{path}: {err}: oocstore reads plain numeric arrays only") from err


def _npz_array(data, key: str, path: Path):
    try:
        return data[key]
    except ValueError as err:
        raise SourceError(f"{path}: array {key!r} holds Python objects: store plain numeric "
                          "arrays") from err
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise SourceError(f"{path}: array {key!r} cannot be read ({err}): the file is "
                          "damaged") from err


def load_npz_source(path: Path, sh_degree: int) -> SceneSource:
    data = _load_npz(path)
    with data:
        files = set(data.files)
        if "means3d" not in files:
            raise SourceError(f"{path} has no 'means3d' array (it has: "
                              f"{', '.join(sorted(files)) or 'none'}): a point-cloud .npz needs "
                              "means3d [N, 3]")
        means = _npz_array(data, "means3d", path)
        if means.ndim != 2 or means.shape[1] != 3 or not np.issubdtype(means.dtype, np.number):
            raise SourceError(f"{path}: means3d has shape {means.shape} ({means.dtype}), expected "
                              "numbers of shape [N, 3]")
        if len(means) == 0:
            raise SourceError(f"{path}: means3d is empty: the scene needs at least one point")
        bad = ~np.all(np.isfinite(means), axis=1)
        if bad.any():
            raise SourceError(f"{path}: point {int(np.flatnonzero(bad)[0])} of means3d is not "
                              "finite: drop NaN/Inf points from the source")
        colors = None
        if "colors" in files:
            c = _npz_array(data, "colors", path)
            if c.shape != means.shape:
                raise SourceError(f"{path}: colors have shape {c.shape}, expected {means.shape}")
            if c.dtype == np.uint8:
                colors = c.astype(np.float32) / 255.0
            elif np.issubdtype(c.dtype, np.floating):
                colors = c.astype(np.float32)
                if not (np.all(np.isfinite(colors)) and colors.min() >= 0 and colors.max() <= 1):
                    raise SourceError(f"{path}: float colors must lie in 0..1 (or give uint8)")
            else:
                raise SourceError(f"{path}: colors have dtype {c.dtype}: give uint8 0..255 or "
                                  "floats 0..1")
        cams = None
        if "viewmats" in files or "Ks" in files:
            missing = [k for k in ("viewmats", "Ks", "width", "height") if k not in files]
            if missing:
                raise SourceError(f"{path} has cameras but lacks {', '.join(missing)}: give "
                                  "viewmats, Ks, width and height together")
            cams = cameras_from_arrays(_npz_array(data, "viewmats", path),
                                       _npz_array(data, "Ks", path),
                                       _npz_array(data, "width", path),
                                       _npz_array(data, "height", path), source=str(path))
    params = init_from_points(means, colors, sh_degree)
    return SceneSource(params, sh_degree, cams, path.stem)


def load_cameras(path: str | os.PathLike) -> Cameras:
    """Cameras from a COLMAP text model (directory or its cameras.txt) or an ``.npz``."""
    path = Path(path)
    if path.suffix == ".npz":
        data = _load_npz(path)
        with data:
            missing = [k for k in ("viewmats", "Ks", "width", "height") if k not in data.files]
            if missing:
                raise SourceError(f"{path} lacks {', '.join(missing)}: a cameras .npz needs "
                                  "viewmats [V,4,4], Ks [V,3,3], width, height")
            return cameras_from_arrays(*(_npz_array(data, k, path)
                                         for k in ("viewmats", "Ks", "width", "height")),
                                       source=str(path))
    if not path.exists():
        raise SourceError(f"cameras {path} do not exist: give a COLMAP text model directory "
                          "(cameras.txt + images.txt) or an .npz with viewmats and Ks")
    return read_colmap_text(path)


def load_source(src: str | os.PathLike, *, sh_degree: int | None = None) -> SceneSource:
    src = Path(src)
    if not src.exists():
        raise SourceError(f"scene source {src} does not exist: give a 3DGS .ply or an .npz "
                          "point cloud")
    if src.suffix.lower() == ".ply":
        params, degree = read_ply(src)
        if len(params) == 0:
            raise SourceError(f"{src} holds no Gaussians (element vertex 0): a scene needs at "
                              "least one")
        if sh_degree is not None and sh_degree != degree:
            log.info("SH degree %d of %s changed to %d", degree, src, sh_degree)
            params = change_sh_degree(params, degree, sh_degree)
            degree = sh_degree
        return SceneSource(params, degree, None, src.stem)
    if src.suffix.lower() == ".npz":
        return load_npz_source(src, 3 if sh_degree is None else sh_degree)
    raise SourceError(f"scene source {src} is neither .ply nor .npz: give a 3DGS .ply or an .npz "
                      "with means3d")


def source_count(src: str | os.PathLike) -> int | None:
    """Gaussians in ``src`` (from the .ply header or the .npz's means3d shape), cheaply;
    None when that cannot be told without reading it (errors come later, from the load)."""
    src = Path(src)
    try:
        if src.suffix.lower() == ".ply":
            from .ply import read_header

            v = read_header(src).element("vertex")
            return v.count if v is not None else None
        if src.suffix.lower() == ".npz":
            with np.load(src, allow_pickle=False) as data:
                return int(data["means3d"].shape[0]) if "means3d" in data.files else None
    except Exception:  # noqa: BLE001 - only a progress-bar total; the load reports errors
        return None
    return None


def tile_scene(params: np.ndarray, cameras: Cameras | None, tile: tuple[int, int],
               up: np.ndarray) -> tuple[np.ndarray, Cameras | None]:
    """The scene and its cameras (if any) replicated on a ``tile`` grid orthogonal to ``up``."""
    kx, ky = tile
    if (kx, ky) == (1, 1):
        return params, cameras
    a, b = horizontal_axes(up)
    means = params[:, layout.MEANS].astype(np.float64)
    lo, hi = robust_box(means @ np.stack([a, b]).T)
    step = (hi - lo) * 1.05
    n = len(params)
    out = np.empty((n * kx * ky, params.shape[1]), dtype=np.float32)
    cams = None
    for i in range(kx):
        for j in range(ky):
            t = i * ky + j
            offset = i * step[0] * a + j * step[1] * b
            out[t * n:(t + 1) * n] = params
            out[t * n:(t + 1) * n, layout.MEANS] += offset.astype(np.float32)
            if cameras is not None:
                moved = cameras.translated(offset, suffix=f"@{i},{j}")
                cams = moved if cams is None else cams.concat(moved)
    return out, cams


def choose_cameras(src: SceneSource, cameras: Cameras | None, *, views: int | None,
                   min_views: int, seed: int, tiled: bool = False) -> Cameras:
    """The source's (or given) cameras, plus orbit views when there are fewer than
    ``min_views``. For a ``tiled`` scene the few source views are not replicated (they
    may look across the whole grid) and the generated ones look down at least
    :data:`TILED_MIN_PITCH` degrees, so that every view stays local to its tile."""
    cams = cameras if cameras is not None else src.cameras
    have = 0 if cams is None else len(cams)
    want = views if views is not None else (have if have >= min_views else max(32, have))
    means = src.params[:, layout.MEANS]
    if have >= want and (have >= min_views or not tiled):
        return cams
    width, height = (cams.width, cams.height) if cams is not None else DEFAULT_SIZE
    keep = have if not tiled else 0
    gen = orbit_cameras(means, want - keep, width=width, height=height, template=cams,
                        min_pitch_deg=TILED_MIN_PITCH if tiled else 0.0, seed=seed)
    log.info("generated %d orbit views around the scene (the source has %d)", want - keep, have)
    return gen if cams is None or keep == 0 else cams.concat(gen)


def ingest_scene(src: str | os.PathLike, out: str | os.PathLike, *,
                 tile: str | tuple | None = None, sh_degree: int | None = None,
                 block_size: int = 4096, spare: float = 0.25, views: int | None = None,
                 min_views: int = 16, cameras: str | os.PathLike | None = None,
                 moments: str = "float32", overwrite: bool = False, seed: int = 0,
                 camera_path: str = "orbit",
                 progress: Callable[[int], None] | None = None,
                 on_loaded: Callable[[int], None] | None = None):
    """Build the scene store ``out`` from ``src``; returns the open :class:`Scene`.

    ``camera_path`` says how missing views are generated: ``"orbit"`` (rings around
    each tile, :func:`~oocstore.gs.cameras.orbit_cameras`) or ``"flythrough"`` (one
    lawnmower path over the whole, tiled, scene: ``views`` per tile in all,
    :func:`~oocstore.gs.cameras.flythrough_cameras`). ``on_loaded(total)`` is called
    once the source is read, with the number of Gaussians about to be written (for a
    progress bar); ``progress(n)`` per block.
    """
    from ..store import Store
    from .scene import Scene

    kx, ky = parse_tile(tile)
    if sh_degree is not None:
        layout.check_sh_degree(sh_degree)
    if views is not None and (isinstance(views, bool) or not isinstance(views, int) or views < 1):
        raise UsageError(f"views={views!r} must be a positive number of views")
    if camera_path not in ("orbit", "flythrough"):
        raise UsageError(f"camera path {camera_path!r} must be 'orbit' or 'flythrough'")
    Store.check_new_path(out, overwrite=overwrite)
    source = load_source(src, sh_degree=sh_degree)
    given = load_cameras(cameras) if cameras is not None else None
    check_params(source.params, source.sh_degree, source=str(src))
    own = given if given is not None else source.cameras
    if camera_path == "flythrough" and (own is None or len(own) < min_views):
        up = scene_up(source.params[:, layout.MEANS], own)
        params, _ = tile_scene(source.params, None, (kx, ky), up)
        width, height = (own.width, own.height) if own is not None else DEFAULT_SIZE
        total = (views or 32) * kx * ky
        cams = flythrough_cameras(params[:, layout.MEANS], total, width=width, height=height,
                                  up=up, template=own)
        log.info("generated %d fly-through views over the scene", total)
    else:
        cams = choose_cameras(source, given, views=views, min_views=min_views, seed=seed,
                              tiled=(kx, ky) != (1, 1))
        up = scene_up(source.params[:, layout.MEANS], cams)
        params, cams = tile_scene(source.params, cams, (kx, ky), up)
    n = len(source.params)
    if on_loaded:
        on_loaded(len(params))
    meta = {"source": os.path.basename(str(src)), "tile": f"{kx}x{ky}",
            "gaussians_per_tile": n, "views": len(cams)}
    return Scene.create(out, None, params, source.sh_degree, cams, block_size=block_size,
                        spare=spare, moments=moments, overwrite=overwrite, source=meta,
                        progress=progress)


# -- photographs with poses: COLMAP models and transforms.json ---------------------------

#: 3DGS's number of random initial points for sources without a point cloud.
DEFAULT_INIT_POINTS = 100_000


def ingest_photos(src: str | os.PathLike, out: str | os.PathLike, *, images=None,
                  images_downscale=1, test_every: int | None = None,
                  init_points: int | None = None, background=None,
                  sh_degree: int | None = None, block_size: int = 4096, spare: float = 0.25,
                  moments: str = "float32", overwrite: bool = False, seed: int = 0,
                  skip_missing_images: bool = False,
                  progress: Callable[[int], None] | None = None,
                  on_loaded: Callable[[int], None] | None = None,
                  report: dict | None = None):
    """Build the scene store ``out`` from a photo dataset ``src`` (a COLMAP model
    directory or a ``transforms*.json`` / its folder); returns the open Scene.

    Every input is checked before the first write (each image's header included); the
    images are then decoded one at a time (``progress(1)`` per image, ``on_loaded(n)``
    with their count first), stored downscaled in view-chain order with the held-out
    views last. ``report`` (a dict) receives what the ingest found: views, skipped and
    unused files, conversions."""
    from ..store import Store
    from .photos import check_downscale, parse_background
    from .scene import ImagesMeta, PhotoSource, Scene

    ds = check_downscale(images_downscale)
    _check_view_counts(test_every, init_points)
    degree = 3 if sh_degree is None else layout.check_sh_degree(sh_degree)
    bg = parse_background(background)
    Store.check_new_path(out, overwrite=overwrite)
    src = Path(src)
    kind, data, checked = _read_photo_dataset(src, images, skip_missing_images)
    unused = _count_unused_images(data)
    views, test_mask, every = _hold_out_views(checked.views, data.test_names, test_every)
    views, cams, outside = _ordered_cameras(views, test_mask, ds, str(data.source))
    w, h = cams.width, cams.height
    params, init = _initial_gaussians(data, kind, cams, init_points, degree, seed)
    check_params(params, degree, source=str(src))
    n_test = int(test_mask.sum())
    meta = ImagesMeta(kind=kind, width=w, height=h, count=len(views),
                      slot_bytes=align_up(w * h * 3), downscale=ds, test_every=every,
                      test_views=list(range(len(views) - n_test, len(views))),
                      names=[v.name for v in views],
                      background=list(bg) if checked.alpha else None,
                      source=os.path.basename(str(data.source)))
    if report is not None:
        report.update({"kind": kind, "images": len(views), "test_images": n_test,
                       "images_missing_skipped": len(checked.skipped_missing),
                       "images_unused": unused, "image_conversions": dict(checked.notes),
                       "init": init, "width": w, "height": h, "downscale": ds,
                       "undistort_outside_share": round(outside, 4)})
    if on_loaded:
        on_loaded(len(views))
    info = {"source": os.path.basename(str(src)), "image_source": kind, "views": len(views),
            "images_downscale": ds, "test_every": every, "init": init}
    return Scene.create(out, None, params, degree, cams, block_size=block_size, spare=spare,
                        moments=moments, overwrite=overwrite, source=info,
                        photos=PhotoSource(meta, _decoded_photos(views, (w, h), bg, progress)))


def _check_view_counts(test_every, init_points) -> None:
    """``test_every`` a non-negative and ``init_points`` a positive integer (or None)."""
    if test_every is not None and (isinstance(test_every, bool)
                                   or not isinstance(test_every, int) or test_every < 0):
        raise UsageError(f"test_every={test_every!r} must be a non-negative integer (8 holds "
                         "out every 8th image; 0 holds out none)")
    if init_points is not None and (isinstance(init_points, bool)
                                    or not isinstance(init_points, int) or init_points < 1):
        raise UsageError(f"init_points={init_points!r} must be a positive number of points")


def _read_photo_dataset(src: Path, images, skip_missing: bool):
    """The kind of ``src``, its dataset and its checked views (every image's header read),
    refusing views of different image sizes."""
    from .photo_sources import read_colmap_dataset, read_transforms_dataset
    from .photos import check_views

    kind = photo_source_kind(src)
    if kind is None:
        raise SourceError(f"{src} is neither a COLMAP model directory nor a transforms.json")
    if images is not None and kind != "colmap":
        raise UsageError(f"images={str(images)!r} applies to COLMAP models only (a "
                         "transforms.json names its images relative to itself)")
    data = read_colmap_dataset(src, images) if kind == "colmap" else read_transforms_dataset(src)
    checked = check_views(data.views, skip_missing=skip_missing, source=str(data.source))
    views = checked.views
    sizes = {(v.width, v.height) for v in views}
    if len(sizes) > 1:
        (w0, h0), v = (views[0].width, views[0].height), next(
            v for v in views if (v.width, v.height) != (views[0].width, views[0].height))
        raise SourceError(f"image {v.path} is {v.width}x{v.height} but {views[0].path} is "
                          f"{w0}x{h0}: the views of one scene must share an image size; split "
                          "the dataset by camera")
    return kind, data, checked


def _count_unused_images(data) -> int:
    """Image files in the dataset's image folders that no view names (logged: ignored)."""
    from .photos import image_files

    named = {v.path.resolve() for v in data.views}
    unused = 0
    for d in data.image_dirs:
        unused += sum(1 for f in image_files(d) if (d / f).resolve() not in named)
    if unused:
        log.warning("%d image file(s) in %s are not named by %s: ignored", unused,
                    ", ".join(str(d) for d in data.image_dirs), data.source)
    return unused


def _hold_out_views(views: list, test_names, test_every: int | None):
    """The views kept, which of them are held out, and the ``test_every`` that chose them
    (0 where the dataset's own split did): the dataset's split, else every
    ``test_every``-th view (3DGS: index % N == 0; default 8)."""
    names = [v.name for v in views]
    if test_every is None and test_names is not None:
        test_mask = np.array([n in test_names for n in names])
        every = 0
    else:
        every = 8 if test_every is None else test_every
        if test_names is not None:  # an explicit --test-every splits the training file
            views = [v for v in views if v.name not in test_names]
        test_mask = np.zeros(len(views), dtype=bool)
        if every:
            test_mask[::every] = True
    if test_mask.all():
        raise UsageError(f"test_every={every} holds out all {len(views)} images: give a larger "
                         "value (or 0 for none)")
    return views, test_mask, every


def _ordered_cameras(views: list, test_mask: np.ndarray, ds: int, source: str):
    """The views in view-chain order, training views first, and their cameras at the image
    size downscaled by ``ds``; with the largest share of an image's pixels that
    undistortion takes from outside its photo."""
    from .photos import outside_share, scaled_K, scaled_size

    w, h = scaled_size(views[0].width, views[0].height, ds)
    if ds > 1 and min(w, h) < 8:
        raise UsageError(f"images_downscale={ds} makes {views[0].width}x{views[0].height} "
                         f"images {w}x{h}: give a smaller factor")
    vms = np.stack([v.viewmat for v in views])
    ks = np.stack([scaled_K(v.K, (v.width, v.height), (w, h)) for v in views])
    outside = 0.0
    for key in {(tuple(k.ravel()), v.distortion) for k, v in zip(ks, views) if v.distorted}:
        outside = max(outside, outside_share(np.array(key[0]).reshape(3, 3), key[1], (w, h)))
    if outside > 0.001:
        log.info("undistortion: up to %.1f%% of an image's pixels lie outside its photo (they "
                 "repeat the photo's edge)", 100 * outside)
    train_idx = view_chain(vms, np.flatnonzero(~test_mask))
    test_idx = view_chain(vms, np.flatnonzero(test_mask))
    order = np.concatenate([train_idx, test_idx])
    views = [views[i] for i in order]
    cams = Cameras(vms[order], ks[order], w, h, tuple(v.name for v in views), source=source)
    return views, cams, outside


def _initial_gaussians(data, kind: str, cams: Cameras, init_points: int | None, degree: int,
                       seed: int):
    """The first Gaussians and how they were made: the dataset's 3D points, else
    ``init_points`` random points in the cameras' focus box (3DGS: random colours too)."""
    if data.points is not None and len(data.points):
        params = init_from_points(data.points, data.colors.astype(np.float32) / 255.0, degree)
        init = f"{len(data.points)} COLMAP points"
        if init_points is not None:
            log.info("--init-points ignored: %s has %d 3D points", data.source, len(data.points))
        return params, init
    rng = np.random.default_rng(seed)
    n = init_points or DEFAULT_INIT_POINTS
    lo, hi = focus_box(cams.viewmats, cams.Ks, cams.width, cams.height)
    pts = rng.uniform(lo, hi, size=(n, 3))
    params = init_from_points(pts, rng.uniform(0, 1, size=(n, 3)).astype(np.float32), degree)
    init = f"{n} random points in {np.round(lo, 3).tolist()}..{np.round(hi, 3).tolist()}"
    if kind == "colmap":
        log.warning("%s has no 3D points: initialised with %s", data.source, init)
    return params, init


def _decoded_photos(views: list, size: tuple[int, int], bg, progress):
    """The views' photos decoded at ``size`` in order (two decoder threads),
    ``progress(1)`` after each."""
    from .photos import load_photo

    for img in _ordered_map(lambda v: load_photo(v, size, bg), views):
        yield img
        if progress:
            progress(1)


def _ordered_map(fn, items, workers: int = 2):
    """``fn`` over ``items`` on ``workers`` threads, results in order, at most
    ``workers + 1`` of them alive at once (decoded photos are large)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="oocstore-photo") as ex:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(ex.submit(fn, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
