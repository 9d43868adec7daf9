"""The LMDB catalog: JSON values under string keys, one write transaction per commit.

LMDB gives many concurrent readers a consistent snapshot each and serialises writers;
a write transaction either commits whole or not at all, which makes it the store's
commit point. Values are JSON with sorted keys so that a dump is stable and readable
(``docs/FORMAT.md``).

Every commit also stores :data:`CHECKSUM_KEY`: a CRC-32 over every other key and value,
so ``oocstore verify`` notices a damaged entry that still parses. Damage that LMDB itself
detects (a broken page) surfaces as :class:`~oocstore.errors.FormatError` naming the
catalog, not as an ``lmdb`` exception.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import lmdb

from ..errors import DiskFullError, FormatError, StoreNotFoundError, UsageError
from .files import DISK_FULL_ERRNOS, active_fault, checksum

CATALOG_DIR = "catalog.lmdb"

# The map size is address space, not disk: LMDB grows data.mdb as needed up to it.
_MAP_SIZE = 1 << 36
_MAX_READERS = 512

#: Key of the catalog's own checksum (absent in stores written before it existed).
CHECKSUM_KEY = "checksum"


def encode(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes, key: str, path: Path) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise FormatError(f"catalog entry {key!r} in {path} is not valid JSON: the catalog is "
                          "damaged; restore the store from a copy or re-create it") from err


def content_crc(txn) -> int:
    """CRC-32 over every key and value of the catalog except :data:`CHECKSUM_KEY`."""
    crc = 0
    skip = CHECKSUM_KEY.encode()
    for k, v in txn.cursor():
        if k != skip:
            crc = checksum(v, checksum(b"\0", checksum(k, crc)))
            crc = checksum(b"\0", crc)
    return crc


def _damaged(path: Path, err: Exception) -> FormatError:
    return FormatError(f"the catalog {path} is damaged ({type(err).__name__}: {err}): restore "
                       "the store from a copy or re-create it")


def _check_size(env: lmdb.Environment, path: Path) -> None:
    """Refuse a ``data.mdb`` shorter than the pages its meta page says are in use: LMDB
    maps the file, and touching a page past its end would kill the process (SIGBUS)."""
    try:
        size = os.path.getsize(path / "data.mdb")
        need = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
    except (OSError, lmdb.Error) as err:
        env.close()
        raise FormatError(f"cannot read the catalog {path}: {err}; the store may be damaged "
                          "(restore it from a copy or re-create it)") from err
    if size < need:
        env.close()
        raise FormatError(f"the catalog {path}/data.mdb is truncated: {size} bytes, its pages "
                          f"need {need}; restore the store from a copy or re-create it")


class _SharedEnv:
    def __init__(self, env: lmdb.Environment, readonly: bool):
        self.env, self.readonly, self.users = env, readonly, 0


# LMDB must not open one environment twice in a process (its locks are per process and
# closing one handle would drop the other's), and py-lmdb refuses it. So every Catalog
# of the same directory in a process shares one environment, closed with the last user.
_ENVS: dict[str, _SharedEnv] = {}
_ENVS_LOCK = threading.Lock()


class Catalog:
    def __init__(self, store_dir: Path, *, readonly: bool, create: bool = False, lock: bool = True):
        self.path = Path(store_dir) / CATALOG_DIR
        self.readonly = readonly
        if not create and not (self.path / "data.mdb").exists():
            raise StoreNotFoundError(
                f"{store_dir} is not an oocstore store (no {CATALOG_DIR}/data.mdb): "
                "create one with `oocstore ingest ...`")
        self._key = os.path.realpath(self.path)
        with _ENVS_LOCK:
            shared = _ENVS.get(self._key)
            if shared is not None and shared.readonly and not readonly:
                raise UsageError(
                    f"store {store_dir} is already open read-only in this process, and LMDB "
                    "cannot open it a second time for writing: close the read-only Store "
                    "first, or open the writable one first (read-only users can share it)")
            if shared is None:
                try:
                    env = lmdb.open(str(self.path), map_size=_MAP_SIZE, subdir=True,
                                    readonly=readonly, lock=lock, create=create,
                                    max_readers=_MAX_READERS, max_dbs=0)
                except lmdb.Error as err:
                    raise FormatError(f"cannot open the catalog {self.path}: {err}; the store "
                                      "may be damaged or not a store") from err
                _check_size(env, self.path)
                shared = _ENVS[self._key] = _SharedEnv(env, readonly)
            shared.users += 1
        self._shared: _SharedEnv | None = shared
        self.env = shared.env

    def get(self, key: str, default: Any = None) -> Any:
        try:
            with self.env.begin() as txn:
                raw = txn.get(key.encode())
        except lmdb.Error as err:
            raise _damaged(self.path, err) from err
        return default if raw is None else decode(raw, key, self.path)

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """All ``(key, value)`` with ``key.startswith(prefix)``, from one snapshot
        (:data:`CHECKSUM_KEY` excepted)."""
        try:
            with self.env.begin() as txn:
                cur = txn.cursor()
                found = cur.set_range(prefix.encode()) if prefix else cur.first()
                out = []
                while found:
                    try:
                        k = cur.key().decode()
                    except UnicodeDecodeError as err:
                        raise _damaged(self.path, err) from err
                    if not k.startswith(prefix):
                        break
                    if k == CHECKSUM_KEY:  # about the catalog, not an entry of it
                        found = cur.next()
                        continue
                    out.append((k, decode(cur.value(), k, self.path)))
                    found = cur.next()
        except lmdb.Error as err:
            raise _damaged(self.path, err) from err
        return iter(out)

    def check(self) -> str | None:
        """``None`` if the stored catalog checksum matches its entries, else what is
        wrong (a missing checksum is not damage: older stores lack it)."""
        try:
            with self.env.begin() as txn:
                raw = txn.get(CHECKSUM_KEY.encode())
                if raw is None:
                    return None
                crc = content_crc(txn)
        except lmdb.Error as err:
            return f"LMDB reports damage ({type(err).__name__}: {err})"
        try:
            want = json.loads(raw)
        except ValueError:
            return "its checksum entry is not valid JSON"
        if want != crc:
            return (f"checksum mismatch (entries give {crc}, the catalog recorded {want}): an "
                    "entry was changed outside oocstore or damaged on disk")
        return None

    def commit(self, puts: dict[str, Any], deletes: set[str] = frozenset()) -> None:
        """Write ``puts`` and delete ``deletes`` in one LMDB transaction (durable on return)."""
        if self.readonly:
            raise UsageError(f"catalog {self.path} was opened read-only: open the store with "
                             "readonly=False to change it")
        try:
            fault = active_fault()
            if fault is not None and fault.at_commit:
                raise lmdb.Error(f"{self.path}: {fault.error('the catalog commit').strerror}")
            with self.env.begin(write=True) as txn:
                for key in sorted(deletes):
                    txn.delete(key.encode())
                for key in sorted(puts):
                    txn.put(key.encode(), encode(puts[key]))
                txn.put(CHECKSUM_KEY.encode(), encode(content_crc(txn)))
            self.env.sync(True)
        except lmdb.Error as err:
            # py-lmdb reports system errors by message only (no errno attribute).
            text = str(err)
            for code in DISK_FULL_ERRNOS:
                if os.strerror(code) in text:
                    raise DiskFullError(code, f"disk full while committing the catalog "
                                        f"{self.path}: free space on that filesystem and run the "
                                        "command again; the store was left as it was") from err
            if os.strerror(errno.EIO) in text:
                raise OSError(errno.EIO, f"I/O error while committing the catalog {self.path} "
                              f"({err}): the store was left as it was; check the disk, then "
                              "run the command again") from err
            raise

    def dump(self) -> dict[str, Any]:
        return dict(self.items())

    def close(self) -> None:
        """Release this handle; the environment closes with its last user (idempotent)."""
        with _ENVS_LOCK:
            shared, self._shared = self._shared, None
            if shared is None:
                return
            shared.users -= 1
            if shared.users == 0:
                if _ENVS.get(self._key) is shared:
                    del _ENVS[self._key]
                shared.env.close()
