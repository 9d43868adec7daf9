"""bench/sampler_speed.py at toy size (so it cannot rot), and a comparison of block
sizes with DGL's NeighborSampler where .venv-dgl exists."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO
from oocstore.store import Store
from oocstore.samplers import sample_batches

DGL_ENV = REPO / ".venv-dgl"


def test_bench_toy(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "sampler_speed.py"), "--toy",
                        "--no-dgl", "--data", str(tmp_path)], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["toy"] and res["ours_edges_per_s"] > 0 and res["numpy_edges_per_s"] > 0
    assert res["plan_bytes"] > 0 and res["disk_write_bytes_per_s"] > 0


@pytest.mark.dgl
@pytest.mark.skipif(not (DGL_ENV / ".dgl-env-stamp").exists(),
                    reason="DGL environment absent: run tools/dgl_env.sh")
def test_block_sizes_match_dgl(rmat_store, tmp_path):
    """Uniform sampling without replacement: per-layer block sizes of ours and DGL's
    NeighborSampler agree in distribution (means within 5 %, edges exactly, since both
    take min(fanout, degree) per destination)."""
    fanouts, bs, nb = [4, 3], 100, 15
    with Store(rmat_store) as store:
        indptr, indices = store.csc()
        seeds = store.split("train")[:bs * nb]
        ours = sample_batches(indptr, indices, seeds, fanouts=fanouts, batch_size=bs, seed=2)
        spec = {}
        for key, name in (("indptr", store.graph.indptr), ("indices", store.graph.indices)):
            m = store.array_meta(name)
            spec[key] = {"file": str(store.file_path(m)), "offset": m.offset, "dtype": m.dtype,
                         "count": int(np.prod(m.shape))}
    seeds_file = tmp_path / "seeds.bin"
    seeds.astype(np.int64).tofile(seeds_file)
    spec["seeds"] = {"file": str(seeds_file), "offset": 0, "dtype": "int64", "count": int(seeds.size)}
    r = subprocess.run([str(DGL_ENV / "bin" / "python"), str(REPO / "bench" / "baselines" / "dgl_sampler.py"),
                        json.dumps(spec), "--fanouts", "4,3", "--batch-size", str(bs),
                        "--batches", str(nb), "--warmup", "0"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    dgl = np.array(json.loads(r.stdout.strip().splitlines()[-1])["blocks"], dtype=float)
    mine = np.array([lay for _, lay in ours], dtype=float)
    assert dgl.shape == mine.shape  # [batches, layers, (src, dst, edges)]
    # DGL shuffles the same seed set, so compare means over the epoch
    m_dgl, m_ours = dgl.mean(axis=0), mine.mean(axis=0)
    assert np.allclose(m_ours, m_dgl, rtol=0.05), (m_ours, m_dgl)
