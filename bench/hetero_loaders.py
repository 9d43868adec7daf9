"""Heterogeneous feature loaders side by side: oocstore vs per-type np.memmap and Ginex-style.

The heterogeneous configuration of ``bench/gnn_loaders.py``: the same typed batches (one
heterogeneous plan; the first ``--batches`` batches of its epoch 0, in order) of a
synthetic paper/author/field store whose feature bytes are at least 4x the CPU budget,
served by

1. **in-memory**: every type's features in RAM, ``features[ids]`` per type (the
   ceiling; not bounded by the budget);
2. **mmap** (PyG-style): per type an ``np.memmap`` of its feature file and
   ``feats[input_nodes]``, through the page cache, which is emptied after every batch
   (``posix_fadvise`` DONTNEED; "cold per batch", the regime of features far larger than
   RAM, as in the homogeneous eviction view; the eviction is not timed);
3. **Ginex-style**, per type: the homogeneous benchmark's re-implementation (Belady
   schedule per superbatch over the type's own plan, a CPU row cache, misses read with
   4 KiB-aligned ``O_DIRECT`` row reads by ``BaseRowTier``), one cache per type; the
   cache bytes the budget leaves after the working set (labels, two batches of rows,
   the row-read buffers, the plan index) are split across types in proportion to the
   feature bytes each type reads per epoch;
4. **oocstore**: :class:`~oocstore.hetero.HeteroLoader` over the ``segments`` pack made
   inside the budget (one pack, one budget across types), prefetching the next batch.

Every loader runs in a fresh subprocess with every store file evicted first, and trains
the same model on each batch (PyG ``HeteroSAGE``, hidden ``--hidden``, Adam), so compute
is real. ``load_time_s`` is the time spent delivering features (inline for the
synchronous baselines; for oocstore, whose reads overlap compute, a separate pass
without compute, as in ``gnn_loaders``), ``epoch_time_s`` the wall time of the window
with training. Per type: rows, bytes read, read amplification (bytes read / rows read
from storage x row bytes) and hit rate (rows served from the loader's cache; the mmap
baseline has none: its bytes are ``/proc/self/io`` ``read_bytes`` around the gathers).

    PYTHONPATH=. nice python bench/hetero_loaders.py --papers 400000 --cpu-budget 24MiB \\
        --out bench/results/hetero_loaders.json
    PYTHONPATH=. python bench/hetero_loaders.py --toy      # seconds (tests/bench)

DGL's own loader is not run here (its heterograph sampler samples online; the homogeneous
benchmark has it). ``--loaders ...,mmap-memcg`` (root, cgroup v1) adds per-type memmaps
kept open, without eviction, in a memory cgroup whose limit is the worker's usage once
ready plus ``--memcg-slack`` plus the budget; at the recorded size its page cache
thrashes (it did not finish the 40 batches in 15 minutes), so it is not run by default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import gnn_loaders as gl  # noqa: E402
from _common import peak_rss_bytes, read_bytes, run_json  # noqa: E402

LOADERS = ("in-memory", "mmap", "ginex", "oocstore")
#: Opt-in (``--loaders``): per-type memmaps in a memory cgroup (root, cgroup v1). At the
#: recorded size its page cache thrashes: it did not finish 40 batches in 15 minutes.
OPTIONAL = ("mmap-memcg",)
PLAN = "train"


# ------------------------------------------------------------------------------------
# Worker side: one loader, one cold window, in this (fresh) process
# ------------------------------------------------------------------------------------

def _model(spec: dict, store, plan):
    import torch

    from oocstore.hetero.models import build_hetero_model
    from oocstore.hetero.schema import require_schema

    torch.manual_seed(spec["seed"])
    model = build_hetero_model("hetero-sage", require_schema(store), plan.relations,
                               hidden=spec["hidden"], num_layers=plan.num_layers, dropout=0.0)
    return model, torch.optim.Adam(model.parameters(), lr=0.005)


def _step(model, opt, batch) -> None:
    import torch.nn.functional as F

    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(batch), batch.y).backward()
    opt.step()


def _types(spec: dict) -> dict[str, dict]:
    return spec["types"]


def _per_type(spec, rows, nbytes, hits=None, useful=None) -> dict[str, dict]:
    """Per type: rows delivered, bytes read, rows read x row bytes, amplification, hit rate."""
    out = {}
    for t, info in _types(spec).items():
        u = useful[t] if useful is not None else (rows[t] - (hits or {}).get(t, 0)) * info["row_bytes"]
        out[t] = {"rows": rows[t], "bytes_read": nbytes[t], "useful_bytes": u,
                  "read_amplification": nbytes[t] / u if u else None,
                  "hit_rate": (hits[t] / rows[t] if rows[t] else None) if hits is not None else None}
    return out


def worker_in_memory(spec, store, plan, labels, model, opt) -> dict:
    from oocstore.hetero.loader import make_batch

    t0 = time.perf_counter()
    feats = {}
    for t, info in _types(spec).items():
        fm = store.array_meta(info["array"])
        feats[t] = np.fromfile(store.file_path(fm), dtype=fm.np_dtype,
                               count=int(np.prod(fm.shape)), offset=fm.offset).reshape(fm.shape)
    gl._evict(spec["files"])
    setup = time.perf_counter() - t0
    rows = {t: 0 for t in feats}
    run = gl._Run()
    for b in range(spec["batches"]):
        sb = plan.batch(0, b)
        t1 = time.perf_counter()
        x = {t: f[sb.input_nodes[t]] for t, f in feats.items()}
        run.load += time.perf_counter() - t1
        for t in x:
            rows[t] += x[t].shape[0]
        _step(model, opt, make_batch(sb, x, labels))
    res = run.result(setup_s=setup, cold="none (all in RAM)")
    res["types"] = _per_type(spec, rows, {t: 0 for t in rows}, hits=rows)
    return res


def _own_memcg() -> Path:
    """This process's cgroup-v1 memory cgroup (``/proc/self/cgroup``)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrl, rel = line.split(":", 2)
        if "memory" in ctrl.split(","):
            return Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
    raise RuntimeError("this process is in no memory cgroup")


def _memmap_window(spec, plan, labels, model, opt, run, open_type: dict,
                   after_reads=None) -> dict[str, dict]:
    """The window's batches, each type's input rows gathered from the memmap that
    ``open_type[t]()`` returns (the gather timed into ``run.load``, the bytes read from the
    device counted), ``after_reads()`` (untimed work between the reads and the step), then
    a training step; the per-type rows and bytes."""
    from oocstore.hetero.loader import make_batch

    rows = {t: 0 for t in open_type}
    nbytes = {t: 0 for t in open_type}
    for b in range(spec["batches"]):
        sb = plan.batch(0, b)
        x = {}
        for t, open_feats in open_type.items():
            feats = open_feats()
            io = read_bytes()
            t1 = time.perf_counter()
            x[t] = feats[sb.input_nodes[t]]
            run.load += time.perf_counter() - t1
            nbytes[t] += read_bytes() - io
            rows[t] += x[t].shape[0]
            del feats
        if after_reads is not None:
            after_reads()
        _step(model, opt, make_batch(sb, x, labels))
    return _per_type(spec, rows, nbytes)


def _memmap_of(store, fm):
    return np.memmap(store.file_path(fm), dtype=fm.np_dtype, mode="r", offset=fm.offset,
                     shape=fm.shape)


def worker_mmap_memcg(spec, store, plan, labels, model, opt) -> dict:
    """Per-type memmaps kept open (what a PyG user does), no eviction: the page cache is
    bounded by the memory cgroup the driver started this process in, whose limit is set
    here to what the process holds now (interpreter, torch, model) plus the budget."""
    cg = _own_memcg()
    base = int((cg / "memory.usage_in_bytes").read_text()) + spec["memcg_slack"]
    (cg / "memory.limit_in_bytes").write_text(str(base + spec["budget"]))
    (cg / "memory.max_usage_in_bytes").write_text("0")
    metas = {t: store.array_meta(info["array"]) for t, info in _types(spec).items()}
    feats = {t: _memmap_of(store, fm) for t, fm in metas.items()}
    run = gl._Run()
    types = _memmap_window(spec, plan, labels, model, opt, run,
                           {t: (lambda f=f: f) for t, f in feats.items()})
    res = run.result(setup_s=0.0, cold="per-run; page cache in a memory cgroup")
    res["types"] = types
    res["memcg"] = {"base_bytes": base, "limit_bytes": base + spec["budget"],
                    "max_usage_bytes": int((cg / "memory.max_usage_in_bytes").read_text()),
                    "failcnt": int((cg / "memory.failcnt").read_text())}
    return res


def worker_mmap(spec, store, plan, labels, model, opt) -> dict:
    metas = {t: store.array_meta(info["array"]) for t, info in _types(spec).items()}
    paths = [str(store.file_path(fm)) for fm in metas.values()]
    run = gl._Run()

    def evict() -> None:
        t1 = time.perf_counter()
        gl._evict(paths)  # cold per batch; not timed
        run.excluded += time.perf_counter() - t1

    # a memmap opened per batch and type, dropped before the eviction
    types = _memmap_window(spec, plan, labels, model, opt, run,
                           {t: (lambda fm=fm: _memmap_of(store, fm)) for t, fm in metas.items()},
                           after_reads=evict)
    res = run.result(setup_s=0.0, cold="per-batch")
    res["types"] = types
    return res


class _GinexType:
    """The Ginex-style reader of one node type over its own plan (``<plan>.<type>``)."""

    def __init__(self, store, name: str, info: dict, spec: dict, kernels):
        from oocstore.pack.placement import static_placement
        from oocstore.plan import PlanReader
        from oocstore.tiers.ssd import BaseRowTier

        self.plan = PlanReader(store, info["plan"])
        self.fm = store.array_meta(info["array"])
        g = spec["ginex"]
        self.cache_rows = info["ginex_cache_rows"]
        self.fill_hits, self.insert = kernels
        _, init_ids = static_placement(np.asarray(self.plan.access_counts()), 0, self.cache_rows)
        sb = g["superbatch"]
        scheduled = min(self.plan.num_batches(0), -(-spec["batches"] // sb) * sb)
        self.hit, self.pstart, self.inserts = gl.ginex_schedule(self.plan, scheduled, sb,
                                                                self.cache_rows, init_ids)
        self.cache = np.zeros((max(self.cache_rows, 1), self.fm.shape[1]), dtype=self.fm.np_dtype)
        gl.fill_cache(store, init_ids, self.cache, array=info["array"])
        self.base = BaseRowTier(store.file_path(self.fm), self.fm, threads=g["io_threads"])
        self.rows = self.misses = 0

    def read(self, b: int, ids: np.ndarray) -> np.ndarray:
        h = self.hit[self.pstart[b]:self.pstart[b + 1]]
        assert h.size == ids.size  # the type's plan has the typed plan's batches
        out = np.empty((h.size, self.fm.shape[1]), dtype=self.fm.np_dtype)
        self.fill_hits(self.cache, h, out)
        miss = np.flatnonzero(h < 0)
        if miss.size:
            tmp = np.empty((miss.size, self.fm.shape[1]), dtype=self.fm.np_dtype)
            self.base.gather(ids[miss], tmp)
            out[miss] = tmp
        pos, slot = self.inserts[b]
        self.insert(self.cache, out, pos, slot)
        self.rows += h.size
        self.misses += miss.size
        return out


def worker_ginex(spec, store, plan, labels, model, opt) -> dict:
    from oocstore.hetero.loader import make_batch

    t0 = time.perf_counter()
    kernels = gl._ginex_kernels()
    readers = {t: _GinexType(store, t, info, spec, kernels) for t, info in _types(spec).items()}
    for r in readers.values():  # compile the kernels now (per dtype and width)
        one = np.zeros((1, r.fm.shape[1]), r.fm.np_dtype)
        r.fill_hits(r.cache, r.hit[:1], one)
        r.insert(r.cache, one, np.zeros(0, np.int64), np.zeros(0, np.int64))
    gl._evict(spec["files"])
    setup = time.perf_counter() - t0
    run = gl._Run()
    for b in range(spec["batches"]):
        sb = plan.batch(0, b)
        t1 = time.perf_counter()
        x = {t: r.read(b, sb.input_nodes[t]) for t, r in readers.items()}
        run.load += time.perf_counter() - t1
        _step(model, opt, make_batch(sb, x, labels))
    res = run.result(setup_s=setup, cold="per-run")
    stats = {t: r.base.stats() for t, r in readers.items()}
    res["types"] = _per_type(spec, {t: r.rows for t, r in readers.items()},
                             {t: s["bytes_read"] for t, s in stats.items()},
                             hits={t: r.rows - r.misses for t, r in readers.items()},
                             useful={t: s["useful_bytes"] for t, s in stats.items()})
    for t, r in readers.items():
        res["types"][t]["cache_rows"] = r.cache_rows
        r.base.close()
        r.plan.close()
    return res


def worker_oocstore(spec, store, plan, labels, model, opt) -> dict:
    from oocstore.budget import MemoryBudget
    from oocstore.hetero import HeteroLoader

    def one_pass(train: bool) -> dict:
        t0 = time.perf_counter()
        loader = HeteroLoader(store, spec["plan"], pack=spec["pack"],
                              budget=MemoryBudget(cpu=spec["budget"]))
        loader.num_batches = lambda epoch: spec["batches"]  # the window, no read past it
        gl._evict(spec["files"])
        setup = time.perf_counter() - t0
        run = gl._Run()
        for batch in gl.timed(loader.epoch(0), run):
            if train:
                _step(model, opt, batch)
        res = run.result(setup_s=setup, cold="per-run",
                         cpu_charged_peak=loader.accountant.peak("cpu"))
        st = loader.stats()
        loader.close()
        res["types"] = {t: {"rows": s["rows"], "bytes_read": s["bytes_read"],
                            "useful_bytes": s["useful_bytes"],
                            "read_amplification": s["read_amplification"],
                            "hit_rate": s["hit_rate"]} for t, s in st.items()}
        return res

    load = one_pass(False)  # reads overlap compute when training: time them alone
    res = one_pass(True)
    res["train_pass_wait_s"] = res["load_time_s"]
    res["load_time_s"] = load["load_time_s"]
    res["types"] = load["types"]
    return res


WORKERS = {"in-memory": worker_in_memory, "mmap": worker_mmap,
           "mmap-memcg": worker_mmap_memcg, "ginex": worker_ginex, "oocstore": worker_oocstore}


def run_worker(spec: dict) -> dict:
    import torch

    from oocstore.hetero.plan import HeteroPlanReader
    from oocstore.hetero.readers import read_whole_checked
    from oocstore.hetero.schema import label_name
    from oocstore.store import Store

    from oocstore.tiers.assemble import warm_up

    torch.set_num_threads(spec["threads"])
    warm_up(np.dtype(np.float32))  # oocstore's kernels (also in BaseRowTier), as gnn_loaders
    with Store(spec["store"]) as store:
        plan = HeteroPlanReader(store, spec["plan"])
        labels = np.asarray(read_whole_checked(store, label_name(plan.target)), dtype=np.int64)
        model, opt = _model(spec, store, plan)
        from oocstore.hetero.loader import make_batch

        sb = plan.batch(0, 0)  # one step on zero features (no feature I/O): kernels loaded
        _step(model, opt, make_batch(sb, {t: np.zeros((sb.input_nodes[t].size, i["dim"]),
                                                      np.float32)
                                          for t, i in _types(spec).items()}, labels))
        res = WORKERS[spec["loader"]](spec, store, plan, labels, model, opt)
        plan.close()
    res.update(loader=spec["loader"], batches=spec["batches"], peak_rss_bytes=peak_rss_bytes())
    return res


# ------------------------------------------------------------------------------------
# Driver side: store, plan, pack, one subprocess per loader, report
# ------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def setup(args, path: Path, budget: int) -> dict:
    """Store, plan and ``segments`` pack (reused when ``--dir`` already holds them with the
    same settings); returns the loaders' common spec."""
    from oocstore.hetero import HeteroSpec, build_hetero_store, hetero_synthetic_source
    from oocstore.hetero.pack import list_hetero_packs, loader_extras, pack_hetero
    from oocstore.hetero.plan import HeteroPlanReader, list_hetero_plans
    from oocstore.hetero.sampler import sample_hetero_plan
    from oocstore.hetero.schema import feat_name, require_schema
    from oocstore.store import Store
    from oocstore.tiers.ssd import base_read_buffer_bytes

    out: dict = {"times_s": {}}
    key = {"papers": args.papers, "split": args.split}
    stamp = path.parent / "setup.json"
    old = json.loads(stamp.read_text()) if stamp.exists() else {}
    if old.get("store") != key:
        log(f"building {path} ({args.papers} papers) ...")
        t = time.perf_counter()
        build_hetero_store(path, hetero_synthetic_source(HeteroSpec(papers=args.papers)),
                           add_reverse=True, overwrite=True,
                           split_fractions=tuple(float(v) for v in args.split.split(",")))
        out["times_s"]["ingest"] = time.perf_counter() - t
        old = {"store": key}
    with Store(path, readonly=False) as store:
        pkey = [args.fanouts, args.batch_size]
        if old.get("plan") != pkey or PLAN not in list_hetero_plans(store):
            log("sampling ...")
            sample_hetero_plan(store, fanouts=args.fanouts, batch_size=args.batch_size, epochs=1,
                               name=PLAN, overwrite=True, seed=0)
            old["plan"] = pkey
            old.pop("pack", None)
        kkey = [budget, args.max_disk_blowup]
        if old.get("pack") != kkey or PLAN not in list_hetero_packs(store):
            log("packing ...")
            t = time.perf_counter()
            pack_hetero(store, PLAN, name=PLAN, cpu_budget=budget, layout="segments",
                        max_disk_blowup=args.max_disk_blowup, overwrite=True)
            out["times_s"]["pack"] = time.perf_counter() - t
            old["pack"] = kkey
        stamp.write_text(json.dumps(old))
        schema = require_schema(store)
        plan = HeteroPlanReader(store, PLAN)
        pk = list_hetero_packs(store)[PLAN]
        if plan.batches_per_epoch[0] < args.batches:
            raise SystemExit(f"the plan has {plan.batches_per_epoch[0]} batches: lower --batches")
        types = {}
        for ti, t in enumerate(plan.types):
            nt = schema.node_types[t]
            if not nt.has_features:
                continue
            fm = store.array_meta(feat_name(t))
            most = int(plan.index[:, 3 + ti].max())
            types[t] = {"array": feat_name(t), "plan": plan.meta["feature_plans"][t],
                        "dim": nt.feat_dim, "row_bytes": int(fm.row_bytes),
                        "feature_bytes": int(fm.nbytes),
                        "bytes_per_epoch": int(plan.counts(t).astype(np.int64).sum()) * fm.row_bytes,
                        "working_set": 2 * most * fm.row_bytes
                        + base_read_buffer_bytes(fm.row_bytes, args.io_threads),
                        "oocstore_cached_rows": pk["types"][t]["cached_rows"]}
        extras = sum(b for _, b in loader_extras(plan, schema))
        plan.close()
        files = gl.store_files(path)
    cache = max(0, budget - extras - sum(i["working_set"] for i in types.values()))
    per_epoch = sum(i["bytes_per_epoch"] for i in types.values())
    for i in types.values():
        i["ginex_cache_rows"] = int(cache * i["bytes_per_epoch"] / per_epoch) // i["row_bytes"]
    return {"store": str(path), "plan": PLAN, "pack": PLAN, "budget": budget,
            "batches": args.batches, "hidden": args.hidden, "seed": 0, "threads": args.threads,
            "memcg_slack": args.memcg_slack,
            "files": files, "types": types, "pack_meta": pk, "setup": out,
            "ginex": {"superbatch": args.superbatch, "io_threads": args.io_threads,
                      "cache_bytes": cache}}


def run_loader(name: str, spec: dict, work: Path, timeout: float) -> dict:
    spec_path = work / f"spec-{name}.json"
    spec_path.write_text(json.dumps({**spec, "loader": name}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    if name != "mmap-memcg":
        return run_json(cmd, timeout=timeout)
    import _memcg

    # started with a generous limit; the worker lowers it to its own usage + the budget
    r, st = _memcg.run_limited(cmd, 64 << 30, f"oocstore-hloaders-{os.getpid()}",
                               timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{name} exited with {r.returncode} (cgroup {st}):\n{r.stderr[-3000:]}")
    res = json.loads(lines[-1])
    res["memcg"]["oom_killed"] = st["oom_killed"]
    return res


def memcg_missing() -> str | None:
    import _memcg

    return _memcg.unavailable()


def report(res: dict) -> str:
    """The table: per loader the window's load and epoch time, ratios vs oocstore, and
    per type bytes read, read amplification and hit rate."""
    ours = res["loaders"]["oocstore"]
    lines = [f"{res['config']['batches']} batches, features {res['feature_bytes'] / 1e6:.1f} MB "
             f"= {res['feature_bytes_over_budget']:.1f}x the {res['cpu_budget_bytes'] / 2**20:.0f} "
             "MiB cpu budget",
             f"{'loader':<10} {'load s':>8} {'x oocstore':>10} {'epoch s':>8} {'x oocstore':>10}"
             "  per type: read MB, amplification, hit rate"]
    for name, r in res["loaders"].items():
        per = "; ".join(
            f"{t} {s['bytes_read'] / 1e6:.1f} MB, "
            + (f"{s['read_amplification']:.2f}x" if s["read_amplification"] else "-") + ", "
            + (f"{s['hit_rate']:.1%}" if s["hit_rate"] is not None else "n/a")
            for t, s in r["types"].items())
        lines.append(f"{name:<10} {r['load_time_s']:8.2f} "
                     f"{r['load_time_s'] / ours['load_time_s']:10.2f} {r['epoch_time_s']:8.2f} "
                     f"{r['epoch_time_s'] / ours['epoch_time_s']:10.2f}  {per}")
    for name, why in res.get("skipped", {}).items():
        lines.append(f"{name:<10} not measured: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from oocstore.units import parse_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--papers", type=int, default=400_000)
    ap.add_argument("--cpu-budget", default="24MiB")
    ap.add_argument("--fanouts", default="4,2")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--split", default="0.1,0.05,0.05")
    ap.add_argument("--batches", type=int, default=40, help="timed window: the epoch's first N")
    ap.add_argument("--max-disk-blowup", type=float, default=16.0)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per loader process (default 1: on 2 cores shared with "
                         "other jobs, two OpenMP threads per step stall each other and the "
                         "compute times spread by 10x between runs)")
    ap.add_argument("--superbatch", type=int, default=20, help="Ginex-style superbatch (batches)")
    ap.add_argument("--io-threads", type=int, default=8, help="Ginex-style row-read threads")
    ap.add_argument("--memcg-slack", type=parse_size, default=32 << 20,
                    help="mmap-memcg: the cgroup's limit is the worker's usage once ready, "
                         "plus this (training's own allocations, outside every loader's "
                         "budget), plus the cpu budget (default 32MiB)")
    ap.add_argument("--loaders", default=",".join(LOADERS))
    ap.add_argument("--worker-timeout", type=float, default=900)
    ap.add_argument("--dir", default=None, help="work directory, kept (default: temporary)")
    ap.add_argument("--out", default=None, help="JSON result (and the table beside it, .txt)")
    ap.add_argument("--toy", action="store_true", help="test size, seconds")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(Path(args.worker).read_text())), default=float))
        return {}
    if args.toy:
        args.papers, args.cpu_budget, args.fanouts, args.batch_size = 20000, "2560KiB", "3,2", 32
        args.batches, args.superbatch, args.io_threads = 6, 3, 2
    budget = parse_size(args.cpu_budget)
    loaders = [x for x in args.loaders.split(",") if x]
    unknown = sorted(set(loaders) - set(LOADERS) - set(OPTIONAL))
    if unknown or "oocstore" not in loaders:
        raise SystemExit(f"--loaders {args.loaders}: use some of "
                         f"{', '.join(LOADERS + OPTIONAL)}, "
                         "oocstore included (the ratios are against it)")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="oocstore-hloaders-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        spec = setup(args, work / "store", budget)
        fb = sum(i["feature_bytes"] for i in spec["types"].values())
        res = {"config": {k: v for k, v in vars(args).items() if k != "worker"},
               "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
               "machine": "2 CPU cores shared with other engineers' jobs; no GPU",
               "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
               "cpu_budget_bytes": budget, "feature_bytes": fb,
               "feature_bytes_over_budget": fb / budget, "types": spec["types"],
               "ginex": spec["ginex"], "pack": spec["pack_meta"], "setup": spec["setup"],
               "loaders": {}}
        for name in loaders:
            why = memcg_missing() if name == "mmap-memcg" else None
            if why:
                log(f"skipping {name}: {why}")
                res.setdefault("skipped", {})[name] = why
                continue
            log(f"running {name} ...")
            try:
                res["loaders"][name] = run_loader(name, spec, work, args.worker_timeout)
            except subprocess.TimeoutExpired:
                if name == "oocstore":
                    raise
                res.setdefault("skipped", {})[name] = (
                    f"did not finish {args.batches} batches in {args.worker_timeout:.0f} s")
                log(f"{name}: {res['skipped'][name]}")
        ours = res["loaders"]["oocstore"]
        for r in res["loaders"].values():
            r["load_vs_oocstore"] = r["load_time_s"] / ours["load_time_s"]
            r["epoch_vs_oocstore"] = r["epoch_time_s"] / ours["epoch_time_s"]
        res["uptime_after"] = subprocess.run(["uptime"], capture_output=True,
                                             text=True).stdout.strip()
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    table = report(res)
    print(table, file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, sort_keys=True, default=float) + "\n")
        Path(args.out).with_suffix(".txt").write_text(
            f"$ PYTHONPATH=. nice python bench/{res['command']}\n{res['machine']}\n"
            f"uptime before: {res['uptime']}\nuptime after: {res['uptime_after']}\n\n{table}\n")
    print(json.dumps(res, sort_keys=True, default=float))
    return res


if __name__ == "__main__":
    main()
