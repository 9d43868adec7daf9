"""Training cameras: pinhole intrinsics and world-to-camera poses of a scene's views.

Conventions are those of COLMAP, OpenCV and gsplat: camera x to the right, y down, z
forward (into the picture); ``viewmats`` map world to camera coordinates; ``Ks`` are
pinhole intrinsics in pixels for images of ``width`` x ``height``. Lens distortion of
COLMAP's SIMPLE_RADIAL / RADIAL / OPENCV models is dropped (the intrinsics are reduced
to ``K``), which is what 3DGS trainers do with undistorted images.

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

#: COLMAP camera models and the number of parameters each one lists.
COLMAP_MODELS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5,
                 "OPENCV": 8}
#: Every COLMAP camera model by its id in binary models: (name, parameter count).
#: Those outside :data:`COLMAP_MODELS` (fisheye, thin-prism, FOV, FULL_OPENCV) are
#: read but refused by name at ingest.
COLMAP_MODEL_IDS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4),
                    3: ("RADIAL", 5), 4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8),
                    6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
                    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
                    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16)}
_COLMAP_ALL = {name: n for name, n in COLMAP_MODEL_IDS.values()}

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

def _colmap_lines(path: Path):
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as err:
        raise SourceError(f"COLMAP file {path} does not exist: give the sparse model directory "
                          "holding cameras.txt and images.txt") from err
    except UnicodeDecodeError as err:
        raise SourceError(f"{path} is not UTF-8 text: export the COLMAP model as text "
                          "(colmap model_converter --output_type TXT)") from err
    for lineno, line in enumerate(text.splitlines(), 1):
        yield lineno, line


def _numbers(path: Path, lineno: int, tokens: list[str], what: str) -> list[float]:
    out = []
    for tok in tokens:
        try:
            v = float(tok)
        except ValueError:
            raise SourceError(f"{path}:{lineno}: {what} {tok!r} is not a number") from None
        if not math.isfinite(v):
            raise SourceError(f"{path}:{lineno}: {what} {tok!r} is not finite")
        out.append(v)
    return out


def parse_colmap_cameras(path: Path) -> dict[int, tuple[int, int, np.ndarray]]:
    """``{camera_id: (width, height, K)}`` from a COLMAP ``cameras.txt`` (distortion
    dropped)."""
    return {cid: (c.width, c.height, c.K) for cid, c in read_colmap_cameras_text(path).items()}


@dataclass(frozen=True)
class ColmapCamera:
    """One COLMAP camera: model name, image size and the model's parameters."""

    id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]
    where: str = ""  # file:line (text) or file (binary), for error messages

    @property
    def K(self) -> np.ndarray:
        p = self.params
        if self.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE",
                          "RADIAL_FISHEYE"):
            fx = fy = p[0]
            cx, cy = p[1], p[2]
        else:
            fx, fy, cx, cy = p[:4]
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)

    @property
    def distortion(self) -> tuple[float, float, float, float]:
        """OpenCV ``(k1, k2, p1, p2)`` of the supported models (zeros for pinholes)."""
        p = self.params
        if self.model == "SIMPLE_RADIAL":
            return (p[3], 0.0, 0.0, 0.0)
        if self.model == "RADIAL":
            return (p[3], p[4], 0.0, 0.0)
        if self.model == "OPENCV":
            return (p[4], p[5], p[6], p[7])
        return (0.0, 0.0, 0.0, 0.0)


def _check_camera(cam: ColmapCamera) -> None:
    if not (0 < cam.width <= 1 << 16 and 0 < cam.height <= 1 << 16):
        raise SourceError(f"{cam.where}: image size {cam.width}x{cam.height} is not a positive "
                          "pixel count (1..65536)")
    if not all(math.isfinite(v) for v in cam.params):
        raise SourceError(f"{cam.where}: camera {cam.id} has a non-finite parameter "
                          f"{cam.params}: fix the model")
    k = cam.K
    if not (k[0, 0] > 0 and k[1, 1] > 0):
        raise SourceError(f"{cam.where}: camera {cam.id} has focal length {k[0, 0]:g}, "
                          f"{k[1, 1]:g}: focal lengths must be positive")


def read_colmap_cameras_text(path: Path, *, all_models: bool = False) -> dict[int, ColmapCamera]:
    """``{camera_id: ColmapCamera}`` from a COLMAP ``cameras.txt``. Models outside
    :data:`COLMAP_MODELS` are refused by name unless ``all_models``."""
    path = Path(path)
    known = _COLMAP_ALL if all_models else COLMAP_MODELS
    cams: dict[int, ColmapCamera] = {}
    for lineno, line in _colmap_lines(path):
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        if len(tok) < 4:
            raise SourceError(f"{path}:{lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', "
                              f"got {line.strip()[:80]!r}")
        try:
            cam_id, width, height = int(tok[0]), int(tok[2]), int(tok[3])
        except ValueError:
            raise SourceError(f"{path}:{lineno}: camera id, width and height must be integers, "
                              f"got {' '.join(tok[:4])[:80]!r}") from None
        model = tok[1]
        if model not in known:
            raise SourceError(unsupported_model(f"{path}:{lineno}", cam_id, model[:40]))
        params = _numbers(path, lineno, tok[4:], "camera parameter")
        if len(params) != known[model]:
            raise SourceError(f"{path}:{lineno}: model {model} takes {known[model]} "
                              f"parameters, got {len(params)}")
        cam = ColmapCamera(cam_id, model, width, height, tuple(params), f"{path}:{lineno}")
        _check_camera(cam)
        if cam_id in cams:
            raise SourceError(f"{path}:{lineno}: camera id {cam_id} appears twice")
        cams[cam_id] = cam
    if not cams:
        raise SourceError(f"{path} lists no cameras")
    return cams


def unsupported_model(where: str, cam_id, model: str) -> str:
    return (f"{where}: camera {cam_id}: COLMAP camera model {model!r} is not supported: use one of {', '.join(COLMAP_MODELS)} (the distorted ones are undistorted "
            "at ingest), or undistort the images first with `colmap image_undistorter`")


def _quat_to_rot(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def parse_colmap_images(path: Path, cams: dict) -> list[tuple[str, np.ndarray, int]]:
    """``[(name, viewmat [4,4], camera_id)]`` from a COLMAP ``images.txt``, in file order."""
    path = Path(path)
    out = []
    expect_points = False
    for lineno, line in _colmap_lines(path):
        if line.lstrip().startswith("#"):
            continue
        if expect_points:  # every image line is followed by its (possibly empty) 2D points
            expect_points = False
            continue
        tok = line.split()
        if not tok:
            continue
        if len(tok) < 10:
            raise SourceError(f"{path}:{lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID "
                              f"NAME', got {line.strip()[:80]!r}")
        vals = _numbers(path, lineno, tok[1:8], "pose value")
        try:
            cam_id = int(tok[8])
        except ValueError:
            raise SourceError(f"{path}:{lineno}: camera id {tok[8][:40]!r} is not an integer") from None
        if cam_id not in cams:
            raise SourceError(f"{path}:{lineno}: image refers to camera {cam_id}, which "
                              "cameras.txt does not list")
        q = np.array(vals[:4])
        name = " ".join(tok[9:])
        scale = float(np.abs(q).max())  # divided out first: |q| of a huge q overflows
        if not scale > 1e-6:
            raise SourceError(f"{path}:{lineno}: image {name[:60]!r} has a zero rotation quaternion "
                              f"{tuple(vals[:4])}: a pose needs a unit quaternion (qw qx qy qz)")
        vm = np.eye(4)
        vm[:3, :3] = _quat_to_rot(q / scale)
        vm[:3, 3] = vals[4:7]
        out.append((name, vm, cam_id))
        expect_points = True
    if not out:
        raise SourceError(f"{path} lists no images")
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


@dataclass(frozen=True)
class ColmapImage:
    """One registered image of a COLMAP model: pose (world-to-camera) and camera."""

    id: int
    name: str
    qvec: tuple[float, float, float, float]  # w x y z
    tvec: tuple[float, float, float]
    camera_id: int
    where: str = ""

    @property
    def viewmat(self) -> np.ndarray:
        q = np.array(self.qvec, dtype=np.float64)
        scale = float(np.abs(q).max())
        if not scale > 1e-6:
            raise SourceError(f"{self.where}: image {self.name[:60]!r} has a zero rotation "
                              f"quaternion {self.qvec}: a pose needs a unit quaternion")
        vm = np.eye(4)
        vm[:3, :3] = _quat_to_rot(q / scale)
        vm[:3, 3] = self.tvec
        return vm


@dataclass
class ColmapModel:
    """A COLMAP sparse model: cameras, registered images, 3D points with colours."""

    directory: Path
    binary: bool
    cameras: dict[int, ColmapCamera]
    images: list[ColmapImage]  # in file order
    points: np.ndarray | None = None  # float64 [N, 3]
    colors: np.ndarray | None = None  # uint8 [N, 3]
    point_ids: np.ndarray | None = None  # int64 [N]


def colmap_model_kind(directory: Path) -> str | None:
    """"bin" / "txt" when ``directory`` holds a COLMAP model in that form (binary wins
    when both are there, as in COLMAP), else None."""
    d = Path(directory)
    for ext in ("bin", "txt"):
        if (d / f"cameras.{ext}").is_file() and (d / f"images.{ext}").is_file():
            return ext
    return None


def read_colmap_model(directory: str | Path, *, points: bool = True) -> ColmapModel:
    """A COLMAP model from ``directory`` (``cameras``, ``images`` and, with ``points``,
    ``points3D`` as ``.bin`` or ``.txt``). Camera models outside :data:`COLMAP_MODELS`
    are read (so that an error can name them) and left to the caller to refuse."""
    d = Path(directory)
    kind = colmap_model_kind(d)
    if kind is None:
        raise SourceError(f"{d} holds no COLMAP model (cameras.bin + images.bin or cameras.txt + "
                          "images.txt): give the sparse model directory, e.g. sparse/0")
    if kind == "bin":
        cams = read_colmap_cameras_binary(d / "cameras.bin")
        images = read_colmap_images_binary(d / "images.bin")
    else:
        cams = read_colmap_cameras_text(d / "cameras.txt", all_models=True)
        images = read_colmap_images_text(d / "images.txt")
    for im in images:
        if im.camera_id not in cams:
            raise SourceError(f"{im.where}: image {im.name[:60]!r} refers to camera "
                              f"{im.camera_id}, which cameras.{kind} does not list")
    model = ColmapModel(d, kind == "bin", cams, images)
    if points:
        pp = d / f"points3D.{kind}"
        if pp.is_file():
            if kind == "bin":
                model.point_ids, model.points, model.colors = read_colmap_points_binary(pp)
            else:
                model.point_ids, model.points, model.colors = read_colmap_points_text(pp)
    return model


def read_colmap_images_text(path: Path) -> list[ColmapImage]:
    """Registered images of a COLMAP ``images.txt``, in file order."""
    path = Path(path)
    out = []
    expect_points = False
    for lineno, line in _colmap_lines(path):
        if line.lstrip().startswith("#"):
            continue
        if expect_points:  # every image line is followed by its (possibly empty) 2D points
            expect_points = False
            continue
        tok = line.split()
        if not tok:
            continue
        if len(tok) < 10:
            raise SourceError(f"{path}:{lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID "
                              f"NAME', got {line.strip()[:80]!r}")
        vals = _numbers(path, lineno, tok[1:8], "pose value")
        try:
            image_id, cam_id = int(tok[0]), int(tok[8])
        except ValueError:
            raise SourceError(f"{path}:{lineno}: image id {tok[0][:20]!r} and camera id "
                              f"{tok[8][:20]!r} must be integers") from None
        out.append(ColmapImage(image_id, " ".join(tok[9:]), tuple(vals[:4]), tuple(vals[4:7]),
                               cam_id, f"{path}:{lineno}"))
        expect_points = True
    if not out:
        raise SourceError(f"{path} lists no images")
    return out


def read_colmap_points_text(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids int64 [N], xyz float64 [N, 3], rgb uint8 [N, 3])`` of a ``points3D.txt``."""
    ids, xyz, rgb = [], [], []
    for lineno, line in _colmap_lines(Path(path)):
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        if len(tok) < 8:
            raise SourceError(f"{path}:{lineno}: expected 'POINT3D_ID X Y Z R G B ERROR TRACK[]', "
                              f"got {line.strip()[:80]!r}")
        vals = _numbers(Path(path), lineno, tok[1:7], "point value")
        if not all(0 <= c <= 255 and float(c).is_integer() for c in vals[3:6]):
            raise SourceError(f"{path}:{lineno}: colour {tuple(vals[3:6])} is not three "
                              "integers 0..255")
        try:
            ids.append(int(tok[0]))
        except ValueError:
            raise SourceError(f"{path}:{lineno}: point id {tok[0][:20]!r} is not an "
                              "integer") from None
        xyz.append(vals[:3])
        rgb.append(vals[3:6])
    return (np.array(ids, dtype=np.int64), np.array(xyz, dtype=np.float64).reshape(-1, 3),
            np.array(rgb, dtype=np.uint8).reshape(-1, 3))


class _Bin:
    """Little-endian reads from a COLMAP binary file, refusing a short file by name."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.data = self.path.read_bytes()
        except FileNotFoundError:
            raise SourceError(f"COLMAP file {path} does not exist: give the sparse model "
                              "directory holding cameras.bin, images.bin, points3D.bin") from None
        self.pos = 0

    def take(self, fmt: str):
        import struct

        n = struct.calcsize("<" + fmt)
        if self.pos + n > len(self.data):
            raise SourceError(f"{self.path} ends at byte {len(self.data)} inside a record (byte "
                              f"{self.pos}): the file is truncated; re-export the model")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += n
        return out

    def count(self, what: str, record_min: int) -> int:
        (n,) = self.take("Q")
        if n * record_min > len(self.data) - self.pos:
            raise SourceError(f"{self.path} claims {n} {what} but holds {len(self.data)} bytes: "
                              "the file is truncated or not a COLMAP binary model")
        return n

    def name(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise SourceError(f"{self.path}: image name at byte {self.pos} is not terminated: "
                              "the file is truncated")
        raw = self.data[self.pos:end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SourceError(f"{self.path}: image name {raw[:40]!r} is not UTF-8") from None


def read_colmap_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    """``{camera_id: ColmapCamera}`` from a COLMAP ``cameras.bin``."""
    f = _Bin(path)
    cams: dict[int, ColmapCamera] = {}
    for _ in range(f.count("cameras", 24)):
        at = f.pos
        cam_id, model_id, width, height = f.take("iiQQ")
        if model_id not in COLMAP_MODEL_IDS:
            raise SourceError(f"{path}: camera {cam_id} (byte {at}) has model id {model_id}, "
                              "which COLMAP does not define: the file is damaged")
        model, n = COLMAP_MODEL_IDS[model_id]
        cam = ColmapCamera(cam_id, model, width, height, tuple(f.take("d" * n)), f"{path}")
        _check_camera(cam)
        if cam_id in cams:
            raise SourceError(f"{path}: camera id {cam_id} appears twice")
        cams[cam_id] = cam
    if not cams:
        raise SourceError(f"{path} lists no cameras")
    return cams


def read_colmap_images_binary(path: Path) -> list[ColmapImage]:
    """Registered images of a COLMAP ``images.bin``, in file order (2D points skipped)."""
    f = _Bin(path)
    out = []
    for _ in range(f.count("images", 64)):
        image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = f.take("idddddddi")
        name = f.name()
        (npts,) = f.take("Q")
        if npts * 24 > len(f.data) - f.pos:
            raise SourceError(f"{path}: image {name[:60]!r} claims {npts} 2D points past the "
                              "end of the file: the file is truncated")
        f.pos += 24 * npts
        vals = (qw, qx, qy, qz, tx, ty, tz)
        if not all(math.isfinite(v) for v in vals):
            raise SourceError(f"{path}: image {name[:60]!r} has a non-finite pose {vals}")
        out.append(ColmapImage(image_id, name, (qw, qx, qy, qz), (tx, ty, tz), cam_id, str(path)))
    if not out:
        raise SourceError(f"{path} lists no images")
    return out


def read_colmap_points_binary(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids int64 [N], xyz float64 [N, 3], rgb uint8 [N, 3])`` of a ``points3D.bin``."""
    import struct

    f = _Bin(path)
    n = f.count("points", 43)
    ids = np.empty(n, dtype=np.int64)
    xyz = np.empty((n, 3), dtype=np.float64)
    rgb = np.empty((n, 3), dtype=np.uint8)
    head = struct.Struct("<QdddBBBdQ")
    data, pos = f.data, f.pos
    for i in range(n):
        if pos + head.size > len(data):
            raise SourceError(f"{path} ends inside point {i} of {n}: the file is truncated")
        pid, x, y, z, r, g, b, _err, track = head.unpack_from(data, pos)
        pos += head.size + 8 * track
        ids[i] = pid
        xyz[i] = (x, y, z)
        rgb[i] = (r, g, b)
    if pos > len(data):
        raise SourceError(f"{path}: the last point's track runs past the end of the file: "
                          "the file is truncated")
    if not np.all(np.isfinite(xyz)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(xyz), axis=1))[0])
        raise SourceError(f"{path}: point {int(ids[bad])} has a non-finite position: drop it")
    return ids, xyz, rgb


def write_colmap_model(directory: str | Path, cameras: Cameras, *, binary: bool = False,
                       points: np.ndarray | None = None, colors: np.ndarray | None = None,
                       model: str = "PINHOLE", distortion=(0.0, 0.0, 0.0, 0.0)) -> None:
    """Write ``cameras`` (one camera per view, ``model`` = PINHOLE or, with
    ``distortion`` = (k1, k2, p1, p2), OPENCV / RADIAL / SIMPLE_RADIAL) and the coloured
    ``points`` as a COLMAP model in text or binary form (tracks left empty)."""
    import struct

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(cameras)):
        k = cameras.Ks[i].astype(np.float64)
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
        k1, k2, p1, p2 = (float(x) for x in distortion)
        params = {"PINHOLE": (fx, fy, cx, cy), "SIMPLE_PINHOLE": (fx, cx, cy),
                  "SIMPLE_RADIAL": (fx, cx, cy, k1), "RADIAL": (fx, cx, cy, k1, k2),
                  "OPENCV": (fx, fy, cx, cy, k1, k2, p1, p2)}[model]
        q = rot_to_quat(cameras.viewmats[i, :3, :3].astype(np.float64))
        t = cameras.viewmats[i, :3, 3].astype(np.float64)
        rows.append((i + 1, params, q, t, cameras.names[i]))
    pts = np.zeros((0, 3)) if points is None else np.asarray(points, dtype=np.float64)
    cols = (np.full((len(pts), 3), 128, np.uint8) if colors is None
            else np.asarray(colors, dtype=np.uint8))
    model_id = {name: mid for mid, (name, _) in COLMAP_MODEL_IDS.items()}[model]
    if binary:
        with open(d / "cameras.bin", "wb") as f:
            f.write(struct.pack("<Q", len(rows)))
            for cid, params, _, _, _ in rows:
                f.write(struct.pack("<iiQQ", cid, model_id, cameras.width, cameras.height))
                f.write(struct.pack("<" + "d" * len(params), *params))
        with open(d / "images.bin", "wb") as f:
            f.write(struct.pack("<Q", len(rows)))
            for cid, _, q, t, name in rows:
                f.write(struct.pack("<idddddddi", cid, *q, *t, cid))
                f.write(name.encode() + b"\0")
                f.write(struct.pack("<Q", 0))
        with open(d / "points3D.bin", "wb") as f:
            f.write(struct.pack("<Q", len(pts)))
            for j in range(len(pts)):
                f.write(struct.pack("<QdddBBBdQ", j + 1, *pts[j], *(int(c) for c in cols[j]),
                                    0.5, 0))
        return
    cam_lines = ["# Camera list: CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    img_lines = ["# Image list: IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME, then "
                 "POINTS2D"]
    for cid, params, q, t, name in rows:
        cam_lines.append(f"{cid} {model} {cameras.width} {cameras.height} "
                         + " ".join(repr(float(x)) for x in params))
        img_lines.append(f"{cid} " + " ".join(repr(float(x)) for x in (*q, *t)) + f" {cid} {name}")
        img_lines.append("")
    pt_lines = ["# 3D point list: POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]"]
    for j in range(len(pts)):
        x, y, z = (repr(float(v)) for v in pts[j])
        r, g, b = (int(c) for c in cols[j])
        pt_lines.append(f"{j + 1} {x} {y} {z} {r} {g} {b} 0.5")
    (d / "cameras.txt").write_text("\n".join(cam_lines) + "\n")
    (d / "images.txt").write_text("\n".join(img_lines) + "\n")
    (d / "points3D.txt").write_text("\n".join(pt_lines) + "\n")


def rot_to_quat(r: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a rotation matrix, w >= 0."""
    m = r
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    return q if q[0] >= 0 else -q


# -- generated cameras ------------------------------------------------------------------

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
