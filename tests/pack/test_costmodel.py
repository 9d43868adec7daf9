"""The cost model: the probe, the prediction's parts, the split chosen inside a budget."""

from __future__ import annotations

import dataclasses
import math
import re
from types import SimpleNamespace as types_ns

import pytest

from helpers import sampled_store
from oocstore import Store
from oocstore.errors import BudgetError
from oocstore.budget import MemoryBudget
from oocstore.pack import PackOptions, pack_plan
from oocstore.tiers import TieredReader
from oocstore.pack import costmodel
from oocstore.pack.costmodel import Bandwidths, choose_split, predict_epoch, probe
from oocstore.pack.packer import plan_layout
from oocstore.plan import PlanReader
from oocstore.samplers import sample_plan


COSTMODEL_GRAPH = dict(nodes=4000, feat_dim=16, avg_degree=6, seed=0)
COSTMODEL_PLAN = dict(fanouts="5,5", batch_size=256, epochs=1, seed=0, name="p")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return sampled_store(tmp_path_factory.mktemp("cm") / "s", COSTMODEL_PLAN, **COSTMODEL_GRAPH)


def test_probe_reads_a_scratch_file_when_the_features_are_small(store, monkeypatch):
    seen = []
    real = costmodel._seq_probe_file

    def spy(st, nbytes, seq_path=None):
        path, scratch = real(st, nbytes, seq_path)
        seen.append((path, scratch, path.stat().st_size, nbytes))
        return path, scratch

    monkeypatch.setattr(costmodel, "_seq_probe_file", spy)
    with Store(store) as s:
        fbytes = s.array_meta("features").nbytes
        bw = probe(s)
        for v in dataclasses.asdict(bw).values():
            assert v > 0 and math.isfinite(v)
        (path, scratch, size, nbytes), = seen
        # the probe reads up to 8x the feature bytes: more than the feature file holds
        assert nbytes == 8 * fbytes and scratch and size >= nbytes
        assert not path.exists()  # removed afterwards
        seen.clear()
        probe(s, seq_bytes=fbytes // 2)  # the feature file is large enough: no scratch
        (path, scratch, _, _), = seen
        assert not scratch and path == s.file_path(s.array_meta("features"))


def test_probe_prefers_data_at_rest_over_a_fresh_scratch_file(tmp_path, monkeypatch):
    from oocstore.errors import UsageError

    path = sampled_store(tmp_path / "s", COSTMODEL_PLAN, **COSTMODEL_GRAPH)
    with Store(path, readonly=False) as s:
        fbytes = s.array_meta("features").nbytes
        # Nothing of the store's own is large enough: a scratch file.
        assert costmodel._at_rest_file(s, 8 * fbytes) is None
        meta = pack_plan(s, "p", options=PackOptions(max_disk_blowup=8))
        rows = s.file_path(s.array_meta(meta.arrays["rows"]))
        assert rows.stat().st_size > 2 * fbytes
        # An earlier pack's rows, at rest, once the floor allows a file of their size.
        monkeypatch.setattr(costmodel, "PROBE_MIN_AT_REST", 2 * fbytes)
        assert costmodel._at_rest_file(s, 8 * fbytes) == rows
        assert costmodel._seq_probe_file(s, 8 * fbytes) == (rows, False)
        # A file given by the caller wins; a missing one is named.
        other = tmp_path / "old.bin"
        other.write_bytes(bytes(1 << 16))
        assert costmodel._seq_probe_file(s, 8 * fbytes, other) == (other, False)
        assert probe(s, seq_path=other).seq_read_Bps > 0
        with pytest.raises(UsageError, match="probe file .*missing.bin does not exist"):
            probe(s, seq_path=tmp_path / "missing.bin")
        (tmp_path / "empty.bin").write_bytes(b"")
        with pytest.raises(UsageError, match="probe file .*empty.bin holds 0 bytes"):
            probe(s, seq_path=tmp_path / "empty.bin")


def test_pipeline_probe_measures_reads_beside_the_assembly(tmp_path):
    import numpy as np

    meta = types_ns(shape=(1000, 16), row_bytes=64, np_dtype=np.dtype("float32"))
    work = costmodel._AssemblyWork(meta, np.random.default_rng(0), positions=20_000,
                                   batch_rows=4096)
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * (3 << 14))  # 12 MiB: two requests
    seq, rows, crc = costmodel._pipeline_probe(data, data.stat().st_size, work)
    for v in (seq, rows, crc):
        assert math.isfinite(v) and v > 0
    # the reading thread's failure reaches the caller
    with pytest.raises(FileNotFoundError):
        costmodel._pipeline_probe(tmp_path / "gone.bin", 1 << 20, work)


def test_prediction_adds_the_crc_of_every_segment_when_verifying(store):
    with Store(store) as s:
        plan = PlanReader(s, "p")
        layout = plan_layout(s, plan, PackOptions(cpu_cache=0, max_disk_blowup=8))
        bw = Bandwidths(crc_Bps=1e8)
        on = predict_epoch(layout, bw)
        off = predict_epoch(layout, bw, verify=False)
        assert on["ssd_bytes"] > 0
        assert on["ssd_verify_s"] == pytest.approx(on["ssd_bytes"] / 1e8)
        assert off["ssd_verify_s"] == 0 and on["ssd_read_s"] == off["ssd_read_s"]
        assert on["seconds"] > off["seconds"]


def test_prediction_pipelines_each_segment_with_the_next_read(store):
    with Store(store) as s:
        plan = PlanReader(s, "p")
        layout = plan_layout(s, plan, PackOptions(cpu_cache=0, max_disk_blowup=8,
                                                  segment_batches=2))
        inf = float("inf")
        # reads only: they follow one another
        reads = predict_epoch(layout, Bandwidths(seq_read_Bps=1e8, request_s=1e-3,
                                                 gather_rows_per_s=inf, crc_Bps=inf,
                                                 batch_overhead_s=0.0))
        assert reads["seconds"] == pytest.approx(reads["ssd_read_s"])
        # CPU only (reads free): the consumer's work adds up
        work = predict_epoch(layout, Bandwidths(seq_read_Bps=inf, request_s=0.0,
                                                gather_rows_per_s=1e6, crc_Bps=1e9))
        cpu = work["ssd_gather_s"] + work["ssd_verify_s"] + work["overhead_s"] \
            + work["memory_gather_s"]
        assert work["seconds"] == pytest.approx(cpu)
        # both: between the larger and the sum, and the sum without read-ahead
        bw = Bandwidths(seq_read_Bps=2e8, request_s=1e-4, gather_rows_per_s=2e6, crc_Bps=1e9)
        both = predict_epoch(layout, bw)
        io = both["ssd_read_s"]
        cpu = both["ssd_gather_s"] + both["ssd_verify_s"] + both["overhead_s"] \
            + both["memory_gather_s"]
        assert max(io, cpu) <= both["seconds"] < io + cpu
        assert predict_epoch(layout, bw, read_ahead=False)["seconds"] == pytest.approx(io + cpu)


def test_split_fits_the_budget_or_is_refused(store):
    with Store(store) as s:
        plan = PlanReader(s, "p")
        fbytes = s.array_meta("features").nbytes
        floor = plan_layout(s, plan, PackOptions(cpu_cache=0, max_disk_blowup=8)
                            ).min_working_set
        # room for one prefetched batch and a cache of half the rows
        budget = floor["cpu"] + floor["prefetch_bytes"] + fbytes // 2
        opts, pred, cands = choose_split(s, plan, cpu_budget=budget, max_disk_blowup=8)
        assert opts.cpu_cache > 0 and pred["seconds"] == min(c["prediction"]["seconds"]
                                                              for c in cands)
        mws = plan_layout(s, plan, opts).min_working_set
        # the minimum, one prefetched batch and the reader's read-ahead buffer fit, so
        # reads overlap training and assembly
        assert mws["cpu"] + mws["prefetch_bytes"] + mws["largest_segment_bytes"] <= budget
        with pytest.raises(BudgetError, match="cpu budget .* cannot hold one batch") as e:
            choose_split(s, plan, cpu_budget=1024, max_disk_blowup=8)
        # the refusal lists the floor's items, from the working-set module
        assert re.search(r"minimum working set is [0-9.]+ \w+ \(.+ \+ .+\)", str(e.value))
    with Store(store, readonly=False) as w:
        pack_plan(w, "p", name="auto", options=opts, overwrite=True)
    with Store(store) as s, TieredReader(s, "auto", budget=MemoryBudget(cpu=budget)) as r:
        assert r.meta.min_working_set["largest_segment_bytes"] > 0  # rows left on SSD
        assert r.segments.read_ahead


def test_split_drops_segments_the_cap_cannot_fill(store):
    """When the disk-blowup cap packs only a few of the plan's batches (4 epochs of small
    batches, cap 1x), the split compares packing them with no segments at all (the
    segment buffer spent on cache rows), by the mean predicted epoch over what the loader
    cycles, and takes the faster: here no segments."""
    with Store(store, readonly=False) as w:
        if w.get("plan/p4") is None:
            sample_plan(w, fanouts="5,5", batch_size=64, epochs=4, seed=0, name="p4")
    with Store(store) as s:
        plan = PlanReader(s, "p4")
        floor = plan_layout(s, plan, PackOptions(cpu_cache=0, max_disk_blowup=1.0,
                                                 segment_batches=1)).min_working_set
        budget = floor["cpu"] + floor["prefetch_bytes"] + (16 << 10)
        opts, pred, cands = choose_split(s, plan, cpu_budget=budget, max_disk_blowup=1.0,
                                         bw=Bandwidths())
        caps = sorted({c["options"].max_disk_blowup for c in cands})
        assert caps == [0.0, 1.0]
        assert pred["mean_epoch_s"] == min(c["prediction"]["mean_epoch_s"] for c in cands)
        packed = [c for c in cands if c["options"].max_disk_blowup == 1.0]
        one = plan_layout(s, plan, packed[0]["options"])
        assert 0 < int((one.batch_seg >= 0).sum()) < one.batch_seg.size // 4
        assert opts.max_disk_blowup == 0.0  # the few packed batches are not worth a buffer
        assert opts.cpu_cache > max(c["options"].cpu_cache for c in packed)
        # the packed batches are in epoch 0: the later epochs, all base-array reads, are
        # slower, and the mean counts them
        assert packed[0]["prediction"]["seconds"] < packed[0]["prediction"]["mean_epoch_s"]
        lay = plan_layout(s, plan, opts)
        assert lay.packed_segments == 0 and lay.min_working_set["cpu"] <= budget


def test_a_zero_cap_splits_without_segments(store):
    """``max_disk_blowup=0`` (no packed segments) is one candidate, not none: the split
    used to skip every candidate and refuse any budget as too small for one batch."""
    with Store(store) as s:
        plan = PlanReader(s, "p")
        floor = plan_layout(s, plan, PackOptions(cpu_cache=0, max_disk_blowup=0)
                            ).min_working_set
        budget = floor["cpu"] + floor["prefetch_bytes"] + (64 << 10)
        opts, pred, cands = choose_split(s, plan, cpu_budget=budget, max_disk_blowup=0,
                                         bw=Bandwidths())
    assert len(cands) == 1 and opts.max_disk_blowup == 0.0 and opts.cpu_cache > 0
    assert pred["ssd_rows"] == 0


def test_the_split_sizes_the_policys_tables_in(store):
    """A scheduled tier's insert tables are part of the working set: the split for
    ``policy="belady"`` leaves them room (its cache is smaller than static's)."""
    with Store(store) as s:
        plan = PlanReader(s, "p")
        floor = plan_layout(s, plan, PackOptions(cpu_cache=0, max_disk_blowup=0)
                            ).min_working_set
        budget = floor["cpu"] + floor["prefetch_bytes"] + (256 << 10)
        static, _, _ = choose_split(s, plan, cpu_budget=budget, max_disk_blowup=0,
                                    bw=Bandwidths())
        belady, _, _ = choose_split(s, plan, cpu_budget=budget, max_disk_blowup=0,
                                    bw=Bandwidths(), policy="belady")
        assert belady.policy == "belady" and belady.cpu_cache < static.cpu_cache
        mws = plan_layout(s, plan, belady).min_working_set
        assert mws["cpu"] + mws["prefetch_bytes"] <= budget
