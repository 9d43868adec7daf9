"""The heterogeneous loader: typed batches of a plan, features through the typed tiers.

:class:`HeteroLoader` yields :class:`HeteroBatch` objects: per node type the global ids
and feature rows of the batch's input nodes (``x_dict``), per layer the typed blocks
(``edge_index`` per relation, local ids, destinations a prefix of sources per type), the
seeds' labels, :meth:`HeteroBatch.to_pyg` for PyG's ``HeteroData`` and
:meth:`HeteroBatch.to_dgl` for DGL heterograph blocks. Every buffer is
charged to one :class:`~oocstore.budget.BudgetAccountant` before it is allocated; a
budget that cannot hold one batch is refused with the itemised list before any read.
One background thread reads the next batch while the current one trains.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ..budget import BudgetAccountant, MemoryBudget
from ..store import Store
from .pack import loader_extras, load_hetero_pack, loader_floor
from .plan import HeteroPlanReader, HeteroSampledBatch
from .readers import SegmentRows, TypedRows, cached_labels
from .schema import require_schema


@dataclass
class HeteroBatch:
    """One typed mini-batch with its features (torch tensors on ``device``)."""

    target: str
    num_seeds: int
    n_id: dict[str, Any]  # type -> [num_input] global ids (torch int64)
    x_dict: dict[str, Any]  # feature-bearing type -> [num_input, width]
    num_nodes: dict[str, int]  # type -> input nodes (types without features included)
    blocks: list[dict[str, Any]]  # per layer: {"sizes": {t: (src, dst)}, "edge_index": {et: [2, E]}}
    y: Any  # [num_seeds] int64 labels of the seeds

    def to_pyg(self):
        """A PyG ``HeteroData``: ``x`` and ``n_id`` per type, ``edge_index`` per relation
        (the union of the layers' sampled edges, local ids), ``y`` and ``batch_size`` on
        the target type (its first ``batch_size`` nodes are the seeds) — the shape of a
        batch of PyG's own ``NeighborLoader``."""
        import torch
        from torch_geometric.data import HeteroData

        data = HeteroData()
        for t, n in self.num_nodes.items():
            data[t].num_nodes = n
            data[t].n_id = self.n_id[t]
            if t in self.x_dict:
                data[t].x = self.x_dict[t]
        for et in self.blocks[0]["edge_index"]:
            n_src = self.num_nodes[et[0]]
            merged = torch.cat([b["edge_index"][et] for b in self.blocks], dim=1)
            key = torch.unique(merged[1] * n_src + merged[0])
            data[et].edge_index = torch.stack([key % n_src, key // n_src])
        data[self.target].y = self.y
        data[self.target].batch_size = self.num_seeds
        return data

    def to_dgl(self, device=None) -> list:
        """DGL heterograph blocks, one ``dgl.create_block`` per layer (``blocks[0]`` the
        input side): typed edges ``(src_type, relation, dst_type)`` in local ids, global
        ids in ``srcdata`` / ``dstdata[dgl.NID]`` per type, features in
        ``blocks[0].srcdata["feat"]``, the seeds' labels in ``blocks[-1].dstdata["label"]``
        (see :func:`oocstore.hetero.dgl.to_dgl_blocks`). Needs the DGL environment; without
        it, :class:`~oocstore.errors.MissingDependencyError` says how to build it."""
        from .dgl import to_dgl_blocks

        return to_dgl_blocks(self, device)


def make_batch(sb: HeteroSampledBatch, x: dict[str, np.ndarray], labels: np.ndarray,
               device: str = "cpu") -> HeteroBatch:
    """The :class:`HeteroBatch` of sampled batch ``sb`` with feature rows ``x`` (per
    feature-bearing type, ``features[sb.input_nodes[type]]``) and the target type's
    ``labels`` (indexed by global id), as tensors on ``device``. Other loaders (the
    baselines of ``bench/hetero_loaders.py``) build their batches with it too."""
    import torch

    blocks = []
    for b in sb.blocks:
        ei = {et: torch.from_numpy(np.stack([s, d])).to(device) for et, (s, d) in b.edges.items()}
        blocks.append({"sizes": b.sizes, "edge_index": ei})
    return HeteroBatch(target=sb.target, num_seeds=sb.num_seeds,
                       n_id={t: torch.from_numpy(v) for t, v in sb.input_nodes.items()},
                       x_dict={t: torch.from_numpy(v).to(device) for t, v in x.items()},
                       num_nodes={t: int(v.size) for t, v in sb.input_nodes.items()},
                       blocks=blocks, y=torch.from_numpy(labels[sb.seeds]).to(device))


class HeteroLoader:
    """Iterate the batches of one epoch of a heterogeneous plan.

    ``pack``: the pack whose CPU tiers to use (None: every row from the base arrays);
    ``in_memory``: every feature array in RAM (the parity reference). ``budget``: the
    CPU limit every buffer is charged to."""

    def __init__(self, store: Store, plan: str, *, pack: str | None = None,
                 budget: MemoryBudget = MemoryBudget(), in_memory: bool = False,
                 device: str = "cpu", prefetch: bool = True):
        self.store = store
        self.schema = require_schema(store)
        self.plan = HeteroPlanReader(store, plan)
        self.accountant = BudgetAccountant(budget)
        self.device = device
        self.prefetch = prefetch
        self._charges = []
        self._floor = []
        try:
            pk = load_hetero_pack(store, pack) if pack is not None else None
            self.segments = pk is not None and pk.get("layout") == "segments" and not in_memory
            self._charge_floor()
            self.labels, c = cached_labels(store, self.plan.target, self.accountant)
            self._charges.append(c)
            self.readers = {}
            self._warm_up()
            if self.segments:
                self._open_segments(pk)
            else:
                self.readers = {t: TypedRows(store, self.schema, t, pack=pk,
                                             accountant=self.accountant, in_memory=in_memory)
                                for t in self.plan.types
                                if self.schema.node_types[t].has_features}
        except BaseException:
            self.close()
            raise

    def _warm_up(self) -> None:
        """Load the row-assembly kernels for every feature dtype now, as homogeneous
        training does (:func:`oocstore.tiers.assemble.warm_up`). Without it, every batch of
        a fresh process was slow, not only the first (``bench/hetero_loaders.py``, 400,000
        papers: about 50 ms a batch instead of 3 ms)."""
        from ..tiers.assemble import warm_up

        for dt in sorted({self.schema.node_types[t].dtype for t in self.plan.types
                          if self.schema.node_types[t].has_features}):
            warm_up(np.dtype(dt))

    def _charge_floor(self) -> None:
        """What the loader itself holds (the per-type readers charge their own buffers in
        the ``segments`` layout; in ``rows`` the floor lists them too)."""
        fix = ("raise the cpu budget, or pack with a smaller cache "
               "(`oocstore pack ... --cpu-budget` sizes it inside the budget)")
        items = loader_extras(self.plan, self.schema) if self.segments else \
            loader_floor(self.plan, self.schema)
        self._floor = [self.accountant.charge("cpu", nbytes, what, fix=fix)
                       for what, nbytes in items if what != f"{self.plan.target}: labels"]

    def _open_segments(self, pk: dict, carry: dict | None = None) -> None:
        """One tiered reader per feature-bearing type over the pack's sub-packs; counters
        of readers being replaced carry over."""
        if pk["plan"] != self.plan.name:
            from ..errors import UsageError
            raise UsageError(f"pack {pk['name']!r} was made for plan {pk['plan']!r}, not "
                             f"{self.plan.name!r}: a segments pack serves its own plan only")
        if pk.get("plan_version") != self.plan.meta["store_version"]:
            from ..errors import FormatError
            raise FormatError(f"pack {pk['name']!r} was made from an older version of plan "
                              f"{self.plan.name!r} (re-sampled since): re-pack it with `oocstore "
                              f"pack {self.store.path} --plan {self.plan.name} --name "
                              f"{pk['name']} --cpu-budget SIZE --overwrite`")
        from ..pack.catalog import load_pack

        self.readers = {}
        types = sorted(pk["types"])
        need = {t: load_pack(self.store, pk["types"][t]["pack"]).min_working_set["cpu"]
                for t in types}
        for i, t in enumerate(types):
            r = SegmentRows(self.store, t, pk["types"][t]["pack"], self.accountant,
                            reserve=sum(need[u] for u in types[i + 1:]))
            r.totals = (carry or {}).get(t, {})
            self.readers[t] = r

    def set_plan(self, plan: str, pack: str | None = None) -> None:
        """Read another plan of the same target type (an evaluation split). With the
        ``rows`` layout the same tiers serve it (cached rows are per node); with
        ``segments`` its own pack (``pack``, default the plan's name) replaces the
        readers."""
        new = HeteroPlanReader(self.store, plan)
        if new.target != self.plan.target:
            new.close()
            from ..errors import UsageError
            raise UsageError(f"plan {plan!r} seeds node type {new.target!r}, not "
                             f"{self.plan.target!r}: use a loader of its own")
        for c in self._floor:
            c.release()
        self.plan.close()
        self.plan = new
        carry = {}
        if self.segments:
            pk = load_hetero_pack(self.store, pack or plan)
            carry = {t: r.counters() for t, r in self.readers.items()}
            for r in self.readers.values():
                r.close()  # before the new readers are charged
            self.readers = {}
        # The loader's own buffers first: the readers take optional read-ahead buffers
        # only from what is left.
        self._charge_floor()
        if self.segments:
            self._open_segments(pk, carry)

    @property
    def num_epochs(self) -> int:
        return len(self.plan.batches_per_epoch)

    def num_batches(self, epoch: int) -> int:
        return self.plan.batches_per_epoch[epoch % self.num_epochs]

    def load(self, epoch: int, batch: int) -> HeteroBatch:
        """Batch ``batch`` of the plan's epoch ``epoch`` (modulo the sampled epochs)."""
        return self._to_batch(self.plan.batch(epoch % self.num_epochs, batch))

    def _to_batch(self, sb: HeteroSampledBatch) -> HeteroBatch:
        x = {t: r.read(sb.input_nodes[t], sb.epoch, sb.batch) for t, r in self.readers.items()}
        return make_batch(sb, x, self.labels, self.device)

    def epoch(self, epoch: int) -> Iterator[HeteroBatch]:
        """The batches of ``epoch`` in order; the next one is read on a thread meanwhile."""
        n = self.num_batches(epoch)
        if not self.prefetch:
            for b in range(n):
                yield self.load(epoch, b)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="oocstore-hetero") as pool:
            nxt = pool.submit(self.load, epoch, 0) if n else None
            for b in range(n):
                cur = nxt.result()
                nxt = pool.submit(self.load, epoch, b + 1) if b + 1 < n else None
                yield cur

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per type: rows delivered, CPU-tier hit rate, bytes read, read amplification."""
        return {t: r.stats() for t, r in self.readers.items()}

    def close(self) -> None:
        for r in getattr(self, "readers", {}).values():
            r.close()
        for c in self._charges + self._floor:
            c.release()
        self._charges, self._floor = [], []
        self.plan.close()

    def __enter__(self) -> "HeteroLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


