"""``oocstore train``: GNN node classification (GraphSAGE, GCN, GAT) from a store, out of
core (DDP under ``torchrun``)."""

from __future__ import annotations

import sys

from ..errors import OocError, UsageError
from .common import (add_budgets, add_device, add_flag, add_seed, add_store, command,
                     error_line)
from .distributed import launched


def add_train(sub) -> None:
    p = command(sub, "train", _cmd_train,
                "train a GNN (GraphSAGE, GCN or GAT) for node classification from a "
                "store, out of core")
    add_store(p)
    p.add_argument("--plan", default=None, help="training plan or shard group (default: the most "
                                                "recent train-split plan for this world size, "
                                                "and its most recent pack)")
    add_flag(p, "--allow-eval-split", "train on a --plan of the val or test split (refused "
                                      "otherwise: it fits the model to the nodes it is "
                                      "evaluated on); says so when it does")
    p.add_argument("--epochs", type=int, required=True, help="training epochs")
    p.add_argument("--hidden", type=int, default=256, help="hidden units (default 256)")
    p.add_argument("--lr", type=float, default=0.003, help="Adam learning rate (default 0.003)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout (default 0.5)")
    add_device(p, "where to train")
    add_budgets(p, "hard limit for oocstore's host buffers (caches, staging, prefetch)",
                "hard limit for oocstore's device buffers")
    add_flag(p, "--in-memory", "hold all features in RAM (same plans): the accuracy reference")
    p.add_argument("--backend", default="pyg", choices=["pyg", "dgl"],
                   help="GNN layers: PyG (default; every --model) or DGL (DGL environment; "
                        "--model sage, dgl.nn.SAGEConv; on a heterogeneous store rgcn or "
                        "hetero-sage, dgl.nn.HeteroGraphConv)")
    p.add_argument("--model", default=None, choices=["sage", "gcn", "gat", "rgcn", "hetero-sage"],
                   help="sage: GraphSAGE, mean aggregation (default); gcn: graph convolution "
                        "with self-loops, mean-normalised on the sampled block; gat: graph "
                        "attention (PyG GATConv); on a heterogeneous store rgcn (PyG "
                        "RGCNConv) or hetero-sage (default: SAGEConv per relation)")
    p.add_argument("--heads", type=int, default=None, metavar="H",
                   help="attention heads of --model gat (default 4; --hidden must be a "
                        "multiple of H)")
    p.add_argument("--layers", type=int, default=None, metavar="L",
                   help="model layers; must equal the plan's number of fanouts (default: "
                        "the plan's)")
    p.add_argument("--eval", default="sampled", choices=["sampled", "full"],
                   help="validation/test accuracy from sampled neighbourhoods (evaluation "
                        "plans; default) or exact, over the full graph layer by layer out of "
                        "core within --cpu-budget (as `oocstore infer`; --backend pyg; under "
                        "torchrun rank 0 runs it)")
    add_seed(p, "seed for model init (default 0)")
    p.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="save model, optimizer and loader state here after every epoch (rank 0 "
                        "writes it under torchrun)")
    add_flag(p, "--resume", "continue from --checkpoint DIR")
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="L2",
                   help="Adam weight decay (default 0)")
    p.add_argument("--early-stop", type=int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation accuracy; "
                        "the best epoch's model is tested (and saved)")
    p.add_argument("--save-model", default=None, metavar="PATH",
                   help="write the best validation epoch's state_dict to PATH when training "
                        "ends (torch.load(PATH, weights_only=True)); an existing file needs "
                        "--overwrite")
    add_flag(p, "--overwrite", "let --save-model replace PATH")
    add_flag(p, "--json", "print the summary as one JSON object on the last line of stdout "
                          "(epochs[i].val_acc: validation accuracy after epoch i)")
    add_flag(p, "--quiet", "no progress bar")
    p.add_argument("--task", default="node", choices=["node", "link"],
                   help="node: node classification (default); link: link prediction on a "
                        "plan sampled with `sample --task link` (SAGE encoder, BCE loss; "
                        "Hits@K, MRR and AUC on the edge split's held-out edges)")
    p.add_argument("--decoder", default="dot", choices=["dot", "mlp"],
                   help="--task link: score of a node pair, dot product (default) or an MLP "
                        "over the endpoints' product")


def _cmd_train(args) -> int:
    """Train a GNN (--model: GraphSAGE, GCN or GAT) on a store's training plan, streaming features through the plan's
    pack (GPU/CPU/SSD tiers, pipelined prefetch) inside the given budgets, with
    validation accuracy after every epoch and test accuracy at the end (evaluation plans
    are sampled and packed once if the store has none). --in-memory runs the same plans
    with every feature in RAM: the parity reference. Under `torchrun --nproc-per-node W`
    it trains with DDP on a plan sampled with --world-size W (gloo on CPU, nccl on CUDA;
    budgets per rank) and rank 0 prints the summary. On a heterogeneous store (--model
    rgcn or hetero-sage) it trains on the typed plan through its typed pack."""
    from . import hetero

    if hetero.is_hetero(args.store):
        args.model = args.model or "hetero-sage"
        return hetero.cmd_train(args)
    if args.task == "link":
        return _train_link(args)
    args.model = args.model or "sage"
    if args.model in ("rgcn", "hetero-sage"):
        raise UsageError(f"--model {args.model}: store {args.store} has one node type; use "
                         "--model sage, gcn or gat (or ingest a heterogeneous store)")
    from ..train.link import check_node_plan

    check_node_plan(args.store, args.plan)
    with launched(args.device) as info:
        if info is None:
            return _train_and_report(args)
        # Under torchrun: DDP over the launcher's process group; rank 0 reports.
        if info.rank != 0:
            args.quiet = True
        return _train_and_report(args, report=info.rank == 0)


def _train_link(args) -> int:
    """``--task link``: train and print Hits@K / MRR / AUC (``--json``: one object)."""
    import json

    from ..errors import UsageError
    from ..train.link import LinkTrainConfig, run_link_training

    unsupported = [f for f, v in (("--model", args.model not in (None, "sage")),
                                  ("--backend", args.backend != "pyg"),
                                  ("--eval full", args.eval == "full"),
                                  ("--checkpoint", args.checkpoint), ("--resume", args.resume),
                                  ("--early-stop", args.early_stop),
                                  ("--save-model", args.save_model), ("--heads", args.heads),
                                  ("--layers", args.layers)) if v]
    if unsupported:
        raise UsageError(f"{', '.join(unsupported)}: not available with --task link (a SAGE "
                         "encoder, layers from the plan's fanouts): drop it")
    cfg = LinkTrainConfig(epochs=args.epochs, hidden=args.hidden, lr=args.lr,
                          dropout=args.dropout, decoder=args.decoder, device=args.device,
                          cpu_budget=args.cpu_budget, gpu_budget=args.gpu_budget,
                          in_memory=args.in_memory, seed=args.seed,
                          weight_decay=args.weight_decay)
    summary = run_link_training(args.store, args.plan, cfg)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0

    def fmt(m):
        return ", ".join(f"{k} {v:.4f}" for k, v in m.items()) or "no held-out edges"

    mode = "in memory" if summary["in_memory"] else f"out of core (pack {summary['pack']})"
    print(f"trained link prediction (sage + {summary['decoder']}) on plan {summary['plan']} "
          f"{mode}: test {fmt(summary['test'])}")
    for e in summary["epochs"]:
        print(f"  epoch {e['epoch']}: {e['time_s']:.1f} s, loss {e['loss']:.4f}, "
              f"val {fmt(e['val'])}")
    return 0


def _train_and_report(args, *, report: bool = True) -> int:
    from ..train.prepare import WriteLog
    from ..train.progress import BarProgress
    from ..train.run import TrainConfig, run_training, summary_json
    from ..units import format_size

    cfg = TrainConfig(epochs=args.epochs, hidden=args.hidden, lr=args.lr, dropout=args.dropout,
                      device=args.device, cpu_budget=args.cpu_budget, gpu_budget=args.gpu_budget,
                      in_memory=args.in_memory, backend=args.backend, seed=args.seed,
                      checkpoint=args.checkpoint, resume=args.resume,
                      allow_eval_split=args.allow_eval_split,
                      weight_decay=args.weight_decay, early_stop=args.early_stop,
                      save_model=args.save_model, overwrite=args.overwrite,
                      model=args.model, heads=args.heads, layers=args.layers,
                      eval=args.eval)
    # train may commit evaluation plans and packs (and writes checkpoints) before it stops:
    # an interrupt or a failure after that says exactly what was written.
    writes = WriteLog(args.store)
    bar = None if args.quiet else BarProgress()
    try:
        summary = run_training(args.store, args.plan, cfg, progress=bar, writes=writes)
    except KeyboardInterrupt:
        print(f"oocstore: interrupted; {writes.describe()}", file=sys.stderr)
        return 130
    except (OocError, OSError) as err:
        if not (writes.settled() or writes.files):
            raise  # nothing written: the usual one-line error
        print(error_line(err, args), file=sys.stderr)
        print(f"oocstore: before it stopped, {writes.describe()}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    if not report:
        return 0
    if args.json:
        print(summary_json(summary))
        return 0
    mode = "in memory" if summary["in_memory"] else f"out of core (pack {summary['pack']})"
    accs = ", ".join(f"{k} acc {summary[f'{k}_acc']:.4f}" for k in ("val", "test")
                     if summary[f"{k}_acc"] is not None) or "no val/test split to evaluate"
    if summary["val_acc"] is not None or summary["test_acc"] is not None:
        accs += f" ({summary['eval']} evaluation)"
    print(f"trained {summary['model']} on plan {summary['plan']} {mode} on "
          f"{summary['device']}: {accs}")
    for e in summary["epochs"]:
        val = f", val acc {e['val_acc']:.4f}" if e.get("val_acc") is not None else ""
        print(f"  epoch {e['epoch']}: {e['time_s']:.1f} s, waited {e['wait_s']:.2f} s for data, "
              f"loss {e['loss']:.4f}{val}")
    if summary["best_epoch"] is not None and (args.early_stop or args.save_model):
        print(f"  best validation epoch {summary['best_epoch']}"
              + (" (stopped early)" if summary["early_stopped"] else "")
              + (f"; its model saved to {summary['model_file']}" if summary["model_file"] else ""))
    if not summary["in_memory"]:
        hr = ", ".join(f"{k} {v:.1%}" for k, v in summary["hit_rate"].items())
        print(f"  read {format_size(summary['bytes_read'])} for "
              f"{format_size(summary['useful_bytes'])} of useful rows (amplification "
              f"{summary['read_amplification']:.3f}); hits: {hr}; prefetch depth "
              f"{summary['prefetch']}")
    print(f"  peak RSS {format_size(summary['peak_rss_bytes'])}")
    return 0
