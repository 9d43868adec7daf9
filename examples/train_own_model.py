"""Train your own model on an oocstore store, out of core, inside a memory budget.

A GAT from PyTorch Geometric's ready-made models (``torch_geometric.nn.models.GAT``),
unchanged: the loader's batches give it one ``edge_index`` with trim-to-layer counts, as
PyG's ``NeighborLoader`` does. Validation accuracy after every epoch, early stopping,
and the best epoch's weights saved. The validation loader takes turns with the training
loader in the one budget, so validating costs no extra memory.

Prepare a store once (any ingest works; see the README)::

    oocstore ingest synthetic STORE --nodes 100000 --feat-dim 64 --classes 8
    oocstore sample STORE --fanouts 10,5 --batch-size 512
    oocstore pack STORE --cpu-budget 64MiB

then::

    python examples/train_own_model.py STORE --cpu-budget 64MiB --epochs 20 --out gat.pt

Load the result later with ``model.load_state_dict(torch.load("gat.pt", weights_only=True))``
on a model built the same way (``build_model`` below).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch_geometric.nn.models import GAT

from oocstore import Store
from oocstore.budget import MemoryBudget
from oocstore.loader import NodeLoader
from oocstore.train import evaluate, prepare_evaluation


def build_model(store: Store, loader: NodeLoader, hidden: int) -> torch.nn.Module:
    """What the model needs to know comes from the store and the loader."""
    return GAT(in_channels=store.feature_dim, hidden_channels=hidden,
               num_layers=loader.num_layers, out_channels=store.num_classes, heads=4,
               dropout=0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("store")
    ap.add_argument("--cpu-budget", default="256MiB", help="host memory for oocstore's buffers")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=3, help="epochs without improvement")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--out", default="best_model.pt", help="where the best weights go")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()

    torch.manual_seed(0)
    budget = MemoryBudget(cpu=args.cpu_budget)
    # Validation and test plans sized to the budget (once; `oocstore train` does the same).
    prepare_evaluation(args.store, budget=budget, device=args.device)

    with Store(args.store) as store, \
            NodeLoader(store, "train", budget=budget, device=args.device) as loader, \
            loader.eval_loader("val") as val:
        model = build_model(store, loader, args.hidden).to(args.device)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=5e-4)
        best_acc, best_epoch = -1.0, -1
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            loader.take_turn()  # re-open now if validation borrowed the budget (untimed)
            model.train()
            t0, seen, total = time.perf_counter(), 0, 0.0
            for batch in loader:
                d = batch.to_pyg_data()  # x, edge_index, y, batch_size, num_sampled_*
                out = model(d.x.float(), d.edge_index,
                            num_sampled_nodes_per_hop=d.num_sampled_nodes,
                            num_sampled_edges_per_hop=d.num_sampled_edges)[:d.batch_size]
                loss = F.cross_entropy(out, d.y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                seen += d.batch_size
                total += float(loss.detach()) * d.batch_size
            acc = evaluate(model, val)  # eval mode, no gradients, the val-eval plan
            print(f"epoch {epoch}: loss {total / seen:.4f}, val acc {acc:.4f}, "
                  f"{seen / (time.perf_counter() - t0):,.0f} seeds/s", flush=True)
            if acc > best_acc:
                best_acc, best_epoch = acc, epoch
                torch.save(model.state_dict(), args.out)
            elif epoch - best_epoch >= args.patience:
                print(f"no better validation accuracy for {args.patience} epochs: stopping")
                break
        model.load_state_dict(torch.load(args.out, weights_only=True, map_location=args.device))
        with loader.eval_loader("test") as test:
            test_acc = evaluate(model, test)
        print(f"best epoch {best_epoch}: val acc {best_acc:.4f}, test acc {test_acc:.4f}; "
              f"weights in {args.out}")
        st = loader.stats()
        hits = ", ".join(f"{tier} {rate:.0%}" for tier, rate in st["hit_rate"].items())
        print(f"training read {st['bytes_read'] / 2**20:.1f} MiB from disk within "
              f"{args.cpu_budget} (rows served: {hits})")


if __name__ == "__main__":
    main()
