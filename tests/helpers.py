"""Helpers for the tests (importable as ``helpers``: pytest puts tests/ on sys.path
because tests/conftest.py lives there)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.store import Store

if TYPE_CHECKING:
    from oocstore.pack import PackOptions

REPO = Path(__file__).resolve().parents[1]


def make_synthetic(out: Path, *, nodes: int = 2000, feat_dim: int = 16, seed: int = 0,
                   avg_degree: float = 4.0, classes: int | None = None,
                   overwrite: bool = False) -> Path:
    extra = {} if classes is None else {"classes": classes}
    spec = SyntheticSpec(nodes=nodes, feat_dim=feat_dim, avg_degree=avg_degree, seed=seed,
                         **extra)
    return build_store(out, synthetic_source(spec), seed=seed, overwrite=overwrite)


def copy_of(template: Path, out: Path) -> Path:
    """A copy of the read-only ``template`` store (or scene) at ``out``, for one test to
    change."""
    shutil.copytree(template, out)
    return out


def sampled_store(out: Path, *plans: dict,
                  packs: dict[str, PackOptions | tuple[str, PackOptions]] | None = None,
                  template: Path | None = None, **synthetic) -> Path:
    """A store at ``out`` with ``plans`` sampled in order (each a dict of ``sample_plan``
    keywords), then ``packs`` packed (pack name -> options of the plan sampled last, or
    ``(plan name, options)``). The store is a copy of ``template`` when given, else a new
    synthetic one (``synthetic``: the keywords of :func:`make_synthetic`)."""
    from oocstore.pack import pack_plan
    from oocstore.samplers import sample_plan

    if template is not None:
        copy_of(template, out)
    else:
        make_synthetic(out, **synthetic)
    with Store(out, readonly=False) as store:
        for kw in plans:
            sample_plan(store, **kw)
        for name, how in (packs or {}).items():
            plan, options = how if isinstance(how, tuple) else (None, how)
            pack_plan(store, plan, name=name, options=options)
    return out


#: The training plan of the training-loop tests (tests/train, tests/dgl_backend).
TRAIN_PLAN = dict(fanouts="5,5", batch_size=256, epochs=2, seed=0, name="train")


#: The plan of the batch-conversion tests (tests/integrations, tests/dgl_backend).
BATCHES_PLAN = dict(fanouts="4,3", batch_size=64, epochs=2, seed=3, name="train")


def eval_plans(*splits: str) -> list[dict]:
    """Full-neighbourhood evaluation plans, one per split, each named after its split."""
    return [dict(fanouts="all,all", batch_size=1024, epochs=1, name=s, split=s) for s in splits]


def policy_packs(policies: dict[str, str], **options) -> dict[str, PackOptions]:
    """Pack name -> ``PackOptions(policy=..., **options)``: packs of one plan that differ
    only in their cache policy."""
    from oocstore.pack import PackOptions

    return {name: PackOptions(policy=policy, **options) for name, policy in policies.items()}


def train_and_test(model, store, feats, *, epochs: int, graph: bool = True
                   ) -> tuple[list[dict], float]:
    """Train ``model`` with Adam (lr 0.01) on plan "train" of ``store`` for ``epochs``
    (plan epochs reused shuffled), then evaluate it on plan "test": the per-epoch
    histories and the test accuracy. ``graph=False`` removes every edge
    (:func:`without_edges`), the feature-only reference."""
    import torch

    from oocstore.plan import PlanReader
    from oocstore.train import epoch_schedule, evaluate, train_epoch

    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    reader = PlanReader(store, "train")
    wrap = (lambda t: t) if graph else without_edges
    history = []
    for e in range(epochs):
        plan_epoch, order = epoch_schedule(reader, e, reuse="shuffle")
        history.append(train_epoch(model, opt, wrap(feats.batches(reader, plan_epoch, order)),
                                   "cpu"))
    return history, evaluate(model, wrap(feats.batches(PlanReader(store, "test"), 0)))


def opened(path: Path, *, readonly: bool = True) -> Iterator[Store]:
    """The store at ``path``, open for as long as the generator runs: a module fixture
    says ``yield from opened(path)``."""
    with Store(path, readonly=readonly) as store:
        yield store


def without_edges(triples):
    """(batch, x, y) triples whose blocks keep their nodes but lose every edge: each
    neighbour mean is then 0, so a SAGE model reduces to its root weight (an MLP)."""
    for batch, x, y in triples:
        blocks = [dataclasses.replace(b, src=b.src[:0], dst=b.dst[:0]) for b in batch.blocks]
        yield dataclasses.replace(batch, blocks=blocks), x, y


def run_bench_toy(name: str, tmp_path: Path, *args: str, timeout: float = 300) -> dict:
    """``bench/<name>.py --toy --dir TMP --out TMP/<name>.json ARGS`` as a user runs it:
    checks it exits 0 and wrote its JSON file, and returns the JSON line it printed last."""
    out = tmp_path / f"{name}.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--toy",
                        "--dir", str(tmp_path), "--out", str(out), *args],
                       capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(out.read_text())["bench"] == name
    return json.loads(r.stdout.strip().splitlines()[-1])


def cli_store(out: Path | str, *, ingest: str, sample: str, pack: str) -> str:
    """A store made the way a user makes one: ``ingest synthetic OUT INGEST``, ``sample OUT
    SAMPLE``, ``pack OUT PACK`` (each quiet, arguments split at spaces) through the CLI's
    ``main``, each asserted to succeed; returns ``out`` as a string."""
    from oocstore.cli import main

    out = str(out)
    for argv in (["ingest", "synthetic", out, *ingest.split()], ["sample", out, *sample.split()],
                 ["pack", out, *pack.split()]):
        assert main([*argv, "--quiet"]) == 0, argv
    return out


def run_oocstore(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``python -m oocstore ARGS`` in a subprocess, the way a user runs it."""
    return subprocess.run([sys.executable, "-m", "oocstore", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, **kw)


def tree_bytes(root: Path, *, skip: tuple[str, ...] = ("catalog.lmdb",),
               skip_suffix: str | None = None) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), outside the ``skip`` folders
    and but for the files whose name ends with ``skip_suffix`` (e.g. ``.lock``)."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in skip]
        for f in files:
            if skip_suffix is not None and f.endswith(skip_suffix):
                continue
            p = Path(d) / f
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out



def scene_files(root: Path) -> dict[str, bytes]:
    """Every file of a scene or store (relative path -> bytes) but its lock files: equal
    before and after a refused command when nothing was written."""
    return tree_bytes(root, skip=(), skip_suffix=".lock")


def flip_bits(path: Path, offset: int, mask: int) -> None:
    """XOR the byte at ``offset`` of the file ``path`` with ``mask``, in place: damage
    that keeps the file's size."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


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


def _load_script(folder: str, name: str):
    """Import ``<folder>/<name>.py`` as module ``<folder>_<name>`` (a folder of scripts,
    not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{folder}_{name}",
                                                  REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_bench(name: str):
    """Import ``bench/<name>.py`` as a module (bench/ is scripts, not a package)."""
    return _load_script("bench", name)


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (tools/ is scripts, not a package)."""
    return _load_script("tools", name)


def packed_synthetic(out: Path, packs: dict, *, nodes: int = 3000, feat_dim: int = 16,
                     avg_degree: float = 6.0, fanouts: str = "4,4", batch_size: int = 128,
                     epochs: int = 1):
    """A synthetic store with one sampled plan and the ``packs`` (name -> PackOptions)
    made from it; the open, writable :class:`~oocstore.Store` (the caller closes it)."""
    from oocstore import Store
    from oocstore.pack import pack_plan
    from oocstore.samplers import sample_plan

    make_synthetic(out, nodes=nodes, feat_dim=feat_dim, avg_degree=avg_degree)
    store = Store(out, readonly=False)
    sample_plan(store, fanouts=fanouts, batch_size=batch_size, epochs=epochs, seed=0)
    for name, options in packs.items():
        pack_plan(store, name=name, options=options)
    return store


def cli_store_fixtures(name: str, *, ingest: str, sample: str, pack: str):
    """Two pytest fixtures for a test module: ``store``, a :func:`cli_store` made once per
    module (under ``name``), and ``fresh``, a copy of it for one test to change (or to
    check that a refused command leaves untouched)."""
    import pytest

    @pytest.fixture(scope="module")
    def store(tmp_path_factory):
        return cli_store(tmp_path_factory.mktemp(name) / "s", ingest=ingest, sample=sample,
                         pack=pack)

    @pytest.fixture
    def fresh(store, tmp_path):
        return str(copy_of(Path(store), tmp_path / "fresh"))

    return store, fresh


def strip_scene(out: Path, *, n: int, scales: tuple[float, float], sh_coeffs: int,
                sh_degree: int, focal: float, size: tuple[int, int], block_size: int) -> Path:
    """A scene of ``n`` Gaussians in a strip along x, seen by 9 cameras sliding along it
    (focal length ``focal``, image ``size``), written at ``out``."""
    import numpy as np

    from oocstore.gs import layout
    from oocstore.gs.cameras import Cameras
    from oocstore.gs.scene import Scene

    g = np.random.default_rng(0)
    means = np.stack([g.uniform(-6, 6, n), g.uniform(-1, 1, n), g.uniform(-0.4, 0.4, n)], 1)
    params = layout.join_params(means, np.tile([1.0, 0, 0, 0], (n, 1)),
                                np.log(g.uniform(*scales, (n, 3))), g.uniform(-1, 1.5, n),
                                g.normal(scale=0.4, size=(n, sh_coeffs, 3)))
    xs = np.linspace(-5, 5, 9)
    vm = np.tile(np.eye(4), (len(xs), 1, 1))
    vm[:, 0, 3] = -xs
    vm[:, 2, 3] = 3.0
    w, h = size
    K = np.tile(np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1]]), (len(xs), 1, 1))
    Scene.create(out, None, params, sh_degree, Cameras(vm, K, w, h), block_size=block_size).close()
    return out


def train_json(capsys, *argv) -> dict:
    """Run ``oocstore train ARGV --json --quiet`` (asserted to succeed) and return its
    summary, the last line it printed."""
    from oocstore.cli import main

    assert main(["train", *argv, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def exit_status(argv) -> int:
    """``main(argv)``'s exit status (argparse's refusals exit with SystemExit)."""
    from oocstore.cli import main

    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def refused(capsys, argv, *match: str) -> str:
    """Run ``main(argv)`` and check it refused the way the CLI refuses bad input: exit
    status 2, one line on stderr, no traceback, every string of ``match`` in that line.
    Returns the line, for checks of its own."""
    code = exit_status(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for m in match:
        assert m in lines[0], lines[0]
    return lines[0]


HETERO_SPEC_KW = dict(papers=1200, paper_dim=24, author_dim=12, classes=4, fields=16, seed=3)


def hetero_store(out: Path, *plans: dict) -> Path:
    """The small synthetic heterogeneous store of the hetero tests (:data:`HETERO_SPEC_KW`,
    with reverse relations) at ``out``, with ``plans`` sampled in order (each a dict of
    ``sample_hetero_plan`` keywords)."""
    from oocstore.hetero import HeteroSpec, build_hetero_store, hetero_synthetic_source
    from oocstore.hetero.sampler import sample_hetero_plan

    build_hetero_store(out, hetero_synthetic_source(HeteroSpec(**HETERO_SPEC_KW)),
                       add_reverse=True)
    with Store(out, readonly=False) as store:
        for kw in plans:
            sample_hetero_plan(store, **kw)
    return out
