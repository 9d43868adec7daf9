"""The cost model: the probe, the prediction's parts, the split chosen inside a budget."""

from __future__ import annotations

import dataclasses
import math

import pytest

from oocstore import Store
from oocstore.errors import BudgetError
from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.budget import MemoryBudget
from oocstore.pack import PackOptions, pack_plan
from oocstore.tiers import TieredReader
from oocstore.pack import costmodel
from oocstore.pack.costmodel import Bandwidths, choose_split, predict_epoch, probe
from oocstore.pack.packer import plan_layout
from oocstore.plan import PlanReader
from samplers import sample_plan


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cm") / "s"
    build_store(path, synthetic_source(SyntheticSpec(nodes=4000, feat_dim=16, avg_degree=6,
                                                     seed=0)))
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="5,5", batch_size=256, epochs=1, seed=0, name="p")
    return path


def test_probe_reads_a_scratch_file_when_the_features_are_small(store, monkeypatch):
    seen = []
    real = costmodel._seq_probe_file

    def spy(st, nbytes):
        path, scratch = real(st, nbytes)
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


def test_split_fits_the_budget_or_is_refused(store):
    with Store(store) as s:
        plan = PlanReader(s, "p")
        fbytes = s.array_meta("features").nbytes
        floor = plan_layout(s, plan, PackOptions(cpu_cache=0, max_disk_blowup=8)
                            ).min_working_set["cpu"]
        budget = floor + fbytes // 2  # room for a cache of half the rows
        opts, pred, cands = choose_split(s, plan, cpu_budget=budget, max_disk_blowup=8)
        assert opts.cpu_cache > 0 and pred["seconds"] == min(c["prediction"]["seconds"]
                                                              for c in cands)
        mws = plan_layout(s, plan, opts).min_working_set
        # the minimum and the reader's read-ahead buffer fit, so reads overlap assembly
        assert mws["cpu"] + mws["largest_segment_bytes"] <= budget
        with pytest.raises(BudgetError, match="cpu budget .* cannot hold one batch"):
            choose_split(s, plan, cpu_budget=1024, max_disk_blowup=8)
    with Store(store, readonly=False) as w:
        pack_plan(w, "p", name="auto", options=opts, overwrite=True)
    with Store(store) as s, TieredReader(s, "auto", budget=MemoryBudget(cpu=budget)) as r:
        assert r.meta.min_working_set["largest_segment_bytes"] > 0  # rows left on SSD
        assert r.segments.read_ahead
