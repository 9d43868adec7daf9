"""Peak memory of ``oocstore ingest synthetic`` against the size of the features it writes.

Ingest streams features block by block (16 MiB blocks), so its peak RSS should stay near
a fixed overhead (interpreter + numpy + lmdb, measured here as the baseline) plus a few
blocks, however large the features are. The topology is built in memory (~24 B per
stored edge), so the average degree is kept small: the features dominate.

Peak RSS is the child's ``ru_maxrss``, read by a fresh intermediate process so that no
other child is counted. Page cache holding the written file is not RSS.

    python bench/ingest_memory.py                     # 1M x 1024: ~3.8 GiB of features
    python bench/ingest_memory.py --nodes 300000 --feat-dim 256   # ~300 MB

Per-node and per-edge arrays (labels, R-MAT edges, CSC construction, splits) are held
in memory too; they grow with the node count, not the feature size (4M nodes at
avg degree 2 peak near 760 MiB), so the default keeps nodes moderate and rows wide.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_MEASURE = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:])\n"
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
)

#: What the ingest command imports before it does any work (the fixed overhead).
BASELINE_CODE = ("import numpy, lmdb, tqdm, oocstore.cli, oocstore.ingest.synthetic, "
                 "oocstore.store.info")


def peak_rss(argv: list[str]) -> tuple[int, int]:
    """Run ``argv`` as the only child of a fresh process; return (exit code, peak RSS bytes)."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True,
                         check=True)
    code, rss = out.stdout.split()[-2:]
    return int(code), int(rss)


def baseline_rss() -> int:
    return peak_rss([sys.executable, "-c", BASELINE_CODE])[1]


def ingest_peak(out: Path, *, nodes: int, feat_dim: int, avg_degree: float) -> dict:
    argv = [sys.executable, "-m", "oocstore", "ingest", "synthetic", str(out), "--nodes",
            str(nodes), "--feat-dim", str(feat_dim), "--avg-degree", str(avg_degree), "--quiet",
            "--overwrite"]
    t0 = time.perf_counter()
    code, rss = peak_rss(argv)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"ingest failed with exit code {code}")
    base = baseline_rss()
    feature_bytes = nodes * feat_dim * 4
    return {"bench": "ingest_memory", "nodes": nodes, "feat_dim": feat_dim,
            "avg_degree": avg_degree, "feature_bytes": feature_bytes, "peak_rss": rss,
            "baseline_rss": base, "above_baseline": rss - base,
            "peak_over_features": rss / feature_bytes, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--feat-dim", type=int, default=1024)
    ap.add_argument("--avg-degree", type=float, default=2.0)
    ap.add_argument("--dir", default=None, help="where to write the store (default: a temp dir)")
    args = ap.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="oocstore-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        r = ingest_peak(root / "store", nodes=args.nodes, feat_dim=args.feat_dim,
                        avg_degree=args.avg_degree)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    mib = 1 << 20
    print(f"features {r['feature_bytes'] / mib:,.0f} MiB ({args.nodes:,} x {args.feat_dim} f32, "
          f"avg degree {args.avg_degree}), ingest {r['seconds']:.1f} s")
    print(f"peak RSS {r['peak_rss'] / mib:,.0f} MiB = {r['peak_over_features']:.3f} x the features; "
          f"baseline (imports only) {r['baseline_rss'] / mib:,.0f} MiB, "
          f"above baseline {r['above_baseline'] / mib:,.0f} MiB")
    print(json.dumps(r, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
