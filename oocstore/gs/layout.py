"""The record layout of one Gaussian: parameters, then Adam's two moments.

A Gaussian's parameters are ``P = param_width(sh_degree)`` float32 columns::

    [0:3]    means           x, y, z (world space)
    [3:7]    quats           w, x, y, z; stored unnormalised, normalised when rendering
    [7:10]   log_scales      natural log of the three axis scales
    [10]     opacity_logit   logit of the opacity
    [11:P]   sh              K = (sh_degree+1)**2 coefficients x 3 channels, stored
                             coefficient-major ((K, 3) row-major); coefficient 0 is the
                             DC term (``f_dc_0..2`` of a 3DGS .ply)

A *record* is ``params (P) | exp_avg (P) | exp_avg_sq (P)``: ``record_width(deg) = 3P``
float32 values. The scene API always hands out float32 records; a store may keep the
moments in float16 on disk (see :mod:`oocstore.gs.scene`), which is a storage detail.

Gaussian ids are int64, stable for a Gaussian's whole life (across blocks, write-backs
and compaction); densification takes new ids from ``Scene.next_id``.
"""

from __future__ import annotations

import numpy as np

from oocstore.errors import UsageError

MAX_SH_DEGREE = 3

MEANS = slice(0, 3)
QUATS = slice(3, 7)
LOG_SCALES = slice(7, 10)
OPACITY = slice(10, 11)  # a slice, so ``params[:, OPACITY]`` keeps a column axis
SH_START = 11

PARAM_NAMES = ("means", "quats", "log_scales", "opacity_logit", "sh")


def check_sh_degree(sh_degree: int) -> int:
    """``sh_degree`` as an int, or a UsageError naming the allowed range."""
    if isinstance(sh_degree, bool) or not isinstance(sh_degree, (int, np.integer)):
        raise UsageError(f"sh_degree must be an integer 0..{MAX_SH_DEGREE}, got {sh_degree!r}")
    if not 0 <= int(sh_degree) <= MAX_SH_DEGREE:
        raise UsageError(f"sh_degree {sh_degree} is out of range: use 0..{MAX_SH_DEGREE}")
    return int(sh_degree)


def num_sh_coeffs(sh_degree: int) -> int:
    """K = (sh_degree + 1) ** 2 SH coefficients per colour channel."""
    return (check_sh_degree(sh_degree) + 1) ** 2


def param_width(sh_degree: int) -> int:
    """P = 3 + 4 + 3 + 1 + 3 K float32 parameter columns."""
    return SH_START + 3 * num_sh_coeffs(sh_degree)


def record_width(sh_degree: int) -> int:
    """3 P float32 columns: parameters, Adam exp_avg, Adam exp_avg_sq."""
    return 3 * param_width(sh_degree)


def sh_slice(sh_degree: int) -> slice:
    """Columns of the SH coefficients inside the parameters (and inside a record)."""
    return slice(SH_START, param_width(sh_degree))


def params_slice(sh_degree: int) -> slice:
    """Columns of the parameters inside a record."""
    return slice(0, param_width(sh_degree))


def exp_avg_slice(sh_degree: int) -> slice:
    """Columns of Adam's first moment inside a record."""
    p = param_width(sh_degree)
    return slice(p, 2 * p)


def exp_avg_sq_slice(sh_degree: int) -> slice:
    """Columns of Adam's second moment inside a record."""
    p = param_width(sh_degree)
    return slice(2 * p, 3 * p)


def split_params(params: np.ndarray, sh_degree: int) -> dict:
    """Named views into ``params`` [N, P] (works on numpy arrays and torch tensors).

    Returns ``means`` [N,3], ``quats`` [N,4], ``log_scales`` [N,3], ``opacity_logit``
    [N,1] and ``sh`` [N,K,3] (a reshaped view: coefficient-major, channel last).
    """
    p = param_width(sh_degree)
    if params.ndim != 2 or params.shape[1] != p:
        raise UsageError(
            f"params have shape {tuple(params.shape)}, expected [N, {p}] for SH degree "
            f"{sh_degree}: pass the parameter columns of the records only"
        )
    n = params.shape[0]
    return {
        "means": params[:, MEANS],
        "quats": params[:, QUATS],
        "log_scales": params[:, LOG_SCALES],
        "opacity_logit": params[:, OPACITY],
        "sh": params[:, sh_slice(sh_degree)].reshape(n, num_sh_coeffs(sh_degree), 3),
    }


def join_params(
    means: np.ndarray,  # [N, 3]
    quats: np.ndarray,  # [N, 4] (w, x, y, z)
    log_scales: np.ndarray,  # [N, 3]
    opacity_logit: np.ndarray,  # [N] or [N, 1]
    sh: np.ndarray,  # [N, K, 3] or [N, 3K]
) -> np.ndarray:
    """Parameters [N, P] float32 from their parts; the SH degree follows from ``sh``."""
    n = np.asarray(means).shape[0]
    sh = np.asarray(sh, dtype=np.float32).reshape(n, -1)
    if sh.shape[1] % 3 or round((sh.shape[1] // 3) ** 0.5) ** 2 != sh.shape[1] // 3:
        raise UsageError(
            f"sh has {sh.shape[1]} values per Gaussian, expected 3*(d+1)^2 for a degree d in 0..3"
        )
    return np.concatenate(
        [
            np.asarray(means, dtype=np.float32).reshape(n, 3),
            np.asarray(quats, dtype=np.float32).reshape(n, 4),
            np.asarray(log_scales, dtype=np.float32).reshape(n, 3),
            np.asarray(opacity_logit, dtype=np.float32).reshape(n, 1),
            sh,
        ],
        axis=1,
    )


def sh_degree_of_width(width: int, *, what: str = "params") -> int:
    """The SH degree whose parameter width is ``width``, or a UsageError."""
    for d in range(MAX_SH_DEGREE + 1):
        if param_width(d) == width:
            return d
    raise UsageError(
        f"{what} have {width} columns, which is no SH degree's parameter width "
        f"({', '.join(str(param_width(d)) for d in range(MAX_SH_DEGREE + 1))} for degrees 0..3)"
    )


def make_records(params: np.ndarray) -> np.ndarray:
    """Records [N, 3P] float32: the given parameters and zeroed Adam moments."""
    params = np.asarray(params, dtype=np.float32)
    n, p = params.shape
    rec = np.zeros((n, 3 * p), dtype=np.float32)
    rec[:, :p] = params
    return rec
