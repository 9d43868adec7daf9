"""oocstore: an out-of-core training data and feature store."""

from pathlib import Path as _Path

from . import _source_layout

_source_layout.install(_Path(__file__).resolve().parent)

from .errors import OocError
from .store import Store, open_store
from .units import format_size, parse_size

__version__ = "0.1.0"

__all__ = ["OocError", "Store", "format_size", "open_store", "parse_size", "__version__"]
