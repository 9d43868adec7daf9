"""Helpers shared by the benchmark scripts: the machine description that goes into every
result, the DGL environment's interpreter, per-process counters (peak RSS, bytes read
from storage), and running one measurement in a fresh subprocess.

The synthetic-graph arguments and the store they describe (``add_graph_args``,
``graph_store``) and writing a result with its plot (``write_result``) are here too.
Store and plan set-up live in ``bench/pack_speed.py`` (``make_store``, ``ensure_plan``,
``proc_io``, used here) and the sequential O_DIRECT read probe in ``bench/ssd_epoch.py``
(``seq_read``). Only the standard library is needed at import time, so the module also
loads in the DGL environment (``.venv-dgl``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DGL_VENV = REPO / ".venv-dgl"


if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))


def proc_io() -> dict[str, int]:
    """This process's ``/proc/self/io`` counters (``read_bytes`` counts O_DIRECT reads and
    page-cache misses of every thread of the process)."""
    from pack_speed import proc_io as _proc_io

    return _proc_io()


def read_bytes() -> int:
    """Bytes this process has made the block layer read so far (``/proc/self/io``)."""
    return proc_io()["read_bytes"]


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident set: ``VmHWM`` of ``/proc/self/status``
    (the new address space's own mark; ``getrusage``'s ``ru_maxrss`` would start from the
    parent's RSS at ``fork`` and survive ``exec``), or ``getrusage`` where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """Current resident set of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def time_calls(owner, attr: str, add: Callable[[float], None], saved: list) -> None:
    """Replace ``owner.attr`` by a wrapper that hands the seconds of every call to
    ``add``; ``(owner, attr, original)`` is appended to ``saved``, for the caller to
    put back when the measurement ends."""
    fn = getattr(owner, attr)
    saved.append((owner, attr, fn))

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            add(time.perf_counter() - t0)
    setattr(owner, attr, timed)


#: Rows gathered per fancy-index call by the page-cache loaders, so that their time cap
#: (``--window-seconds``) can end a window inside a batch that takes minutes.
GATHER_CHUNK = 8192


def capped_gather(feats, ids, deadline: float) -> tuple[Any, int]:
    """``feats[ids]`` in chunks of :data:`GATHER_CHUNK` rows through the page cache; stops
    after the chunk that passes ``deadline`` (``perf_counter`` time). Returns the rows
    gathered and how many."""
    import numpy as np

    out = np.empty((ids.size, feats.shape[1]), dtype=feats.dtype)
    done = 0
    while done < ids.size:
        j = min(ids.size, done + GATHER_CHUNK)
        out[done:j] = feats[ids[done:j]]
        done = j
        if time.perf_counter() > deadline:
            break
    return out, done


def dgl_python() -> Path | None:
    """The DGL environment's interpreter, or ``None`` when ``.venv-dgl`` is not built
    (``make test-dgl`` builds it)."""
    py = DGL_VENV / "bin" / "python"
    return py if py.is_file() else None


def machine_info(workdir: Path | None = None) -> dict[str, Any]:
    """What a result needs to be read against: cores, memory, the 1-minute load average at
    the time of the call (the machines are shared), disk space, versions."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(),
                            "loadavg_1min": os.getloadavg()[0]}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                if k in ("MemTotal", "MemAvailable"):
                    info[k.lower() + "_bytes"] = int(v.split()[0]) * 1024
    except OSError:
        pass
    if workdir is not None:
        du = shutil.disk_usage(workdir)
        info["workdir_free_bytes"] = du.free
    try:
        import numpy
        import torch

        info["numpy"] = numpy.__version__
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


#: ``--toy`` sizes of the synthetic graph of the pack and read benchmarks.
TOY_GRAPH = dict(nodes=20_000, feat_dim=32, avg_degree=6.0, fanouts="5,3", batch_size=256)


def add_graph_args(p, *, nodes: int, feat_dim: int, avg_degree: float, fanouts: str,
                   batch_size: int, store: bool = True) -> None:
    """The synthetic graph's size and sampling arguments with this benchmark's defaults,
    after ``--store`` / ``--data`` (where the store comes from, see :func:`graph_store`)
    unless ``store`` is false."""
    if store:
        p.add_argument("--store", help="existing store (default: generate one under --data)")
        p.add_argument("--data", default=str(REPO / "bench" / "data"))
    p.add_argument("--nodes", type=int, default=nodes)
    p.add_argument("--feat-dim", type=int, default=feat_dim)
    p.add_argument("--avg-degree", type=float, default=avg_degree)
    p.add_argument("--fanouts", default=fanouts)
    p.add_argument("--batch-size", type=int, default=batch_size)


def graph_store(args, prefix: str) -> tuple[Path, Path | None]:
    """The store a benchmark runs on, and the temporary folder to delete after it (or
    ``None``): ``--store`` as given; else the synthetic store of the arguments' size,
    generated once under ``--data`` (a name per size, reused by later runs), or with
    ``--toy`` under a new temporary folder named ``prefix...``."""
    from pack_speed import make_store

    if args.store:
        return Path(args.store), None
    tmp = Path(tempfile.mkdtemp(prefix=prefix)) if args.toy else None
    base = tmp if tmp is not None else Path(args.data)
    path = make_store(base / f"packbench-{args.nodes}-{args.feat_dim}-{args.avg_degree:g}",
                      nodes=args.nodes, feat_dim=args.feat_dim, avg_degree=args.avg_degree)
    return path, tmp


def write_result(res: dict, out: Path | None, plot: Callable[[Path], Any], *,
                 relative_plot: bool = False, **json_kw) -> None:
    """With ``out``: draw the plot beside it (``plot(png)``), note the PNG's path in
    ``res["plot"]`` (relative to the repository with ``relative_plot`` when inside it) and
    write ``res`` there as JSON. Then print ``res`` as one JSON line. ``json_kw`` go to
    ``json.dumps`` (``default=float`` for numpy scalars)."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        png = out.with_suffix(".png")
        plot(png)
        res["plot"] = (str(png.relative_to(REPO)) if relative_plot and png.is_relative_to(REPO)
                       else str(png))
        out.write_text(json.dumps(res, indent=1, **json_kw) + "\n")
    print(json.dumps(res, **json_kw))


class SubprocessError(RuntimeError):
    """A measurement subprocess failed; the message carries the tail of its stderr."""


def run_json(cmd: list[str], *, timeout: float | None = None, env: dict | None = None
             ) -> dict[str, Any]:
    """Run ``cmd`` and return the JSON object on the last line of its stdout."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode != 0 or not lines:
        raise SubprocessError(f"{' '.join(cmd[:3])} ... exited with {r.returncode}:\n"
                              f"{r.stderr[-4000:]}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as err:
        raise SubprocessError(f"{' '.join(cmd[:3])} ... printed no JSON line last: "
                              f"{lines[-1][:200]!r}\n{r.stderr[-2000:]}") from err


def dataset_store(work: Path, name: str, *, toy_spec: dict | None,
                  split: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> Path:
    """The store of dataset ``name`` under ``work``, ingested once and then reused: from
    the gnn-benchmark archive ``graphdata/<name>.npz`` of the shared data, or with
    ``toy_spec`` a synthetic graph of those ``SyntheticSpec`` keywords."""
    from oocstore.ingest import build_store

    path = work / name
    if (path / "catalog.lmdb").is_dir():
        return path
    work.mkdir(parents=True, exist_ok=True)
    if toy_spec is not None:
        from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source

        source = synthetic_source(SyntheticSpec(**toy_spec))
    else:
        from oocstore.ingest.npz import npz_source

        source = npz_source(SHARED_DATA / "graphdata" / f"{name}.npz", trust_pickle=True)
    print(f"ingesting {name} into {path} ...", file=sys.stderr, flush=True)
    build_store(path, source, split_fractions=tuple(split), seed=0, overwrite=True)
    return path


def add_dataset_args(p, datasets: dict) -> None:
    """``--toy`` (a tiny synthetic graph instead of the real datasets) and ``--datasets``
    (some of ``datasets``, see :func:`pick_datasets`)."""
    p.add_argument("--toy", action="store_true", help="tiny synthetic graph, seconds")
    p.add_argument("--datasets", default=",".join(datasets),
                   help=f"comma-separated, from {', '.join(datasets)}")


def pick_datasets(spec: str, known: dict) -> list[str]:
    """The names in a comma-separated ``--datasets`` value; exits naming the unknown ones."""
    names = [d.strip() for d in spec.split(",") if d.strip()]
    unknown = [d for d in names if d not in known]
    if unknown:
        raise SystemExit(f"--datasets: unknown {unknown}; choose from {', '.join(known)}")
    return names


def add_result_args(p, name: str) -> None:
    """``--out`` (the result JSON, see :func:`result_path`) and ``--toy`` (tiny sizes)."""
    p.add_argument("--out", help=f"result JSON (default bench/results/{name}.json; --toy "
                                 "writes none unless given); the plot goes next to it")
    p.add_argument("--toy", action="store_true", help="tiny sizes (for the test)")


def result_path(args, name: str) -> Path | None:
    """Where benchmark ``name`` writes its result: ``--out``, else
    ``bench/results/NAME.json``; a ``--toy`` run writes none unless given ``--out``."""
    if args.out:
        return Path(args.out)
    return None if args.toy else REPO / "bench" / "results" / f"{name}.json"


def add_on_off_args(ap, name: str, *, keeps: str) -> None:
    """The arguments of a verify-on/off benchmark ``name``: ``--repeats``, ``--dir`` (where
    the ``keeps`` is kept, see :func:`work_dir`), ``--toy`` and ``--out``."""
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help=f"keep the {keeps} here (reused across runs)")
    ap.add_argument("--toy", action="store_true", help="a tiny run (for the test)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / f"{name}.json"))


def work_dir(path: str | None) -> Path:
    """``path`` (created if absent), or a new temporary folder when ``None``."""
    root = Path(path or tempfile.mkdtemp(prefix="oocstore-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def on_off_runs(run: Callable[[bool], dict], repeats: int
                ) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """``run(verify)`` ``repeats`` times with verification on and off, alternating which
    goes first, after one untimed warm-up with it on: the runs of each mode
    (``{"on": [...], "off": [...]}``) and the median of their ``"seconds"``."""
    run(True)  # warm-up (imports, numba, first allocations)
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for i in range(repeats):
        for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
            runs[mode].append(run(mode == "on"))
    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    return runs, med


def write_on_off(res: dict, out: Path, off_s: float, on_s: float, *, ylabel: str,
                 title: str) -> None:
    """Write a verify-on/off result: ``out`` (JSON) and a bar chart beside it (PNG, when
    matplotlib is installed); then print the JSON line (without the machine)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 3))
        ax.bar(["verify off", "verify on"], [off_s, on_s], color=["grey", "tab:blue"])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
        plt.close(fig)
    except ImportError:
        pass
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, sort_keys=True))
