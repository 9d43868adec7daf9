"""The automatic split's shortcuts are exact: the lower bound that skips candidates
(:func:`~oocstore.pack.costmodel.split_floor`) never exceeds a candidate's prediction,
the pruned search chooses what the exhaustive one chooses with fewer simulations, and
the Belady kernel's int32 pair heap gives the schedule of the int64 heap it replaced."""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
import pytest

from helpers import sampled_store
from oocstore import Store
from oocstore.pack import PackOptions, costmodel, placement
from oocstore.pack.auto import choose_options
from oocstore.pack.costmodel import Bandwidths, _most_cache, choose_split, split_floor
from oocstore.pack.layout import plan_layout
from oocstore.pack.placement import _heap_pop, _heap_push, hot_order, scheduled_epochs
from oocstore.plan import PlanReader


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Three seeded plans: narrow rows over two epochs, the README demo's shape (small),
    and 1 KiB rows over one epoch (most rows left to the base array)."""
    root = tmp_path_factory.mktemp("prune")
    return {
        "narrow": sampled_store(root / "narrow", dict(fanouts="4,3", batch_size=128, epochs=2,
                                                     seed=1, name="p"),
                                nodes=2000, feat_dim=16, avg_degree=5.0, seed=1),
        "demo": sampled_store(root / "demo", dict(fanouts="5,5", batch_size=256, epochs=2,
                                                 seed=2, name="p"),
                              nodes=40000, feat_dim=16, avg_degree=16.0, seed=2),
        "wide": sampled_store(root / "wide", dict(fanouts="4,3", batch_size=64, epochs=1,
                                                 seed=3, name="p"),
                              nodes=2000, feat_dim=256, avg_degree=5.0, seed=3),
    }


#: Bandwidths: the defaults, and a disk whose row reads are nearly as fast as its
#: segment reads (base-array reads then compete with packing).
FAST_ROWS = Bandwidths(row_read_Bps=500e6, seq_read_Bps=700e6)

# (store, policy, max_disk_blowup, budget: floor + this fraction of the features, bandwidths)
CASES = [
    ("narrow", "static", 4.0, 0.02, Bandwidths()),
    ("narrow", "belady", 1.0, 0.10, FAST_ROWS),
    ("demo", "belady", 5.0, 0.05, Bandwidths()),
    ("demo", "static", 5.0, 0.05, FAST_ROWS),
    ("demo", "s3fifo", 2.0, 0.05, Bandwidths()),
    ("demo", "belady", 0.5, 0.10, Bandwidths()),
    ("wide", "belady", 4.0, 0.02, Bandwidths()),
    ("wide", "sieve", 0.5, 0.50, FAST_ROWS),
    ("wide", "static", 1.0, 0.08, Bandwidths()),
]


def _budget(s, plan, blowup, fraction):
    floor = plan_layout(s, plan, PackOptions(max_disk_blowup=blowup)).min_working_set
    return floor["cpu"] + floor["prefetch_bytes"] + int(s.array_meta("features").nbytes * fraction)


def _split(stores, case, **kw):
    name, policy, blowup, fraction, bw = case
    with Store(stores[name]) as s:
        plan = PlanReader(s, "p")
        budget = _budget(s, plan, blowup, fraction)
        return choose_split(s, plan, cpu_budget=budget, max_disk_blowup=blowup, bw=bw,
                            policy=policy, **kw)


def test_the_floor_is_below_every_candidates_prediction(stores):
    """For every candidate of an exhaustive search (every policy, with and without
    segments, fast and slow row reads), the bound taken at the candidate's own cache size
    is at most its predicted mean epoch, and the cache bound the search uses holds."""
    positive = 0
    for case in CASES:
        name, policy, blowup, fraction, bw = case
        _, _, cands = _split(stores, case, exhaustive=True)
        with Store(stores[name]) as s:
            plan = PlanReader(s, "p")
            budget = _budget(s, plan, blowup, fraction)
            rb = s.array_meta("features").row_bytes
            for c in cands:
                o = c["options"]
                empty = plan_layout(s, plan, dataclasses.replace(o, cpu_cache=0))
                assert o.cpu_cache <= _most_cache(s, plan, empty, budget)
                floor = split_floor(s, plan, bw, cap_rows=empty.cap_rows,
                                    capacity_rows=o.cpu_cache // rb,
                                    gpu_rows=o.gpu_cache // rb)
                assert floor <= c["prediction"]["mean_epoch_s"] * (1 + 1e-12), (case, o)
                positive += floor > 0
    assert positive >= 10  # the bound is not zero everywhere


def test_the_pruned_search_chooses_as_the_exhaustive_one(stores):
    """Same options, same prediction; the candidates it evaluates are the exhaustive
    search's (unchanged), and some are skipped."""
    skipped = 0
    for case in CASES:
        want, want_pred, every = _split(stores, case, exhaustive=True)
        got, got_pred, some = _split(stores, case)
        assert got == want and got_pred == want_pred, case
        by_options = {c["options"]: c["prediction"] for c in every}
        assert all(by_options[c["options"]] == c["prediction"] for c in some)
        skipped += len(every) - len(some)
    assert skipped >= 3


def test_a_gpu_split_is_pruned_exactly(stores):
    with Store(stores["demo"]) as s:
        plan = PlanReader(s, "p")
        budget = _budget(s, plan, 5.0, 0.05)
        gpu = s.array_meta("features").nbytes // 8 + (8 << 20)
        runs = [choose_split(s, plan, cpu_budget=budget, gpu_budget=gpu, max_disk_blowup=5.0,
                             policy="belady", exhaustive=e) for e in (True, False)]
    (want, want_pred, every), (got, got_pred, some) = runs
    assert want.gpu_cache > 0 and got == want and got_pred == want_pred
    assert len(some) < len(every)


@pytest.mark.parametrize("blowup, before, now", [(5.0, 28, 24), (20.0, 19, 12)])
def test_the_demo_split_simulates_fewer_schedules(stores, monkeypatch, blowup, before, now):
    """The README demo's automatic split (both policies compared, the read queue's
    reserve tried first) on a small plan of its shape: the exhaustive search simulates
    the plan for as many cache sizes as the search did when it evaluated every split
    (``before``, counted on that code); the pruned one skips the splits without segments
    (all their cold rows would be row reads), and with a cap that packs every batch at
    any cache size, the rest of the reserve's search once its choice packs every batch."""
    sizes = []

    def counting(kernel, data, offs, ninput, starts, node_tier, capacity, init_ids):
        if capacity:
            sizes.append(int(capacity))
        return scheduled_epochs(kernel, data, offs, ninput, starts, node_tier, capacity, init_ids)

    empties = []

    def laying_out(store, plan, options):
        if not options.cpu_cache:
            empties.append((options.policy, options.segment_batches, options.max_disk_blowup))
        return plan_layout(store, plan, options)

    monkeypatch.setattr(placement, "scheduled_epochs", counting)
    monkeypatch.setattr(costmodel, "plan_layout", laying_out)
    runs = []
    with Store(stores["demo"]) as s:
        plan = PlanReader(s, "p")
        floor = plan_layout(s, plan, PackOptions(max_disk_blowup=5)).min_working_set["cpu"]
        budget = floor + s.array_meta("features").nbytes // 4
        for exhaustive in (True, False):
            sizes.clear()
            empties.clear()
            choice = choose_options(s, plan, cpu_budget=budget, max_disk_blowup=blowup,
                                    policy=None, probe_disk=False, exhaustive=exhaustive)
            runs.append((choice, list(sizes)))
            # each split's layout with no CPU tier serves the reserve's search and the
            # full budget's: made once (2 policies x 5 splits at most)
            assert len(empties) == len(set(empties)) <= 10
    (want, every), (got, some) = runs
    assert got.options == want.options and got.predicted == want.predicted
    assert (len(every), len(some)) == (before, now)
    assert set(some) < set(every)


def test_the_reserve_search_stops_only_when_its_choice_packs_every_batch(stores):
    """``base_reads_only``: ``None`` only where the exhaustive choice packs every batch;
    where it leaves rows to the base array, that choice."""
    stopped = kept = 0
    for case in CASES:
        want, want_pred, every = _split(stores, case, exhaustive=True)
        got = _split(stores, case, base_reads_only=True)
        mws = next(c["min_working_set"] for c in every if c["options"] == want)
        if got is None:
            assert not mws["base_read_bytes"], case
            stopped += 1
        else:
            assert got[:2] == (want, want_pred), case
            kept += bool(mws["base_read_bytes"])
    assert stopped and kept


# -- the Belady kernel against the int64 heap it replaced -------------------------------

_NEVER64 = np.iinfo(np.int64).max


@numba.njit(nogil=True)
def _next_uses_int64(data, offs, ninput, b0, b1, n_nodes):
    """The next-use tables as they were: int64, ``_NEVER64`` for none."""
    total = 0
    for b in range(b0, b1):
        total += ninput[b]
    nxt = np.empty(total, dtype=np.int64)
    first = np.full(n_nodes, _NEVER64, dtype=np.int64)
    p = total
    for b in range(b1 - 1, b0 - 1, -1):
        o = offs[b]
        for i in range(ninput[b] - 1, -1, -1):
            p -= 1
            v = data[o + i]
            nxt[p] = first[v]
            first[v] = b
    return nxt, first


@numba.njit(nogil=True)
def _belady_epoch_int64(data, offs, ninput, b0, b1, pos0, node_tier, capacity, init_ids,
                  hit, ins_pos, ins_slot, ins_count, n_ins):
    """The Belady kernel as it was: a max-heap of int64 keys and values in two arrays."""
    n_nodes = node_tier.shape[0]
    nxt, last = _next_uses_int64(data, offs, ninput, b0, b1, n_nodes)
    total = nxt.shape[0]
    slot_of = np.full(n_nodes, -1, dtype=np.int64)
    node_in = np.full(max(capacity, 1), -1, dtype=np.int64)
    slot_next = np.full(max(capacity, 1), _NEVER64, dtype=np.int64)
    keys = np.empty(total + capacity + 1, dtype=np.int64)
    vals = np.empty(total + capacity + 1, dtype=np.int64)
    size = 0
    used = 0
    for k in range(min(capacity, init_ids.shape[0])):
        v = init_ids[k]
        slot_of[v] = k
        node_in[k] = v
        slot_next[k] = last[v]  # first use in this epoch
        size = _heap_push(keys, vals, size, last[v], k)
        used += 1
    cand_p = np.empty(0, dtype=np.int64)
    p = 0
    for b in range(b0, b1):
        o = offs[b]
        m = ninput[b]
        if cand_p.shape[0] < m:
            cand_p = np.empty(m, dtype=np.int64)
        nc = 0
        p_first = p
        for i in range(m):
            v = data[o + i]
            if node_tier[v] == 0:
                hit[pos0 + p] = -1
            else:
                s = slot_of[v]
                if s >= 0:
                    hit[pos0 + p] = s
                    slot_next[s] = nxt[p]
                    size = _heap_push(keys, vals, size, nxt[p], s)
                else:
                    hit[pos0 + p] = -1
                    cand_p[nc] = p
                    nc += 1
            p += 1
        for c in range(nc):
            q = cand_p[c]
            nu = nxt[q]
            if nu == _NEVER64 or capacity == 0:
                continue
            v = data[o + (q - p_first)]
            if used < capacity:
                s = used
                used += 1
            else:
                while size > 0 and slot_next[vals[0]] != keys[0]:
                    size = _heap_pop(keys, vals, size)
                if size == 0 or keys[0] <= nu:
                    continue
                s = vals[0]
                size = _heap_pop(keys, vals, size)
                slot_of[node_in[s]] = -1
            slot_of[v] = s
            node_in[s] = v
            slot_next[s] = nu
            size = _heap_push(keys, vals, size, nu, s)
            ins_pos[n_ins] = pos0 + q
            ins_slot[n_ins] = s
            n_ins += 1
            ins_count[b] += 1
    return n_ins


@pytest.mark.parametrize("gpu_rows", [0, 400])
@pytest.mark.parametrize("capacity", [1, 60, 2500, 100_000])
def test_the_pair_heap_kernel_gives_the_int64_kernels_schedule(stores, capacity, gpu_rows):
    """Hits, admissions (position and slot) and admissions per batch, bit for bit: the
    eviction ties go as the old heap's comparisons took them."""
    with Store(stores["demo"]) as s:
        plan = PlanReader(s, "p")
        index = np.asarray(plan.index())
        offs, ninput = np.ascontiguousarray(index[:, 0]), np.ascontiguousarray(index[:, 3])
        starts = np.concatenate([[0], np.cumsum(plan.meta.batches_per_epoch)]).astype(np.int64)
        n = s.array_meta("features").shape[0]
        order = hot_order(np.asarray(plan.access_counts()))
        node_tier = np.full(n, 2, np.int8)
        node_tier[order[:gpu_rows]] = 0
        capacity = min(capacity, order.size - gpu_rows)
        for init in (order[gpu_rows:gpu_rows + capacity], order[:0]):
            init = np.ascontiguousarray(init, dtype=np.int64)
            want = scheduled_epochs(_belady_epoch_int64, plan.records, offs, ninput, starts,
                                    node_tier, capacity, init)
            got = scheduled_epochs(placement._belady_epoch, plan.records, offs, ninput, starts,
                                   node_tier, capacity, init)
            for w, g in zip(want, got):
                assert w.dtype == g.dtype and np.array_equal(w, g)
            if init.size == 0:
                assert got[1].size > 0  # rows were admitted


def test_a_plan_too_long_for_int32_batch_indices_is_refused():
    from oocstore.errors import FormatError

    class Huge:
        def __len__(self):
            return placement._NEVER

    with pytest.raises(FormatError, match="int32"):
        scheduled_epochs(placement._belady_epoch, np.zeros(1, np.int32), Huge(),
                         np.zeros(1, np.int64), np.array([0, 1]), np.zeros(1, np.int8), 1,
                         np.zeros(0, np.int64))
