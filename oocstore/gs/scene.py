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

A block file ``scenes/b<b:08d>.<seq>.bin`` holds the block's live rows one after the
other, each ``id int64 | params float32[P] | exp_avg [P] | exp_avg_sq [P]`` (moments in
float32, or float16 with ``moments="float16"``, where the second moment is stored as
its square root so that the tiny values Adam accumulates stay representable), padded
to 4 KiB. A block is read with one aligned read of ``n * row_bytes``.

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
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import FormatError, StoreNotFoundError, UsageError
from ..store import Store
from ..store.files import ArrayFileWriter, DirectReader, fsync_dir
from ..store.format import ArrayMeta, CHUNK_BYTES, versioned_from_dict
from . import layout
from .cameras import Cameras

log = logging.getLogger(__name__)

SCENE_FORMAT_VERSION = 1
MOMENT_DTYPES = ("float32", "float16")
BLOCK_PREFIX = "scene/block/"
ARRAY_PREFIX = "array/" + BLOCK_PREFIX
_FIX = "re-create the scene with `oocstore ingest scene`"


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
        return versioned_from_dict(cls, data, kind="scene", version=SCENE_FORMAT_VERSION,
                                   fix="install the oocstore release that wrote it, or " + _FIX)


def row_dtype(sh_degree: int, moments: str = "float32") -> np.dtype:
    """The on-disk row: id, parameters, first and second moment (packed, no padding)."""
    p = layout.param_width(sh_degree)
    m = np.dtype(moments).newbyteorder("<")
    return np.dtype([("id", "<i8"), ("params", "<f4", (p,)), ("m1", m, (p,)), ("m2", m, (p,))])


def encode_rows(ids: np.ndarray, records: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Records [n, 3P] float32 + ids -> on-disk rows (see :func:`row_dtype`)."""
    p = records.shape[1] // 3
    rows = np.empty(len(ids), dtype=dtype)
    rows["id"] = ids
    rows["params"] = records[:, :p]
    rows["m1"] = records[:, p:2 * p]
    if dtype["m2"].base == np.float16:
        # sqrt keeps second moments down to ~1e-15 representable (fp16's smallest is 6e-8)
        rows["m2"] = np.sqrt(np.maximum(records[:, 2 * p:], 0))
    else:
        rows["m2"] = records[:, 2 * p:]
    return rows


def decode_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """On-disk rows -> (ids int64 [n], records float32 [n, 3P])."""
    p = rows.dtype["params"].shape[0]
    if rows.dtype["m2"].base == np.float32:
        # the 3P floats after each id are the record: one strided copy
        raw = rows.view(np.uint8).reshape(len(rows), rows.dtype.itemsize)
        rec = np.ascontiguousarray(raw[:, 8:].view("<f4"))
        return np.ascontiguousarray(raw[:, :8].view("<i8")).reshape(-1), rec
    rec = np.empty((len(rows), 3 * p), dtype=np.float32)
    rec[:, :p] = rows["params"]
    rec[:, p:2 * p] = rows["m1"]
    if rows.dtype["m2"].base == np.float16:
        m2 = rows["m2"].astype(np.float32)
        rec[:, 2 * p:] = m2 * m2
    else:
        rec[:, 2 * p:] = rows["m2"]
    return rows["id"].astype(np.int64), rec


def block_bounds_of(records: np.ndarray) -> np.ndarray:
    """[2, 3] float32 box of records or params [n, >=11]: the union of each Gaussian's
    mean +- 3x its own largest scale.

    Every Gaussian's 3-sigma ellipsoid lies inside (its extent along any axis is at
    most 3x its largest scale, whatever its rotation), so frustum tests against the box
    are conservative. It is never larger than the means' box padded by 3x the block's
    largest scale, and much smaller when a few large Gaussians sit among small ones.
    """
    out = np.empty((2, 3), dtype=np.float32)
    if len(records) == 0:
        out[0], out[1] = np.inf, -np.inf
        return out
    means = records[:, layout.MEANS].astype(np.float64)
    margin = 3.0 * np.exp(records[:, layout.LOG_SCALES].max(axis=1).astype(np.float64))
    lo = (means - margin[:, None]).min(axis=0)
    hi = (means + margin[:, None]).max(axis=0)
    # rounded outwards so the float32 box still contains every float64 extent
    out[0] = np.nextafter(lo.astype(np.float32), np.float32(-np.inf))
    out[1] = np.nextafter(hi.astype(np.float32), np.float32(np.inf))
    return out


def morton_order(means: np.ndarray) -> np.ndarray:
    """Permutation sorting points by the Morton (Z-order) code of their position,
    quantised to 21 bits per axis within the points' bounding box."""
    m = np.asarray(means, dtype=np.float64)
    if len(m) == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = m.min(axis=0), m.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = ((m - lo) / span * ((1 << 21) - 1)).astype(np.uint64)
    code = np.zeros(len(m), dtype=np.uint64)
    for axis in range(3):
        v = q[:, axis]
        v = (v | (v << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
        v = (v | (v << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
        v = (v | (v << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
        v = (v | (v << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
        v = (v | (v << np.uint64(2))) & np.uint64(0x1249249249249249)
        code |= v << np.uint64(axis)
    return np.argsort(code, kind="stable").astype(np.int64)


def _block_key(b: int) -> str:
    return f"{BLOCK_PREFIX}{b:08d}"


class Scene:
    """A scene store opened for reading and (through :meth:`writer`) writing.

    Properties reflect this process's view: committed state plus what an open writer
    has written since.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, direct: bool = True):
        self.path = Path(path)
        self.store = Store(self.path, readonly=readonly)
        self.direct = direct
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
    def open(cls, path: str | os.PathLike, *, readonly: bool = False) -> "Scene":
        return cls(path, readonly=readonly)

    @classmethod
    def create(cls, path: str | os.PathLike, means: np.ndarray | None, params: np.ndarray,
               sh_degree: int, cameras: Cameras, block_size: int = 4096, spare: float = 0.25,
               *, moments: str = "float32", ids: np.ndarray | None = None,
               overwrite: bool = False, source: dict | None = None,
               progress: Callable[[int], None] | None = None) -> "Scene":
        """Build a scene at ``path`` from ``params`` [N, P] (moments zeroed) and open it.

        ``means`` [N, 3] (default: the params' means) set the Morton order that groups
        Gaussians into blocks of ``block_size``; ``ids`` default to the row numbers.
        ``progress(n)`` is called with the Gaussians written so far in each block.
        The scene appears at ``path`` only once complete.
        """
        sh_degree = layout.check_sh_degree(sh_degree)
        p = layout.param_width(sh_degree)
        params = np.asarray(params)
        if params.ndim != 2 or params.shape[1] != p:
            raise UsageError(f"params have shape {params.shape}, expected [N, {p}] for SH degree "
                             f"{sh_degree}")
        n = params.shape[0]
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
        _check_finite(params, "params")
        capacity = int(math.ceil(block_size * (1 + spare)))
        order = morton_order(means)
        meta = SceneMeta(sh_degree=sh_degree, block_capacity=capacity, block_size=int(block_size),
                         moments=moments, num_blocks=0, next_id=int(ids.max()) + 1 if n else 0,
                         file_seq=0, width=cameras.width, height=cameras.height)
        with Store.create(path, overwrite=overwrite) as store:
            with store.transaction() as txn:
                txn.put("scene", meta.to_dict())
                txn.write_array("scene/viewmats", cameras.viewmats)
                txn.write_array("scene/Ks", cameras.Ks)
                txn.put("scene/view_names", list(cameras.names))
                txn.set_source(dict(source or {}, kind="scene"))
            scene = cls(store.path)
            try:
                with scene.writer() as w:
                    starts = range(0, n, block_size)
                    blocks = [w.reserve_block() for _ in starts]

                    def write(k: int) -> int:
                        sel = order[starts[k]:starts[k] + block_size]
                        w._write_fresh(blocks[k], ids[sel], params[sel])
                        return len(sel)

                    # Some writers encode while others wait for their fsync; 4 at most,
                    # since the disk, not the CPU, is the limit beyond that.
                    workers = max(2, min(4, os.cpu_count() or 1))
                    with ThreadPoolExecutor(workers, thread_name_prefix="oocstore-scene-ingest") as ex:
                        for done in ex.map(write, range(len(blocks))):
                            if progress:
                                progress(done)
                    w.commit()
            finally:
                scene.close()
        return cls(path)

    # -- state ---------------------------------------------------------------------
    def _load(self) -> None:
        """(Re)read the committed state from the catalog."""
        self.store.refresh()
        self.meta = SceneMeta.from_dict(self.store.get("scene"))
        nb = self.meta.num_blocks
        counts = np.zeros(nb, dtype=np.int64)
        bounds = np.empty((nb, 2, 3), dtype=np.float32)
        bounds[:, 0], bounds[:, 1] = np.inf, -np.inf
        files: list[str | None] = [None] * nb
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
                files[int(name[len(BLOCK_PREFIX):])] = am.file
        for b in range(nb):
            if counts[b] and files[b] is None:
                raise FormatError(f"scene {self.path}: block {b} holds {counts[b]} Gaussians but "
                                  f"has no data file in the catalog; {_FIX}")
        self._counts, self._bounds, self._files = counts, bounds, files
        self._next_id = self.meta.next_id
        self._row = row_dtype(self.meta.sh_degree, self.meta.moments)
        vm = np.asarray(self.store.array("scene/viewmats"))
        ks = np.asarray(self.store.array("scene/Ks"))
        names = tuple(self.store.get("scene/view_names") or ())
        self._cameras = Cameras(vm.copy(), ks.copy(), self.meta.width, self.meta.height,
                                names if len(names) == len(vm) else (), source=str(self.path))

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

    # -- reading -------------------------------------------------------------------
    def read_block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [n], records float32 [n, 3P])`` of block ``b``'s live Gaussians."""
        b = self._check_block(b)
        for _attempt in range(3):
            with self._lock:
                n, rel = int(self._counts[b]), self._files[b]
            if n == 0:
                return np.zeros(0, np.int64), np.zeros((0, self.record_width), np.float32)
            try:
                with DirectReader(self.path / rel, direct=self.direct) as reader:
                    nbytes = n * self._row.itemsize
                    raw = reader.read(0, nbytes)
            except FileNotFoundError:
                continue  # a writer replaced the block meanwhile: look again
            if len(raw) < nbytes:
                raise FormatError(f"scene {self.path}: block {b} file {rel} holds {len(raw)} bytes, "
                                  f"needs {nbytes}: it is truncated; run `oocstore verify`")
            return decode_rows(raw.view(self._row))
        raise FormatError(f"scene {self.path}: block {b}'s file {rel} keeps disappearing")

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

    def read_params(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [N], params [N, P])`` of every live Gaussian, sorted by id."""
        p = self.param_width
        parts = []
        for b in range(self.num_blocks):
            if self._counts[b]:
                i, r = self.read_block(b)
                parts.append((i, np.ascontiguousarray(r[:, :p])))
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, p), np.float32)
        ids = np.concatenate([x[0] for x in parts])
        prm = np.concatenate([x[1] for x in parts])
        order = np.argsort(ids, kind="stable")
        return ids[order], prm[order]

    def export_ply(self, path: str | os.PathLike) -> int:
        """Write the scene's parameters as a standard 3DGS ``.ply`` in id order; returns
        the number of Gaussians written."""
        from .ply import write_ply

        _, params = self.read_params()
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


@dataclass
class _Pending:
    seq: int
    count: int
    bounds: np.ndarray | None
    file: str | None  # None: freed
    sums: list[int]


class SceneWriter:
    """Log-structured writes to a scene; :meth:`commit` is the commit point.

    ``write_block`` may be called from a background thread while the owner reads.
    """

    def __init__(self, scene: Scene):
        self.scene = scene
        store = scene.store
        store._acquire_lock()  # StoreLockedError if another process writes
        try:
            scene._load()  # another writer may have committed since the scene was opened
            store.remove_orphans()
        except BaseException:
            store._release_lock()
            raise
        self._seq = scene.meta.file_seq
        self._pending: dict[int, _Pending] = {}
        self._latest: dict[int, int] = {}  # block -> newest seq installed (across commits)
        self._closed = False
        self.commits = 0

    # -- the API -------------------------------------------------------------------
    def allocate_ids(self, n: int) -> np.ndarray:
        """``n`` new Gaussian ids (committed with the next :meth:`commit`)."""
        s = self.scene
        with s._lock:
            start = s._next_id
            s._next_id += int(n)
        return np.arange(start, start + int(n), dtype=np.int64)

    def write_block(self, b: int, ids: np.ndarray, records: np.ndarray) -> None:
        """Replace block ``b``'s Gaussians with ``ids`` [n] / ``records`` [n, 3P]."""
        self._check_open()
        s = self.scene
        b = s._check_block(b)
        ids, records = self._check_rows(b, ids, records)
        with s._lock:
            self._seq += 1
            seq = self._seq
        self._write_rows(b, seq, encode_rows(ids, records, s._row), block_bounds_of(records))

    def _write_fresh(self, b: int, ids: np.ndarray, params: np.ndarray) -> None:
        """Ingest's path: checked ``params`` [n, P] with zero moments, written without
        building float32 records first."""
        s = self.scene
        with s._lock:
            self._seq += 1
            seq = self._seq
        rows = np.zeros(len(ids), dtype=s._row)
        rows["id"] = ids
        rows["params"] = params
        self._write_rows(b, seq, rows, block_bounds_of(params))

    def _write_rows(self, b: int, seq: int, rows: np.ndarray, bounds: np.ndarray) -> None:
        s = self.scene
        if len(rows) == 0:  # an empty block has no file
            self._install(b, _Pending(seq, 0, None, None, []))
            return
        rel = f"scenes/b{b:08d}.{seq}.bin"
        fw = ArrayFileWriter(s.path / rel, chunk_bytes=CHUNK_BYTES)
        fw.write(rows)
        fw.finish()
        self._install(b, _Pending(seq, len(rows), bounds, rel, list(fw.checksums)))

    def new_block(self, ids: np.ndarray, records: np.ndarray) -> int:
        """Write a new block holding ``ids`` / ``records``; returns its block id."""
        self._check_open()
        ids, records = self._check_rows("new", ids, records)
        b = self.reserve_block()
        self.write_block(b, ids, records)
        return b

    def reserve_block(self) -> int:
        """A new, empty block id (filled by :meth:`write_block`)."""
        self._check_open()
        s = self.scene
        with s._lock:
            b = len(s._counts)
            s._counts = np.append(s._counts, 0)
            empty = np.array([[np.inf] * 3, [-np.inf] * 3], dtype=np.float32)[None]
            s._bounds = np.concatenate([s._bounds, empty])
            s._files.append(None)
            self._pending.setdefault(b, _Pending(0, 0, None, None, []))
        return b

    def free_block(self, b: int) -> None:
        """Empty block ``b`` (its id stays allocated, with no Gaussians)."""
        self._check_open()
        s = self.scene
        b = s._check_block(b)
        with s._lock:
            self._seq += 1
            self._install(b, _Pending(self._seq, 0, None, None, []))

    def commit(self) -> int:
        """Make every write so far durable and visible to other readers, atomically.
        Returns the new store version."""
        self._check_open()
        s = self.scene
        store = s.store
        with s._lock:
            pending = dict(self._pending)
            self._pending = {}
            old_files = {b: self._committed_file(b) for b in pending}
            num_blocks = len(s._counts)
            next_id = s._next_id
            seq = self._seq
        puts: dict[str, Any] = {}
        deletes: set[str] = set()
        for b, pend in pending.items():
            name = _block_key(b)
            if pend.file is None or pend.count == 0:
                puts[name] = {"count": 0, "lo": None, "hi": None}
                deletes |= {f"array/{name}", f"sums/{name}"}
            else:
                puts[name] = {"count": pend.count, "lo": pend.bounds[0].tolist(),
                              "hi": pend.bounds[1].tolist()}
                am = ArrayMeta(name=name, dtype="uint8",
                               shape=(pend.count, s._row.itemsize), file=pend.file,
                               chunk_bytes=CHUNK_BYTES, version=store.version + 1)
                puts[f"array/{name}"] = am.to_dict()
                puts[f"sums/{name}"] = pend.sums
        meta = dataclasses.replace(s.meta, num_blocks=num_blocks, next_id=next_id, file_seq=seq)
        puts["scene"] = meta.to_dict()
        puts["meta"] = dataclasses.replace(store.meta, version=store.version + 1).to_dict()
        if pending and (s.path / "scenes").is_dir():
            fsync_dir(s.path / "scenes")  # the new files' names are durable before the commit
        store.catalog.commit(puts, deletes)
        # Committed: files that only the previous version named can go, unless a reader
        # of an older version (another process) may still read them.
        with s._lock:
            s.meta = meta
            store.refresh()
            older = getattr(store, "older_readers", None)
            keep_old = older is not None and bool(older())
            for b, old in old_files.items():
                if keep_old:
                    break
                if old is not None and old != (pending[b].file):
                    with contextlib.suppress(FileNotFoundError):
                        (s.path / old).unlink()
        self.commits += 1
        return store.version

    def close(self) -> None:
        """Release the lock; writes not committed are discarded (idempotent)."""
        if self._closed:
            return
        s = self.scene
        with s._lock:
            for pend in self._pending.values():
                if pend.file is not None:
                    with contextlib.suppress(FileNotFoundError):
                        (s.path / pend.file).unlink()
            had = bool(self._pending)
            self._pending = {}
            self._closed = True
        try:
            if had:
                s._load()  # back to the committed state
            else:
                s._next_id = s.meta.next_id
        finally:
            s.store._release_lock()
            s._writer = None

    def __enter__(self) -> "SceneWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------
    def _committed_file(self, b: int) -> str | None:
        am = self.scene.store.arrays.get(_block_key(b))
        return am.file if am is not None else None

    def _install(self, b: int, pend: _Pending) -> None:
        """Make ``pend`` block ``b``'s current state (newest seq wins)."""
        s = self.scene
        with s._lock:
            cur = self._pending.get(b)
            if self._latest.get(b, -1) > pend.seq:  # a newer write already landed
                if pend.file is not None:
                    with contextlib.suppress(FileNotFoundError):
                        (s.path / pend.file).unlink()
                return
            if cur is not None and cur.file is not None and cur.file != pend.file:
                with contextlib.suppress(FileNotFoundError):
                    (s.path / cur.file).unlink()  # an uncommitted file nobody will name
            self._pending[b] = pend
            self._latest[b] = pend.seq
            s._counts[b] = pend.count
            if pend.bounds is None:
                s._bounds[b, 0], s._bounds[b, 1] = np.inf, -np.inf
            else:
                s._bounds[b] = pend.bounds
            s._files[b] = pend.file

    def _check_rows(self, b: int, ids, records) -> tuple[np.ndarray, np.ndarray]:
        s = self.scene
        ids = np.asarray(ids)
        records = np.asarray(records)
        w = s.record_width
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise UsageError(f"block {b}: ids must be a 1-D integer array, got {ids.dtype} "
                             f"{ids.shape}")
        if records.shape != (len(ids), w):
            raise UsageError(f"block {b}: records have shape {records.shape}, expected "
                             f"({len(ids)}, {w}) for SH degree {s.sh_degree}")
        if len(ids) > s.block_capacity:
            raise UsageError(f"block {b}: {len(ids)} Gaussians exceed the block capacity "
                             f"{s.block_capacity}: split them over new_block() calls")
        if records.dtype != np.float32:
            records = records.astype(np.float32)
        _check_finite(records, f"block {b}")
        return ids.astype(np.int64, copy=False), records

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"the writer of scene {self.scene.path} is closed: open a new one "
                             "with scene.writer()")


def _check_finite(a: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UsageError(f"{what}: row {row}, column {col} is {a[row, col]}: parameters and "
                         "moments must be finite; fix the source (or the step that produced it)")


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
            "format_version": meta.format_version}


def format_scene_info(info: dict[str, Any]) -> list[str]:
    from ..units import format_size

    return [f"  scene: {info['gaussians']:,} Gaussians, SH degree {info['sh_degree']}, "
            f"{info['blocks']:,} blocks (capacity {info['block_capacity']:,}, mean fill "
            f"{100 * info['block_fill_mean']:.0f}%, {info['empty_blocks']} empty)",
            f"    records {format_size(info['records_bytes'])} ({info['record_bytes']} B each as "
            f"float32; {info['disk_row_bytes']} B on disk, {info['moments']} moments); "
            f"{info['views']} views of {info['width']}x{info['height']}; next id "
            f"{info['next_id']:,}"]


@contextlib.contextmanager
def open_scene(path: str | os.PathLike, *, readonly: bool = False) -> Iterator[Scene]:
    scene = Scene.open(path, readonly=readonly)
    try:
        yield scene
    finally:
        scene.close()
