"""Cost of verifying checksums on read: one epoch loaded through the SSD tier with
``TieredReader(..., verify_reads=True)`` vs ``verify_reads=False``, same store, same
pack, same run (alternating, warm-up excluded, median of repeats).

The pack has no CPU or GPU tier, so every row of every batch comes from packed
segments read with O_DIRECT: the worst case for verification (nothing served from
memory hides the CRC work). Prints the ratio, one JSON line, and writes
``bench/results/verify_cost.json`` and a PNG.

    python bench/verify_cost.py                 # ~1 GiB of features
    python bench/verify_cost.py --toy           # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _common import add_on_off_args, machine_info, on_off_runs, work_dir, write_on_off  # noqa: E402
from pack_speed import ensure_plan, make_store  # noqa: E402

from oocstore import Store  # noqa: E402
from oocstore.pack import PackOptions, pack_plan  # noqa: E402
from oocstore.tiers import TieredReader  # noqa: E402


def epoch(store: Store, pack: str, verify: bool) -> dict:
    t0 = time.perf_counter()
    with TieredReader(store, pack, verify_reads=verify) as r:
        t_open = time.perf_counter() - t0
        t1 = time.perf_counter()
        for b in range(r.num_batches(0)):
            r.read_batch(0, b)
        t_epoch = time.perf_counter() - t1
        st = r.stats()
        extra = r.segments.verify_bytes
    return {"seconds": t_epoch, "open_seconds": t_open, "bytes_read": st["bytes_read"],
            "verify_extra_bytes": extra, "direct_io": st["direct_io"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2_000_000)
    ap.add_argument("--feat-dim", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=1024)
    add_on_off_args(ap, "verify_cost", keeps="store")
    args = ap.parse_args()
    if args.toy:
        args.nodes, args.feat_dim, args.batch_size, args.repeats = 20_000, 32, 256, 3
    root = work_dir(args.dir)
    path = make_store(root / f"verify-{args.nodes}-{args.feat_dim}", nodes=args.nodes,
                      feat_dim=args.feat_dim, avg_degree=8)
    with Store(path, readonly=False) as store:
        ensure_plan(store, "vc", fanouts="10,5", batch_size=args.batch_size, epochs=1)
        if store.get("pack/vc") is None:
            pack_plan(store, "vc", name="vc", options=PackOptions(cpu_cache=0, gpu_cache=0,
                                                                  max_disk_blowup=16))
    with Store(path) as store:
        # the warm-up loads the imports, numba's kernels and the plan's index
        runs, med = on_off_runs(lambda verify: epoch(store, "vc", verify), args.repeats)
    on, off = runs["on"][0], runs["off"][0]
    res = {"bench": "verify_cost", "toy": args.toy, "nodes": args.nodes,
           "feat_dim": args.feat_dim, "batch_size": args.batch_size, "repeats": args.repeats,
           "epoch_s_verify_on": med["on"], "epoch_s_verify_off": med["off"],
           "overhead": med["on"] / med["off"] - 1 if med["off"] else 0.0,
           "bytes_read": off["bytes_read"], "verify_extra_bytes": on["verify_extra_bytes"],
           "extra_read_fraction": on["verify_extra_bytes"] / max(1, off["bytes_read"]),
           "direct_io": off["direct_io"], "machine": machine_info(root)}
    print(f"epoch load: verify on {med['on']:.3f} s, off {med['off']:.3f} s -> overhead "
          f"{res['overhead']:+.1%}; extra bytes read to complete boundary chunks "
          f"{res['extra_read_fraction']:.1%} (O_DIRECT {res['direct_io']})")
    write_on_off(res, Path(args.out), med["off"], med["on"], ylabel="epoch load time (s)",
                 title=f"checksums on read: {res['overhead']:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
