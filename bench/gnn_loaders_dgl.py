"""The DGL peer of ``bench/gnn_loaders.py`` and ``bench/gnn_ooc.py``: DGL's ``DataLoader`` +
``NeighborSampler``, features from ``np.memmap``, cold per batch (or, with
``"evict_per_batch": false`` in the spec, as a user runs it: the page cache kept, inside
``gnn_ooc.py``'s memory cgroup). Runs in the DGL environment
(``.venv-dgl/bin/python``: DGL 2.1 needs torch 2.2), one cold epoch per process.

``python bench/gnn_loaders_dgl.py SPEC.json`` (written by ``gnn_loaders.py``): opens the
store read-only, builds a DGL graph from its CSC arrays (set-up, timed apart), and
iterates the same seeds in the same batches as the plan's epoch 0 (``shuffle=False``
over the plan's seed order), sampling neighbours online with the plan's fanouts
(``fanouts[-1]`` next to the seeds, DGL's convention, as in ``samplers``). Per batch:
``feats[input_nodes]`` from a fresh ``np.memmap`` of the feature file (timed: the
loading), then the page cache of that file is emptied (memmap closed first; not timed:
it stands for a page cache much smaller than the features), then one training step of
the same GraphSAGE (``DGLGraphSAGE``, DGL ``SAGEConv`` mean). Prints one JSON line with
the fields ``gnn_loaders.py`` reports for every loader.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _common import capped_gather, peak_rss_bytes, read_bytes, rss_bytes  # noqa: E402


def main(spec_path: str) -> dict:
    spec = json.loads(Path(spec_path).read_text())
    import torch
    import torch.nn.functional as F

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from oocstore.integrations.dgl import require_dgl
    from oocstore.plan import PlanReader
    from oocstore.store import Store
    from oocstore.store.files import evict
    from oocstore.train.dgl_model import DGLGraphSAGE

    dgl = require_dgl()
    rss0 = rss_bytes()
    t = time.perf_counter()
    with Store(spec["store"]) as store:
        plan = PlanReader(store, spec["plan"])
        nb = spec["batches"]
        bs = plan.meta.batch_size
        seeds = np.concatenate([plan.read_batch(0, b).seeds for b in range(nb)]).astype(np.int64)
        indptr, indices = store.csc()
        # int64 ids, DGL's default (an int32 graph crashes DGL 2.1's CPU gspmm backward)
        indptr = torch.from_numpy(np.array(indptr, dtype=np.int64))
        indices = torch.from_numpy(np.array(indices, dtype=np.int64))
        labels = torch.from_numpy(np.array(store.array("labels"), dtype=np.int64))
        fm = store.array_meta("features")
        path = store.file_path(fm)
        fanouts = list(plan.meta.fanouts)
    g = dgl.graph(("csc", (indptr, indices, torch.tensor([], dtype=torch.int64))),
                  num_nodes=indptr.numel() - 1)
    sampler = dgl.dataloading.NeighborSampler(fanouts)
    loader = dgl.dataloading.DataLoader(g, torch.from_numpy(seeds), sampler, batch_size=bs,
                                        shuffle=False, drop_last=False, num_workers=0)
    torch.manual_seed(spec["seed"])
    model = DGLGraphSAGE(spec["feat_dim"], spec["hidden"], spec["classes"], len(fanouts))
    opt = torch.optim.Adam(model.parameters(), lr=0.003)

    def step(blocks, x, y):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(blocks, x), y)
        loss.backward()
        opt.step()

    # warm-up (no feature I/O): one sampled batch, one step on zeros
    inp, out, blocks = next(iter(loader))
    step(blocks, torch.zeros((inp.numel(), spec["feat_dim"])), labels[out])
    for f in spec["files"]:
        evict(Path(f))
    setup = time.perf_counter() - t
    rss_ready = rss_bytes()

    per_batch = spec.get("evict_per_batch", True)  # False: the page cache is kept
    feats = np.memmap(path, dtype=fm.np_dtype, mode="r", offset=fm.offset, shape=fm.shape)
    load = sample_s = excluded = 0.0
    rows = batches = 0
    partial = False
    io0 = read_bytes()
    t0 = time.perf_counter()
    # gnn_ooc.py's time cap on a window: gather in chunks, stop inside a batch if need be
    deadline = t0 + spec.get("max_seconds", float("inf"))
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            inp, out, blocks = next(it)
        except StopIteration:
            break
        sample_s += time.perf_counter() - t
        t = time.perf_counter()
        ids = inp.numpy()
        xs, done = capped_gather(feats, ids, deadline + excluded)
        x = torch.from_numpy(xs)
        load += time.perf_counter() - t
        if done < ids.size:
            rows += done
            partial = True
            break
        if per_batch:
            t = time.perf_counter()
            del feats
            evict(path)
            feats = np.memmap(path, dtype=fm.np_dtype, mode="r", offset=fm.offset,
                              shape=fm.shape)
            excluded += time.perf_counter() - t
        rows += x.shape[0]
        batches += 1
        step(blocks, x, labels[out])
        if time.perf_counter() > deadline + excluded:
            break
    wall = time.perf_counter() - t0 - excluded
    proc = read_bytes() - io0
    res = {"loader": "dgl", "batches": batches + partial, "partial_last_batch": partial,
           "epoch_time_s": wall, "load_time_s": load,
           "rows": rows, "proc_read_bytes": proc, "bytes_read": proc,
           "useful_bytes": rows * fm.row_bytes,
           "cold": "per-batch" if per_batch else "once (page cache kept)", "setup_s": setup,
           "excluded_s": excluded,
           "stages_s": {"sampling (DGL NeighborSampler)": sample_s, "feature gather (mmap)": load},
           "dgl_version": dgl.__version__, "torch_version": torch.__version__,
           "peak_rss_bytes": peak_rss_bytes(), "rss_after_imports_bytes": rss0,
           "rss_before_loader_bytes": rss_ready,
           "note": "online sampling: same seeds per batch, DGL's own neighbour draws"}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1])
