"""Concurrent readers, reader registration, ``oocstore gc`` and ``oocstore rm``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from oocstore import Store
from oocstore.errors import StoreNotFoundError, UsageError
from oocstore.pack import PackOptions, pack_plan
from oocstore.store.catalog import CATALOG_DIR
from oocstore.store.gc import collect_garbage, remove
from oocstore.store.readers import live_versions
from oocstore.store.verify import verify_store
from oocstore.samplers import sample_plan

from helpers import REPO, run_oocstore


def _bins(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*.bin"))


def _features_x2(w):
    old = np.asarray(w.array("features"))
    with w.transaction() as txn:
        txn.write_array("features", old * 2)


def test_old_reader_keeps_superseded_files_until_gc(store_copy):
    w = Store(store_copy, readonly=False)  # LMDB: the writable handle opens first
    reader = Store(store_copy)
    v0, meta0 = reader.version, reader.array_meta("features")
    before = np.asarray(reader.array("features")).copy()
    _features_x2(w)  # another Store object commits a new version
    assert (store_copy / meta0.file).exists()  # kept: the reader's snapshot names it
    np.testing.assert_array_equal(reader.array("features"), before)
    rep = collect_garbage(w)
    assert rep.removed == [] and [r for r, _ in rep.kept] == [meta0.file]
    assert v0 in rep.reader_versions
    reader.refresh()  # the reader moves on to the new version: nothing holds the old one
    np.testing.assert_array_equal(reader.array("features"), before * 2)
    dry = collect_garbage(w, dry_run=True)
    assert [r for r, _ in dry.removed] == [meta0.file] and (store_copy / meta0.file).exists()
    rep = collect_garbage(w)
    assert [r for r, _ in rep.removed] == [meta0.file] and rep.kept == []
    assert not (store_copy / meta0.file).exists()
    reader.close()
    w.close()
    with Store(store_copy) as s:
        assert verify_store(s) == [] and set(_bins(store_copy)) == {m.file for m in s.arrays.values()}


def test_dead_reader_registration_is_stale(store_copy):
    code = ("import os, sys, signal; from oocstore import Store; s = Store(sys.argv[1]); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code, str(store_copy)], cwd=REPO)
    assert r.returncode == -9
    assert len(list((store_copy / CATALOG_DIR / "readers").glob("*.reader"))) == 1
    versions, stale = live_versions(store_copy / CATALOG_DIR)
    assert versions == [] and stale == 1
    assert list((store_copy / CATALOG_DIR / "readers").glob("*.reader")) == []


READER = textwrap.dedent('''
    import sys, time, zlib
    import numpy as np
    from oocstore import Store
    from oocstore.tiers import TieredReader
    path, secs = sys.argv[1], float(sys.argv[2])
    versions, reads = set(), 0
    t0 = time.time()
    while time.time() - t0 < secs:
        with Store(path) as s:            # a snapshot; the files it names must stay readable
            x = np.asarray(s.array("features"))
            doubled = s.get("doubled", 0)
            versions.add(s.version)
            base = np.asarray(s.array("labels")).astype(np.float32)[:, None]
            if not np.array_equal(x, (2.0 ** doubled) * s.array("features0")):
                sys.exit(f"inconsistent snapshot at version {s.version}")
            with TieredReader(s, "train") as r:
                for b in range(r.num_batches(0)):
                    r.read_batch(0, b)
            reads += 1
    print(len(versions), reads)
''')


def test_readers_see_consistent_versions_while_a_writer_commits(store_copy, tmp_path):
    with Store(store_copy, readonly=False) as w:
        with w.transaction() as txn:
            txn.write_array("features0", np.asarray(w.array("features")))
    (tmp_path / "reader.py").write_text(READER)
    readers = [subprocess.Popen([sys.executable, str(tmp_path / "reader.py"), str(store_copy), "6"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    time.sleep(1.5)
    commits = 0
    with Store(store_copy, readonly=False) as w:
        t0 = time.time()
        while time.time() - t0 < 3.5:
            old = np.asarray(w.array("features"))
            with w.transaction() as txn:  # the features and the pack, both new files
                txn.write_array("features", old * 2)
                txn.put("doubled", w.get("doubled", 0) + 1)
            pack_plan(w, options=PackOptions(cpu_cache=20000, max_disk_blowup=8), overwrite=True)
            commits += 2
    outs = [p.communicate(timeout=120) for p in readers]
    for p, (out, err) in zip(readers, outs):
        assert p.returncode == 0, err
        nversions, reads = map(int, out.split())
        assert reads >= 1
    assert commits >= 2
    with Store(store_copy, readonly=False) as w:
        collect_garbage(w)
        assert set(_bins(store_copy)) == {m.file for m in w.arrays.values()}
        assert verify_store(w) == []


def test_rm_plan_and_pack(store_copy):
    with Store(store_copy, readonly=False) as s:
        with pytest.raises(UsageError, match="used by pack.*train.*with_packs=True"):
            remove(s, plan="train")
        with pytest.raises(StoreNotFoundError, match="no pack 'nope'.*it has: train"):
            remove(s, pack="nope")
        sample_plan(s, fanouts="3", batch_size=512, epochs=1, seed=2, name="other")
        out = remove(s, pack="train")
        assert out["packs"] == ["train"] and all(a.startswith("pack/train/") for a in out["arrays"])
        assert s.get("pack/train") is None and not any(a.startswith("pack/") for a in s.arrays)
        pack_plan(s, "train", options=PackOptions(cpu_cache=0, max_disk_blowup=8))
        out = remove(s, plan="train", with_packs=True)
        assert out == {"plans": ["train"], "packs": ["train"], "arrays": out["arrays"]}
        assert s.get("plan/train") is None and s.get("plan/other") is not None
        assert not any(a.startswith(("plan/train/", "pack/")) for a in s.arrays)
        assert verify_store(s) == []
    assert set(_bins(store_copy)) == {m.file for m in Store(store_copy).arrays.values()}


def test_cli_gc_and_rm(store_copy):
    r = run_oocstore("rm", str(store_copy), "--plan", "train")
    assert r.returncode == 2 and "--with-packs" in r.stderr and "Traceback" not in r.stderr
    r = run_oocstore("rm", str(store_copy), "--pack", "train")
    assert r.returncode == 0, r.stderr
    assert "removed pack(s) train" in r.stdout
    (store_copy / "packs" / "junk.7.bin.tmp").write_bytes(b"x" * 10)
    r = run_oocstore("gc", str(store_copy), "--dry-run")
    assert r.returncode == 0 and "would remove 1 file(s)" in r.stdout
    assert (store_copy / "packs" / "junk.7.bin.tmp").exists()
    r = run_oocstore("gc", str(store_copy))
    assert r.returncode == 0 and "removed 1 file(s)" in r.stdout
    assert not (store_copy / "packs" / "junk.7.bin.tmp").exists()
    r = run_oocstore("rm", str(store_copy), "--pack", "x", "--plan", "y")
    assert r.returncode == 2 and "not allowed with" in r.stderr
