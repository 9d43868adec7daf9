import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from oocstore.errors import (DiskFullError, FormatError, StoreExistsError, StoreLockedError,
                             StoreNotFoundError, UsageError)
from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.store import Store, files, open_store
from oocstore.store import store as store_mod

from helpers import FullAfter, make_synthetic, tree_bytes


def _arrays(rng):
    return {
        "features": rng.standard_normal((1000, 13)).astype(np.float32),
        "graph/indptr": np.arange(1001, dtype=np.int64),
        "labels": rng.integers(0, 5, 1000).astype(np.int64),
        "cube": rng.integers(-100, 100, (3, 4, 5)).astype(np.int16),
        "mask": rng.random(77) < 0.5,
        "half": rng.standard_normal(33).astype(np.float16),
        "empty": np.zeros((0, 8), dtype=np.float64),
    }


def _make(path, arrays, **put):
    with Store.create(path) as s:
        with s.transaction() as txn:
            for name, a in arrays.items():
                txn.write_array(name, a)
            for k, v in put.items():
                txn.put(k, v)
    return path


def _data_files(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                  if p.is_file() and "catalog.lmdb" not in p.parts)


def test_round_trip_exact(tmp_path, rng):
    arrays = _arrays(rng)
    _make(tmp_path / "s", arrays, extra={"a": 1})
    with open_store(tmp_path / "s") as s:
        assert s.version == 1 and s.readonly
        assert set(s.arrays) == set(arrays)
        for name, a in arrays.items():
            got = s.array(name)
            assert got.dtype == a.dtype and got.shape == a.shape
            assert np.array_equal(got, a)
            assert len(s.checksums(name)) == s.array_meta(name).num_chunks
        assert s.get("extra") == {"a": 1}
        assert repr(s) == f"Store({str(tmp_path / 's')!r}, version=1)"


def test_streaming_writer_appends(tmp_path, rng):
    a = rng.standard_normal((5000, 7)).astype(np.float32)
    with Store.create(tmp_path / "s") as s:
        with s.transaction() as txn:
            w = txn.array_writer("x", np.float32, (7,), chunk_bytes=4096)
            for lo in range(0, 5000, 333):
                w.append(a[lo:lo + 333].astype(np.float64))  # converted to the array's dtype
            m = w.close()
    assert m.shape == (5000, 7) and m.chunk_bytes == 4096
    with Store(tmp_path / "s") as s:
        assert np.array_equal(s.array("x"), a)
        assert len(s.checksums("x")) == -(-a.nbytes // 4096)


def test_versions_file_names_and_superseded_removed(tmp_path, rng):
    path = _make(tmp_path / "s", {"a": np.arange(10), "b": np.arange(3)})
    assert _data_files(path) == ["arrays/a.1.bin", "arrays/b.1.bin"]
    with Store(path, readonly=False) as s:
        with s.transaction() as txn:
            txn.write_array("a", np.arange(20))
        assert s.version == 2
        assert s.array_meta("a").file == "arrays/a.2.bin" and s.array_meta("a").version == 2
        assert _data_files(path) == ["arrays/a.2.bin", "arrays/b.1.bin"]
        with s.transaction() as txn:
            txn.delete_array("b")
            txn.put("note", "x")
        assert s.version == 3 and not s.has_array("b")
        assert _data_files(path) == ["arrays/a.2.bin"]
        assert np.array_equal(s.array("a"), np.arange(20))
        with s.transaction():
            pass
        assert s.version == 4  # every commit counts, even an empty one


def test_file_names_deterministic(tmp_path, rng):
    arrays = _arrays(rng)
    a = _make(tmp_path / "a", arrays)
    b = _make(tmp_path / "b", arrays)
    assert tree_bytes(a) == tree_bytes(b)
    with Store(a) as sa, Store(b) as sb:
        assert sa.catalog.dump() == sb.catalog.dump()


def test_failed_transaction_leaves_previous_version(tmp_path, rng):
    path = _make(tmp_path / "s", {"a": np.arange(10)})
    before = tree_bytes(path)
    with Store(path, readonly=False) as s:
        with pytest.raises(RuntimeError, match="boom"):
            with s.transaction() as txn:
                txn.write_array("a", np.arange(50))
                txn.write_array("new", np.ones(5))
                w = txn.array_writer("open", np.int32)
                w.append(np.arange(4, dtype=np.int32))  # left open: a .tmp on disk
                raise RuntimeError("boom")
        assert s.version == 1
        assert tree_bytes(path) == before
        assert np.array_equal(s.array("a"), np.arange(10))
    with Store(path) as s:
        assert s.version == 1 and set(s.arrays) == {"a"}


def test_unclosed_writer_fails_commit(tmp_path):
    path = _make(tmp_path / "s", {"a": np.arange(10)})
    before = tree_bytes(path)
    with Store(path, readonly=False) as s:
        with pytest.raises(FormatError, match="was not closed before commit"):
            with s.transaction() as txn:
                txn.array_writer("x", np.int64).append(np.arange(3))
        assert s.version == 1
    assert tree_bytes(path) == before


def test_orphans_removed_user_files_kept(tmp_path):
    path = _make(tmp_path / "s", {"a": np.arange(10)})
    orphans = ["arrays/a.7.bin", "arrays/b.2.bin.tmp", "arrays/deep/c.3.bin", "plans/p.9.bin"]
    keep = ["arrays/notes.txt", "arrays/deep/README", "user.bin", "mine/x.bin", "plans/x.json"]
    for rel in orphans + keep:
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(b"x")
    with Store(path, readonly=False) as s:
        with s.transaction() as txn:
            txn.put("k", 1)
    for rel in orphans:
        assert not (path / rel).exists(), rel
    for rel in keep + ["arrays/a.1.bin"]:
        assert (path / rel).exists(), rel


def test_second_writer_refused_in_process(tmp_path):
    path = _make(tmp_path / "s", {"a": np.arange(10)})
    with Store(path, readonly=False) as s1, Store(path, readonly=False) as s2:
        with s1.transaction() as txn:
            txn.write_array("b", np.arange(3))
            with pytest.raises(StoreLockedError, match="being written by another process: wait"):
                with s2.transaction():
                    pass
        with s2.transaction() as txn:  # free again once s1 committed
            txn.write_array("c", np.arange(4))
        assert s2.version == 3


def test_second_writer_refused_across_processes(tmp_path):
    path = _make(tmp_path / "s", {"a": np.arange(10)})
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from oocstore.store import Store
        with Store({str(path)!r}, readonly=False) as s:
            with s.transaction() as txn:
                print("locked", flush=True)
                sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with Store(path, readonly=False) as s:
            with pytest.raises(StoreLockedError) as ei:
                with s.transaction():
                    pass
            assert isinstance(ei.value, BlockingIOError)
    finally:
        child.communicate("\n", timeout=30)
    assert child.returncode == 0
    with Store(path) as s:
        assert s.version == 2


def test_stale_snapshot_does_not_delete_newer_files(tmp_path):
    """A writer whose snapshot predates another commit must judge orphans (and its new
    version) against the latest catalog."""
    path = _make(tmp_path / "s", {"a": np.arange(10)})
    with Store(path, readonly=False) as old, Store(path, readonly=False) as new:
        with new.transaction() as txn:
            txn.write_array("b", np.arange(5))
        assert old.version == 1  # stale snapshot
        with old.transaction() as txn:
            txn.write_array("c", np.arange(6))
        assert old.version == 3
    with Store(path) as s:
        assert s.version == 3 and set(s.arrays) == {"a", "b", "c"}
        assert np.array_equal(s.array("b"), np.arange(5))


def test_readonly_refuses_transaction(tmp_path):
    path = _make(tmp_path / "s", {"a": np.arange(10)})
    with Store(path) as s:
        with pytest.raises(UsageError, match=r"opened read-only.*readonly=False"):
            with s.transaction():
                pass


def test_many_readers_at_once(tmp_path):
    path = _make(tmp_path / "s", {"a": np.arange(100_000, dtype=np.int64)})
    code = textwrap.dedent(f"""
        import sys
        from oocstore.store import Store
        from oocstore.store.verify import verify_store
        with Store({str(path)!r}) as s:
            print("open", flush=True)
            sys.stdin.readline()  # every reader holds the store open at the same time
            assert verify_store(s) == []
            print(int(s.array("a").sum()), s.version)
        """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        assert p.stdout.readline().strip() == "open"
    with Store(path) as s:  # and this process too
        assert s.array("a")[-1] == 99_999
    outs = [p.communicate("\n", timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs == [[str(sum(range(100_000))), "1"]] * 4


def test_name_collision_refused(tmp_path):
    with pytest.raises(UsageError, match=r"'a/b' and 'a-b' would both be stored in arrays/a-b.1.bin"):
        with Store.create(tmp_path / "s") as s:
            with s.transaction() as txn:
                txn.write_array("a/b", np.arange(3))
                txn.write_array("a-b", np.arange(4))
    assert not (tmp_path / "s").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw, match", [
    (dict(name="bad name"), "must use letters"),
    (dict(name=""), "must use letters"),
    (dict(dtype=np.complex64), "cannot be stored"),
    (dict(subdir="elsewhere"), "is not one of"),
    (dict(subdir="arrays/../.."), "is not one of"),
    (dict(chunk_bytes=0), "positive int"),
])
def test_array_writer_refuses_bad_arguments_early(tmp_path, kw, match):
    args = {"name": "x", "dtype": np.float32, **kw}
    with Store.create(tmp_path / "s") as s:
        with pytest.raises(UsageError, match=match):
            with s.transaction() as txn:
                txn.array_writer(args.pop("name"), args.pop("dtype"), **args)


def test_row_shape_mismatch(tmp_path):
    with Store.create(tmp_path / "s") as s:
        with pytest.raises(FormatError, match=r"rows of shape \(3,\), expected \(4,\)"):
            with s.transaction() as txn:
                txn.array_writer("x", np.float32, (4,)).append(np.zeros((2, 3)))


def test_create_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with Store.create(tmp_path / "s") as s:
            with s.transaction() as txn:
                txn.write_array("a", np.arange(10))
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_create_refuses_existing_and_non_stores(tmp_path):
    path = _make(tmp_path / "s", {"a": np.arange(3)})
    with pytest.raises(StoreExistsError, match="already exists.*overwrite=True"):
        Store.check_new_path(path)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "precious.txt").write_text("x")
    (tmp_path / "file").write_text("x")
    for p in (tmp_path / "user", tmp_path / "file"):
        with pytest.raises(StoreExistsError, match="is not an oocstore store: refusing"):
            Store.check_new_path(p, overwrite=True)
    with pytest.raises(StoreNotFoundError, match="does not exist; create it first"):
        Store.check_new_path(tmp_path / "no" / "s")
    assert (tmp_path / "user" / "precious.txt").exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_overwrite_replaces_whole_store(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(store_mod, "_rename_exchange", lambda a, b: False)
    path = _make(tmp_path / "s", {"a": np.arange(3), "old": np.ones(2)})
    (tmp_path / ".s.partial").mkdir()  # stale staging from a crashed run
    (tmp_path / ".s.partial" / "junk").write_text("x")
    with Store.create(path, overwrite=True) as s:
        with s.transaction() as txn:
            txn.write_array("a", np.arange(7))
    with Store(path) as s:
        assert set(s.arrays) == {"a"} and np.array_equal(s.array("a"), np.arange(7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_missing_things_named(tmp_path):
    path = _make(tmp_path / "s", {"a": np.arange(3)})
    with Store(path) as s:
        with pytest.raises(StoreNotFoundError, match=r"no array 'zz' \(it has: a\)"):
            s.array("zz")
        with pytest.raises(StoreNotFoundError, match="no 'train' split.*--split"):
            s.split("train")
        with pytest.raises(StoreNotFoundError, match="has no graph"):
            s.csc()
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        Store(tmp_path / "nope")
    with pytest.raises(StoreNotFoundError, match="is not a directory"):
        Store(path / "arrays" / "a.1.bin")
    with pytest.raises(StoreNotFoundError, match="not an oocstore store"):
        Store(path / "arrays")


def test_truncated_file_refused_on_read(tmp_path):
    path = _make(tmp_path / "s", {"a": np.arange(10_000)})
    os.truncate(path / "arrays" / "a.1.bin", 100)
    with Store(path) as s:
        with pytest.raises(FormatError, match=r"holds 100 bytes but the catalog needs 80000.*verify"):
            s.array("a")


def test_ingested_store_reads(small_store):
    with Store(small_store) as s:
        indptr, indices = s.csc()
        assert indptr[-1] == s.graph.num_edges == indices.size
        assert s.array("features").shape == (2000, 16)
        assert sum(s.split(k).size for k in s.splits) == 2000


# -- disk full ---------------------------------------------------------------------------

def _fill_disk_after(monkeypatch, nbytes, err=errno.ENOSPC):
    state = {"limit": nbytes, "written": 0}
    real_open = open
    monkeypatch.setattr(files, "open", lambda *a, **k: FullAfter(real_open(*a, **k), state, err),
                        raising=False)
    return state


def _spec():
    return SyntheticSpec(nodes=3000, feat_dim=64, avg_degree=4)  # 750 KiB of features


@pytest.mark.parametrize("limit, victim", [(100_000, "features"), (800_000, "graph-indices")])
def test_disk_full_new_store(tmp_path, monkeypatch, limit, victim):
    _fill_disk_after(monkeypatch, limit)
    with pytest.raises(DiskFullError, match=rf"disk full while writing .*arrays/{victim}\.1\.bin"):
        build_store(tmp_path / "out", synthetic_source(_spec()))
    assert list(tmp_path.iterdir()) == []


def test_disk_full_overwrite_keeps_old_store(tmp_path, monkeypatch):
    path = make_synthetic(tmp_path / "out", nodes=500, seed=1)
    before = tree_bytes(path, skip=())
    _fill_disk_after(monkeypatch, 100_000)
    with pytest.raises(DiskFullError):
        build_store(path, synthetic_source(_spec()), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert tree_bytes(path) == {k: v for k, v in before.items() if not k.startswith("catalog.lmdb")}
    with Store(path) as s:
        assert s.version == 1 and s.meta.source["seed"] == 1


def test_disk_full_in_transaction_keeps_previous_version(tmp_path, monkeypatch, rng):
    path = _make(tmp_path / "s", {"a": np.arange(1000), "b": np.arange(10)})
    before = tree_bytes(path)
    _fill_disk_after(monkeypatch, 50_000)
    with Store(path, readonly=False) as s:
        with pytest.raises(DiskFullError, match=r"arrays/a\.2\.bin.*left as it was") as ei:
            with s.transaction() as txn:
                txn.write_array("a", rng.standard_normal(100_000))
        assert ei.value.errno == errno.ENOSPC
        assert s.version == 1
    assert tree_bytes(path) == before
    monkeypatch.undo()
    with Store(path, readonly=False) as s:  # and the store still takes transactions
        with s.transaction() as txn:
            txn.write_array("a", np.arange(5))
        assert s.version == 2


def test_real_file_size_limit_is_disk_full(tmp_path):
    """A real write failure: RLIMIT_FSIZE makes write(2) fail with EFBIG (SIGXFSZ ignored)."""
    resource = pytest.importorskip("resource")
    if not hasattr(resource, "RLIMIT_FSIZE"):
        pytest.skip("no RLIMIT_FSIZE on this platform")
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        from oocstore.cli import main
        sys.exit(main(["ingest", "synthetic", {str(out)!r}, "--nodes", "20000", "--feat-dim",
                       "64", "--avg-degree", "2", "--quiet"]))
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "disk full while writing" in lines[0] and "features.1.bin" in lines[0]
    assert list(tmp_path.iterdir()) == []
