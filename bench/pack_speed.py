"""Packing throughput (``pack_plan``) against the disk's own sequential write speed.

In one run, on the same filesystem and the same data:

1. the disk's sequential write speed: a new file as large as the pack, written from one
   random 8 MiB buffer in 8 MiB requests and fsync'd (timed), then deleted -- before the
   pack (sized by the blowup cap, which binds here) and after it (sized exactly), median
   reported (the disk is noisy);
2. ``pack_plan`` with a CPU tier of ``--cpu-frac`` of the feature bytes and
   ``--max-disk-blowup``, the base feature file evicted from the page cache first (the
   base scan is cold, read with O_DIRECT); bytes of every pack file written / wall time,
   and that as a fraction of the disk's write speed (issue target >= 0.5);
3. where the time goes, from wall-clock timers wrapped around the packer's stages:
   placement, segment sizing, assignment (of the packed batches; the rest on a thread
   beside the copy), the copy's base-array reads (one O_DIRECT
   scan), its kernels (window order, scatter, bucket gather / place) and bucket I/O,
   file writes (crc32 + write syscalls), fsync -- stages in the packer's read / write
   threads overlap the others and are marked; and peak RSS (sampled every 20 ms, plus
   the page-cache bytes the process maps).

The store (``--nodes`` x ``--feat-dim`` f32 R-MAT, built by ``oocstore.ingest``) and its
plan are made once under ``bench/data`` and reused (``--clean`` deletes them at the end).

Prints a summary, then one JSON line; writes ``bench/results/pack_speed.json`` and a PNG
of the time breakdown. ``--toy`` runs everything at test size in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _common import (TOY_GRAPH, add_graph_args, add_result_args, graph_store,  # noqa: E402
                     result_path, time_calls, write_result)
from oocstore.store.probe import write_speed as disk_write_speed  # noqa: E402
MB = 1e6

from oocstore.pack import PackOptions, pack_plan  # noqa: E402
from oocstore.pack import copy as copy_mod  # noqa: E402
from oocstore.pack import layout as layout_mod  # noqa: E402
from oocstore.pack import packer as packer_mod  # noqa: E402
from oocstore.store import Store  # noqa: E402
from oocstore.store import files as files_mod  # noqa: E402
from oocstore.store.files import evict  # noqa: E402


# -- helpers shared with bench/ssd_epoch.py ----------------------------------------------

def make_store(path: Path, *, nodes: int, feat_dim: int, avg_degree: float) -> Path:
    """A synthetic R-MAT store, built once at ``path`` and reused."""
    from oocstore.ingest import build_store
    from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source

    if not (path / "catalog.lmdb").is_dir():
        print(f"generating {path} ({nodes:,} nodes x {feat_dim} f32, avg degree {avg_degree:g})"
              " ...", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = SyntheticSpec(nodes=nodes, feat_dim=feat_dim, avg_degree=avg_degree)
        build_store(path, synthetic_source(spec), overwrite=True)
    return path


def ensure_plan(store: Store, name: str, *, fanouts: str, batch_size: int, epochs: int,
                seeds: np.ndarray | None = None) -> None:
    """Sample plan ``name`` unless the store has it already."""
    if store.get(f"plan/{name}") is None:
        from oocstore.samplers import sample_plan
        print(f"sampling plan {name!r} ...", file=sys.stderr)
        sample_plan(store, fanouts=fanouts, batch_size=batch_size, epochs=epochs, name=name,
                    seeds=seeds, verify=False)


def proc_io() -> dict[str, int]:
    """This process's ``/proc/self/io`` counters (read_bytes counts O_DIRECT reads too)."""
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k.strip()] = int(v)
    return out


class PeakRSS:
    """Samples this process's RSS every ``interval`` s in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.start_rss = self._proc.memory_info().rss
        self.peak = self.start_rss
        self.peak_anon = self._anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _anon(self) -> int:
        mi = self._proc.memory_info()
        return mi.rss - getattr(mi, "shared", 0)  # file-backed pages counted in "shared"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self.peak_anon = max(self.peak_anon, self._anon())

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


# -- stage timers ------------------------------------------------------------------------

#: copy_rows' helpers timed by name; the bucket I/O runs in the packer's read / write
#: threads (overlapping the kernels on the main thread).
_COPY_STAGES = {
    "_window_order": "window order (numba kernel)",
    "_scatter_rows": "scatter (numba kernel)",
    "_gather_rows": "bucket gather (numba kernel)",
    "_place_rows": "bucket place (numba kernel)",
    "_pwrite_all": "bucket writes",
    "_pread_all": "bucket reads",
}
_MAIN_COPY = ("window order (numba kernel)", "scatter (numba kernel)",
              "bucket gather (numba kernel)", "bucket place (numba kernel)")
#: Stages timed in the packer's threads: they overlap the main thread's stages.
THREAD_STAGES = ("base scan reads (O_DIRECT)", "bucket writes", "bucket reads",
                 "writes during the copy (crc32 + write)", "assignment (thread, beside the copy)")

class StageTimers:
    """Wall-clock timers wrapped around the packer's stages (patched in, then restored)."""

    def __init__(self) -> None:
        self.sec: dict[str, float] = {}
        self.bytes: dict[str, int] = {}
        self._saved: list[tuple[object, str, object]] = []
        self.copy_writes = 0.0  # write seconds inside copy_rows

    def _add(self, stage: str, dt: float) -> None:
        self.sec[stage] = self.sec.get(stage, 0.0) + dt

    def wrap(self, owner, attr: str, stage: str, off_main: str | None = None) -> None:
        """Time ``owner.attr`` as ``stage`` (as ``off_main`` when called off the main
        thread, if given)."""
        def add(dt: float) -> None:
            on_main = threading.current_thread() is threading.main_thread()
            self._add(stage if on_main or off_main is None else off_main, dt)
        time_calls(owner, attr, add, self._saved)

    def _wrap_copy_rows(self) -> None:
        """copy_rows, and the part of the write time spent inside it (window writes)."""
        fn = packer_mod.copy_rows
        self._saved.append((packer_mod, "copy_rows", fn))
        timers = self
        key = "writes (crc32 + write)"

        def timed(*a, **kw):
            w0 = timers.sec.get(key, 0.0)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timers._add("copy_rows (all)", time.perf_counter() - t0)
                timers.copy_writes += timers.sec.get(key, 0.0) - w0
        packer_mod.copy_rows = timed

    @contextlib.contextmanager
    def installed(self):
        self.wrap(layout_mod, "static_placement", "placement")
        self.wrap(layout_mod, "_segment_rows", "segment sizing")
        self.wrap(packer_mod, "_assign", "assignment",
                  off_main="assignment (thread, beside the copy)")
        self._wrap_copy_rows()
        self.wrap(files_mod.ArrayFileWriter, "write", "writes (crc32 + write)")
        self.wrap(files_mod.DirectReader, "read_into", "base scan reads (O_DIRECT)")
        for attr, stage in _COPY_STAGES.items():  # copy_rows' kernels and bucket I/O
            if hasattr(copy_mod, attr):
                self.wrap(copy_mod, attr, stage)
        self.wrap(os, "fsync", "fsync")
        try:
            yield self
        finally:
            for owner, attr, fn in reversed(self._saved):
                setattr(owner, attr, fn)
            self._saved.clear()


def drop_pack(store_path: Path, name: str) -> None:
    """Delete pack ``name`` and its files (frees the disk between benchmark runs)."""
    from oocstore.pack.format import pack_key
    from oocstore.tiers.reader import load_pack

    with Store(store_path, readonly=False) as store:
        if store.get(pack_key(name)) is None:
            return
        meta = load_pack(store, name)
        with store.transaction() as txn:
            for arr in meta.arrays.values():
                txn.delete_array(arr)
            txn._deletes.add(pack_key(name))  # no public "delete key" on a transaction


def pack_files(store: Store, name: str) -> dict[str, int]:
    """Bytes on disk of every file of pack ``name``."""
    from oocstore.tiers.reader import load_pack

    meta = load_pack(store, name)
    return {part: store.file_path(store.array_meta(arr)).stat().st_size
            for part, arr in meta.arrays.items()}


def run_pack(store_path: Path, plan: str, name: str, options: PackOptions) -> dict:
    """One cold pack: evict the base features, pack, time every stage."""
    with Store(store_path, readonly=False) as store:
        fpath = store.file_path(store.array_meta("features"))
        evict(fpath)
        timers = StageTimers()
        io0, cpu0 = proc_io(), os.times()
        with PeakRSS() as rss, timers.installed():
            t0 = time.perf_counter()
            meta = pack_plan(store, plan, name=name, options=options, overwrite=True)
            seconds = time.perf_counter() - t0
        io1, cpu1 = proc_io(), os.times()
        store.refresh()
        files = pack_files(store, name)
    return {"seconds": seconds, "meta": meta, "files": files, "timers": timers,
            "peak_rss": rss.peak, "start_rss": rss.start_rss, "peak_anon_rss": rss.peak_anon,
            "read_bytes": io1["read_bytes"] - io0["read_bytes"],
            "write_bytes": io1["write_bytes"] - io0["write_bytes"],
            # Dirtied pages dropped before they reached the disk (truncated bucket data).
            "cancelled_write_bytes": io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"],
            "cpu_user": cpu1.user - cpu0.user, "cpu_system": cpu1.system - cpu0.system}


def breakdown(timers: StageTimers, total: float) -> dict[str, float]:
    """Seconds per stage. The packer's copy runs base reads and bucket reads in a
    read-ahead thread and bucket / window writes in a writer thread: those stages
    (:data:`THREAD_STAGES`) overlap the main thread's, and "copy_rows: waiting" is the
    time the main thread waited for them. "writes (crc32 + write)" counts every file
    write; "writes during the copy" the part made while ``copy_rows`` ran (the windows, and
    the tier / slot files of the assignment thread beside it); "other" is the main
    thread's time outside every timed stage."""
    s = dict(timers.sec)
    copy_all = s.pop("copy_rows (all)", 0.0)
    writes = s.get("writes (crc32 + write)", 0.0)
    s["writes during the copy (crc32 + write)"] = timers.copy_writes
    kernels = sum(s.get(k, 0.0) for k in _MAIN_COPY)
    s["copy_rows: waiting (reads, writes)"] = max(0.0, copy_all - kernels)
    main_thread = (copy_all + (writes - timers.copy_writes)
                   + sum(s.get(k, 0.0) for k in ("placement", "segment sizing", "assignment",
                                                 "fsync")))
    s["other (plan reads, catalog, python)"] = max(0.0, total - main_thread)
    return s


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_graph_args(p, nodes=2_000_000, feat_dim=128, avg_degree=10.0, fanouts="10,5",
                   batch_size=1024)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cpu-frac", type=float, default=0.10, help="CPU tier, fraction of features")
    p.add_argument("--max-disk-blowup", type=float, default=4.0)
    p.add_argument("--window-mib", type=int, default=None,
                   help="copy window (default: the packer's, 256 MiB)")
    p.add_argument("--copy", choices=["auto", "buckets", "rescans"], default="auto",
                   help="the packer's copy strategy (default auto: fewer bytes moved)")
    p.add_argument("--clean", action="store_true", help="delete the generated store at the end")
    p.add_argument("--keep-pack", action="store_true", help="keep the pack (default: drop it)")
    add_result_args(p, "pack_speed")
    args = p.parse_args(argv)
    if args.toy:
        vars(args).update(TOY_GRAPH)
    out = result_path(args, "pack_speed")
    path, tmp = graph_store(args, "packspeed-")
    plan = f"pack-speed-e{args.epochs}"
    try:
        with Store(path, readonly=False) as store:
            ensure_plan(store, plan, fanouts=args.fanouts, batch_size=args.batch_size,
                        epochs=args.epochs)
            fmeta = store.array_meta("features")
        feature_bytes = fmeta.nbytes
        opts = dict(cpu_cache=int(args.cpu_frac * feature_bytes),
                    max_disk_blowup=args.max_disk_blowup)
        if args.window_mib:
            opts["window_bytes"] = args.window_mib << 20
        options = PackOptions(copy=args.copy, **opts)
        probe_dir = path / "packs"
        probe_dir.mkdir(exist_ok=True)
        estimate = int(args.max_disk_blowup * feature_bytes + opts["cpu_cache"])
        disk = [disk_write_speed(probe_dir, estimate)]
        r = run_pack(path, plan, "pack-speed", options)
        written = sum(r["files"].values())
        disk.append(disk_write_speed(probe_dir, written))
        if not args.keep_pack:
            drop_pack(path, "pack-speed")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        elif args.clean:
            shutil.rmtree(path, ignore_errors=True)

    meta = r["meta"]
    rows_bytes = r["files"]["rows"] + r["files"]["cpu_rows"] + r["files"]["gpu_rows"]
    disk_bps = statistics.median(disk)
    pack_bps = written / r["seconds"]
    stages = breakdown(r["timers"], r["seconds"])
    res = {
        "bench": "pack_speed", "toy": args.toy, "nodes": fmeta.shape[0], "feat_dim": args.feat_dim,
        "feature_bytes": feature_bytes, "plan": plan, "plan_batches": meta.total_batches,
        "plan_positions": meta.stats["positions"], "fanouts": args.fanouts,
        "batch_size": args.batch_size, "epochs": args.epochs,
        "cpu_cache_bytes": opts["cpu_cache"], "max_disk_blowup": args.max_disk_blowup,
        "window_bytes": options.window_bytes, "copy": options.copy, "cache": "cold (base features evicted; O_DIRECT scan)",
        "segment_batches": meta.segment_batches, "packed_batches": meta.packed_batches,
        "blowup": meta.blowup, "base_scans": meta.stats["base_scans"],
        "expected_read_amplification": meta.expected_read_amplification,
        "pack_seconds": r["seconds"], "bytes_written": written, "row_bytes_written": rows_bytes,
        "files": r["files"], "pack_MBps": pack_bps / MB, "disk_write_MBps": disk_bps / MB,
        "disk_write_MBps_runs": [d / MB for d in disk], "disk_probe_bytes": [estimate, written],
        "ratio_to_disk": pack_bps / disk_bps, "target_ratio": 0.5,
        "proc_read_bytes": r["read_bytes"], "proc_write_bytes": r["write_bytes"],
        "proc_cancelled_write_bytes": r["cancelled_write_bytes"],
        "cpu_seconds": {"user": r["cpu_user"], "system": r["cpu_system"]},
        "base_read_over_feature_bytes": r["read_bytes"] / feature_bytes,
        "peak_rss": r["peak_rss"], "start_rss": r["start_rss"], "peak_anon_rss": r["peak_anon_rss"],
        "stages_seconds": stages,
    }
    res["target_met"] = res["ratio_to_disk"] >= 0.5
    print(f"pack plan {plan!r} of {fmeta.shape[0]:,} nodes x {args.feat_dim} f32 "
          f"({feature_bytes / MB:,.0f} MB features): {meta.total_batches:,} batches, "
          f"{meta.stats['positions']:,} input positions; cpu tier {opts['cpu_cache'] / MB:,.0f} MB, "
          f"blowup cap {args.max_disk_blowup:g} (cold base scan)")
    print(f"  packed   {meta.packed_batches:,}/{meta.total_batches:,} batches in segments of "
          f"{meta.segment_batches}, blowup {meta.blowup:.2f}, {meta.stats['base_scans']} base scans, "
          f"expected read amplification {meta.expected_read_amplification:.3f}")
    print(f"  pack     {r['seconds']:8.1f} s, {written / MB:,.0f} MB written "
          f"({rows_bytes / MB:,.0f} MB of feature rows): {pack_bps / MB:.0f} MB/s")
    print(f"  disk     {disk_bps / MB:8.0f} MB/s sequential write + fsync (median of "
          f"{', '.join(f'{d / MB:.0f}' for d in disk)})")
    print(f"  ratio    {res['ratio_to_disk']:8.2f} x the disk's write speed (target >= 0.5: "
          f"{'met' if res['target_met'] else 'NOT met'})")
    print(f"  reads    {r['read_bytes'] / MB:,.0f} MB from disk (/proc/self/io) = "
          f"{res['base_read_over_feature_bytes']:.1f} x the feature bytes")
    print(f"  writes   {r['write_bytes'] / MB:,.0f} MB dirtied, {r['cancelled_write_bytes'] / MB:,.0f} MB of "
          f"them dropped unwritten (truncated buckets); CPU {r['cpu_user']:.1f} s user + "
          f"{r['cpu_system']:.1f} s system on {os.cpu_count()} cores")
    print(f"  peak RSS {r['peak_rss'] / (1 << 20):8.0f} MiB (anonymous {r['peak_anon_rss'] / (1 << 20):.0f}"
          f" MiB; {r['start_rss'] / (1 << 20):.0f} MiB before packing)")
    print(f"  where the time goes ({r['seconds']:.1f} s; '|' marks time in the packer's read / "
          "write threads, overlapping the rest):")
    for stage, sec in sorted(stages.items(), key=lambda kv: -kv[1]):
        mark = "|" if stage in THREAD_STAGES else " "
        print(f"   {mark}{stage:<46} {sec:7.2f} s  {100 * sec / r['seconds']:5.1f} %")
    write_result(res, out, lambda png: plot(stages, res, png))
    return res


def plot(stages: dict[str, float], res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    a1.bar(["pack", "disk write"], [res["pack_MBps"], res["disk_write_MBps"]], color=["C0", "C7"])
    a1.set_ylabel("MB/s")
    a1.set_title(f"pack / disk = {res['ratio_to_disk']:.2f}", fontsize=9)
    items = sorted(stages.items(), key=lambda kv: kv[1])
    a2.barh([k for k, _ in items], [v for _, v in items])
    a2.set_xlabel("seconds")
    a2.set_title(f"pack time breakdown ({res['pack_seconds']:.1f} s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
