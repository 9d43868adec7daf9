"""Out-of-core, full-neighbourhood inference over every node of a store, into a zarr array.

:func:`infer_embeddings` runs a trained GraphSAGE, GCN or GAT (the ``state_dict`` that
``oocstore train --save-model`` writes, or a ``--checkpoint DIR``;
:mod:`oocstore.infer_models`) layer by layer over all nodes, unsampled: every
destination aggregates all of its in-neighbours from the store's CSC
(:class:`~oocstore.layerwise.LayerPass`: node-order chunks sized from ``cpu_budget``,
each layer's output on disk before the next layer reads it, so the limit is disk).

The last layer's output (the logits) becomes a zarr v3 array at ``out``, chunked by
rows: it is built under a temporary directory beside ``out`` and renamed into place, so
``out`` is either absent, the previous array (``overwrite``) or the complete new one.
The temporary directory (hidden states included) is removed in every case.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UsageError
from .infer_models import LayerwiseModel, load_layerwise_model
from .layerwise import LayerPass, _RawRows, check_sizes, gather_rows, pin_mmap_threshold
from .store import Store
from .store.files import fsync_dir


def check_weights_fit(store: Store, weights: LayerwiseModel, *, layers: int | None = None,
                      plan: str | None = None) -> None:
    """Refuse weights that do not fit ``store``: another input dimension, another number
    of classes, or another layer count than ``layers``, ``plan`` or the plan the
    checkpoint was trained on (when the store holds it)."""
    src = weights.source
    if weights.dims[0] != store.feature_dim:
        raise UsageError(f"checkpoint {src} takes {weights.dims[0]}-dimensional input but "
                         f"store {store.path} has {store.feature_dim} feature columns: give the "
                         "checkpoint trained on this store")
    if store.has_array("labels") and weights.dims[-1] != store.num_classes:
        raise UsageError(f"checkpoint {src} outputs {weights.dims[-1]} classes but store "
                         f"{store.path} has {store.num_classes}: give the checkpoint trained "
                         "on this store")
    if layers is not None and layers != weights.num_layers:
        raise UsageError(f"checkpoint {src} has {weights.num_layers} layers, not layers="
                         f"{layers}: give a checkpoint of {layers} layers or drop layers")
    from .plan import list_plans

    plans = list_plans(store) if (plan or weights.plan) else {}
    if plan is not None and plan not in plans:
        raise UsageError(f"store {store.path} has no plan {plan!r} (plan=): name one of "
                         f"{', '.join(sorted(plans)) or 'none'}")
    for name, which in ((plan, f"plan={plan!r}"),
                        (weights.plan, f"its training plan {weights.plan!r}")):
        meta = plans.get(name) if name else None
        if meta is not None and meta.num_layers != weights.num_layers:
            raise UsageError(f"checkpoint {src} has {weights.num_layers} layers but "
                             f"{which} samples {meta.num_layers}: give the checkpoint "
                             "trained on that plan")


def check_out_path(out: str | os.PathLike, overwrite: bool, store: Store | None = None) -> Path:
    """Refuse an output path that must not be written: an existing path without
    ``overwrite``, a missing or read-only parent, a path inside the store."""
    p = Path(out)
    if p.name in ("", ".", ".."):
        raise UsageError(f"output {out} names no new entry of a directory: give a path such "
                         "as DIR/emb.zarr")
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise UsageError(f"output {p} exists: pass overwrite=True to replace it or give "
                             "another path")
        _check_replaceable(p)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist; create it first"
        raise UsageError(f"output {p}: {parent} {what}" + (
            "; give a path in a directory" if parent.exists() else ""))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"output {p}: directory {parent} is not writable; give a path this "
                         "user can write")
    if store is not None:
        root, target = Path(store.path).resolve(), parent.resolve() / p.name
        if target == root or root in target.parents or target in root.parents:
            raise UsageError(f"output {p} is inside or above store {store.path}: give a path "
                             "outside the store")
    return p


def _check_replaceable(p: Path) -> None:
    """Refuse to replace ``p`` unless it is a directory holding a zarr array (or nothing):
    overwrite removes what was there, and a mistyped ``out`` must not take a user's
    directory with it."""
    if p.is_symlink() or not p.is_dir():
        what = "a symbolic link" if p.is_symlink() else "not a directory (a zarr array is one)"
        raise UsageError(f"output {p} exists and is {what}: overwrite replaces only a zarr "
                         "array's directory; remove it or give another path")
    names = {q.name for q in p.iterdir()}
    if names and not names & {"zarr.json", ".zarray", ".zgroup"}:
        raise UsageError(f"output {p} is a directory that holds no zarr array (no zarr.json): "
                         "overwrite replaces only a zarr array; remove it or give another path")


@dataclass
class InferSummary:
    """What :func:`infer_embeddings` did."""

    out: str
    nodes: int
    edges: int
    dims: list[int]
    seconds: float
    nodes_per_s: float  # node-layers per second: nodes * layers / seconds
    bytes_read: int  # features, CSC and hidden states read from disk
    bytes_written: int  # hidden states and the output written to disk
    peak_chunk_bytes: int  # the largest chunk's estimated working memory (chunk_cost)
    # (peak_chunk_bytes + fixed_bytes <= cpu_budget)
    chunks: list[int] = field(default_factory=list)  # chunks per layer
    layer_batch: int = 0
    cpu_budget: int | None = None
    model: str = "sage"  # the model kind: sage, gcn or gat
    fixed_bytes: int = 0  # held beside the chunks: weights, readers' buffers, indptr piece
    accounted_peak_bytes: int = 0  # the budget accountant's peak: fixed + the largest chunk

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def infer_embeddings(store: Store | str | os.PathLike, checkpoint: str | os.PathLike,
                     out: str | os.PathLike, *, layer_batch: int | None = None,
                     cpu_budget: int | None = None, overwrite: bool = False,
                     layers: int | None = None, plan: str | None = None,
                     progress: Callable[[int, int, int, int], Any] | None = None
                     ) -> InferSummary:
    """Write the logits of the model in ``checkpoint`` (GraphSAGE, GCN or GAT) for every
    node of ``store`` (full neighbourhoods, layer by layer on disk) as a zarr v3 array
    at ``out``.

    ``layer_batch``: at most this many destinations per chunk; ``cpu_budget``: bytes a
    chunk and the weights may hold (chunks are sized from it; a budget below the
    minimum is refused with it; the process's malloc is set to return large blocks
    when freed, see :func:`pin_mmap_threshold`). ``layers`` / ``plan``: the layer count
    the checkpoint must have. ``progress(layer, layers, nodes_done, nodes)`` after every
    chunk. Every input is checked before anything is written; the store is only read."""
    check_sizes(layer_batch, cpu_budget)
    owned = not isinstance(store, Store)
    st = Store(store) if owned else store
    try:
        out_path = check_out_path(out, overwrite, st)
        weights = load_layerwise_model(checkpoint)
        check_weights_fit(st, weights, layers=layers, plan=plan)
        return _infer(st, weights, out_path, layer_batch, cpu_budget, overwrite, progress)
    finally:
        if owned:
            st.close()


def _infer(store: Store, weights: LayerwiseModel, out_path: Path, layer_batch, cpu_budget,
           overwrite, progress) -> InferSummary:
    tmp: Path | None = None
    try:
        with LayerPass(store, weights, cpu_budget=cpu_budget, layer_batch=layer_batch) as lp:
            # the last layer's file and the zarr array made from it sit side by side
            lp.check_disk(out_path.parent if str(out_path.parent) else Path("."),
                          max(lp.disk_need(), 8 * lp.n * weights.dims[-1]),
                          "give --out on a disk with room")
            tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".infer",
                                        dir=out_path.parent if str(out_path.parent) else "."))
            t0 = time.perf_counter()
            last = lp.run(tmp, progress)
            written = lp.bytes_written + _write_zarr(last, tmp / "out.zarr", lp.n,
                                                     weights.dims[-1])
            seconds = time.perf_counter() - t0
            _place(tmp / "out.zarr", out_path, tmp, overwrite)
            n, layers = lp.n, weights.num_layers
            return InferSummary(out=str(out_path), nodes=n, edges=lp.edges,
                                dims=list(weights.dims), seconds=seconds,
                                nodes_per_s=n * layers / seconds if seconds > 0 else 0.0,
                                bytes_read=lp.bytes_read, bytes_written=written,
                                peak_chunk_bytes=lp.peak, chunks=lp.chunks,
                                layer_batch=lp.batch, cpu_budget=cpu_budget,
                                model=weights.kind, fixed_bytes=lp.fixed,
                                accounted_peak_bytes=lp.accountant.peak("cpu"))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _write_zarr(src: _RawRows, path: Path, rows: int, width: int) -> int:
    """Copy the last layer's rows into a zarr v3 array at ``path``, chunked by rows (each
    zarr chunk written once)."""
    import zarr

    chunk_rows = max(1, min(max(rows, 1), (1 << 20) // max(1, 4 * width)))
    arr = zarr.create_array(store=str(path), shape=(rows, width), chunks=(chunk_rows, width),
                            dtype="float32", zarr_format=3, fill_value=0.0)
    for lo in range(0, rows, chunk_rows):
        hi = min(rows, lo + chunk_rows)
        arr[lo:hi] = src.read(lo, hi)
    return rows * width * 4


def _place(new: Path, out: Path, tmp: Path, overwrite: bool) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` (overwrite) is moved into ``tmp``
    first and removed with it.

    ``out`` is looked at again here, not only before the run: another process (a second
    ``infer`` with the same ``out``) may have written it meanwhile. Without ``overwrite``
    that output is kept and this run is refused; a directory rename never replaces a
    non-empty directory, so two runs racing for ``out`` leave one complete array."""
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise UsageError(f"output {out} was created by another process while inference "
                             "ran; it was left as it is: give another path (or pass "
                             "overwrite=True to replace it)")
        _check_replaceable(out)
        os.rename(out, tmp / "previous")
    try:
        os.rename(new, out)
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
        raise UsageError(f"output {out} was created by another process while inference "
                         "ran; it was left as it is: give another path") from err
    fsync_dir(out.parent if str(out.parent) else Path("."))


__all__ = ["InferSummary", "LayerPass", "LayerwiseModel", "check_out_path", "check_sizes",
           "check_weights_fit", "gather_rows", "infer_embeddings", "load_layerwise_model",
           "pin_mmap_threshold"]
