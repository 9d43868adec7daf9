"""The :class:`Store`: open a store directory, read its arrays, mutate it atomically.

Commit protocol (the one every layer uses — ingest, plans, packs, checkpoints):

1. Take the writer lock (``catalog.lmdb/writer.lock``, ``flock``); remove orphans, i.e.
   ``*.bin`` / ``*.tmp`` files under the data directories that no catalog entry names
   (left by a crash between a rename and the commit).
2. Write each new data file as ``<final>.tmp``, fsync it, rename it to ``<final>``.
   Final names carry the new store version (a counter), so a new version never
   overwrites a file that the committed version references.
3. fsync the data directories, then commit one LMDB write transaction that adds the new
   entries and bumps ``meta.version``. This is the commit point.
4. Remove files that only the superseded entries referenced — unless a live reader
   registered an older version (:mod:`.readers`): then they stay until ``oocstore gc``
   or a later writer finds no such reader.

A crash before step 3 leaves the previous version intact (its files were not touched);
a crash after it leaves the new one. New stores are built in a hidden sibling directory
``.<name>.<random>.partial`` under a lock on the path (``.<name>.lock``) and renamed
into place once complete (an existing store is swapped
out atomically with ``renameat2(RENAME_EXCHANGE)`` where Linux offers it), so a
half-built store is never visible under its name. ``docs/FORMAT.md`` tabulates what a
crash at each step leaves behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import (FormatError, StoreExistsError, StoreLockedError,
                      StoreNotFoundError, StoreReplacedError, UsageError)
from .catalog import CATALOG_DIR, Catalog
from .files import ArrayFileWriter, fsync_dir
from .paths import check_no_links, remove_stale_staging, remove_tree, target_lock, walk_files
from .readers import Registration, live_versions
from .format import (CHUNK_BYTES, DATA_DIRS, DTYPES, ArrayMeta, GraphMeta,  # noqa: F401
                     StoreMeta, check_array_name)

log = logging.getLogger(__name__)



def _check_splits(value: Any) -> dict[str, str]:
    """The ``splits`` entry: split name -> array name, both plain strings."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k.isprintable() and k and "/" not in k and isinstance(v, str)
            for k, v in value.items()):
        raise FormatError(f"catalog entry 'splits' is {value!r:.80}, expected an object of "
                          "split names to array names: the catalog is damaged or hostile; "
                          "restore the store from a copy or re-create it")
    for v in value.values():
        check_array_name(v, "splits")
    return dict(value)


def _file_name(name: str, version: int) -> str:
    safe = name.replace("/", "-")
    if not safe or not all(c.isalnum() or c in "-_." for c in safe):
        raise UsageError(f"array name {name!r} must use letters, digits, '-', '_', '.' and '/'")
    return f"{safe}.{version}.bin"


class Store:
    """A store directory opened read-only (default) or for writing.

    Reading state (arrays, graph, splits) comes from one catalog snapshot taken at open;
    :meth:`refresh` takes a new one.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = True, _create: bool = False):
        self.path = Path(path)
        if not _create and not self.path.is_dir():
            what = "is not a directory" if self.path.exists() else "does not exist"
            raise StoreNotFoundError(f"store {self.path} {what}: create it with "
                                     "`oocstore ingest ...` or check the path")
        self.readonly = readonly
        if not readonly:
            check_no_links(self.path)
        self._lock_fd: int | None = None
        self._lock_held = False  # writer_lock() holds it across transactions
        self._reader: Registration | None = None
        self._dir_fd = -1
        # The directory this object reads: data files are opened relative to it, so a
        # store replaced meanwhile (``ingest --overwrite`` swaps directories) is noticed
        # instead of its successor's files being read under the same names.
        self._dir_fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        st = os.fstat(self._dir_fd)
        self._dir_id = (st.st_dev, st.st_ino)
        try:
            self.catalog = Catalog(self.path, readonly=readonly, create=_create)
        except BaseException:
            os.close(self._dir_fd)
            raise
        try:
            # Registered (version 0: holds everything) before the snapshot is taken.
            self._reader = Registration(self.path / CATALOG_DIR, required=not readonly)
            self.refresh()
        except BaseException:
            self.close()
            raise

    # -- reading -------------------------------------------------------------------
    def refresh(self) -> None:
        """Take a new catalog snapshot: every entry from one LMDB read transaction, so the
        version, the arrays and every other entry a reader sees belong to one commit. A
        read-only store answers :meth:`get` / :meth:`items` from this snapshot too (a
        writer committing meanwhile changes nothing it sees until the next refresh); a
        writable store, the only writer, reads its entries live."""
        self.check_not_replaced()
        snap = dict(self.catalog.items(""))
        self._snap: dict[str, Any] | None = snap if self.readonly else None
        raw_meta = snap.get("meta")
        if raw_meta is None:
            self.meta = StoreMeta()
        else:
            self.meta = StoreMeta.from_dict(raw_meta)
        self._arrays = {k[len("array/"):]: ArrayMeta.from_dict(v, key=k)
                        for k, v in snap.items() if k.startswith("array/")}
        g = snap.get("graph")
        self.graph = GraphMeta.from_dict(g) if g is not None else None
        self._splits: dict[str, str] = _check_splits(snap.get("splits", {}))
        if self._reader is not None:
            self._reader.set_version(self.meta.version)

    @property
    def version(self) -> int:
        return self.meta.version

    @property
    def arrays(self) -> dict[str, ArrayMeta]:
        return dict(self._arrays)

    def has_array(self, name: str) -> bool:
        return name in self._arrays

    def array_meta(self, name: str) -> ArrayMeta:
        try:
            return self._arrays[name]
        except KeyError:
            raise StoreNotFoundError(
                f"store {self.path} has no array {name!r} (it has: "
                f"{', '.join(sorted(self._arrays)) or 'none'})") from None

    def check_not_replaced(self) -> None:
        """Raise :class:`StoreReplacedError` if ``self.path`` is no longer the directory
        this object opened (``ingest --overwrite`` replaced the store): its snapshot names
        files of the old store, and the new store may hold files of the same names."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._dir_id
        except FileNotFoundError:
            same = False
        if not same:
            raise StoreReplacedError(
                f"store {self.path} was replaced (e.g. by `oocstore ingest --overwrite`) after "
                f"this reader opened it (at version {getattr(self, 'meta', StoreMeta()).version}): "
                "the data it read stays "
                "valid, but it cannot read more of that version; open the store again")

    def file_path(self, meta: ArrayMeta) -> Path:
        """The path of ``meta``'s data file, for a caller that opens it now (checked:
        the store was not replaced since it was opened). :meth:`open_file` is exact even
        against a replacement racing with the open; prefer it."""
        self.check_not_replaced()
        return self.path / meta.file

    def open_file(self, meta: ArrayMeta, flags: int = os.O_RDONLY) -> int:
        """An fd of ``meta``'s data file opened in the directory this object opened —
        the file of this object's version even if the store was replaced meanwhile, or
        :class:`StoreReplacedError` once that version's files are gone."""
        try:
            return os.open(meta.file, flags, dir_fd=self._dir_fd)
        except FileNotFoundError:
            self.check_not_replaced()
            raise FormatError(f"array {meta.name!r}: file {self.path / meta.file} is missing: "
                              "run `oocstore verify` and restore or re-create the store") from None

    def array(self, name: str) -> np.ndarray:
        """A read-only memory map of array ``name`` (zero-copy; pages load on touch)."""
        meta = self.array_meta(name)
        if meta.nbytes == 0:
            return np.zeros(meta.shape, dtype=meta.np_dtype)
        path = self.path / meta.file
        with open(self.open_file(meta), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < meta.offset + meta.nbytes:
                raise FormatError(f"array {name!r}: file {path} holds {size} bytes but the "
                                  f"catalog needs {meta.offset + meta.nbytes}: the file is "
                                  "truncated; run `oocstore verify` and restore or re-create the "
                                  "store")
            return np.memmap(f, dtype=meta.np_dtype, mode="r", offset=meta.offset,
                             shape=meta.shape)

    def slice_reader(self, name: str) -> "SliceReader":
        """Positional reads of rows of array ``name`` into fresh arrays (``pread``).

        For hot paths: unlike :meth:`array`'s memory map, pages read this way are not
        mapped into the process, so they never count towards its resident memory (the
        budgets stay honest however much of a plan an epoch touches)."""
        meta = self.array_meta(name)
        return SliceReader(self.path / meta.file, meta, fd=self.open_file(meta))

    def checksums(self, name: str) -> list[int]:
        """The CRC-32 of each chunk of array ``name`` (checked: a list of 32-bit values)."""
        sums = self.get(f"sums/{name}", [])
        if not isinstance(sums, list) or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 2**32 for c in sums):
            raise FormatError(f"catalog entry 'sums/{name}' is {sums!r:.60}, not a list of "
                              "CRC-32 values: the catalog is damaged or hostile; restore the "
                              "store from a copy or re-create it")
        return list(sums)

    def get(self, key: str, default: Any = None) -> Any:
        """A raw catalog value (for layers that keep their own entries)."""
        snap = getattr(self, "_snap", None)
        if snap is not None:
            return snap.get(key, default)
        return self.catalog.get(key, default)

    def items(self, prefix: str) -> Iterator[tuple[str, Any]]:
        snap = getattr(self, "_snap", None)
        if snap is not None:
            return iter([(k, v) for k, v in snap.items() if k.startswith(prefix)])
        return self.catalog.items(prefix)

    # -- what a model needs to know -------------------------------------------------
    @property
    def num_nodes(self) -> int:
        """Rows of ``features`` (one per node)."""
        return int(self.array_meta("features").shape[0])

    @property
    def feature_dim(self) -> int:
        """Columns of ``features``: a model's input width."""
        shape = self.array_meta("features").shape
        return int(shape[1]) if len(shape) > 1 else 1

    @property
    def num_classes(self) -> int:
        """``max(labels) + 1``: a classifier's output width (the rule ``oocstore train``
        sizes its model by). Labels are read once in 1 Mi-row chunks with ``pread``
        (nothing stays mapped) and the answer is kept for this snapshot."""
        meta = self.array_meta("labels")
        cached = getattr(self, "_num_classes", None)
        if cached is not None and cached[0] == meta.file:
            return cached[1]
        top = -1
        reader = self.slice_reader("labels")
        try:
            for lo in range(0, meta.shape[0], 1 << 20):
                chunk = reader.read(lo, min(meta.shape[0], lo + (1 << 20)))
                if chunk.size:
                    top = max(top, int(chunk.max()))
        finally:
            reader.close()
        classes = top + 1 if top >= 0 else 1
        self._num_classes = (meta.file, classes)
        return classes

    @property
    def splits(self) -> dict[str, str]:
        return dict(self._splits)

    def split(self, which: str) -> np.ndarray:
        if which not in self._splits:
            raise StoreNotFoundError(
                f"store {self.path} has no {which!r} split (it has: "
                f"{', '.join(sorted(self._splits)) or 'none'}): re-ingest with --split")
        return np.asarray(self.array(self._splits[which]))

    def csc(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr, indices)`` memory maps of the graph in CSC form."""
        if self.graph is None:
            raise StoreNotFoundError(f"store {self.path} has no graph")
        return self.array(self.graph.indptr), self.array(self.graph.indices)

    # -- writing -------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator["Transaction"]:
        """Mutate the store atomically: everything inside commits together or not at all."""
        if self.readonly:
            raise UsageError(f"store {self.path} was opened read-only; open it with "
                             "Store(path, readonly=False) to change it")
        held = self._lock_held  # inside writer_lock(): the lock stays with it
        if not held:
            self._acquire_lock()
        try:
            # Another writer may have committed since this object took its snapshot:
            # orphans and the new version must be judged against the latest catalog,
            # or its freshly committed files would look like orphans.
            self.refresh()
            txn = Transaction(self)
        except BaseException:
            if not held:
                self._release_lock()
            raise
        try:
            self.remove_orphans()
            yield txn
            txn._commit()
        except BaseException:
            txn._abort()
            raise
        finally:
            if not held:
                self._release_lock()
        self.refresh()
        txn._collect_superseded()

    @contextlib.contextmanager
    def writer_lock(self, *, wait: float = 0.0) -> Iterator["Store"]:
        """Hold the writer lock across several transactions, so that what is checked
        before them still holds when they commit: no other process commits meanwhile,
        and the snapshot is refreshed once the lock is taken (entries and arrays then
        come from the latest commit). Transactions inside neither take nor release it.
        ``wait``: seconds to wait for another writer before :class:`StoreLockedError`."""
        if self.readonly:
            raise UsageError(f"store {self.path} was opened read-only; open it with "
                             "Store(path, readonly=False) to change it")
        if self._lock_fd is not None:
            raise UsageError(f"store {self.path}: the writer lock is already held here")
        self._acquire_lock(wait=wait)
        self._lock_held = True
        try:
            self.refresh()
            yield self
        finally:
            self._lock_held = False
            self._release_lock()

    def _acquire_lock(self, wait: float = 0.0) -> None:
        fd = os.open(self.path / CATALOG_DIR / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as err:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                raise StoreLockedError(
                    f"store {self.path} is being written by another process: wait for it to "
                    "finish, then run the command again") from err
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def referenced_files(self) -> set[str]:
        return {m.file for m in self._arrays.values()}

    def unreferenced_files(self) -> list[Path]:
        """``*.bin`` / ``*.tmp`` files under the data directories that the catalog
        snapshot does not name (superseded, or left by a crash).

        Only regular files are listed, found without following any symbolic link: a
        link (to a file or a directory) is not the store's, and whatever it points to is
        never listed, so never deleted."""
        keep = self.referenced_files()
        out = []
        for d in DATA_DIRS:
            for p in walk_files(self.path / d):
                rel = p.relative_to(self.path).as_posix()
                if p.suffix in (".bin", ".tmp") and rel not in keep:
                    out.append(p)
        return sorted(out)

    def remove_data_file(self, p: Path) -> bool:
        """Delete the data file ``p`` (True) unless it is already gone (False).

        Every deletion of a data file goes through here. ``p`` must lie in one of
        :data:`DATA_DIRS` of this store with no symbolic link on the way (checked against
        the real path just before the unlink): anything else raises
        :class:`FormatError`, so no catalog value or planted link can make a writer
        delete the catalog or a file outside the store."""
        p = Path(p)
        try:
            parts = p.relative_to(self.path).parts
        except ValueError:
            parts = ()
        real_root = os.path.realpath(self.path)
        ok = (len(parts) >= 2 and parts[0] in DATA_DIRS and ".." not in parts
              and os.path.realpath(p.parent) == os.path.join(real_root, *parts[:-1]))
        if not ok:
            raise FormatError(f"refusing to delete {p}: it lies outside the store's data "
                              f"directories ({', '.join(DATA_DIRS)} of {self.path}) or is "
                              "reached through a symbolic link; the catalog may be hostile or "
                              "damaged, or a link was planted in the store")
        try:
            os.unlink(p)
        except FileNotFoundError:
            return False
        return True

    def older_readers(self) -> list[int]:
        """Versions older than this snapshot's that live readers (other ``Store``
        objects, in any process) still hold; stale registrations are removed."""
        versions, _ = live_versions(self.path / CATALOG_DIR)
        mine = self._reader.version if self._reader is not None else None
        out = [v for v in versions if v < self.version]
        if mine is not None and mine < self.version and mine in out:
            out.remove(mine)  # this object's own registration lags its snapshot
        return out

    def remove_orphans(self) -> list[Path]:
        """Delete data files that no committed entry names (crash leftovers and
        superseded files). ``*.tmp`` files always go (only a crashed writer leaves them;
        call this under the writer lock); ``*.bin`` files stay while a live reader holds
        an older version, since its snapshot may name them."""
        candidates = self.unreferenced_files()
        keep_bins = bool(candidates) and bool(self.older_readers())
        removed = []
        for p in candidates:
            if p.suffix == ".bin" and keep_bins:
                continue
            if self.remove_data_file(p):
                removed.append(p)
        if removed:
            log.info("removed %d orphaned file(s) from %s", len(removed), self.path)
        if keep_bins:
            log.info("kept unreferenced files in %s: a reader holds an older version "
                     "(`oocstore gc` removes them once it is gone)", self.path)
        return removed

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        self._release_lock()
        if self._reader is not None:
            self._reader.close()
        self.catalog.close()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, version={self.version})"

    # -- creation ------------------------------------------------------------------
    @staticmethod
    def check_new_path(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Refuse early (before any work) an output path that :meth:`create` would refuse."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreExistsError(f"output {path} already exists: choose another path or "
                                   "pass overwrite=True to replace it")
        if path.exists() and not (path / CATALOG_DIR).is_dir() and (
                not path.is_dir() or any(path.iterdir())):
            raise StoreExistsError(f"output {path} exists and is not an oocstore store: "
                                   "refusing to replace it; choose another path")
        if not path.parent.is_dir():
            raise StoreNotFoundError(f"output {path}: directory {path.parent} does not exist; "
                                     "create it first")
        return path

    @classmethod
    @contextlib.contextmanager
    def create(cls, path: str | os.PathLike, *, overwrite: bool = False) -> Iterator["Store"]:
        """Build a new store at ``path``; it appears there only if the block succeeds.

        Under an exclusive lock on ``path`` (:func:`~.paths.target_lock`: a second ingest to the
        same path, or any writer of the store being replaced, is refused with
        :class:`StoreLockedError`), the store is built in a staging directory
        ``.<name>.<random>.partial`` beside ``path`` and renamed into place at the end;
        with ``overwrite`` an existing store is replaced only then.
        """
        path = Path(path)
        with target_lock(path):
            path = cls.check_new_path(path, overwrite=overwrite)
            remove_stale_staging(path)
            staging = path.with_name(f".{path.name}.{os.urandom(6).hex()}.partial")
            staging.mkdir()
            try:
                store = cls(staging, readonly=False, _create=True)
                try:
                    yield store
                finally:
                    store.close()
                _fsync_tree(staging)
                _install(staging, path)
            except BaseException:
                remove_tree(staging)
                raise


class SliceReader:
    """Rows ``[start, stop)`` of one array via ``os.pread`` (see :meth:`Store.slice_reader`)."""

    def __init__(self, path: Path, meta: ArrayMeta, *, fd: int | None = None):
        self.meta = meta
        self.path = path
        self.fd = os.open(path, os.O_RDONLY) if fd is None else fd
        self.row_bytes = meta.row_bytes

    def read(self, start: int, stop: int) -> np.ndarray:
        n = max(0, stop - start)
        out = np.empty((n, *self.meta.shape[1:]), dtype=self.meta.np_dtype)
        if n:
            view = memoryview(out.reshape(-1).view(np.uint8))
            got = os.preadv(self.fd, [view], self.meta.offset + start * self.row_bytes)
            while got < len(view):
                more = os.preadv(self.fd, [view[got:]],
                                 self.meta.offset + start * self.row_bytes + got)
                if more == 0:
                    raise FormatError(f"array {self.meta.name!r}: file {self.path} ends before "
                                      f"row {stop}: it is truncated; run `oocstore verify`")
                got += more
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


class Transaction:
    """Collects new arrays and catalog entries; committed by :meth:`Store.transaction`."""

    def __init__(self, store: Store):
        self.store = store
        self.new_version = store.version + 1
        self._writers: list[tuple[ArrayFileWriter, ArrayMeta | None]] = []
        self._puts: dict[str, Any] = {}
        self._deletes: set[str] = set()
        self._superseded: list[Path] = []
        self._meta_source: dict[str, Any] | None = None
        self._names: dict[str, str] = {}  # file (relative) -> array name, this transaction

    def array_writer(self, name: str, dtype, row_shape: tuple[int, ...] = (),
                     *, chunk_bytes: int = CHUNK_BYTES, subdir: str = "arrays") -> "ArrayWriter":
        """A streaming writer for a new (or replacing) array ``name``, stored under
        ``subdir`` (one of :data:`DATA_DIRS`) as ``<name>.<version>.bin``."""
        if subdir.split("/")[0] not in DATA_DIRS or ".." in subdir.split("/"):
            raise UsageError(f"subdir {subdir!r} is not one of {DATA_DIRS}")
        np_dtype = np.dtype(dtype)
        if np_dtype.name not in DTYPES:
            raise UsageError(f"array {name!r}: dtype {np_dtype.name!r} cannot be stored; use one "
                             f"of {', '.join(sorted(DTYPES))}")
        if not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise UsageError(f"array {name!r}: chunk_bytes {chunk_bytes!r} must be a positive int")
        rel = f"{subdir}/{_file_name(name, self.new_version)}"
        # '/' in a name becomes '-' in the file name, so "a/b" and "a-b" would share a file.
        if self._names.get(rel, name) != name:
            raise UsageError(f"arrays {self._names[rel]!r} and {name!r} would both be "
                             f"stored in {rel}: rename one of them")
        self._names[rel] = name
        fw = ArrayFileWriter(self.store.path / rel, chunk_bytes=chunk_bytes)
        return ArrayWriter(self, name, np_dtype, tuple(row_shape), rel, fw)

    def write_array(self, name: str, data: np.ndarray, *, subdir: str = "arrays") -> ArrayMeta:
        """Write a whole in-memory array in one call."""
        data = np.ascontiguousarray(data)
        w = self.array_writer(name, data.dtype, data.shape[1:], subdir=subdir)
        w.append(data)
        return w.close()

    def put(self, key: str, value: Any) -> None:
        self._puts[key] = value

    def delete_array(self, name: str) -> None:
        if name in self.store._arrays:
            self._deletes |= {f"array/{name}", f"sums/{name}"}
            self._superseded.append(self.store.file_path(self.store._arrays[name]))

    def set_source(self, source: dict[str, Any]) -> None:
        self._meta_source = source

    def _register(self, fw: ArrayFileWriter, meta: ArrayMeta) -> None:
        old = self.store._arrays.get(meta.name)
        if old is not None and old.file != meta.file:
            self._superseded.append(self.store.file_path(old))
        self._deletes.discard(f"array/{meta.name}")
        self._deletes.discard(f"sums/{meta.name}")
        self._puts[f"array/{meta.name}"] = meta.to_dict()
        self._puts[f"sums/{meta.name}"] = fw.checksums

    def _commit(self) -> None:
        for fw, meta in self._writers:
            if meta is None:
                raise FormatError(f"array writer for {fw.final_path} was not closed before commit")
        dirs = {fw.final_path.parent for fw, _ in self._writers}
        for d in sorted(dirs):
            fsync_dir(d)
        fsync_dir(self.store.path)
        meta = self.store.meta
        source = self._meta_source if self._meta_source is not None else meta.source
        self._puts["meta"] = StoreMeta(format_version=meta.format_version,
                                       version=self.new_version, source=source).to_dict()
        self.store.catalog.commit(self._puts, self._deletes)

    def _abort(self) -> None:
        for fw, _ in self._writers:
            fw.abort()
            try:
                self.store.remove_data_file(fw.final_path)
            except FormatError as err:  # keep the error that aborted the transaction
                log.warning("%s", err)

    def delete(self, key: str) -> None:
        """Delete catalog entry ``key`` (not an array: use :meth:`delete_array`)."""
        if key.startswith(("array/", "sums/")) or key == "meta":
            raise UsageError(f"catalog key {key!r} is managed by the store: use delete_array")
        self._puts.pop(key, None)
        self._deletes.add(key)

    def _collect_superseded(self) -> None:
        referenced = self.store.referenced_files()
        if self._superseded and self.store.older_readers():
            log.info("kept %d superseded file(s) in %s for readers of older versions",
                     len(self._superseded), self.store.path)
            return
        for p in self._superseded:
            if p.relative_to(self.store.path).as_posix() not in referenced:
                self.store.remove_data_file(p)


class ArrayWriter:
    """Streams rows of one array to disk. ``append`` chunks, then ``close``."""

    def __init__(self, txn: Transaction, name: str, dtype: np.dtype, row_shape: tuple[int, ...],
                 rel: str, fw: ArrayFileWriter):
        self.txn, self.name, self.dtype, self.row_shape, self.rel, self.fw = (
            txn, name, dtype, row_shape, rel, fw)
        self.rows = 0
        self._slot = len(txn._writers)
        txn._writers.append((fw, None))

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.shape[1:] != self.row_shape:
            raise FormatError(f"array {self.name!r}: appended rows of shape {rows.shape[1:]}, "
                              f"expected {self.row_shape}")
        if rows.dtype != self.dtype:
            rows = rows.astype(self.dtype)
        self.fw.write(np.ascontiguousarray(rows))
        self.rows += rows.shape[0]

    def close(self) -> ArrayMeta:
        self.fw.finish()
        meta = ArrayMeta(name=self.name, dtype=self.dtype.name, shape=(self.rows, *self.row_shape),
                         file=self.rel, offset=0, chunk_bytes=self.fw.chunk_bytes,
                         version=self.txn.new_version)
        self.txn._writers[self._slot] = (self.fw, meta)
        self.txn._register(self.fw, meta)
        return meta


def _fsync_tree(root: Path) -> None:
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".lock") or os.path.islink(os.path.join(d, f)):
                continue
            fd = os.open(os.path.join(d, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(d))


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the platform or filesystem cannot."""
    global _renameat2
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


_renameat2 = None


def _install(staging: Path, path: Path) -> None:
    """Move a finished store from ``staging`` to ``path`` (replacing an old one).

    Replacing swaps the two directories atomically where the OS can (Linux), so at
    every instant ``path`` holds either the old or the new store; elsewhere two renames
    leave a short window in which ``path`` is missing and the old store sits at
    ``.<name>.old``.
    """
    parent = path.parent
    if not path.exists():
        os.rename(staging, path)
    elif _rename_exchange(staging, path):
        fsync_dir(parent)
        remove_tree(staging)  # now holds the old store
    else:
        old = path.with_name(f".{path.name}.old")
        remove_tree(old)
        os.rename(path, old)
        os.rename(staging, path)
        fsync_dir(parent)
        remove_tree(old)
    fsync_dir(parent)


def open_store(path: str | os.PathLike, *, readonly: bool = True) -> Store:
    return Store(path, readonly=readonly)
