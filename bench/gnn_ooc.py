"""GNN training when the features do not fit in memory: each loader inside a memory cgroup.

The question a user asks: *on a machine whose RAM is smaller than my features, how long
until my model is trained -- with oocstore, or with what I use today?* Every loader runs
in a fresh child process inside a cgroup-v1 memory cgroup (``bench/_memcg.py``) whose
limit covers the process and the page cache it reads in, with the features >= 4x the
limit. Nothing is evicted per batch: the page cache gets what the limit leaves, as on a
user's machine (the store's files are evicted once before each loader starts). The
cgroup's high-water mark, ``failcnt`` (times the limit forced reclaim) and OOM kills are
reported per loader with the process's peak RSS.

Loaders (same store, same plan: the same seeds and sampled blocks in the same batches;
the same GraphSAGE, budget and limit):

- **pyg-mmap**: features as ``np.memmap``, ``feats[input_nodes]`` per batch through the
  page cache (PyG-style training with features on disk), on the plan's sampled blocks;
  **pyg-mmap-random**: the same with ``madvise(MADV_RANDOM)`` (no read-around per fault:
  the strongest page-cache baseline where the disk's read-ahead is large);
- **dgl**: DGL 2.1 ``DataLoader`` + ``NeighborSampler`` (online sampling of the same seed
  batches) with ``np.memmap`` features, in ``.venv-dgl`` (``bench/gnn_loaders_dgl.py``);
- **graphbolt**: DGL GraphBolt's ``DiskBasedFeature`` -- probed, and the reason it cannot
  run here printed (see :func:`graphbolt_status`);
- **ginex-native**: the Ginex-style loader of ``gnn_loaders.py`` (superbatch plan, Belady
  cache within the budget) with its row reads issued from native code at the disk's queue
  depth (``bench/baselines/native_rows.py``: numba ``pread`` in ``--qd`` threads, nogil);
- **ginex-python**: the same with Python-thread row reads (8 in flight) -- run on a
  window only, to compare its reads/s with the native reader's;
- **oocstore**: ``NodeLoader`` over the pack made for the budget (prefetch on); a load pass
  without compute (for the stage split) and the training epoch, with a per-stage timeline;
- **in-memory**: every row in RAM, outside the cgroup (it cannot fit in it): the ceiling;
- **oocstore-cache25**: a pack with a 25 % CPU cache, in a cgroup sized for its budget,
  against in-memory.

Whole epochs for every loader except the page-cache ones (pyg-mmap, pyg-mmap-random, dgl,
and the ginex-python reads/s probe), which run the first ``--window`` batches or stop
after ``--window-seconds`` (inside a batch if need be: they gather 8192 rows at a time);
their epoch is extrapolated linearly by the rows delivered, and labelled so. Preprocessing (sampling the plan, packing, the
Ginex-style schedule and cache fill, DGL's graph build) is timed, and the time to a
trained model (preprocessing + 1, 5, 20 epochs) is reported per loader with the epoch
count from which oocstore's preprocessing pays off. The second view (``--views evict``)
runs the loaders without a cgroup on a window, the page-cache ones cold per batch, as
``gnn_loaders.py`` does.

Targets (checked from this run, memory-limited view): oocstore's epoch >= 20x faster than
pyg-mmap and DGL, >= 3x faster than ginex-native (and GraphBolt where it runs), the
25 %-cache epoch within 1.5x of in-memory, and oocstore never OOM-killed and within its
budget. A missed target names the bottleneck stage.

    python bench/gnn_ooc.py                 # 8.5 M nodes x 128 f32 (4.05 GiB), 1 GiB limit
    python bench/gnn_ooc.py --threads 1     # one torch thread per loader (2 busy cores)
    python bench/gnn_ooc.py --report bench/results/gnn_ooc.json  # redo the analysis only
    python bench/gnn_ooc.py --quick         # seconds (no cgroup unless --cgroup yes)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "bench"), str(REPO / "bench" / "baselines")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _memcg  # noqa: E402
from _common import (add_graph_args, capped_gather, dgl_python, machine_info,  # noqa: E402
                     read_bytes, run_json, SubprocessError)

from oocstore.errors import UsageError  # noqa: E402

PLAN = "gnn-ooc"
GiB, MiB, MB = 1 << 30, 1 << 20, 1e6
#: Loaders whose reads go through the page cache: the only ones timed on a window.
WINDOWED = ("pyg-mmap", "pyg-mmap-random", "dgl", "ginex-python")
LIMITED = ("pyg-mmap", "pyg-mmap-random", "dgl", "ginex-python", "ginex-native", "oocstore")
TARGETS = {"vs_pyg_mmap": 20.0, "vs_dgl": 20.0, "vs_ginex_native": 3.0, "vs_graphbolt": 3.0,
           "cache25_vs_in_memory": 1.5}
EPOCHS = (1, 5, 20)
QD32_4K_IOPS = 85_000  # fio, /work/shared/BENCHMARKS.md


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# =====================================================================================
# GraphBolt: can DiskBasedFeature run here?
# =====================================================================================

#: What PyPI offers (checked with ``pip download dgl==2.2.1 --no-deps`` for every CPython
#: and platform tag, and ``pip index versions dgl``): Linux wheels stop at DGL 2.1.0;
#: 2.2.1 is published for Windows only (2.2.0 for macOS arm64). Later DGL releases
#: (and every Linux build with GraphBolt's C++ library) are served from data.dgl.ai,
#: which this machine cannot reach (PyPI is its only network).
PYPI_DGL = ("PyPI has no Linux wheel of DGL >= 2.2 (newest Linux wheel: 2.1.0; "
            "dgl==2.2.1 exists only as a Windows wheel, 2.2.0 for macOS arm64; "
            "`pip download dgl==2.2.1 --no-deps` finds no match here); Linux builds are on "
            "data.dgl.ai, which is unreachable from this machine")


def graphbolt_status() -> dict:
    """Whether ``dgl.graphbolt.DiskBasedFeature`` can run here, and if not exactly why."""
    py = dgl_python()
    if py is None:
        return {"runs": False, "reason": ".venv-dgl is absent (tools/dgl_env.sh builds it); "
                + PYPI_DGL}
    code = ("import json\nout={}\ntry:\n import dgl\n out['dgl']=dgl.__version__\n"
            " from dgl import graphbolt as gb\n out['graphbolt']=True\n"
            " out['disk_based_feature']=hasattr(gb,'DiskBasedFeature')\n"
            "except Exception as e:\n out['error']=f'{type(e).__name__}: {e}'\n"
            "print(json.dumps(out))")
    try:
        got = run_json([str(py), "-c", code], timeout=300)
    except SubprocessError as err:
        got = {"error": str(err).splitlines()[-1]}
    if got.get("disk_based_feature"):
        return {"runs": True, **got}
    have = (f"the installable DGL {got['dgl']} " if got.get("dgl") else "DGL ")
    if got.get("error"):
        why = f"{have}fails to import GraphBolt ({got['error']})"
    else:
        why = f"{have}has GraphBolt but no DiskBasedFeature (added in DGL 2.2)"
    return {"runs": False, "reason": f"{why}; {PYPI_DGL}", **got}


# =====================================================================================
# Worker side: one loader in this (fresh) process
# =====================================================================================

class Timeline:
    """Intervals ``(lane, start, end)`` of the oocstore loader's stages: segment reads and
    row assembly (on whichever thread runs them), and the training thread's waits for
    data and compute steps. On a CPU device there is no transfer stage (the batch is the
    staging buffer itself)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []
        self._saved: list[tuple[object, str, object]] = []
        self.t0 = time.perf_counter()

    def _wrap(self, owner, attr: str, lane: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            return
        self._saved.append((owner, attr, fn))
        spans = self.spans

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spans.append((lane, t, time.perf_counter()))
        setattr(owner, attr, timed)

    def span(self, lane: str, t: float, t1: float) -> None:
        self.spans.append((lane, t, t1))

    def __enter__(self) -> "Timeline":
        from oocstore.tiers import reader as reader_mod
        from oocstore.tiers import ssd as ssd_mod

        self._wrap(ssd_mod.SegmentTier, "load", "reads (O_DIRECT segments)")
        self._wrap(ssd_mod.SegmentTier, "_gather", "assembly")
        self._wrap(reader_mod, "assemble_rows", "assembly")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        for owner, attr, fn in reversed(self._saved):
            setattr(owner, attr, fn)
        self._saved.clear()

    def result(self) -> dict:
        lanes: dict[str, list[list[float]]] = {}
        for lane, a, b in self.spans:
            lanes.setdefault(lane, []).append([round(a - self.t0, 6), round(b - a, 6)])
        return {"lanes": lanes, "totals_s": {k: sum(d for _, d in v) for k, v in lanes.items()},
                "transfer": "none on a CPU device (the batch is the staging buffer)"}


def open_memmap(path, fm, random: bool):
    feats = np.memmap(path, dtype=fm.np_dtype, mode="r", offset=fm.offset, shape=fm.shape)
    if random:
        import mmap

        feats._mmap.madvise(mmap.MADV_RANDOM)  # no read-around on a fault: one page per row
    return feats


def worker_pyg_mmap(spec, store, plan, model, opt) -> dict:
    """Features as one ``np.memmap``, rows gathered through the page cache (``-random``:
    with ``MADV_RANDOM``, the best a user can do for random rows); cold per batch in the
    eviction view only. Stops after ``spec["max_seconds"]`` of loading+training (inside a
    batch if need be): the epoch is then extrapolated by rows."""
    import torch

    from gnn_loaders import _evict, _labels, _Run, _step

    labels = torch.from_numpy(_labels(store))
    fm = store.array_meta("features")
    path = store.file_path(fm)
    per_batch = spec["view"] == "evict"
    random = spec["loader"].endswith("-random")
    feats = open_memmap(path, fm, random)
    fbytes = done_batches = 0
    run = _Run()
    deadline = run.t0 + spec.get("max_seconds", float("inf"))
    partial = False
    for b in range(spec["batches"]):
        sample = plan.read_batch(0, b)
        io = read_bytes()
        t = time.perf_counter()
        x, n = capped_gather(feats, sample.input_nodes, deadline + run.excluded)
        run.load += time.perf_counter() - t
        fbytes += read_bytes() - io
        run.rows += n
        if n < x.shape[0]:
            partial = True  # the time cap ended the window inside this batch: no step
            break
        if per_batch:
            t = time.perf_counter()
            del feats
            _evict([str(path)])
            feats = open_memmap(path, fm, random)
            run.excluded += time.perf_counter() - t
        _step(model, opt, sample, torch.from_numpy(x),
              labels[torch.from_numpy(sample.seeds.astype(np.int64))])
        done_batches += 1
        if time.perf_counter() > deadline + run.excluded:
            break
    res = run.result(setup_s=0.0, cold="per-batch" if per_batch else "once (page cache kept)")
    res["bytes_read"] = fbytes
    res["useful_bytes"] = res["rows"] * fm.row_bytes
    res["batches_done"] = done_batches + (1 if partial else 0)
    res["partial_last_batch"] = partial
    res["madvise"] = "MADV_RANDOM" if random else "none (the kernel's read-around)"
    return res


def worker_ginex_native(spec, store, plan, model, opt) -> dict:
    """``gnn_loaders.worker_ginex`` with the row reads from native code."""
    import gnn_loaders
    from native_rows import NativeRowReader

    qd = spec["ginex"]["qd"]

    class NativeTier:
        def __init__(self, path, meta, threads=None):
            self.r = NativeRowReader(path, offset=meta.offset, row_bytes=meta.row_bytes,
                                     depth=qd)

        def gather(self, ids, out):
            self.r.gather(ids, out)

        def stats(self):
            return {"bytes_read": self.r.bytes_read, "useful_bytes": self.r.useful_bytes}

        def close(self):
            self.r.close()

    import oocstore.tiers.ssd as ssd_mod

    saved = ssd_mod.BaseRowTier
    ssd_mod.BaseRowTier = NativeTier  # worker_ginex imports it from the module at call time
    try:
        res = gnn_loaders.worker_ginex(spec, store, plan, model, opt)
    finally:
        ssd_mod.BaseRowTier = saved
    res["io_threads"] = qd
    res["reader"] = f"native pread (numba, nogil), {qd} threads = queue depth {qd}"
    res["direct_io"] = True
    return res


def worker_ginex_python(spec, store, plan, model, opt) -> dict:
    import gnn_loaders

    res = gnn_loaders.worker_ginex(spec, store, plan, model, opt)
    res["reader"] = f"Python threads ({res['io_threads']}), oocstore BaseRowTier"
    return res


def worker_oocstore(spec, store, plan, model, opt) -> dict:
    """A cold load pass without compute (the stage split: what loading alone costs), then
    the cold training epoch with the timeline."""
    from oocstore.budget import MemoryBudget
    from oocstore.loader import NodeLoader

    from gnn_loaders import _evict, _Run, _step, cut_plan
    from ssd_epoch import Split

    budget = MemoryBudget(cpu=spec["budget"])

    def one_pass(train: bool) -> dict:
        t = time.perf_counter()
        loader = NodeLoader(store, spec["plan"], pack=spec["pack"], budget=budget)
        cut_plan(loader.reader.plan, spec["batches"])
        _evict(spec["files"])
        setup = time.perf_counter() - t
        split, tl = Split(), Timeline()
        run = _Run()
        with split, tl:
            it = iter(loader)
            while True:
                t = time.perf_counter()
                batch = next(it, None)
                t1 = time.perf_counter()
                if batch is None:
                    break
                tl.span("training thread: wait for data", t, t1)
                run.load += t1 - t
                run.rows += batch.x.shape[0]
                if train:
                    _step(model, opt, batch.sample, batch.x, batch.y)
                    tl.span("training thread: compute", t1, time.perf_counter())
        res = run.result(setup_s=setup)
        st = loader.stats()
        acc = loader.accountant.summary()
        loader.close()
        res.update(bytes_read=st["bytes_read"], useful_bytes=st["useful_bytes"],
                   prefetch=st["prefetch"], hit_rate=st["hit_rate"],
                   budget_peak_bytes=acc["cpu"]["peak"], timeline=tl.result(),
                   stages_s={"segment reads (O_DIRECT)": split.read,
                             "assembly (numba)": split.gather})
        return res

    load = one_pass(False)
    res = one_pass(True)
    res["train_pass_wait_s"] = res["load_time_s"]
    res["load_time_s"] = load["load_time_s"]
    res["budget_peak_bytes"] = max(res["budget_peak_bytes"], load["budget_peak_bytes"])
    res["load_pass"] = {k: load[k] for k in ("load_time_s", "bytes_read", "useful_bytes",
                                             "proc_read_bytes", "stages_s", "epoch_time_s")}
    res["cold"] = "once per pass"
    return res


def worker_in_memory(spec, store, plan, model, opt) -> dict:
    import gnn_loaders

    return gnn_loaders.worker_in_memory(spec, store, plan, model, opt)


WORKERS = {"pyg-mmap": worker_pyg_mmap, "pyg-mmap-random": worker_pyg_mmap,
           "ginex-native": worker_ginex_native,
           "ginex-python": worker_ginex_python, "oocstore": worker_oocstore,
           "oocstore-cache25": worker_oocstore, "in-memory": worker_in_memory}


def run_worker(spec: dict) -> dict:
    import gnn_loaders

    return gnn_loaders.run_worker(spec, WORKERS)


# =====================================================================================
# Driver side
# =====================================================================================

def prep_record(workdir: Path) -> Path:
    return workdir / "preprocessing.json"


def setup(args, workdir: Path) -> dict:
    """Store, plan and the two packs, made once and reused; the time each took is kept in
    ``workdir/preprocessing.json`` so a reused set-up still reports it."""
    from oocstore.ingest import build_store
    from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
    from oocstore.pack import PackOptions, pack_plan
    from oocstore.pack.costmodel import Bandwidths, choose_split
    from oocstore.pack.format import PackMeta, pack_key
    from oocstore.plan import PlanReader
    from oocstore.store import Store
    from oocstore.samplers import sample_plan

    rec_path = prep_record(workdir)
    rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}

    def save():
        rec_path.write_text(json.dumps(rec, indent=1))

    spath = workdir / f"rmat-{args.nodes}-{args.feat_dim}-{args.avg_degree:g}"
    if not (spath / "catalog.lmdb").is_dir():
        log(f"building store {spath} ...")
        t = time.perf_counter()
        build_store(spath, synthetic_source(SyntheticSpec(
            nodes=args.nodes, feat_dim=args.feat_dim, avg_degree=args.avg_degree)),
            overwrite=True)
        rec["ingest"] = {"seconds": time.perf_counter() - t, "store": str(spath)}
        save()
    with Store(spath, readonly=False) as store:
        fm = store.array_meta("features")
        rb, fbytes = fm.row_bytes, fm.nbytes
        train = store.split("train")
        need = args.epoch_batches * args.batch_size
        if train.size < need:
            raise UsageError(f"store {spath}: {train.size} training seeds cannot fill "
                             f"{args.epoch_batches} batches of {args.batch_size}: lower "
                             "--epoch-batches or --batch-size")
        seeds = np.random.default_rng(0).permutation(train)[:need]
        key = f"{need}/{args.batch_size}/{args.fanouts}"
        pm = store.get(f"plan/{PLAN}")
        if pm is None or rec.get("sample", {}).get("key") != key:
            log(f"sampling {args.epoch_batches} batches ...")
            t = time.perf_counter()
            sample_plan(store, fanouts=args.fanouts, batch_size=args.batch_size, epochs=1,
                        name=PLAN, seeds=seeds, verify=False, overwrite=True, seed=0)
            rec["sample"] = {"seconds": time.perf_counter() - t, "key": key}
            rec.pop("packs", None)
            save()
            store.refresh()
        plan = PlanReader(store, PLAN)
        packs = rec.setdefault("packs", {})

        def pack(name: str, options, why: str) -> PackMeta:
            pkey = f"{key}/{options.cpu_cache}/{options.segment_batches}/{options.max_disk_blowup}"
            old = store.get(pack_key(name))
            if old is not None and packs.get(name, {}).get("key") == pkey:
                return PackMeta.from_dict(old)
            log(f"packing {name} ({why}: cpu cache {options.cpu_cache / MiB:.0f} MiB) ...")
            t = time.perf_counter()
            meta = pack_plan(store, PLAN, name=name, options=options, overwrite=True)
            packs[name] = {"seconds": time.perf_counter() - t, "key": pkey}
            save()
            store.refresh()
            return meta

        # the cost model picks the cache and segment length inside the budget
        t = time.perf_counter()
        options, _, _ = choose_split(store, plan, cpu_budget=args.budget, bw=Bandwidths())
        choose_s = time.perf_counter() - t
        meta_a = pack(PLAN + "-a", options, f"budget {args.budget / MiB:.0f} MiB")
        cache25 = int(fbytes * 0.25) // rb * rb
        meta_c = pack(PLAN + "-c", PackOptions(cpu_cache=cache25, max_disk_blowup=4.0),
                      "25 % cpu cache")
        labels = np.asarray(store.array("labels"))
        indptr, indices = store.csc()
        graph_bytes = 8 * (len(indptr) + len(indices))  # as int64, DGL's default id type
        from gnn_loaders import store_files

        files = [str(store.file_path(fm))] + [f for f in store_files(spath)
                                              if f != str(store.file_path(fm))]

        def pinfo(meta):
            m = meta.min_working_set
            return {"cpu_cache_bytes": int(meta.cpu_rows * meta.row_bytes),
                    "segment_batches": meta.segment_batches, "blowup": meta.blowup,
                    "min_working_set_cpu": int(m["cpu"]),
                    "largest_segment_bytes": int(m["largest_segment_bytes"]),
                    "staging_bytes": int(m["staging_bytes"])}

        cfg = {"store": str(spath), "plan": PLAN, "feat_dim": int(fm.shape[1]),
               "dtype": str(fm.np_dtype), "nodes": int(fm.shape[0]), "row_bytes": int(rb),
               "feature_bytes": int(fbytes), "classes": int(labels.max()) + 1,
               "graph_bytes_int64": int(graph_bytes),
               "epoch_rows": int(np.asarray(plan.index())[:, 3].sum()),
               "layers": plan.meta.num_layers, "fanouts": args.fanouts,
               "batch_size": args.batch_size, "epoch_batches": plan.num_batches(0),
               "files": files, "labels_bytes": int(meta_a.min_working_set["labels_bytes"]),
               "staging_bytes": int(meta_a.min_working_set["staging_bytes"]),
               "packs": {"a": pinfo(meta_a), "c": pinfo(meta_c)},
               "preprocessing_s": {"ingest (common to all)": rec.get("ingest", {}).get("seconds"),
                                   "sample": rec["sample"]["seconds"],
                                   "cost model": choose_s,
                                   "pack (budget)": packs[PLAN + "-a"]["seconds"],
                                   "pack (25 % cache)": packs[PLAN + "-c"]["seconds"]}}
    return cfg


def ginex_cache_rows(cfg: dict, budget: int, qd: int) -> int:
    """What the budget leaves the Ginex-style cache after its working set: labels, the
    batch assembled and the batch trained on, the row-read scratch (8 KiB per read in
    flight covers a row crossing a page boundary)."""
    rest = cfg["labels_bytes"] + 2 * cfg["staging_bytes"] + qd * 2 * 4096
    return max(0, budget - rest) // cfg["row_bytes"]


def run_loader(name: str, cfg: dict, args, workdir: Path, *, view: str, batches: int,
               budget: int, limit: int | None) -> dict:
    """One loader in a fresh process (inside a fresh cgroup of ``limit`` when given);
    the store's files evicted from the page cache before it starts."""
    from gnn_loaders import _evict

    qd = args.qd if name == "ginex-native" else 8
    spec = {"loader": name, "store": cfg["store"], "plan": cfg["plan"], "view": view,
            "pack": PLAN + ("-c" if name == "oocstore-cache25" else "-a"),
            "budget": budget, "batches": batches, "hidden": args.hidden, "seed": 0,
            "threads": args.threads, "files": cfg["files"], "feat_dim": cfg["feat_dim"],
            "dtype": cfg["dtype"], "classes": cfg["classes"], "layers": cfg["layers"],
            "evict_per_batch": view == "evict", "max_seconds": args.window_seconds,
            "ginex": {"cache_rows": ginex_cache_rows(cfg, budget, qd),
                      "superbatch": args.superbatch, "io_threads": qd, "qd": qd}}
    if args.in_process and name != "dgl":
        _evict(cfg["files"])
        res = json.loads(json.dumps(run_worker(spec), default=float))
        res["memcg"] = None
        return res
    spec_path = workdir / f"spec-{name}-{view}.json"
    spec_path.write_text(json.dumps(spec))
    if name == "dgl":
        cmd = [str(dgl_python()), str(REPO / "bench" / "gnn_loaders_dgl.py"), str(spec_path)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    cmd = ["nice", "-n", str(args.nice)] + cmd if args.nice else cmd
    _evict(cfg["files"])
    if limit is None:
        res = run_json(cmd, timeout=args.worker_timeout)
        res["memcg"] = None
        return res
    r, st = _memcg.run_limited(cmd, limit, f"oocstore-bench-{os.getpid()}-{name}",
                               timeout=args.worker_timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode != 0 or not lines:
        why = "OOM-killed by the cgroup" if st["oom_killed"] else f"exit {r.returncode}"
        log(f"  {name}: {why}\n{r.stderr[-1500:]}")
        return {"loader": name, "failed": why, "memcg": st, "stderr_tail": r.stderr[-1500:]}
    res = json.loads(lines[-1])
    res["memcg"] = st
    return res


def finish(v: dict, epoch_batches: int, epoch_rows: int) -> dict:
    """Derived fields: whole-epoch time (measured, or extrapolated from a window by the
    feature rows it delivered, and labelled so), amplification, bandwidth."""
    if v.get("failed"):
        return v
    k = v["batches"]
    v["epoch_batches"] = epoch_batches
    v["window"] = k != epoch_batches or v.get("partial_last_batch", False)
    v["epoch_full_s"] = v["epoch_time_s"] * (epoch_rows / v["rows"] if v["window"] else 1.0)
    part = " (the last one in part: the time cap)" if v.get("partial_last_batch") else ""
    v["epoch_full_basis"] = (f"extrapolated from the first {k} of {epoch_batches} batches{part}, "
                             f"{v['rows']:,} of {epoch_rows:,} rows" if v["window"]
                             else "measured (whole epoch)")
    u = v.get("useful_bytes") or 0
    v["read_amplification"] = v["bytes_read"] / u if u else None
    v["effective_bandwidth_Bps"] = u / v["load_time_s"] if u and v["load_time_s"] else None
    if v.get("misses") is not None:
        read_s = v["stages_s"].get("miss reads (O_DIRECT rows)", 0.0)
        v["reads_per_s"] = v["misses"] / read_s if read_s else None
    return v


def preprocessing(cfg: dict, L: dict) -> dict[str, dict]:
    """Seconds spent before the first epoch, per loader, and what they are. The plan is
    sampled once and reused every epoch (oocstore, Ginex-style: their plan is offline
    sampling); pyg-mmap reads the same sampled blocks, its sampling counted nowhere (in
    its favour); DGL samples online inside its epoch."""
    p = cfg["preprocessing_s"]
    out = {}
    for k, v in L.items():
        if v.get("failed"):
            continue
        if k == "oocstore":
            out[k] = {"seconds": p["sample"] + p["cost model"] + p["pack (budget)"],
                      "what": "sample the plan + cost model + pack"}
        elif k == "oocstore-cache25":
            out[k] = {"seconds": p["sample"] + p["pack (25 % cache)"],
                      "what": "sample the plan + pack (25 % cache)"}
        elif k.startswith("ginex"):
            out[k] = {"seconds": p["sample"] + v["setup_s"],
                      "what": "sample the plan (superbatches) + Belady schedule + cache fill"}
        elif k == "dgl":
            out[k] = {"seconds": v["setup_s"], "what": "graph build (sampling is online)"}
        elif k == "in-memory":
            out[k] = {"seconds": v["setup_s"], "what": "features read into RAM (the plan's "
                      "sampling not counted)"}
        else:
            out[k] = {"seconds": 0.0, "what": "none (the plan's sampled blocks, sampling not "
                      "counted)"}
    return out


def time_to_train(pre: dict, L: dict) -> dict:
    """Preprocessing + n whole epochs for n in EPOCHS, and the break-even epoch count
    (smallest n where oocstore's total is the smaller) against every other loader."""
    tt = {k: {str(n): pre[k]["seconds"] + n * L[k]["epoch_full_s"] for n in EPOCHS}
          for k in pre}
    be = {}
    if "oocstore" in pre:
        po, eo = pre["oocstore"]["seconds"], L["oocstore"]["epoch_full_s"]
        for k in pre:
            if k == "oocstore" or k in ("oocstore-cache25", "in-memory"):
                continue
            pb, eb = pre[k]["seconds"], L[k]["epoch_full_s"]
            if po <= pb:
                be[k] = 1 if eo <= eb or po + eo <= pb + eb else None
            elif eo >= eb:
                be[k] = None  # never pays off
            else:
                be[k] = max(1, math.ceil((po - pb) / (eb - eo) - 1e-12))
    return {"epochs": list(EPOCHS), "total_s": tt, "break_even_epochs": be}


def bottleneck(o: dict) -> str:
    """Which stage of oocstore's epoch dominates: its load pass split into segment reads,
    assembly and the rest, and the training pass's waits against compute."""
    lp = o.get("load_pass") or o
    st, load = lp["stages_s"], lp["load_time_s"]
    parts = dict(st)
    parts["rest of the read path (Python, plan, tier lookups)"] = max(0.0, load - sum(st.values()))
    k, v = max(parts.items(), key=lambda kv: kv[1])
    wait = o.get("train_pass_wait_s", 0.0)
    compute = o["epoch_time_s"] - wait
    loading = f"{k}: {v:.2f} s of a {load:.2f} s load pass"
    if compute > wait:
        # reads and assembly overlap the training steps: the epoch is the compute
        return (f"compute (the GraphSAGE steps): {compute:.2f} s of the {o['epoch_time_s']:.2f} s "
                f"training epoch, which waited {wait:.2f} s for data (loading alone, without "
                f"compute: {loading})")
    return (f"{loading}; the training epoch spent {compute:.2f} s computing and {wait:.2f} s "
            "waiting for data")


def check_targets(res: dict) -> dict:
    """The targets, from one run's memory-limited view. Each: value, goal, met (``None``
    where it cannot be checked, with the reason), and the bottleneck when missed."""
    v = res["views"].get("limited", {})
    L = v.get("loaders", {})
    t: dict[str, dict] = {}
    ooc = L.get("oocstore")
    cond = res["features_over_limit"] >= 4.0
    note = None if cond else (f"features are {res['features_over_limit']:.2f}x the limit "
                              "(< 4x): not the out-of-core condition the targets assume")

    def add(name, value, goal, higher=True, why=None, reason=None, epochs=None):
        if value is None:
            t[name] = {"value": None, "target": goal, "met": None, "reason": reason}
            return
        met = value >= goal if higher else value <= goal
        t[name] = {"value": value, "target": goal, "met": bool(met),
                   "higher_is_better": higher, **({"epochs": epochs} if epochs else {}),
                   **({"bottleneck": why} if not met and why else {}),
                   **({"condition": note} if note else {})}

    def usable(k):
        return k in L and not L[k].get("failed")

    why = bottleneck(ooc) if ooc and not ooc.get("failed") else None
    mem = L.get("in-memory")
    ceiling = mem["epoch_full_s"] if mem and not mem.get("failed") else None
    for key, name, goal in (("pyg-mmap", "vs_pyg_mmap", TARGETS["vs_pyg_mmap"]),
                            ("pyg-mmap-random", "vs_pyg_mmap", TARGETS["vs_pyg_mmap"]),
                            ("dgl", "vs_dgl", TARGETS["vs_dgl"]),
                            ("ginex-native", "vs_ginex_native", TARGETS["vs_ginex_native"])):
        label = f"oocstore epoch vs {key} (x faster)"
        if not ooc or ooc.get("failed"):
            add(label, None, goal, reason="oocstore did not run")
        elif not usable(key):
            add(label, None, goal, reason=(L.get(key) or {}).get("failed")
                or v.get("skipped", {}).get(key, "not run"))
        else:
            b = L[key]
            cap = (f"; the in-memory epoch (no loading at all) takes {ceiling:.1f} s: no loader "
                   f"can be more than {b['epoch_full_s'] / ceiling:.2f}x faster than {key} here"
                   if ceiling else "")
            add(label, b["epoch_full_s"] / ooc["epoch_full_s"], goal,
                why=why + cap + (f"; {key}: {b['epoch_full_basis']}" if b.get("window") else ""),
                epochs=f"{key}: {b['epoch_full_basis']}; oocstore: {ooc['epoch_full_basis']}"
                + (f"; {key}: {b['limit_note']}" if b.get("limit_note") else ""))
    gb = res.get("graphbolt", {})
    add("oocstore epoch vs GraphBolt DiskBasedFeature (x faster)", None,
        TARGETS["vs_graphbolt"], reason=gb.get("reason", "not run")) if not gb.get("runs") \
        else None
    c25 = L.get("oocstore-cache25")
    if c25 and mem and not c25.get("failed") and not mem.get("failed"):
        compute = mem["epoch_time_s"] - mem["load_time_s"]
        add("oocstore epoch (25 % cache) / in-memory epoch", c25["epoch_full_s"] /
            mem["epoch_full_s"], TARGETS["cache25_vs_in_memory"], higher=False,
            why=bottleneck(c25) + f"; in-memory: {compute:.2f} s computing, "
            f"{mem['load_time_s']:.2f} s gathering")
    else:
        add("oocstore epoch (25 % cache) / in-memory epoch", None,
            TARGETS["cache25_vs_in_memory"], higher=False,
            reason="oocstore-cache25 or in-memory did not run")
    for key in ("oocstore", "oocstore-cache25"):
        o = L.get(key)
        if not o:
            continue
        cg = o.get("memcg") or {}
        within = not o.get("failed") and not cg.get("oom_killed") and \
            o.get("budget_peak_bytes", 0) <= o.get("budget_bytes", 0)
        t[f"{key} within its budget (no OOM kill, accountant peak <= budget)"] = {
            "value": o.get("budget_peak_bytes"), "target": o.get("budget_bytes"),
            "met": bool(within), "higher_is_better": False, "oom_killed": cg.get("oom_killed"),
            "cgroup_max_usage_bytes": cg.get("max_usage_bytes"),
            "peak_rss_bytes": o.get("peak_rss_bytes"),
            **({"bottleneck": o.get("failed") or "accountant peak over the budget"}
               if not within else {})}
    return t


def run_view(view: str, cfg: dict, args, workdir: Path) -> dict:
    """Every loader of one view; ``limited``: each in its own cgroup, whole epochs except
    the page-cache loaders; ``evict``: no cgroup, a window, page-cache loaders cold per
    batch."""
    E = cfg["epoch_batches"]
    have_dgl = dgl_python() is not None
    limit = args.limit if view == "limited" and args.cgroup else None
    skipped: dict[str, str] = {}
    L: dict[str, dict] = {}
    names = list(LIMITED) + (["in-memory", "oocstore-cache25"] if view == "limited" else [])
    for name in names:
        if name in args.skip:
            skipped[name] = "--skip"
            continue
        if name == "dgl" and not have_dgl:
            skipped[name] = ".venv-dgl is absent (tools/dgl_env.sh builds it)"
            continue
        if view == "evict":
            nb = min(args.evict_window, E)
        else:
            nb = min(args.window, E) if name in WINDOWED else E
        budget, lim = args.budget, limit
        if name == "oocstore-cache25":
            p = cfg["packs"]["c"]
            budget = -(-(p["min_working_set_cpu"] + p["largest_segment_bytes"]
                         + 4 * p["staging_bytes"]) // 4096) * 4096
            lim = None if limit is None else budget + (args.limit - args.budget)
        if name == "in-memory":
            lim = None  # every row in RAM cannot fit in the limit: the ceiling, outside it
        log(f"[{view}] {name}: {nb} batches" + (f", cgroup limit {lim / MiB:.0f} MiB"
                                                 if lim else ", no cgroup") + " ...")
        t = time.perf_counter()
        res = run_loader(name, cfg, args, workdir, view=view, batches=nb, budget=budget,
                         limit=lim)
        if name == "dgl" and lim and (res.get("memcg") or {}).get("oom_killed"):
            # DGL holds the whole graph in memory (oocstore and pyg-mmap read sampled
            # blocks): at the limit it is killed before its first batch. Run it again with
            # the limit raised by twice the graph's int64 size (its copy and DGL's), so the
            # features get the same page-cache share as the other loaders'.
            first = res
            lim = lim + 2 * cfg["graph_bytes_int64"]
            log(f"[{view}] dgl: OOM-killed at the limit; again with {lim / MiB:.0f} MiB ...")
            res = run_loader(name, cfg, args, workdir, view=view, batches=nb, budget=budget,
                             limit=lim)
            res["at_the_limit"] = {"failed": first.get("failed"), "memcg": first.get("memcg")}
            res["limit_note"] = (f"OOM-killed at the {args.limit / MiB:.0f} MiB limit (the graph "
                                 f"in memory: {cfg['graph_bytes_int64'] / MiB:.0f} MiB as int64); "
                                 f"ran with {lim / MiB:.0f} MiB = the limit + twice the graph")
        res["wall_s"] = time.perf_counter() - t
        res["budget_bytes"] = budget
        res["limit_bytes"] = lim
        L[name] = finish(res, E, cfg["epoch_rows"])
    out = {"view": view, "loaders": L, "skipped": skipped,
           "cgroup": limit is not None,
           "page_cache": ("kept (the cgroup's share)" if view == "limited" else
                          "evicted after every batch for pyg-mmap and dgl")}
    return out


def read_ahead_kb(path: Path) -> int | None:
    """The read-ahead of the block device under ``path`` (``/sys/block/*/queue``): what a
    page fault of ``np.memmap`` reads around the row it needs (8 MiB on this machine's
    disk; 128 KiB is the common default)."""
    try:
        dev = os.stat(path).st_dev
        base = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
        for d in (base, base.parent):
            f = d / "queue" / "read_ahead_kb"
            if f.is_file():
                return int(f.read_text())
    except (OSError, ValueError):
        pass
    return None


def describe(v: dict) -> str:
    if v.get("failed"):
        return "failed"
    return "window" if v.get("window") else "whole"


def print_report(res: dict) -> None:
    cfg = res["config"]
    print(f"\n{cfg['nodes']:,} nodes x {cfg['feat_dim']} {cfg['dtype']} = "
          f"{cfg['feature_bytes'] / GiB:.2f} GiB of features; cgroup limit "
          f"{res['limit_bytes'] / MiB:.0f} MiB ({res['features_over_limit']:.2f}x), cpu budget "
          f"{res['budget_bytes'] / MiB:.0f} MiB; epoch {cfg['epoch_batches']} batches of "
          f"{cfg['batch_size']} seeds, fanouts {cfg['fanouts']}")
    if res.get("cgroup_unavailable"):
        print(f"  memory cgroup unavailable: {res['cgroup_unavailable']} -- the memory-limited "
              "view ran WITHOUT a limit")
    print("  preprocessing: " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                          cfg["preprocessing_s"].items() if v is not None))
    for view, v in res["views"].items():
        print(f"\n[{view}] page cache {v['page_cache']}; cgroup {'yes' if v['cgroup'] else 'no'}")
        print(f"  {'loader':<17} {'batches':>7} {'load s':>8} {'epoch s':>8} {'full epoch s':>12} "
              f"{'basis':<7} {'MB read':>9} {'amplif.':>8} {'peak RSS':>9} {'cg max':>8} "
              f"{'failcnt':>8} {'OOM':>4} {'x ooc':>7} {'load x':>7}")
        L = v["loaders"]
        for k, x in L.items():
            cg = x.get("memcg") or {}
            cgm = f"{cg['max_usage_bytes'] / MiB:7.0f}M" if cg else f"{'-':>8}"
            fc = f"{cg['failcnt']:8d}" if cg else f"{'-':>8}"
            oom = ("yes" if cg.get("oom_killed") else "no") if cg else "-"
            if x.get("failed"):
                print(f"  {k:<17} FAILED: {x['failed']} {cgm} {fc} {oom:>4}")
                continue
            amp = f"{x['read_amplification']:8.2f}" if x.get("read_amplification") else f"{'-':>8}"
            r = v.get("ratios", {}).get(k)
            rx = (f"{r['epoch_x']:7.1f} {r['load_x']:7.1f}" if r else
                  f"{'1':>7} {'1':>7}" if k == "oocstore" else f"{'-':>7} {'-':>7}")
            print(f"  {k:<17} {x['batches']:7d} {x['load_time_s']:8.2f} {x['epoch_time_s']:8.2f} "
                  f"{x['epoch_full_s']:12.1f} {describe(x):<7} {x['bytes_read'] / MB:9.0f} {amp} "
                  f"{x['peak_rss_bytes'] / MiB:8.0f}M {cgm} {fc} {oom:>4} {rx}")
        for k, why in v["skipped"].items():
            print(f"  {k:<17} skipped: {why}")
        for k, x in L.items():
            if x.get("limit_note"):
                print(f"  {k}: {x['limit_note']}")
        for k in ("ginex-native", "ginex-python"):
            g = L.get(k)
            if g and not g.get("failed") and g.get("reads_per_s"):
                print(f"  {k}: {g['reader']}; {g['reads_per_s']:,.0f} row reads/s = "
                      f"{g['reads_per_s'] / QD32_4K_IOPS:.2f}x the disk's 4 KiB QD32 figure; cache "
                      f"{g['cache_rows']:,} rows, hit rate {100 * g['hit_rate']:.1f} %")
        gn, gp = L.get("ginex-native", {}), L.get("ginex-python", {})
        if gn.get("reads_per_s") and gp.get("reads_per_s"):
            print("  native row reads vs Python threads: "
                  f"{gn['reads_per_s'] / gp['reads_per_s']:.2f}x "
                  "the reads/s")
        print("  (x ooc: that loader's whole-epoch time / oocstore's; load x: the same for the "
              "time spent delivering features (oocstore: its load pass without compute); basis "
              "'window': the epoch is extrapolated by rows from the batches timed)")
    tt = res.get("time_to_train")
    if tt:
        print("\ntime to a trained model, memory-limited view (preprocessing + epochs; the plan "
              "sampled once and reused):")
        print(f"  {'loader':<17} {'prep s':>8} " + " ".join(f"{f'{n} ep s':>10}" for n in EPOCHS)
              + f" {'break-even':>10}")
        for k, row in tt["total_s"].items():
            be = tt["break_even_epochs"].get(k, "-")
            be = "never" if be is None else be
            print(f"  {k:<17} {res['preprocessing'][k]['seconds']:8.1f} "
                  + " ".join(f"{row[str(n)]:10.1f}" for n in EPOCHS) + f" {be!s:>10}")
        print("  (break-even: the smallest epoch count from which oocstore, preprocessing "
              "included, is done first)")
    gb = res["graphbolt"]
    print("\nGraphBolt DiskBasedFeature: "
          + ("runs" if gb["runs"] else "cannot run here: " + gb["reason"]))
    for name, t in res["targets"].items():
        if t["met"] is None:
            print(f"  target {name}: not checked -- {t.get('reason')}")
            continue
        op = ">=" if t.get("higher_is_better", True) else "<="
        val = t["value"]
        vs = f"{val / MiB:.0f} MiB" if "budget" in name else f"{val:.3g}"
        goal = f"{t['target'] / MiB:.0f} MiB" if "budget" in name else f"{t['target']:g}"
        line = f"  target {name}: {vs} (goal {op} {goal}) {'met' if t['met'] else 'NOT met'}"
        if t.get("epochs"):
            line += f" ({t['epochs']})"
        if t.get("condition"):
            line += f" [{t['condition']}]"
        if not t["met"] and t.get("bottleneck"):
            line += f" -- bottleneck: {t['bottleneck']}"
        print(line)


def plot(res: dict, path: Path) -> str | None:
    """Time to a trained model per loader (log scale) and oocstore's epoch timeline."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install '.[bench]'): no plot"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tt = res.get("time_to_train")
    L = res["views"].get("limited", {}).get("loaders", {})
    o = L.get("oocstore")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    if tt:
        names = list(tt["total_s"])
        x = np.arange(len(names))
        w = 0.8 / (len(EPOCHS) + 1)
        a1.bar(x - 0.4 + w / 2, [res["preprocessing"][k]["seconds"] for k in names],
               w, label="preprocessing (none: no bar)", color="grey")
        for i, n in enumerate(EPOCHS):
            a1.bar(x - 0.4 + w * (i + 1.5), [tt["total_s"][k][str(n)] for k in names], w,
                   label=f"prep + {n} epoch{'s' if n > 1 else ''}")
        a1.set_yscale("log")
        a1.set_ylim(bottom=1.0)
        a1.set_xticks(x, [k + ("*" if L[k].get("window") else "") for k in names],
                      rotation=25, fontsize=8)
        a1.set_ylabel("seconds (log)")
        a1.set_title(f"time to a trained model, {res['config']['feature_bytes'] / GiB:.1f} GiB "
                     f"features, {res['limit_bytes'] / MiB:.0f} MiB cgroup\n(* epoch extrapolated "
                     "from a window; in-memory ran outside the cgroup)", fontsize=9)
        a1.legend(fontsize=7)
        a1.grid(axis="y", alpha=0.3)
    if o and not o.get("failed"):
        lanes = o["timeline"]["lanes"]
        colors = {"reads (O_DIRECT segments)": "tab:blue", "assembly": "tab:orange",
                  "training thread: wait for data": "tab:red",
                  "training thread: compute": "tab:green"}
        # the first few batches, readable; the totals over the whole epoch in the labels
        comp = lanes.get("training thread: compute", [])
        zoom = comp[min(len(comp), 12) - 1][0] + comp[min(len(comp), 12) - 1][1] if comp else None
        tot = o["timeline"]["totals_s"]
        for i, (lane, spans) in enumerate(lanes.items()):
            shown = [tuple(sp) for sp in spans if zoom is None or sp[0] <= zoom]
            a2.broken_barh(shown, (i - 0.4, 0.8), color=colors.get(lane, "tab:purple"))
        a2.set_yticks(range(len(lanes)),
                      [f"{k}\n(epoch total {tot[k]:.1f} s)" for k in lanes], fontsize=7)
        if zoom:
            a2.set_xlim(0, zoom)
        a2.set_xlabel("seconds into the epoch")
        a2.set_title(f"oocstore training epoch ({o['epoch_time_s']:.1f} s, {o['batches']} "
                     "batches), "
                     "the first 12 batches\ntransfer: none on a CPU device (the batch is the "
                     "staging buffer)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_md(res: dict, text: str, path: Path) -> None:
    m = res["machine"]
    head = (f"# gnn_ooc: GNN training with features larger than memory\n\n"
            f"Command: `{res['command']}`\n\nMachine: {m['cpus']} CPU cores **shared with other "
            f"users during the run** (1-min load average {m['loadavg_1min']:.2f} at the start, "
            f"{m.get('loadavg_1min_end', float('nan')):.2f} at the end), "
            f"{m.get('memtotal_bytes', 0) / GiB:.0f} GiB RAM, ext4 on a virtual disk, "
            f"{m['platform']}, torch {m.get('torch')}. Figures from this one run"
            + (f"; the analysis {res['analysis']}" if res.get("analysis") else "") + ".\n\n```\n")
    path.write_text(head + text.strip() + "\n```\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=str(REPO / "bench" / "data" / "gnn_ooc"))
    add_graph_args(p, nodes=8_500_000, feat_dim=128, avg_degree=10.0, fanouts="10,5",
                   batch_size=1024, store=False)
    p.add_argument("--epoch-batches", type=int, default=256)
    p.add_argument("--limit", default="1GiB", help="memory cgroup limit (process + page cache)")
    p.add_argument("--budget", default="448MiB",
                   help="cpu budget of oocstore and the Ginex-style cache (the rest of the "
                        "limit holds the interpreter, torch and the model)")
    p.add_argument("--window", type=int, default=16,
                   help="batches timed for the page-cache loaders (pyg-mmap, dgl, ginex-python)")
    p.add_argument("--window-seconds", type=float, default=150,
                   help="the page-cache loaders stop their window after this long (inside a "
                        "batch if need be); the epoch is extrapolated by rows")
    p.add_argument("--evict-window", type=int, default=16,
                   help="batches timed per loader in the eviction view")
    p.add_argument("--views", default="limited,evict")
    p.add_argument("--qd", type=int, default=32, help="native row reads in flight")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--superbatch", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--skip", default="")
    p.add_argument("--nice", type=int, default=0, help="run the loaders under nice -n N")
    p.add_argument("--cgroup", choices=("auto", "yes", "no"), default="auto",
                   help="auto: use a memory cgroup where possible, else say so and run without")
    p.add_argument("--worker-timeout", type=float, default=3600)
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help="result JSON (default bench/results/gnn_ooc.json; --quick "
                   "writes none unless given); .md and .png beside it")
    p.add_argument("--quick", action="store_true", help="test size, seconds")
    p.add_argument("--report", metavar="RESULT.json",
                   help="redo the analysis, report and plot of a saved result (no loader runs); "
                        "writes them to --out, default: beside RESULT.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.report:
        res = json.loads(Path(args.report).read_text())
        res.setdefault("machine", {}).setdefault("read_ahead_kb", read_ahead_kb(Path(args.report)))
        res["analysis"] = ("redone from the saved measurements by `python bench/gnn_ooc.py "
                           f"--report {args.report}`")
        return emit(analyse(res), Path(args.out) if args.out else Path(args.report))
    if args.worker:
        print(json.dumps(run_worker(json.loads(Path(args.worker).read_text())), default=float))
        return {}
    from oocstore.units import parse_size

    args.limit, args.budget = parse_size(args.limit), parse_size(args.budget)
    args.skip = {s for s in args.skip.split(",") if s}
    if args.quick:
        args.nodes, args.feat_dim, args.avg_degree, args.fanouts = 40_000, 32, 6.0, "5,3"
        args.batch_size, args.epoch_batches, args.window, args.evict_window = 64, 16, 4, 4
        args.hidden, args.superbatch, args.qd = 16, 4, 8
        if args.budget == parse_size("448MiB"):
            args.budget = 1 << 20
        if args.cgroup == "auto":
            args.cgroup = "no"
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    bad = [v for v in views if v not in ("limited", "evict")]
    if bad:
        raise UsageError(f"--views {args.views}: unknown {bad}; choose from limited, evict")
    if args.budget >= args.limit:
        raise UsageError(f"--budget {args.budget}: must be below --limit {args.limit} (the "
                         "process needs room for the interpreter, torch and the model)")
    why = _memcg.unavailable()
    if args.cgroup == "yes" and why:
        raise UsageError(f"--cgroup yes: {why}; run as root on a machine with cgroup-v1 "
                         "memory, or pass --cgroup no for the unlimited and eviction views")
    if args.cgroup == "no":
        why = why or "--cgroup no"
    args.cgroup = why is None
    if not args.cgroup:
        log(f"memory cgroup unavailable ({why}): the memory-limited view runs without a limit, "
            "and says so")
    out = Path(args.out) if args.out else (None if args.quick else
                                           REPO / "bench" / "results" / "gnn_ooc.json")
    tmp = tempfile.TemporaryDirectory(prefix="gnnooc-") if args.quick and not args.out else None
    workdir = Path(tmp.name) if tmp else (Path(args.workdir) if not args.quick
                                          else Path(args.out).parent / "gnn_ooc_quick")
    if args.quick:
        args.in_process = not args.cgroup
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    machine = machine_info(workdir)
    machine["read_ahead_kb"] = read_ahead_kb(workdir)
    try:
        cfg = setup(args, workdir)
        gb = graphbolt_status()
        res: dict[str, Any] = {
            "bench": "gnn_ooc", "quick": args.quick, "config": cfg,
            "limit_bytes": args.limit, "budget_bytes": args.budget,
            "features_over_limit": cfg["feature_bytes"] / args.limit,
            "cgroup_unavailable": why, "graphbolt": gb, "views": {}}
        for view in views:
            res["views"][view] = run_view(view, cfg, args, workdir)
    finally:
        if tmp is not None:
            tmp.cleanup()
    machine["loadavg_1min_end"] = os.getloadavg()[0]
    res["machine"] = machine
    res["seconds"] = time.perf_counter() - t0
    res["command"] = " ".join(["python", "bench/gnn_ooc.py",
                               *(argv if argv is not None else sys.argv[1:])])
    return emit(analyse(res), out)


def analyse(res: dict) -> dict:
    """Preprocessing, time to a trained model, ratios and targets from the measured
    loaders (so that ``--report`` can redo them from a saved result)."""
    lim = res["views"].get("limited")
    if lim:
        L = {k: v for k, v in lim["loaders"].items() if not v.get("failed")}
        res["preprocessing"] = preprocessing(res["config"], L)
        # ginex-python is a reads/s probe on a window, not a baseline of its own
        res["time_to_train"] = time_to_train(
            {k: v for k, v in res["preprocessing"].items() if k != "ginex-python"}, L)
    for v in res["views"].values():
        L, ref = v["loaders"], v["loaders"].get("oocstore")
        v["ratios"] = {}
        if ref and not ref.get("failed"):
            for k, x in L.items():
                if k != "oocstore" and not x.get("failed"):
                    v["ratios"][k] = {
                        "epoch_x": x["epoch_full_s"] / ref["epoch_full_s"],
                        "load_x": (x["load_time_s"] * x["epoch_full_s"] / x["epoch_time_s"])
                        / (ref["load_time_s"] * ref["epoch_full_s"] / ref["epoch_time_s"])}
    res["targets"] = check_targets(res)
    return res


def emit(res: dict, out: Path | None) -> dict:
    """Print the report; write the JSON, the Markdown copy of the report and the plot."""
    import contextlib
    import io

    machine = res["machine"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_report(res)
        print(f"\nmachine: {machine['cpus']} cpus shared with other users, 1-min load "
              f"{machine['loadavg_1min']:.2f} -> {machine['loadavg_1min_end']:.2f}; disk "
              f"read-ahead {machine.get('read_ahead_kb')} KiB; {res['seconds']:.0f} s in all")
    text = buf.getvalue()
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        png = out.with_suffix(".png")
        res["plot_note"] = plot(res, png)
        if res["plot_note"]:
            print(res["plot_note"])
        else:
            res["plot"] = str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png)
        out.write_text(json.dumps(res, indent=1, default=float) + "\n")
        write_md(res, text, out.with_suffix(".md"))
    print(json.dumps(res, default=float))
    return res


if __name__ == "__main__":
    from oocstore.errors import OocError

    try:
        main()
    except OocError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
