"""Out-of-core, full-neighbourhood GraphSAGE inference over every node of a store.

:func:`infer_embeddings` runs a trained GraphSAGE (the ``state_dict`` that
``oocstore train --save-model`` writes, or a ``--checkpoint DIR``) layer by layer over
all nodes, unsampled: every destination aggregates all of its in-neighbours from the
store's CSC. Layer ``l`` visits the nodes in node order, in chunks of consecutive
destinations; for each chunk it reads the chunk's in-neighbour lists, gathers the rows
of those neighbours (and of the destinations) from layer ``l``'s input, applies the
model's own convolution to them and writes the chunk's output rows to a temporary
on-disk array. Layer ``l + 1`` reads only that array. So memory holds one chunk's
neighbourhood rows and the weights, whatever the graph's size; the limit is disk.

Reads go through ``pread`` (nothing is memory-mapped, so resident memory stays what the
chunk holds): the features through :class:`~oocstore.checked_read.CheckedRows`, which
checks each checksum chunk's CRC-32 the first time a read touches it, the CSC the same
way; hidden states through plain positional reads of the temporary files (written and
read back by this process). Neighbour ids are sorted and rows whose ids are close are
read as one span, so a chunk costs about one system call per run of nearby rows.

The chunk size comes from ``cpu_budget`` (bytes per destination and per edge of a
chunk, at the layer's input width; see :func:`chunk_cost`), capped by ``layer_batch``.
A budget below what the node with the most in-neighbours needs is refused before
anything is written, with that minimum.

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

import numpy as np
import torch

from .checked_read import SCRATCH, CheckedRows
from .errors import BudgetError, FormatError, UsageError
from .store import Store
from .store.files import fsync_dir
from .units import format_size

#: Fix named when a store array read during inference is damaged.
_STORE_FIX = "restore the store or re-create it with `oocstore ingest --overwrite`"
#: Fix named when the model file cannot be used.
_MODEL_FIX = ("give the file `oocstore train --save-model PATH` wrote (or the "
              "`--checkpoint DIR` of a GraphSAGE run)")

#: Nodes of ``indptr`` read per piece while chunks are planned (chunks never cross a
#: piece boundary).
PIECE_NODES = 1 << 16
#: Default destinations per chunk when neither ``layer_batch`` nor a budget is given.
DEFAULT_LAYER_BATCH = 8192
#: Bytes a chunk holds per edge besides the neighbour's row: the neighbour id as read,
#: as int64, its position in the chunk's row list, the sparse adjacency's column index
#: and value, and sorting temporaries.
EDGE_BYTES = 56
#: Rows further apart than this many bytes are read with separate ``pread`` calls;
#: closer ones as one span (the rows between are read and dropped): within a page the
#: disk reads them anyway.
GAP_BYTES = 4 << 10
#: Memory held apart from the chunk: the two readers' scratch buffers, one planning piece
#: of ``indptr`` (and its cost prefix sums), the zarr copy buffer.
FIXED_BYTES = 3 * SCRATCH + PIECE_NODES * 8 * 3 + (1 << 20)


@dataclass
class SageWeights:
    """A PyG GraphSAGE's ``state_dict`` and its layer widths ``dims`` (input first)."""

    state: dict[str, torch.Tensor]
    dims: list[int]
    source: Path
    plan: str | None = None  # the plan a --checkpoint DIR was trained on

    @property
    def num_layers(self) -> int:
        return len(self.dims) - 1

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


def load_sage_weights(path: str | os.PathLike) -> SageWeights:
    """The GraphSAGE weights in ``path``: a model file (a ``state_dict``) or a training
    checkpoint (``DIR`` or ``DIR/checkpoint.pt``; its ``model`` entry, the last epoch's
    weights, where the model file holds the best validation epoch's). Read without
    running code; :class:`~oocstore.errors.FormatError` naming the file if it is damaged
    or not a PyG GraphSAGE's weights."""
    from .train.checkpoint import CHECKPOINT_FILE, check_layout, load_weights_only

    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_FILE
    if not p.exists():
        raise UsageError(f"checkpoint {p} does not exist: {_MODEL_FIX}")
    if not p.is_file():  # a FIFO or a device would block or stream forever
        raise UsageError(f"checkpoint {p} is not a regular file: {_MODEL_FIX}")
    raw = load_weights_only(p, "cpu", fix=_MODEL_FIX)
    plan = None
    if isinstance(raw, dict) and "optimizer" in raw and "model" in raw:
        check_layout(raw, p)  # a training checkpoint: its own layout checks
        plan, raw = raw.get("plan"), raw["model"]
    if not isinstance(raw, dict) or not raw or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise FormatError(f"checkpoint {p} does not hold a state_dict (named tensors): "
                          f"{_MODEL_FIX}")
    dims: list[int] = []
    expected: set[str] = set()
    i = -1
    while f"convs.{i + 1}.lin_l.weight" in raw:
        i += 1
        wl, bl = raw[f"convs.{i}.lin_l.weight"], raw.get(f"convs.{i}.lin_l.bias")
        wr = raw.get(f"convs.{i}.lin_r.weight")
        ok = (wl.dim() == 2 and wr is not None and wr.shape == wl.shape
              and bl is not None and bl.shape == (wl.shape[0],)
              and all(t.is_floating_point() for t in (wl, bl, wr))
              and (not dims or wl.shape[1] == dims[-1]) and min(wl.shape) >= 1)
        if not ok:
            raise FormatError(f"checkpoint {p}: layer {i}'s weights (convs.{i}.lin_l / "
                              f"lin_r) are not those of a SAGEConv following the layer "
                              f"before: {_MODEL_FIX}")
        if not dims:
            dims.append(int(wl.shape[1]))
        dims.append(int(wl.shape[0]))
        expected |= {f"convs.{i}.lin_l.weight", f"convs.{i}.lin_l.bias",
                     f"convs.{i}.lin_r.weight"}
    if len(set(dims[1:-1])) > 1:
        raise FormatError(f"checkpoint {p}: hidden layers of widths "
                          f"{', '.join(map(str, dims[1:-1]))}; oocstore's GraphSAGE has one "
                          f"hidden width: {_MODEL_FIX}")
    extra = sorted(set(raw) - expected)
    if not dims or extra:
        what = f"has entries {', '.join(extra[:3])}" if dims else "has no convs.0.lin_l.weight"
        raise FormatError(f"checkpoint {p} {what}: it is not a PyG GraphSAGE's state_dict "
                          f"(`oocstore train --backend pyg --model sage`); {_MODEL_FIX}")
    state = {k: v.to(torch.float32) for k, v in raw.items()}
    return SageWeights(state=state, dims=dims, source=p, plan=plan)


def check_weights_fit(store: Store, weights: SageWeights, *, layers: int | None = None,
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


def chunk_cost(in_row_bytes: int, in_dim: int, out_dim: int) -> tuple[int, int]:
    """``(bytes per destination, bytes per edge)`` a chunk holds at a layer of input
    width ``in_dim`` (stored rows of ``in_row_bytes``) and output width ``out_dim``.

    Per edge: the neighbour's row as read and as float32 (a chunk's distinct neighbours
    are at most its edges) plus :data:`EDGE_BYTES`. Per destination: its own row (read,
    float32, and the copy the convolution's root term takes), the aggregated mean, its
    ``indptr`` entry, and the output's temporaries (two products, their sum, ReLU)."""
    row = in_row_bytes + 4 * in_dim
    return row + 8 * in_dim + 8 + 16 * out_dim, row + EDGE_BYTES


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
    chunks: list[int] = field(default_factory=list)  # chunks per layer
    layer_batch: int = 0
    cpu_budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Allocations of at least this many bytes get pages of their own from the kernel
#: (``mmap``), returned when freed.
MMAP_THRESHOLD = 256 << 10


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Make glibc's malloc serve allocations of ``nbytes`` and more with ``mmap`` for the
    rest of the process (False where the C library is not glibc).

    By default glibc raises that threshold to the size of every large block freed (up
    to 32 MiB) and then keeps up to twice as much freed memory resident in its heap:
    one chunk's buffers, allocated and freed once per chunk, would stay resident beside
    the next chunk's and the process would hold about twice what a chunk needs. A fixed
    threshold turns that adjustment off, so each chunk's buffers go back to the kernel
    when the chunk is done."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3
    return bool(mallopt(ctypes.c_int(m_mmap_threshold), ctypes.c_int(int(nbytes))))


class _RawRows:
    """Rows of a float32 ``[rows, width]`` file written by this module (hidden states),
    read and written with ``pread`` / ``pwrite``."""

    def __init__(self, path: Path, rows: int, width: int):
        self.path, self.rows, self.width = path, rows, width
        self.row_bytes = 4 * width
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.bytes_read = self.bytes_written = 0

    def write(self, start: int, data: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(data, dtype=np.float32).reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], start * self.row_bytes + done)
        self.bytes_written += len(view)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(0, stop - start), self.width), dtype=np.float32)
        self.read_into(out, start, stop)
        return out

    def read_into(self, buf: np.ndarray, start: int, stop: int) -> None:
        """Rows ``[start, stop)`` into ``buf`` (float32, ``stop - start`` rows)."""
        if not 0 <= start <= stop <= self.rows:
            raise FormatError(f"hidden-state file {self.path}: rows {start}..{stop} asked for, "
                              f"but it has {self.rows}: the graph's CSC is damaged; {_STORE_FIX}")
        view = memoryview(buf.reshape(-1).view(np.uint8))
        got = 0
        while got < len(view):
            more = os.preadv(self.fd, [view[got:]], start * self.row_bytes + got)
            if more == 0:
                raise FormatError(f"hidden-state file {self.path} ends before row {stop}: "
                                  "it was truncated while inference ran")
            got += more
        self.bytes_read += len(view)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def gather_rows(read: Callable[[int, int], np.ndarray], ids: np.ndarray, row_bytes: int,
                *, gap_bytes: int = GAP_BYTES, span_bytes: int = SCRATCH,
                read_into: Callable[[np.ndarray, int, int], None] | None = None) -> np.ndarray:
    """Rows ``ids`` (sorted, distinct) via ``read(start, stop)``, into one array allocated
    up front: ids closer than ``gap_bytes`` are read as one span of at most
    ``span_bytes`` (at least one row), which is the only other buffer.
    ``read_into(buf, start, stop)``, where given, fills ``buf`` with rows
    ``[start, stop)`` in place (no temporary array per span)."""
    empty = read(0, 0)
    out = np.empty((len(ids), *empty.shape[1:]), dtype=empty.dtype)
    if not len(ids):
        return out
    gap = max(1, gap_bytes // max(1, row_bytes))
    span = max(1, span_bytes // max(1, row_bytes))
    breaks = np.flatnonzero(np.diff(ids) > gap) + 1
    starts = np.concatenate(([0], breaks)).tolist()
    ends = np.concatenate((breaks, [len(ids)])).tolist()
    scratch = None
    for s, e in zip(starts, ends):
        lo, hi = int(ids[s]), int(ids[e - 1]) + 1
        if e - s == hi - lo and hi - lo <= span:  # a contiguous run: read it as is
            if read_into is not None:
                read_into(out[s:e], lo, hi)
            else:
                out[s:e] = read(lo, hi)
            continue
        i = s
        while i < e:
            top = min(hi, int(ids[i]) + span)
            j = s + int(np.searchsorted(ids[s:e], top))
            a, b = int(ids[i]), int(ids[j - 1]) + 1
            if read_into is not None:
                if scratch is None:
                    scratch = np.empty((span, *empty.shape[1:]), dtype=empty.dtype)
                block = scratch[:b - a]
                read_into(block, a, b)
            else:
                block = read(a, b)
            out[i:j] = block[ids[i:j] - a]
            i = j
    return out


class _CheckedInto:
    """:meth:`~oocstore.checked_read.CheckedRows.read_into` that counts the bytes it
    reads (``bytes_read``)."""

    def __init__(self, rows: CheckedRows):
        self.rows = rows
        self.bytes_read = 0

    def __call__(self, buf: np.ndarray, start: int, stop: int) -> None:
        self.rows.read_into(buf, start, stop)
        self.bytes_read += max(0, stop - start) * self.rows.row_bytes


def _plan_chunks(ip: np.ndarray, base: int, per_dst: int, per_edge: int, room: int | None,
                 max_batch: int) -> list[tuple[int, int]]:
    """Chunks ``[lo, hi)`` of nodes ``base .. base + len(ip) - 1`` (``ip``: their
    ``indptr`` slice, one longer) whose cost fits ``room`` and has at most ``max_batch``
    destinations (at least one destination each)."""
    n = len(ip) - 1
    out = []
    if room is None:
        for lo in range(0, n, max_batch):
            out.append((base + lo, base + min(n, lo + max_batch)))
        return out
    cost = per_dst * np.arange(n + 1, dtype=np.int64) + per_edge * (ip - ip[0])
    lo = 0
    while lo < n:
        hi = int(np.searchsorted(cost, cost[lo] + room, side="right")) - 1
        hi = max(lo + 1, min(hi, lo + max_batch, n))
        out.append((base + lo, base + hi))
        lo = hi
    return out


def infer_embeddings(store: Store | str | os.PathLike, checkpoint: str | os.PathLike,
                     out: str | os.PathLike, *, layer_batch: int | None = None,
                     cpu_budget: int | None = None, overwrite: bool = False,
                     layers: int | None = None, plan: str | None = None,
                     progress: Callable[[int, int, int, int], Any] | None = None
                     ) -> InferSummary:
    """Write the logits of the GraphSAGE in ``checkpoint`` for every node of ``store``
    (full neighbourhoods, layer by layer on disk) as a zarr v3 array at ``out``.

    ``layer_batch``: at most this many destinations per chunk; ``cpu_budget``: bytes a
    chunk and the weights may hold (chunks are sized from it; a budget below the
    minimum is refused with it; the process's malloc is set to return large blocks
    when freed, see :func:`pin_mmap_threshold`). ``layers`` / ``plan``: the layer count
    the checkpoint must have. ``progress(layer, layers, nodes_done, nodes)`` after every
    chunk. Every input is checked before anything is written; the store is only read."""
    if layer_batch is not None and (isinstance(layer_batch, bool)
                                    or not isinstance(layer_batch, int) or layer_batch < 1):
        raise UsageError(f"layer_batch={layer_batch!r} is not an integer >= 1")
    if cpu_budget is not None and (isinstance(cpu_budget, bool)
                                   or not isinstance(cpu_budget, int) or cpu_budget < 1):
        raise UsageError(f"cpu_budget={cpu_budget!r} is not a positive size")
    owned = not isinstance(store, Store)
    st = Store(store) if owned else store
    try:
        return _infer(st, checkpoint, out, layer_batch, cpu_budget, overwrite, layers, plan,
                      progress)
    finally:
        if owned:
            st.close()


def _infer(store: Store, checkpoint, out, layer_batch, cpu_budget, overwrite, layers, plan,
           progress) -> InferSummary:
    from .train.model import GraphSAGE, csr_adjacency

    out_path = check_out_path(out, overwrite, store)
    weights = load_sage_weights(checkpoint)
    check_weights_fit(store, weights, layers=layers, plan=plan)
    if store.graph is None:
        raise UsageError(f"store {store.path} has no graph: inference aggregates neighbours; "
                         "ingest the store with its edges")
    n, dims = store.num_nodes, weights.dims
    feat_meta = store.array_meta("features")
    indptr_r = CheckedRows(store, store.graph.indptr, fix=_STORE_FIX)
    indices_r = CheckedRows(store, store.graph.indices, fix=_STORE_FIX)
    feats = CheckedRows(store, "features", fix=_STORE_FIX)
    readers = [indptr_r, indices_r, feats]
    tmp: Path | None = None
    try:
        max_deg = _max_in_degree(store, indptr_r, indices_r, n)
        costs, fixed = _costs_within(store, feat_meta.row_bytes, dims, weights.nbytes, max_deg,
                                     cpu_budget)
        room = None if cpu_budget is None else cpu_budget - fixed
        batch = layer_batch or (n if cpu_budget is not None else DEFAULT_LAYER_BATCH)
        batch = max(1, min(batch, max(n, 1)))

        pin_mmap_threshold()
        model = GraphSAGE(dims[0], dims[1] if len(dims) > 2 else dims[-1], dims[-1],
                          len(dims) - 1, dropout=0.0)
        model.load_state_dict(weights.state)
        model.eval()
        read_indptr, read_indices = _Counted(indptr_r.read), _Counted(indices_r.read)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".infer",
                                    dir=out_path.parent if str(out_path.parent) else "."))
        t0 = time.perf_counter()
        feats_into = _CheckedInto(feats)
        src_read, src_into = feats.read, feats_into
        src_row_bytes = feat_meta.row_bytes
        chunks_per_layer, peak, src = [], 0, None
        last = len(dims) - 2
        for layer, conv in enumerate(model.convs):
            dst = _RawRows(tmp / f"layer{layer}.f32", n, dims[layer + 1])
            readers.append(dst)
            per_dst, per_edge = costs[layer]
            count, done = 0, 0
            for p0 in range(0, n, PIECE_NODES):
                ip = read_indptr(p0, min(n, p0 + PIECE_NODES) + 1).astype(np.int64)
                for lo, hi in _plan_chunks(ip, p0, per_dst, per_edge, room, batch):
                    e0, e1 = int(ip[lo - p0]), int(ip[hi - p0])
                    peak = max(peak, per_dst * (hi - lo) + per_edge * (e1 - e0))
                    h = _chunk_forward(store, conv, layer < last, ip[lo - p0:hi - p0 + 1], lo, hi,
                                       read_indices(e0, e1).astype(np.int64), src_read,
                                       src_into, src_row_bytes, csr_adjacency)
                    dst.write(lo, h.numpy())
                    count += 1
                    done += hi - lo
                    if progress is not None:
                        progress(layer, len(dims) - 1, done, n)
            chunks_per_layer.append(count)
            src, src_read, src_into, src_row_bytes = dst, dst.read, dst.read_into, dst.row_bytes
        written = sum(r.bytes_written for r in readers if isinstance(r, _RawRows))
        written += _write_zarr(src, tmp / "out.zarr", n, dims[-1])
        seconds = time.perf_counter() - t0
        _place(tmp / "out.zarr", out_path, tmp, overwrite)
        read = (sum(r.bytes_read for r in readers if isinstance(r, _RawRows))
                + read_indptr.nbytes + read_indices.nbytes
                + feats_into.bytes_read
                + _checked_bytes([feats, indptr_r, indices_r]))
        return InferSummary(out=str(out_path), nodes=n, edges=indices_r.rows, dims=list(dims),
                            seconds=seconds,
                            nodes_per_s=n * (len(dims) - 1) / seconds if seconds > 0 else 0.0,
                            bytes_read=read, bytes_written=written, peak_chunk_bytes=peak,
                            chunks=chunks_per_layer, layer_batch=batch, cpu_budget=cpu_budget)
    finally:
        for r in readers:
            r.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


class _Counted:
    """``read(start, stop)`` that counts the bytes it returns (the graph's reads)."""

    def __init__(self, read: Callable[[int, int], np.ndarray]):
        self._read, self.nbytes = read, 0

    def __call__(self, start: int, stop: int) -> np.ndarray:
        rows = self._read(start, stop)
        self.nbytes += rows.nbytes
        return rows


def _max_in_degree(store: Store, indptr_r: CheckedRows, indices_r: CheckedRows, n: int) -> int:
    """One pass over indptr before anything is written: its sanity and the largest
    in-degree, which sets the smallest budget that can work."""
    if indptr_r.rows != n + 1:
        raise FormatError(f"store {store.path}: indptr has {indptr_r.rows} entries for "
                          f"{n} nodes: run `oocstore verify`; {_STORE_FIX}")
    max_deg, prev = 0, 0
    for p0 in range(0, n, PIECE_NODES):
        ip = indptr_r.read(p0, min(n, p0 + PIECE_NODES) + 1).astype(np.int64)
        deg = np.diff(ip)
        if ip[0] != prev or (deg.size and int(deg.min()) < 0):
            raise FormatError(f"store {store.path}: indptr is not non-decreasing near node "
                              f"{p0}: run `oocstore verify`; {_STORE_FIX}")
        max_deg = max(max_deg, int(deg.max()) if deg.size else 0)
        prev = int(ip[-1])
    if prev != indices_r.rows:
        raise FormatError(f"store {store.path}: indptr ends at {prev} but indices has "
                          f"{indices_r.rows} entries: run `oocstore verify`; {_STORE_FIX}")
    return max_deg


def _costs_within(store: Store, feat_row_bytes: int, dims, weight_bytes: int, max_deg: int,
                  cpu_budget: int | None) -> tuple[list[tuple[int, int]], int]:
    """Per layer the chunk cost (bytes per destination node, per edge) and the fixed bytes
    (weights, readers); refuses a ``cpu_budget`` below what the node with the most
    in-neighbours needs at the widest layer."""
    costs = []
    for i in range(len(dims) - 1):
        in_row = feat_row_bytes if i == 0 else 4 * dims[i]
        costs.append(chunk_cost(in_row, dims[i], dims[i + 1]))
    fixed = FIXED_BYTES + weight_bytes
    floor = fixed + max(d + e * max_deg for d, e in costs)
    if cpu_budget is not None and cpu_budget < floor:
        raise BudgetError(f"cpu_budget={format_size(cpu_budget)} is below the "
                          f"{format_size(floor)} inference needs (the weights, readers and "
                          f"the node with the most in-neighbours, {max_deg}, at the widest "
                          f"layer): give cpu_budget of at least {format_size(floor)}")
    return costs, fixed


def _chunk_forward(store: Store, conv, relu: bool, ip: np.ndarray, lo: int, hi: int,
                   nbr: np.ndarray, src_read, src_into, src_row_bytes: int, csr_adjacency):
    """One layer's output rows for destination nodes ``lo..hi-1`` (``ip``: their indptr
    slice, ``nbr``: their in-neighbours), from the previous layer's rows read through
    ``src_read`` / ``src_into``."""
    n = store.num_nodes
    dst_ids = np.arange(lo, hi, dtype=np.int64)
    ids = np.union1d(nbr, dst_ids)
    if ids.size and (ids[0] < 0 or ids[-1] >= n):
        raise FormatError(f"store {store.path}: an in-neighbour of nodes "
                          f"{lo}..{hi - 1} is outside 0..{n - 1}: run "
                          f"`oocstore verify`; {_STORE_FIX}")
    x = torch.from_numpy(gather_rows(src_read, ids, src_row_bytes, read_into=src_into))
    x = x.reshape(len(ids), -1).to(torch.float32)
    col = torch.from_numpy(np.searchsorted(ids, nbr))
    row = torch.from_numpy(np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(ip)))
    x_dst = x[torch.from_numpy(np.searchsorted(ids, dst_ids))]
    adj = csr_adjacency(torch.stack([col, row]), len(ids), hi - lo)
    with torch.no_grad():
        h = conv((x, x_dst), adj)
        if relu:
            h = torch.relu(h)
    return h


def _checked_bytes(readers: list[CheckedRows]) -> int:
    """Bytes the readers' first-touch checksum checks read (each checked chunk once)."""
    total = 0
    for r in readers:
        if r.verify:
            cb, nbytes = r.meta.chunk_bytes, r.meta.nbytes
            total += sum(min(cb, nbytes - c * cb) for c in np.flatnonzero(r._checked).tolist())
    return total


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


__all__ = ["InferSummary", "SageWeights", "check_out_path", "check_weights_fit", "chunk_cost",
           "gather_rows", "infer_embeddings", "load_sage_weights", "pin_mmap_threshold"]
