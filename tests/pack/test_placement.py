import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from oocstore.pack.placement import belady_misses, static_hits, static_placement


def brute_force_min_misses(trace, capacity):
    """Minimum misses over every admission/eviction choice (exhaustive, tiny traces)."""
    states = {frozenset(): 0}
    for v in trace:
        nxt = {}
        for cache, misses in states.items():
            if v in cache:
                options = [(cache, misses)]
            else:
                options = [(cache, misses + 1)]  # bypass
                if len(cache) < capacity:
                    options.append((cache | {v}, misses + 1))
                else:
                    options += [((cache - {x}) | {v}, misses + 1) for x in cache]
            for c, m in options:
                nxt[c] = min(nxt.get(c, m), m)
        states = nxt
    return min(states.values())


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 6).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.integers(0, n - 1), min_size=0, max_size=12), st.integers(0, 4))))
def test_belady_is_optimal_against_brute_force(case):
    n, trace, capacity = case
    assert belady_misses(np.array(trace, dtype=np.int64), n, capacity) == \
        brute_force_min_misses(trace, capacity)


def test_belady_never_worse_than_static_on_a_skewed_trace():
    rng = np.random.default_rng(0)
    trace = rng.zipf(1.3, size=200_000) % 10_000
    counts = np.bincount(trace, minlength=10_000)
    for cap in (100, 500, 2000):
        _, cpu = static_placement(counts, 0, cap)
        static_misses = trace.size - static_hits(trace, cpu, 10_000)
        assert belady_misses(trace, 10_000, cap) <= static_misses


def test_static_placement_hottest_first_ties_by_id_and_skips_unused():
    counts = np.array([5, 0, 9, 5, 1, 0])
    gpu, cpu = static_placement(counts, 1, 10)
    assert gpu.tolist() == [2]
    assert cpu.tolist() == [0, 3, 4]  # never-accessed nodes 1 and 5 are not cached


@pytest.mark.parametrize("capacity", [0, 1, 3])
def test_belady_edge_cases(capacity):
    assert belady_misses(np.zeros(0, np.int64), 4, capacity) == 0
    assert belady_misses(np.array([1, 1, 1]), 4, capacity) == (3 if capacity == 0 else 1)
