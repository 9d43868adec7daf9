"""The out-of-core CSC build: the same arrays as the in-memory build, bounded memory,
no files left behind, bad edges refused."""

import tracemalloc

import numpy as np
import pytest

from oocstore import Store
from oocstore.errors import SourceError
from oocstore.ingest import build_store
from oocstore.ingest import synthetic as synthetic_mod
from oocstore.ingest.common import build_csc
from oocstore.ingest.csc import write_csc_streaming
from oocstore.ingest.synthetic import (SyntheticSpec, rmat_edges, synthetic_labels,
                                       synthetic_source)


def _blocks(src, dst, size):
    return [(src[i:i + size], dst[i:i + size]) for i in range(0, src.size, size)]


def _stream(tmp_path, n, src, dst, *, directed, memory, block=5000):
    with Store.create(tmp_path / "s") as store:
        with store.transaction() as txn:
            st = write_csc_streaming(txn, n, _blocks(src, dst, block), directed=directed,
                                     where="test", expected_edges=src.size,
                                     memory_bytes=memory, tmp_dir=tmp_path)
    with Store(tmp_path / "s") as store:
        return np.asarray(store.array("graph/indptr")), np.asarray(store.array("graph/indices")), st


@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("memory", [32 * 1024, 1 << 20])
def test_same_arrays_as_in_memory_build(tmp_path, directed, memory):
    rng = np.random.default_rng(3)
    n = 3000
    # a hub (node 7) with far more in-edges than one range holds, duplicates, self-loops
    src = np.concatenate([rng.integers(0, n, 40000), rng.integers(0, n, 3000), [5, 5, 9]])
    dst = np.concatenate([rng.integers(0, n, 40000), np.full(3000, 7), [5, 6, 6]])
    ip, ix, dropped = build_csc(n, src, dst, directed=directed, where="test")
    ip2, ix2, st = _stream(tmp_path, n, src, dst, directed=directed, memory=memory)
    assert np.array_equal(ip, ip2) and np.array_equal(ix, ix2) and ix.dtype == ix2.dtype
    assert (st.num_edges, st.dropped) == (ix.size, dropped)
    if memory == 32 * 1024:  # 1024 keys per range: many ranges, the hub's read in parts
        assert st.ranges > 10 and st.split_ranges >= 1
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # spill files removed


def test_out_of_range_edge_refused_and_nothing_left(tmp_path):
    src, dst = np.array([0, 1, 2]), np.array([1, 2, 3])
    with pytest.raises(SourceError, match="edge names node 3, outside 0..2"):
        _stream(tmp_path, 3, src, dst, directed=False, memory=1 << 20)
    assert not (tmp_path / "s").exists() or not Store(tmp_path / "s").has_array("graph/indices")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("oocstore-csc-")]


def test_synthetic_ingest_streams_the_same_store(tmp_path):
    spec = SyntheticSpec(nodes=4000, avg_degree=10, feat_dim=8, classes=4, seed=2)
    ip, ix, dropped = build_csc(spec.nodes, *rmat_edges(spec, synthetic_labels(spec)),
                                directed=False, where="x")
    build_store(tmp_path / "s", synthetic_source(spec), csc_memory=64 * 1024)
    with Store(tmp_path / "s") as store:
        a, b = store.csc()
        assert np.array_equal(a, ip) and np.array_equal(b, ix)
        assert store.graph.num_edges == ix.size
        assert store.meta.source["dropped_edges"] == dropped


def test_synthetic_ingest_memory_does_not_grow_with_edges(tmp_path, monkeypatch):
    """3.2 M stored edges: the in-memory build peaks at ~24 bytes per stored edge
    (~77 MB); streamed in 64 k-edge blocks with a 2 MiB CSC bound, the peak stays
    near one block's temporaries."""
    monkeypatch.setattr(synthetic_mod, "_EDGE_BLOCK", 1 << 16)
    spec = SyntheticSpec(nodes=50_000, avg_degree=64, feat_dim=8, classes=4, seed=0)
    stored = spec.nodes * spec.avg_degree
    tracemalloc.start()
    try:
        build_store(tmp_path / "s", synthetic_source(spec), csc_memory=2 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"peak {peak / 2**20:.1f} MiB for {stored} edges"
    assert peak < stored * 24 / 3
    with Store(tmp_path / "s") as store:
        assert store.graph.num_edges > 0.9 * stored


def test_spill_files_live_in_the_staging_directory(tmp_path, monkeypatch):
    """A process killed mid-build leaves its spill files inside the staging directory,
    which the next writer removes, never beside the store."""
    import oocstore.ingest.csc as csc

    seen = []
    real = csc._emit

    def spy(*a, **kw):
        seen.extend(p for p in tmp_path.rglob("*.keys"))
        return real(*a, **kw)

    monkeypatch.setattr(csc, "_emit", spy)
    build_store(tmp_path / "s", synthetic_source(SyntheticSpec(nodes=2000, avg_degree=8,
                                                               feat_dim=4)))
    assert seen and all(p.relative_to(tmp_path).parts[0].startswith(".s.") and
                        p.relative_to(tmp_path).parts[0].endswith(".partial") for p in seen)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".s.")] == ["s"]
