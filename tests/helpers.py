"""Helpers for the tests (importable as ``helpers``: pytest puts tests/ on sys.path
because tests/conftest.py lives there)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source

REPO = Path(__file__).resolve().parents[1]


def make_synthetic(out: Path, *, nodes: int = 2000, feat_dim: int = 16, seed: int = 0,
                   avg_degree: float = 4.0, overwrite: bool = False) -> Path:
    spec = SyntheticSpec(nodes=nodes, feat_dim=feat_dim, avg_degree=avg_degree, seed=seed)
    return build_store(out, synthetic_source(spec), seed=seed, overwrite=overwrite)


def run_oocstore(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``python -m oocstore ARGS`` in a subprocess, the way a user runs it."""
    return subprocess.run([sys.executable, "-m", "oocstore", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, **kw)


def tree_bytes(root: Path, *, skip: tuple[str, ...] = ("catalog.lmdb",)) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), outside the ``skip`` folders."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in skip]
        for f in files:
            p = Path(d) / f
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out



class FullAfter:
    """A raw file whose ``write`` fails with ``err`` once ``limit`` bytes were written."""

    def __init__(self, f, state, err):
        self._f, self._state, self._err = f, state, err

    def write(self, mv):
        room = self._state["limit"] - self._state["written"]
        if room <= 0:
            raise OSError(self._err, os.strerror(self._err))
        n = self._f.write(memoryview(mv)[:room])
        self._state["written"] += n
        return n

    def fileno(self):
        return self._f.fileno()

    def close(self):
        self._f.close()


def load_bench(name: str):
    """Import ``bench/<name>.py`` as a module (bench/ is scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def packed_synthetic(out: Path, packs: dict, *, nodes: int = 3000, feat_dim: int = 16,
                     avg_degree: float = 6.0, fanouts: str = "4,4", batch_size: int = 128,
                     epochs: int = 1):
    """A synthetic store with one sampled plan and the ``packs`` (name -> PackOptions)
    made from it; the open, writable :class:`~oocstore.Store` (the caller closes it)."""
    from oocstore import Store
    from oocstore.pack import pack_plan
    from samplers import sample_plan

    make_synthetic(out, nodes=nodes, feat_dim=feat_dim, avg_degree=avg_degree)
    store = Store(out, readonly=False)
    sample_plan(store, fanouts=fanouts, batch_size=batch_size, epochs=epochs, seed=0)
    for name, options in packs.items():
        pack_plan(store, name=name, options=options)
    return store
