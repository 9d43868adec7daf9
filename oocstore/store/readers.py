"""Reader registration: which catalog versions live processes still read.

A data file that the current catalog no longer names (superseded by a commit, or left
by a crash) may still be needed by a process that opened the store earlier and reads
from an older catalog snapshot. So every open :class:`~oocstore.store.Store` registers
itself, and unreferenced files are deleted only while no live registration holds a
version older than the current one (the rule :meth:`Store.remove_orphans`, the
post-commit clean-up and ``oocstore gc`` follow).

A registration is a file ``catalog.lmdb/readers/<pid>-<random>.reader`` holding the
version as 20 decimal digits, on which its process keeps a shared ``flock`` while the
store is open. A process that dies loses its lock with it, so a file that can be locked
exclusively belongs to nobody and is removed by whoever finds it. The version is ``0``
while the registering process takes its snapshot (0 blocks every deletion), then the
snapshot's version; :meth:`Store.refresh` raises it after taking a newer snapshot, so a
registration is never newer than what its process may still read.

States of a registration: CREATED (``.tmp``, locked, version 0) --rename--> LIVE
--set_version--> LIVE --close--> gone; LIVE --process dies--> STALE --found by a
scan--> gone.

On a read-only filesystem (or without permission to write ``catalog.lmdb/``) a store
opens unregistered: nobody can delete its files there anyway.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from pathlib import Path

from ..errors import DiskFullError
from .files import DISK_FULL_ERRNOS

log = logging.getLogger(__name__)

READERS_DIR = "readers"
_SUFFIX = ".reader"
_WIDTH = 20
#: A registration file younger than this may be between its creation and its lock.
_TMP_GRACE_S = 60.0


class Registration:
    """This process's claim on the files of one catalog version (see the module doc)."""

    def __init__(self, catalog_dir: Path, *, required: bool = False):
        """Register in ``catalog_dir``. Where that cannot be written — a read-only
        filesystem, no permission, or (unless ``required``, as for a writer) a full disk —
        the store opens unregistered (:attr:`registered` false; a full disk is logged
        as a warning, since a writer may then delete files this reader still needs)."""
        self.dir = Path(catalog_dir) / READERS_DIR
        self.fd = -1
        self.path: Path | None = None
        self.version = 0
        fd, tmp = -1, None
        try:
            self.dir.mkdir(exist_ok=True)
            stem = f"{os.getpid()}-{os.urandom(6).hex()}"
            tmp = self.dir / f".{stem}.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.pwrite(fd, b"0" * _WIDTH, 0)
            final = self.dir / f"{stem}{_SUFFIX}"
            os.rename(tmp, final)  # visible only once locked
        except OSError as err:
            if fd >= 0:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if err.errno in DISK_FULL_ERRNOS and not required:
                log.warning("store at %s opened without a reader registration: %s is full "
                            "(%s); a writer may delete files of this version meanwhile",
                            catalog_dir.parent, self.dir, os.strerror(err.errno))
                return
            if err.errno in DISK_FULL_ERRNOS:
                raise DiskFullError(err.errno, f"disk full while registering a reader in "
                                    f"{self.dir}: free space on that filesystem and run the "
                                    "command again; the store was left as it was") from err
            if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            log.debug("store at %s opened unregistered (%s)", catalog_dir, err)
            return
        self.fd, self.path = fd, final

    @property
    def registered(self) -> bool:
        return self.fd >= 0

    def set_version(self, version: int) -> None:
        if self.fd >= 0 and version != self.version:
            os.pwrite(self.fd, f"{int(version):0{_WIDTH}d}".encode(), 0)
            self.version = int(version)

    def close(self) -> None:
        if self.fd < 0:
            return
        fd, path, self.fd, self.path = self.fd, self.path, -1, None
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the lock


def live_versions(catalog_dir: Path, *, remove_stale: bool = True) -> tuple[list[int], int]:
    """``(versions held by live registrations, stale registrations found)``; stale ones
    (their process died) are removed unless ``remove_stale`` is false."""
    root = Path(catalog_dir) / READERS_DIR
    versions: list[int] = []
    stale = 0
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return versions, 0
    for name in names:
        if not (name.endswith(_SUFFIX) or name.endswith(".tmp")):
            continue
        p = root / name
        try:
            fd = os.open(p, os.O_RDWR)
        except FileNotFoundError:
            continue  # closed meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held: a live reader
                raw = os.pread(fd, _WIDTH, 0)
                try:
                    versions.append(int(raw))
                except ValueError:
                    versions.append(0)  # being written: treat as holding everything
                continue
            if name.endswith(".tmp") and time.time() - os.fstat(fd).st_mtime < _TMP_GRACE_S:
                continue  # being created right now (locked a moment later)
            stale += 1
            if remove_stale:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)
    return versions, stale
