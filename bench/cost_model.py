"""Cost model check: predicted vs measured epoch load time, and static vs Belady tiers.

For several pack layouts of one plan (CPU tier sizes, static or Belady-scheduled CPU
tier, a blowup cap that forces base-array fallback, and the automatic split inside a
CPU budget), the script predicts the time to load every batch of epoch 0 from
bandwidths probed on this disk in the same run, then measures it cold (pack and
feature files evicted from the page cache, O_DIRECT reads) through ``TieredReader``.
Configurations are interleaved over rounds; medians are reported.

The sequential probe must read data in the state the measured packs are in. This
(virtual) disk's read speed drifts within minutes and depends on the data's history (the
same new file read at 0.5 GB/s or at 1.3 GB/s a minute apart; a file read a few times
recently comes from a host-side cache). So the script packs one more layout, not
measured, first of all (``probe``, like ``static-0%``); the probe reads its rows file
once before the automatic split is chosen (those bandwidths pick it) and again at the
start of every round, beside the measurements; the predictions use the median of the
rounds' probes. ``--probe-file`` reads a given file instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oocstore import Store  # noqa: E402
from oocstore.ingest import build_store  # noqa: E402
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source  # noqa: E402
from oocstore.pack import PackOptions, pack_plan  # noqa: E402
from oocstore.pack.costmodel import (Bandwidths, choose_split, predict_epoch,  # noqa: E402
                                     probe)
from oocstore.pack.packer import plan_layout  # noqa: E402
from oocstore.plan import PlanReader  # noqa: E402
from oocstore.store.files import evict  # noqa: E402
from oocstore.tiers import TieredReader  # noqa: E402
from oocstore.samplers import sample_plan  # noqa: E402


def measure(store: Store, name: str) -> tuple[float, dict]:
    meta = store.get(f"pack/{name}")
    for arr in ("features", meta["arrays"]["rows"], meta["arrays"]["cpu_rows"]):
        evict(store.file_path(store.array_meta(arr)))
    with TieredReader(store, name) as reader:
        t0 = time.perf_counter()
        for b in range(reader.num_batches(0)):
            reader.read_batch(0, b)
        return time.perf_counter() - t0, reader.stats()


def show(what: str, bw: Bandwidths, probe_file: Path) -> None:
    print(f"{what}: seq read {bw.seq_read_Bps / 1e6:.0f} MB/s ({probe_file.name}), request "
          f"{bw.request_s * 1e3:.2f} ms, row reads {bw.row_read_Bps / 1e6:.0f} MB/s, assembly "
          f"{bw.gather_rows_per_s / 1e6:.1f} M rows/s, crc32 {bw.crc_Bps / 1e9:.1f} GB/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200_000)
    ap.add_argument("--feat-dim", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--toy", action="store_true", help="tiny sizes, for the test suite")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--probe-file", default=None,
                    help="file for the sequential probe (default: the rows of a pack made "
                         "for the probe, written like the measured ones)")
    ap.add_argument("--out", default=None, help="results JSON path (default bench/results/"
                                                "cost_model.json; none with --toy)")
    args = ap.parse_args()
    if args.toy:
        args.nodes, args.feat_dim, args.rounds = 20_000, 32, 1
    work = Path(args.dir or tempfile.mkdtemp(prefix="costmodel-", dir=REPO / "bench" / "data"
                                             if (REPO / "bench" / "data").is_dir() else None))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"cm-{args.nodes}-{args.feat_dim}"
    if not path.exists():
        build_store(path, synthetic_source(SyntheticSpec(nodes=args.nodes, feat_dim=args.feat_dim,
                                                         avg_degree=10)))
    store = Store(path, readonly=False)
    if store.get("plan/cm") is None:
        sample_plan(store, fanouts="5,5", batch_size=1024, epochs=1, seed=0, name="cm")
    plan = PlanReader(store, "cm")
    fbytes = store.array_meta("features").nbytes
    frac = lambda f: int(f * fbytes)  # noqa: E731
    configs = {
        "static-0%": PackOptions(cpu_cache=0, max_disk_blowup=16),
        "static-10%": PackOptions(cpu_cache=frac(0.10), max_disk_blowup=16),
        "belady-10%": PackOptions(cpu_cache=frac(0.10), max_disk_blowup=16, policy="belady"),
        "static-25%": PackOptions(cpu_cache=frac(0.25), max_disk_blowup=16),
        "belady-25%": PackOptions(cpu_cache=frac(0.25), max_disk_blowup=16, policy="belady"),
        "static-10%-cap1": PackOptions(cpu_cache=frac(0.10), max_disk_blowup=1.0),
    }
    probe_pack = pack_plan(store, "cm", name="probe", options=configs["static-0%"],
                           overwrite=True)
    for name, opts in configs.items():
        pack_plan(store, "cm", name=name.replace("%", "pct"), options=opts, overwrite=True)
    probe_file = Path(args.probe_file) if args.probe_file else \
        store.file_path(store.array_meta(probe_pack.arrays["rows"]))
    bw0 = probe(store, seq_path=probe_file)
    show("probed before packing the automatic split", bw0, probe_file)
    # Budget: the working set of an uncached pack plus a quarter of the features.
    floor = plan_layout(store, plan, configs["static-0%"]).min_working_set["cpu"]
    auto, _, _ = choose_split(store, plan, cpu_budget=floor + frac(0.25), max_disk_blowup=16,
                              bw=bw0)
    configs["auto-budget"] = auto
    pack_plan(store, "cm", name="auto-budget", options=auto, overwrite=True)
    times: dict[str, list[float]] = {n: [] for n in configs}
    stats, probes = {}, []
    for _ in range(args.rounds):
        # This disk's speed drifts within minutes: the probe runs again at the start of
        # every round, beside the measurements it predicts; its median is used.
        probes.append(probe(store, seq_path=probe_file))
        for name in configs:
            t, st = measure(store, name.replace("%", "pct"))
            times[name].append(t)
            stats[name] = st
    bw = Bandwidths(**{k: statistics.median(getattr(b, k) for b in probes)
                       for k in bw0.to_dict()})
    show(f"probed in each round (median of {len(probes)})", bw, probe_file)
    preds = {name: predict_epoch(plan_layout(store, plan, opts), bw)
             for name, opts in configs.items()}
    rows = []
    print(f"\n{'layout':<18}{'predicted s':>12}{'measured s':>12}{'pred/meas':>10}"
          f"{'cpu hit':>9}{'SSD MB':>9}{'amp':>7}")
    for name in configs:
        meas = statistics.median(times[name])
        pred = preds[name]["seconds"]
        st = stats[name]
        rows.append({"layout": name, "predicted_s": pred, "measured_s": meas,
                     "ratio": pred / meas if meas else None, "measured_runs": times[name],
                     "cpu_hit_rate": st["hit_rate"]["cpu"], "bytes_read": st["bytes_read"],
                     "read_amplification": st["read_amplification"],
                     "prediction": preds[name], "cpu_cache": configs[name].cpu_cache,
                     "policy": configs[name].policy})
        print(f"{name:<18}{pred:>12.2f}{meas:>12.2f}{pred / meas:>10.2f}"
              f"{st['hit_rate']['cpu']:>9.3f}{st['bytes_read'] / 1e6:>9.0f}"
              f"{st['read_amplification']:>7.3f}")
    within = [r for r in rows if r["ratio"] and 0.7 <= r["ratio"] <= 1.3]
    print(f"\n{len(within)}/{len(rows)} layouts predicted within +-30 % of measured (cold, "
          "O_DIRECT, epoch 0)")
    result = {"bench": "cost_model", "nodes": args.nodes, "feat_dim": args.feat_dim,
              "feature_bytes": fbytes, "bandwidths": bw.to_dict(), "rows": rows,
              "bandwidths_rounds": [b.to_dict() for b in probes],
              "bandwidths_before_auto_split": bw0.to_dict(),
              "within_30pct": len(within), "toy": args.toy,
              "probe_file": str(probe_file)}
    print(json.dumps(result, sort_keys=True, default=float))
    out = args.out or (None if args.toy else str(REPO / "bench" / "results" / "cost_model.json"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1, sort_keys=True, default=float))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
