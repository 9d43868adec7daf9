"""Store directories: the LMDB catalog, aligned array files, the atomic commit protocol."""

from .format import ALIGN, CHUNK_BYTES, FORMAT_VERSION, ArrayMeta, GraphMeta, StoreMeta
from .store import ArrayWriter, Store, Transaction, open_store

__all__ = ["ALIGN", "CHUNK_BYTES", "FORMAT_VERSION", "ArrayMeta", "ArrayWriter", "GraphMeta",
           "Store", "StoreMeta", "Transaction", "open_store"]
