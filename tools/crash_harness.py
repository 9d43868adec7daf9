"""Crash harness: SIGKILL ingest, sample, pack, scene ingest and the Gaussian-splatting
checkpoint at many points, check the store after.

Components:

* ``ingest`` — replace a synthetic graph store (``--overwrite``);
* ``sample`` — a new plan; ``pack`` — re-pack over an existing pack;
* ``scene-ingest`` — replace a scene with one ingested from another ``.ply``
  (``oocstore ingest scene --overwrite``);
* ``scene-checkpoint`` — a streamed training segment on a scene (``gs.stream.Streamer``
  with a device budget and CPU tier small enough that dirty blocks are written back
  mid-run) ending in ``checkpoint()``, the commit ``gs-train`` makes. Rendering is
  replaced by a fixed function of the parameters as the gradient, so the result is the
  same byte for byte on every run (which comparing with the reference needs); the
  write-back thread, the log-structured writer and the commit are the ones gs-train runs.

For each component a job runs in a forked child process (the libraries are imported
once, in this process, which itself never runs a job) and is killed either at an
instrumented point — the n-th data-file write, the n-th file finished (renamed), the
n-th directory fsync (store transactions and the scene writer), just before or after the
catalog commit, before the superseded files are removed — or after a random delay.
After every kill:

1. the store opens and ``verify`` finds no damage (a scene also opens and every block
   reads back with its checksums verified);
2. its state (catalog entries and every array's bytes) equals exactly the last
   committed one: the reference copy from before the job, or the one after it;
3. the next writer leaves no orphaned file: the data directories hold only files the
   catalog names, and no ``.<name>.partial`` sibling remains. The next writer is
   ``oocstore gc`` for sample and pack, the next ingest to the same path for both
   ingests, and opening the scene for writing (what ``gs-train`` does first) for the
   scene checkpoint.

Crash leftovers are not removed by read-only opens, by design: a reader must never
delete what a concurrent writer is creating; the next writer (or ``gc``) removes them.
The table counts the kills that left any (``leftovers``).

    python tools/crash_harness.py                  # 24 kill points per component
    python tools/crash_harness.py --points 40 --only pack
    python tools/crash_harness.py --only scene-checkpoint --only scene-ingest
    python tools/crash_harness.py --race 40        # two racing ingest --overwrite, 40 rounds
    python tools/crash_harness.py --symlinks       # every writer on linked data directories

Prints a table (kill points, outcomes) and exits 1 on any failure.
``tests/reliability/test_crash_harness.py`` runs a handful of points per component.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from oocstore import Store  # noqa: E402
from oocstore.errors import OocError, StoreLockedError  # noqa: E402
from oocstore.gs import writer as scene_writer_mod  # noqa: E402
from oocstore.ingest import build_store  # noqa: E402
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source  # noqa: E402
from oocstore.pack import PackOptions, pack_plan  # noqa: E402
from oocstore.store import catalog as catalog_mod, files as files_mod  # noqa: E402
from oocstore.store import store as store_mod  # noqa: E402
from oocstore.store.gc import collect_garbage  # noqa: E402
from oocstore.store.verify import verify_store  # noqa: E402
from oocstore.samplers import sample_plan  # noqa: E402

COMPONENTS = ("ingest", "sample", "pack", "scene-ingest", "scene-checkpoint")
SCENE_COMPONENTS = ("scene-ingest", "scene-checkpoint")


# -- the jobs (run in a child) --------------------------------------------------------

def _spec(nodes: int, seed: int) -> SyntheticSpec:
    return SyntheticSpec(nodes=nodes, feat_dim=32, avg_degree=6, seed=seed)


SCENE_SH_DEGREE = 1
SCENE_BLOCK = 256


def scene_source(root: Path, seed: int, gaussians: int) -> Path:
    """A 3DGS ``.ply`` of ``gaussians`` random Gaussians (written once per seed)."""
    from oocstore.gs.ply import write_ply
    from oocstore.gs.synthetic import random_params

    path = root / f"scene-src-{seed}.ply"
    if not path.exists():
        write_ply(path, random_params(gaussians, SCENE_SH_DEGREE, seed=seed), SCENE_SH_DEGREE)
    return path


def ingest_scene_job(path: Path, src: Path, *, overwrite: bool) -> None:
    from oocstore.gs.ingest import ingest_scene

    ingest_scene(src, path, block_size=SCENE_BLOCK, views=8, overwrite=overwrite).close()


def scene_checkpoint_job(path: Path, steps: int = 12) -> None:
    """A streamed training segment ending in the checkpoint commit (see the module
    docstring and :func:`oocstore.gs.synthetic.synthetic_streamer`)."""
    import torch

    from oocstore.gs.scene import Scene
    from oocstore.gs.synthetic import synthetic_step, synthetic_streamer

    torch.set_num_threads(1)
    with Scene.open(path) as scene, synthetic_streamer(scene, steps=steps) as store:
        for _ in range(steps):
            synthetic_step(store)
        store.checkpoint()


def run_job(component: str, path: Path, nodes: int, gaussians: int = 6000) -> None:
    if component == "scene-ingest":  # replace a scene (source seed 1 -> seed 2)
        ingest_scene_job(path, scene_source(path.parent, 2, gaussians), overwrite=True)
    elif component == "scene-checkpoint":
        scene_checkpoint_job(path)
    elif component == "ingest":  # replace an existing store (old seed 1 -> new seed 2)
        build_store(path, synthetic_source(_spec(nodes, 2)), seed=2, overwrite=True)
    elif component == "sample":
        with Store(path, readonly=False) as s:
            sample_plan(s, fanouts="5,5", batch_size=256, epochs=2, seed=7, name="p2")
    elif component == "pack":  # re-pack over the existing pack: supersedes its files
        with Store(path, readonly=False) as s:
            pack_plan(s, "train", name="train", overwrite=True,
                      options=PackOptions(cpu_cache=nodes * 128 // 5, max_disk_blowup=8))
    else:
        raise SystemExit(f"unknown component {component}")


def make_template(path: Path, nodes: int, gaussians: int = 6000) -> None:
    if path.name == "scene-template":
        ingest_scene_job(path, scene_source(path.parent, 1, gaussians), overwrite=False)
        return
    build_store(path, synthetic_source(_spec(nodes, 1)), seed=1)
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="5,5", batch_size=256, epochs=2, seed=1)
        pack_plan(s, options=PackOptions(cpu_cache=0, max_disk_blowup=8))


# -- instrumentation (in the child) ----------------------------------------------------

_HOOKS = {  # kind -> (owner, attribute)
    "write": (files_mod.ArrayFileWriter, "write"),
    "finish": (files_mod.ArrayFileWriter, "finish"),
    "fsyncdir": (store_mod, "fsync_dir"),
    "scenedir": (scene_writer_mod, "fsync_dir"),  # the scene writer's, before its commit
    "commit": (catalog_mod.Catalog, "commit"),
    "superseded": (store_mod.Transaction, "_collect_superseded"),
}


def _instrument(point: str | None, counts: Counter) -> None:
    """Count every hooked call; SIGKILL this process at ``point`` ("kind:n" after the
    n-th call, "kind:-n" before it)."""
    kind, n = (point.split(":") + ["0"])[:2] if point and not point.startswith("time") else ("", "0")
    n = int(n)
    for k, (owner, attr) in _HOOKS.items():
        real = getattr(owner, attr)

        def wrapper(*a, _k=k, _real=real, **kw):
            counts[_k] += 1
            hit = _k == kind and counts[_k] == abs(n)
            if hit and n < 0:
                os.kill(os.getpid(), signal.SIGKILL)
            out = _real(*a, **kw)
            if hit and n >= 0:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        setattr(owner, attr, wrapper)


def fork_job(component: str, path: Path, nodes: int, point: str | None,
             count_file: Path | None = None, timeout: float = 600, gaussians: int = 6000) -> int:
    """Run the job in a forked child, killed at ``point``; returns its wait status code
    (``-9`` when killed)."""
    delay = float(point.split(":")[1]) if point and point.startswith("time:") else None
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            counts: Counter = Counter()
            _instrument(point, counts)
            if component == "template":
                make_template(path, nodes, gaussians)
            else:
                run_job(component, path, nodes, gaussians)
            if count_file is not None:
                count_file.write_text(json.dumps(counts))
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 3
        os._exit(code)
    if delay is not None:
        t_end = time.time() + delay
        while time.time() < t_end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
    return _wait(pid, timeout)


# -- checks (in this process) ----------------------------------------------------------

def state(path: Path):
    """``(catalog entries, {array: bytes})``, after checking ``verify`` passes (and, for a
    scene, that it opens and every block reads back with its checksums verified)."""
    with Store(path) as s:
        damage = verify_store(s)
        if damage:
            raise AssertionError(f"verify: {damage[0]}")
        dump = s.catalog.dump()
        arrays = {n: np.asarray(s.array(n)).tobytes() for n in sorted(s.arrays)}
    if "scene" in dump:
        from oocstore.gs.scene import Scene

        with Scene.open(path, readonly=True) as scene:
            ids, _ = scene.read_all()
            if len(ids) != scene.num_gaussians or len(np.unique(ids)) != len(ids):
                raise AssertionError("the scene's blocks do not hold its Gaussians once each")
    return dump, arrays


def only_referenced(path: Path) -> list[str]:
    """Files under the data directories that the catalog does not name."""
    with Store(path) as s:
        named = {m.file for m in s.arrays.values()}
    out = []
    for d in store_mod.DATA_DIRS:
        for p in sorted((path / d).rglob("*")) if (path / d).is_dir() else []:
            if p.is_file() and p.relative_to(path).as_posix() not in named:
                out.append(p.relative_to(path).as_posix())
    return out


def plan_points(counts: dict, n_points: int, duration: float, rng: random.Random) -> list[str]:
    """Every finish / directory fsync / commit point, some writes, then random delays up
    to ``n_points``."""
    pts = [f"finish:{i}" for i in range(1, counts.get("finish", 0) + 1)]
    pts += [f"fsyncdir:{i}" for i in range(1, counts.get("fsyncdir", 0) + 1)]
    pts += [f"scenedir:{i}" for i in range(1, counts.get("scenedir", 0) + 1)]
    if counts.get("superseded"):
        pts.append("superseded:-1")
    w = counts.get("write", 0)
    if w:
        pts += [f"write:{i}" for i in sorted({1, w, *rng.sample(range(1, w + 1), min(w, 6))})]
    rng.shuffle(pts)
    # Just before and just after the commit point come first, whatever the budget.
    pts = (["commit:-1", "commit:1"] + pts)[:max(n_points - 4, n_points // 2)]
    while len(pts) < n_points:
        pts.append(f"time:{rng.uniform(0.0, duration):.3f}")
    return pts


def run_component(component: str, n_points: int, root: Path, *, nodes: int = 20000,
                  gaussians: int = 6000, seed: int = 0, log=print) -> dict:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    template = root / ("scene-template" if component in SCENE_COMPONENTS else "template")
    if not template.exists():
        if fork_job("template", template, nodes, None, gaussians=gaussians) != 0:
            raise SystemExit(f"building the template {template.name} failed")
    before = state(template)
    ref = root / f"after-{component}"
    shutil.rmtree(ref, ignore_errors=True)
    shutil.copytree(template, ref)
    counts_file = root / "counts.json"
    t0 = time.time()
    if fork_job(component, ref, nodes, None, counts_file, gaussians=gaussians) != 0:
        raise SystemExit(f"the {component} job failed without a kill")
    duration = time.time() - t0
    after = state(ref)
    if after == before:
        raise SystemExit(f"the {component} job changed nothing: the harness would prove nothing")
    counts = json.loads(counts_file.read_text())
    points = plan_points(counts, n_points, duration, rng)
    outcomes: Counter = Counter()
    failures = []
    leftovers = 0
    for point in points:
        work = root / "work"
        shutil.rmtree(work, ignore_errors=True)
        for p in root.glob(".work.*"):
            shutil.rmtree(p, ignore_errors=True)
        shutil.copytree(template, work)
        code = fork_job(component, work, nodes, point, gaussians=gaussians)
        which = None
        try:
            got = state(work)
            which = "before" if got == before else "after" if got == after else None
            if which is None:
                raise AssertionError("state is neither the previous nor the new commit")
            partial = [p.name for p in root.iterdir() if p.name.startswith(".work.")]
            leftovers += bool(only_referenced(work) or partial)
            if component in ("ingest", "scene-ingest"):  # the next ingest to the path cleans up
                if fork_job(component, work, nodes, None, gaussians=gaussians) != 0:
                    raise AssertionError("the next ingest failed")
                if state(work) != after:
                    raise AssertionError("the next ingest did not produce the new store")
                left = [p.name for p in root.iterdir() if p.name.startswith(".work.")]
                if left:
                    raise AssertionError(f"left behind: {left}")
            elif component == "scene-checkpoint":  # what gs-train does first
                from oocstore.gs.scene import Scene

                Scene.open(work).close()
                if state(work) != got:
                    raise AssertionError("opening the scene changed its committed state")
            else:
                with Store(work, readonly=False) as s:
                    collect_garbage(s)
            stray = only_referenced(work)
            if stray:
                raise AssertionError(f"orphans after the next writer: {stray[:3]}")
            outcomes[f"{which}{'' if code == -9 else ' (finished)'}"] += 1
        except Exception as err:  # noqa: BLE001
            outcomes["FAIL"] += 1
            failures.append((point, f"{type(err).__name__}: {err}"))
        log(f"  {component:16s} {point:16s} -> "
            f"{failures[-1][1] if failures and failures[-1][0] == point else which}")
    return {"component": component, "points": len(points), "outcomes": dict(outcomes),
            "leftovers": leftovers, "failures": failures, "job_seconds": round(duration, 2),
            "calls": counts}


# -- adversarial runs: racing ingests, symlinked data directories --------------------

def _fork(fn) -> int:
    """Run ``fn()`` in a forked child; its exit code: 0 done, 4 refused with
    StoreLockedError, 5 refused with another OocError, 3 any other exception."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except StoreLockedError:
            code = 4
        except OocError:
            code = 5
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 3
        os._exit(code)
    return pid


def _wait(pid: int, timeout: float = 600) -> int:
    t0 = time.time()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.time() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def run_race(rounds: int, root: Path, *, nodes: int = 20000, seed: int = 0, log=print) -> dict:
    """``rounds`` times: two ``ingest --overwrite`` to one path (sources of seeds 2 and
    3), the second started 0-0.5 s after the first. The store must then verify and
    equal exactly one of the two complete stores; a command either succeeds or is
    refused with ``StoreLockedError``; nothing is left beside the store."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    refs = {}
    for src_seed in (1, 2, 3):
        ref = root / f"race-ref{src_seed}"
        if not ref.exists():
            build_store(ref, synthetic_source(_spec(nodes, src_seed)), seed=src_seed)
        refs[src_seed] = state(ref)
    outcomes: Counter = Counter()
    failures = []
    for i in range(rounds):
        race = root / "race"
        if race.exists():
            store_mod.remove_tree(race)
        shutil.copytree(root / "race-ref1", race)
        delay = rng.uniform(0.0, 0.5)

        def job(src_seed, wait=0.0):
            time.sleep(wait)
            build_store(race, synthetic_source(_spec(nodes, src_seed)), seed=src_seed,
                        overwrite=True)

        a = _fork(lambda: job(2))
        b = _fork(lambda: job(3, delay))
        codes = (_wait(a), _wait(b))
        try:
            if any(c not in (0, 4) for c in codes) or 0 not in codes:
                raise AssertionError(f"exit codes {codes}")
            got = state(race)
            winners = [sd for sd, c in zip((2, 3), codes) if c == 0]
            which = [sd for sd in winners if refs[sd] == got]
            if not which:
                raise AssertionError("the store is not exactly one of the complete stores")
            left = [p.name for p in root.iterdir() if p.name.startswith(".race.")]
            if left:
                raise AssertionError(f"left beside the store: {left}")
            outcomes["both ran" if codes == (0, 0) else "one refused"] += 1
        except Exception as err:  # noqa: BLE001
            outcomes["FAIL"] += 1
            failures.append((f"round {i} delay {delay:.3f}", f"{type(err).__name__}: {err}"))
        log(f"  race {i:3d} delay {delay:.3f} s -> codes {codes}"
            f"{' FAIL ' + failures[-1][1] if failures and failures[-1][0].startswith(f'round {i} ') else ''}")
    return {"component": "racing-ingests", "points": rounds, "outcomes": dict(outcomes),
            "leftovers": 0, "failures": failures}


SYMLINK_WRITERS = ("gc", "sample", "pack", "rm", "commit", "ingest")


def run_symlinks(root: Path, *, nodes: int = 20000, log=print) -> dict:
    """Each data directory (and the catalog's readers directory) of a store replaced by
    a link to a directory of decoy ``*.bin`` / ``*.tmp`` files, then every kind of writer
    run on it: the writer must be refused (``ingest --overwrite`` instead replaces the
    store, removing the link as a link), and no decoy may be deleted."""
    from oocstore.store.gc import remove

    root.mkdir(parents=True, exist_ok=True)
    template = root / "template"
    if not template.exists():
        if fork_job("template", template, nodes, None) != 0:
            raise SystemExit("building the template failed")

    def writer(kind, path):
        if kind == "ingest":
            build_store(path, synthetic_source(_spec(nodes, 2)), seed=2, overwrite=True)
            return
        with Store(path, readonly=False) as s:
            if kind == "gc":
                collect_garbage(s)
            elif kind == "sample":
                sample_plan(s, fanouts="5,5", batch_size=256, epochs=1, seed=9, name="p9")
            elif kind == "pack":
                pack_plan(s, "train", name="p9", options=PackOptions(cpu_cache=0,
                                                                    max_disk_blowup=8))
            elif kind == "rm":
                remove(s, pack="train")
            else:
                with s.transaction() as txn:
                    txn.put("note", "x")

    outcomes: Counter = Counter()
    failures = []
    deleted_outside = 0
    for d in (*store_mod.DATA_DIRS, "catalog.lmdb/readers"):
        for kind in SYMLINK_WRITERS:
            work = root / "work"
            if work.exists():
                store_mod.remove_tree(work)
            shutil.copytree(template, work)
            decoy = root / "decoy"
            if decoy.exists():
                store_mod.remove_tree(decoy)
            (decoy / "deep").mkdir(parents=True)
            for rel in ("a.bin", "b.tmp", "deep/c.bin", "deep/d.tmp", "x.reader", ".y.tmp"):
                (decoy / rel).write_bytes(b"decoy")
            link = work / d
            if link.exists():
                for p in link.iterdir():
                    p.rename(decoy / p.name)
                link.rmdir()
            link.symlink_to(decoy)
            before_decoy = sorted(p.relative_to(decoy).as_posix() for p in decoy.rglob("*"))
            code = _wait(_fork(lambda: writer(kind, work)))
            after_decoy = sorted(p.relative_to(decoy).as_posix() for p in decoy.rglob("*"))
            gone = sorted(set(before_decoy) - set(after_decoy))
            deleted_outside += len(gone)
            want = 0 if kind == "ingest" else 5  # replaced / refused (FormatError)
            ok = code == want and not gone
            outcomes[("replaced" if want == 0 else "refused") + ", nothing deleted outside"
                     if ok else "FAIL"] += 1
            if not ok:
                failures.append((f"{d} {kind}", f"exit {code}, deleted {gone[:5]}"))
            log(f"  link {d:22s} {kind:7s} -> exit {code}, deleted outside: {len(gone)}")
    return {"component": "symlinked-dirs", "points": len(SYMLINK_WRITERS) * 5,
            "outcomes": dict(outcomes), "leftovers": 0, "failures": failures,
            "deleted_outside": deleted_outside}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=24, help="kill points per component")
    ap.add_argument("--only", choices=COMPONENTS, action="append")
    ap.add_argument("--nodes", type=int, default=20000, help="size of the synthetic store")
    ap.add_argument("--gaussians", type=int, default=6000,
                    help="size of the scene (blocks of 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--quiet", action="store_true", help="only the summary table")
    ap.add_argument("--race", type=int, default=0, metavar="N",
                    help="instead: N rounds of two racing `ingest --overwrite` to one path")
    ap.add_argument("--symlinks", action="store_true",
                    help="instead: every writer on a store whose data directories are links")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="oocstore-crash-"))
    results = []
    log = (lambda *a: None) if args.quiet else print
    try:
        if args.race:
            results.append(run_race(args.race, root, nodes=args.nodes, seed=args.seed, log=log))
        if args.symlinks:
            results.append(run_symlinks(root, nodes=args.nodes, log=log))
        for comp in [] if args.race or args.symlinks else args.only or COMPONENTS:
            results.append(run_component(comp, args.points, root, nodes=args.nodes,
                                         gaussians=args.gaussians, seed=args.seed,
                                         log=(lambda *a: None) if args.quiet else print))
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'component':16s} {'kill points':>11s}  outcomes")
    for r in results:
        print(f"{r['component']:16s} {r['points']:11d}  " +
              ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items())) +
              f"; {r['leftovers']} left files for the next writer")
        for point, err in r["failures"]:
            print(f"    FAIL at {point}: {err}")
    print(json.dumps({"bench": "crash_harness", "results": [
        {k: v for k, v in r.items() if k != "calls"} for r in results]}))
    return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
