"""One base error for the project; each subclass also inherits the builtin it refines.

Every message names the file, the offending value and the fix, so the CLI can print it
as one line (``oocstore: error: <message>``) and exit with status 2.
"""

from __future__ import annotations


class OocError(Exception):
    """Base class of every error oocstore raises on purpose."""


class UsageError(OocError, ValueError):
    """A value given by the user (argument, option, size) is not acceptable."""


class SourceError(OocError, ValueError):
    """An input file for ingest is malformed, truncated or inconsistent."""


class StoreExistsError(OocError, FileExistsError):
    """The output store (or a named object inside it) already exists."""


class StoreNotFoundError(OocError, FileNotFoundError):
    """No store, array, plan or pack of that name."""


class FormatError(OocError, ValueError):
    """The store's catalog is of an unknown version or is internally inconsistent."""


class ChecksumError(OocError, IOError):
    """Data read back does not match the checksum recorded at commit time."""


class BudgetError(OocError, MemoryError):
    """A memory budget is too small for what was asked."""


class StoreLockedError(OocError, BlockingIOError):
    """Another process is writing to the store."""


class DiskFullError(OocError, OSError):
    """The disk filled up while writing; temporary files were removed."""


class StageTimeoutError(OocError, TimeoutError):
    """A pipeline stage produced nothing within the loader's timeout."""


class MissingDependencyError(OocError, ImportError):
    """An optional dependency (an extra such as ``oocstore[pyg]``) is not installed."""


class StoreReplacedError(StoreNotFoundError):
    """The store directory was replaced (``ingest --overwrite``) after it was opened."""


class PeerError(OocError, RuntimeError):
    """Another rank of a data-parallel run failed or left before this one finished."""
