"""Disk full (ENOSPC) and I/O errors (EIO) while ingesting, sampling and packing, while
ingesting scenes and while a training run checkpoints one: a clean error naming the
file, no visible partial state, temporary files removed, the previous version intact.
Faults are injected at the store's write layer
(``oocstore.store.files.inject_write_fault``) and, where this process may mount one, by a
real size-limited tmpfs."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import numpy as np
import pytest

from helpers import copy_of
from oocstore import Store
from oocstore.errors import DiskFullError
from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.pack import PackOptions, pack_plan
from oocstore.store.files import inject_write_fault
from oocstore.store.verify import verify_store
from oocstore.samplers import sample_plan


def state(path):
    """The committed state and every file under the data directories."""
    with Store(path) as s:
        assert verify_store(s) == []
        dump = s.catalog.dump()
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                   if p.is_file() and "catalog.lmdb" not in p.parts)
    return dump, files


def _check_error(err, code):
    if code == errno.ENOSPC:
        assert isinstance(err, DiskFullError) and "disk full while" in str(err)
    else:
        assert isinstance(err, OSError) and err.errno == code
    assert "left as it was" in str(err)


FAULTS = [  # (errno, bytes written before the failure, where)
    (errno.ENOSPC, 0, "write"), (errno.ENOSPC, 70_000, "write"), (errno.EIO, 30_000, "write"),
    (errno.ENOSPC, 0, "fsync"), (errno.EIO, 0, "fsync"), (errno.ENOSPC, 0, "commit"),
    (errno.EIO, 0, "commit")]


def _fault(code, after, where):
    return inject_write_fault(after, code, at_fsync=where == "fsync", at_commit=where == "commit")


@pytest.mark.parametrize("code, after, where", FAULTS)
def test_ingest(tmp_path, code, after, where):
    spec = SyntheticSpec(nodes=3000, feat_dim=16, avg_degree=4, seed=0)
    out = tmp_path / "new"
    with _fault(code, after, where) as f, pytest.raises(OSError) as ei:
        build_store(out, synthetic_source(spec))
    assert f.fired
    _check_error(ei.value, code)
    assert sorted(os.listdir(tmp_path)) == []  # no store, no .new.partial
    # Replacing an existing store: the old one stays as it was.
    build_store(out, synthetic_source(spec))
    before = state(out)
    spec2 = SyntheticSpec(nodes=3000, feat_dim=16, avg_degree=4, seed=1)
    with _fault(code, after, where), pytest.raises(OSError):
        build_store(out, synthetic_source(spec2), overwrite=True)
    assert state(out) == before and sorted(os.listdir(tmp_path)) == ["new"]


@pytest.mark.parametrize("code, after, where", FAULTS)
@pytest.mark.parametrize("job", ["sample", "pack"])
def test_sample_and_pack(store_copy, code, after, where, job):
    before = state(store_copy)
    with Store(store_copy, readonly=False) as s:
        with _fault(code, after, where) as f, pytest.raises(OSError) as ei:
            if job == "sample":
                sample_plan(s, fanouts="5,5", batch_size=128, epochs=2, seed=3, name="p2")
            else:
                pack_plan(s, "train", name="p2", options=PackOptions(cpu_cache=0,
                                                                    max_disk_blowup=8))
        assert f.fired
        _check_error(ei.value, code)
    after_state = state(store_copy)
    assert after_state[0] == before[0]  # the catalog: exactly the previous version
    leftovers = set(after_state[1]) - set(before[1])
    # The packer's scratch bucket file (*.tmp) is the only thing a failure may leave;
    # the next writer removes it as an orphan.
    assert all(p.endswith(".tmp") for p in leftovers), leftovers
    with Store(store_copy, readonly=False) as s:
        with s.transaction() as txn:
            txn.put("after", 1)
    assert state(store_copy)[1] == before[1]


def _mount_tmpfs(where, size):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True)
    return r.returncode == 0


def test_real_full_filesystem(packed_store, tmp_path):
    """A size-limited tmpfs really fills up while packing (needs root to mount)."""
    mnt = tmp_path / "mnt"
    used = sum(p.stat().st_size for p in packed_store.rglob("*") if p.is_file())
    if not _mount_tmpfs(mnt, used + (256 << 10)):
        pytest.skip("cannot mount a size-limited tmpfs here (needs root): the write-layer "
                    "fault injection above covers ENOSPC instead")
    try:
        out = mnt / "s"
        shutil.copytree(packed_store, out)
        before = state(out)
        with Store(out, readonly=False) as s:
            with pytest.raises(DiskFullError, match=f"disk full while .*{mnt}"):
                for i in range(20):  # until the filesystem is full
                    pack_plan(s, "train", name=f"p{i}",
                              options=PackOptions(cpu_cache=0, max_disk_blowup=8))
        dump, files = state(out)
        assert {k: v for k, v in dump.items() if not k.startswith(("pack/p", "array/pack/p",
                                                                   "sums/pack/p", "meta"))} == \
            {k: v for k, v in before[0].items() if k != "meta"}
        with Store(out, readonly=False) as s:
            with s.transaction() as txn:
                txn.put("after", 1)
            assert not [p for p in out.rglob("*.tmp")]
            assert verify_store(s) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- scenes -------------------------------------------------------------------------------

def _scene_files(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                  if p.is_file() and "catalog.lmdb" not in p.parts)


def _scene_state(path):
    """The committed state, every file, and every Gaussian read back (checksums on)."""
    from oocstore.gs.scene import Scene

    dump, files = state(path)
    with Scene.open(path, readonly=True) as scene:
        ids, rec = scene.read_all()
    return dump, files, ids.tobytes() + rec.tobytes()


@pytest.fixture(scope="module")
def scene_template(tmp_path_factory):
    from oocstore.gs.synthetic import random_scene

    path = tmp_path_factory.mktemp("scene") / "s"
    random_scene(path, 3000, 1, block_size=256, views=4).close()  # 12 blocks of 72 KiB
    return path


@pytest.fixture
def scene_copy(scene_template, tmp_path):
    return copy_of(scene_template, tmp_path / "s")


SCENE_FAULTS = [  # as FAULTS, with the failure inside a later block (72 KiB each)
    (errno.ENOSPC, 0, "write"), (errno.ENOSPC, 200_000, "write"), (errno.EIO, 100_000, "write"),
    (errno.ENOSPC, 0, "fsync"), (errno.EIO, 0, "fsync"), (errno.ENOSPC, 0, "commit"),
    (errno.EIO, 0, "commit")]


@pytest.mark.parametrize("code, after, where", SCENE_FAULTS)
def test_scene_ingest(tmp_path, scene_copy, code, after, where):
    from oocstore.gs.ply import write_ply
    from oocstore.gs.ingest import ingest_scene
    from oocstore.gs.synthetic import random_params

    src = tmp_path / "src.ply"
    write_ply(src, random_params(3000, 1, seed=5), 1)
    for out, overwrite in ((tmp_path / "new", False), (scene_copy, True)):
        before = _scene_state(out) if overwrite else None
        with _fault(code, after, where) as f, pytest.raises(OSError) as ei:
            ingest_scene(src, out, block_size=256, views=4, overwrite=overwrite)
        assert f.fired
        _check_error(ei.value, code)
        # no new scene, no .<name>.partial; a replaced scene exactly as it was
        assert sorted(os.listdir(tmp_path)) == ["s", "src.ply"]
        if overwrite:
            assert _scene_state(out) == before


@pytest.mark.parametrize("code, after, where", SCENE_FAULTS)
def test_scene_writer_commit(scene_copy, code, after, where):
    """Rewrite every block and commit under the fault: nothing of it is visible, its files
    are gone once the writer closes, the scene object is back at the committed state;
    for a failed commit, the same writes commit once the disk is back."""
    from oocstore.gs.scene import Scene

    before = _scene_state(scene_copy)
    with Scene.open(scene_copy) as scene:
        blocks = [scene.read_block(b) for b in range(scene.num_blocks)]
        with scene.writer() as w:
            with _fault(code, after, where) as f, pytest.raises(OSError) as ei:
                for b, (ids, rec) in enumerate(blocks):
                    w.write_block(b, ids, rec + 1)
                w.commit()
            assert f.fired
            _check_error(ei.value, code)
            assert not list(scene_copy.rglob("*.tmp"))
            if where == "commit":  # every write landed: they are still pending
                w.commit()
                assert np.array_equal(scene.read_block(0)[1], blocks[0][1] + 1)
        if where != "commit":  # back to the committed blocks
            assert np.array_equal(scene.read_block(0)[1], blocks[0][1])
    if where == "commit":
        dump, files, _ = _scene_state(scene_copy)
        assert len(files) == len(before[1]) and dump["scene"] != before[0]["scene"]
    else:
        assert _scene_state(scene_copy) == before


@pytest.mark.parametrize("phase, code, after, where", [
    ("steps", errno.ENOSPC, 100_000, "write"), ("steps", errno.EIO, 0, "fsync"),
    ("checkpoint", errno.ENOSPC, 100_000, "write"), ("checkpoint", errno.EIO, 0, "fsync"),
    ("checkpoint", errno.ENOSPC, 0, "commit"), ("checkpoint", errno.EIO, 0, "commit")])
def test_scene_training_checkpoint(scene_copy, phase, code, after, where):
    """A streamed training segment (write-backs mid-run, then the checkpoint) with the
    fault during the steps or during the checkpoint: the error surfaces in the training
    loop; once the streamer closes, the scene is exactly the last checkpoint."""
    from oocstore.gs.scene import Scene
    from oocstore.gs.synthetic import synthetic_step, synthetic_streamer

    before = _scene_state(scene_copy)
    with Scene.open(scene_copy) as scene:
        with synthetic_streamer(scene, steps=8) as store:
            if phase == "steps":
                with _fault(code, after, where) as f, pytest.raises(OSError) as ei:
                    for _ in range(8):
                        synthetic_step(store)
            else:
                for _ in range(8):
                    synthetic_step(store)
                assert store.stats()["bytes_ssd_written"] > 0  # written back before it
                with _fault(code, after, where) as f, pytest.raises(OSError) as ei:
                    store.checkpoint()
            assert f.fired
            _check_error(ei.value, code)
    assert _scene_state(scene_copy) == before
