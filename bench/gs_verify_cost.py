"""Cost of verifying scene block checksums on read: every block of a scene read with
``Scene.read_block`` with ``verify_reads`` on vs off, same scene, same run (alternating
passes, warm-up excluded, median of repeats).

Only reads: no rendering or optimizer work hides the CRC, so this is the worst case for
a training run (``gs-train`` reads a block from SSD only on a miss of the device and CPU
tiers). Reads use O_DIRECT; where the filesystem refuses it, the block files are dropped
from the page cache before each pass. Prints the ratio, one JSON line, and writes
``bench/results/gs_verify_cost.json`` and a PNG.

    python bench/gs_verify_cost.py              # 400k Gaussians, SH degree 3 (286 MB)
    python bench/gs_verify_cost.py --toy        # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402

from _common import add_on_off_args, machine_info, on_off_runs, work_dir, write_on_off  # noqa: E402

from oocstore.gs.scene import Scene  # noqa: E402
from oocstore.gs.synthetic import random_scene  # noqa: E402
from oocstore.store.files import evict  # noqa: E402


def one_pass(path: Path, verify: bool) -> dict:
    with Scene.open(path, readonly=True, verify_reads=verify) as scene:
        if not _direct_ok(scene):  # buffered reads: start from a cold page cache
            for rel in scene._files:
                if rel is not None:
                    evict(path / rel)
        t0 = time.perf_counter()
        rows = 0
        for b in range(scene.num_blocks):
            ids, _ = scene.read_block(b)
            rows += len(ids)
        seconds = time.perf_counter() - t0
        nbytes = rows * scene.disk_row_bytes
    return {"seconds": seconds, "bytes": nbytes, "rows": rows}


def _direct_ok(scene: Scene) -> bool:
    from oocstore.store.files import DirectReader

    rel = next((f for f in scene._files if f is not None), None)
    if rel is None:
        return True
    with DirectReader(scene.path / rel) as r:
        return r.direct


def crc_rate(nbytes: int = 64 << 20) -> float:
    """CRC-32 throughput of this machine (bytes/s, one core, median of 3)."""
    buf = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        zlib.crc32(memoryview(buf))
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaussians", type=int, default=400_000)
    ap.add_argument("--sh-degree", type=int, default=3)
    ap.add_argument("--block-size", type=int, default=4096)
    add_on_off_args(ap, "gs_verify_cost", keeps="scene")
    args = ap.parse_args()
    if args.toy:
        args.gaussians, args.sh_degree, args.block_size, args.repeats = 4000, 1, 512, 3
    root = work_dir(args.dir)
    path = root / f"gsverify-{args.gaussians}-{args.sh_degree}-{args.block_size}"
    if not path.exists():
        random_scene(path, args.gaussians, args.sh_degree, block_size=args.block_size,
                     views=4).close()
    runs, med = on_off_runs(lambda verify: one_pass(path, verify), args.repeats)
    nbytes = runs["on"][0]["bytes"]
    with Scene.open(path, readonly=True) as scene:
        blocks, direct = scene.num_blocks, _direct_ok(scene)
    res = {"bench": "gs_verify_cost", "toy": args.toy, "gaussians": args.gaussians,
           "sh_degree": args.sh_degree, "block_size": args.block_size, "blocks": blocks,
           "repeats": args.repeats, "bytes_read": nbytes, "direct_io": direct,
           "read_s_verify_on": med["on"], "read_s_verify_off": med["off"],
           "overhead": med["on"] / med["off"] - 1 if med["off"] else 0.0,
           "read_gbps_verify_off": nbytes / med["off"] / 1e9 if med["off"] else 0.0,
           "crc32_gbps": crc_rate(8 << 20 if args.toy else 64 << 20) / 1e9,
           "machine": machine_info(root)}
    print(f"read every block ({nbytes / 1e6:.0f} MB, {blocks} blocks): verify on "
          f"{med['on']:.3f} s, off {med['off']:.3f} s -> overhead {res['overhead']:+.1%} "
          f"(CRC-32 {res['crc32_gbps']:.2f} GB/s per core, O_DIRECT {direct})")
    write_on_off(res, Path(args.out), med["off"], med["on"], ylabel="read every block (s)",
                 title=f"scene checksums on read: {res['overhead']:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
