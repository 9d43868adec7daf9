"""The scene writer against an in-memory oracle: random sequences of block writes, new
blocks, frees, commits and abandoned writers, checked after every operation and on
reopen."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_cameras, make_params
from oocstore.gs import layout
from oocstore.gs.scene import Scene
from oocstore.store.verify import verify_store

W0 = layout.record_width(0)

_OPS = st.lists(st.tuples(st.sampled_from(["write", "new", "free", "commit", "abandon"]),
                          st.integers(0, 50), st.integers(0, 12)), min_size=1, max_size=14)


def _state(scene):
    return {b: scene.read_block(b) for b in range(scene.num_blocks)}


def _same(scene, oracle):
    assert scene.num_blocks == len(oracle)
    assert scene.block_counts.tolist() == [len(ids) for ids, _ in oracle.values()]
    for b, (ids, rec) in oracle.items():
        got_ids, got = scene.read_block(b)
        assert np.array_equal(got_ids, ids) and np.array_equal(got, rec)


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=_OPS, seed=st.integers(0, 1000))
def test_writer_matches_oracle(tmp_path_factory, ops, seed):
    rng = np.random.default_rng(seed)
    params = make_params(40, 0, seed=seed)
    path = tmp_path_factory.mktemp("oracle") / "s"
    scene = Scene.create(path, None, params, 0, make_cameras(params, 2), block_size=10)
    committed = _state(scene)
    current = dict(committed)
    next_id = committed_next = 40
    w = None
    for op, a, n in ops:
        if op in ("write", "new", "free") and w is None:
            w = scene.writer()
        if op == "write":
            b = a % len(current)
            n = min(n, scene.block_capacity)
            ids = np.arange(n, dtype=np.int64) + 1000 * (b + 1)
            rec = rng.normal(size=(n, W0)).astype(np.float32)
            w.write_block(b, ids, rec)
            current[b] = (ids, rec)
        elif op == "new":
            ids = w.allocate_ids(n)
            assert ids.tolist() == list(range(next_id, next_id + n))
            next_id += n
            rec = rng.normal(size=(n, W0)).astype(np.float32)
            b = w.new_block(ids, rec)
            assert b == len(current)
            current[b] = (ids, rec)
        elif op == "free":
            b = a % len(current)
            w.free_block(b)
            current[b] = (np.zeros(0, np.int64), np.zeros((0, W0), np.float32))
        elif op == "commit" and w is not None:
            w.commit()
            committed, committed_next = dict(current), next_id
        elif op == "abandon" and w is not None:
            w.close()
            w = None
            current, next_id = dict(committed), committed_next
        _same(scene, current)
        assert scene.next_id == next_id
    if w is not None:
        w.close()
    _same(scene, committed)
    live = sum(1 for ids, _ in committed.values() if len(ids))
    assert len(list((path / "scenes").iterdir())) == live  # nothing left behind, even unopened
    scene.close()
    with Scene.open(path) as again:
        _same(again, committed)
        assert again.next_id == committed_next
        assert verify_store(again.store) == []
