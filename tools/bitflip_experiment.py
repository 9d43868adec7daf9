"""Single-bit flips in every array of packs and plans, each followed by a loader run.

Builds a small synthetic store, samples one plan and packs it three ways (a static CPU
tier, a Belady-scheduled CPU tier, and a pack whose disk-blowup cap leaves batches to the
base-array fallback). A reference run reads every batch of every packed epoch of each
pack through :class:`~oocstore.loader.NodeLoader` in a subprocess and records a digest of
what the training loop would see (features, labels, seeds, input nodes, every block's
edges). Then, ``--flips`` times: one bit of one array (array kind chosen uniformly among
the pack's and the plan's arrays, then a random byte and bit inside the array's bytes)
is flipped in place, the same run repeats in a fresh subprocess, and the bit is flipped
back. Each outcome is one of:

``detected``  the run stopped with oocstore's own one-line error (exit status 2)
``harmless``  the run finished and saw exactly the reference batches
``silent``    the run finished (exit 0) but saw different batches — silent corruption
``crash``     the process died from a signal (SIGSEGV, SIGBUS, ...)
``error``     another exception (a traceback): not silent, but not a clean refusal
``hang``      no result within ``--timeout`` seconds

Usage::

    python tools/bitflip_experiment.py --flips 110 --seed 0 [--work DIR] [--json OUT]

Exits 1 when any flip was silent, crashed or hung.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PACKS = ("static", "belady", "fallback")
PLAN = "train"

CHILD = r"""
import hashlib, sys
import numpy as np
from oocstore import Store
from oocstore.errors import OocError
from oocstore.loader import NodeLoader

def run(path, pack):
    h = hashlib.sha256()
    with Store(path) as store, NodeLoader(store, "train", pack=pack) as loader:
        for epoch in range(loader.num_plan_epochs):
            loader.set_epoch(epoch)
            for b in loader:
                h.update(np.ascontiguousarray(b.x.numpy()).tobytes())
                h.update(b.y.numpy().tobytes())
                h.update(np.asarray(b.input_nodes, np.int64).tobytes())
                h.update(np.asarray(b.seeds, np.int64).tobytes())
                for blk in b.blocks:
                    h.update(np.array([blk.num_src, blk.num_dst], np.int64).tobytes())
                    h.update(np.asarray(blk.src, np.int64).tobytes())
                    h.update(np.asarray(blk.dst, np.int64).tobytes())
    return h.hexdigest()

try:
    print("digest", run(sys.argv[1], sys.argv[2]))
except OocError as err:
    print(f"oocstore: error: {err}", file=sys.stderr)
    sys.exit(2)
"""


def build(work: Path, nodes: int, feat_dim: int) -> Path:
    """The store every flip is made in (built once per work directory)."""
    from oocstore import Store
    from oocstore.ingest import build_store
    from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
    from oocstore.pack import PackOptions, pack_plan
    from oocstore.samplers import sample_plan

    path = work / "store"
    if path.exists():
        return path
    build_store(path, synthetic_source(SyntheticSpec(nodes=nodes, feat_dim=feat_dim,
                                                     avg_degree=6, seed=0)), seed=0)
    cache = nodes * feat_dim * 4 // 5
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="5,5", batch_size=128, epochs=2, seed=1, name=PLAN)
        pack_plan(s, PLAN, name="static", options=PackOptions(cpu_cache=cache, max_disk_blowup=8))
        pack_plan(s, PLAN, name="belady", options=PackOptions(cpu_cache=cache, max_disk_blowup=8,
                                                              policy="belady"))
        pack_plan(s, PLAN, name="fallback", options=PackOptions(cpu_cache=cache // 2,
                                                                max_disk_blowup=0.5))
    return path


def run_child(path: Path, pack: str, timeout: float) -> tuple[str, str]:
    """``(outcome, detail)`` of one loader run; outcome ``digest:<hex>`` when it finished."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, str(path), pack], capture_output=True,
                           text=True, timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return "hang", f"no result in {timeout} s"
    last = (p.stderr.strip().splitlines() or [""])[-1]
    if p.returncode < 0:
        return "crash", f"signal {-p.returncode}: {last}"
    if p.returncode == 2 and last.startswith("oocstore: error:"):
        return "detected", last
    if p.returncode != 0:
        return "error", f"exit {p.returncode}: {last}"
    for line in p.stdout.splitlines():
        if line.startswith("digest "):
            return "digest:" + line.split()[1], ""
    return "error", "no digest printed"


def targets(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Array kind -> ``[(pack run to check it with, array name)]``."""
    from oocstore import Store

    out: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    with Store(path) as s:
        arrays = s.arrays
        for pack in PACKS:
            for kind, name in s.get(f"pack/{pack}")["arrays"].items():
                if name in arrays and arrays[name].nbytes:
                    out[f"pack.{kind}"].append((pack, name))
        for kind, name in s.get(f"plan/{PLAN}")["arrays"].items():
            if arrays[name].nbytes:
                out[f"plan.{kind}"] += [(pack, name) for pack in PACKS]
    return dict(out)


def flip(path: Path, array: str, rng: random.Random) -> tuple[Path, int, int]:
    """Flip one random bit of ``array``'s bytes in place; returns what to flip back."""
    from oocstore import Store

    with Store(path) as s:
        meta = s.array_meta(array)
        file = s.file_path(meta)
    pos = meta.offset + rng.randrange(meta.nbytes)
    bit = rng.randrange(8)
    toggle(file, pos, bit)
    return file, pos, bit


def toggle(file: Path, pos: int, bit: int) -> None:
    with open(file, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ (1 << bit)]))
        f.flush()
        os.fsync(f.fileno())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flips", type=int, default=110)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nodes", type=int, default=3000)
    ap.add_argument("--feat-dim", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--work", type=Path, default=None, help="keep the store here (default: a "
                    "temporary directory, removed at the end)")
    ap.add_argument("--json", type=Path, default=None, help="write every flip's outcome here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    work = args.work or Path(tempfile.mkdtemp(prefix="bitflip-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        path = build(work, args.nodes, args.feat_dim)
        reference = {}
        for pack in PACKS:
            outcome, detail = run_child(path, pack, args.timeout)
            if not outcome.startswith("digest:"):
                print(f"reference run of pack {pack!r} failed: {outcome} {detail}", file=sys.stderr)
                return 2
            reference[pack] = outcome
        kinds = targets(path)
        rng = random.Random(args.seed)
        results = []
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        t0 = time.time()
        for i in range(args.flips):
            kind = rng.choice(sorted(kinds))
            pack, array = rng.choice(kinds[kind])
            file, pos, bit = flip(path, array, rng)
            try:
                outcome, detail = run_child(path, pack, args.timeout)
            finally:
                toggle(file, pos, bit)
            if outcome.startswith("digest:"):
                outcome = "harmless" if outcome == reference[pack] else "silent"
            counts[kind][outcome] += 1
            results.append({"flip": i, "kind": kind, "pack": pack, "array": array,
                            "file": str(file.relative_to(path)), "byte": pos, "bit": bit,
                            "outcome": outcome, "detail": detail})
            print(f"[{i + 1}/{args.flips} {time.time() - t0:.0f}s] {kind} ({pack}) byte {pos} "
                  f"bit {bit}: {outcome} {detail[:160]}", flush=True)
        total = collections.Counter()
        for c in counts.values():
            total.update(c)
        print("\nper array kind:")
        for kind in sorted(counts):
            print(f"  {kind:24s} " + ", ".join(f"{k} {v}" for k, v in sorted(counts[kind].items())))
        print("total: " + ", ".join(f"{k} {v}" for k, v in sorted(total.items())))
        if args.json:
            args.json.write_text(json.dumps({"flips": args.flips, "seed": args.seed,
                                             "total": dict(total),
                                             "per_kind": {k: dict(v) for k, v in counts.items()},
                                             "results": results}, indent=1))
        bad = total["silent"] + total["crash"] + total["hang"]
        return 1 if bad else 0
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
