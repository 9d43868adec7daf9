"""Store paths under adversarial use: the lock that serialises creating a store at one
path, link-free walks and removals, and the check that a store's directories are not
symbolic links.

A writer deletes files only inside the store's own data directories, so nothing it
lists or removes may be reached through a link (a planted ``STORE/scenes -> ~``
would otherwise turn ``gc`` into ``rm ~/**/*.bin``); these helpers never follow one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Iterator

from ..errors import FormatError, StoreLockedError, StoreNotFoundError
from .catalog import CATALOG_DIR
from .format import DATA_DIRS
from .readers import READERS_DIR


def remove_stale_staging(path: Path) -> None:
    """Remove staging directories of ``path`` (``.<name>.<12 hex>.partial``, or the
    fixed ``.<name>.partial`` of older versions) left by crashed ingests; called under
    :func:`target_lock`, so no live ingest owns one."""
    own = re.compile(rf"\.{re.escape(path.name)}(\.[0-9a-f]{{12}})?\.partial")
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return
    for name in names:
        if own.fullmatch(name):
            remove_tree(path.parent / name)


@contextlib.contextmanager
def target_lock(path: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``path`` (``flock``) and, when ``path`` is a store,
    its writer lock, while a new store for ``path`` is built and installed.

    Two ingests to one path would otherwise share and delete each other's staging
    directory; a writer of the store being replaced would commit into a store about to
    be deleted. The lock file is removed on release; whoever locked a file that was
    removed meanwhile (its inode no longer the one at that name) locks again."""
    lock = path.with_name(f".{path.name}.lock")
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    busy = (f"store {path} is being created or replaced by another process: wait for it "
            "to finish, then run the command again")
    while True:
        try:
            fd = os.open(lock, flags, 0o644)
        except FileNotFoundError:
            raise StoreNotFoundError(f"output {path}: directory {path.parent} does not exist; "
                                     "create it first") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                break
        except BlockingIOError as err:
            os.close(fd)
            raise StoreLockedError(busy) from err
        except FileNotFoundError:
            pass  # removed by the previous holder after we opened it
        os.close(fd)
    writer_fd = -1
    try:
        if (path / CATALOG_DIR).is_dir() and not path.is_symlink():
            writer_fd = os.open(path / CATALOG_DIR / "writer.lock", flags, 0o644)
            try:
                fcntl.flock(writer_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise StoreLockedError(
                    f"store {path} is being written by another process: wait for it to "
                    "finish, then replace it") from err
        yield
    finally:
        if writer_fd >= 0:
            os.close(writer_fd)
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Delete the directory ``path`` and everything in it without following a symbolic
    link anywhere: a link (at ``path`` or inside) is removed as a link, never what it
    points to. Missing paths are fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    # shutil.rmtree uses the fd-based walk here (rmtree.avoids_symlink_attacks): it
    # never descends through a link, even one swapped in while it runs.
    shutil.rmtree(path, ignore_errors=True)


def check_no_links(root: Path) -> None:
    """Refuse (:class:`FormatError`) a store whose catalog or data directories are
    symbolic links: a writer deletes files in them, and must never do so elsewhere."""
    for rel in (CATALOG_DIR, f"{CATALOG_DIR}/{READERS_DIR}", *DATA_DIRS):
        p = root / rel
        if p.is_symlink():
            raise FormatError(
                f"store {root}: {rel} is a symbolic link (to {os.readlink(p)}): oocstore "
                "never writes or deletes through links; replace it with a real directory "
                f"(e.g. `rm {p} && cp -r {os.readlink(p)} {p}`) and run the command again")


def walk_files(root: Path) -> Iterator[Path]:
    """Regular files under the directory ``root``, never following a symbolic link
    (``root`` itself included: a link there yields nothing)."""
    try:
        if not stat.S_ISDIR(os.lstat(root).st_mode):
            return
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            yield from walk_files(Path(e.path))
        elif e.is_file(follow_symlinks=False):
            yield Path(e.path)
