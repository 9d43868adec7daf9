"""Training cameras: pinhole intrinsics and world-to-camera poses of a scene's views.

Conventions are those of COLMAP, OpenCV and gsplat: camera x to the right, y down, z
forward (into the picture); ``viewmats`` map world to camera coordinates; ``Ks`` are
pinhole intrinsics in pixels for images of ``width`` x ``height``. As ``--cameras`` of a
point-cloud scene, lens distortion of COLMAP's SIMPLE_RADIAL / RADIAL / OPENCV models is
dropped (the intrinsics are reduced to ``K``); the photo ingest reads the whole model
(:func:`read_colmap_model`: text or binary, with distortion and points3D) and
undistorts the images (:mod:`oocstore.gs.photos`).

Sources: COLMAP text (``cameras.txt`` + ``images.txt``), an ``.npz`` with ``viewmats``
and ``Ks`` (+ ``width``, ``height``), or cameras generated around a scene
(:func:`orbit_cameras`) when the source brings too few.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SourceError, UsageError
from .colmap import read_colmap_cameras_text, read_colmap_images_text, rot_to_quat

#: Rotations whose R R^T differs from I by more than this are refused as singular.
_ORTHO_TOL = 1e-3
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Cameras:
    """``V`` pinhole cameras sharing one image size.

    ``viewmats``: float32 [V, 4, 4] world-to-camera; ``Ks``: float32 [V, 3, 3];
    ``names``: one label per view (image names for COLMAP sources).
    """

    viewmats: np.ndarray  # [V, 4, 4]
    Ks: np.ndarray  # [V, 3, 3]
    width: int
    height: int
    names: tuple[str, ...] = field(default=())
    source: str = "cameras"  # what to name in error messages

    def __post_init__(self) -> None:
        vm = np.asarray(self.viewmats, dtype=np.float64)
        ks = np.asarray(self.Ks, dtype=np.float64)
        where = self.source
        if vm.ndim == 3 and vm.shape[1:] == (3, 4):
            bottom = np.zeros((vm.shape[0], 1, 4))
            bottom[:, 0, 3] = 1.0
            vm = np.concatenate([vm, bottom], axis=1)
        if vm.ndim != 3 or vm.shape[1:] != (4, 4):
            raise SourceError(f"{where}: viewmats have shape {vm.shape}, expected [V, 4, 4] "
                              "(world-to-camera matrices)")
        if ks.ndim != 3 or ks.shape[1:] != (3, 3) or ks.shape[0] != vm.shape[0]:
            raise SourceError(f"{where}: Ks have shape {ks.shape}, expected [{vm.shape[0]}, 3, 3] "
                              "(one pinhole matrix per view)")
        for name, v in (("width", self.width), ("height", self.height)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 < int(v) <= 1 << 16:
                raise SourceError(f"{where}: image {name} {v!r} is not a positive pixel count "
                                  "(1..65536)")
        for i in range(vm.shape[0]):
            label = self.names[i] if i < len(self.names) else str(i)
            if not np.all(np.isfinite(vm[i])) or not np.all(np.isfinite(ks[i])):
                raise SourceError(f"{where}: camera {label} has NaN or infinite values: "
                                  "fix or drop that view")
            big = max(np.abs(vm[i]).max(), np.abs(ks[i]).max())
            if big > _FLOAT32_MAX:  # cameras are stored as float32
                raise SourceError(f"{where}: camera {label} holds the value {big:g}, beyond "
                                  f"float32's range ({_FLOAT32_MAX:.3g}): fix or drop that view")
            r = vm[i, :3, :3]
            err = np.abs(r @ r.T - np.eye(3)).max()
            if err > _ORTHO_TOL or abs(np.linalg.det(r) - 1.0) > _ORTHO_TOL:
                raise SourceError(
                    f"{where}: camera {label} has a singular or non-rotation pose (|R R^T - I| = "
                    f"{err:.3g}, det {np.linalg.det(r):.3g}): give a proper rotation "
                    "(orthonormal, det +1) in its world-to-camera matrix")
            fx, fy = ks[i, 0, 0], ks[i, 1, 1]
            if not (fx > 0 and fy > 0):
                raise SourceError(f"{where}: camera {label} has focal length fx={fx:g}, fy={fy:g}: "
                                  "focal lengths must be positive pixel counts")
        object.__setattr__(self, "viewmats", np.ascontiguousarray(vm, dtype=np.float32))
        object.__setattr__(self, "Ks", np.ascontiguousarray(ks, dtype=np.float32))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        names = tuple(str(n) for n in self.names) or tuple(f"view{i:05d}" for i in range(len(vm)))
        if len(names) != len(vm):
            raise SourceError(f"{where}: {len(names)} names for {len(vm)} views")
        object.__setattr__(self, "names", names)

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    @property
    def centers(self) -> np.ndarray:
        """Camera centres in world coordinates [V, 3] (float64)."""
        vm = self.viewmats.astype(np.float64)
        r, t = vm[:, :3, :3], vm[:, :3, 3]
        return -np.einsum("vji,vj->vi", r, t)

    def subset(self, index) -> "Cameras":
        index = np.asarray(index, dtype=np.int64)
        return Cameras(self.viewmats[index], self.Ks[index], self.width, self.height,
                       tuple(self.names[i] for i in index), self.source)

    def concat(self, other: "Cameras") -> "Cameras":
        if (other.width, other.height) != (self.width, self.height):
            other = other.resized(self.width, self.height)
        return Cameras(np.concatenate([self.viewmats, other.viewmats]),
                       np.concatenate([self.Ks, other.Ks]), self.width, self.height,
                       self.names + other.names, self.source)

    def resized(self, width: int, height: int) -> "Cameras":
        """The same views rendered at another resolution (intrinsics scaled)."""
        sx, sy = width / self.width, height / self.height
        ks = self.Ks.astype(np.float64).copy()
        ks[:, 0, :] *= sx
        ks[:, 1, :] *= sy
        return Cameras(self.viewmats, ks, width, height, self.names, self.source)

    def translated(self, offset, suffix: str = "") -> "Cameras":
        """The same cameras looking at the scene moved by ``offset`` (world units)."""
        shift = np.eye(4)
        shift[:3, 3] = -np.asarray(offset, dtype=np.float64)
        vm = self.viewmats.astype(np.float64) @ shift
        return Cameras(vm, self.Ks, self.width, self.height,
                       tuple(n + suffix for n in self.names), self.source)


#: Names that live in :mod:`oocstore.gs.colmap` (the whole-model COLMAP reader and
#: writer, which imports nothing from here), still reachable from here.
_COLMAP_NAMES = frozenset({"COLMAP_MODELS", "COLMAP_MODEL_IDS", "ColmapCamera", "ColmapImage",
                           "ColmapModel", "colmap_model_kind", "read_colmap_model", "write_colmap_model",
                           "read_colmap_cameras_text", "unsupported_model"})


def __getattr__(name: str):
    if name in _COLMAP_NAMES:
        from . import colmap

        return getattr(colmap, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- .npz -------------------------------------------------------------------------------

def cameras_from_arrays(viewmats, Ks, width, height, *, source: str) -> Cameras:
    """Cameras from raw arrays (e.g. an ``.npz``'s ``viewmats``, ``Ks``, ``width``, ``height``)."""
    try:
        w = int(np.asarray(width).reshape(()))
        h = int(np.asarray(height).reshape(()))
    except (TypeError, ValueError) as err:
        raise SourceError(f"{source}: width/height must be single integers, got {width!r}, "
                          f"{height!r}") from err
    Ks = np.asarray(Ks)
    viewmats = np.asarray(viewmats)
    if Ks.ndim == 2 and viewmats.ndim == 3:
        Ks = np.broadcast_to(Ks, (viewmats.shape[0], *Ks.shape))
    return Cameras(viewmats, Ks, w, h, source=source)


# -- COLMAP text ------------------------------------------------------------------------

def parse_colmap_cameras(path: Path) -> dict[int, tuple[int, int, np.ndarray]]:
    """``{camera_id: (width, height, K)}`` from a COLMAP ``cameras.txt`` (distortion
    dropped)."""
    return {cid: (c.width, c.height, c.K) for cid, c in read_colmap_cameras_text(path).items()}


def parse_colmap_images(path: Path, cams: dict) -> list[tuple[str, np.ndarray, int]]:
    """``[(name, viewmat [4,4], camera_id)]`` from a COLMAP ``images.txt``, in file order."""
    out = []
    for img in read_colmap_images_text(Path(path)):
        if img.camera_id not in cams:
            raise SourceError(f"{img.where}: image refers to camera {img.camera_id}, which "
                              "cameras.txt does not list")
        out.append((img.name, img.viewmat, img.camera_id))
    return out


def read_colmap_text(directory: str | Path) -> Cameras:
    """Cameras of a COLMAP text model (``cameras.txt`` + ``images.txt``), sorted by image
    name. Views of differing sizes are rescaled to the first camera's size; differing
    aspect ratios are refused."""
    d = Path(directory)
    if d.is_file():
        d = d.parent
    cams = parse_colmap_cameras(d / "cameras.txt")
    images = sorted(parse_colmap_images(d / "images.txt", cams), key=lambda x: x[0])
    w0, h0, _ = cams[images[0][2]]
    vms, ks = [], []
    for name, vm, cam_id in images:
        w, h, k = cams[cam_id]
        if abs(w / h - w0 / h0) > 0.01:
            raise SourceError(f"{d}: image {name!r} is {w}x{h} but others are {w0}x{h0}; views of "
                              "one scene must share an aspect ratio: crop or split the model")
        k = k.copy()
        k[0] *= w0 / w
        k[1] *= h0 / h
        vms.append(vm)
        ks.append(k)
    return Cameras(np.stack(vms), np.stack(ks), w0, h0, tuple(n for n, _, _ in images),
                   source=str(d))


def write_colmap_text(directory: str | Path, cameras: Cameras) -> None:
    """Write ``cameras`` as a COLMAP text model (one PINHOLE camera per view)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    lines = ["# Camera list: CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    img = ["# Image list: IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME, then POINTS2D"]
    for i in range(len(cameras)):
        k = cameras.Ks[i].astype(np.float64).tolist()
        lines.append(f"{i + 1} PINHOLE {cameras.width} {cameras.height} {k[0][0]!r} {k[1][1]!r} "
                     f"{k[0][2]!r} {k[1][2]!r}")
        q = rot_to_quat(cameras.viewmats[i, :3, :3].astype(np.float64)).tolist()
        t = cameras.viewmats[i, :3, 3].astype(np.float64).tolist()
        img.append(f"{i + 1} {q[0]!r} {q[1]!r} {q[2]!r} {q[3]!r} {t[0]!r} {t[1]!r} {t[2]!r} "
                   f"{i + 1} {cameras.names[i]}")
        img.append("")
    (d / "cameras.txt").write_text("\n".join(lines) + "\n")
    (d / "images.txt").write_text("\n".join(img) + "\n")


# -- generated cameras ------------------------------------------------------------------

def optical_axes_equations(centers: np.ndarray,  # [V, 3] camera centres
                           axes: np.ndarray,  # [V, 3] unit optical axes
                           ) -> tuple[np.ndarray, np.ndarray]:  # [3, 3], [3]
    """The normal equations ``a @ p = b`` of the point ``p`` nearest (least squares) to
    every optical axis: the point the cameras look at."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centers, axes):
        m = np.eye(3) - np.outer(d, d)
        a += m
        b += m @ c
    return a, b


def look_at(eye, target, up) -> np.ndarray:
    """World-to-camera [4, 4] of a camera at ``eye`` looking at ``target`` (y down)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-9:  # looking straight along up: any right will do
        right = np.cross(fwd, np.array([1.0, 0, 0]) if abs(fwd[0]) < 0.9 else np.array([0, 1.0, 0]))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    r = np.stack([right, down, fwd])  # rows: camera axes in world coordinates
    vm = np.eye(4)
    vm[:3, :3] = r
    vm[:3, 3] = -r @ eye
    return vm


def scene_up(means: np.ndarray, cameras: Cameras | None = None) -> np.ndarray:
    """The scene's up direction: the mean of the cameras' up axes (-y) where there are
    cameras, else the axis of least spread of the points (pointing to +z's side)."""
    if cameras is not None and len(cameras):
        up = -cameras.viewmats[:, 1, :3].astype(np.float64).mean(axis=0)
        n = np.linalg.norm(up)
        if n > 1e-6:
            return up / n
    sample = np.asarray(means[:: max(1, len(means) // 100_000)], dtype=np.float64)
    centered = sample - sample.mean(axis=0)
    _, vecs = np.linalg.eigh(centered.T @ centered)
    up = vecs[:, 0]
    return up if up[2] >= 0 else -up


def robust_box(means: np.ndarray, q: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis ``q``-th and ``100-q``-th percentiles of the means (ignores stray points)."""
    sample = np.asarray(means[:: max(1, len(means) // 200_000)], dtype=np.float64)
    return np.percentile(sample, q, axis=0), np.percentile(sample, 100 - q, axis=0)


def orbit_cameras(means: np.ndarray, n: int, *, width: int, height: int,
                  template: Cameras | None = None, fov_deg: float = 60.0,
                  min_pitch_deg: float = 0.0, seed: int = 0) -> Cameras:
    """``n`` cameras on a ring around the scene, looking at its centre.

    With a ``template`` (the source's own cameras) the ring keeps their mean distance
    and height above the centre and their focal length, so generated views frame the
    scene as the real ones do; otherwise the ring's radius makes the robust extent of
    the points fill a ``fov_deg`` field of view. Heights vary by a seeded +-15 %.
    ``min_pitch_deg`` raises the ring (same distance to the centre) until the cameras
    look down at least that steeply, which keeps what a view sees local to the scene
    (a near-horizontal view sees everything behind the scene too).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UsageError(f"number of generated views {n!r} must be a positive integer")
    lo, hi = robust_box(means)
    center = (lo + hi) / 2
    up = scene_up(means, template)
    # Two horizontal axes orthogonal to up.
    a = np.cross(up, [1.0, 0, 0] if abs(up[0]) < 0.9 else [0, 1.0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    if template is not None and len(template):
        rel = template.centers - center
        height_off = float(np.median(rel @ up))
        radius = float(np.median(np.linalg.norm(rel - np.outer(rel @ up, up), axis=1)))
        k = template.Ks.astype(np.float64).mean(axis=0)
        k[0] *= width / template.width
        k[1] *= height / template.height
    else:
        extent = float(np.linalg.norm(hi - lo)) / 2 or 1.0
        f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
        radius = extent / math.tan(math.radians(fov_deg) / 2) * 0.9
        height_off = 0.4 * radius
        k = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
    radius = max(radius, 1e-3)
    if math.degrees(math.atan2(height_off, radius)) < min_pitch_deg:
        dist = math.hypot(radius, height_off)
        radius = dist * math.cos(math.radians(min_pitch_deg))
        height_off = dist * math.sin(math.radians(min_pitch_deg))
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi)
    vms = []
    for i in range(n):
        ang = phase + 2 * np.pi * i / n
        h = height_off * (1 + rng.uniform(-0.15, 0.15))
        eye = center + radius * (np.cos(ang) * a + np.sin(ang) * b) + h * up
        vms.append(look_at(eye, center, up))
    return Cameras(np.stack(vms), np.broadcast_to(k, (n, 3, 3)).copy(), width, height,
                   tuple(f"orbit{i:05d}" for i in range(n)), source="generated orbit")


def horizontal_axes(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to ``up`` and to each other."""
    up = np.asarray(up, dtype=np.float64)
    a = np.cross(up, [1.0, 0, 0] if abs(up[0]) < 0.9 else [0, 1.0, 0])
    a /= np.linalg.norm(a)
    return a, np.cross(up, a)


def flythrough_cameras(means: np.ndarray, n: int, *, width: int, height: int,
                       up: np.ndarray, template: Cameras | None = None,
                       pitch_deg: float = 60.0, altitude: float | None = None,
                       fov_deg: float = 60.0) -> Cameras:
    """``n`` cameras flying a lawnmower path over the scene, looking ahead and down.

    The path covers the points' robust horizontal extent (2nd..98th percentile) in rows
    along its longer side, alternating direction, ``altitude`` (default a tenth of the
    shorter horizontal extent) above the robust top of the scene. Each view sees the
    ground a little ahead of it, so views are local and consecutive ones overlap: the
    kind of views a large (tiled) scene needs for out-of-core training. Focal length
    from the ``template`` cameras when given, else a ``fov_deg`` horizontal field.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UsageError(f"number of generated views {n!r} must be a positive integer")
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    a, b = horizontal_axes(up)
    frame = np.stack([a, b, up])
    lo, hi = robust_box(np.asarray(means, dtype=np.float64) @ frame.T)
    ext = np.maximum(hi[:2] - lo[:2], 1e-6)
    if ext[1] > ext[0]:  # rows run along the longer side
        a, b, lo, hi, ext = b, a, lo[[1, 0, 2]], hi[[1, 0, 2]], ext[::-1]
    alt = 0.1 * float(ext.min()) if altitude is None else float(altitude)
    rows = max(1, int(round(math.sqrt(n * ext[1] / ext[0]))))
    per_row = int(math.ceil(n / rows))
    pitch = math.radians(pitch_deg)
    vms = []
    for r in range(rows):
        v = lo[1] + ext[1] * (r + 0.5) / rows
        direction = 1.0 if r % 2 == 0 else -1.0
        for i in range(per_row):
            if len(vms) == n:
                break
            f = (i + 0.5) / per_row
            u = lo[0] + ext[0] * (f if direction > 0 else 1 - f)
            eye = u * a + v * b + (hi[2] + alt) * up
            look = direction * math.cos(pitch) * a - math.sin(pitch) * up
            vms.append(look_at(eye, eye + look, up))
    if template is not None and len(template):
        k = template.Ks.astype(np.float64).mean(axis=0)
        k[0] *= width / template.width
        k[1] *= height / template.height
    else:
        f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
        k = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
    return Cameras(np.stack(vms), np.broadcast_to(k, (n, 3, 3)).copy(), width, height,
                   tuple(f"fly{i:05d}" for i in range(n)), source="generated fly-through")
