"""Photographs of a scene: checked, decoded, composited, downscaled and undistorted.

A photo dataset (a COLMAP model or a ``transforms.json``, read by
:mod:`oocstore.gs.photo_sources`) becomes a list of :class:`PhotoView`: one image file,
its world-to-camera pose (OpenCV axes), its pinhole intrinsics at the file's resolution
and its lens distortion. :func:`check_views` opens every file's *header* only (size and
pixel mode), so a missing file, a size that disagrees with the camera or an unusable
pixel format is refused before anything is written; :func:`load_photo` then decodes one
image per call, and the ingest keeps only a few decoded photographs alive at once.

The pixel pipeline of one view (:func:`load_photo`):

1. decode with Pillow and bring the pixels to 8-bit RGB(A): grayscale (``L``, ``1``,
   ``LA``), palette (``P``, ``PA``), CMYK / YCbCr / LAB / HSV are converted; 16-bit
   grayscale (``I;16*``, or ``I`` within 0..65535) is reduced to 8 bits (``v / 257``,
   rounded); 32-bit float (``F``) and 32-bit integer images beyond 16 bits are refused;
2. an alpha channel is composited on the background: ``rgb * a + bg * (1 - a)`` (the
   NeRF-synthetic convention; white by default for ``transforms.json`` sources);
3. downscale by ``K`` with an area (box) filter to ``round(W / K) x round(H / K)``, the
   size 3DGS uses; the intrinsics scale by the exact size ratio per axis;
4. lens distortion (COLMAP's SIMPLE_RADIAL, RADIAL, OPENCV models, or the ``k1 k2 p1
   p2`` of an instant-ngp ``transforms.json``) is removed by resampling to the pinhole
   camera with the same (scaled) ``fx fy cx cy``: every output pixel centre is pushed
   through the distortion model to the point of the distorted image it shows, which is
   sampled bilinearly (``scipy.ndimage.map_coordinates``). Output pixels whose source
   lies outside the photograph repeat its nearest edge pixel (their share is logged).
   Undistorting after the downscale costs ``K^2`` less than before it and gives the same
   image up to the bilinear sampling's blur.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SourceError, UsageError

log = logging.getLogger(__name__)

#: Distortion models removed at ingest, with their parameter names (normalised image
#: coordinates, OpenCV's formula; the missing terms are zero).
DISTORTION_MODELS = {"SIMPLE_RADIAL": ("k1",), "RADIAL": ("k1", "k2"),
                     "OPENCV": ("k1", "k2", "p1", "p2")}

#: Focal lengths (pixels) outside MIN_FOCAL .. MAX_FOCAL_RATIO x the image size are refused.
MIN_FOCAL = 0.5
MAX_FOCAL_RATIO = 1000.0

#: Pillow modes converted to RGB / RGBA as they are.
_TO_RGB = {"RGB": "RGB", "1": "RGB", "L": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB",
           "HSV": "RGB", "RGBX": "RGB", "RGBA": "RGBA", "LA": "RGBA", "PA": "RGBA",
           "RGBa": "RGBA", "La": "RGBA"}
_SIXTEEN = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class PhotoView:
    """One photograph and its camera, at the file's own resolution."""

    path: Path
    name: str  # as the dataset names it (COLMAP image name / transforms file_path)
    viewmat: np.ndarray  # float64 [4, 4] world-to-camera, OpenCV axes
    K: np.ndarray  # float64 [3, 3] pinhole intrinsics, pixels of the file
    width: int
    height: int
    distortion: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # k1 k2 p1 p2
    where: str = ""  # what to name in errors about this view's camera (file:line)

    def __post_init__(self) -> None:
        k = np.asarray(self.K, dtype=np.float64)
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
        w, h = self.width, self.height
        where = self.where or str(self.path)
        if not (MIN_FOCAL <= fx <= MAX_FOCAL_RATIO * w and MIN_FOCAL <= fy <= MAX_FOCAL_RATIO * h):
            raise SourceError(f"{where}: focal length fx={fx:g}, fy={fy:g} px is not plausible "
                              f"for a {w}x{h} photo (give {MIN_FOCAL:g}..{MAX_FOCAL_RATIO:g} x "
                              "the image size, in pixels)")
        if not (abs(cx) <= 10 * w and abs(cy) <= 10 * h):
            raise SourceError(f"{where}: principal point ({cx:g}, {cy:g}) lies far outside the "
                              f"{w}x{h} photo: give cx, cy in pixels")
        if not all(math.isfinite(d) and abs(d) <= 10 for d in self.distortion):
            raise SourceError(f"{where}: distortion {self.distortion} is not a plausible lens "
                              "(|k1|, |k2|, |p1|, |p2| <= 10)")

    @property
    def distorted(self) -> bool:
        return any(d != 0.0 for d in self.distortion)


@dataclass(frozen=True)
class ImageProbe:
    """What an image file's header says: size and how its pixels will be converted."""

    width: int
    height: int
    mode: str  # Pillow's mode
    alpha: bool  # has an alpha channel (to be composited)
    note: str = ""  # the conversion applied, for the log ("" for plain RGB)


def check_downscale(value) -> int:
    """``images_downscale`` as a positive integer, or a :class:`UsageError`."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise UsageError(f"images_downscale {value!r} is not a positive integer: give "
                             "1 (full size), 2, 4 or 8") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"images_downscale {value!r} is not a positive integer: give "
                         "1 (full size), 2, 4 or 8")
    return int(value)


def scaled_size(width: int, height: int, downscale: int) -> tuple[int, int]:
    """The stored size of a ``width`` x ``height`` photo downscaled by ``downscale``."""
    return max(1, round(width / downscale)), max(1, round(height / downscale))


def probe_image(path: Path) -> ImageProbe:
    """Size and pixel mode of ``path`` from its header (no decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            transparent = "transparency" in im.info
    except FileNotFoundError:
        raise SourceError(f"image {path} does not exist: restore it, or drop its view from "
                          "the model (or pass skip_missing_images=True)") from None
    except Exception as err:  # noqa: BLE001 - any failure of the decoder on a hostile file
        raise SourceError(f"image {path} cannot be read ({type(err).__name__}: "
                          f"{str(err)[:120]}): replace it with a PNG or JPEG, or drop its view "
                          "from the model") from None
    if mode == "P":
        return ImageProbe(w, h, mode, transparent, "palette converted to RGB")
    if mode in _TO_RGB:
        alpha = _TO_RGB[mode] == "RGBA"
        note = "" if mode in ("RGB", "RGBA") else f"{mode} converted to {_TO_RGB[mode]}"
        return ImageProbe(w, h, mode, alpha, note)
    if mode in _SIXTEEN:
        return ImageProbe(w, h, mode, False, "16-bit grayscale reduced to 8-bit RGB")
    raise SourceError(f"image {path} has pixel mode {mode!r} ({_mode_words(mode)}), which "
                      "cannot be stored as 8-bit colour: convert it to an 8- or 16-bit PNG "
                      "or a JPEG")


def _mode_words(mode: str) -> str:
    return {"F": "32-bit float", "I;32": "32-bit integer"}.get(mode, "an unusual format")


def decode_rgba(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rgb uint8 [H, W, 3], alpha float32 [H, W] in 0..1 or None)`` of one file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode in _SIXTEEN:
                a = np.asarray(im)
                if a.size and (a.min() < 0 or a.max() > 65535):
                    raise SourceError(f"image {path} is a 32-bit integer image (values "
                                      f"{a.min()}..{a.max()}): convert it to 8- or 16-bit")
                g = np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)
                return np.repeat(g[..., None], 3, axis=2), None
            elif mode in _TO_RGB and mode != _TO_RGB[mode]:
                im = im.convert(_TO_RGB[mode])
            elif mode not in ("RGB", "RGBA"):
                raise SourceError(f"image {path} has pixel mode {mode!r}, which cannot be "
                                  "stored as 8-bit colour: convert it to PNG or JPEG")
            a = np.asarray(im)
    except SourceError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the decoder on a hostile file
        raise SourceError(f"image {path} cannot be decoded ({type(err).__name__}: "
                          f"{str(err)[:120]}): the file is damaged; replace it or drop its view "
                          "from the model") from None
    if a.ndim == 3 and a.shape[2] == 4:
        return np.ascontiguousarray(a[..., :3]), a[..., 3].astype(np.float32) / 255.0
    return np.ascontiguousarray(a[..., :3]), None


def composite(rgb: np.ndarray, alpha: np.ndarray | None, background) -> np.ndarray:
    """``rgb * a + bg * (1 - a)`` rounded to uint8 (``rgb`` itself without alpha)."""
    if alpha is None:
        return rgb
    bg = np.asarray(background if background is not None else (1.0, 1.0, 1.0),
                    dtype=np.float32) * 255.0
    a = alpha[..., None]
    out = rgb.astype(np.float32) * a + bg * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def downscale_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` uint8 [H, W, 3] resized to ``size`` = (w, h) with an area (box) filter."""
    h, w = rgb.shape[:2]
    if (w, h) == tuple(size):
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb, "RGB").resize(tuple(size), Image.BOX))


def distort_points(u: np.ndarray, v: np.ndarray, dist) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's radial-tangential model on normalised coordinates (k1 k2 p1 p2)."""
    k1, k2, p1, p2 = dist
    r2 = u * u + v * v
    radial = 1.0 + r2 * (k1 + k2 * r2)
    uv = u * v
    return (u * radial + 2.0 * p1 * uv + p2 * (r2 + 2.0 * u * u),
            v * radial + p1 * (r2 + 2.0 * v * v) + 2.0 * p2 * uv)


def undistort_image(rgb: np.ndarray, K: np.ndarray, dist) -> tuple[np.ndarray, float]:
    """The pinhole image (same ``K`` and size) of a distorted photo; returns it and the
    share of output pixels whose source fell outside the photo (edge-extended)."""
    from scipy.ndimage import map_coordinates

    h, w = rgb.shape[:2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5  # pixel centres
    ud, vd = distort_points((xs - cx) / fx, (ys - cy) / fy, dist)
    sx = fx * ud + cx - 0.5  # back to array indices (centre of pixel i is i + 0.5)
    sy = fy * vd + cy - 0.5
    outside = float(np.mean((sx < -0.5) | (sx > w - 0.5) | (sy < -0.5) | (sy > h - 0.5)))
    coords = np.stack([sy, sx])
    out = np.empty_like(rgb)
    for c in range(rgb.shape[2]):
        ch = map_coordinates(rgb[..., c].astype(np.float32), coords, order=1, mode="nearest")
        out[..., c] = np.clip(np.rint(ch), 0, 255).astype(np.uint8)
    return out, outside


def scaled_K(K: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Intrinsics of a ``src`` = (w, h) image resized to ``dst``: x and y rows scale by the
    size ratios (pixel centres at +0.5 keep their place in the continuous frame)."""
    k = np.array(K, dtype=np.float64)
    k[0] *= dst[0] / src[0]
    k[1] *= dst[1] / src[1]
    return k


def load_photo(view: PhotoView, size: tuple[int, int], background) -> np.ndarray:
    """The stored form of ``view``'s photo: uint8 [h, w, 3] at ``size`` = (w, h),
    composited on ``background`` and undistorted (see the module docstring)."""
    rgb, alpha = decode_rgba(view.path)
    if rgb.shape[:2] != (view.height, view.width):
        raise SourceError(f"image {view.path} is {rgb.shape[1]}x{rgb.shape[0]} but its camera "
                          f"says {view.width}x{view.height}: the file changed since it was "
                          "checked; re-run the ingest")
    small = downscale_image(composite(rgb, alpha, background), size)
    if view.distorted:
        k = scaled_K(view.K, (view.width, view.height), size)
        small, _ = undistort_image(small, k, view.distortion)
    return np.ascontiguousarray(small)


def outside_share(K: np.ndarray, dist, size: tuple[int, int]) -> float:
    """Share of a ``size`` = (w, h) pinhole image (intrinsics ``K``) whose pixels come
    from outside the distorted photo (the undistorted image repeats its edge there)."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    ud, vd = distort_points((xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], dist)
    sx, sy = K[0, 0] * ud + K[0, 2], K[1, 1] * vd + K[1, 2]
    return float(np.mean((sx < 0) | (sx > w) | (sy < 0) | (sy > h)))


@dataclass
class CheckedViews:
    """The result of :func:`check_views`: the views to ingest and what was learnt."""

    views: list[PhotoView]
    alpha: bool  # some image has an alpha channel
    notes: dict[str, int] = field(default_factory=dict)  # conversion -> image count
    skipped_missing: list[str] = field(default_factory=list)


def check_views(views: list[PhotoView], *, skip_missing: bool = False,
                source: str = "") -> CheckedViews:
    """Open every view's image header: refuse missing files (or drop them with
    ``skip_missing``), sizes that disagree with the camera, and unusable pixel modes,
    all before anything is written."""
    kept, missing, notes, alpha = [], [], {}, False
    for view in views:
        if not view.path.is_file():
            missing.append(view)
            continue
        probe = probe_image(view.path)
        if (probe.width, probe.height) != (view.width, view.height):
            raise SourceError(
                f"image {view.path} is {probe.width}x{probe.height} but its camera "
                f"{view.where or source} says {view.width}x{view.height}: give the images the "
                "model was made from (downscaled copies go with images_downscale instead)")
        alpha |= probe.alpha
        if probe.note:
            notes[probe.note] = notes.get(probe.note, 0) + 1
        kept.append(view)
    if missing and not skip_missing:
        first = missing[0]
        raise SourceError(f"image {first.path} does not exist ({len(missing)} of the "
                          f"{len(views)} images {source} names are missing): restore them, or "
                          "pass skip_missing_images=True to ingest the others")
    if missing:
        log.warning("%d of the %d images %s names are missing; ingesting the other %d",
                    len(missing), len(views), source, len(kept))
    if not kept:
        raise SourceError(f"none of the {len(views)} images {source} names exists: give the "
                          "images folder (images=DIR)")
    for note, n in notes.items():
        log.info("%d image(s): %s", n, note)
    return CheckedViews(kept, alpha, notes, [v.name for v in missing])


def parse_background(value) -> tuple[float, float, float]:
    """``white`` / ``black`` / ``R,G,B`` (0..1 or 0..255) -> RGB in 0..1."""
    if value is None:
        return (1.0, 1.0, 1.0)
    if isinstance(value, (tuple, list)):
        parts = [float(x) for x in value]
    else:
        s = str(value).strip().lower()
        if s == "white":
            return (1.0, 1.0, 1.0)
        if s == "black":
            return (0.0, 0.0, 0.0)
        try:
            parts = [float(x) for x in s.split(",")]
        except ValueError:
            parts = []
    if len(parts) != 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        raise UsageError(f"background={value!r} must be white, black or R,G,B (three numbers "
                         "in 0..1, or 0..255)")
    if max(parts) > 1.0:
        if max(parts) > 255:
            raise UsageError(f"background={value!r}: colour values must be 0..1 or 0..255")
        parts = [p / 255.0 for p in parts]
    return (parts[0], parts[1], parts[2])


def image_files(directory: Path) -> list[str]:
    """Names (relative to ``directory``, with '/') of the image files below it."""
    exts = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
    out = []
    for root, _, files in os.walk(directory):
        for f in files:
            if os.path.splitext(f)[1].lower() in exts:
                out.append(Path(root, f).relative_to(directory).as_posix())
    return sorted(out)
