"""GNN feature loaders side by side: in-memory, mmap, Ginex-style, DGL, oocstore.

On the same store, plan (the same batches, in the same order) and CPU budget, one run
measures, rounds interleaved (``--rounds``, medians reported):

1. **in-memory**: every feature row in RAM (``InMemoryFeatures``), a torch gather per
   batch -- the ceiling where the features fit (they do here, so it can be measured);
2. **mmap**: ``np.memmap`` of the base feature file and ``feats[input_nodes]`` per batch
   (what DGL / PyG do with features on disk); the page cache is emptied after *every*
   batch ("cold per batch": the regime of features far larger than RAM);
3. **Ginex-style** (a re-implementation following the published design, not Ginex's
   code): offline superbatch sampling (the plan), a CPU row cache within the same budget
   that starts holding the hottest rows and then follows Belady's optimal schedule
   worked out per superbatch (``oocstore.pack.placement.belady_schedule``, state carried
   across superbatches), and the misses read with 4 KiB-aligned ``O_DIRECT`` reads through
   oocstore's own reader (``BaseRowTier``: native AIO, rows whose pages touch in one
   request; a thread pool where AIO is unavailable);
4. **DGL** ``DataLoader`` + ``NeighborSampler`` (online sampling of the same seeds in the
   same batches, same fanouts) with features from ``np.memmap``, cold per batch, in the
   DGL environment (``.venv-dgl``, ``bench/gnn_loaders_dgl.py``) -- skipped, and said so,
   when that environment is absent;
5. **oocstore-noprefetch**: ``NodeLoader(prefetch=0)`` (reads in the training thread);
6. **oocstore**: ``NodeLoader`` with its default prefetch depth.

Every loader runs in a fresh subprocess (so its peak RSS is its own), its files evicted
from the page cache (``posix_fadvise`` DONTNEED, memmaps closed first) before the timed
run; set-up (reading the features into RAM, filling a cache tier, the Belady
simulation) is timed separately as ``setup_s``. Each batch trains a small GraphSAGE step
(PyG ``SAGEConv``, DGL ``SAGEConv`` for the DGL peer) so compute is real:
``epoch_time_s`` is the wall time of the epoch, ``load_time_s`` the time spent
delivering features (measured inline for the synchronous loaders; for oocstore with
prefetch, whose reads overlap compute, by a separate cold pass without compute).

The epoch: ``--batches`` batches of ``--batch-size`` seeds drawn at random from the
training split (a training set of a few percent of the nodes, as in ogbn-papers100M),
so every loader times the whole epoch and nothing is extrapolated.

Bytes: ``bytes_read`` from the loader's own counters where it has them (oocstore,
Ginex-style), cross-checked with ``/proc/self/io`` ``read_bytes`` of the loader's
process (``proc_read_bytes``; the only source for mmap and DGL); ``useful_bytes`` = rows
read from storage (cache hits excluded) x row bytes; ``read_amplification`` = their
ratio. The machine's sequential ``O_DIRECT`` read speed (8 MiB requests over the
feature file) is measured in the same run, each round.

Configurations: (a) synthetic R-MAT, features >= 4x the CPU budget, every loader;
(b) ``coauthor_phy`` (``../shared/data``; skipped when absent) with a budget of 10 % of
its feature bytes; (c) the store of (a) with a CPU cache of 25 % of the feature bytes
and a budget that holds it plus the working set: in-memory, Ginex-style and oocstore.

Prints a table per configuration with ratios, the targets met or missed (with the
bottleneck stage when missed), then one JSON line; writes
``bench/results/gnn_loaders.json`` and ``.png``. ``--toy`` runs at test size in seconds.

    python bench/gnn_loaders.py --json              # default size, about 10 minutes
    python bench/gnn_loaders.py --scale 4 --json    # 4x the nodes (about 12 GB of features)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _common import (SHARED_DATA, dgl_python, machine_info, peak_rss_bytes,  # noqa: E402
                     read_bytes, rss_bytes, run_json, write_result)

from oocstore.errors import UsageError  # noqa: E402

LOADERS = ("in-memory", "mmap", "ginex", "dgl", "oocstore-noprefetch", "oocstore")
#: Loaders of configuration (c), the comparison with in-memory (mmap and DGL do not
#: depend on the budget; (a) shows what prefetch buys).
CACHE_LOADERS = ("in-memory", "ginex", "oocstore")
#: Cold per batch through the page cache: each batch faults in most of the feature file
#: (read-ahead), so these take seconds per batch; ``--slow-rounds`` bounds their repeats.
SLOW = ("mmap", "dgl")
#: Loaders also timed over the longer window (``--long-batches``): the targets between
#: them (vs Ginex-style, bandwidth, 25 % cache vs in-memory) are read from it
#: (in-memory only in configuration (c), where a target uses it).
LONG = ("in-memory", "ginex", "oocstore")
PLAN = "gnn-loaders"
#: Random 4 KiB reads at queue depth 32 on this machine (fio, libaio and io_uring;
#: /work/shared/BENCHMARKS.md): the ceiling a row-read design such as Ginex aims at.
QD32_4K_IOPS = 85_000
TARGETS = {"vs_mmap": 20.0, "vs_ginex": 3.0, "bandwidth_fraction": 0.8,
           "amplification": 1.05, "cache25_vs_in_memory": 1.3}
MB = 1e6


# =====================================================================================
# Worker side: one loader, one cold run, in this (fresh) process
# =====================================================================================

def _evict(paths: list[str]) -> None:
    from oocstore.store.files import evict

    for p in paths:
        evict(Path(p))


def store_files(path: str | Path) -> list[str]:
    """Every data file of a store (features, graph, plans, packs; not the catalog): all of
    them are evicted before a timed run, so plan records and pack indexes are read cold
    too."""
    root = Path(path)
    return sorted(str(f) for f in root.rglob("*")
                  if f.is_file() and "catalog.lmdb" not in f.parts and not f.name.endswith(".lock"))


def _model(spec: dict):
    import torch

    from oocstore.train.model import GraphSAGE

    torch.manual_seed(spec["seed"])
    model = GraphSAGE(spec["feat_dim"], spec["hidden"], spec["classes"], spec["layers"])
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    return model, opt


def _step(model, opt, sample, x, y) -> None:
    import torch.nn.functional as F

    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model.forward_batch(sample, x), y)
    loss.backward()
    opt.step()


def _warm_up(model, opt, plan, spec: dict) -> None:
    """One step on zero features (no I/O): loads kernels before anything is timed."""
    import torch

    from oocstore.tiers.assemble import warm_up

    warm_up(np.dtype(spec["dtype"]))
    s = plan.read_batch(0, 0)
    x = torch.zeros((len(s.input_nodes), spec["feat_dim"]))
    _step(model, opt, s, x, torch.zeros(len(s.seeds), dtype=torch.int64))


class _Run:
    """Timers and counters of one timed epoch."""

    def __init__(self) -> None:
        self.load = 0.0
        self.excluded = 0.0  # eviction between batches (stands for a small page cache)
        self.rows = 0
        self.stages: dict[str, float] = {}
        self.io0 = read_bytes()
        self.t0 = time.perf_counter()

    def stage(self, name: str, seconds: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + seconds

    def result(self, **kw) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0 - self.excluded
        return {"epoch_time_s": wall, "load_time_s": self.load, "rows": self.rows,
                "proc_read_bytes": read_bytes() - self.io0, "stages_s": self.stages,
                "excluded_s": self.excluded, **kw}


def timed(items, run: _Run):
    """The items of ``items``, the wait for each (its production by the loader) added to
    ``run.load``; what the consumer does between them is not counted."""
    it = iter(items)
    while True:
        t = time.perf_counter()
        item = next(it, None)
        if item is None:
            return
        run.load += time.perf_counter() - t
        yield item


def _labels(store) -> np.ndarray:
    return np.array(store.array("labels"), dtype=np.int64)


def _read_features(store) -> np.ndarray:
    """All feature rows into RAM with plain reads (no mapping: resident memory is the
    copy alone, as for ``InMemoryFeatures``)."""
    fm = store.array_meta("features")
    return np.fromfile(store.file_path(fm), dtype=fm.np_dtype, count=int(np.prod(fm.shape)),
                       offset=fm.offset).reshape(fm.shape)


def worker_in_memory(spec, store, plan, model, opt) -> dict:
    import torch

    t = time.perf_counter()
    feats = torch.from_numpy(_read_features(store))
    labels = torch.from_numpy(_labels(store))
    _evict(spec["files"])  # the read above went through the page cache
    setup = time.perf_counter() - t
    run = _Run()
    for b in range(spec["batches"]):
        sample = plan.read_batch(0, b)
        t = time.perf_counter()
        nodes = torch.from_numpy(sample.input_nodes.astype(np.int64))
        x = feats.index_select(0, nodes)  # what InMemoryFeatures.gather does
        y = labels.index_select(0, nodes[:len(sample.seeds)])
        run.load += time.perf_counter() - t
        run.rows += x.shape[0]
        _step(model, opt, sample, x, y)
    return run.result(setup_s=setup, bytes_read=0, useful_bytes=0, cold="none (all in RAM)")


def worker_mmap(spec, store, plan, model, opt) -> dict:
    import torch

    labels = torch.from_numpy(_labels(store))
    fm = store.array_meta("features")
    path = store.file_path(fm)
    fbytes = 0
    run = _Run()
    for b in range(spec["batches"]):
        sample = plan.read_batch(0, b)
        feats = np.memmap(path, dtype=fm.np_dtype, mode="r", offset=fm.offset, shape=fm.shape)
        io = read_bytes()
        t = time.perf_counter()
        x = torch.from_numpy(feats[sample.input_nodes])
        run.load += time.perf_counter() - t
        fbytes += read_bytes() - io
        run.rows += x.shape[0]
        t = time.perf_counter()
        del feats
        _evict([str(path)])  # cold per batch; not timed
        run.excluded += time.perf_counter() - t
        _step(model, opt, sample, x, labels[torch.from_numpy(sample.seeds.astype(np.int64))])
    res = run.result(setup_s=0.0, cold="per-batch")
    res["bytes_read"] = fbytes  # /proc/self/io around the gathers: the page cache counts nothing
    res["useful_bytes"] = res["rows"] * fm.row_bytes
    return res


def _ginex_kernels():
    import numba

    @numba.njit(nogil=True, cache=False)
    def fill_hits(cache, hit, out):
        d = out.shape[1]
        for i in range(hit.shape[0]):
            s = hit[i]
            if s >= 0:
                for j in range(d):
                    out[i, j] = cache[s, j]

    @numba.njit(nogil=True, cache=False)
    def insert(cache, out, pos, slot):
        d = out.shape[1]
        for k in range(pos.shape[0]):
            for j in range(d):
                cache[slot[k], j] = out[pos[k], j]

    return fill_hits, insert


def ginex_schedule(plan, batches: int, superbatch: int, cache_rows: int, init_ids: np.ndarray):
    """Belady's schedule of a ``cache_rows`` cache over epoch 0's first ``batches``
    batches, worked out one superbatch at a time (as Ginex's inspector does), the cache
    carried from one superbatch to the next. Returns per position the cache slot or -1,
    and per batch the admissions ``(position within the batch, slot)``."""
    from oocstore.pack.placement import belady_schedule

    index = np.asarray(plan.index())[:batches]
    offs = np.ascontiguousarray(index[:, 0])
    ninput = np.ascontiguousarray(index[:, 3])
    data = plan.records  # the plan's records (memory map): the superbatch's samples
    pstart = np.concatenate([[0], np.cumsum(ninput)]).astype(np.int64)
    node_tier = np.ones(plan.meta.num_nodes, dtype=np.int8)  # every row may be cached
    hit = np.empty(int(pstart[-1]), dtype=np.int32)
    inserts: list[tuple[np.ndarray, np.ndarray]] = []
    slots = np.full(max(cache_rows, 1), -1, dtype=np.int64)
    slots[:init_ids.size] = init_ids
    for s0 in range(0, batches, superbatch):
        s1 = min(batches, s0 + superbatch)
        filled = int(np.count_nonzero(slots >= 0))
        h, ins_pos, ins_slot, ins_count = belady_schedule(
            data, offs[s0:s1], ninput[s0:s1], np.array([0, s1 - s0]), node_tier, cache_rows,
            slots[:filled])
        p0 = int(pstart[s0])
        hit[p0:int(pstart[s1])] = h
        k = 0
        for b in range(s0, s1):
            c = int(ins_count[b - s0])
            pos = ins_pos[k:k + c] + p0  # epoch positions
            inserts.append((pos - pstart[b], ins_slot[k:k + c].astype(np.int64)))
            for q, sl in zip(pos.tolist(), ins_slot[k:k + c].tolist()):
                slots[sl] = data[offs[b] + (q - pstart[b])]
            k += c
    return hit, pstart, inserts


def fill_cache(store, ids: np.ndarray, cache: np.ndarray, chunk: int = 32 << 20,
               array: str = "features") -> None:
    """``cache[k] = features[ids[k]]`` with one sequential O_DIRECT scan of the feature
    file in ``chunk``-byte reads (never mapped, so resident memory is the cache);
    ``array``: the feature array (a node type's, ``bench/hetero_loaders.py``)."""
    from oocstore.store import ALIGN
    from oocstore.store.files import DirectReader, aligned_empty

    fm = store.array_meta(array)
    rb = fm.row_bytes
    order = np.argsort(ids, kind="stable")
    sids = ids[order]
    buf = aligned_empty(chunk + 2 * ALIGN)
    rows_per = chunk // rb
    with DirectReader(store.file_path(fm)) as r:
        for lo in range(0, fm.shape[0], rows_per):
            hi = min(fm.shape[0], lo + rows_per)
            a, b = np.searchsorted(sids, [lo, hi])
            if a == b:
                continue
            start = fm.offset + lo * rb
            base = start // ALIGN * ALIGN
            length = -(-(start + (hi - lo) * rb - base) // ALIGN) * ALIGN
            r.read_into(buf[:length], base)
            rows = np.frombuffer(buf, dtype=fm.np_dtype, count=(hi - lo) * fm.shape[1],
                                 offset=start - base).reshape(hi - lo, fm.shape[1])
            cache[order[a:b]] = rows[sids[a:b] - lo]


def worker_ginex(spec, store, plan, model, opt) -> dict:
    import torch

    from oocstore.pack.placement import static_placement
    from oocstore.tiers.ssd import BaseRowTier

    labels = torch.from_numpy(_labels(store))
    fm = store.array_meta("features")
    g = spec["ginex"]
    t = time.perf_counter()
    fill_hits, insert = _ginex_kernels()
    counts = np.asarray(plan.access_counts())
    _, init_ids = static_placement(counts, 0, g["cache_rows"])
    # whole superbatches: the schedule of the timed batches sees their superbatch's future
    sb = g["superbatch"]
    scheduled = min(plan.num_batches(0), -(-spec["batches"] // sb) * sb)
    hit, pstart, inserts = ginex_schedule(plan, scheduled, sb, g["cache_rows"], init_ids)
    cache = np.zeros((max(g["cache_rows"], 1), fm.shape[1]), dtype=fm.np_dtype)
    fill_cache(store, init_ids, cache)
    base = BaseRowTier(store.file_path(fm), fm, threads=g["io_threads"])
    fill_hits(cache, hit[:1], np.zeros((1, fm.shape[1]), fm.np_dtype))  # compile now
    insert(cache, np.zeros((1, fm.shape[1]), fm.np_dtype), np.zeros(0, np.int64),
           np.zeros(0, np.int64))
    _evict(spec["files"])
    setup = time.perf_counter() - t
    misses = 0
    run = _Run()
    for b in range(spec["batches"]):
        sample = plan.read_batch(0, b)
        t0 = time.perf_counter()
        h = hit[pstart[b]:pstart[b + 1]]
        out = np.empty((h.size, fm.shape[1]), dtype=fm.np_dtype)
        fill_hits(cache, h, out)
        t1 = time.perf_counter()
        miss = np.flatnonzero(h < 0)
        if miss.size:
            tmp = np.empty((miss.size, fm.shape[1]), dtype=fm.np_dtype)
            base.gather(sample.input_nodes[miss], tmp)
            out[miss] = tmp
        t2 = time.perf_counter()
        pos, slot = inserts[b]
        insert(cache, out, pos, slot)
        t3 = time.perf_counter()
        run.stage("cache hits (gather)", t1 - t0)
        run.stage("miss reads (O_DIRECT rows)", t2 - t1)
        run.stage("cache inserts", t3 - t2)
        run.load += t3 - t0
        run.rows += h.size
        misses += miss.size
        _step(model, opt, sample, torch.from_numpy(out),
              labels[torch.from_numpy(sample.seeds.astype(np.int64))])
    st = base.stats()
    base.close()
    read_s = run.stages.get("miss reads (O_DIRECT rows)", 0.0)
    return run.result(setup_s=setup, bytes_read=st["bytes_read"], useful_bytes=st["useful_bytes"],
                      cold="per-run", cache_rows=g["cache_rows"], superbatch=g["superbatch"],
                      io_threads=g["io_threads"], misses=misses,
                      hit_rate=1 - misses / max(run.rows, 1),
                      iops=misses / read_s if read_s else None,
                      iops_vs_qd32_4k=(misses / read_s / QD32_4K_IOPS) if read_s else None)


def worker_oocstore(spec, store, plan, model, opt) -> dict:
    from oocstore.budget import MemoryBudget
    from oocstore.loader import NodeLoader
    from ssd_epoch import Split

    prefetch = 0 if spec["loader"] == "oocstore-noprefetch" else None
    budget = MemoryBudget(cpu=spec["budget"])

    def one_pass(train: bool) -> dict:
        t = time.perf_counter()
        loader = NodeLoader(store, spec["plan"], pack=spec["pack"], budget=budget,
                            prefetch=prefetch)
        cut_plan(loader.reader.plan, spec["batches"])
        _evict(spec["files"])
        setup = time.perf_counter() - t
        split = Split()
        run = _Run()
        cpu0 = sum(os.times()[:2])  # this process's CPU (all threads): vs the wall, contention
        with split:
            for batch in timed(loader, run):
                run.rows += batch.x.shape[0]
                if train:
                    _step(model, opt, batch.sample, batch.x, batch.y)
        res = run.result(setup_s=setup)
        st = loader.stats()
        loader.close()
        res.update(bytes_read=st["bytes_read"], useful_bytes=st["useful_bytes"],
                   prefetch=st["prefetch"], hit_rate=st["hit_rate"],
                   segment_reads=st["segment_reads"], direct_io=st["direct_io"],
                   stages_s={"segment reads (O_DIRECT)": split.read,
                             "assembly (numba)": split.gather,
                             # the reading thread waiting for rows its helper copies
                             "assembly helper waits": st.get("assembly", {}).get("wait_s", 0.0),
                             "process CPU (all threads)": sum(os.times()[:2]) - cpu0,
                             **{k: v for k, v in (st["epochs"][-1] if st["epochs"] else {}).items()
                                if k.endswith("_s") and k != "time_s"}})
        return res

    if prefetch == 0:
        res = one_pass(True)  # synchronous: time in next() is the loading time
    else:
        load = one_pass(False)  # reads overlap compute when training: time them alone
        res = one_pass(True)
        res["train_pass_wait_s"] = res["load_time_s"]
        res["load_time_s"] = load["load_time_s"]
        res["load_pass"] = {k: load[k] for k in ("load_time_s", "bytes_read", "useful_bytes",
                                                 "proc_read_bytes", "stages_s")}
    res["cold"] = "per-run"
    return res


WORKERS = {"in-memory": worker_in_memory, "mmap": worker_mmap, "ginex": worker_ginex,
           "oocstore-noprefetch": worker_oocstore, "oocstore": worker_oocstore}


def cut_plan(plan, batches: int) -> None:
    """Make ``plan`` end its epoch 0 after the timed prefix, so that no loader reads ahead
    past the batches that are timed (the pipeline and the segment read-ahead both stop at
    the plan's last batch): the byte counters then cover exactly the timed batches."""
    full = plan.num_batches

    def num_batches(epoch: int) -> int:
        return min(batches, full(epoch)) if epoch == 0 else full(epoch)

    plan.num_batches = num_batches


def run_worker(spec: dict, workers: dict | None = None) -> dict:
    """Run one loader (``spec["loader"]``, looked up in ``workers``, default
    :data:`WORKERS`) in this process and return its figures; a worker that stopped early
    reports how many batches it did as ``batches_done``."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from oocstore.plan import PlanReader
    from oocstore.store import Store

    rss0 = rss_bytes()
    with Store(spec["store"]) as store:
        plan = PlanReader(store, spec["plan"])
        model, opt = _model(spec)
        _warm_up(model, opt, plan, spec)
        rss_ready = rss_bytes()
        res = (workers or WORKERS)[spec["loader"]](spec, store, plan, model, opt)
    res.update(loader=spec["loader"], batches=res.pop("batches_done", spec["batches"]),
               peak_rss_bytes=peak_rss_bytes(), rss_after_imports_bytes=rss0,
               rss_before_loader_bytes=rss_ready)
    return res


def worker_main(spec_path: str) -> None:
    print(json.dumps(run_worker(json.loads(Path(spec_path).read_text())), default=float))


# =====================================================================================
# Driver side: set-up, interleaved rounds, medians, ratios, report
# =====================================================================================

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def setup_store(path: Path, source, label: str) -> None:
    from oocstore.ingest import build_store

    if not (path / "catalog.lmdb").is_dir():
        log(f"[{label}] building store {path} ...")
        path.parent.mkdir(parents=True, exist_ok=True)
        build_store(path, source, overwrite=True)


def setup_plan_pack(path: Path, *, fanouts: str, batch_size: int, epoch_batches: int,
                    budget: int, cpu_cache: int | None, pack: str, label: str) -> dict:
    """Plan (one epoch of ``epoch_batches`` batches of random training seeds) and pack
    ``pack`` inside ``budget`` (cache sizes from the cost model, or ``cpu_cache``); both
    are reused when a previous run made them with the same settings."""
    from oocstore.pack import PackOptions, pack_plan
    from oocstore.pack.format import PackMeta, pack_key
    from oocstore.plan import PlanReader
    from oocstore.store import Store
    from oocstore.samplers import sample_plan

    with Store(path, readonly=False) as store:
        train = store.split("train")
        if train.size < epoch_batches * batch_size:
            raise UsageError(f"store {path}: {train.size} training seeds cannot fill "
                             f"{epoch_batches} batches of {batch_size}: lower --epoch-batches "
                             "or --batch-size")
        seeds = np.random.default_rng(0).permutation(train)[:epoch_batches * batch_size]
        pm = store.get(f"plan/{PLAN}")
        if pm is None or (pm["num_seeds"], pm["batch_size"], list(pm["fanouts"])) != \
                (seeds.size, batch_size, [int(f) for f in fanouts.split(",")]):
            log(f"[{label}] sampling {epoch_batches} batches ...")
            sample_plan(store, fanouts=fanouts, batch_size=batch_size, epochs=1, name=PLAN,
                        seeds=seeds, verify=False, overwrite=True, seed=0)
            store.refresh()
        plan = PlanReader(store, PLAN)
        pv = store.array_meta(plan.meta.arrays["index"]).version
        fm = store.array_meta("features")
        rb = fm.row_bytes
        if cpu_cache is None:
            from oocstore.pack.costmodel import Bandwidths, choose_split

            options, _, _ = choose_split(store, plan, cpu_budget=budget, bw=Bandwidths())
        else:
            options = PackOptions(cpu_cache=cpu_cache, max_disk_blowup=4.0)
        old = store.get(pack_key(pack))
        meta = PackMeta.from_dict(old) if old is not None else None
        if meta is None or meta.plan_version != pv or meta.cpu_rows != options.cpu_cache // rb \
                or (options.segment_batches and meta.segment_batches != options.segment_batches) \
                or "segment_crc" not in meta.arrays:
            log(f"[{label}] packing (cpu cache {options.cpu_cache / 2**20:.0f} MiB, budget "
                f"{budget / 2**20:.0f} MiB) ...")
            meta = pack_plan(store, PLAN, name=pack, options=options, overwrite=True)
            store.refresh()
        files = [str(store.file_path(fm))] + [f for f in store_files(path)
                                              if f != str(store.file_path(fm))]
        labels = np.asarray(store.array("labels"))
        mws = meta.min_working_set
        return {"store": str(path), "plan": PLAN, "pack_name": pack, "feat_dim": int(fm.shape[1]),
                "dtype": str(fm.np_dtype), "nodes": int(fm.shape[0]), "row_bytes": int(rb),
                "feature_bytes": int(fm.nbytes), "classes": int(labels.max()) + 1,
                "layers": plan.meta.num_layers, "fanouts": fanouts, "batch_size": batch_size,
                "epoch_batches": plan.num_batches(0), "files": files, "features_file": files[0],
                "pack": {"name": pack, "cpu_cache_bytes": int(meta.cpu_rows * meta.row_bytes),
                         "segment_batches": meta.segment_batches, "blowup": meta.blowup,
                         "packed_batches": meta.packed_batches,
                         "expected_read_amplification": meta.expected_read_amplification,
                         "min_working_set_cpu": int(mws["cpu"]),
                         "largest_segment_bytes": int(mws["largest_segment_bytes"])},
                "plan_input_rows": int(np.asarray(plan.index())[:, 3].sum()),
                "staging_bytes": int(mws["staging_bytes"]), "labels_bytes": int(mws["labels_bytes"])}


def ginex_cache_rows(cfg: dict, budget: int, io_threads: int) -> int:
    """The Ginex-style cache gets what the budget leaves after its own working set: the
    labels, the batch being assembled, the batch training holds, the row-read buffers."""
    from oocstore.tiers.ssd import base_read_buffer_bytes

    rest = cfg["labels_bytes"] + 2 * cfg["staging_bytes"] + \
        base_read_buffer_bytes(cfg["row_bytes"], io_threads)
    return max(0, budget - rest) // cfg["row_bytes"]


def run_loader(name: str, cfg: dict, args, workdir: Path, budget: int,
               batches: int | None = None) -> dict:
    spec = {"loader": name, "store": cfg["store"], "plan": cfg["plan"], "pack": cfg["pack_name"],
            "budget": budget, "batches": batches or args.batches,
            "hidden": args.hidden, "seed": 0, "threads": args.threads, "files": cfg["files"],
            "feat_dim": cfg["feat_dim"], "dtype": cfg["dtype"], "classes": cfg["classes"],
            "layers": cfg["layers"],
            "ginex": {"cache_rows": ginex_cache_rows(cfg, budget, 8), "superbatch": args.superbatch,
                      "io_threads": 8}}
    if args.in_process and name != "dgl":
        return json.loads(json.dumps(run_worker(spec), default=float))
    spec_path = workdir / f"spec-{name}.json"
    spec_path.write_text(json.dumps(spec))
    if name == "dgl":
        py = dgl_python()
        cmd = [str(py), str(REPO / "bench" / "gnn_loaders_dgl.py"), str(spec_path)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    return run_json(cmd, timeout=args.worker_timeout)


def seq_read_speed(path: str, nbytes: int) -> tuple[float, int]:
    from oocstore.store.files import evict
    from ssd_epoch import seq_read

    evict(Path(path))
    sec, got = seq_read(Path(path), nbytes)
    return got / sec, got


def summarize(runs: list[dict], epoch_batches: int) -> dict:
    """Medians over rounds of the timed fields; the other fields from the first round."""
    out = dict(runs[0])
    for k in ("epoch_time_s", "load_time_s", "bytes_read", "proc_read_bytes", "useful_bytes",
              "setup_s", "peak_rss_bytes", "iops"):
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            out[k] = statistics.median(vals)
    out["stages_s"] = {k: statistics.median(r["stages_s"].get(k, 0.0) for r in runs)
                       for k in runs[0]["stages_s"]}
    out["rounds"] = len(runs)
    out["epoch_time_s_runs"] = [r["epoch_time_s"] for r in runs]
    out["load_time_s_runs"] = [r["load_time_s"] for r in runs]
    useful = out["useful_bytes"]
    out["read_amplification"] = out["bytes_read"] / useful if useful else None
    out["effective_bandwidth_Bps"] = useful / out["load_time_s"] if useful else None
    out["proc_io_over_counted"] = (out["proc_read_bytes"] / out["bytes_read"]
                                   if out["bytes_read"] else None)
    if out.get("iops") is not None:
        out["iops_vs_qd32_4k"] = out["iops"] / QD32_4K_IOPS
    # the timed batches are a prefix of the epoch: the whole epoch is extrapolated
    k = out["batches"]
    out["epoch_batches"] = epoch_batches
    out["epoch_extrapolated"] = epoch_batches != k
    out["epoch_time_extrapolated_s"] = out["epoch_time_s"] * epoch_batches / k
    out["load_time_extrapolated_s"] = out["load_time_s"] * epoch_batches / k
    return out


def run_config(label: str, cfg: dict, loaders: tuple[str, ...], budget: int, args,
               workdir: Path) -> dict:
    have_dgl = dgl_python() is not None
    runs: dict[str, list[dict]] = {k: [] for k in loaders}
    skipped = {}
    seq = []
    for rnd in range(args.rounds):
        # the limit, measured with the loaders (the disk is noisy): a region as large as
        # an epoch of rows, at least 256 MiB, from the feature file
        prefix = cfg["plan_input_rows"] * args.batches // cfg["epoch_batches"] * cfg["row_bytes"]
        nbytes = min(cfg["feature_bytes"], max(256 << 20, prefix))
        seq.append(seq_read_speed(cfg["features_file"], nbytes)[0])
        for name in loaders:
            if name in SLOW and rnd >= args.slow_rounds:
                continue
            if name == "dgl" and not have_dgl:
                skipped[name] = "skipped: .venv-dgl is absent (build it with `make test-dgl`)"
                continue
            if name in args.skip:
                skipped[name] = "skipped: --skip"
                continue
            log(f"[{label}] round {rnd + 1}/{args.rounds}: {name} ...")
            runs[name].append(run_loader(name, cfg, args, workdir, budget))
    loaders_out = {k: summarize(v, cfg["epoch_batches"]) for k, v in runs.items() if v}
    # The longer window: the fast loaders over more batches (the few batches every loader
    # can afford are tenths of a second for these, too short for their ratios).
    long_n = min(args.long_batches, cfg["epoch_batches"])
    # in-memory's long run serves only the 25 % cache target of (c)
    long_runs: dict[str, list[dict]] = {k: [] for k in LONG if k in runs and runs[k]
                                        and (k != "in-memory" or label.startswith("c"))}
    if long_n > args.batches:
        for rnd in range(args.long_rounds):
            for name in long_runs:
                log(f"[{label}] longer window ({long_n} batches) {rnd + 1}/{args.long_rounds}: "
                    f"{name} ...")
                long_runs[name].append(run_loader(name, cfg, args, workdir, budget, long_n))
    long_out = {k: summarize(v, cfg["epoch_batches"]) for k, v in long_runs.items() if v}
    seq_bps = statistics.median(seq)
    res = {"config": label, "budget_bytes": budget, "seq_read_bytes_per_s": seq_bps,
           "seq_read_bytes_per_s_runs": seq, "loaders": loaders_out, "skipped": skipped,
           **{k: cfg[k] for k in ("store", "nodes", "feat_dim", "row_bytes", "feature_bytes",
                                  "fanouts", "batch_size", "pack")},
           "batches": args.batches, "epoch_batches": cfg["epoch_batches"], "rounds": args.rounds,
           "features_over_budget": cfg["feature_bytes"] / budget}
    if long_out:
        res["long"] = {"batches": long_n, "rounds": args.long_rounds, "loaders": long_out}
    res["ratios"], res["targets"] = ratios_and_targets(res)
    return res


def ratios_and_targets(res: dict) -> tuple[dict, dict]:
    L = res["loaders"]
    ours = L.get("oocstore")
    ratios: dict[str, dict] = {}
    if ours is None:
        return ratios, {}
    for k, v in L.items():
        if k == "oocstore":
            continue
        ratios[k] = {"load_speedup": v["load_time_s"] / ours["load_time_s"],
                     "epoch_speedup": v["epoch_time_s"] / ours["epoch_time_s"]}
    t: dict[str, dict] = {}

    def target(name, value, goal, higher=True, why="", window=None):
        if value is None:
            return
        met = value >= goal if higher else value <= goal
        t[name] = {"value": value, "target": goal, "met": met,
                   "batches": window or res["batches"],
                   **({"bottleneck": why} if not met and why else {})}

    prof = bottleneck(ours)
    if "mmap" in ratios:
        target("oocstore load vs mmap (x faster)", ratios["mmap"]["load_speedup"],
               TARGETS["vs_mmap"], why=prof)
    # Between the fast loaders, the longer window where there is one.
    LL = res.get("long", {}).get("loaders", {})
    lo = LL.get("oocstore")
    if lo is None:
        LL, lo, win = L, ours, res["batches"]
    else:
        win = res["long"]["batches"]
    lprof = bottleneck(lo)
    if "ginex" in LL:
        g = LL["ginex"]
        why = lprof
        if g.get("useful_bytes") and g.get("read_amplification"):
            # the most any loader of these rows could gain: reading them at the sequential
            # speed, against the Ginex-style time
            bound = g["load_time_s"] / (lo["useful_bytes"] / res["seq_read_bytes_per_s"]) \
                if lo["useful_bytes"] else None
            if bound:
                why += (f"; Ginex-style's row reads ({g['read_amplification']:.2f}x "
                        f"amplification) already run at {g['useful_bytes'] / g['load_time_s'] / MB:.0f} "
                        f"MB/s: reading oocstore's bytes at the full sequential speed would be "
                        f"{bound:.2f}x faster than it")
        target("oocstore load vs Ginex-style (x faster)",
               g["load_time_s"] / lo["load_time_s"], TARGETS["vs_ginex"], why=why, window=win)
    if lo.get("effective_bandwidth_Bps"):
        target("oocstore effective bandwidth / sequential read",
               lo["effective_bandwidth_Bps"] / res["seq_read_bytes_per_s"],
               TARGETS["bandwidth_fraction"], why=lprof, window=win)
    target("oocstore read amplification", ours.get("read_amplification"),
           TARGETS["amplification"], higher=False, why=prof)
    if res["config"].startswith("c") and "in-memory" in LL:
        target("oocstore epoch / in-memory epoch (25 % cache)",
               lo["epoch_time_s"] / LL["in-memory"]["epoch_time_s"],
               TARGETS["cache25_vs_in_memory"], higher=False,
               why=bottleneck(lo, epoch=True, mem=LL["in-memory"]), window=win)
    return ratios, t


def bottleneck(ours: dict, epoch: bool = False, mem: dict | None = None) -> str:
    """Which stage of oocstore's load pass dominates (from its stage timers)."""
    lp = ours.get("load_pass") or ours  # stages and load time of the same (first) round
    st, load = lp["stages_s"], lp["load_time_s"]
    parts = {k: v for k, v in st.items() if k in ("segment reads (O_DIRECT)", "assembly (numba)")}
    parts["rest of the read path (Python, plan, tier lookups)"] = max(
        0.0, load - sum(parts.values()))
    k, v = max(parts.items(), key=lambda kv: kv[1])
    msg = f"{k}: {v:.2f} s of {load:.2f} s load"
    if epoch and mem is not None:
        compute = mem["epoch_time_s"] - mem["load_time_s"]
        msg += (f"; in-memory spends {compute:.2f} s computing and {mem['load_time_s']:.2f} s "
                f"gathering; oocstore waited {ours.get('train_pass_wait_s', 0.0):.2f} s for data "
                "in its training pass")
    return msg


def print_config(res: dict) -> None:
    L = res["loaders"]
    print(f"\n({res['config']}) {res['nodes']:,} nodes x {res['feat_dim']} "
          f"({res['feature_bytes'] / 2**30:.2f} GiB of features, {res['features_over_budget']:.1f}x "
          f"the cpu budget of {res['budget_bytes'] / 2**20:.0f} MiB); epoch = {res['batches']} "
          f"batches of {res['batch_size']} seeds, fanouts {res['fanouts']}; medians of "
          f"{res['rounds']} interleaved round(s); sequential O_DIRECT read "
          f"{res['seq_read_bytes_per_s'] / MB:.0f} MB/s")
    p = res["pack"]
    print(f"    oocstore pack: cpu cache {p['cpu_cache_bytes'] / 2**20:.0f} MiB, segments of "
          f"{p['segment_batches']} batch(es), blowup {p['blowup']:.2f}")
    print(f"  {'loader':<20} {'cold':<11} {'load s':>8} {'epoch s':>8} {'MB read':>9} "
          f"{'/proc MB':>9} {'useful MB':>9} {'amplif.':>8} {'peak RSS':>9} "
          f"{'load x':>7} {'epoch x':>7} {'full epoch s*':>13}")
    for k, v in L.items():
        amp = f"{v['read_amplification']:8.3f}" if v.get("read_amplification") else f"{'-':>8}"
        r = res["ratios"].get(k)
        lx = f"{r['load_speedup']:7.1f}" if r else f"{'1':>7}"
        ex = f"{r['epoch_speedup']:7.2f}" if r else f"{'1':>7}"
        cold = v["cold"] if len(v["cold"]) <= 11 else "no (RAM)"
        print(f"  {k:<20} {cold:<11} {v['load_time_s']:8.2f} {v['epoch_time_s']:8.2f} "
              f"{v['bytes_read'] / MB:9.1f} {v['proc_read_bytes'] / MB:9.1f} "
              f"{v['useful_bytes'] / MB:9.1f} {amp} {v['peak_rss_bytes'] / 2**20:8.0f}M {lx} {ex} "
              f"{v['epoch_time_extrapolated_s']:13.1f}")
    for k, why in res["skipped"].items():
        print(f"  {k:<20} {why}")
    print(f"  (times: the first {res['batches']} batches, the same for every loader; load x / "
          "epoch x: that loader's time / oocstore's, i.e. how many times faster oocstore is; "
          f"* extrapolated to the epoch's {res['epoch_batches']} batches; ginex = Ginex-style "
          "re-implementation; peak RSS of mmap/DGL includes the mapped file pages)")
    g = L.get("ginex")
    if g and g.get("iops"):
        print(f"  Ginex-style: {g['io_threads']} reads in flight, {g['iops']:,.0f} row reads/s = "
              f"{g['iops_vs_qd32_4k']:.2f} x the machine's 4 KiB QD32 figure ({QD32_4K_IOPS:,}/s); "
              f"cache {g['cache_rows']:,} rows, hit rate {100 * g['hit_rate']:.1f} %, superbatch "
              f"{g['superbatch']}")
    o = L.get("oocstore")
    if o:
        st = (o.get("load_pass") or o)["stages_s"]
        seg = st.get("segment reads (O_DIRECT)")
        if o.get("effective_bandwidth_Bps"):
            print(f"  oocstore: effective bandwidth {o['effective_bandwidth_Bps'] / MB:.0f} MB/s "
                  f"(useful bytes / load time) = "
                  f"{o['effective_bandwidth_Bps'] / res['seq_read_bytes_per_s']:.2f} x sequential "
                  f"read; cache hit rate {100 * o['hit_rate'].get('cpu', 0):.1f} %"
                  + (f"; its segment reads alone {o['bytes_read'] / seg / MB:.0f} MB/s"
                     if seg else ""))
        print("  oocstore load pass, where the time goes: " + ", ".join(
            f"{k} {v:.2f} s" for k, v in st.items()))
    lg = res.get("long")
    if lg:
        LL = lg["loaders"]
        print(f"  longer window: the first {lg['batches']} batches, {lg['rounds']} round(s) "
              "(the same batches for these loaders):")
        print(f"    {'loader':<18} {'load s':>8} {'epoch s':>8} {'MB read':>9} {'useful MB':>9} "
              f"{'amplif.':>8} {'eff. MB/s':>9} {'load x':>7} {'epoch x':>7}")
        ref = LL.get("oocstore")
        for k, v in LL.items():
            amp = f"{v['read_amplification']:8.3f}" if v.get("read_amplification") else f"{'-':>8}"
            bw = f"{v['effective_bandwidth_Bps'] / MB:9.0f}" if v.get("effective_bandwidth_Bps") \
                else f"{'-':>9}"
            lx = f"{v['load_time_s'] / ref['load_time_s']:7.2f}" if ref else f"{'-':>7}"
            ex = f"{v['epoch_time_s'] / ref['epoch_time_s']:7.2f}" if ref else f"{'-':>7}"
            print(f"    {k:<18} {v['load_time_s']:8.2f} {v['epoch_time_s']:8.2f} "
                  f"{v['bytes_read'] / MB:9.1f} {v['useful_bytes'] / MB:9.1f} {amp} {bw} {lx} {ex}")
        if ref:
            st = (ref.get("load_pass") or ref)["stages_s"]
            print("    oocstore load pass, where the time goes: " + ", ".join(
                f"{k} {v:.2f} s" for k, v in st.items()))
    for name, t in res["targets"].items():
        line = (f"  target {name} [{t['batches']} batches]: {t['value']:.3g} (goal {'>=' if 'faster' in name or 'bandwidth' in name else '<='} "
                f"{t['target']:g}) {'met' if t['met'] else 'NOT met'}")
        if not t["met"] and t.get("bottleneck"):
            line += f" -- bottleneck: {t['bottleneck']}"
        print(line)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = [c for c in result["configs"].values() if c["loaders"]]
    fig, axes = plt.subplots(1, len(cfgs), figsize=(5.2 * len(cfgs), 3.8), squeeze=False)
    for ax, c in zip(axes[0], cfgs):
        names = list(c["loaders"])
        x = np.arange(len(names))
        load = [c["loaders"][n]["load_time_s"] for n in names]
        epoch = [c["loaders"][n]["epoch_time_s"] for n in names]
        ax.bar(x - 0.2, load, 0.4, label="feature loading")
        ax.bar(x + 0.2, epoch, 0.4, label="end-to-end epoch")
        ax.set_yscale("log")
        ax.set_xticks(x, [n.replace("oocstore-", "ooc-") for n in names], rotation=30,
                      fontsize=8)
        ax.set_ylabel("seconds (log)")
        ax.set_title(f"({c['config']}) {c['feature_bytes'] / 2**30:.1f} GiB features, budget "
                     f"{c['budget_bytes'] / 2**20:.0f} MiB", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("GNN loaders, cold (mmap/DGL cold per batch); lower is better", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=str(REPO / "bench" / "data" / "gnn_loaders"),
                   help="stores, plans and packs are made here once and reused")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies the synthetic graph's nodes (1: 6 M nodes, 3 GiB of features)")
    p.add_argument("--nodes", type=int, default=6_000_000)
    p.add_argument("--feat-dim", type=int, default=128)
    p.add_argument("--avg-degree", type=float, default=10.0)
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=8,
                   help="timed batches (the same prefix of the epoch for every loader)")
    p.add_argument("--long-batches", type=int, default=48,
                   help="a longer window for in-memory, Ginex-style and oocstore (the targets "
                        "between them are read from it; 0 = none)")
    p.add_argument("--long-rounds", type=int, default=1, help="rounds of the longer window")
    p.add_argument("--epoch-batches", type=int, default=256,
                   help="batches in the plan's epoch (caches and packs are made for all of them)")
    p.add_argument("--budget-frac", type=float, default=0.2,
                   help="(a) cpu budget as a fraction of the feature bytes (<= 0.25)")
    p.add_argument("--phy-batch-size", type=int, default=8,
                   help="(b) batch size on coauthor_phy (8,415-float rows)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--superbatch", type=int, default=64, help="Ginex-style superbatch (batches)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--slow-rounds", type=int, default=1,
                   help="rounds for mmap and DGL (cold per batch: seconds per batch)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the loaders "
                   "(0: torch's default)")
    p.add_argument("--configs", default="a,b,c", help="which configurations to run")
    p.add_argument("--skip", default="", help="loaders to leave out, comma-separated")
    p.add_argument("--max-disk", type=float, default=40e9, help="refuse sizes whose stores "
                   "and packs would need more disk (bytes)")
    p.add_argument("--worker-timeout", type=float, default=1800)
    p.add_argument("--in-process", action="store_true",
                   help="run the loaders in this process (no per-loader peak RSS; --toy does)")
    p.add_argument("--out", help="result JSON (default bench/results/gnn_loaders.json; --toy "
                   "writes none unless given); the PNG goes next to it")
    p.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    p.add_argument("--toy", action="store_true", help="test size, seconds")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return {}
    args.skip = {s for s in args.skip.split(",") if s}
    if args.toy:
        args.nodes, args.feat_dim, args.avg_degree, args.fanouts = 50_000, 32, 6.0, "5,3"
        args.batch_size, args.batches, args.epoch_batches, args.rounds = 64, 4, 32, 1
        args.long_batches = 8
        args.hidden, args.phy_batch_size, args.superbatch, args.in_process = 16, 8, 2, True
        if args.configs == "a,b,c":
            args.configs = "a,c"
    if args.scale <= 0:
        raise UsageError(f"--scale {args.scale}: give a positive factor (1 = the default size)")
    if not 0 < args.budget_frac <= 0.25:
        raise UsageError(f"--budget-frac {args.budget_frac}: configuration (a) needs features "
                         ">= 4x the budget; give a fraction in (0, 0.25]")
    nodes = int(args.nodes * args.scale)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in ("a", "b", "c")]
    if bad:
        raise UsageError(f"--configs {args.configs}: unknown {bad}; choose from a, b, c")
    row = args.feat_dim * 4
    # features + graph + the packs of (a) and (c): each at most 4x the features (the
    # blowup cap) and at most every input row of every batch of the epoch
    per_seed, width = 1, 1
    for f in reversed([int(f) for f in args.fanouts.split(",")]):
        width *= f if f > 0 else 100
        per_seed += width
    pack_bound = min(4 * nodes * row, args.epoch_batches * args.batch_size * per_seed * row)
    need = nodes * row + nodes * args.avg_degree * 8 + 2 * pack_bound
    if need > args.max_disk:
        raise UsageError(f"--scale {args.scale}: the store and packs would need about "
                         f"{need / 1e9:.0f} GB of disk, over --max-disk {args.max_disk / 1e9:.0f} "
                         "GB: lower --scale or raise --max-disk")
    out = Path(args.out) if args.out else (None if args.toy else
                                           REPO / "bench" / "results" / "gnn_loaders.json")
    tmp = tempfile.TemporaryDirectory(prefix="gnnloaders-") if args.toy and not args.out else None
    workdir = Path(tmp.name) if tmp else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    machine = machine_info(workdir)
    from oocstore.store.files import CRC32_IMPL

    machine["crc32"] = CRC32_IMPL  # checksums of every segment read (isal: ~10x zlib)
    results: dict[str, dict] = {}
    try:
        from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source

        if "a" in configs or "c" in configs:
            spath = workdir / f"rmat-{nodes}-{args.feat_dim}-{args.avg_degree:g}"
            setup_store(spath, synthetic_source(SyntheticSpec(
                nodes=nodes, feat_dim=args.feat_dim, avg_degree=args.avg_degree)), "a")
            fbytes = nodes * row
        if "a" in configs:
            budget = int(fbytes * args.budget_frac) // 4096 * 4096
            cfg = setup_plan_pack(spath, fanouts=args.fanouts, batch_size=args.batch_size,
                                  epoch_batches=args.epoch_batches, budget=budget, cpu_cache=None,
                                  pack=PLAN + "-a", label="a")
            results["a"] = run_config("a: R-MAT, features >= 4x budget", cfg, LOADERS, budget,
                                      args, workdir)
        if "b" in configs:
            npz = SHARED_DATA / "graphdata" / "coauthor_phy.npz"
            if not npz.is_file():
                results["b"] = {"config": "b: coauthor_phy", "skipped": f"{npz} is absent",
                                "loaders": {}}
                log(f"[b] skipped: {npz} is absent (third-party data lives in ../shared/data)")
            else:
                from oocstore.ingest.npz import npz_source

                bpath = workdir / "coauthor_phy"
                setup_store(bpath, npz_source(npz, trust_pickle=True), "b")
                from oocstore.store import Store

                with Store(bpath) as s:
                    pbytes = s.array_meta("features").nbytes
                budget = int(pbytes * 0.10) // 4096 * 4096
                cfg = setup_plan_pack(bpath, fanouts=args.fanouts, batch_size=args.phy_batch_size,
                                      epoch_batches=args.epoch_batches, budget=budget,
                                      cpu_cache=None, pack=PLAN + "-b", label="b")
                results["b"] = run_config("b: coauthor_phy, budget 10 %", cfg, LOADERS, budget,
                                          args, workdir)
        if "c" in configs:
            cache = int(fbytes * 0.25) // row * row
            # the budget: the cache plus the pack's minimum working set without a cache
            cfg0 = setup_plan_pack(spath, fanouts=args.fanouts, batch_size=args.batch_size,
                                   epoch_batches=args.epoch_batches, budget=0, cpu_cache=cache,
                                   pack=PLAN + "-c", label="c")
            # the pack's minimum working set (cache included), a segment read-ahead buffer
            # and the default prefetch depth of 4 batches
            pk = cfg0["pack"]
            budget = pk["min_working_set_cpu"] + pk["largest_segment_bytes"] + \
                4 * cfg0["staging_bytes"]
            budget = -(-budget // 4096) * 4096
            results["c"] = run_config("c: R-MAT, 25 % cpu cache", cfg0, CACHE_LOADERS, budget,
                                      args, workdir)
    finally:
        if tmp is not None:
            tmp.cleanup()
    first = results.get("a") or next(iter(results.values()))
    machine["loadavg_1min_end"] = os.getloadavg()[0]
    result = {"bench": "gnn_loaders", "toy": args.toy,
              "seq_read_bytes_per_s": first.get("seq_read_bytes_per_s"),
              "loaders": first.get("loaders", {}), "configs": results, "machine": machine,
              "targets": TARGETS, "qd32_4k_iops_reference": QD32_4K_IOPS,
              "seconds": time.perf_counter() - t_start,
              "command": " ".join(["python", "bench/gnn_loaders.py",
                                   *(argv if argv is not None else sys.argv[1:])])}
    for c in results.values():
        if c.get("loaders"):
            print_config(c)
        else:
            print(f"\n({c['config']}) {c.get('skipped')}")
    print(f"\nmachine: {machine['cpus']} cpus, CRC-32 by {machine['crc32']}, 1-min load average "
          f"{machine['loadavg_1min']:.2f} "
          f"at the start, {machine['loadavg_1min_end']:.2f} at the end (shared machines: rerun "
          f"on a quiet one for absolute numbers); {result['seconds']:.0f} s in all")
    write_result(result, out, lambda png: plot(result, png), relative_plot=True, default=float)
    return result


if __name__ == "__main__":
    from oocstore.errors import OocError

    try:
        main()
    except OocError as err:  # bad input or a budget that cannot work: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
