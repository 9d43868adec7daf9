"""The on-disk row of a Gaussian and the geometry of blocks (shared by the scene and
its writer).

A row is ``id int64 | params float32[P] | exp_avg m[P] | exp_avg_sq m[P]`` with ``m``
float32, or float16 with the second moment stored as its square root (so the tiny
values Adam accumulates stay representable). See ``docs/SCENE_FORMAT.md``.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from . import layout

MOMENT_DTYPES = ("float32", "float16")


def row_dtype(sh_degree: int, moments: str = "float32") -> np.dtype:
    """The on-disk row: id, parameters, first and second moment (packed, no padding)."""
    p = layout.param_width(sh_degree)
    m = np.dtype(moments).newbyteorder("<")
    return np.dtype([("id", "<i8"), ("params", "<f4", (p,)), ("m1", m, (p,)), ("m2", m, (p,))])


def encode_rows(ids: np.ndarray, records: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Records [n, 3P] float32 + ids -> on-disk rows (see :func:`row_dtype`)."""
    p = records.shape[1] // 3
    rows = np.empty(len(ids), dtype=dtype)
    rows["id"] = ids
    rows["params"] = records[:, :p]
    rows["m1"] = records[:, p:2 * p]
    if dtype["m2"].base == np.float16:
        # sqrt keeps second moments down to ~1e-15 representable (fp16's smallest is 6e-8)
        rows["m2"] = np.sqrt(np.maximum(records[:, 2 * p:], 0))
    else:
        rows["m2"] = records[:, 2 * p:]
    return rows


def decode_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """On-disk rows -> (ids int64 [n], records float32 [n, 3P])."""
    p = rows.dtype["params"].shape[0]
    if rows.dtype["m2"].base == np.float32:
        # the 3P floats after each id are the record: one strided copy
        raw = rows.view(np.uint8).reshape(len(rows), rows.dtype.itemsize)
        rec = np.ascontiguousarray(raw[:, 8:].view("<f4"))
        return np.ascontiguousarray(raw[:, :8].view("<i8")).reshape(-1), rec
    rec = np.empty((len(rows), 3 * p), dtype=np.float32)
    rec[:, :p] = rows["params"]
    rec[:, p:2 * p] = rows["m1"]
    if rows.dtype["m2"].base == np.float16:
        m2 = rows["m2"].astype(np.float32)
        rec[:, 2 * p:] = m2 * m2
    else:
        rec[:, 2 * p:] = rows["m2"]
    return rows["id"].astype(np.int64), rec


def block_bounds_of(records: np.ndarray) -> np.ndarray:
    """[2, 3] float32 box of records or params [n, >=11]: the union of each Gaussian's
    mean +- 3x its own largest scale.

    Every Gaussian's 3-sigma ellipsoid lies inside (its extent along any axis is at
    most 3x its largest scale, whatever its rotation), so frustum tests against the box
    are conservative. It is never larger than the means' box padded by 3x the block's
    largest scale, and much smaller when a few large Gaussians sit among small ones.
    """
    out = np.empty((2, 3), dtype=np.float32)
    if len(records) == 0:
        out[0], out[1] = np.inf, -np.inf
        return out
    means = records[:, layout.MEANS].astype(np.float64)
    # An extent beyond float32's range becomes an infinite bound: still conservative.
    with np.errstate(over="ignore"):
        margin = 3.0 * np.exp(records[:, layout.LOG_SCALES].max(axis=1).astype(np.float64))
        lo = (means - margin[:, None]).min(axis=0)
        hi = (means + margin[:, None]).max(axis=0)
        # rounded outwards so the float32 box still contains every float64 extent
        out[0] = np.nextafter(lo.astype(np.float32), np.float32(-np.inf))
        out[1] = np.nextafter(hi.astype(np.float32), np.float32(np.inf))
    return out


def morton_order(means: np.ndarray) -> np.ndarray:
    """Permutation sorting points by the Morton (Z-order) code of their position,
    quantised to 21 bits per axis within the points' bounding box."""
    m = np.asarray(means, dtype=np.float64)
    if len(m) == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = m.min(axis=0), m.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = ((m - lo) / span * ((1 << 21) - 1)).astype(np.uint64)
    code = np.zeros(len(m), dtype=np.uint64)
    for axis in range(3):
        v = q[:, axis]
        v = (v | (v << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
        v = (v | (v << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
        v = (v | (v << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
        v = (v | (v << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
        v = (v | (v << np.uint64(2))) & np.uint64(0x1249249249249249)
        code |= v << np.uint64(axis)
    return np.argsort(code, kind="stable").astype(np.int64)


def check_finite(a: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UsageError(f"{what}: row {row}, column {col} is {a[row, col]}: parameters and "
                         "moments must be finite; fix the source (or the step that produced it)")
