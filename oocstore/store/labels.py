"""The node labels array as the loader holds it: a compact dtype and its size.

The loader keeps every seed's label in memory for the whole run; the packer and the
budget helper charge those bytes to the minimum working set before anything is written,
so both read them from here.
"""

from __future__ import annotations

import numpy as np

from .store import Store


def label_dtype(store: Store) -> np.dtype:
    """The compact dtype the loader keeps labels in (int16 for < 32768 classes)."""
    if not store.has_array("labels"):
        return np.dtype(np.int64)
    labels = store.array("labels")
    return np.dtype(np.int16 if labels.size == 0 or int(labels.max()) < 2**15 else np.int64)


def labels_bytes(store: Store) -> int:
    """Bytes of the labels in :func:`label_dtype` (0 for a store without labels)."""
    if not store.has_array("labels"):
        return 0
    return store.array_meta("labels").shape[0] * label_dtype(store).itemsize
