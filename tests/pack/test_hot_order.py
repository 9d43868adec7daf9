"""The hottest-first node order: the same as a full stable sort, computed once per plan
however many layouts the cost model tries."""

import numpy as np

from oocstore import Store
from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.pack import PackOptions
from oocstore.pack import layout
from oocstore.pack.placement import hot_order, static_placement
from oocstore.plan import PlanReader
from oocstore.samplers import sample_plan


def test_hot_order_equals_full_stable_sort():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 5000):
        counts = rng.integers(0, 4, n)  # many ties and zeros
        full = np.argsort(-counts.astype(np.int64), kind="stable")[:np.count_nonzero(counts)]
        assert np.array_equal(hot_order(counts), full)
        g, c = static_placement(counts, 3, 40)
        assert np.array_equal(np.concatenate([g, c]), full[:43])


def test_layouts_of_one_plan_sort_its_nodes_once(tmp_path, monkeypatch):
    build_store(tmp_path / "s", synthetic_source(SyntheticSpec(nodes=3000, feat_dim=8)))
    calls = []

    def counting(counts):
        calls.append(1)
        return hot_order(counts)

    monkeypatch.setattr(layout, "hot_order", counting)
    with Store(tmp_path / "s", readonly=False) as store:
        sample_plan(store, fanouts="3,3", batch_size=64, epochs=1, seed=0)
        plan = PlanReader(store, "train")
        layouts = [layout.plan_layout(store, plan, PackOptions(cpu_cache=k * 32))
                   for k in (0, 100, 400)]
        assert len(calls) == 1
        assert [lay.cpu_ids.size for lay in layouts] == [0, 100, 400]
        other = PlanReader(store, "train")  # another reader sorts for itself
        layout.plan_layout(store, other, PackOptions(cpu_cache=100 * 32))
        assert len(calls) == 2
        plan.close()
        other.close()
