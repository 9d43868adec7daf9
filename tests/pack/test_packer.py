"""Packing against a plain in-memory oracle: every batch read through the tiers equals
``features[input_nodes]``; the blowup cap and the budgets hold; refusals come up front."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from oocstore import Store
from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.errors import BudgetError, StoreExistsError, StoreNotFoundError
from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.pack import PackOptions, pack_plan
from oocstore.pack.policies import POLICIES
from oocstore.store.verify import verify_store
from oocstore.tiers import TieredReader
from oocstore.samplers import sample_plan


def make_store(path, nodes=3000, feat_dim=16, seed=0, **spec):
    build_store(path, synthetic_source(SyntheticSpec(nodes=nodes, feat_dim=feat_dim, seed=seed,
                                                     **spec)))
    return Store(path, readonly=False)


def read_all_and_compare(store, pack):
    feats = np.asarray(store.array("features"))
    with TieredReader(store, pack) as reader:
        for e in range(reader.num_epochs):
            for b in range(reader.num_batches(e)):
                x = reader.read_batch(e, b)
                np.testing.assert_array_equal(x, feats[reader.plan.input_nodes(e, b)])
        # Whether base-array rows went through native AIO (rows whose pages touch share a
        # request, as the pack's expected amplification assumes) or one read each.
        return {**reader.stats(), "aio": reader.base.use_aio and reader.base.reader.direct}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = make_store(tmp_path_factory.mktemp("pack") / "s")
    sample_plan(s, fanouts="5,5", batch_size=256, epochs=2, seed=1)
    yield s
    s.close()


def test_pack_reads_back_exactly_with_amplification_near_one(store):
    meta = pack_plan(store, options=PackOptions(cpu_cache=3000 * 64 // 10, max_disk_blowup=8),
                     overwrite=True)
    assert meta.packed_batches == meta.total_batches and meta.blowup <= 8
    stats = read_all_and_compare(store, meta.name)
    assert stats["tiers"]["base"]["hits"] == 0
    assert stats["read_amplification"] == pytest.approx(meta.expected_read_amplification)
    assert stats["read_amplification"] < 1.05
    assert stats["hit_rate"]["cpu"] > 0.1  # hot rows are served from memory
    assert verify_store(store) == []


def test_blowup_cap_leaves_the_rest_to_base_reads(store):
    meta = pack_plan(store, name="capped", options=PackOptions(max_disk_blowup=1.0))
    assert meta.blowup <= 1.0
    assert 0 < meta.packed_batches < meta.total_batches
    stats = read_all_and_compare(store, "capped")
    assert stats["tiers"]["base"]["hits"] == meta.stats["fallback_positions"] > 0
    if stats["aio"]:
        assert stats["read_amplification"] == pytest.approx(meta.expected_read_amplification)
    else:  # one read per row: more than the pack expects
        assert stats["read_amplification"] > meta.expected_read_amplification


def _assign_threads(monkeypatch):
    """Small assignment groups (so a small plan has a tail after its packed batches) and
    the names of the threads that ran each group."""
    import threading

    from oocstore.pack import packer

    monkeypatch.setattr(packer, "_ASSIGN_BATCHES", 2)
    seen, real = [], packer._assign

    def recording(*a):
        seen.append(threading.current_thread().name)
        return real(*a)
    monkeypatch.setattr(packer, "_assign", recording)
    return seen


def test_batches_after_the_packed_ones_are_assigned_beside_the_copy(tmp_path, monkeypatch):
    with make_store(tmp_path / "s", nodes=2000) as s:
        sample_plan(s, fanouts="4,2", batch_size=64, epochs=2, seed=2)
        opts = dict(cpu_cache=200 * 64, max_disk_blowup=1.0)
        whole = pack_plan(s, name="main", options=PackOptions(**opts))  # groups of 256
        seen = _assign_threads(monkeypatch)
        split = pack_plan(s, name="split", options=PackOptions(**opts))
        assert 0 < split.packed_batches < split.total_batches - 2
        tail = [n for n in seen if n.startswith("oocstore-pack-assign")]
        assert tail and len(seen) == -(-split.total_batches // 2)
        assert seen[:len(seen) - len(tail)] == ["MainThread"] * (len(seen) - len(tail))
        # The same bytes either way, and every batch reads back exactly.
        assert _pack_file_bytes(s, split) == _pack_file_bytes(s, whole)
        assert split.stats == whole.stats
        assert split.expected_read_amplification == whole.expected_read_amplification
        read_all_and_compare(s, "split")


def test_a_failure_in_the_assignment_thread_fails_the_pack_cleanly(tmp_path, monkeypatch):
    import errno
    import threading

    from oocstore.errors import DiskFullError
    from oocstore.store import files
    from oocstore.tiers.reader import load_pack

    with make_store(tmp_path / "s", nodes=2000) as s:
        sample_plan(s, fanouts="4,2", batch_size=64, epochs=2, seed=2)
        opts = PackOptions(max_disk_blowup=1.0)
        pack_plan(s, name="p", options=opts)
        before = _pack_file_bytes(s, load_pack(s, "p"))
        version = s.version
        _assign_threads(monkeypatch)
        real = files.ArrayFileWriter.write

        def failing(self, data):
            if threading.current_thread().name.startswith("oocstore-pack-assign"):
                files.raise_disk_error(OSError(errno.ENOSPC, "No space left on device"),
                                       self.final_path)
            return real(self, data)
        monkeypatch.setattr(files.ArrayFileWriter, "write", failing)
        with pytest.raises(DiskFullError, match="disk full while writing"):
            pack_plan(s, name="p", options=opts, overwrite=True)
        monkeypatch.undo()
        s.refresh()
        assert s.version == version
        read_all_and_compare(s, "p")  # the previous pack, intact
        assert verify_store(s) == []
        assert _pack_file_bytes(s, load_pack(s, "p")) == before


def test_existing_pack_is_refused_without_overwrite(store):
    pack_plan(store, name="once")
    with pytest.raises(StoreExistsError, match="already has a pack 'once': pass --overwrite"):
        pack_plan(store, name="once")


def test_budget_too_small_is_refused_before_writing(store):
    before = sorted(p.name for p in (store.path / "packs").iterdir())
    version = store.version
    with pytest.raises(BudgetError, match=r"minimum cpu working set of .* > cpu budget 64.00 KiB: "
                                          r"lower cpu_cache.*raise cpu_budget to at least"):
        pack_plan(store, name="small", options=PackOptions(cpu_cache=1 << 20, cpu_budget=64 << 10))
    assert store.get("pack/small") is None and store.version == version
    assert sorted(p.name for p in (store.path / "packs").iterdir()) == before


def test_reader_charges_its_buffers_and_refuses_a_small_budget(store):
    meta = pack_plan(store, name="charged", options=PackOptions(cpu_cache=64 << 10))
    need = meta.min_working_set["cpu"]
    acct = BudgetAccountant(MemoryBudget(cpu=need + (1 << 20)))
    with TieredReader(store, "charged", accountant=acct):
        assert 0 < acct.charged("cpu") <= need + (1 << 20)
    assert acct.charged("cpu") == 0
    with pytest.raises(BudgetError, match="cpu budget"):
        TieredReader(store, "charged", budget=MemoryBudget(cpu=need // 2))


def test_missing_plan_is_named(tmp_path):
    with make_store(tmp_path / "s", nodes=200) as s:
        with pytest.raises(StoreNotFoundError, match="has no plan: create one with `oocstore sample"):
            pack_plan(s)


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nodes=st.integers(50, 600), fanouts=st.sampled_from(["3", "4,2", "2,2,2", "all"]),
       batch=st.integers(1, 200), cache_frac=st.floats(0, 1), blowup=st.sampled_from([0, 0.5, 2, 16]),
       seg=st.sampled_from([None, 1, 3]), seed=st.integers(0, 3),
       policy=st.sampled_from(sorted(POLICIES)))
def test_tiered_reads_equal_the_oracle(tmp_path_factory, nodes, fanouts, batch, cache_frac, blowup,
                                       seg, seed, policy):
    path = tmp_path_factory.mktemp("prop") / "s"
    with make_store(path, nodes=nodes, feat_dim=8, seed=seed, avg_degree=6) as s:
        sample_plan(s, fanouts=fanouts, batch_size=batch, epochs=2, seed=seed)
        row_bytes = 8 * 4
        opts = PackOptions(cpu_cache=int(cache_frac * nodes) * row_bytes, max_disk_blowup=blowup,
                           segment_batches=seg, window_bytes=37 * row_bytes,  # several scans
                           policy=policy)
        meta = pack_plan(s, options=opts)
        assert meta.blowup <= blowup + 1e-9
        assert meta.cpu_rows <= int(cache_frac * nodes)
        acct = BudgetAccountant(MemoryBudget(cpu=meta.min_working_set["cpu"]))
        feats = np.asarray(s.array("features"))
        with TieredReader(s, meta.name, accountant=acct) as reader:
            assert acct.peak("cpu") <= meta.min_working_set["cpu"]
            for e in range(reader.num_epochs):
                for b in range(reader.num_batches(e)):
                    np.testing.assert_array_equal(reader.read_batch(e, b),
                                                  feats[reader.plan.input_nodes(e, b)])
            # Out of order (a resumed run): the scheduled tier replays, still exact.
            last = reader.num_batches(0) - 1
            for e, b in [(0, last), (0, 0), (reader.num_epochs - 1, last // 2), (0, last)]:
                np.testing.assert_array_equal(reader.read_batch(e, b),
                                              feats[reader.plan.input_nodes(e, b)])


DRIVER = textwrap.dedent("""
    import os, signal, sys
    from oocstore import Store
    from oocstore.store.catalog import Catalog
    from oocstore.store.files import ArrayFileWriter
    from oocstore.pack import pack_plan, PackOptions
    where = sys.argv[2]
    if where == "commit":
        Catalog.commit = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    else:
        finish = ArrayFileWriter.finish
        def killing_finish(self):
            finish(self)
            if self.final_path.name.startswith("pack-p-rows"):
                os.kill(os.getpid(), signal.SIGKILL)
        ArrayFileWriter.finish = killing_finish
    with Store(sys.argv[1], readonly=False) as s:
        pack_plan(s, name="p", options=PackOptions(cpu_cache=8192), overwrite=True)
""")


@pytest.mark.parametrize("where", ["rows-written", "commit"])
def test_sigkill_mid_pack_keeps_the_previous_pack(tmp_path, where):
    with make_store(tmp_path / "s", nodes=800) as s:
        sample_plan(s, fanouts="4,4", batch_size=64, epochs=1, seed=0)
        old = pack_plan(s, name="p", options=PackOptions(cpu_cache=0))
        version = s.version
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "s"), where],
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with Store(tmp_path / "s", readonly=False) as s:
        assert s.version == version
        assert s.get("pack/p") == old.to_dict()
        assert verify_store(s) == []
        read_all_and_compare(s, "p")
        leftovers = [p for p in (s.path / "packs").iterdir() if p.name not in
                     {os.path.basename(m.file) for m in s.arrays.values()}]
        assert leftovers  # the killed run left orphans ...
        pack_plan(s, name="q")
        assert not [p for p in (s.path / "packs").iterdir() if p.name not in
                    {os.path.basename(m.file) for m in s.arrays.values()}]  # ... removed now


def test_tight_cap_packs_whole_leading_epochs(store):
    full = pack_plan(store, name="full", options=PackOptions(max_disk_blowup=1000, segment_batches=1))
    one_epoch = full.packed_rows / 2  # two epochs of similar size
    cap = (one_epoch * 1.2) * full.row_bytes / store.array_meta("features").nbytes
    meta = pack_plan(store, name="tight", options=PackOptions(max_disk_blowup=cap, segment_batches=1))
    assert full.packed_epochs == 2 and meta.packed_epochs == 1
    assert meta.blowup <= cap


def test_loader_says_when_it_cycles_fewer_epochs_than_the_plan(store, caplog):
    from oocstore.loader import NodeLoader

    full = pack_plan(store, name="all2", options=PackOptions(max_disk_blowup=1000,
                                                             segment_batches=1))
    cap = (full.packed_rows / 2 * 1.2) * full.row_bytes / store.array_meta("features").nbytes
    pack_plan(store, name="one1", options=PackOptions(max_disk_blowup=cap, segment_batches=1))
    with caplog.at_level("WARNING", logger="oocstore.loader"):
        with NodeLoader(store, pack="one1") as loader:
            assert loader.num_plan_epochs == 1
        assert "holds 1 of plan" in caplog.text and "cycles those 1" in caplog.text
        caplog.clear()
        with NodeLoader(store, pack="all2") as loader:
            assert loader.num_plan_epochs == 2
        assert "cycles" not in caplog.text


def test_pack_cli_manual_auto_and_errors(store, capsys):
    from oocstore.cli import main

    path = str(store.path)
    assert main(["pack", path, "--name", "cli", "--cpu-cache", "64KiB", "--max-disk-blowup", "50",
                 "--quiet"]) == 0
    assert main(["pack", path, "--name", "auto", "--cpu-budget", "4MiB", "--no-probe",
                 "--max-disk-blowup", "50", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["auto_split"] and out["min_working_set"]["cpu"] <= 4 << 20
    assert out["cpu_cache_bytes"] > 0 and out["predicted_epoch_load_s"] > 0
    assert main(["pack", path, "--name", "cli", "--cpu-cache", "64KiB", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --overwrite" in err[0]
    assert main(["pack", path, "--name", "z", "--cpu-cache", "1MiB", "--cpu-budget", "256KiB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget" in err[0] and "raise --cpu-budget to at least" in err[0]
    with pytest.raises(SystemExit) as exc:
        main(["pack", path, "--cpu-cache", "8GB"])
    assert exc.value.code == 2 and "write 8GiB" in capsys.readouterr().err
    assert main(["inspect", path]) == 0
    assert "packs (" in capsys.readouterr().out


def batch_optimal_misses(batches, capacity):
    """Exhaustive minimum misses when the cache may take any of (cache | batch) after
    each batch (rows stay in the staging buffer until the batch is assembled)."""
    from itertools import combinations

    states = {frozenset(): 0}
    for bt in batches:
        nxt = {}
        for cache, misses in states.items():
            m = misses + len(set(bt) - cache)
            pool = sorted(cache | set(bt))
            for k in range(min(capacity, len(pool)) + 1):
                for keep in combinations(pool, k):
                    c = frozenset(keep)
                    nxt[c] = min(nxt.get(c, m), m)
        states = nxt
    return min(states.values())


@settings(max_examples=150, deadline=None)
@given(st.integers(3, 6).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.sets(st.integers(0, n - 1), min_size=1, max_size=3), min_size=1,
                         max_size=5), st.integers(0, 3))))
def test_belady_schedule_is_optimal_for_batches_and_replays_consistently(case):
    from oocstore.pack.placement import belady_schedule

    n, batches, capacity = case
    batches = [sorted(b) for b in batches]
    data = np.concatenate([np.array(b) for b in batches]).astype(np.int32)
    ninput = np.array([len(b) for b in batches])
    offs = np.concatenate([[0], np.cumsum(ninput)[:-1]])
    hit, ins_pos, ins_slot, ins_count = belady_schedule(
        data, offs, ninput, np.array([0, len(batches)]), np.full(n, 2, np.int8), capacity,
        np.zeros(0, np.int64))
    cache, p = {}, 0
    bounds = np.concatenate([[0], np.cumsum(ins_count)])
    for i, bt in enumerate(batches):
        for v in bt:
            if hit[p] >= 0:
                assert cache[hit[p]] == v
            p += 1
        for k in range(bounds[i], bounds[i + 1]):
            assert 0 <= ins_slot[k] < capacity
            cache[ins_slot[k]] = data[ins_pos[k]]
    assert int((hit < 0).sum()) == batch_optimal_misses(batches, capacity)


def test_belady_tier_beats_static_on_disk_reads(store):
    cache = 3000 * 64 // 10
    static = pack_plan(store, name="st", options=PackOptions(cpu_cache=cache, max_disk_blowup=64,
                                                             segment_batches=1))
    belady = pack_plan(store, name="bel", options=PackOptions(cpu_cache=cache, max_disk_blowup=64,
                                                              segment_batches=1, policy="belady"))
    assert belady.policy == "belady" and belady.stats["cpu_inserts"] > 0
    assert belady.packed_rows < static.packed_rows
    s_stats = read_all_and_compare(store, "st")
    b_stats = read_all_and_compare(store, "bel")
    assert b_stats["hit_rate"]["cpu"] > s_stats["hit_rate"]["cpu"]


@pytest.mark.parametrize("policy", ["static", "belady"])
def test_gpu_tier_on_a_device_gathers_there(store, policy):
    import torch

    meta = pack_plan(store, name=f"dev-{policy}", options=PackOptions(
        gpu_cache=300 * 64, cpu_cache=600 * 64, max_disk_blowup=64, policy=policy))
    feats = torch.from_numpy(np.array(store.array("features")))
    acct = BudgetAccountant(MemoryBudget(gpu=meta.min_working_set["gpu"], cpu=None))
    with TieredReader(store, meta.name, device="cpu", gpu_tier_on_device=True,
                      accountant=acct) as reader:
        # the reader's part: the tier and one device batch (the loader charges the rest
        # of the pack's minimum gpu working set: its batches in flight)
        mws = meta.min_working_set
        assert acct.charged("gpu") == mws["gpu_tier_bytes"] + mws["staging_bytes"] < mws["gpu"]
        for b in range(reader.num_batches(0)):
            x = reader.read_batch_tensor(0, b)
            ids = torch.from_numpy(reader.plan.input_nodes(0, b))
            assert torch.equal(x, feats[ids])
        assert reader.stats()["tiers"]["gpu"]["hits"] > 0
    with pytest.raises(BudgetError, match="gpu budget"):
        TieredReader(store, meta.name, device="cpu", gpu_tier_on_device=True,
                     budget=MemoryBudget(gpu=mws["gpu_tier_bytes"] + mws["staging_bytes"] - 1))


@pytest.mark.gpu
def test_gpu_tier_on_cuda(store):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    meta = pack_plan(store, name="cuda", options=PackOptions(gpu_cache=300 * 64, cpu_cache=600 * 64,
                                                             max_disk_blowup=64), overwrite=True)
    feats = torch.from_numpy(np.array(store.array("features"))).cuda()
    with TieredReader(store, meta.name, device="cuda") as reader:
        for b in range(reader.num_batches(0)):
            x = reader.read_batch_tensor(0, b)
            assert x.is_cuda
            assert torch.equal(x, feats[torch.from_numpy(reader.plan.input_nodes(0, b)).cuda()])


def _pack_file_bytes(store, meta):
    return {part: store.file_path(store.array_meta(arr)).read_bytes()
            for part, arr in meta.arrays.items()}


@pytest.mark.parametrize("scan_bytes", [None, 64 * 97])  # one base chunk, or many
def test_bucketed_copy_writes_the_same_files_as_one_window(tmp_path, monkeypatch, scan_bytes):
    from oocstore.pack import copy

    if scan_bytes:
        monkeypatch.setattr(copy, "_SCAN_BYTES", scan_bytes)
    with make_store(tmp_path / "s", nodes=2500) as s:
        sample_plan(s, fanouts="5,3", batch_size=100, epochs=2, seed=3)
        opts = dict(cpu_cache=300 * 64, gpu_cache=64 * 64, max_disk_blowup=6)
        one = pack_plan(s, name="one", options=PackOptions(window_bytes=1 << 30, **opts))
        assert one.stats["base_scans"] == 1
        expected = _pack_file_bytes(s, one)
        rows = one.packed_rows + one.cpu_rows + one.gpu_rows
        # Buffers of 4 rows (2-row windows: thousands of buckets), a few rows, an odd
        # size, and one row short of everything.
        for window_rows in (8, 37, 1001, rows - 1):
            name = f"w{window_rows}"
            meta = pack_plan(s, name=name, options=PackOptions(window_bytes=window_rows * 64,
                                                               copy="buckets", **opts))
            assert meta.stats["base_scans"] == 1
            got = _pack_file_bytes(s, meta)
            assert got.keys() == expected.keys()
            for part in expected:
                assert got[part] == expected[part], (window_rows, part)
                assert s.checksums(meta.arrays[part]) == s.checksums(one.arrays[part])
        # One scan per window instead of buckets: the same bytes again.
        for window_rows in (37, rows - 1):
            meta = pack_plan(s, name=f"r{window_rows}", options=PackOptions(
                window_bytes=window_rows * 64, copy="rescans", **opts))
            assert meta.stats["base_scans"] == -(-rows // window_rows)
            got = _pack_file_bytes(s, meta)
            for part in expected:
                assert got[part] == expected[part], (window_rows, part)
        # Several passes, each keeping its buckets within a third of the output (as if
        # the page cache held that much without writeback): the same bytes again.
        monkeypatch.setattr(copy, "writeback_free_bytes", lambda: rows * 64 // 3)
        for window_rows in (8, 1001):
            meta = pack_plan(s, name=f"p{window_rows}", options=PackOptions(
                window_bytes=window_rows * 64, copy="buckets", **opts))
            assert meta.stats["base_scans"] >= 3
            got = _pack_file_bytes(s, meta)
            for part in expected:
                assert got[part] == expected[part], (window_rows, part)
        assert not list((s.path / "packs").glob("copy-buckets-*"))  # removed when done
        read_all_and_compare(s, "w37")
        read_all_and_compare(s, "p8")


def test_bucket_passes_trade_base_scans_against_writeback():
    from oocstore.pack.copy import WRITE_COST, bucket_passes

    # 6 windows of 100 rows of 10 bytes, each touching both of two 50-row chunks.
    offsets = np.tile(np.array([0, 50, 100]), (6, 1))
    base = 100 * 10
    one, c1 = bucket_passes(offsets, 50, 10, 100, pass_bytes=0)
    assert one == [(0, 6)] and c1 == base + int(5000 * (1 + WRITE_COST))
    assert bucket_passes(offsets, 50, 10, 100, pass_bytes=10 ** 6) == ([(0, 6)], base)
    passes, c = bucket_passes(offsets, 50, 10, 100, pass_bytes=2000)
    assert passes == [(0, 3), (3, 6)] and c == 2 * base  # two scans, buckets of 2000 B
    # A base array far larger than the buckets: one pass, writeback and all.
    big = np.tile(np.array([0, 50, 100]), (6, 1))
    assert bucket_passes(big, 50, 10, 100_000, pass_bytes=2000)[0] == [(0, 6)]


BUCKET_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from oocstore import Store
    from oocstore.pack import copy, pack_plan, PackOptions
    def killing_place(*a):  # killed while windows are assembled from the buckets
        os.kill(os.getpid(), signal.SIGKILL)
    copy._place_rows = killing_place
    with Store(sys.argv[1], readonly=False) as s:
        pack_plan(s, name="p", options=PackOptions(window_bytes=50 * 64), overwrite=True)
""")


def test_sigkill_mid_copy_leaves_buckets_that_the_next_transaction_removes(tmp_path):
    from oocstore.tiers.reader import load_pack

    with make_store(tmp_path / "s", nodes=800) as s:
        sample_plan(s, fanouts="4,4", batch_size=64, epochs=1, seed=0)
        old = pack_plan(s, name="p")
        expected = _pack_file_bytes(s, old)
    proc = subprocess.run([sys.executable, "-c", BUCKET_DRIVER, str(tmp_path / "s")],
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert list((tmp_path / "s" / "packs").glob("copy-buckets-*.tmp"))  # the crash left one
    with Store(tmp_path / "s", readonly=False) as s:
        assert s.get("pack/p") == old.to_dict()
        pack_plan(s, name="q", options=PackOptions(window_bytes=50 * 64))
        assert not list((s.path / "packs").glob("copy-buckets-*"))
        assert _pack_file_bytes(s, load_pack(s, "q")) == expected
        assert verify_store(s) == []


def test_segments_are_sized_to_the_cpu_budget(tmp_path):
    """Given a cpu budget and no segment length, the packer passes over segment lengths
    whose buffer would not fit (here the cap would choose long segments that cover the
    whole plan): it packs shorter ones inside the budget, reads back exactly, and leaves
    the rest to base-array reads, instead of refusing the pack."""
    from oocstore.pack.packer import plan_layout
    from oocstore.plan import PlanReader

    s = make_store(tmp_path / "s", nodes=4000, avg_degree=6)
    sample_plan(s, fanouts="5,5", batch_size=256, epochs=1, seed=0, name="p")
    plan = PlanReader(s, "p")
    free = plan_layout(s, plan, PackOptions(max_disk_blowup=2.0))
    one = plan_layout(s, plan, PackOptions(max_disk_blowup=2.0, segment_batches=1))
    assert free.segment_batches > 1  # longer segments cover more under the cap
    budget = one.min_working_set["cpu"]
    assert free.min_working_set["cpu"] > budget
    sized = plan_layout(s, plan, PackOptions(max_disk_blowup=2.0, cpu_budget=budget))
    assert sized.segment_batches < free.segment_batches
    assert sized.min_working_set["cpu"] <= budget
    meta = pack_plan(s, "p", name="sized", options=PackOptions(max_disk_blowup=2.0,
                                                               cpu_budget=budget))
    assert meta.min_working_set["cpu"] <= budget and 0 < meta.packed_batches < meta.total_batches
    read_all_and_compare(s, "sized")
    with pytest.raises(BudgetError, match="minimum cpu working set"):
        pack_plan(s, "p", name="tiny", options=PackOptions(max_disk_blowup=2.0,
                                                           cpu_budget=budget // 4))
    s.close()
