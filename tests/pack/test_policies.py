"""The CPU-tier policy registry: S3-FIFO and SIEVE simulated offline equal plain
reference implementations hit for hit and admission for admission, their schedules
replay (every hit finds its node in its slot), and none serves more positions than
Belady's schedule from a cache of the same size."""

from collections import OrderedDict, deque

import numpy as np
import pytest

from oocstore.pack.policies import POLICIES, CachePolicy

GPU, SSD = 0, 2


def random_trace(rng, nodes=60, epochs=2, batches=8, max_batch=14):
    """A plan-like trace: batches of distinct nodes (skewed popularity), some nodes in the
    GPU tier, and the static epoch-start choice (hottest non-GPU nodes first)."""
    weights = 1.0 / np.arange(1, nodes + 1) ** 1.1
    weights /= weights.sum()
    batches_all = [rng.choice(nodes, size=int(rng.integers(1, min(max_batch, nodes) + 1)), replace=False,
                              p=weights) for _ in range(epochs * batches)]
    data = np.concatenate(batches_all).astype(np.int64)
    ninput = np.array([b.size for b in batches_all], dtype=np.int64)
    offs = np.concatenate([[0], np.cumsum(ninput)[:-1]]).astype(np.int64)
    epoch_starts = np.arange(0, epochs * batches + 1, batches, dtype=np.int64)
    node_tier = np.full(nodes, SSD, dtype=np.int8)
    node_tier[rng.choice(nodes, size=int(rng.integers(0, 6)), replace=False)] = GPU
    counts = np.bincount(data, minlength=nodes)
    counts[node_tier == GPU] = 0
    hot = np.argsort(-counts, kind="stable")[:np.count_nonzero(counts)]
    return data, offs, ninput, epoch_starts, node_tier, hot


def ref_s3fifo(capacity):
    """S3-FIFO with deques and an ordered dict (GraphBolt's queue sizes)."""
    small_target, ghost_cap = capacity // 10, capacity - capacity // 10
    st = {}

    def start(init):
        st.update(slot_of={}, node_in={}, freq={}, small=deque(), main=deque(),
                  ghost=OrderedDict(), used=len(init))
        for k in reversed(range(len(init))):
            st["slot_of"][init[k]], st["node_in"][k], st["freq"][k] = k, init[k], 0
            st["main"].append(k)

    def hit(s):
        st["freq"][s] = min(st["freq"][s] + 1, 3)

    def evict():
        small, main, freq = st["small"], st["main"], st["freq"]
        while len(small) > small_target:
            s = small.popleft()
            if freq[s] > 0:
                freq[s] = 0
                main.append(s)
                continue
            v = st["node_in"][s]
            del st["slot_of"][v]
            if ghost_cap > 0:
                if len(st["ghost"]) >= ghost_cap:
                    st["ghost"].popitem(last=False)
                st["ghost"][v] = None
            return s
        while True:
            s = main.popleft()
            if freq[s] > 0:
                freq[s] -= 1
                main.append(s)
                continue
            del st["slot_of"][st["node_in"][s]]
            return s

    def admit(v):
        if st["used"] < capacity:
            s = st["used"]
            st["used"] += 1
        else:
            s = evict()
        if v in st["ghost"]:
            del st["ghost"][v]
            st["main"].append(s)
        else:
            st["small"].append(s)
        st["slot_of"][v], st["node_in"][s], st["freq"][s] = s, v, 0
        return s

    return st, start, hit, admit


def ref_sieve(capacity):
    """SIEVE with a Python list (oldest first) and an index for the hand."""
    st = {}

    def start(init):
        st.update(slot_of={}, node_in={}, visited={}, queue=[], hand=None, used=len(init))
        for k in reversed(range(len(init))):  # coldest oldest
            st["slot_of"][init[k]], st["node_in"][k], st["visited"][k] = k, init[k], False
            st["queue"].append(k)

    def hit(s):
        st["visited"][s] = True

    def admit(v):
        if st["used"] < capacity:
            s = st["used"]
            st["used"] += 1
        else:
            q = st["queue"]
            i = 0 if st["hand"] is None else st["hand"]
            while st["visited"][q[i]]:
                st["visited"][q[i]] = False
                i = i + 1 if i + 1 < len(q) else 0
            s = q.pop(i)
            st["hand"] = i if i < len(q) else None
            del st["slot_of"][st["node_in"][s]]
        st["queue"].append(s)
        st["slot_of"][v], st["node_in"][s], st["visited"][s] = s, v, False
        return s

    return st, start, hit, admit


REFERENCES = {"s3fifo": ref_s3fifo, "sieve": ref_sieve}


def run_reference(make, trace, capacity):
    """``(hit per position, admissions (position, slot))`` of a reference policy with the
    packer's batch semantics: hits from the cache as the batch starts, then the misses
    admitted in order; the cache restarts from the static choice every epoch."""
    data, offs, ninput, epoch_starts, node_tier, hot = trace
    st, start, hit, admit = make(capacity)
    hits, inserts, pos = [], [], 0
    for e in range(len(epoch_starts) - 1):
        start([int(v) for v in hot[:capacity]])
        for b in range(int(epoch_starts[e]), int(epoch_starts[e + 1])):
            misses = []
            for v in data[offs[b]:offs[b] + ninput[b]]:
                s = st["slot_of"].get(int(v)) if node_tier[v] != GPU else None
                hits.append(-1 if s is None else s)
                if s is not None:
                    hit(s)
                elif node_tier[v] != GPU:
                    misses.append(pos)
                pos += 1
            for p in misses if capacity else []:
                inserts.append((p, admit(int(data[p]))))
    return np.array(hits), np.array(inserts, dtype=np.int64).reshape(-1, 2)


def schedule_of(name, trace, capacity):
    data, offs, ninput, epoch_starts, node_tier, hot = trace
    return POLICIES[name].schedule(data, offs, ninput, epoch_starts, node_tier, capacity,
                                   hot[:capacity])


def replay(trace, sched, capacity):
    """What the loader does with a schedule: every hit must find its node in its slot."""
    data, offs, ninput, epoch_starts, node_tier, hot = trace
    starts = np.concatenate([[0], np.cumsum(ninput)])
    i0 = np.concatenate([[0], np.cumsum(sched.ins_count)])
    for e in range(len(epoch_starts) - 1):
        cache = np.full(max(capacity, 1), -1, dtype=np.int64)
        cache[:min(capacity, hot.size)] = hot[:capacity]
        for b in range(int(epoch_starts[e]), int(epoch_starts[e + 1])):
            for p in range(starts[b], starts[b + 1]):
                if sched.hit[p] >= 0:
                    assert cache[sched.hit[p]] == data[p], (e, b, p)
            for p, s in zip(sched.ins_pos[i0[b]:i0[b + 1]], sched.ins_slot[i0[b]:i0[b + 1]]):
                assert starts[b] <= p < starts[b + 1] and sched.hit[p] < 0
                cache[s] = data[p]


def test_registry_entries_follow_the_protocol():
    assert sorted(POLICIES) == ["belady", "s3fifo", "sieve", "static"]
    for name, policy in POLICIES.items():
        assert isinstance(policy, CachePolicy) and policy.name == name
    assert not POLICIES["static"].restarts_each_epoch
    assert all(POLICIES[n].restarts_each_epoch for n in ("belady", "s3fifo", "sieve"))
    trace = random_trace(np.random.default_rng(0))
    assert schedule_of("static", trace, 10) is None


@pytest.mark.parametrize("name", ["s3fifo", "sieve"])
def test_online_policy_equals_its_reference_and_never_beats_belady(name):
    rng = np.random.default_rng(7)
    for trial in range(60):
        trace = random_trace(rng, nodes=int(rng.integers(5, 80)))
        capacity = int(rng.integers(0, 30))
        sched = schedule_of(name, trace, capacity)
        hits, inserts = run_reference(REFERENCES[name], trace, capacity)
        np.testing.assert_array_equal(sched.hit, hits, err_msg=f"trial {trial}")
        np.testing.assert_array_equal(np.stack([sched.ins_pos, sched.ins_slot], axis=1),
                                      inserts, err_msg=f"trial {trial}")
        assert sched.ins_count.sum() == len(inserts)
        replay(trace, sched, capacity)
        belady = schedule_of("belady", trace, capacity)
        replay(trace, belady, capacity)
        assert np.count_nonzero(sched.hit >= 0) <= np.count_nonzero(belady.hit >= 0), trial


@pytest.mark.parametrize("name", ["s3fifo", "sieve"])
def test_a_pack_with_an_online_policy_reads_exactly(tmp_path, name):
    """The loader replays an S3-FIFO or SIEVE schedule as it does Belady's: every batch
    equals the oracle, in order and out of order, and the CPU tier serves some rows."""
    from oocstore import Store
    from oocstore.ingest import build_store
    from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
    from oocstore.pack import PackOptions, pack_plan
    from oocstore.tiers import TieredReader
    from oocstore.samplers import sample_plan

    build_store(tmp_path / "s", synthetic_source(SyntheticSpec(nodes=1500, feat_dim=8)))
    with Store(tmp_path / "s", readonly=False) as s:
        sample_plan(s, fanouts="4,3", batch_size=64, epochs=2, seed=3)
        meta = pack_plan(s, name=name, options=PackOptions(cpu_cache=150 * 32, gpu_cache=20 * 32,
                                                           max_disk_blowup=2, policy=name))
        assert meta.policy == name and "inserts" in meta.arrays and meta.stats["cpu_inserts"] > 0
        feats = np.asarray(s.array("features"))
        with TieredReader(s, name) as reader:
            assert reader.scheduled
            order = [(e, b) for e in range(reader.num_epochs) for b in range(reader.num_batches(e))]
            for e, b in order + order[::-3]:
                np.testing.assert_array_equal(reader.read_batch(e, b),
                                              feats[reader.plan.input_nodes(e, b)])
            assert reader.stats()["hit_rate"]["cpu"] > 0


def test_options_name_the_parameter_and_the_registry():
    """A Python caller reads the parameter it passed (the CLI says its flags instead:
    tests/test_cli.py, tests/pack/test_fit.py)."""
    from oocstore.errors import UsageError
    from oocstore.pack import PackOptions

    with pytest.raises(UsageError, match=r"^policy='lru': use one of belady, s3fifo, sieve, static$"):
        PackOptions(policy="lru")
    with pytest.raises(UsageError, match=r"^window_bytes=0: give a positive size"):
        PackOptions(window_bytes=0)
    with pytest.raises(UsageError, match=r"^max_disk_blowup=-1: give a finite number"):
        PackOptions(max_disk_blowup=-1)
