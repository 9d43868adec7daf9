"""GPU check of the GNN loader's CUDA path: exact batches, device memory, overlap, H2D.

On a generated store (``SyntheticSpec``: 300 k nodes x 128 float32 by default, R-MAT
graph, the project's own generator), one plan (fanouts 10,5, batch 1024, 2 epochs) and
one pack with a GPU cache and a CPU cache (a tenth of the features each), then on the
CUDA device:

1. **exact** — every batch of one epoch, with the default prefetch depth and with
   ``prefetch=0``, equals ``features[input_nodes]`` / ``labels[seeds]`` read on the host
   (the CPU oracle);
2. **memory** — ``torch.cuda.max_memory_allocated()`` over those epochs (nothing else on
   the device) against what the loader charged to the GPU budget, and the same under a
   GPU budget of exactly the depth-1 charges;
3. **stream order** — a consumer whose stream lags far behind (``torch.cuda._sleep``
   before each use) and drops each batch at once still reads exactly the right rows;
4. **overlap** — epoch time of a real GraphSAGE step (PyG SAGEConv, hidden 256) on the
   device, fed by the loader with the default prefetch vs ``prefetch=0``, and fed from a
   copy of all features on the device (the ceiling); the share of the epoch the training
   loop waited for data. Warm-up epoch excluded, medians of ``--rounds``;
5. **h2d** — bandwidth of copies of the largest batch (and of 64 MiB) from the
   ``cudaHostRegister``-ed staging ring, from torch's pinned allocator, and from pageable
   memory; medians of 10.

Writes the result (naming the card) to ``--out`` — default ``$OUT/gpu_loader_check.json``
when ``OUT`` is set, else ``bench/results/gpu_loader_check.json`` — after every part, so
a run cut short still leaves what it measured; prints the path. ``--json`` prints the
result as one JSON line last. Exit status 1 if a check failed (a mismatch, a peak above
the charges, a part that raised).

Without CUDA it says so and exits 0, unless ``--toy``: a few-thousand-node store in
seconds, on CUDA when there is one and otherwise on the CPU (parts 1 and 4 only), which
is what the test suite runs so the script cannot rot.

    python bench/gpu_loader_check.py --json          # on the GPU machine (about a minute)
    python bench/gpu_loader_check.py --toy --json    # anywhere, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

from _common import add_graph_args  # noqa: E402

from oocstore import Store  # noqa: E402
from oocstore.budget import MemoryBudget  # noqa: E402
from oocstore.ingest import build_store  # noqa: E402
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source  # noqa: E402
from oocstore.loader import NodeLoader  # noqa: E402
from oocstore.pack import PackOptions, pack_plan  # noqa: E402
from oocstore.samplers import sample_plan  # noqa: E402

PLAN, PACK = "gpucheck", "gpucheck"


def build(work: Path, args) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"gpucheck-{args.nodes}x{args.feat_dim}"
    if not path.exists():
        build_store(path, synthetic_source(SyntheticSpec(nodes=args.nodes, feat_dim=args.feat_dim,
                                                         avg_degree=args.avg_degree)))
    with Store(path, readonly=False) as store:
        if store.get(f"plan/{PLAN}") is None:
            sample_plan(store, fanouts=args.fanouts, batch_size=args.batch_size, epochs=2,
                        seed=0, name=PLAN)
        if store.get(f"pack/{PACK}") is None:
            fb = store.array_meta("features").nbytes
            rb = store.array_meta("features").row_bytes
            pack_plan(store, PLAN, name=PACK, options=PackOptions(
                gpu_cache=int(fb * args.gpu_cache) // rb * rb,
                cpu_cache=int(fb * args.cpu_cache) // rb * rb, max_disk_blowup=8))
    return path


def _fresh_peak(cuda: bool) -> int:
    if not cuda:
        return 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def exact_epoch(store: Store, device: str, prefetch: int | None, feats: np.ndarray,
                labels: np.ndarray, budget: MemoryBudget | None = None) -> dict:
    """One epoch: every batch against the oracle; the device peak against the charges."""
    cuda = device == "cuda"
    base = _fresh_peak(cuda)
    bad = []
    t0 = time.perf_counter()
    with NodeLoader(store, PLAN, pack=PACK, device=device, prefetch=prefetch,
                    budget=budget) as loader:
        charged = loader.accountant.charged("gpu")
        n = 0
        for b in loader:
            ok_x = torch.equal(b.x.cpu(), torch.from_numpy(feats[b.input_nodes]))
            ok_y = torch.equal(b.y.cpu(), torch.from_numpy(labels[b.seeds]))
            if not (ok_x and ok_y and b.x.device.type == device):
                bad.append(b.index)
            n += 1
        if cuda:
            torch.cuda.synchronize()
        st = loader.stats()
        depth = loader.prefetch
    out = {"prefetch": depth, "batches": n, "mismatched_batches": bad[:20],
           "exact": not bad and n > 0, "seconds": time.perf_counter() - t0,
           "hit_rate": st["hit_rate"], "staging": st.get("staging"),
           "budget": st["budget"]["gpu"]}
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
        out.update(peak_gpu_bytes=peak, gpu_charged_bytes=charged,
                   peak_over_charged=peak / charged if charged else None,
                   within_charges=peak <= charged)
    return out


def _lag():
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(2_000_000)  # ~1 ms of GPU time before the consumer's kernel
    else:
        a = torch.ones(512, 512, device="cuda")
        for _ in range(20):
            a = a @ a / 512


def stream_order(store: Store, feats: np.ndarray, max_batches: int) -> dict:
    """A consumer stream far behind the loader's copies, dropping each batch at once."""
    sums, want = [], []
    with NodeLoader(store, PLAN, pack=PACK, device="cuda", prefetch=4) as loader:
        for i, b in enumerate(loader):
            if i >= max_batches:
                break
            _lag()
            sums.append(b.x.double().sum(0))
            want.append(feats[b.input_nodes].astype(np.float64).sum(0))
            del b
    got = torch.stack(sums).cpu().numpy()
    want = np.stack(want)
    err = np.abs(got - want) / np.maximum(np.abs(want), 1.0)
    return {"batches": len(sums), "max_rel_error": float(err.max()),
            "ok": bool(err.max() <= 1e-9)}


def _model(feat_dim: int, classes: int, hidden: int, device: str):
    from oocstore.train.model import GraphSAGE

    torch.manual_seed(0)
    model = GraphSAGE(feat_dim, hidden, classes, 2).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=0.003)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def overlap(store: Store, device: str, hidden: int, rounds: int, feats: np.ndarray,
            labels: np.ndarray) -> dict:
    """Epoch time of GraphSAGE training fed by the loader (default prefetch, and 0) and
    from all features on the device; the loader's consumer wait share."""
    from oocstore.plan import PlanReader
    from oocstore.train.loop import train_epoch

    classes = int(labels.max()) + 1
    plan = PlanReader(store, PLAN)

    def loader_epoch(prefetch):
        model, opt = _model(feats.shape[1], classes, hidden, device)
        with NodeLoader(store, PLAN, pack=PACK, device=device, prefetch=prefetch) as loader:
            _sync(device)
            t0 = time.perf_counter()
            r = train_epoch(model, opt, ((b.sample, b.x, b.y) for b in loader), device)
            _sync(device)
            sec = time.perf_counter() - t0
            st = loader.stats()
        wait = st["epochs"][-1]["wait_s"]
        return {"seconds": sec, "wait_s": wait, "wait_share": wait / sec,
                "prefetch": st["prefetch"], "loss": r["loss"], "batches": r["batches"],
                "ring_waits": (st.get("staging") or {}).get("waits")}

    fx = torch.from_numpy(feats).to(device)
    fy = torch.from_numpy(labels)

    def resident_epoch(_):
        model, opt = _model(feats.shape[1], classes, hidden, device)

        def batches():
            for b in range(plan.num_batches(0)):
                s = plan.read_batch(0, b)
                idx = torch.from_numpy(s.input_nodes).to(device)
                yield s, fx.index_select(0, idx), fy[torch.from_numpy(s.seeds)]

        _sync(device)
        t0 = time.perf_counter()
        r = train_epoch(model, opt, batches(), device)
        _sync(device)
        sec = time.perf_counter() - t0
        return {"seconds": sec, "wait_s": r["data_seconds"], "wait_share": r["data_seconds"] / sec,
                "loss": r["loss"], "batches": r["batches"]}

    modes = {"prefetch on": (loader_epoch, None), "prefetch off": (loader_epoch, 0),
             "features on device": (resident_epoch, None)}
    loader_epoch(None)  # warm-up (not counted): kernels, numba, the page cache
    resident_epoch(None)
    runs = {m: [] for m in modes}
    for _ in range(rounds):
        for m, (fn, arg) in modes.items():
            runs[m].append(fn(arg))
    fx = None  # the resident copy is done with: free its device memory
    out = {}
    for m, rs in runs.items():
        sec = statistics.median(r["seconds"] for r in rs)
        wait = statistics.median(r["wait_s"] for r in rs)
        out[m] = {"seconds": sec, "wait_s": wait, "wait_share": wait / sec, "runs": rs}
    on, off, res = (out[m]["seconds"] for m in ("prefetch on", "prefetch off",
                                                 "features on device"))
    return {"hidden": hidden, "rounds": rounds, "modes": out,
            "speedup_prefetch": off / on, "prefetch_on_over_resident": on / res}


def h2d(rows: int, feat_dim: int, dtype, repeats: int = 10) -> dict:
    """Copy bandwidth host -> device, GB/s (medians of ``repeats``), by host memory kind."""
    from oocstore.tiers.staging import StagingRing

    out = {}
    for label, nbytes in (("largest_batch", rows * feat_dim * np.dtype(dtype).itemsize),
                          ("64MiB", 64 << 20)):
        n = max(1, nbytes // (feat_dim * np.dtype(dtype).itemsize))
        ring = StagingRing(1, n, feat_dim, dtype, pin=True, device="cuda")
        slot, view = ring.acquire(n)
        view[:] = 1
        sources = {"ring (cudaHostRegister)": torch.from_numpy(view),
                   "torch pin_memory": torch.ones((n, feat_dim), dtype=torch.from_numpy(view).dtype,
                                                  pin_memory=True),
                   "pageable": torch.from_numpy(np.ones((n, feat_dim), dtype=dtype))}
        dst = torch.empty((n, feat_dim), dtype=sources["pageable"].dtype, device="cuda")
        res = {"bytes": n * feat_dim * np.dtype(dtype).itemsize, "ring_pinned": ring.pinned}
        for kind, src in sources.items():
            times = []
            for i in range(repeats + 2):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                dst.copy_(src, non_blocking=True)
                torch.cuda.synchronize()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            res[kind] = res["bytes"] / statistics.median(times) / 1e9
        ring.release(slot)
        ring.close()
        del sources, dst
        out[label] = res
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_graph_args(ap, nodes=300_000, feat_dim=128, avg_degree=10.0, fanouts="10,5",
                   batch_size=1024, store=False)
    ap.add_argument("--gpu-cache", type=float, default=0.1, help="fraction of the features")
    ap.add_argument("--cpu-cache", type=float, default=0.1, help="fraction of the features")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--toy", action="store_true", help="a tiny store, seconds, CPU allowed")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.toy:
        args.nodes, args.feat_dim, args.batch_size, args.hidden, args.rounds = 4000, 16, 256, 32, 1
        args.fanouts = "5,5"
    out_path = args.out
    if out_path is None and os.environ.get("OUT"):
        out_path = str(Path(os.environ["OUT"]) / "gpu_loader_check.json")
    if out_path is None and not args.toy:
        out_path = str(REPO / "bench" / "results" / "gpu_loader_check.json")
    result: dict = {"bench": "gpu_loader_check", "toy": args.toy, "cuda": cuda,
                    "torch": torch.__version__, "cpus": os.cpu_count()}

    def save() -> None:
        if out_path:
            Path(out_path).parent.mkdir(parents=True, exist_ok=True)
            Path(out_path).write_text(json.dumps(result, indent=1, sort_keys=True, default=float)
                                      + "\n")

    if not cuda and not args.toy:
        result["skipped"] = ("CUDA is not available on this machine (torch.cuda.is_available() "
                             "is False): nothing checked; --toy runs the CPU parts")
        print(f"gpu_loader_check: {result['skipped']}", file=sys.stderr)
        save()
        if args.json:
            print(json.dumps(result, sort_keys=True))
        return 0
    device = "cuda" if cuda else "cpu"
    if cuda:
        result["card"] = torch.cuda.get_device_name(0)
        result["cuda_version"] = torch.version.cuda
    failed: list[str] = []

    def part(name: str, fn, ok=lambda r: True):
        t0 = time.perf_counter()
        try:
            r = fn()
            r_ok = bool(ok(r))
        except Exception as err:  # noqa: BLE001 — record it and go on to the next part
            r = {"error": f"{type(err).__name__}: {err}",
                 "traceback": traceback.format_exc()[-3000:]}
            r_ok = False
            print(f"gpu_loader_check: part {name} raised:\n{r['traceback']}", file=sys.stderr)
        r["part_seconds"] = time.perf_counter() - t0
        r["ok"] = r_ok if "ok" not in r else (r["ok"] and r_ok)
        if not r["ok"]:
            failed.append(name)
        result[name] = r
        save()
        print(f"gpu_loader_check: {name}: {'ok' if r['ok'] else 'FAILED'} "
              f"({r['part_seconds']:.1f} s)", file=sys.stderr)
        return r

    work = Path(args.dir or tempfile.mkdtemp(prefix="gpucheck-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path = build(work, args)
    result["setup"] = {"store": str(path), "nodes": args.nodes, "feat_dim": args.feat_dim,
                       "fanouts": args.fanouts, "batch_size": args.batch_size,
                       "seconds": time.perf_counter() - t0}
    with Store(path) as store:
        m = store.get(f"pack/{PACK}")
        result["setup"].update(largest_batch_rows=m["largest_batch_rows"],
                               gpu_rows=m["gpu_rows"], cpu_rows=m["cpu_rows"],
                               min_working_set=m["min_working_set"])
        feats = np.array(store.array("features"))
        labels = np.array(store.array("labels")).astype(np.int64)
        save()

        def exact():
            runs = {"prefetch default": exact_epoch(store, device, None, feats, labels),
                    "prefetch 0": exact_epoch(store, device, 0, feats, labels)}
            if cuda:
                with NodeLoader(store, PLAN, pack=PACK, device=device, prefetch=1) as probe:
                    need = probe.accountant.charged("gpu")
                runs["gpu budget = depth-1 charges"] = exact_epoch(
                    store, device, None, feats, labels, budget=MemoryBudget(gpu=need))
            ok = all(r["exact"] and r.get("within_charges", True) for r in runs.values())
            return {"runs": runs, "ok": ok}

        part("exact_and_memory", exact)
        if cuda:
            part("stream_order", lambda: stream_order(store, feats, 60))
        part("overlap", lambda: overlap(store, device, args.hidden, args.rounds, feats, labels),
             ok=lambda r: r["speedup_prefetch"] > 0)
        if cuda:
            fd = store.array_meta("features")
            part("h2d", lambda: h2d(m["largest_batch_rows"], fd.shape[1], fd.np_dtype))
    result["failed"] = failed
    result["ok"] = not failed
    save()
    ex = result.get("exact_and_memory", {}).get("runs", {})
    for name, r in ex.items():
        line = f"  {name}: depth {r.get('prefetch')}, {r.get('batches')} batches, exact {r.get('exact')}"
        if "peak_gpu_bytes" in r:
            line += (f", peak {r['peak_gpu_bytes'] / 2**20:.1f} MiB <= charged "
                     f"{r['gpu_charged_bytes'] / 2**20:.1f} MiB: {r['within_charges']}")
        print(line, file=sys.stderr)
    ov = result.get("overlap", {})
    for mode, r in ov.get("modes", {}).items():
        print(f"  {mode:<20} epoch {r['seconds']:.2f} s, waited {r['wait_share']:.1%}",
              file=sys.stderr)
    for label, r in result.get("h2d", {}).items():
        if isinstance(r, dict) and "bytes" in r:
            print(f"  h2d {label} ({r['bytes'] / 2**20:.1f} MiB): " + ", ".join(
                f"{k} {v:.1f} GB/s" for k, v in r.items() if isinstance(v, float)), file=sys.stderr)
    if out_path:
        print(f"gpu_loader_check: wrote {out_path}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, sort_keys=True, default=float))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
