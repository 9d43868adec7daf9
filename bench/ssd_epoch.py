"""One epoch from the SSD tier, cold, against the disk's own sequential O_DIRECT read speed.

In one run, on the same store and plan (``--batches`` batches of one epoch, fanouts
``--fanouts``), rounds interleaved (``--rounds``, medians reported), each method cold:

* **ours**: a pack with no CPU tier (every row on SSD segments), its rows file and the
  base features evicted from the page cache, then ``TieredReader.read_batch`` over every
  batch of epoch 0. Reported: bytes read / useful bytes (target <= 1.05), effective
  bandwidth = bytes read / time, and that as a fraction of
* **seq-read**: the sequential O_DIRECT read speed of a region of the same size (the
  first bytes of the same rows file), 8 MiB requests (target: ours >= 0.7 of it);
* **fallback**: the same batches through a pack with ``max_disk_blowup=0`` (no segments:
  every row is one 4 KiB-widened O_DIRECT read of the base array, 8 threads) -- on the
  first ``--baseline-batches`` batches only (it is ~50x slower), time extrapolated;
* **mmap**: ``np.memmap`` of the base features + ``feats[input_nodes]`` per batch (what
  DGL / PyG do when features live on disk), page cache evicted before the run (the
  features fit this machine's RAM, so later batches find pages earlier ones faulted in:
  "cold start"), and **mmap-evict**: evicted before every batch, as when the page cache is
  much smaller than the features (eviction not timed). First ``--baseline-batches``.

Bytes read are the tier counters for ours / fallback, cross-checked with
``/proc/self/io`` ``read_bytes`` (O_DIRECT reads are counted there), and /proc/self/io
alone for mmap. Ours is also split into segment reads (``preadv``), the numba gather, and
the rest of ``read_batch`` (Python, tier/slot lookups, numpy scatter into the batch).

Prints a table, then one JSON line; writes ``bench/results/ssd_epoch.json`` and a PNG.
``--toy`` runs at test size in seconds.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
MB = 1e6
_REQUEST = 8 << 20

from _common import (TOY_GRAPH, add_graph_args, add_result_args, graph_store,  # noqa: E402
                     result_path, time_calls, write_result)
from pack_speed import drop_pack, ensure_plan, proc_io  # noqa: E402

from oocstore.pack import PackOptions, pack_plan  # noqa: E402
from oocstore.store import ALIGN, Store  # noqa: E402
from oocstore.store.files import DirectReader, aligned_empty, evict  # noqa: E402
from oocstore.tiers import TieredReader  # noqa: E402
from oocstore.tiers import reader as reader_mod  # noqa: E402
from oocstore.tiers import ssd as ssd_mod  # noqa: E402

PACK, FALLBACK = "ssd-epoch", "ssd-epoch-fallback"


def seq_read(path: Path, nbytes: int) -> tuple[float, int]:
    """(seconds, bytes) reading the first ``nbytes`` of ``path`` with O_DIRECT, 8 MiB requests."""
    buf = aligned_empty(_REQUEST)
    with DirectReader(path) as r:
        nbytes = min(nbytes, r.size // ALIGN * ALIGN)
        t0 = time.perf_counter()
        pos = 0
        while pos < nbytes:
            got = r.read_into(buf[:min(_REQUEST, nbytes - pos)], pos)
            if got == 0:
                break
            pos += got
        return time.perf_counter() - t0, pos


class Split:
    """Seconds in segment reads and in the numba row kernel during ``read_batch``: the
    segment tier's gather, or the reader's one-pass ``assemble_rows`` where it has one."""

    def __init__(self) -> None:
        self.read = 0.0
        self.gather = 0.0
        self._saved: list[tuple[object, str, object]] = []

    def _wrap(self, owner, attr: str, field: str) -> None:
        time_calls(owner, attr, lambda dt: setattr(self, field, getattr(self, field) + dt),
                   self._saved)

    def __enter__(self) -> "Split":
        self._wrap(ssd_mod.SegmentTier, "load", "read")
        self._wrap(ssd_mod.SegmentTier, "_gather", "gather")
        if hasattr(reader_mod, "assemble_batch"):  # the kernel, on one or two threads
            self._wrap(reader_mod, "assemble_batch", "gather")
        elif hasattr(reader_mod, "assemble_rows"):
            self._wrap(reader_mod, "assemble_rows", "gather")
        return self

    def __exit__(self, *exc) -> None:
        for owner, attr, fn in reversed(self._saved):
            setattr(owner, attr, fn)
        self._saved.clear()


def run_tiered(store: Store, pack: str, batches: int, files: list[Path], *, split: bool) -> dict:
    """Cold: evict ``files``, then read batches 0..batches-1 of epoch 0 through the tiers."""
    reader = TieredReader(store, pack)
    try:
        out = np.empty((reader.meta.largest_batch_rows, reader.meta.feat_dim),
                       dtype=reader.meta.dtype)
        for f in files:
            evict(f)
        sp = Split() if split else None
        io0 = proc_io()
        if sp:
            sp.__enter__()
        t0 = time.perf_counter()
        rows = 0
        try:
            for b in range(batches):
                n = reader.plan.index_row(0, b)[3]
                reader.read_batch(0, b, out=out[:n])
                rows += int(n)
        finally:
            seconds = time.perf_counter() - t0
            if sp:
                sp.__exit__()
        io1 = proc_io()
        st = reader.stats()
    finally:
        reader.close()
    res = {"seconds": seconds, "batches": batches, "rows": rows, "bytes_read": st["bytes_read"],
           "useful_bytes": st["useful_bytes"], "proc_read_bytes": io1["read_bytes"] - io0["read_bytes"],
           "segment_reads": st["segment_reads"], "direct_io": st["direct_io"]}
    if sp:
        res["split_seconds"] = {"segment reads (preadv)": sp.read,
                                "gather / assemble (numba)": sp.gather,
                                "rest of read_batch": max(0.0, seconds - sp.read - sp.gather)}
    return res


def run_mmap(store: Store, batches: int, row_bytes: int, *, evict_each: bool) -> dict:
    """``np.memmap`` + fancy-index gather per batch; cold start (or evicted every batch)."""
    from oocstore.plan import PlanReader

    plan = PlanReader(store, PACK_PLAN)
    fmeta = store.array_meta("features")
    path = store.file_path(fmeta)
    nodes = [plan.input_nodes(0, b) for b in range(batches)]
    evict(path)
    seconds = 0.0
    read = 0
    rows = 0
    feats = None
    for b in range(batches):
        if feats is None:
            feats = np.memmap(path, dtype=fmeta.np_dtype, mode="r", offset=fmeta.offset,
                              shape=fmeta.shape)
        io0 = proc_io()
        t0 = time.perf_counter()
        x = feats[nodes[b]]
        seconds += time.perf_counter() - t0
        read += proc_io()["read_bytes"] - io0["read_bytes"]
        rows += x.shape[0]
        if evict_each:
            del feats
            feats = None
            gc.collect()
            evict(path)  # not timed: stands for a page cache too small to keep these pages
    del feats
    return {"seconds": seconds, "batches": batches, "rows": rows, "bytes_read": read,
            "useful_bytes": rows * row_bytes, "proc_read_bytes": read}


PACK_PLAN = "ssd-epoch"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_graph_args(p, nodes=2_000_000, feat_dim=128, avg_degree=10.0, fanouts="10,5",
                   batch_size=1024)
    p.add_argument("--batches", type=int, default=64, help="batches in the epoch")
    p.add_argument("--baseline-batches", type=int, default=8,
                   help="batches read by the slow baselines (fallback, mmap)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-disk-blowup", type=float, default=64.0,
                   help="cap for the ours pack (large: every batch packed)")
    p.add_argument("--keep-pack", action="store_true", help="keep the packs (default: drop them)")
    add_result_args(p, "ssd_epoch")
    args = p.parse_args(argv)
    if args.toy:
        vars(args).update(TOY_GRAPH)
        args.batches, args.baseline_batches, args.rounds = 8, 2, 2
    out = result_path(args, "ssd_epoch")
    path, tmp = graph_store(args, "ssdepoch-")
    try:
        with Store(path, readonly=False) as store:
            train = store.split("train")
            seeds = np.random.default_rng(0).permutation(train)[:args.batches * args.batch_size]
            plan_name = PACK_PLAN
            pm = store.get(f"plan/{plan_name}")
            if pm is not None and (pm["num_seeds"] != seeds.size or pm["batch_size"] != args.batch_size
                                   or ",".join(map(str, pm["fanouts"])) != args.fanouts):
                from oocstore.samplers import sample_plan
                sample_plan(store, fanouts=args.fanouts, batch_size=args.batch_size, epochs=1,
                            name=plan_name, seeds=seeds, verify=False, overwrite=True)
            ensure_plan(store, plan_name, fanouts=args.fanouts, batch_size=args.batch_size,
                        epochs=1, seeds=seeds)
            print("packing ...", file=sys.stderr)
            ours_meta = pack_plan(store, plan_name, name=PACK, overwrite=True,
                                  options=PackOptions(cpu_cache=0, max_disk_blowup=args.max_disk_blowup))
            fb_meta = pack_plan(store, plan_name, name=FALLBACK, overwrite=True,
                                options=PackOptions(cpu_cache=0, max_disk_blowup=0))
            store.refresh()
            fmeta = store.array_meta("features")
            fpath = store.file_path(fmeta)
            rows_path = store.file_path(store.array_meta(ours_meta.arrays["rows"]))
            nb = min(args.batches, ours_meta.total_batches)
            nbb = min(args.baseline_batches, nb)
            rb = fmeta.row_bytes
            seq_bytes = int(ours_meta.stats["segment_bytes_read"])
            # warm-up (not timed): numba kernels, thread pools, first-call costs
            run_tiered(store, PACK, 1, [], split=False)
            run_tiered(store, FALLBACK, 1, [], split=False)
            runs: dict[str, list[dict]] = {k: [] for k in ("ours", "fallback", "mmap", "mmap-evict",
                                                           "seq-read")}
            for rnd in range(args.rounds):
                print(f"round {rnd + 1}/{args.rounds} ...", file=sys.stderr)
                runs["ours"].append(run_tiered(store, PACK, nb, [rows_path, fpath], split=True))
                runs["fallback"].append(run_tiered(store, FALLBACK, nbb, [fpath], split=False))
                runs["mmap"].append(run_mmap(store, nbb, rb, evict_each=False))
                runs["mmap-evict"].append(run_mmap(store, nbb, rb, evict_each=True))
                evict(rows_path)
                io0 = proc_io()
                sec, got = seq_read(rows_path, seq_bytes)
                runs["seq-read"].append({"seconds": sec, "batches": 0, "rows": 0, "bytes_read": got,
                                         "useful_bytes": got,
                                         "proc_read_bytes": proc_io()["read_bytes"] - io0["read_bytes"]})
        if not args.keep_pack:
            drop_pack(path, PACK)
            drop_pack(path, FALLBACK)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def med(key, field):
        return statistics.median(r[field] for r in runs[key])

    methods = {}
    for key, rr in runs.items():
        sec = med(key, "seconds")
        m = {"seconds": sec, "seconds_runs": [r["seconds"] for r in rr],
             "batches": rr[0]["batches"], "rows": rr[0]["rows"],
             "bytes_read": med(key, "bytes_read"), "useful_bytes": rr[0]["useful_bytes"],
             "proc_read_bytes": med(key, "proc_read_bytes")}
        m["amplification"] = m["bytes_read"] / m["useful_bytes"] if m["useful_bytes"] else None
        m["bandwidth_MBps"] = m["bytes_read"] / sec / MB
        if m["rows"]:
            m["rows_per_s"] = m["rows"] / sec
            m["epoch_seconds_extrapolated"] = sec * nb / m["batches"]
        if key == "ours":
            m["split_seconds"] = {k: statistics.median(r["split_seconds"][k] for r in rr)
                                  for k in rr[0]["split_seconds"]}
            m["direct_io"] = rr[0]["direct_io"]
            m["segment_reads"] = rr[0]["segment_reads"]
        methods[key] = m
    ratios = [o["bytes_read"] / o["seconds"] / (s["bytes_read"] / s["seconds"])
              for o, s in zip(runs["ours"], runs["seq-read"])]
    ours, seq = methods["ours"], methods["seq-read"]
    res = {
        "bench": "ssd_epoch", "toy": args.toy, "nodes": fmeta.shape[0], "feat_dim": fmeta.shape[1],
        "row_bytes": rb, "fanouts": args.fanouts, "batch_size": args.batch_size,
        "epoch_batches": nb, "baseline_batches": nbb, "rounds": args.rounds,
        "cache": "cold (rows file + features evicted before each run; O_DIRECT)",
        "pack": {"segment_batches": ours_meta.segment_batches, "blowup": ours_meta.blowup,
                 "num_segments": ours_meta.num_segments, "packed_rows": ours_meta.packed_rows,
                 "expected_read_amplification": ours_meta.expected_read_amplification},
        "fallback_pack": {"packed_batches": fb_meta.packed_batches,
                          "expected_read_amplification": fb_meta.expected_read_amplification},
        "methods": methods,
        "amplification": ours["amplification"], "target_amplification": 1.05,
        "ours_MBps": ours["bandwidth_MBps"], "seq_read_MBps": seq["bandwidth_MBps"],
        "ratio_to_seq_read": statistics.median(ratios), "ratio_to_seq_read_runs": ratios,
        "target_ratio": 0.7,
        "proc_io_over_counted": ours["proc_read_bytes"] / ours["bytes_read"] if ours["bytes_read"] else None,
        "speedup_vs_fallback_per_row": ours["rows_per_s"] / methods["fallback"]["rows_per_s"],
        "speedup_vs_mmap_per_row": ours["rows_per_s"] / methods["mmap"]["rows_per_s"],
        "speedup_vs_mmap_evict_per_row": ours["rows_per_s"] / methods["mmap-evict"]["rows_per_s"],
    }
    res["amplification_target_met"] = res["amplification"] <= 1.05
    res["bandwidth_target_met"] = res["ratio_to_seq_read"] >= 0.7
    print(f"one epoch, {nb} batches of {args.batch_size} seeds (fanouts {args.fanouts}) over "
          f"{fmeta.shape[0]:,} nodes x {fmeta.shape[1]} f32; cold, O_DIRECT="
          f"{ours['direct_io']}; medians of {args.rounds} interleaved rounds")
    print(f"  pack: {ours_meta.num_segments} segments of {ours_meta.segment_batches} batch(es), "
          f"blowup {ours_meta.blowup:.2f} (fallback pack: {fb_meta.packed_batches} batches packed)")
    print(f"  {'method':<11} {'batches':>7} {'seconds':>8} {'M rows/s':>9} {'MB read':>9} "
          f"{'/proc MB':>9} {'amplif.':>8} {'MB/s':>7} {'epoch s (extrap.)':>18}")
    for key, m in methods.items():
        rps = f"{m['rows_per_s'] / 1e6:9.3f}" if m.get("rows_per_s") else f"{'-':>9}"
        amp = f"{m['amplification']:8.3f}" if m["rows"] else f"{'-':>8}"
        ep = f"{m['epoch_seconds_extrapolated']:18.1f}" if m.get("rows") else f"{'-':>18}"
        print(f"  {key:<11} {m['batches']:7d} {m['seconds']:8.2f} {rps} {m['bytes_read'] / MB:9.1f} "
              f"{m['proc_read_bytes'] / MB:9.1f} {amp} {m['bandwidth_MBps']:7.0f} {ep}")
    print(f"  ours: amplification {res['amplification']:.4f} (target <= 1.05: "
          f"{'met' if res['amplification_target_met'] else 'NOT met'}); bandwidth "
          f"{ours['bandwidth_MBps']:.0f} MB/s = {res['ratio_to_seq_read']:.2f} x sequential O_DIRECT "
          f"read of the same size (target >= 0.7: {'met' if res['bandwidth_target_met'] else 'NOT met'}); "
          f"/proc/self/io / counted = {res['proc_io_over_counted']:.3f}")
    sp = ours["split_seconds"]
    print("  ours, where the time goes: " + ", ".join(
        f"{k} {v:.2f} s ({100 * v / ours['seconds']:.0f} %)" for k, v in sp.items()))
    print(f"  per row, ours is {res['speedup_vs_fallback_per_row']:.1f}x the base-row fallback, "
          f"{res['speedup_vs_mmap_per_row']:.1f}x mmap (cold start), "
          f"{res['speedup_vs_mmap_evict_per_row']:.1f}x mmap evicted every batch")
    write_result(res, out, lambda png: plot(res, png))
    return res


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = res["methods"]
    keys = [k for k in ("ours", "fallback", "mmap", "mmap-evict") if ms[k].get("rows_per_s")]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.bar(keys, [ms[k]["rows_per_s"] / 1e6 for k in keys])
    a1.set_yscale("log")
    a1.set_ylabel("M rows/s (cold)")
    a1.set_title("rows delivered per second", fontsize=9)
    a2.bar(keys, [ms[k]["amplification"] for k in keys])
    a2.set_yscale("log")
    a2.set_ylabel("bytes read / useful bytes")
    a2.set_title(f"read amplification; ours {res['ratio_to_seq_read']:.2f}x seq O_DIRECT read",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
