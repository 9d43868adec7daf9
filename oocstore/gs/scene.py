"""The scene store: Gaussian records in spatially coherent blocks, written log-structured.

A scene is an ordinary store (``oocstore inspect`` / ``verify`` work on it) whose
catalog holds, besides the usual ``meta`` / ``array/*`` / ``sums/*`` entries:

    ``scene``                   SceneMeta (format version, SH degree, block capacity,
                                moment precision, block count, next Gaussian id, the
                                file sequence counter, image size)
    ``scene/block/<b:08d>``     {"count": n, "lo": [x,y,z] | null, "hi": [x,y,z] | null}
    ``array/scene/block/<b:08d>`` the block's data file (uint8 [n, row_bytes]) and
    ``sums/scene/block/<b:08d>``  its CRC-32 per 4 MiB chunk
    ``array/scene/viewmats``    float32 [V, 4, 4] world-to-camera training cameras
    ``array/scene/Ks``          float32 [V, 3, 3] their intrinsics

and, for a scene ingested from photographs (:mod:`oocstore.gs.ingest`):

    ``scene/images``            ImagesMeta (source kind, downscale, test split, image
                                size, background, slot bytes, source file names)
    ``array/scene/images``      uint8 [V, slot] one photo per row, in camera order, each
                                row ``H*W*3`` RGB bytes zero-padded to 4 KiB, and
    ``sums/scene/images``       one CRC-32 per row (the array's chunk is one row)

A block file ``scenes/b<b:08d>.<seq>.bin`` holds the block's live rows one after the
other, each ``id int64 | params float32[P] | exp_avg [P] | exp_avg_sq [P]`` (moments in
float32, or float16 with ``moments="float16"``, where the second moment is stored as
its square root so that the tiny values Adam accumulates stay representable), padded
to 4 KiB. A block is read with one aligned read of ``n * row_bytes``.

**Checksums on read.** With ``verify_reads`` (the default) :meth:`Scene.read_block`
recomputes the CRC-32 of every 4 MiB chunk of the rows it read (the bytes are in memory
already: no extra I/O) and compares it with ``sums/scene/block/<b>`` (for a block this
process wrote but has not committed, with the sums its writer computed). A mismatch, a
short file or a checksum list that does not fit the block raises
:class:`~oocstore.errors.ChecksumError` naming the scene, the block, its file and the
chunk: corrupt records never reach training. The camera arrays are checked the same way
when the scene is opened or a writer starts. ``verify_reads=False`` skips the CRC (its cost:
``bench/gs_verify_cost.py``); a short file is refused either way.

**Blocks** are consecutive runs of the Gaussians in Morton order of their means (so a
block is a compact piece of space), ``block_size`` Gaussians each at ingest, and may
grow to ``block_capacity = ceil(block_size * (1 + spare))``: the spare capacity lives
in the fixed-size slots a streamer keeps per block, not on disk, since a block is
always rewritten whole. ``block_bounds`` are the union of each Gaussian's mean +- 3x its
largest scale (so a frustum test against them is conservative); empty or freed
blocks have bounds ``+inf`` / ``-inf`` and are never visible.

**Writes are log-structured.** ``w = scene.writer()`` takes the store's writer lock;
``w.write_block(b, ids, records)`` writes a *new* file for block ``b`` (a fresh
``seq``; the committed file is never touched), fsyncs it, and makes it visible to this
process's later reads only. ``w.commit()`` fsyncs the directory and commits one LMDB
transaction naming the new files: that is the commit point. A crash before it leaves
the previous committed scene intact; the new files are orphans, removed at the next
open or writer. After it, files only the old version named are deleted.

Writer states: OPEN --write_block/new_block/free_block--> DIRTY --commit--> OPEN;
DIRTY --close (no commit)--> CLOSED (the uncommitted files are removed and the scene
object returns to the committed state); OPEN --close--> CLOSED.

Gaussian ids are int64 and stable; ingest numbers them by input row, and new ones come
from :meth:`SceneWriter.allocate_ids` (``scene.next_id`` is the next free one).

**Images** (scenes from photographs) are stored once, at ingest, as uint8 RGB at the
training resolution, image ``v`` for camera ``v``. :meth:`Scene.read_image` reads one
image with one aligned read of its 4 KiB-aligned row and (with ``verify_reads``)
checks that row's CRC-32: a photo set never has to fit in memory.

The row format and block geometry live in :mod:`oocstore.gs.blocks`, the writer in
:mod:`oocstore.gs.writer`; this module re-exports what callers need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

import numpy as np

from ..errors import ChecksumError, FormatError, StoreNotFoundError, UsageError
from ..store import ALIGN, Store
from ..store.files import DirectReader, byte_view, checksum
from ..store.format import versioned_from_dict
from . import layout
from .blocks import (MOMENT_DTYPES, block_bounds_of, check_finite, decode_rows, encode_rows,
                     morton_order, row_dtype)
from .cameras import Cameras
from .writer import BLOCK_PREFIX, SceneWriter

log = logging.getLogger(__name__)

__all__ = ["IMAGES_KEY", "ImagesMeta", "MOMENT_DTYPES", "PhotoSource", "Scene", "SceneMeta", "SceneWriter", "block_bounds_of",
           "decode_rows", "encode_rows", "format_scene_info", "morton_order", "open_scene",
           "row_dtype", "scene_info"]

SCENE_FORMAT_VERSION = 1
LOD_FORMAT_VERSION = 2  # a scene with a level-of-detail hierarchy (oocstore.gs.lod)
READ_FORMAT_VERSIONS = (SCENE_FORMAT_VERSION, LOD_FORMAT_VERSION)
_FIX = "re-create the scene with `oocstore ingest scene`"
IMAGES_KEY = "scene/images"  # catalog entry (ImagesMeta) and array name of the photos
IMAGE_SOURCE_KINDS = ("colmap", "transforms")
MAX_IMAGE_BYTES = 3 << 32  # 65536 x 65536 RGB, the largest camera size


@dataclass(frozen=True)
class SceneMeta:
    """Scene-wide facts, stored under the catalog key ``scene``."""

    sh_degree: int
    block_capacity: int
    block_size: int
    moments: str  # "float32" or "float16"
    num_blocks: int
    next_id: int
    file_seq: int  # data files are named with a counter that only grows
    width: int
    height: int
    format_version: int = SCENE_FORMAT_VERSION
    name: str = "scene"

    def __post_init__(self) -> None:
        layout.check_sh_degree(self.sh_degree)
        if self.moments not in MOMENT_DTYPES:
            raise FormatError(f"scene moments {self.moments!r} unknown: {_FIX}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SceneMeta":
        # version 2 is a scene with a level-of-detail hierarchy (oocstore.gs.lod); a reader
        # of version 1 refuses it, since it would render interior nodes as Gaussians
        fv = data.get("format_version") if isinstance(data, dict) else None
        version = fv if fv in READ_FORMAT_VERSIONS else SCENE_FORMAT_VERSION
        return versioned_from_dict(cls, data, kind="scene", version=version,
                                   fix="install the oocstore release that wrote it, or " + _FIX)


@dataclass(frozen=True)
class ImagesMeta:
    """The photographs of a scene, stored under the catalog key ``scene/images``.

    ``slot_bytes`` is one image's row in ``array/scene/images``: ``width * height * 3``
    rounded up to 4 KiB, so every image starts on an aligned offset. ``test_views``
    are held-out camera indices; ``names`` the source file name of each image.
    ``background`` is the RGB (0..1) alpha channels were composited on, None when no
    image had one."""

    kind: str  # "colmap" or "transforms"
    width: int
    height: int
    count: int
    slot_bytes: int
    downscale: int
    test_every: int  # 0: the dataset's own test split (or none)
    test_views: list
    names: list
    background: list | None = None
    source: str = ""
    format_version: int = SCENE_FORMAT_VERSION
    name: str = "images"

    def __post_init__(self) -> None:
        where = f"scene images ({self.source or 'catalog'})"
        if self.kind not in IMAGE_SOURCE_KINDS:
            raise FormatError(f"{where}: source kind {self.kind!r} unknown: {_FIX}")
        if not (self.width > 0 and self.height > 0 and self.count >= 0
                and self.slot_bytes >= self.width * self.height * 3 and self.downscale >= 1):
            raise FormatError(f"{where}: sizes {self.width}x{self.height}, {self.count} "
                              f"images of {self.slot_bytes} B are inconsistent: {_FIX}")
        if self.width * self.height * 3 > MAX_IMAGE_BYTES or self.slot_bytes % ALIGN \
                or self.slot_bytes > self.width * self.height * 3 + ALIGN:
            raise FormatError(f"{where}: image slots of {self.slot_bytes} B for "
                              f"{self.width}x{self.height} images are inconsistent: {_FIX}")
        if len(self.names) != self.count or not all(isinstance(n, str) for n in self.names) \
                or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.count
                       for v in self.test_views) or len(set(self.test_views)) != len(self.test_views):
            raise FormatError(f"{where}: names or test views do not fit {self.count} images: "
                              f"{_FIX}")
        bg = self.background
        if bg is not None and not (isinstance(bg, list) and len(bg) == 3 and all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 1
                for c in bg)):
            raise FormatError(f"{where}: background {bg!r:.60} is not an RGB triple in 0..1: "
                              f"{_FIX}")

    @property
    def image_bytes(self) -> int:
        return self.width * self.height * 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImagesMeta":
        return versioned_from_dict(cls, data, kind="scene images", version=SCENE_FORMAT_VERSION,
                                   fix="install the oocstore release that wrote it, or " + _FIX)


class PhotoSource:
    """What :meth:`Scene.create` needs to store a scene's photographs: their
    :class:`ImagesMeta` and an iterator of uint8 [H, W, 3] images in camera order
    (decoded one at a time by the caller: only one is in memory at once)."""

    def __init__(self, meta: ImagesMeta, images):
        self.meta = meta
        self.images = images


class Scene:
    """A scene store opened for reading and (through :meth:`writer`) writing.

    Properties reflect this process's view: committed state plus what an open writer
    has written since. ``verify_reads`` (default on) checks every block read against its
    chunk checksums (see the module docstring); ``direct`` reads with O_DIRECT where the
    filesystem allows it.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, direct: bool = True,
                 verify_reads: bool = True):
        self.path = Path(path)
        self.store = Store(self.path, readonly=readonly)
        self.direct = direct
        self.verify_reads = bool(verify_reads)
        self._lock = threading.RLock()
        self._writer: SceneWriter | None = None
        try:
            raw = self.store.get("scene")
            if raw is None:
                raise StoreNotFoundError(f"store {self.path} holds no scene: create one with "
                                         "`oocstore ingest scene SRC OUT`")
            if not readonly:
                self._remove_uncommitted()
            self._load()
        except BaseException:
            self.store.close()
            raise

    # -- construction ----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, readonly: bool = False,
             verify_reads: bool = True) -> "Scene":
        return cls(path, readonly=readonly, verify_reads=verify_reads)

    @classmethod
    def create(cls, path: str | os.PathLike, means: np.ndarray | None, params: np.ndarray,
               sh_degree: int, cameras: Cameras, block_size: int = 4096, spare: float = 0.25,
               *, moments: str = "float32", ids: np.ndarray | None = None,
               overwrite: bool = False, source: dict | None = None,
               progress: Callable[[int], None] | None = None,
               photos: PhotoSource | None = None, order: np.ndarray | None = None,
               lod: tuple | None = None) -> "Scene":
        """Build a scene at ``path`` from ``params`` [N, P] (moments zeroed) and open it.

        ``means`` [N, 3] (default: the params' means) set the Morton order that groups
        Gaussians into blocks of ``block_size``; ``ids`` default to the row numbers.
        ``progress(n)`` is called with the Gaussians written so far in each block.
        ``photos`` (optional) are the training photographs, one per camera, streamed
        into ``array/scene/images`` (see :class:`PhotoSource`).
        ``order`` (a permutation of the rows) replaces the Morton order; ``lod``
        ``(LodMeta, nodes, spheres)`` is a level-of-detail hierarchy
        (:mod:`oocstore.gs.lod`), stored in the same commit: the scene is then format
        version 2. The scene appears at ``path`` only once complete.
        """
        sh_degree = layout.check_sh_degree(sh_degree)
        params = _checked_params(params, sh_degree)
        _check_create_options(block_size, spare, moments, cameras, photos)
        means, ids = _checked_means_and_ids(params, means, ids)
        n = params.shape[0]
        capacity = int(math.ceil(block_size * (1 + spare)))
        order = morton_order(means) if order is None else np.asarray(order, dtype=np.int64)
        if order.shape != (n,):
            raise UsageError(f"order has shape {order.shape}, expected ({n},)")
        meta = SceneMeta(sh_degree=sh_degree, block_capacity=capacity, block_size=int(block_size),
                         moments=moments, num_blocks=0, next_id=int(ids.max()) + 1 if n else 0,
                         file_seq=0, width=cameras.width, height=cameras.height,
                         format_version=SCENE_FORMAT_VERSION if lod is None else LOD_FORMAT_VERSION)
        with Store.create(path, overwrite=overwrite) as store:
            with store.transaction() as txn:
                txn.put("scene", meta.to_dict())
                txn.write_array("scene/viewmats", cameras.viewmats)
                txn.write_array("scene/Ks", cameras.Ks)
                txn.put("scene/view_names", list(cameras.names))
                txn.set_source(dict(source or {}, kind="scene"))
                if photos is not None:
                    _write_photos(txn, photos)
                if lod is not None:
                    _write_lod(txn, lod)
            scene = cls(store.path)
            try:
                with scene.writer() as w:
                    _write_first_blocks(w, order, ids, params, block_size, progress)
                    w.commit()
            finally:
                scene.close()
        return cls(path)

    # -- state ---------------------------------------------------------------------
    def _load_images(self) -> None:
        raw = self.store.get(IMAGES_KEY)
        self._images: ImagesMeta | None = None
        self._image_sums: list = []
        self._image_file: str | None = None
        if raw is None:
            return
        im = ImagesMeta.from_dict(raw)
        if (im.width, im.height, im.count) != (self.meta.width, self.meta.height,
                                               len(self._cameras)):
            raise FormatError(f"scene {self.path}: {im.count} images of {im.width}x{im.height} "
                              f"do not match its {len(self._cameras)} cameras of "
                              f"{self.meta.width}x{self.meta.height}: the catalog is damaged; "
                              f"{_FIX}")
        if not self.store.has_array(IMAGES_KEY):
            raise FormatError(f"scene {self.path}: the catalog describes {im.count} images but "
                              f"has no image array: the catalog is damaged; {_FIX}")
        am = self.store.array_meta(IMAGES_KEY)
        if am.shape != (im.count, im.slot_bytes) or am.dtype != "uint8" \
                or am.chunk_bytes != im.slot_bytes or am.offset % ALIGN or im.slot_bytes % ALIGN:
            raise FormatError(f"scene {self.path}: image array has shape {am.shape} "
                              f"({am.dtype}, chunks of {am.chunk_bytes} B), expected "
                              f"[{im.count}, {im.slot_bytes}] uint8 in one chunk per image: "
                              f"the catalog is damaged; {_FIX}")
        sums = self.store.get(f"sums/{IMAGES_KEY}")
        self._images, self._image_file = im, am.file
        self._image_offset = am.offset
        self._image_sums = sums if isinstance(sums, list) else []

    def _load(self) -> None:
        """(Re)read the committed state from the catalog."""
        self.store.refresh()
        self.meta = SceneMeta.from_dict(self.store.get("scene"))
        nb = self.meta.num_blocks
        counts = np.zeros(nb, dtype=np.int64)
        bounds = np.empty((nb, 2, 3), dtype=np.float32)
        bounds[:, 0], bounds[:, 1] = np.inf, -np.inf
        files: list[str | None] = [None] * nb
        sums: list[tuple[int, list] | None] = [None] * nb  # (chunk bytes, CRC-32 per chunk)
        for key, value in self.store.items(BLOCK_PREFIX):
            b = int(key[len(BLOCK_PREFIX):])
            if not 0 <= b < nb:
                raise FormatError(f"scene {self.path}: catalog has block {b} but the scene has "
                                  f"{nb} blocks: the catalog is damaged; {_FIX}")
            counts[b] = int(value["count"])
            if value.get("lo") is not None:
                bounds[b, 0], bounds[b, 1] = value["lo"], value["hi"]
        for name, am in self.store.arrays.items():
            if name.startswith(BLOCK_PREFIX):
                b = int(name[len(BLOCK_PREFIX):])
                if not 0 <= b < nb:
                    raise FormatError(f"scene {self.path}: catalog has array {name!r} but the "
                                      f"scene has {nb} blocks: the catalog is damaged; {_FIX}")
                files[b] = am.file
                got = self.store.get(f"sums/{name}")
                # a malformed list is kept as is: read_block reports it as a checksum error
                sums[b] = (am.chunk_bytes, got if isinstance(got, list) else [])
        for b in range(nb):
            if counts[b] and files[b] is None:
                raise FormatError(f"scene {self.path}: block {b} holds {counts[b]} Gaussians but "
                                  f"has no data file in the catalog; {_FIX}")
        self._counts, self._bounds, self._files, self._sums = counts, bounds, files, sums
        self._next_id = self.meta.next_id
        self._row = row_dtype(self.meta.sh_degree, self.meta.moments)
        vm = self._camera_array("scene/viewmats")
        ks = self._camera_array("scene/Ks")
        names = tuple(self.store.get("scene/view_names") or ())
        self._cameras = Cameras(vm, ks, self.meta.width, self.meta.height,
                                names if len(names) == len(vm) else (), source=str(self.path))
        self._load_images()
        self._load_lod()

    def _load_lod(self) -> None:
        """The hierarchy's catalog entry; the cached hierarchy dropped (read again when
        asked for: a densification's commit rewrites it)."""
        from .lod import LOD_KEY

        self._lod_meta = self.store.get(LOD_KEY)
        self._hierarchy = None
        if (self.meta.format_version == LOD_FORMAT_VERSION) != (self._lod_meta is not None):
            raise FormatError(f"scene {self.path} has format version {self.meta.format_version}"
                              f" but {'no' if self._lod_meta is None else 'a'} level-of-detail "
                              f"hierarchy: the catalog is damaged; {_FIX}")

    def _camera_array(self, name: str) -> np.ndarray:
        """A camera array (a few KiB) read whole; with ``verify_reads``, checked against
        its checksums."""
        data = np.array(self.store.array(name))
        if self.verify_reads:
            meta = self.store.array_meta(name)
            sums = self.store.get(f"sums/{name}")
            self._check_sums(f"camera array {name!r}", meta.file, data,
                             (meta.chunk_bytes, sums if isinstance(sums, list) else []))
        return data

    def _remove_uncommitted(self) -> None:
        """Remove files of writers that never committed (if no writer is active now)."""
        try:
            self.store._acquire_lock()
        except OSError:  # another writer is at work: its files are not ours to judge
            return
        try:
            self.store.refresh()
            self.store.remove_orphans()
        finally:
            self.store._release_lock()

    @property
    def sh_degree(self) -> int:
        return self.meta.sh_degree

    @property
    def param_width(self) -> int:
        return layout.param_width(self.meta.sh_degree)

    @property
    def record_width(self) -> int:
        return layout.record_width(self.meta.sh_degree)

    @property
    def record_bytes(self) -> int:
        """Bytes of one record as the API hands it out (float32 [3P])."""
        return 4 * self.record_width

    @property
    def disk_row_bytes(self) -> int:
        """Bytes of one record on disk (id + params + moments in their precision)."""
        return self._row.itemsize

    @property
    def block_capacity(self) -> int:
        return self.meta.block_capacity

    @property
    def num_blocks(self) -> int:
        return len(self._counts)

    @property
    def block_counts(self) -> np.ndarray:
        with self._lock:
            return self._counts.copy()

    @property
    def block_bounds(self) -> np.ndarray:
        with self._lock:
            return self._bounds.copy()

    @property
    def num_gaussians(self) -> int:
        return int(self._counts.sum())

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def cameras(self) -> Cameras:
        return self._cameras

    @property
    def version(self) -> int:
        return self.store.version

    # -- level of detail -----------------------------------------------------------
    @property
    def lod_meta(self) -> dict | None:
        """The hierarchy's catalog entry (None: the scene has no level-of-detail
        hierarchy; see :mod:`oocstore.gs.lod`)."""
        return self._lod_meta

    def hierarchy(self, *, what: str = "level of detail"):
        """The scene's :class:`~oocstore.gs.lod.Hierarchy` (read once); a UsageError
        naming the command that builds one when the scene has none."""
        from .lod import BUILD_FIX, read_hierarchy

        if self._lod_meta is None:
            raise UsageError(f"{what} needs a level-of-detail hierarchy, and scene {self.path} "
                             f"has none: {BUILD_FIX.format(src=self.path)}")
        if self._hierarchy is None:
            with self._lock:
                counts = np.array(self._counts, dtype=np.int64)
            self._hierarchy = read_hierarchy(self.store, counts)
        return self._hierarchy

    # -- photographs ---------------------------------------------------------------
    @property
    def has_images(self) -> bool:
        """True for a scene ingested from photographs (one stored image per camera)."""
        return self._images is not None

    @property
    def images_meta(self) -> ImagesMeta | None:
        return self._images

    def _need_images(self) -> ImagesMeta:
        if self._images is None:
            raise UsageError(f"scene {self.path} holds no photographs (it was ingested from a "
                             "point cloud or .ply): ingest a COLMAP model or a transforms.json "
                             "with `oocstore ingest scene` to train on images")
        return self._images

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the stored images: the cameras' size."""
        im = self._need_images()
        return im.width, im.height

    @property
    def num_images(self) -> int:
        return self._images.count if self._images is not None else 0

    @property
    def image_bytes(self) -> int:
        """Bytes of one stored image (``H * W * 3``)."""
        return self._need_images().image_bytes

    @property
    def images_bytes(self) -> int:
        """Bytes of all stored images (without their 4 KiB padding)."""
        return self.num_images * self.image_bytes if self._images is not None else 0

    @property
    def test_views(self) -> np.ndarray:
        """Held-out camera indices (int64, sorted); empty without photographs."""
        if self._images is None:
            return np.zeros(0, np.int64)
        return np.array(sorted(self._images.test_views), dtype=np.int64)

    @property
    def train_views(self) -> np.ndarray:
        """The cameras that are not held out (int64, in storage order)."""
        if self._images is None:
            return np.arange(len(self._cameras), dtype=np.int64)
        keep = np.ones(self._images.count, dtype=bool)
        keep[self.test_views] = False
        return np.flatnonzero(keep).astype(np.int64)

    @property
    def image_names(self) -> list[str]:
        """Source file name of each stored image (camera order)."""
        return list(self._images.names) if self._images is not None else []

    @property
    def background(self) -> tuple[float, float, float] | None:
        """RGB in 0..1 that alpha channels were composited on (None: opaque photos)."""
        bg = self._images.background if self._images is not None else None
        return tuple(float(c) for c in bg) if bg is not None else None

    def image_location(self, v: int) -> tuple[Path, int, int]:
        """``(file, offset, slot bytes)`` of image ``v``: its aligned row in the file."""
        im = self._need_images()
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < im.count:
            raise UsageError(f"scene {self.path}: image {v!r} does not exist (images are "
                             f"0..{im.count - 1})")
        return self.path / self._image_file, self._image_offset + int(v) * im.slot_bytes, \
            im.slot_bytes

    def image_buffer(self) -> np.ndarray:
        """A 4 KiB-aligned uint8 buffer of one image slot, for :meth:`read_image`'s
        ``out`` (a prefetcher keeps a few and reuses them: no allocation per read)."""
        from ..store.files import aligned_empty

        return aligned_empty(self._need_images().slot_bytes)

    def read_image(self, v: int, out: np.ndarray | None = None) -> np.ndarray:
        """Image ``v`` (camera ``v``'s photo) as uint8 [H, W, 3] RGB: one aligned read of
        its row; with ``verify_reads``, its CRC-32 checked (:class:`ChecksumError` naming
        the scene, the image and its file on a mismatch or a short file).

        ``out`` (from :meth:`image_buffer`) receives the row and the result is a view
        of it; without it a new buffer is allocated."""
        path, offset, slot = self.image_location(v)
        im = self._images
        with DirectReader(path, direct=self.direct) as reader:
            if out is None:
                raw = reader.read(offset, slot)
            else:
                if out.dtype != np.uint8 or out.ndim != 1 or len(out) != slot \
                        or out.ctypes.data % ALIGN:
                    raise UsageError(f"scene {self.path}: read_image's out must be a 4 KiB-"
                                     f"aligned uint8 buffer of {slot} bytes: use "
                                     "scene.image_buffer()")
                raw = out[:reader.read_into(out, offset)]
        what = f"image {int(v)} ({im.names[int(v)]})"
        if len(raw) < slot:
            self._damaged(what, self._image_file, None, f"the file is truncated ({len(raw)} "
                          f"bytes of the image's {slot})")
        if self.verify_reads:
            sums = self._image_sums
            if len(sums) != im.count:
                self._damaged(what, self._image_file, None, f"the catalog lists {len(sums)} "
                              f"checksum(s) for {im.count} images: the catalog is damaged")
            if checksum(raw) != sums[int(v)]:
                self._damaged(what, self._image_file, None,
                              f"checksum mismatch in bytes {offset}..{offset + slot}")
        return raw[:im.image_bytes].reshape(im.height, im.width, 3)

    # -- reading -------------------------------------------------------------------
    def read_block(self, b: int, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [n], records float32 [n, 3P])`` of block ``b``'s live Gaussians;
        with ``rows``, only the first ``rows`` of them (a *prefix read*, as a level-of-
        detail cut needs: :mod:`oocstore.gs.lod`). A prefix read reads the checksum
        chunks that hold those rows (with ``verify_reads``; else the 4 KiB pages).

        Raises :class:`ChecksumError` naming the block, file and chunk when the file is
        short or (with ``verify_reads``) its bytes do not match the block's checksums."""
        b = self._check_block(b)
        for _attempt in range(3):
            with self._lock:
                n, rel, sums = int(self._counts[b]), self._files[b], self._sums[b]
            k = n if rows is None else min(n, _check_rows_arg(rows))
            if k == 0:
                return np.zeros(0, np.int64), np.zeros((0, self.record_width), np.float32)
            nbytes = n * self._row.itemsize
            want = _prefix_bytes(k * self._row.itemsize, nbytes, sums, self.verify_reads)
            try:
                with DirectReader(self.path / rel, direct=self.direct) as reader:
                    self.store.check_not_replaced()  # opened in this scene, not a successor
                    raw = reader.read(0, want)
            except FileNotFoundError:
                continue  # a writer replaced the block meanwhile: look again
            if len(raw) < want:
                cb = sums[0] if sums else nbytes
                self._damaged(f"block {b}", rel, len(raw) // cb, f"the file is truncated "
                              f"({len(raw)} bytes of rows, the block needs {nbytes})")
            if self.verify_reads:
                if want < nbytes:
                    self._check_prefix_sums(f"block {b}", rel, raw, sums, nbytes)
                else:
                    self._check_sums(f"block {b}", rel, raw, sums)
            return decode_rows(raw[:k * self._row.itemsize].view(self._row))
        raise FormatError(f"scene {self.path}: block {b}'s file {rel} keeps disappearing")

    def _check_sums(self, what: str, rel: str, raw: np.ndarray, sums) -> None:
        """CRC-32 of each chunk of ``raw`` (``what``'s data bytes, from file ``rel``)
        against ``sums`` = (chunk bytes, [CRC-32 per chunk])."""
        cb, want = sums if sums is not None else (0, [])
        mv = byte_view(raw)
        chunks = -(-len(mv) // cb) if cb > 0 else -1
        if len(want) != chunks:
            self._damaged(what, rel, None, f"the catalog lists {len(want)} checksum(s) for "
                          f"{max(chunks, 0)} chunk(s) of {cb} bytes: the catalog is damaged")
        for c in range(chunks):
            lo, hi = c * cb, min((c + 1) * cb, len(mv))
            if checksum(mv[lo:hi]) != want[c]:
                self._damaged(what, rel, c, f"checksum mismatch in bytes {lo}..{hi}")

    def _check_prefix_sums(self, what: str, rel: str, raw: np.ndarray, sums, nbytes: int):
        """:meth:`_check_sums` of the whole chunks ``raw`` holds of a block of ``nbytes``
        (the checksum list checked against the whole block first)."""
        cb, want = sums if sums is not None else (0, [])
        chunks = -(-nbytes // cb) if cb > 0 else -1
        if len(want) != chunks:
            self._damaged(what, rel, None, f"the catalog lists {len(want)} checksum(s) for "
                          f"{max(chunks, 0)} chunk(s) of {cb} bytes: the catalog is damaged")
        self._check_sums(what, rel, raw, (cb, want[:-(-len(raw) // cb)]))

    def _damaged(self, what: str, rel: str, chunk: int | None, detail: str) -> NoReturn:
        where = f"chunk {chunk}: " if chunk is not None else ""
        raise ChecksumError(
            f"scene {self.path}: {what} (file {rel}), {where}{detail}: the scene is damaged; "
            "run `oocstore verify`, then restore it from a copy or re-ingest it "
            "(verify_reads=False / --no-verify-reads skips the checksum check)")

    def read_blocks(self, blocks: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.read_block(b) for b in blocks]

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every live Gaussian, sorted by id: ``(ids [N], records [N, 3P])``."""
        parts = [self.read_block(b) for b in range(self.num_blocks) if self._counts[b]]
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.record_width), np.float32)
        ids = np.concatenate([p[0] for p in parts])
        rec = np.concatenate([p[1] for p in parts])
        order = np.argsort(ids, kind="stable")
        return ids[order], rec[order]

    def read_params(self, *, progress: Callable[[int], None] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [N], params [N, P])`` of every live Gaussian, sorted by id;
        ``progress(n)`` after each block of ``n`` Gaussians."""
        p = self.param_width
        parts = []
        for b in range(self.num_blocks):
            if self._counts[b]:
                i, r = self.read_block(b)
                parts.append((i, np.ascontiguousarray(r[:, :p])))
                if progress:
                    progress(len(i))
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, p), np.float32)
        ids = np.concatenate([x[0] for x in parts])
        prm = np.concatenate([x[1] for x in parts])
        order = np.argsort(ids, kind="stable")
        return ids[order], prm[order]

    def export_ply(self, path: str | os.PathLike, *,
                   progress: Callable[[int], None] | None = None) -> int:
        """Write the scene's parameters as a standard 3DGS ``.ply`` in id order; returns
        the number of Gaussians written (``progress(n)`` as blocks are read)."""
        from .ply import write_ply

        ids, params = self.read_params(progress=progress)
        if self._lod_meta is not None:  # the leaves: merged nodes are no 3DGS Gaussians
            from .lod import in_cut, leaf_ids

            params = params[in_cut(ids, leaf_ids(self))]
        write_ply(path, params, self.sh_degree)
        return len(params)

    def _check_block(self, b) -> int:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 0 <= b < self.num_blocks:
            raise UsageError(f"scene {self.path}: block {b!r} does not exist (blocks are "
                             f"0..{self.num_blocks - 1})")
        return int(b)

    # -- writing -------------------------------------------------------------------
    def writer(self) -> "SceneWriter":
        """The scene's single writer (takes the store's writer lock until closed)."""
        if self.store.readonly:
            raise UsageError(f"scene {self.path} was opened read-only: open it with "
                             "Scene.open(path) to write")
        if self._writer is not None:
            raise UsageError(f"scene {self.path} already has an open writer: use it, or close it")
        self._writer = SceneWriter(self)
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.store.close()

    def __enter__(self) -> "Scene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Scene({str(self.path)!r}, gaussians={self.num_gaussians}, "
                f"blocks={self.num_blocks}, sh_degree={self.sh_degree})")


def _check_rows_arg(rows) -> int:
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 0:
        raise UsageError(f"rows {rows!r} must be a non-negative integer (a block prefix)")
    return int(rows)


def _prefix_bytes(need: int, nbytes: int, sums, verify: bool) -> int:
    """Bytes to read for the first ``need`` bytes of a block of ``nbytes``: whole checksum
    chunks when they are checked, else whole 4 KiB pages (never past the rows)."""
    if need >= nbytes:
        return nbytes
    unit = sums[0] if verify and sums and sums[0] > 0 else ALIGN
    return min(nbytes, -(-need // unit) * unit)


def _check_create_options(block_size, spare, moments, cameras, photos) -> None:
    """The block size, spare capacity and moment type of a new scene, and its photos
    matching its cameras."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
            or not 1 <= block_size <= 1 << 20:
        raise UsageError(f"block size {block_size!r} must be an integer 1..1048576 "
                         "(a few thousand Gaussians is typical)")
    if not (isinstance(spare, (int, float)) and 0 <= spare <= 4):
        raise UsageError(f"spare capacity {spare!r} must be a fraction 0..4 (e.g. 0.25)")
    if moments not in MOMENT_DTYPES:
        raise UsageError(f"moments {moments!r} must be one of {MOMENT_DTYPES}")
    if not isinstance(cameras, Cameras):
        raise UsageError("cameras must be an oocstore.gs.cameras.Cameras")
    if photos is not None:
        pm = photos.meta
        if (pm.width, pm.height, pm.count) != (cameras.width, cameras.height, len(cameras)):
            raise UsageError(f"{pm.count} photos of {pm.width}x{pm.height} do not match "
                             f"{len(cameras)} cameras of {cameras.width}x{cameras.height}")


def _checked_params(params, sh_degree: int) -> np.ndarray:
    """``params`` as an array [N, P] of the width of SH degree ``sh_degree``."""
    p = layout.param_width(sh_degree)
    params = np.asarray(params)
    if params.ndim != 2 or params.shape[1] != p:
        raise UsageError(f"params have shape {params.shape}, expected [N, {p}] for SH degree "
                         f"{sh_degree}")
    return params


def _checked_means_and_ids(params: np.ndarray, means, ids):
    """``means`` [N, 3] (default: the params' means) and ``ids`` [N] (default: the row
    numbers; else distinct and non-negative) of a new scene, whose ``params`` must be
    finite."""
    n = params.shape[0]
    means = params[:, layout.MEANS] if means is None else np.asarray(means)
    if means.shape != (n, 3):
        raise UsageError(f"means have shape {means.shape}, expected ({n}, 3)")
    if ids is None:
        ids = np.arange(n, dtype=np.int64)
    else:
        ids = np.asarray(ids, dtype=np.int64)
        srt = np.sort(ids)
        if ids.shape != (n,) or (n and (srt[0] < 0 or bool((srt[1:] == srt[:-1]).any()))):
            raise UsageError(f"ids must be {n} distinct non-negative int64 values")
    check_finite(params, "params")
    return means, ids


def _write_first_blocks(w, order: np.ndarray, ids: np.ndarray, params: np.ndarray,
                        block_size: int, progress: Callable[[int], None] | None) -> None:
    """Write the rows of a new scene into blocks of ``block_size`` in ``order`` on a few
    threads, ``progress(rows)`` after each block (``w``: the scene's writer, not committed).

    Block k is file number first + k whichever thread writes it: the same source always
    gives the same store."""
    n = params.shape[0]
    starts = range(0, n, block_size)
    blocks = [w.reserve_block() for _ in starts]
    first = w._reserve_seqs(len(blocks))

    def write(k: int) -> int:
        sel = order[starts[k]:starts[k] + block_size]
        w._write_fresh(blocks[k], ids[sel], params[sel], first + k)
        return len(sel)

    # Some writers encode while others wait for their fsync; 4 at most,
    # since the disk, not the CPU, is the limit beyond that.
    workers = max(2, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="oocstore-scene-ingest") as ex:
        try:
            for done in ex.map(write, range(len(blocks))):
                if progress:
                    progress(done)
        except BaseException:  # e.g. disk full: the queued blocks would fail too
            ex.shutdown(wait=True, cancel_futures=True)
            raise

def _write_lod(txn, lod: tuple) -> None:
    """The hierarchy's catalog entry and arrays (see :mod:`oocstore.gs.lod`)."""
    from .lod import LOD_KEY, NODES_ARRAY, SPHERES_ARRAY

    meta, nodes, spheres = lod
    txn.write_array(NODES_ARRAY, np.asarray(nodes, dtype=np.int64))
    txn.write_array(SPHERES_ARRAY, np.asarray(spheres, dtype=np.float32))
    txn.put(LOD_KEY, meta.to_dict())


def _write_photos(txn, photos: PhotoSource) -> None:
    """Stream ``photos`` into ``array/scene/images`` (one padded row, one CRC each)."""
    pm = photos.meta
    w = txn.array_writer(IMAGES_KEY, np.uint8, (pm.slot_bytes,), chunk_bytes=pm.slot_bytes,
                         subdir="scenes")
    row = np.zeros((1, pm.slot_bytes), dtype=np.uint8)
    n = 0
    for img in photos.images:
        img = np.asarray(img)
        if img.shape != (pm.height, pm.width, 3) or img.dtype != np.uint8:
            raise UsageError(f"photo {n} has shape {img.shape} ({img.dtype}), expected uint8 "
                             f"[{pm.height}, {pm.width}, 3]")
        if n >= pm.count:
            raise UsageError(f"more photos than the {pm.count} announced")
        row[0, :pm.image_bytes] = img.reshape(-1)
        w.append(row)
        n += 1
    if n != pm.count:
        raise UsageError(f"{n} photos written, {pm.count} announced")
    w.close()
    txn.put(IMAGES_KEY, pm.to_dict())


def scene_info(store: Store) -> dict[str, Any]:
    """JSON-able summary of the scene in ``store`` (for ``oocstore inspect``)."""
    meta = SceneMeta.from_dict(store.get("scene"))
    counts = np.zeros(meta.num_blocks, dtype=np.int64)
    for key, value in store.items(BLOCK_PREFIX):
        b = int(key[len(BLOCK_PREFIX):])
        if 0 <= b < meta.num_blocks:
            counts[b] = int(value["count"])
    live = counts[counts > 0]
    rec = 4 * layout.record_width(meta.sh_degree)
    views = store.array_meta("scene/viewmats").shape[0] if store.has_array("scene/viewmats") else 0
    return {"sh_degree": meta.sh_degree, "gaussians": int(counts.sum()),
            "blocks": meta.num_blocks, "empty_blocks": int((counts == 0).sum()),
            "block_capacity": meta.block_capacity, "block_fill_mean":
                float(live.mean() / meta.block_capacity) if live.size else 0.0,
            "moments": meta.moments, "record_bytes": rec,
            "disk_row_bytes": row_dtype(meta.sh_degree, meta.moments).itemsize,
            "records_bytes": int(counts.sum()) * rec, "next_id": meta.next_id,
            "views": views, "width": meta.width, "height": meta.height,
            "format_version": meta.format_version, **_images_info(store),
            **({"lod": store.get("scene/lod")} if store.get("scene/lod") is not None else {})}


def _images_info(store: Store) -> dict[str, Any]:
    raw = store.get(IMAGES_KEY)
    if raw is None:
        return {}
    im = ImagesMeta.from_dict(raw)
    return {"images": {"kind": im.kind, "count": im.count, "width": im.width,
                       "height": im.height, "downscale": im.downscale,
                       "test_every": im.test_every, "test_views": len(im.test_views),
                       "background": im.background, "bytes": im.count * im.image_bytes,
                       "source": im.source}}


def format_scene_info(info: dict[str, Any]) -> list[str]:
    from ..units import format_size

    return [f"  scene: {info['gaussians']:,} Gaussians, SH degree {info['sh_degree']}, "
            f"{info['blocks']:,} blocks (capacity {info['block_capacity']:,}, mean fill "
            f"{100 * info['block_fill_mean']:.0f}%, {info['empty_blocks']} empty)",
            f"    records {format_size(info['records_bytes'])} ({info['record_bytes']} B each as "
            f"float32; {info['disk_row_bytes']} B on disk, {info['moments']} moments); "
            f"{info['views']} views of {info['width']}x{info['height']}; next id "
            f"{info['next_id']:,}"] + _format_images(info.get("images")) \
        + _format_lod(info.get("lod"))


def _format_lod(lod: dict | None) -> list[str]:
    if not isinstance(lod, dict):
        return []
    return [f"    level of detail: {lod.get('leaves', 0):,} leaves and "
            f"{lod.get('nodes', 0) - lod.get('leaves', 0):,} merged nodes in "
            f"{lod.get('levels')} levels (format version 2; `gs-render`/`gs-train` "
            "--lod-pixels)"]


def _format_images(im: dict | None) -> list[str]:
    from ..units import format_size

    if not im:
        return []
    split = (f"every {im['test_every']}th held out" if im["test_every"]
             else "the dataset's own test split")
    bg = "" if im["background"] is None else \
        f", alpha composited on {tuple(round(c, 3) for c in im['background'])}"
    return [f"    images: {im['count']} photos ({im['kind']} {im['source']}) of "
            f"{im['width']}x{im['height']}, downscale {im['downscale']}, "
            f"{format_size(im['bytes'])}; {im['test_views']} test views ({split}){bg}"]


@contextlib.contextmanager
def open_scene(path: str | os.PathLike, *, readonly: bool = False) -> Iterator[Scene]:
    scene = Scene.open(path, readonly=readonly)
    try:
        yield scene
    finally:
        scene.close()
