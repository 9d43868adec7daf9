"""Bit flips and truncation of every kind of file in a store (feature and graph arrays,
plan files, pack files, the catalog): ``verify`` names the damaged file and chunk."""

from __future__ import annotations

import re

import numpy as np

import pytest

from oocstore import Store
from oocstore.errors import FormatError
from oocstore.store.verify import verify_store

from helpers import flip_bits, run_oocstore


def _damage_and_verify(store, file, original: bytes, pos: int, damage: str):
    """Damage ``file`` of ``store`` (whose bytes are ``original``) at ``pos``: one bit
    flipped (``damage`` "flip") or the file cut there ("truncate"); then what
    ``verify_store`` finds."""
    if damage == "flip":
        flip_bits(file, pos, 0x04)
    else:
        file.write_bytes(original[:pos])
    with Store(store) as s:
        return verify_store(s)


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
            found = _damage_and_verify(store_copy, path, original, pos, damage)
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


def test_every_scene_file_flipped_and_truncated(tmp_path):
    """Block files (one spanning two checksum chunks) and camera arrays of a scene: verify
    names file and chunk; reading the block, or opening the scene for a camera array,
    raises ChecksumError naming them; without verify_reads a flipped block comes back
    as garbage (what the check prevents), a truncated one is refused either way."""
    from oocstore.errors import ChecksumError
    from oocstore.gs.scene import Scene
    from oocstore.gs.synthetic import random_scene

    # SH degree 3 rows are 716 B: block 0 (6,000 rows) spans 2 chunks of 4 MiB.
    random_scene(tmp_path / "s", 8000, 3, block_size=6000, views=4).close()
    path = tmp_path / "s"
    with Scene.open(path, readonly=True) as scene:
        clean = [scene.read_block(b) for b in range(scene.num_blocks)]
        metas = {m.file: (n, m) for n, m in scene.store.arrays.items()}
    assert {n for n, _ in metas.values()} == {"scene/block/00000000", "scene/block/00000001",
                                              "scene/viewmats", "scene/Ks"}
    cases = 0
    for rel, (name, meta) in sorted(metas.items()):
        f = path / rel
        original = f.read_bytes()
        spots = [meta.nbytes // 3, meta.nbytes - 5] if meta.num_chunks > 1 else [meta.nbytes // 2]
        assert len({p // meta.chunk_bytes for p in spots}) == len(spots)  # one per chunk
        for pos in spots:
            chunk = pos // meta.chunk_bytes
            for damage in ("flip", "truncate"):
                found = _damage_and_verify(path, f, original, pos, damage)
                assert [(d.array, d.file, d.chunk) for d in found] == [(name, rel, chunk)], \
                    (rel, damage, [str(d) for d in found])
                if name.startswith("scene/block/"):
                    b = int(name.rsplit("/", 1)[1])
                    detail = "checksum mismatch" if damage == "flip" else "the file is truncated"
                    with Scene.open(path, readonly=True) as scene:
                        with pytest.raises(ChecksumError, match=rf"block {b} \(file {rel}\), "
                                                                rf"chunk {chunk}: {detail}"):
                            scene.read_block(b)
                        other = 1 - b  # the undamaged block still reads
                        assert np.array_equal(scene.read_block(other)[1], clean[other][1])
                    with Scene.open(path, readonly=True, verify_reads=False) as scene:
                        if damage == "flip":
                            ids, rec = scene.read_block(b)
                            assert not (np.array_equal(ids, clean[b][0])
                                        and np.array_equal(rec, clean[b][1]))
                        else:
                            with pytest.raises(ChecksumError, match="truncated"):
                                scene.read_block(b)
                elif damage == "flip":
                    with pytest.raises(ChecksumError, match=rf"camera array '{name}' \(file "
                                                            rf"{rel}\), chunk 0: checksum mismatch"):
                        Scene.open(path, readonly=True)
                    Scene.open(path, readonly=True, verify_reads=False).close()
                else:  # a short camera array cannot be mapped at all
                    with pytest.raises(FormatError, match=rf"array '{name}': file .*{rel} holds "
                                                          rf"{pos} bytes.* truncated"):
                        Scene.open(path, readonly=True, verify_reads=False)
                f.write_bytes(original)
                cases += 1
    assert cases == 10
    with Store(path) as s:
        assert verify_store(s) == []
