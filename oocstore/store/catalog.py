"""The LMDB catalog: JSON values under string keys, one write transaction per commit.

LMDB gives many concurrent readers a consistent snapshot each and serialises writers;
a write transaction either commits whole or not at all, which makes it the store's
commit point. Values are JSON with sorted keys so that a dump is stable and readable
(``docs/FORMAT.md``).
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
from .files import DISK_FULL_ERRNOS, active_fault

CATALOG_DIR = "catalog.lmdb"

# The map size is address space, not disk: LMDB grows data.mdb as needed up to it.
_MAP_SIZE = 1 << 36
_MAX_READERS = 512


def encode(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes, key: str, path: Path) -> Any:
    try:
        return json.loads(raw)
    except ValueError as err:
        raise FormatError(f"catalog entry {key!r} in {path} is not valid JSON: the catalog is "
                          "damaged; restore the store from a copy or re-create it") from err


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
                shared = _ENVS[self._key] = _SharedEnv(env, readonly)
            shared.users += 1
        self._shared: _SharedEnv | None = shared
        self.env = shared.env

    def get(self, key: str, default: Any = None) -> Any:
        with self.env.begin() as txn:
            raw = txn.get(key.encode())
        return default if raw is None else decode(raw, key, self.path)

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """All ``(key, value)`` with ``key.startswith(prefix)``, from one snapshot."""
        with self.env.begin() as txn:
            cur = txn.cursor()
            found = cur.set_range(prefix.encode()) if prefix else cur.first()
            out = []
            while found:
                k = cur.key().decode()
                if not k.startswith(prefix):
                    break
                out.append((k, decode(cur.value(), k, self.path)))
                found = cur.next()
        return iter(out)

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
            self.env.sync(True)
        except lmdb.Error as err:
            # py-lmdb reports system errors by message only (no errno attribute).
            text = str(err)
            for code in DISK_FULL_ERRNOS:
                if os.strerror(code) in text:
                    raise DiskFullError(code, f"disk full while committing the catalog "
                                        f"{self.path}: free space on that filesystem and run the "
                                        "command again; the store was left as it was") from err
            code = errno.EIO if os.strerror(errno.EIO) in text else None
            raise OSError(code, f"cannot commit the catalog {self.path} ({err}): the store was "
                          "left as it was; check the disk, then run the command again") from err

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
