"""oocstore: an out-of-core training data and feature store."""

from .errors import OocError
from .store import Store, open_store
from .units import format_size, parse_size

__version__ = "0.1.0"

__all__ = ["OocError", "Store", "format_size", "open_store", "parse_size", "__version__"]
