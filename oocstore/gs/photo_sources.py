"""Photo datasets with poses, read into views: COLMAP models and ``transforms.json``.

:func:`read_colmap_dataset` and :func:`read_transforms_dataset` turn a dataset into a
:class:`PhotoDataset`: one :class:`~oocstore.gs.photos.PhotoView` per image (its file,
world-to-camera pose in OpenCV axes, intrinsics and distortion at the file's
resolution), the dataset's own test split if it has one, and the COLMAP points. They
read no pixels; :func:`oocstore.gs.ingest.ingest_photos` checks and stores the images.

Conventions: COLMAP poses are world-to-camera already (``R(q), t``). A
``transform_matrix`` is camera-to-world in the OpenGL/Blender convention (x right, y up,
z backward): its y and z columns are negated and it is inverted. Either pose must be a
rigid transform (:data:`RIGID_TOL`). :func:`view_chain` orders views so that consecutive
ones overlap, and :func:`focus_box` is the volume random initial points fill when a
dataset has no point cloud.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SourceError

#: A transform whose rotation part's |R R^T - I| (or |det - 1|) exceeds this is not rigid.
RIGID_TOL = 1e-3


@dataclass
class PhotoDataset:
    """Views of a photo dataset (before checks) and what the ingest needs besides."""

    kind: str  # "colmap" or "transforms"
    source: Path  # the model directory or the transforms file
    views: list  # [PhotoView], the dataset's order (COLMAP: by name)
    test_names: set | None  # the dataset's own test split (names), or None
    points: np.ndarray | None = None  # [N, 3] float64 (COLMAP points3D)
    colors: np.ndarray | None = None  # [N, 3] uint8
    image_dirs: tuple = ()  # folders the images come from (for the unused-files count)


def photo_source_kind(src: str | os.PathLike) -> str | None:
    """"colmap" / "transforms" when ``src`` is a photo dataset, else None."""
    from .colmap import colmap_model_kind

    p = Path(src)
    if p.is_file():
        return "transforms" if p.suffix.lower() == ".json" else None
    if p.is_dir():
        if any(colmap_model_kind(c) for c in _model_candidates(p)):
            return "colmap"
        if any((p / n).is_file() for n in ("transforms.json", "transforms_train.json")):
            return "transforms"
    return None


def _model_candidates(src: Path) -> tuple[Path, ...]:
    """Where a COLMAP model may be, given SRC: the model itself, sparse/0 of a dataset
    folder, sparse/ (a single model), or 0/ of a sparse/ folder."""
    return (src, src / "sparse" / "0", src / "sparse", src / "0")


def _colmap_dirs(src: Path, images: Path | None) -> tuple[Path, Path]:
    from .colmap import colmap_model_kind

    model = src
    for cand in _model_candidates(src):
        if colmap_model_kind(cand):
            model = cand
            break
    if images is not None:
        if not Path(images).is_dir():
            raise SourceError(f"images={str(images)!r} is not a directory: give the folder holding "
                              "the model's images")
        return model, Path(images)
    # sparse/0 -> ../../images, sparse -> ../images, or images beside the model files
    for cand in (model.parent.parent / "images", model.parent / "images", model / "images"):
        if cand.is_dir():
            return model, cand
    raise SourceError(f"no images folder found for the COLMAP model {model} (looked for "
                      f"{model.parent.parent / 'images'} and {model.parent / 'images'}): give it "
                      "with images=DIR")


def read_colmap_dataset(src: Path, images: Path | None = None) -> PhotoDataset:
    """The views (sorted by image name, as 3DGS does) and points of a COLMAP model."""
    from .colmap import COLMAP_MODELS, read_colmap_model, unsupported_model
    from .photos import PhotoView

    model_dir, image_dir = _colmap_dirs(src, images)
    model = read_colmap_model(model_dir)
    views = []
    for im in sorted(model.images, key=lambda x: x.name):
        cam = model.cameras[im.camera_id]
        if cam.model not in COLMAP_MODELS:
            raise SourceError(unsupported_model(cam.where, cam.id, cam.model))
        views.append(PhotoView(image_dir / im.name, im.name, _rigid(im.viewmat, im.where, im.name),
                               cam.K, cam.width, cam.height, cam.distortion, cam.where))
    return PhotoDataset("colmap", model_dir, views, None, model.points, model.colors,
                        (image_dir,))


def _rigid(vm: np.ndarray, where: str, name: str) -> np.ndarray:
    big = float(np.abs(vm).max())
    if not big < 1e30:
        raise SourceError(f"{where}: the pose of {name[:60]!r} holds the value {big:g}: give a "
                          "finite camera pose in scene units")
    r = vm[:3, :3]
    err = float(np.abs(r @ r.T - np.eye(3)).max())
    det = float(np.linalg.det(r))
    if err > RIGID_TOL or abs(det - 1.0) > RIGID_TOL or np.abs(vm[3] - [0, 0, 0, 1]).max() > 1e-6:
        raise SourceError(f"{where}: the pose of {name[:60]!r} is not a rigid transform "
                          f"(|R R^T - I| = {err:.3g}, det R = {det:.3g}): give a rotation and a "
                          "translation only (no scale, shear or mirroring)")
    return vm


def _transforms_files(src: Path) -> tuple[Path, Path | None]:
    """(the training transforms file, the dataset's test split file or None)."""
    if src.is_dir():
        for name in ("transforms_train.json", "transforms.json"):
            if (src / name).is_file():
                src = src / name
                break
        else:
            raise SourceError(f"{src} holds no transforms.json or transforms_train.json")
    test = None
    if src.name == "transforms_train.json" and (src.parent / "transforms_test.json").is_file():
        test = src.parent / "transforms_test.json"
    return src, test


def _json_number(data: dict, key: str, path: Path, where: str):
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SourceError(f"{path}: {where}{key} = {v!r:.40} is not a finite number")
    return float(v)


def _frame_image(base: Path, file_path) -> Path:
    if not isinstance(file_path, str) or not file_path:
        raise SourceError(f"{base}: a frame's file_path is {file_path!r:.60}: give the image "
                          "path relative to the transforms file")
    p = base / file_path
    if not p.suffix and not p.exists():
        for ext in (".png", ".jpg", ".jpeg"):  # NeRF-synthetic leaves the extension out
            if p.with_name(p.name + ext).exists():
                return p.with_name(p.name + ext)
        return p.with_name(p.name + ".png")
    return p


def read_transforms_views(path: Path) -> list:
    """Views of one ``transforms*.json`` (frame order), poses converted from the
    OpenGL/Blender camera-to-world convention to world-to-camera OpenCV axes."""
    from .photos import PhotoView

    data = _load_transforms(path)
    base = path.parent
    views = []
    for i, fr in enumerate(data["frames"]):
        if not isinstance(fr, dict):
            raise SourceError(f"{path}: frame {i} is not an object")
        where = f"frame {i} "
        img = _frame_image(base, fr.get("file_path"))
        merged = {**data, **{k: v for k, v in fr.items() if k != "frames"}}
        w, h = _frame_size(merged, img, path, where)
        K = _frame_intrinsics(merged, w, h, path, where)
        dist = _frame_distortion(merged, path, where)
        vm = _frame_viewmat(fr, path, where)
        name = img.relative_to(base).as_posix() if img.is_relative_to(base) else img.name
        views.append(PhotoView(img, name, vm, K, w, h, dist, f"{path}: {where}"))
    return views


def _load_transforms(path: Path) -> dict:
    """The parsed transforms file: an object with a non-empty ``frames`` list and a
    supported ``camera_model``."""
    import json

    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise SourceError(f"{path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise SourceError(f"{path} is not valid JSON ({err}): give a NeRF-synthetic or "
                          "instant-ngp transforms file") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) \
            or not data["frames"]:
        raise SourceError(f"{path} has no 'frames' list: a transforms file lists frames with "
                          "file_path and transform_matrix")
    model = data.get("camera_model", "OPENCV")
    if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        raise SourceError(f"{path}: camera_model {model!r:.40} is not supported: give pinhole "
                          "or OPENCV (k1 k2 p1 p2) intrinsics, or undistort the images first")
    return data


def _frame_size(merged: dict, img: Path, path: Path, where: str) -> tuple[int, int]:
    """A frame's image size in pixels: ``w`` / ``h`` (the frame's, else the file's), else
    the image's header."""
    from .photos import probe_image

    w, h = _json_number(merged, "w", path, where), _json_number(merged, "h", path, where)
    if (w is None or h is None) and img.is_file():
        probe = probe_image(img)
        w = float(probe.width) if w is None else w
        h = float(probe.height) if h is None else h
    if w is None or h is None:
        raise SourceError(f"image {img} does not exist and {path} gives no w/h: restore the "
                          "image (or pass skip_missing_images=True)")
    if not (w.is_integer() and h.is_integer() and 0 < w <= 1 << 16 and 0 < h <= 1 << 16):
        raise SourceError(f"{path}: {where}image size w={w:g}, h={h:g} is not a positive "
                          "pixel count")
    return int(w), int(h)


def _frame_intrinsics(merged: dict, w: int, h: int, path: Path, where: str) -> np.ndarray:
    """A frame's K [3, 3]: focal lengths from ``fl_x`` / ``fl_y`` or the fields of view
    ``camera_angle_x`` / ``camera_angle_y`` (one axis standing for both), principal point
    ``cx`` / ``cy`` (default: the image centre)."""
    fx = _json_number(merged, "fl_x", path, where)
    fy = _json_number(merged, "fl_y", path, where)
    ax = _json_number(merged, "camera_angle_x", path, where)
    ay = _json_number(merged, "camera_angle_y", path, where)
    for name, a in (("camera_angle_x", ax), ("camera_angle_y", ay)):
        if a is not None and not 0 < a < math.pi:
            raise SourceError(f"{path}: {name} = {a:g} is not a field of view in radians "
                              "(0..pi)")
    if fx is None and ax is not None:
        fx = 0.5 * w / math.tan(0.5 * ax)
    if fy is None and ay is not None:
        fy = 0.5 * h / math.tan(0.5 * ay)
    if fx is None and fy is not None:
        fx = fy
    if fx is None:
        raise SourceError(f"{path} has no intrinsics (neither camera_angle_x nor fl_x): add "
                          "camera_angle_x (NeRF-synthetic) or fl_x, fl_y, cx, cy, w, h "
                          "(instant-ngp)")
    fy = fx if fy is None else fy
    if not (fx > 0 and fy > 0):
        raise SourceError(f"{path}: focal length fl_x={fx:g}, fl_y={fy:g} must be positive")
    cx = _json_number(merged, "cx", path, where)
    cy = _json_number(merged, "cy", path, where)
    return np.array([[fx, 0, w / 2 if cx is None else cx], [0, fy, h / 2 if cy is None else cy],
                     [0, 0, 1]])


def _frame_distortion(merged: dict, path: Path, where: str) -> tuple[float, ...]:
    """A frame's OPENCV distortion (k1, k2, p1, p2); a k3 or k4 term is refused."""
    dist = tuple(_json_number(merged, k, path, where) or 0.0 for k in ("k1", "k2", "p1", "p2"))
    for k in ("k3", "k4"):
        v = _json_number(merged, k, path, where)
        if v:
            raise SourceError(f"{path}: distortion {k} = {v:g} is not supported (only k1 k2 "
                              "p1 p2): undistort the images first, or drop the term")
    return dist


def _frame_viewmat(fr: dict, path: Path, where: str) -> np.ndarray:
    """A frame's world-to-camera matrix [4, 4] in OpenCV axes, from its camera-to-world
    ``transform_matrix`` in OpenGL/Blender axes (3x4 or 4x4, rigid)."""
    tm = fr.get("transform_matrix")
    try:
        c2w = np.array(tm, dtype=np.float64)
    except (TypeError, ValueError):
        c2w = np.zeros(0)
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0, 0, 0, 1]])
    if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
        raise SourceError(f"{path}: {where}({fr.get('file_path')!r:.60}) transform_matrix is "
                          f"not a finite 4x4 matrix: give the camera-to-world transform")
    c2w[:3, 1:3] *= -1  # OpenGL/Blender (y up, z back) -> OpenCV (y down, z forward)
    _rigid(c2w, f"{path}: {where}", str(fr.get("file_path")))
    vm = np.eye(4)
    vm[:3, :3] = c2w[:3, :3].T
    vm[:3, 3] = -c2w[:3, :3].T @ c2w[:3, 3]
    return vm


def read_transforms_dataset(src: Path) -> PhotoDataset:
    train, test = _transforms_files(src)
    views = read_transforms_views(train)
    test_names = None
    if test is not None:
        tv = read_transforms_views(test)
        test_names = {v.name for v in tv}
        views = views + tv
    dirs = tuple(sorted({v.path.parent for v in views}))
    return PhotoDataset("transforms", train, views, test_names, image_dirs=dirs)


def view_chain(viewmats: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``index`` reordered as a nearest-camera chain: start at the camera farthest from
    the others' mean, then always step to the closest unvisited one (distance between
    centres over the median spacing, plus 1 - cos of the angle between viewing
    directions), so consecutive views overlap and a sequential pass reads forward."""
    index = np.asarray(index, dtype=np.int64)
    if len(index) <= 2:
        return index
    vm = viewmats[index].astype(np.float64)
    centers = -np.einsum("vji,vj->vi", vm[:, :3, :3], vm[:, :3, 3])
    fwd = vm[:, 2, :3]
    scale = float(np.median(np.linalg.norm(centers - centers.mean(0), axis=1))) or 1.0
    left = np.ones(len(index), dtype=bool)
    cur = int(np.argmax(np.linalg.norm(centers - centers.mean(0), axis=1)))
    order = [cur]
    left[cur] = False
    for _ in range(len(index) - 1):
        d = np.linalg.norm(centers - centers[cur], axis=1) / scale + (1.0 - fwd @ fwd[cur])
        d[~left] = np.inf
        cur = int(np.argmin(d))
        order.append(cur)
        left[cur] = False
    return index[np.array(order)]


def focus_box(viewmats: np.ndarray, Ks: np.ndarray, width: int, height: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The box random initial points fill for a source without a point cloud: a cube
    around the point the cameras look at (least-squares meeting point of their optical
    axes) whose half-width is the median camera distance to it times the tangent of
    half the narrower field of view, i.e. what a typical view frames (for the
    NeRF-synthetic scenes, about the +-1.3 cube 3DGS uses). When the axes do not meet
    (all parallel) it is the cameras' bounding box, grown by half."""
    from .cameras import optical_axes_equations

    vm = viewmats.astype(np.float64)
    centers = -np.einsum("vji,vj->vi", vm[:, :3, :3], vm[:, :3, 3])
    fwd = vm[:, 2, :3]
    a, b = optical_axes_equations(centers, fwd)
    if len(centers) >= 2 and np.linalg.cond(a) < 1e6:
        focus = np.linalg.solve(a, b)
        ahead = np.einsum("vi,vi->v", focus - centers, fwd)
        if np.median(ahead) > 0:
            dist = float(np.median(np.linalg.norm(centers - focus, axis=1)))
            k = Ks.astype(np.float64)
            half = np.minimum(0.5 * width / k[:, 0, 0], 0.5 * height / k[:, 1, 1])
            r = dist * float(np.median(half))
            return focus - r, focus + r
    lo, hi = centers.min(0), centers.max(0)
    pad = 0.25 * np.maximum(hi - lo, 1e-3)
    return lo - pad, hi + pad
