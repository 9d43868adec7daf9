import os

import numpy as np
import pytest

from oocstore.store import Store
from oocstore.store.verify import Damage, total_bytes, verify_store

from helpers import flip_bits, run_oocstore, tree_bytes


def _chunked_store(path, rng):
    """Arrays with 8 KiB checksum chunks, so damage can land in a chosen chunk."""
    with Store.create(path) as s:
        with s.transaction() as txn:
            w = txn.array_writer("x", np.float32, (10,), chunk_bytes=8192)
            w.append(rng.standard_normal((1000, 10)).astype(np.float32))  # 40000 B: 5 chunks
            w.close()
            txn.write_array("y", np.arange(100))
    return path


def _flip(path, offset):
    flip_bits(path, offset, 0x40)


def test_intact(tmp_path, rng):
    path = _chunked_store(tmp_path / "s", rng)
    seen = []
    with Store(path) as s:
        assert verify_store(s, progress=seen.append) == []
        assert sum(seen) == total_bytes(s) == 40000 + 800


@pytest.mark.parametrize("offset, chunk", [(0, 0), (8192 * 2 + 5, 2), (39_999, 4)])
def test_flipped_byte_names_array_and_chunk(tmp_path, rng, offset, chunk):
    path = _chunked_store(tmp_path / "s", rng)
    _flip(path / "arrays" / "x.1.bin", offset)
    with Store(path) as s:
        damage = verify_store(s)
    assert damage == [Damage("x", "arrays/x.1.bin", chunk, damage[0].detail)]
    assert "checksum mismatch" in damage[0].detail
    assert f"array 'x' (arrays/x.1.bin), chunk {chunk}: checksum mismatch" in str(damage[0])


def test_flip_in_padding_is_harmless(tmp_path, rng):
    path = _chunked_store(tmp_path / "s", rng)
    _flip(path / "arrays" / "x.1.bin", 40_100)  # past the data, inside the 4 KiB padding
    with Store(path) as s:
        assert verify_store(s) == []


def test_truncated_file_named(tmp_path, rng):
    path = _chunked_store(tmp_path / "s", rng)
    os.truncate(path / "arrays" / "x.1.bin", 20_000)
    with Store(path) as s:
        damage = verify_store(s)
    assert [(d.array, d.chunk) for d in damage] == [("x", 2)]
    assert "truncated: 20000 bytes, needs 40000" in damage[0].detail


def test_missing_file_named(tmp_path, rng):
    path = _chunked_store(tmp_path / "s", rng)
    (path / "arrays" / "y.1.bin").unlink()
    with Store(path) as s:
        damage = verify_store(s)
    assert [(d.array, d.chunk, d.detail) for d in damage] == [("y", None, "file is missing")]
    assert "array 'y' (arrays/y.1.bin), file: file is missing" == str(damage[0])


def test_checksum_list_mismatch_named(tmp_path, rng):
    path = _chunked_store(tmp_path / "s", rng)
    with Store(path, readonly=False) as s:
        with s.transaction() as txn:
            txn.put("sums/x", s.checksums("x")[:2])
        assert [(d.array, d.detail) for d in verify_store(s)] == [
            ("x", "catalog lists 2 checksums for 5 chunks")]


def test_broken_graph_structure(tmp_path):
    with Store.create(tmp_path / "s") as s:
        with s.transaction() as txn:
            txn.write_array("graph/indptr", np.array([0, 1, 2], dtype=np.int64))
            txn.write_array("graph/indices", np.array([1, 7], dtype=np.int32))
            txn.put("graph", {"num_nodes": 2, "num_edges": 2})
    with Store(tmp_path / "s") as s:
        damage = verify_store(s)
    assert [d.array for d in damage] == ["graph/indices"]
    assert "outside 0..1" in damage[0].detail


def test_ingested_store_verifies(small_store):
    with Store(small_store) as s:
        assert verify_store(s) == []


def test_cli_verify_exit_codes(small_store):
    r = run_oocstore("verify", str(small_store), "--quiet")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.strip().endswith("OK (7 arrays, version 1)")
    with Store(small_store) as s:
        meta = s.array_meta("features")
    _flip(small_store / meta.file, 12_345)
    (small_store / "arrays" / "labels.1.bin").unlink()
    r = run_oocstore("verify", str(small_store), "--quiet")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3
    assert "array 'features' (arrays/features.1.bin), chunk 0: checksum mismatch" in lines[0]
    assert "array 'labels' (arrays/labels.1.bin), file: file is missing" in lines[1]
    assert "2 damaged chunk(s) or file(s)" in lines[2] and "re-create it" in lines[2]


def test_same_command_same_seed_identical_stores(tmp_path):
    def ingest(name, seed):
        return run_oocstore("ingest", "synthetic", str(tmp_path / name), "--nodes", "3000",
                            "--feat-dim", "24", "--avg-degree", "6", "--seed", str(seed), "--quiet")

    for name in ("a", "b"):
        r = ingest(name, 7)
        assert r.returncode == 0, r.stderr
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert sorted(a) == sorted(b) and a == b
    assert "arrays/features.1.bin" in a
    with Store(tmp_path / "a") as sa, Store(tmp_path / "b") as sb:
        assert sa.catalog.dump() == sb.catalog.dump()
    r = ingest("c", 8)
    assert r.returncode == 0
    assert tree_bytes(tmp_path / "c")["arrays/features.1.bin"] != a["arrays/features.1.bin"]
