"""The layer-wise pass of out-of-core inference: a model over every node of a store,
one layer at a time, with full neighbourhoods (:class:`LayerPass`).

Layer ``l`` visits the nodes in node order, in chunks of consecutive destinations; for
each chunk it reads the chunk's in-neighbour lists, gathers the rows of the
destinations and of those neighbours from layer ``l``'s input, applies the model's own
layer to that block (:mod:`oocstore.infer_models`) and writes the chunk's output rows to
a temporary on-disk array. Layer ``l + 1`` reads only that array (the one before it is
deleted). So memory holds one chunk's neighbourhood and the weights, whatever the
graph's size; the limit is disk. ``oocstore infer`` (:mod:`oocstore.infer`) turns the
last layer into a zarr array; ``train --eval full`` (:mod:`oocstore.train.full_eval`)
compares its argmax with the labels chunk by chunk.

Reads go through ``pread`` (nothing is memory-mapped, so resident memory stays what the
chunk holds): the features through :class:`~oocstore.checked_read.CheckedRows`, which
checks each checksum chunk's CRC-32 the first time a read touches it, the CSC the same
way; hidden states through plain positional reads of the temporary files (written and
read back by this process). Neighbour ids are sorted and rows whose ids are close are
read as one span, so a chunk costs about one system call per run of nearby rows.

The chunk size comes from ``cpu_budget`` (bytes per destination and per edge of a
chunk, at the layer's input width and for the model's kind; see
:meth:`~oocstore.infer_models.LayerwiseModel.chunk_cost`), capped by ``layer_batch``;
the pass charges what it holds to a budget accountant. A budget below what the node
with the most in-neighbours needs, or a disk without room for a layer's output beside
its input, is refused before anything is written, with the figures.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .budget import BudgetAccountant, MemoryBudget
from .checked_read import SCRATCH, CheckedRows
from .errors import BudgetError, FormatError, UsageError
from .infer_models import LayerwiseModel
from .store import Store
from .units import format_size

#: Fix named when a store array read during inference is damaged.
_STORE_FIX = "restore the store or re-create it with `oocstore ingest --overwrite`"

#: Nodes of ``indptr`` read per piece while chunks are planned (chunks never cross a
#: piece boundary).
PIECE_NODES = 1 << 16
#: Default destinations per chunk when neither ``layer_batch`` nor a budget is given.
DEFAULT_LAYER_BATCH = 8192
#: Rows further apart than this many bytes are read with separate ``pread`` calls;
#: closer ones as one span (the rows between are read and dropped): within a page the
#: disk reads them anyway.
GAP_BYTES = 4 << 10
#: Memory held apart from the chunk: the two readers' scratch buffers, one planning piece
#: of ``indptr`` (and its cost prefix sums), the zarr copy buffer.
FIXED_BYTES = 3 * SCRATCH + PIECE_NODES * 8 * 3 + (1 << 20)


def check_sizes(layer_batch: int | None, cpu_budget: int | None) -> None:
    """Refuse a ``layer_batch`` or ``cpu_budget`` that is not a positive integer."""
    if layer_batch is not None and (isinstance(layer_batch, bool)
                                    or not isinstance(layer_batch, int) or layer_batch < 1):
        raise UsageError(f"layer_batch={layer_batch!r} is not an integer >= 1")
    if cpu_budget is not None and (isinstance(cpu_budget, bool)
                                   or not isinstance(cpu_budget, int) or cpu_budget < 1):
        raise UsageError(f"cpu_budget={cpu_budget!r} is not a positive size")


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
                read_into: Callable[[np.ndarray, int, int], None] | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``ids`` (sorted, distinct) via ``read(start, stop)``, into one array allocated
    up front (or ``out``, ``len(ids)`` rows): ids closer than ``gap_bytes`` are read as
    one span of at most ``span_bytes`` (at least one row), which is the only other
    buffer. ``read_into(buf, start, stop)``, where given, fills ``buf`` with rows
    ``[start, stop)`` in place (no temporary array per span)."""
    empty = read(0, 0)
    if out is None:
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


class LayerPass:
    """One layer-by-layer pass of ``model`` over every node of ``store`` (module
    docstring), within ``cpu_budget``.

    Opening it checks everything a pass needs before anything is written: the graph,
    ``indptr``'s sanity and the budget's minimum (:class:`~oocstore.errors.BudgetError`
    naming it). :meth:`run` then writes each layer's rows to a file under a directory
    the caller owns; the file a layer read is removed once the next layer is written.
    ``extra_fixed`` / ``last_per_dst``: bytes a caller holds beside the pass for its
    whole length, and per destination of the last layer's chunks (what it does with
    them), counted in the budget. ``accountant``: where the pass charges what it holds
    (the fixed bytes for the whole run, each chunk's estimate while it is processed;
    default: an accountant of ``cpu_budget`` of its own). Close it (context manager) to
    close its files."""

    def __init__(self, store: Store, model: LayerwiseModel, *, cpu_budget: int | None = None,
                 layer_batch: int | None = None, extra_fixed: int = 0,
                 last_per_dst: int = 0, accountant: BudgetAccountant | None = None):
        check_sizes(layer_batch, cpu_budget)
        self.accountant = accountant or BudgetAccountant(MemoryBudget(cpu=cpu_budget))
        if store.graph is None:
            raise UsageError(f"store {store.path} has no graph: inference aggregates "
                             "neighbours; ingest the store with its edges")
        self.store, self.model, self.n = store, model, store.num_nodes
        self.feat_meta = store.array_meta("features")
        self.indptr_r = CheckedRows(store, store.graph.indptr, fix=_STORE_FIX)
        self.indices_r = CheckedRows(store, store.graph.indices, fix=_STORE_FIX)
        self.feats = CheckedRows(store, "features", fix=_STORE_FIX)
        self.edges = self.indices_r.rows
        self._files: list[_RawRows] = []
        try:
            max_deg = _max_in_degree(store, self.indptr_r, self.indices_r, self.n)
            self.costs, self.fixed = _costs_within(store, self.feat_meta.row_bytes, model,
                                                   max_deg, cpu_budget, extra_fixed,
                                                   last_per_dst)
        except BaseException:
            self.close()
            raise
        self.room = None if cpu_budget is None else cpu_budget - self.fixed
        batch = layer_batch or (self.n if cpu_budget is not None else DEFAULT_LAYER_BATCH)
        self.batch = max(1, min(batch, max(self.n, 1)))
        self.chunks: list[int] = []
        self.peak = 0
        self._read_indptr = _Counted(self.indptr_r.read)
        self._read_indices = _Counted(self.indices_r.read)
        self._feats_into = _CheckedInto(self.feats)
        self._hidden_read = self._hidden_written = 0

    def disk_need(self, last_to_file: bool = True) -> int:
        """Bytes of hidden states on disk at the pass's peak: a layer's output file
        beside the file it reads (the last layer writes none with ``last_to_file``
        False)."""
        d, n, layers = self.model.dims, self.n, self.model.num_layers
        return max(4 * n * ((d[i + 1] if i < layers - 1 or last_to_file else 0)
                            + (d[i] if i else 0)) for i in range(layers))

    def check_disk(self, directory: Path, need: int, fix: str) -> None:
        """Refuse a pass whose ``need`` bytes of temporary files do not fit in the free
        space of ``directory`` (before anything is written there)."""
        free = shutil.disk_usage(directory).free
        if free < need:
            raise UsageError(f"{directory}: the layer-wise pass needs {format_size(need)} of "
                             f"disk for its hidden states ({self.n} nodes, widths "
                             f"{', '.join(map(str, self.model.dims[1:]))}) but "
                             f"{format_size(free)} are free: free space there, or {fix}")

    def run(self, tmp: Path,
            progress: Callable[[int, int, int, int], Any] | None = None,
            last_chunk: Callable[[int, int, torch.Tensor], Any] | None = None
            ) -> _RawRows | None:
        """Run every layer; the last layer's rows as an open file under ``tmp``, or, with
        ``last_chunk``, ``last_chunk(lo, hi, logits)`` for each of its chunks instead (no
        file). ``progress(layer, layers, nodes_done, nodes)`` after every chunk."""
        pin_mmap_threshold()
        with self.accountant.charge("cpu", self.fixed, f"{self.model.kind} inference: weights, "
                                    "readers' buffers, an indptr piece"):
            return self._run(tmp, progress, last_chunk)

    def _run(self, tmp: Path, progress, last_chunk) -> _RawRows | None:
        n, layers = self.n, self.model.num_layers
        src_read, src_into = self.feats.read, self._feats_into
        src_row_bytes, src = self.feat_meta.row_bytes, None
        for layer in range(layers):
            to_file = layer < layers - 1 or last_chunk is None
            dst = _RawRows(tmp / f"layer{layer}.f32", n, self.model.dims[layer + 1]) \
                if to_file else None
            if dst is not None:
                self._files.append(dst)
            per_dst, per_edge = self.costs[layer]
            count = done = 0
            for p0 in range(0, n, PIECE_NODES):
                ip = self._read_indptr(p0, min(n, p0 + PIECE_NODES) + 1).astype(np.int64)
                for lo, hi in _plan_chunks(ip, p0, per_dst, per_edge, self.room, self.batch):
                    e0, e1 = int(ip[lo - p0]), int(ip[hi - p0])
                    cost = per_dst * (hi - lo) + per_edge * (e1 - e0)
                    self.peak = max(self.peak, cost)
                    with self.accountant.charge("cpu", cost, f"layer {layer} chunk of nodes "
                                                f"{lo}..{hi - 1}"):
                        h = _block_forward(self.store, self.model, layer,
                                           ip[lo - p0:hi - p0 + 1], lo, hi,
                                           self._read_indices(e0, e1).astype(np.int64),
                                           src_read, src_into, src_row_bytes)
                        if dst is not None:
                            dst.write(lo, h.numpy())
                        else:
                            last_chunk(lo, hi, h)
                        del h
                    count += 1
                    done += hi - lo
                    if progress is not None:
                        progress(layer, layers, done, n)
            self.chunks.append(count)
            if src is not None:  # the previous layer's rows are no longer needed
                self._drop(src)
            if dst is not None:
                src, src_read, src_into, src_row_bytes = dst, dst.read, dst.read_into, \
                    dst.row_bytes
        return src if last_chunk is None else None

    def _drop(self, f: _RawRows) -> None:
        self._hidden_read += f.bytes_read
        self._hidden_written += f.bytes_written
        f.close()
        f.path.unlink(missing_ok=True)
        self._files.remove(f)

    @property
    def bytes_written(self) -> int:
        """Hidden states written."""
        return self._hidden_written + sum(f.bytes_written for f in self._files)

    @property
    def bytes_read(self) -> int:
        """Features, CSC (with their first-touch checksum reads) and hidden states read."""
        return (self._hidden_read + sum(f.bytes_read for f in self._files)
                + self._read_indptr.nbytes + self._read_indices.nbytes
                + self._feats_into.bytes_read
                + _checked_bytes([self.feats, self.indptr_r, self.indices_r]))

    def close(self) -> None:
        for f in list(self._files):
            self._hidden_written += f.bytes_written
            self._hidden_read += f.bytes_read
            f.close()
        self._files.clear()
        for r in (self.indptr_r, self.indices_r, self.feats):
            r.close()

    def __enter__(self) -> "LayerPass":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def _costs_within(store: Store, feat_row_bytes: int, model: LayerwiseModel, max_deg: int,
                  cpu_budget: int | None, extra_fixed: int = 0, last_per_dst: int = 0
                  ) -> tuple[list[tuple[int, int]], int]:
    """Per layer the chunk cost (bytes per destination node, per edge) and the fixed bytes
    (weights, readers, ``extra_fixed``); refuses a ``cpu_budget`` below what the node with
    the most in-neighbours needs at the costliest layer."""
    dims, costs = model.dims, []
    for i in range(len(dims) - 1):
        d, e = model.chunk_cost(i, feat_row_bytes if i == 0 else 4 * dims[i])
        costs.append((d + (last_per_dst if i == len(dims) - 2 else 0), e))
    fixed = FIXED_BYTES + model.nbytes + extra_fixed
    floor = fixed + max(d + e * max_deg for d, e in costs)
    if cpu_budget is not None and cpu_budget < floor:
        raise BudgetError(f"cpu_budget={format_size(cpu_budget)} is below the "
                          f"{format_size(floor)} {model.kind} inference needs (the weights, "
                          f"readers and the node with the most in-neighbours, {max_deg}, at "
                          f"the costliest layer): give cpu_budget of at least "
                          f"{format_size(floor)}")
    return costs, fixed


def _block_forward(store: Store, model: LayerwiseModel, layer: int, ip: np.ndarray, lo: int,
                   hi: int, nbr: np.ndarray, src_read, src_into, src_row_bytes: int
                   ) -> torch.Tensor:
    """Layer ``layer``'s output rows for destination nodes ``lo..hi-1`` (``ip``: their
    indptr slice, ``nbr``: their in-neighbours), from the previous layer's rows read
    through ``src_read`` / ``src_into``. The block's sources are the destinations
    (local ids ``0..hi-lo-1``, read as one run) followed by the other in-neighbours in
    id order, the layout the model's layers take (:mod:`oocstore.infer_models`)."""
    n, num_dst = store.num_nodes, hi - lo
    if nbr.size and (int(nbr.min()) < 0 or int(nbr.max()) >= n):
        raise FormatError(f"store {store.path}: an in-neighbour of nodes "
                          f"{lo}..{hi - 1} is outside 0..{n - 1}: run "
                          f"`oocstore verify`; {_STORE_FIX}")
    inside = (nbr >= lo) & (nbr < hi)
    others = np.unique(nbr[~inside])
    empty = src_read(0, 0)
    rows = np.empty((num_dst + len(others), *empty.shape[1:]), dtype=empty.dtype)
    src_into(rows[:num_dst], lo, hi)
    gather_rows(src_read, others, src_row_bytes, read_into=src_into, out=rows[num_dst:])
    x = torch.from_numpy(rows).reshape(len(rows), -1).to(torch.float32)
    local = np.where(inside, nbr - lo, num_dst + np.searchsorted(others, nbr))
    row = np.repeat(np.arange(num_dst, dtype=np.int64), np.diff(ip))
    edge_index = torch.stack([torch.from_numpy(local), torch.from_numpy(row)])
    return model.layer(layer, x, edge_index, num_dst)


def _checked_bytes(readers: list[CheckedRows]) -> int:
    """Bytes the readers' first-touch checksum checks read (each checked chunk once)."""
    total = 0
    for r in readers:
        if r.verify:
            cb, nbytes = r.meta.chunk_bytes, r.meta.nbytes
            total += sum(min(cb, nbytes - c * cb) for c in np.flatnonzero(r._checked).tolist())
    return total


__all__ = ["DEFAULT_LAYER_BATCH", "LayerPass", "check_sizes", "gather_rows",
           "pin_mmap_threshold"]
