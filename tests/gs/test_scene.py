import math
import threading

import numpy as np
import pytest

from conftest import make_cameras, make_params
from oocstore.errors import (ChecksumError, FormatError, StoreLockedError, StoreNotFoundError,
                             UsageError)
from oocstore.gs import layout
from oocstore.gs.ply import read_ply
from oocstore.gs.scene import Scene, block_bounds_of, morton_order
from oocstore.store import Store
from oocstore.store.verify import verify_store

P1 = layout.param_width(1)


def test_create_round_trip(small_scene):
    scene, params = small_scene
    assert scene.num_gaussians == 2000 and scene.sh_degree == 1
    assert scene.num_blocks == 8 and scene.block_capacity == math.ceil(256 * 1.25)
    assert scene.block_counts.tolist() == [256] * 7 + [2000 - 7 * 256]
    assert scene.record_bytes == 4 * 3 * P1 and scene.next_id == 2000
    assert len(scene.cameras) == 8 and scene.cameras.width == 64
    ids, rec = scene.read_all()
    assert np.array_equal(ids, np.arange(2000))
    assert np.array_equal(rec[:, :P1], params)
    assert np.all(rec[:, P1:] == 0)


def test_blocks_are_spatially_coherent_and_bounded(small_scene):
    scene, params = small_scene
    bounds = scene.block_bounds
    for b in range(scene.num_blocks):
        ids, rec = scene.read_block(b)
        own = 3 * np.exp(rec[:, layout.LOG_SCALES].max(axis=1, keepdims=True).astype(np.float64))
        means = rec[:, :3].astype(np.float64)
        # each Gaussian's mean +- 3x its largest scale, and no more
        assert np.allclose(bounds[b, 0], (means - own).min(0), atol=1e-5)
        assert np.allclose(bounds[b, 1], (means + own).max(0), atol=1e-5)
        assert np.all(bounds[b, 0] <= means - own) and np.all(bounds[b, 1] >= means + own)
        # never larger than the means' box padded by the block's largest scale
        assert np.all(bounds[b, 0] >= means.min(0) - own.max() - 1e-5)
    # Morton blocks are compact: on average under half the scene's volume (blocks of
    # random Gaussians would each span nearly all of it)
    vol = np.prod(bounds[:, 1] - bounds[:, 0], axis=1)
    assert vol.mean() < np.prod(params[:, :3].max(0) - params[:, :3].min(0)) / 2


def test_morton_order_is_a_permutation_grouping_octants():
    pts = np.array([[0, 0, 0], [1, 1, 1], [0.1, 0, 0], [0.9, 1, 1]], dtype=np.float32)
    order = morton_order(pts)
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    assert set(order[:2].tolist()) == {0, 2}  # the two points near the origin come first


def test_writes_visible_in_process_then_committed(small_scene, tmp_path):
    scene, params = small_scene
    ids, rec = scene.read_block(3)
    with scene.writer() as w:
        rec[:, P1:] = 0.5  # a moment update
        rec[:, 0] += 1.0
        w.write_block(3, ids, rec)
        got_ids, got = scene.read_block(3)
        assert np.array_equal(got, rec) and np.array_equal(got_ids, ids)
        with Scene.open(scene.path, readonly=True) as other:  # another reader: old state
            assert np.array_equal(other.read_block(3)[1][:, :P1], params[ids])
        version = w.commit()
    assert version == scene.version
    with Scene.open(scene.path, readonly=True) as other:
        assert np.array_equal(other.read_block(3)[1], rec)
    assert verify_store(scene.store) == []


def test_close_without_commit_discards(small_scene):
    scene, params = small_scene
    files_before = sorted(p.name for p in (scene.path / "scenes").iterdir())
    w = scene.writer()
    ids, rec = scene.read_block(0)
    w.write_block(0, ids, rec + 1)
    b = w.new_block(w.allocate_ids(2), rec[:2])
    assert scene.num_blocks == 9 and b == 8
    w.close()
    assert scene.num_blocks == 8 and scene.next_id == 2000
    assert np.array_equal(scene.read_block(0)[1], rec)
    assert sorted(p.name for p in (scene.path / "scenes").iterdir()) == files_before


def test_new_free_and_ids_survive_reopen(small_scene):
    scene, params = small_scene
    with scene.writer() as w:
        new_ids = w.allocate_ids(3)
        rec = layout.make_records(params[:3])
        b = w.new_block(new_ids, rec)
        w.free_block(1)
        w.write_block(2, *scene.read_block(2))  # rewritten twice before the commit
        w.write_block(2, *scene.read_block(2))
        w.commit()
    path = scene.path
    scene.close()
    with Scene.open(path) as again:
        assert again.num_blocks == 9 and again.next_id == 2003
        assert again.block_counts[1] == 0 and np.all(np.isinf(again.block_bounds[1]))
        got_ids, got = again.read_block(b)
        assert got_ids.tolist() == [2000, 2001, 2002] and np.array_equal(got, rec)
        assert again.read_block(1)[0].size == 0
        assert again.num_gaussians == 2000 - 256 + 3
        # one data file per live block: superseded and freed files are gone
        assert len(list((path / "scenes").iterdir())) == 8
        assert verify_store(again.store) == []


def test_background_thread_writes(small_scene):
    scene, _ = small_scene
    blocks = {b: scene.read_block(b) for b in range(scene.num_blocks)}
    with scene.writer() as w:
        def work():
            for b, (ids, rec) in blocks.items():
                w.write_block(b, ids, rec * 2)

        t = threading.Thread(target=work, name="oocstore-test-writer")
        t.start()
        for _ in range(20):  # reads see the old or the new block, never a mix
            for b, (ids, rec) in blocks.items():
                got = scene.read_block(b)[1]
                assert np.array_equal(got, rec) or np.array_equal(got, rec * 2)
        t.join()
        w.commit()
    for b, (ids, rec) in blocks.items():
        assert np.array_equal(scene.read_block(b)[1], rec * 2)


def test_fp16_moments(tmp_path):
    params = make_params(300, 0)
    scene = Scene.create(tmp_path / "s", None, params, 0, make_cameras(params), block_size=100,
                         moments="float16")
    with scene:
        assert scene.disk_row_bytes == 8 + 4 * 14 + 2 * 2 * 14
        ids, rec = scene.read_block(0)
        p = 14
        rec[:, p:2 * p] = 0.01
        rec[:, 2 * p:] = 1e-12  # below float16's range unless stored as its square root
        with scene.writer() as w:
            w.write_block(0, ids, rec)
            w.commit()
        _, got = scene.read_block(0)
        assert np.array_equal(got[:, :p], rec[:, :p])  # parameters stay exact
        assert np.allclose(got[:, p:2 * p], 0.01, rtol=1e-3)
        assert np.allclose(got[:, 2 * p:], 1e-12, rtol=5e-3)


def test_export_ply_round_trip(small_scene, tmp_path):
    scene, params = small_scene
    n = scene.export_ply(tmp_path / "out.ply")
    got, deg = read_ply(tmp_path / "out.ply")
    assert n == 2000 and deg == 1 and np.array_equal(got, params)


def test_bad_writes(small_scene):
    scene, _ = small_scene
    ids, rec = scene.read_block(0)
    with scene.writer() as w:
        with pytest.raises(UsageError, match="exceed the block capacity 320"):
            w.write_block(0, np.arange(321), np.zeros((321, rec.shape[1]), np.float32))
        bad = rec.copy()
        bad[5, 7] = np.nan
        with pytest.raises(UsageError, match="block 0: row 5, column 7 is nan"):
            w.write_block(0, ids, bad)
        with pytest.raises(UsageError, match=r"expected \(256, 69\)"):
            w.write_block(0, ids, rec[:, :10])
        with pytest.raises(UsageError, match="block 99 does not exist"):
            w.write_block(99, ids, rec)
        with pytest.raises(UsageError, match="already has an open writer"):
            scene.writer()
        with Scene.open(scene.path) as other, pytest.raises(StoreLockedError, match="another"):
            other.writer()
    with pytest.raises(UsageError, match="is closed"):
        w.write_block(0, ids, rec)


def test_bad_create_and_open(tmp_path):
    params = make_params(10, 1)
    cams = make_cameras(params)
    with pytest.raises(UsageError, match=r"expected \[N, 14\]"):
        Scene.create(tmp_path / "a", None, params, 0, cams)
    with pytest.raises(UsageError, match="block size 0"):
        Scene.create(tmp_path / "a", None, params, 1, cams, block_size=0)
    bad = params.copy()
    bad[3, 1] = np.inf
    with pytest.raises(UsageError, match="row 3, column 1"):
        Scene.create(tmp_path / "a", None, bad, 1, cams)
    assert not (tmp_path / "a").exists()
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        Scene.open(tmp_path / "missing")
    with Store.create(tmp_path / "plain") as st, st.transaction() as txn:
        txn.write_array("x", np.zeros(3))
    with pytest.raises(StoreNotFoundError, match="holds no scene"):
        Scene.open(tmp_path / "plain")


def test_corruption_is_found(small_scene):
    scene, _ = small_scene
    f = sorted((scene.path / "scenes").iterdir())[2]
    data = bytearray(f.read_bytes())
    data[100] ^= 0xFF
    f.write_bytes(bytes(data))
    damage = verify_store(scene.store)
    assert len(damage) == 1 and "checksum mismatch" in str(damage[0])


def test_truncated_block_file(small_scene):
    scene, _ = small_scene
    f = scene.path / scene._files[0]
    f.write_bytes(f.read_bytes()[:4096])
    with pytest.raises(ChecksumError, match=r"block 0 \(file scenes/b00000000\.\d+\.bin\), chunk 0: "
                                            "the file is truncated"):
        scene.read_block(0)


def test_block_bounds_of_empty():
    b = block_bounds_of(np.zeros((0, 69), np.float32))
    assert np.all(b[0] == np.inf) and np.all(b[1] == -np.inf)


def test_block_bounds_beyond_float32_are_infinite_not_a_warning():
    p = make_params(3, 0)
    p[0, layout.LOG_SCALES] = 100.0  # e^100 overflows float32
    p[1, 0] = 3e38
    b = block_bounds_of(p)
    assert b[0].tolist() == [-np.inf] * 3 and b[1].tolist() == [np.inf] * 3


def test_a_late_older_write_never_replaces_a_newer_one(small_scene, monkeypatch):
    import oocstore.gs.blocks as blocks_mod

    scene, _ = small_scene
    ids, rec = scene.read_block(0)
    release = threading.Event()
    real = blocks_mod.encode_rows

    def slow_for_old(i, r, dtype):
        if r[0, 1] == -100:  # the old write: stalls after taking its sequence number
            release.wait(10)
        return real(i, r, dtype)

    monkeypatch.setattr(blocks_mod, "encode_rows", slow_for_old)
    old, new = rec.copy(), rec.copy()
    old[:, 1], new[:, 1] = -100, 100
    with scene.writer() as w:
        t = threading.Thread(target=w.write_block, args=(0, ids, old), name="oocstore-test-old")
        t.start()
        while w._seq == scene.meta.file_seq:  # until the old write holds its number
            pass
        w.write_block(0, ids, new)
        w.commit()
        release.set()
        t.join()
        assert np.all(scene.read_block(0)[1][:, 1] == 100)
        w.commit()
    with Scene.open(scene.path, readonly=True) as again:
        assert np.all(again.read_block(0)[1][:, 1] == 100)
    assert len(list((scene.path / "scenes").iterdir())) == scene.num_blocks
