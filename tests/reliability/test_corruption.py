"""Bit flips and truncation of every kind of file in a store (feature and graph arrays,
plan files, pack files, the catalog): ``verify`` names the damaged file and chunk."""

from __future__ import annotations

import re

import pytest

from oocstore import Store
from oocstore.errors import FormatError
from oocstore.store.verify import verify_store

from helpers import run_oocstore


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def test_every_data_file_flipped_and_truncated(store_copy):
    with Store(store_copy) as s:
        metas = {m.file: (n, m) for n, m in s.arrays.items()}
    kinds = {rel.split("/")[0] for rel in metas}
    assert kinds == {"arrays", "plans", "packs"}
    tried = 0
    for rel, (name, meta) in sorted(metas.items()):
        if meta.nbytes == 0:
            continue
        path = store_copy / rel
        original = path.read_bytes()
        pos = meta.nbytes * 2 // 3
        for damage in ("flip", "truncate"):
            if damage == "flip":
                _flip(path, pos)
            else:
                path.write_bytes(original[:pos])
            with Store(store_copy) as s:
                found = verify_store(s)
            chunk = pos // meta.chunk_bytes
            assert [(d.array, d.file, d.chunk) for d in found] == [(name, rel, chunk)], \
                (rel, damage, [str(d) for d in found])
            assert ("truncated" if damage == "truncate" else "checksum mismatch") in found[0].detail
            path.write_bytes(original)
            tried += 1
    assert tried >= 15
    with Store(store_copy) as s:
        assert verify_store(s) == []


def test_catalog_value_damage_is_named(store_copy):
    mdb = store_copy / "catalog.lmdb" / "data.mdb"
    raw = mdb.read_bytes()
    # A digit inside a committed value (every copy: LMDB keeps old pages of earlier
    # commits too): still valid JSON, so only the catalog checksum sees it.
    data = bytearray(raw)
    for m in re.finditer(rb'"feat_dim":(\d)', raw):
        data[m.start(1)] = ord("7") if raw[m.start(1)] != ord("7") else ord("3")
    mdb.write_bytes(bytes(data))
    with Store(store_copy) as s:
        found = verify_store(s)
    assert any(d.array == "" and d.file == "catalog.lmdb/data.mdb" and
               "checksum mismatch" in d.detail for d in found), [str(d) for d in found]
    r = run_oocstore("verify", str(store_copy), "--quiet")
    assert r.returncode == 1 and "catalog (catalog.lmdb/data.mdb): checksum mismatch" in r.stderr


def test_catalog_truncated_or_not_json(store_copy):
    mdb = store_copy / "catalog.lmdb" / "data.mdb"
    raw = mdb.read_bytes()
    assert b'"dtype":"float32"' in raw
    mdb.write_bytes(raw.replace(b'"dtype":"float32"', b'"dtype"~"float32"'))  # every copy
    with pytest.raises(FormatError, match=r"catalog entry '.*' in .*catalog.lmdb is not "
                                          "valid JSON"):
        with Store(store_copy) as s:
            verify_store(s)
    mdb.write_bytes(raw[:8192])  # truncated mid-file: LMDB refuses it cleanly
    r = run_oocstore("verify", str(store_copy), "--quiet")
    assert r.returncode == 2 and "catalog" in r.stderr and "Traceback" not in r.stderr, r.stderr
