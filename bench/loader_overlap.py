"""What pipelining buys: consumer wait time with prefetch on vs off, real GraphSAGE compute.

One store, plan and pack; each round trains one epoch of GraphSAGE (PyG SAGEConv) through
``NodeLoader`` with ``prefetch=0`` (reads in the training thread) and with the default
prefetch depth, cold (pack files evicted before each run), interleaved, medians. Reports
epoch time and the share of it the training loop waited for data (target with prefetch:
<= 5 % when compute per batch exceeds I/O per batch).

    python bench/loader_overlap.py            # 300k nodes x 128 f32
    python bench/loader_overlap.py --toy      # seconds, for the test suite
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

import torch  # noqa: E402

from oocstore import Store  # noqa: E402
from oocstore.ingest import build_store  # noqa: E402
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source  # noqa: E402
from oocstore.loader import NodeLoader  # noqa: E402
from oocstore.pack import PackOptions, pack_plan  # noqa: E402
from oocstore.store.files import evict  # noqa: E402
from oocstore.train.loop import train_epoch  # noqa: E402
from oocstore.train.model import GraphSAGE  # noqa: E402
from oocstore.samplers import sample_plan  # noqa: E402


def one_epoch(store: Store, prefetch: int | None, hidden: int) -> dict:
    meta = store.get("pack/ov")
    for arr in ("features", meta["arrays"]["rows"], meta["arrays"]["cpu_rows"]):
        evict(store.file_path(store.array_meta(arr)))
    torch.manual_seed(0)
    fm = store.array_meta("features")
    model = GraphSAGE(fm.shape[1], hidden, 8, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    with NodeLoader(store, "ov", pack="ov", prefetch=prefetch) as loader:
        t0 = time.perf_counter()
        train_epoch(model, opt, ((b.sample, b.x, b.y) for b in loader), "cpu")
        seconds = time.perf_counter() - t0
        st = loader.stats()
    wait = st["epochs"][-1]["wait_s"]
    return {"seconds": seconds, "wait_s": wait, "wait_share": wait / seconds,
            "prefetch": st["prefetch"], "bytes_read": st["bytes_read"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=300_000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--toy", action="store_true")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.toy:
        args.nodes, args.hidden, args.rounds = 5000, 32, 1
    work = Path(args.dir or tempfile.mkdtemp(prefix="overlap-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"ov-{args.nodes}"
    if not path.exists():
        build_store(path, synthetic_source(SyntheticSpec(nodes=args.nodes, avg_degree=10)))
    store = Store(path, readonly=False)
    if store.get("plan/ov") is None:
        sample_plan(store, fanouts="10,5", batch_size=1024, epochs=1, seed=0, name="ov")
        pack_plan(store, "ov", name="ov", options=PackOptions(
            cpu_cache=store.array_meta("features").nbytes // 10, max_disk_blowup=32))
    runs = {"prefetch off": [], "prefetch on": []}
    for _ in range(args.rounds):
        runs["prefetch off"].append(one_epoch(store, 0, args.hidden))
        runs["prefetch on"].append(one_epoch(store, None, args.hidden))
    print(f"{'mode':<14}{'epoch s':>9}{'waited s':>10}{'wait share':>12}{'depth':>7}")
    summary = {}
    for mode, rs in runs.items():
        sec = statistics.median(r["seconds"] for r in rs)
        wait = statistics.median(r["wait_s"] for r in rs)
        summary[mode] = {"seconds": sec, "wait_s": wait, "wait_share": wait / sec,
                         "prefetch": rs[0]["prefetch"], "runs": rs}
        print(f"{mode:<14}{sec:>9.2f}{wait:>10.2f}{wait / sec:>12.1%}{rs[0]['prefetch']:>7}")
    result = {"bench": "loader_overlap", "nodes": args.nodes, "hidden": args.hidden,
              "toy": args.toy, "modes": summary,
              "speedup": summary["prefetch off"]["seconds"] / summary["prefetch on"]["seconds"]}
    print(json.dumps(result, sort_keys=True, default=float))
    out = args.out or (None if args.toy else str(REPO / "bench" / "results" / "loader_overlap.json"))
    if out:
        Path(out).write_text(json.dumps(result, indent=1, sort_keys=True, default=float))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
