"""Graphs given as plain arrays: ``edge_index`` ``[2, E]`` (.npy), features ``[N, D]``
(.npy, memory-mapped, or a zarr v3 array), labels ``[N]`` (.npy).

``N`` is the number of feature rows. Features are read one row block at a time — for
zarr, blocks are whole multiples of the array's row chunk (or shard), so each stored
chunk is decompressed once — and are never whole in memory. ``.npy`` files are opened
with ``allow_pickle=False`` always: an object array is refused, not unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import SourceError, UsageError
from . import common
from .common import GraphSource, iter_blocks


def arrays_source(*, edge_index: str | Path, features: str | Path | None,
                  features_zarr: str | Path | None, labels: str | Path,
                  directed: bool) -> GraphSource:
    if (features is None) == (features_zarr is None):
        raise UsageError("give the features either as a .npy (--features) or as a zarr array "
                          "(--features-zarr), exactly one of them")
    if features is not None:
        feat_path = Path(features)
        x = load_npy(feat_path, "features")
        check_features(x, feat_path)
        blocks: Iterator[np.ndarray] = iter_blocks(x)
    else:
        feat_path = Path(features_zarr)  # type: ignore[arg-type]
        x = open_zarr(feat_path)
        check_features(x, feat_path)
        blocks = zarr_blocks(x, feat_path)
    n, d = (int(s) for s in x.shape)

    ei_path = Path(edge_index)
    ei = load_npy(ei_path, "edge_index")
    if ei.ndim != 2 or ei.shape[0] != 2:
        fix = (" (it looks like [E, 2]: save its transpose, np.save(path, edge_index.T))"
               if ei.ndim == 2 and ei.shape[1] == 2 else "")
        raise SourceError(f"{ei_path}: edge_index has shape {ei.shape}, expected [2, E]{fix}")
    if not np.issubdtype(ei.dtype, np.integer):
        raise SourceError(f"{ei_path}: edge_index has dtype {ei.dtype}; node ids must be integers "
                          "(save it with .astype(np.int64))")
    src, dst = np.asarray(ei[0]), np.asarray(ei[1])
    if ei.shape[1]:
        lo = min(int(src.min()), int(dst.min()))
        hi = max(int(src.max()), int(dst.max()))
        if lo < 0 or hi >= n:
            raise SourceError(f"{ei_path}: edge_index names node {lo if lo < 0 else hi}, but "
                              f"{feat_path} has {n} feature rows (nodes 0..{n - 1}): give one "
                              "feature row per node")

    lab_path = Path(labels)
    y = load_labels(lab_path)
    if y.shape[0] != n:
        raise SourceError(f"{lab_path} has {y.shape[0]} labels but {feat_path} has {n} feature "
                          "rows: give one label per node")
    return GraphSource(
        num_nodes=n, src=src, dst=dst, directed=directed, features=blocks, feat_dim=d,
        labels=np.asarray(y), splits=None,
        source={"kind": "arrays", "edge_index": str(ei_path.resolve()),
                "features": str(feat_path.resolve()),
                "features_format": "npy" if features is not None else "zarr",
                "labels": str(lab_path.resolve())},
        where=str(feat_path))


def load_labels(path: Path) -> np.ndarray:
    """The class ids of a labels ``.npy``: a 1-D integer array, one per node."""
    y = load_npy(path, "labels")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise SourceError(f"{path}: labels have shape {y.shape} and dtype {y.dtype}; expected "
                          "a 1-D integer array, one class id per node")
    return y


def load_npy(path: Path, what: str) -> np.ndarray:
    """Memory-map a ``.npy`` (never unpickling); unreadable files become SourceError."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as err:
        raise SourceError(f"{what} file {path} does not exist: check the path") from err
    except (ValueError, OSError, EOFError) as err:
        raise SourceError(f"{what} file {path} is not a readable .npy array ({err}): it is "
                          "truncated, holds Python objects, or is of another format; save it "
                          "with np.save(path, array) from a numeric array") from err
    if not isinstance(arr, np.ndarray):  # np.load returns an NpzFile for .npz archives
        if hasattr(arr, "close"):
            arr.close()
        raise SourceError(f"{what} file {path} is an .npz archive, not a .npy array: save the "
                          "array alone with np.save(path, array)")
    return arr


def check_features(x, path: Path) -> None:
    """Refuse feature arrays that are not 2-D real numbers (bool, complex, text...)."""
    dtype = x.dtype
    if len(x.shape) != 2:
        raise SourceError(f"features {path} have shape {tuple(x.shape)}; they must be 2-D "
                          "[nodes, features]: reshape them (e.g. x.reshape(len(x), -1))")
    ok = (isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.number)
          and not np.issubdtype(dtype, np.complexfloating))
    if not ok:
        raise SourceError(f"features {path} have dtype {dtype} (shape {tuple(x.shape)}); they "
                          "must be real numbers: convert them, e.g. x.astype(np.float32)")


def open_zarr(path: Path):
    import zarr

    try:
        return zarr.open_array(str(path), mode="r")
    except FileNotFoundError as err:
        raise SourceError(f"zarr array {path} does not exist: check the path") from err
    except Exception as err:  # zarr raises many kinds (NodeTypeValidationError, JSON errors...)
        raise SourceError(f"{path} is not a readable zarr array ({type(err).__name__}: {err}): "
                          "give the path of a zarr v3 array (not a group)") from err


def zarr_blocks(x, path: Path) -> Iterator[np.ndarray]:
    """Row blocks of a 2-D zarr array, aligned to its row chunks (or shards)."""
    shards = getattr(x, "shards", None)
    step = int((shards or x.chunks)[0])
    row_bytes = max(1, int(x.shape[1]) * 4)
    rows = step * max(1, common.FEATURE_BLOCK_BYTES // (row_bytes * step))
    n = int(x.shape[0])
    for lo in range(0, n, rows):
        try:
            block = np.asarray(x[lo:lo + rows])
        except Exception as err:  # a missing or corrupt chunk file, a codec error...
            raise SourceError(f"zarr array {path}: cannot read rows {lo}..{min(n, lo + rows) - 1} "
                              f"({type(err).__name__}: {err}): the array is damaged; re-create "
                              "it") from err
        yield block
