"""COLMAP sparse models, text and binary: cameras (every model, with distortion),
registered images (poses) and coloured 3D points, as the photo ingest reads them.

The binary layout (little-endian, as COLMAP's ``model.cc`` writes it):

- ``cameras.bin``: uint64 count, then per camera int32 id, int32 model id, uint64 width,
  uint64 height, float64 params[n(model)];
- ``images.bin``: uint64 count, then per image int32 id, float64 qvec[4] (w x y z),
  float64 tvec[3], int32 camera id, the name NUL-terminated, uint64 point count, and
  that many (float64 x, float64 y, int64 point3D id);
- ``points3D.bin``: uint64 count, then per point uint64 id, float64 xyz[3], uint8 rgb[3],
  float64 error, uint64 track length, and that many (int32 image id, int32 point2D idx).

Every count is checked against the bytes left before anything is allocated, and a file
that ends inside a record is refused by name. The readers are tested against pycolmap
on the same files (``tests/gs/test_colmap_pycolmap.py``). Camera models outside
:data:`COLMAP_MODELS` are read (so that errors can name them) and
refused by the ingest. :func:`write_colmap_model` writes both forms (tests, tools).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SourceError

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


def _quat_to_rot(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


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
    for lineno, tok in _colmap_rows(path, 4, "CAMERA_ID MODEL WIDTH HEIGHT PARAMS..."):
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
        _add_camera(cams, ColmapCamera(cam_id, model, width, height, tuple(params),
                                       f"{path}:{lineno}"))
    return _some_cameras(cams, path)


def _colmap_rows(path: Path, fields: int, layout: str):
    """``(line number, tokens)`` of each record line of a one-line-per-record COLMAP text
    file (blank and ``#`` lines skipped); a line of fewer than ``fields`` tokens is
    refused, showing the record ``layout``."""
    for lineno, line in _colmap_lines(path):
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        if len(tok) < fields:
            raise SourceError(f"{path}:{lineno}: expected '{layout}', "
                              f"got {line.strip()[:80]!r}")
        yield lineno, tok


def _add_camera(cams: dict, cam: ColmapCamera) -> None:
    """Check ``cam`` and add it to ``cams`` (its id must be new)."""
    _check_camera(cam)
    if cam.id in cams:
        raise SourceError(f"{cam.where}: camera id {cam.id} appears twice")
    cams[cam.id] = cam


def _some_cameras(cams: dict, path: Path) -> dict:
    """``cams``, refused when ``path`` listed none."""
    if not cams:
        raise SourceError(f"{path} lists no cameras")
    return cams


def unsupported_model(where: str, cam_id, model: str) -> str:
    return (f"{where}: camera {cam_id}: COLMAP camera model {model!r} is not supported: use one of {', '.join(COLMAP_MODELS)} (the distorted ones are undistorted "
            "at ingest), or undistort the images first with `colmap image_undistorter`")


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
    for lineno, tok in _colmap_rows(Path(path), 8, "POINT3D_ID X Y Z R G B ERROR TRACK[]"):
        vals = _numbers(Path(path), lineno, tok[1:7], "point value")
        if not all(0 <= c <= 255 and float(c).is_integer() for c in vals[3:6]):
            raise SourceError(f"{path}:{lineno}: colour {tuple(vals[3:6])} is not three "
                              "integers 0..255")
        try:
            ids.append(int(tok[0]))
            if not 0 <= ids[-1] < 1 << 63:
                raise ValueError
        except ValueError:
            raise SourceError(f"{path}:{lineno}: point id {tok[0][:20]!r} is not an "
                              "integer") from None
        xyz.append(vals[:3])
        rgb.append(vals[3:6])
    return _check_points(path, np.array(ids, dtype=np.int64),
                         np.array(xyz, dtype=np.float64).reshape(-1, 3),
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
        _add_camera(cams, ColmapCamera(cam_id, model, width, height, tuple(f.take("d" * n)),
                                       f"{path}"))
    return _some_cameras(cams, path)


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
    return _check_points(path, ids, xyz, rgb)


def _check_points(path, ids, xyz, rgb):
    """Points whose position is not a finite float32 value are refused by id."""
    ok = np.all(np.isfinite(xyz) & (np.abs(xyz) < 1e30), axis=1)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise SourceError(f"{path}: point {int(ids[bad])} has the position {xyz[bad].tolist()}, "
                          "not a finite coordinate: drop it from the model")
    return ids, xyz, rgb


def write_colmap_model(directory: str | Path, cameras, *, binary: bool = False,
                       points: np.ndarray | None = None, colors: np.ndarray | None = None,
                       model: str = "PINHOLE", distortion=(0.0, 0.0, 0.0, 0.0)) -> None:
    """Write ``cameras`` (:class:`~oocstore.gs.cameras.Cameras`: one camera per view, ``model`` = PINHOLE or, with
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
        q = q / np.linalg.norm(q)  # float32 rotations give quaternions unit to 1e-8 only
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
