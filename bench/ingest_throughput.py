"""Ingest throughput of ``oocstore ingest synthetic`` against the disk's own write speed.

In one run, on the same filesystem:

1. the disk's sequential write speed: a file as large as the features, written from one
   random 8 MiB buffer in 8 MiB requests, then fsync'd (timed) and deleted; measured
   before and after the ingest, the median reported (the disk is noisy);
2. ``python -m oocstore ingest synthetic`` (the real CLI, in a subprocess) timed with
   its peak RSS; MB/s over the feature bytes and over all bytes it wrote;
3. where ingest time goes: the same ingest run in-process under cProfile, split into
   R-MAT generation, CSC construction (out of core: spill, then sort per range), feature generation,
   feature checks/conversion, checksums, writes and fsyncs.

Prints a summary, then one JSON line. ``--toy`` runs it at test size in seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from oocstore.store.probe import write_speed as disk_write_speed  # noqa: E402
MB = 1e6

_MEASURE = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:])\n"
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
)


def run_cli_ingest(out: Path, spec: dict) -> dict:
    argv = [sys.executable, "-m", "oocstore", "ingest", "synthetic", str(out), "--quiet",
            "--overwrite", "--nodes", str(spec["nodes"]), "--feat-dim", str(spec["feat_dim"]),
            "--avg-degree", str(spec["avg_degree"]), "--seed", "0"]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True,
                       cwd=REPO)
    seconds = time.perf_counter() - t0
    if r.returncode != 0 or r.stdout.split()[-2] != "0":
        raise SystemExit(f"ingest failed: {r.stderr.strip()}")
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"seconds": seconds, "peak_rss": int(r.stdout.split()[-1]), "bytes_written": written}


#: cProfile entries (part of the file name, function) -> stage, read as cumulative time.
_CUMULATIVE = {
    ("synthetic.py", "synthetic_labels"): "labels",
    ("synthetic.py", "rmat_edge_blocks"): "rmat_edges",
    # the out-of-core CSC build consumes the edge blocks: its time includes drawing them
    ("csc.py", "write_csc_streaming"): "build_csc (incl. rmat_edges)",
    ("csc.py", "_emit"): "build_csc: sort + de-duplicate ranges",
    ("synthetic.py", "synthetic_features"): "feature generation",
    ("common.py", "random_splits"): "splits",
    # the one CRC-32 entry point (ISA-L or zlib underneath)
    ("store/files.py", "checksum"): "checksums (crc32)",
}
#: ... and these as their own (self) time.
_SELF = {
    ("common.py", "_write_features"): "feature checks + conversion",
    ("~", "<method 'write' of '_io.FileIO' objects>"): "file writes",
    ("~", "<built-in method posix.fsync>"): "fsync",
}


def profile_ingest(out: Path, spec: dict) -> tuple[float, dict[str, float]]:
    """Run the ingest in-process under cProfile; return (total s, seconds per stage)."""
    from oocstore.ingest import build_store
    from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    s = SyntheticSpec(nodes=spec["nodes"], feat_dim=spec["feat_dim"],
                      avg_degree=spec["avg_degree"], seed=0)
    build_store(out, synthetic_source(s), overwrite=True)
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    stages: dict[str, float] = {}
    for (file, _line, func), (_cc, _nc, tt, ct, _callers) in stats.items():
        for table, value in ((_CUMULATIVE, ct), (_SELF, tt)):
            for (suffix, name), stage in table.items():
                if func == name and suffix in file:
                    stages[stage] = stages.get(stage, 0.0) + value
    return total, stages


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3_000_000)
    ap.add_argument("--feat-dim", type=int, default=128)
    ap.add_argument("--avg-degree", type=float, default=8.0)
    ap.add_argument("--toy", action="store_true", help="tiny sizes, for the test suite")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile breakdown")
    ap.add_argument("--dir", default=None,
                    help="directory on the disk to measure (default: a temp dir under bench/data)")
    args = ap.parse_args()
    spec = {"nodes": args.nodes, "feat_dim": args.feat_dim, "avg_degree": args.avg_degree}
    if args.toy:
        spec = {"nodes": 20_000, "feat_dim": 32, "avg_degree": 4.0}
    feature_bytes = spec["nodes"] * spec["feat_dim"] * 4

    base = Path(args.dir) if args.dir else REPO / "bench" / "data"
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ingest-", dir=base))
    try:
        disk = [disk_write_speed(root, feature_bytes)]
        ingest = run_cli_ingest(root / "store", spec)
        disk.append(disk_write_speed(root, feature_bytes))
        shutil.rmtree(root / "store")
        stages: dict[str, float] = {}
        profiled = None
        if not args.no_profile:
            profiled, stages = profile_ingest(root / "store", spec)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    disk_bps = statistics.median(disk)
    feat_bps = feature_bytes / ingest["seconds"]
    all_bps = ingest["bytes_written"] / ingest["seconds"]
    result = {
        "bench": "ingest_throughput", "toy": args.toy, **spec, "feature_bytes": feature_bytes,
        "bytes_written": ingest["bytes_written"], "ingest_seconds": ingest["seconds"],
        "ingest_feature_MBps": feat_bps / MB, "ingest_total_MBps": all_bps / MB,
        "disk_write_MBps": disk_bps / MB, "disk_write_MBps_runs": [d / MB for d in disk],
        "ratio_to_disk": all_bps / disk_bps, "peak_rss": ingest["peak_rss"],
        "profiled_seconds": profiled, "stages_seconds": stages,
    }
    print(f"ingest synthetic {spec['nodes']:,} nodes x {spec['feat_dim']} f32, avg degree "
          f"{spec['avg_degree']:g}: {feature_bytes / MB:,.0f} MB of features, "
          f"{ingest['bytes_written'] / MB:,.0f} MB written in {ingest['seconds']:.1f} s (CLI, cold start)")
    print(f"  ingest   {feat_bps / MB:8.0f} MB/s of features, {all_bps / MB:.0f} MB/s of all bytes written")
    print(f"  disk     {disk_bps / MB:8.0f} MB/s sequential write + fsync (median of "
          f"{', '.join(f'{d / MB:.0f}' for d in disk)})")
    print(f"  ratio    {all_bps / disk_bps:8.2f} x the disk's write speed")
    print(f"  peak RSS {ingest['peak_rss'] / (1 << 20):8.0f} MiB "
          f"({ingest['peak_rss'] / feature_bytes:.3f} x the features)")
    if stages:
        print(f"  where the time goes (in-process, cProfile, {profiled:.1f} s in all):")
        for stage, sec in sorted(stages.items(), key=lambda kv: -kv[1]):
            print(f"    {stage:<30} {sec:7.2f} s  {100 * sec / profiled:5.1f} %")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
