"""The scene's log-structured writer (see :mod:`oocstore.gs.scene` for the protocol).

Besides blocks, a writer stages whole arrays and catalog entries of the scene
(:meth:`SceneWriter.write_array`, :meth:`SceneWriter.put`: the level-of-detail node
table after a densification rebuilt the hierarchy) that the same :meth:`commit` makes
visible with the blocks, or :meth:`close` discards.

States: OPEN --write_block/new_block/free_block--> DIRTY --commit--> OPEN;
DIRTY --commit fails (disk full, I/O error)--> DIRTY (nothing committed; the same writes
can be committed again); DIRTY --close (no commit)--> CLOSED (the uncommitted files are removed and the scene
object returns to the committed state); OPEN --close--> CLOSED.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import UsageError
from ..store import Store
from ..store.files import ArrayFileWriter, fsync_dir, raise_disk_error
from ..store.format import ArrayMeta, CHUNK_BYTES

LOD_CHUNK_BYTES = 64 << 10
from . import blocks
from .blocks import block_bounds_of, check_finite


class SceneState(Protocol):
    """What a writer reads and updates of its scene (:class:`oocstore.gs.scene.Scene`,
    which creates writers; described here so that the writer does not import it): the
    store and the per-block tables, under the scene's lock."""

    path: Path
    store: Store
    meta: Any  # SceneMeta
    _lock: Any  # threading.RLock
    _writer: Any  # the open SceneWriter, or None
    _next_id: int
    _row: np.dtype
    _counts: np.ndarray
    _bounds: np.ndarray
    _files: list
    _sums: list

    @property
    def sh_degree(self) -> int: ...

    @property
    def record_width(self) -> int: ...

    @property
    def block_capacity(self) -> int: ...

    def _load(self) -> None: ...

    def _load_lod(self) -> None: ...

    def _check_block(self, b) -> int: ...

BLOCK_PREFIX = "scene/block/"


def _chunk_bytes(s) -> int:
    """Checksum chunk of a block file: 4 MiB, or 64 KiB in a scene with a level-of-detail
    hierarchy (format version 2), whose prefix reads check the chunks they read."""
    return LOD_CHUNK_BYTES if getattr(s.meta, "format_version", 1) >= 2 else CHUNK_BYTES


def block_key(b: int) -> str:
    return f"{BLOCK_PREFIX}{b:08d}"


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

    def __init__(self, scene: SceneState):
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
        self._arrays: dict[str, tuple[ArrayMeta, list[int]]] = {}  # staged whole arrays
        self._puts: dict[str, Any] = {}  # staged catalog entries
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
        rows = blocks.encode_rows(ids, records, s._row)
        self._write_rows(b, seq, rows, block_bounds_of(records))

    def _reserve_seqs(self, n: int) -> int:
        """Take ``n`` consecutive file sequence numbers; returns the first."""
        with self.scene._lock:
            first = self._seq + 1
            self._seq += n
        return first

    def _write_fresh(self, b: int, ids: np.ndarray, params: np.ndarray, seq: int) -> None:
        """Ingest's path: checked ``params`` [n, P] with zero moments, written without
        building float32 records first, as file number ``seq`` (from
        :meth:`_reserve_seqs`, so that names do not depend on thread timing)."""
        s = self.scene
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
        fw = ArrayFileWriter(s.path / rel, chunk_bytes=_chunk_bytes(s))
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
            s._sums.append(None)
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

    def write_array(self, name: str, data: np.ndarray) -> None:
        """Stage the whole array ``name`` (a new one, or replacing the scene's) for the
        next :meth:`commit`; its file is written now, the catalog names it only then."""
        self._check_open()
        if name.startswith(BLOCK_PREFIX):
            raise UsageError(f"array {name!r}: block arrays are written with write_block")
        s = self.scene
        data = np.ascontiguousarray(data)
        with s._lock:
            self._seq += 1
            seq = self._seq
        rel = f"arrays/{name.replace('/', '-')}.{s.store.version + 1}.{seq}.bin"
        fw = ArrayFileWriter(s.path / rel, chunk_bytes=CHUNK_BYTES)
        try:
            fw.write(data)
            fw.finish()
        except BaseException:
            fw.abort()
            s.store.remove_data_file(s.path / rel)
            raise
        am = ArrayMeta(name=name, dtype=data.dtype.name, shape=tuple(data.shape), file=rel,
                       chunk_bytes=CHUNK_BYTES, version=s.store.version + 1)
        with s._lock:
            old = self._arrays.pop(name, None)
            self._arrays[name] = (am, list(fw.checksums))
        if old is not None:  # staged twice: the first file is nobody's
            s.store.remove_data_file(s.path / old[0].file)

    def put(self, key: str, value: Any) -> None:
        """Stage catalog entry ``key`` of the scene (not a block's, an array's or the
        scene's own record) for the next :meth:`commit`."""
        self._check_open()
        if key in ("scene", "meta") or key.startswith((BLOCK_PREFIX, "array/", "sums/")):
            raise UsageError(f"catalog key {key!r} is managed by the scene writer")
        with self.scene._lock:
            self._puts[key] = value

    def commit(self) -> int:
        """Make every write so far durable and visible to other readers, atomically.
        Returns the new store version."""
        self._check_open()
        s = self.scene
        store = s.store
        with s._lock:
            pending = dict(self._pending)
            self._pending = {}
            staged, staged_puts = dict(self._arrays), dict(self._puts)
            self._arrays, self._puts = {}, {}
            old_arrays = [am.file for name, am in store.arrays.items() if name in staged]
            old_files = {b: self._committed_file(b) for b in pending}
            num_blocks = len(s._counts)
            next_id = s._next_id
            seq = self._seq
        puts: dict[str, Any] = {}
        deletes: set[str] = set()
        for b, pend in pending.items():
            name = block_key(b)
            if pend.file is None or pend.count == 0:
                puts[name] = {"count": 0, "lo": None, "hi": None}
                deletes |= {f"array/{name}", f"sums/{name}"}
            else:
                puts[name] = {"count": pend.count, "lo": pend.bounds[0].tolist(),
                              "hi": pend.bounds[1].tolist()}
                am = ArrayMeta(name=name, dtype="uint8",
                               shape=(pend.count, s._row.itemsize), file=pend.file,
                               chunk_bytes=_chunk_bytes(s), version=store.version + 1)
                puts[f"array/{name}"] = am.to_dict()
                puts[f"sums/{name}"] = pend.sums
        for name, (am, sums) in staged.items():
            puts[f"array/{name}"] = dataclasses.replace(am, version=store.version + 1).to_dict()
            puts[f"sums/{name}"] = sums
        puts.update(staged_puts)
        meta = dataclasses.replace(s.meta, num_blocks=num_blocks, next_id=next_id, file_seq=seq)
        puts["scene"] = meta.to_dict()
        puts["meta"] = dataclasses.replace(store.meta, version=store.version + 1).to_dict()
        try:
            for sub, due in (("scenes", pending), ("arrays", staged)):
                if due and (s.path / sub).is_dir():
                    try:  # the new files' names are durable before the commit
                        fsync_dir(s.path / sub)
                    except OSError as err:
                        raise_disk_error(err, s.path / sub)
            store.catalog.commit(puts, deletes)
        except BaseException:
            self._restore(pending, staged, staged_puts)
            raise
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
                    s.store.remove_data_file(s.path / old)
            for old in old_arrays:
                if not keep_old:
                    s.store.remove_data_file(s.path / old)
            if staged or staged_puts:
                s._load_lod()  # the hierarchy: read again from this commit
        self.commits += 1
        return store.version

    def _restore(self, pending: dict[int, _Pending], staged: dict, staged_puts: dict) -> None:
        """A commit failed: its writes are uncommitted again (a later commit may retry
        them; :meth:`close` removes their files), unless a newer write replaced them."""
        s = self.scene
        with s._lock:
            for name, st in staged.items():
                if name in self._arrays:
                    s.store.remove_data_file(s.path / st[0].file)
                else:
                    self._arrays[name] = st
            self._puts = dict(staged_puts, **self._puts)
            for b, pend in pending.items():
                newer = self._pending.get(b)
                if newer is None:
                    self._pending[b] = pend
                elif pend.file is not None and pend.file != newer.file:
                    s.store.remove_data_file(s.path / pend.file)

    def close(self) -> None:
        """Release the lock; writes not committed are discarded (idempotent)."""
        if self._closed:
            return
        s = self.scene
        with s._lock:
            for pend in self._pending.values():
                if pend.file is not None:
                    s.store.remove_data_file(s.path / pend.file)
            for am, _ in self._arrays.values():
                s.store.remove_data_file(s.path / am.file)
            had = bool(self._pending) or bool(self._arrays) or bool(self._puts)
            self._pending, self._arrays, self._puts = {}, {}, {}
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
        am = self.scene.store.arrays.get(block_key(b))
        return am.file if am is not None else None

    def _install(self, b: int, pend: _Pending) -> None:
        """Make ``pend`` block ``b``'s current state (newest seq wins)."""
        s = self.scene
        with s._lock:
            cur = self._pending.get(b)
            if self._latest.get(b, -1) > pend.seq:  # a newer write already landed
                if pend.file is not None:
                    s.store.remove_data_file(s.path / pend.file)
                return
            if cur is not None and cur.file is not None and cur.file != pend.file:
                s.store.remove_data_file(s.path / cur.file)  # an uncommitted file nobody will name
            self._pending[b] = pend
            self._latest[b] = pend.seq
            s._counts[b] = pend.count
            if pend.bounds is None:
                s._bounds[b, 0], s._bounds[b, 1] = np.inf, -np.inf
            else:
                s._bounds[b] = pend.bounds
            s._files[b] = pend.file
            s._sums[b] = (_chunk_bytes(s), pend.sums) if pend.file is not None else None

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
        check_finite(records, f"block {b}")
        return ids.astype(np.int64, copy=False), records

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"the writer of scene {self.scene.path} is closed: open a new one "
                             "with scene.writer()")
