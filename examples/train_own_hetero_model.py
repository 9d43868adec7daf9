"""Train your own heterogeneous model on an oocstore store, out of core, in one budget.

A plain two-layer GraphSAGE written for one node type, turned into a heterogeneous model
by PyTorch Geometric's ``to_hetero`` (one ``SAGEConv`` per relation, summed per node
type). The loader's batches become PyG ``HeteroData`` with ``batch.to_pyg()``: ``x`` per
node type, ``edge_index`` per relation, the seeds first among the target type's nodes
(``batch_size`` of them), as PyG's own ``NeighborLoader`` gives them. Features of every
type stream through one pack inside one CPU budget; a node type without features (the
synthetic ``field``) gets a zero column, so it costs no reads. The validation plan gets
its own pack inside the same budget, and the loader swaps the training readers for its
readers while it validates.

Prepare a store once::

    oocstore ingest hetero-synthetic STORE --papers 20000 --add-reverse
    oocstore sample STORE --fanouts 10,5 --batch-size 512
    oocstore pack STORE --cpu-budget 32MiB

then::

    python examples/train_own_hetero_model.py STORE --cpu-budget 32MiB --epochs 5
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch_geometric.nn import SAGEConv, to_hetero

from oocstore.budget import MemoryBudget
from oocstore.hetero import HeteroLoader
from oocstore.hetero.pack import list_hetero_packs, pack_hetero
from oocstore.hetero.plan import list_hetero_plans
from oocstore.hetero.sampler import sample_hetero_plan
from oocstore.store import Store
from oocstore.units import parse_size


class GNN(torch.nn.Module):
    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.conv1 = SAGEConv((-1, -1), hidden)
        self.conv2 = SAGEConv((-1, -1), out)

    def forward(self, x, edge_index):
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


def inputs(batch):
    """``(x_dict, edge_index_dict, target, seeds)`` of a batch as PyG ``HeteroData``."""
    data = batch.to_pyg()
    x = {t: data[t].x if "x" in data[t] else torch.zeros(data[t].num_nodes, 1)
         for t in data.node_types}
    return x, data.edge_index_dict, batch.target, batch.num_seeds


def accuracy(model, loader) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for b in loader.epoch(0):
            x, ei, t, n = inputs(b)
            right += int((model(x, ei)[t][:n].argmax(-1) == b.y).sum())
            total += n
    model.train()
    return right / max(total, 1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--cpu-budget", default="32MiB")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=64)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    with Store(args.store, readonly=False) as store:
        train = list_hetero_plans(store)["train"]
        if "val" not in list_hetero_plans(store):  # an evaluation plan, same fanouts
            sample_hetero_plan(store, fanouts=train["fanouts"], batch_size=train["batch_size"],
                               split="val", name="val")
        if "val" not in list_hetero_packs(store):  # packed inside the same budget
            pack_hetero(store, "val", cpu_budget=parse_size(args.cpu_budget))
        budget = MemoryBudget(cpu=parse_size(args.cpu_budget))
        with HeteroLoader(store, "train", pack="train", budget=budget) as loader:
            first = loader.load(0, 0)
            data = first.to_pyg()
            classes = int(loader.labels.max()) + 1
            model = to_hetero(GNN(args.hidden, classes), data.metadata(), aggr="sum")
            with torch.no_grad():  # initialise the lazy input widths
                x, ei, _, _ = inputs(first)
                model(x, ei)
            opt = torch.optim.Adam(model.parameters(), lr=0.005)
            for epoch in range(args.epochs):
                loader.set_plan("train")
                for b in loader.epoch(epoch):
                    x, ei, t, n = inputs(b)
                    loss = F.cross_entropy(model(x, ei)[t][:n], b.y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                loader.set_plan("val")  # its pack's readers replace train's, in one budget
                acc = accuracy(model, loader)
                print(f"epoch {epoch}: loss {loss.item():.4f}, val acc {acc:.4f}")
            stats = loader.stats()
    for t, s in sorted(stats.items()):
        print(f"{t}: cpu-tier hit rate {s['hit_rate']:.1%}, read amplification "
              f"{s['read_amplification']:.2f}")
    return {"val_acc": acc, "stats": stats}


if __name__ == "__main__":
    main()
