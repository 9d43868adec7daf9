"""Adversarial use of a store: racing ingests, symlinked data directories, a store
replaced under a reader, hostile catalog values, names that escape their folder.

Each test drives the store the way a careless or hostile user can (two commands at
once, a link planted in the store, a catalog edited by hand) and checks the guarantees
of docs/RELIABILITY.md: the store is complete and verifies, a refusal is one
``OocError``, and nothing outside the store's own data directories is ever deleted.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import os
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import load_tool
from oocstore import Store
from oocstore.errors import OocError, StoreLockedError
from oocstore.ingest import build_store
from oocstore.ingest.common import GraphSource
from oocstore.store.verify import verify_store

_CTX = mp.get_context("fork")


def _slow_source(n: int, dim: int, value: float, *, blocks: int = 6, pause: float = 0.08
                 ) -> GraphSource:
    """A small graph whose features arrive slowly (``blocks`` x ``pause`` seconds), so
    two ingests started a fraction of a second apart overlap for sure."""
    rng = np.random.default_rng(int(value * 1000))
    src = rng.integers(0, n, 4 * n)
    dst = rng.integers(0, n, 4 * n)

    def features():
        rows = -(-n // blocks)
        for lo in range(0, n, rows):
            time.sleep(pause)
            yield np.full((min(rows, n - lo), dim), value, dtype=np.float32)

    return GraphSource(num_nodes=n, src=src, dst=dst, directed=False, features=features(),
                       feat_dim=dim, labels=np.zeros(n, dtype=np.int64))


def _ingest_child(out: str, value: float, delay: float, q) -> None:
    time.sleep(delay)
    try:
        build_store(out, _slow_source(500, 8, value), overwrite=True)
        q.put((value, "ok"))
    except OocError as err:
        q.put((value, f"{type(err).__name__}: {err}"))
    except BaseException as err:  # noqa: BLE001 - reported to the parent as a failure
        q.put((value, f"UNCLEAN {type(err).__name__}: {err}"))


def _check_complete(out: Path) -> float:
    """The store at ``out`` opens, verifies, holds a graph and one ingest's features
    (all rows from the same source); returns that source's feature value."""
    with Store(out) as s:
        assert s.graph is not None, f"{out}: no graph"
        assert s.has_array("features"), f"{out}: no features"
        assert verify_store(s) == []
        feats = np.array(s.array("features"))
        assert feats.shape == (500, 8)
        assert np.unique(feats).size == 1, "features mix two ingests"
        return float(feats[0, 0])


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.25, 0.5])
def test_racing_overwrite_ingests_leave_one_complete_store(tmp_path, delay):
    out = tmp_path / "s"
    build_store(out, _slow_source(500, 8, 1.0, pause=0), overwrite=False)
    for attempt in range(2):
        q = _CTX.Queue()
        a = _CTX.Process(target=_ingest_child, args=(str(out), 2.0, 0.0, q))
        b = _CTX.Process(target=_ingest_child, args=(str(out), 3.0, delay, q))
        a.start()
        b.start()
        a.join(60)
        b.join(60)
        results = dict(q.get(timeout=5) for _ in range(2))
        assert a.exitcode == 0 and b.exitcode == 0
        assert not any(r.startswith("UNCLEAN") for r in results.values()), results
        oks = [v for v, r in results.items() if r == "ok"]
        assert oks, results
        for v, r in results.items():
            if r != "ok":  # refused cleanly, by name
                assert r.startswith("StoreLockedError") and str(out) in r, r
        got = _check_complete(out)
        assert got in oks, (got, results)
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "s"]
        assert leftovers == [], leftovers


def test_verify_refuses_an_empty_store(tmp_path):
    """What the lost race left behind: a store at version 0 without arrays."""
    with Store.create(tmp_path / "e"):
        pass
    with Store(tmp_path / "e") as s:
        damage = verify_store(s)
    assert len(damage) == 1 and "no committed version" in str(damage[0])


def test_verify_names_catalog_entries_whose_arrays_are_gone(store_copy):
    with Store(store_copy, readonly=False) as s:
        with s.transaction() as txn:
            txn.delete_array("graph/indices")
            txn.delete_array("split/val")
            txn.delete_array("pack/train/rows")
    with Store(store_copy) as s:
        text = "\n".join(str(d) for d in verify_store(s))
    assert "entry 'graph' names array 'graph/indices'" in text
    assert "entry 'splits/val' names array 'split/val'" in text
    assert "entry 'pack/train/arrays/rows' names array 'pack/train/rows'" in text


# -- symbolic links ------------------------------------------------------------------

def _victim(tmp_path: Path) -> Path:
    """A directory outside the store full of files a gc would take for its own."""
    v = tmp_path / "victim"
    (v / "deep").mkdir(parents=True)
    for rel in ("a.bin", "b.tmp", "deep/c.bin", "deep/d.tmp", "keep.txt"):
        (v / rel).write_text(rel)
    return v


def _files(v: Path) -> list[str]:
    return sorted(p.relative_to(v).as_posix() for p in v.rglob("*") if p.is_file())


def _victim_intact(v: Path, before: list[str] | None = None) -> None:
    want = before or ["a.bin", "b.tmp", "deep/c.bin", "deep/d.tmp", "keep.txt"]
    assert _files(v) == want


def _gc(path):
    from oocstore.store.gc import collect_garbage

    with Store(path, readonly=False) as s:
        return collect_garbage(s)


def _commit(path):
    with Store(path, readonly=False) as s:
        with s.transaction() as txn:
            txn.put("note", "x")


@pytest.mark.parametrize("data_dir", ["arrays", "plans", "packs", "scenes"])
@pytest.mark.parametrize("writer", [_gc, _commit])
def test_writers_refuse_a_store_whose_data_directory_is_a_link(store_copy, tmp_path, data_dir,
                                                              writer):
    from oocstore.errors import FormatError

    victim = _victim(tmp_path)
    link = store_copy / data_dir
    if link.exists():  # move the real directory out and link to it with the victims
        for p in link.iterdir():
            p.rename(victim / p.name)
        link.rmdir()
    link.symlink_to(victim)
    before = _files(victim)
    with pytest.raises(FormatError, match=f"{data_dir}.*symbolic link"):
        writer(store_copy)
    _victim_intact(victim, before)


@pytest.mark.parametrize("writer", [_gc, _commit])
def test_links_inside_data_directories_are_never_followed(store_copy, tmp_path, writer):
    victim = _victim(tmp_path)
    (store_copy / "arrays" / "sub").symlink_to(victim)
    (store_copy / "packs" / "x.1.bin").symlink_to(victim / "a.bin")
    writer(store_copy)
    _victim_intact(victim)
    assert (store_copy / "arrays" / "sub").is_symlink()


def test_deleting_through_a_link_planted_after_open_is_refused(store_copy, tmp_path):
    from oocstore.errors import FormatError

    victim = _victim(tmp_path)
    with Store(store_copy, readonly=False) as s:
        shutil.rmtree(store_copy / "scenes", ignore_errors=True)
        (store_copy / "scenes").symlink_to(victim)
        with pytest.raises(FormatError, match="outside the store"):
            s.remove_data_file(store_copy / "scenes" / "a.bin")
        with pytest.raises(FormatError, match="outside the store"):
            s.remove_data_file(store_copy / "catalog.lmdb" / "data.mdb")
    _victim_intact(victim)
    assert (store_copy / "catalog.lmdb" / "data.mdb").is_file()


# -- hostile catalog values ------------------------------------------------------------

FUZZ = load_tool("fuzz_inputs")


@pytest.mark.parametrize("case", FUZZ.HOSTILE_CATALOG, ids=[c[0] for c in FUZZ.HOSTILE_CATALOG])
def test_hostile_catalog_value(packed_store, tmp_path, case):
    """Every command refuses the value with an OocError naming the key (or verify
    reports it); nothing outside the data directories is deleted."""
    r = FUZZ.hostile_catalog_case(packed_store, tmp_path / "w", case)
    assert r["unclean"] == [], r
    assert r["deleted_outside"] == [], r
    noticed = [o for o in r["outcomes"].values()
               if not o.startswith("ok") and (case[1] in o or o.startswith("damage"))]
    assert noticed, r["outcomes"]


# -- pack names ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "..", "p/q", "caf\u00e9", ".hidden", "a\x00b"])
def test_pack_names_are_validated_like_plan_names(store_copy, name):
    from oocstore.errors import UsageError
    from oocstore.pack import PackOptions, pack_plan
    from oocstore.store.gc import remove

    with Store(store_copy, readonly=False) as s:
        before = s.catalog.dump()
        with pytest.raises(UsageError, match="pack name .* is not valid"):
            pack_plan(s, "train", name=name, options=PackOptions(cpu_cache=1 << 16))
        with pytest.raises(UsageError, match="pack name .* is not valid"):
            remove(s, pack=name)
        assert s.catalog.dump() == before


def test_rm_pack_leaves_arrays_of_deeper_names_alone(store_copy):
    """``pack/p/`` must not reach ``pack/p/q/...``; both stay consistent."""
    from oocstore.store.gc import remove

    with Store(store_copy, readonly=False) as s:
        with s.transaction() as txn:
            txn.write_array("pack/train/q/rows", np.arange(4))
        remove(s, pack="train")
        assert s.has_array("pack/train/q/rows")
        assert not any(a.startswith("pack/train/") and a.count("/") == 2 for a in s.arrays)


# -- a store replaced under a reader ---------------------------------------------------

def _replace(out: Path, value: float) -> None:
    """``ingest --overwrite`` in another process."""
    p = _CTX.Process(target=build_store, args=(str(out), _slow_source(500, 8, value, pause=0)),
                     kwargs={"overwrite": True})
    p.start()
    p.join(60)
    assert p.exitcode == 0


def _read_all(s: Store) -> list[np.ndarray]:
    """Every way a reader gets at its arrays' bytes after opening."""
    from oocstore.store.files import DirectReader

    out = [np.array(s.array("features")), s.slice_reader("features").read(0, 500)]
    meta = s.array_meta("features")
    with DirectReader(s.file_path(meta)) as r:
        out.append(r.read(meta.offset, meta.nbytes).view(np.float32).reshape(meta.shape).copy())
    return out


@pytest.mark.parametrize("held", [False, True])
def test_a_reader_never_mixes_versions_of_a_replaced_store(tmp_path, held):
    """After ``ingest --overwrite``, a reader of the old store reads the old values
    (files it holds open) or fails with StoreReplacedError — never the new store's."""
    from oocstore.errors import StoreReplacedError

    out = tmp_path / "s"
    build_store(out, _slow_source(500, 8, 1.0, pause=0))
    with Store(out) as s:
        early = s.slice_reader("features") if held else None
        _replace(out, 2.0)
        for get in (lambda: np.array(s.array("features")),
                    lambda: s.slice_reader("features").read(0, 500),
                    lambda: s.file_path(s.array_meta("features")),
                    s.refresh):
            with pytest.raises(StoreReplacedError, match="was replaced"):
                get()
        if early is not None:  # opened before: still the old bytes
            assert np.all(early.read(0, 500) == 1.0)
    with Store(out) as s:  # a new reader sees the new store
        assert all(np.all(a == 2.0) for a in _read_all(s))


# -- read-only commands on a full disk, output into a closed pipe -----------------------

def test_read_only_commands_work_when_reader_registration_hits_a_full_disk(
        store_copy, monkeypatch, capsys, caplog):
    import errno

    from oocstore.cli import main
    from oocstore.errors import DiskFullError
    from oocstore.store import readers

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(readers.os, "pwrite", full)
    assert main(["inspect", str(store_copy)]) == 0
    assert main(["verify", str(store_copy), "--quiet"]) == 0
    assert "OK" in capsys.readouterr().out
    assert "without a reader registration" in caplog.text
    with pytest.raises(DiskFullError, match="registering a reader in .*readers"):
        Store(store_copy, readonly=False)
    monkeypatch.undo()
    assert not [p for p in (store_copy / "catalog.lmdb" / "readers").iterdir()]


def test_output_into_a_closed_pipe_is_not_an_error(store_copy):
    import subprocess
    import sys

    from helpers import REPO

    r, w = os.pipe()
    os.close(r)  # the reader of the output is gone before anything is written
    try:
        p = subprocess.run([sys.executable, "-m", "oocstore", "inspect", str(store_copy)],
                           stdout=w, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120)
    finally:
        os.close(w)
    assert p.stderr == "" and p.returncode == 141, (p.returncode, p.stderr)
