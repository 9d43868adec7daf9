"""DGL vs PyG accuracy parity: the same GraphSAGE on the same plans, one backend per run.

PyG lives in the main environment (torch 2.13), DGL 2.1 in ``.venv-dgl`` (torch 2.2,
``make test-dgl`` builds it), so one process cannot run both: run this script once per
backend. Both runs share the ingested store and sample the same plans (every draw is
keyed by seed, epoch and batch), train a 2-layer mean-aggregator SAGE (PyG
``SAGEConv`` / ``dgl.nn.SAGEConv``: the same function, only the weight initialisation
differs) through the same loop (:func:`oocstore.train.train_epoch`) with the same seeds,
and report the test accuracy at the epoch of best validation accuracy, per seed and
mean ± std. Settings are bench/plan_epochs_accuracy.py's for amazon_photo with fresh
sampling (a plan of E epochs): hidden 128, fanouts 10,5, batch 512, lr 0.005, dropout
0.5, 20 epochs; validation/test plans take all neighbours.

Results go to ``bench/results/dgl_parity_<backend>.json``; when the other backend's file
is there (same config), the run also prints the difference of the two means.

    .venv/bin/python     bench/dgl_parity.py --backend pyg --threads 2
    .venv-dgl/bin/python bench/dgl_parity.py --backend dgl --threads 2

``--toy`` trains a tiny synthetic graph for 2 epochs (the test that keeps this script
alive) and writes nothing unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from oocstore.plan import PlanReader  # noqa: E402
from oocstore.store import Store  # noqa: E402
from oocstore.train import InMemoryFeatures, evaluate, train_epoch  # noqa: E402
from oocstore.samplers import sample_plan  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from _common import dataset_store  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "graphdata"
RESULTS = REPO / "bench" / "results"
DEFAULT_WORK = REPO / "bench" / "data" / "dgl_parity"
CONFIG = dict(dataset="amazon_photo", epochs=20, hidden=128, layers=2, lr=0.005, dropout=0.5,
              fanouts="10,5", batch_size=512, eval_fanouts="all,all", eval_batch_size=2048,
              split=[0.6, 0.2, 0.2])
TOY = dict(CONFIG, dataset="toy-synthetic", epochs=2, hidden=32, fanouts="5,5", batch_size=256,
           lr=0.01)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def versions(backend: str) -> dict:
    import numpy

    out = {"torch": torch.__version__, "numpy": numpy.__version__}
    if backend == "dgl":
        from oocstore.integrations.dgl import require_dgl

        out["dgl"] = require_dgl().__version__
    else:
        from oocstore.integrations.pyg import require_pyg

        out["torch_geometric"] = require_pyg().__version__
    return out


def build_model(backend: str, in_dim: int, classes: int, cfg: dict) -> torch.nn.Module:
    if backend == "dgl":
        from oocstore.train.dgl_model import DGLGraphSAGE

        return DGLGraphSAGE(in_dim, cfg["hidden"], classes, cfg["layers"], cfg["dropout"])
    from oocstore.train import GraphSAGE

    return GraphSAGE(in_dim, cfg["hidden"], classes, cfg["layers"], cfg["dropout"])


def prepare_store(cfg: dict, work: Path, toy: bool) -> Path:
    toy_spec = dict(nodes=2000, feat_dim=16, avg_degree=8, seed=0) if toy else None
    return dataset_store(work, cfg["dataset"], toy_spec=toy_spec, split=cfg["split"])


def run_seed(store: Store, feats: InMemoryFeatures, cfg: dict, backend: str, seed: int,
             val: PlanReader, test: PlanReader) -> dict:
    name = f"parity-train-s{seed}"
    # a plan of E epochs = fresh sampling every epoch; identical for both backends
    sample_plan(store, fanouts=cfg["fanouts"], batch_size=cfg["batch_size"],
                epochs=cfg["epochs"], seed=seed, name=name, split="train", overwrite=True,
                verify=False)
    reader = PlanReader(store, name, check_graph=False)
    torch.manual_seed(seed)
    model = build_model(backend, feats.feat_dim, feats.num_classes, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    best_val, best_epoch, best_state, seconds, vals = -1.0, -1, None, [], []
    for e in range(cfg["epochs"]):
        r = train_epoch(model, opt, feats.batches(reader, e), "cpu")
        v = evaluate(model, feats.batches(val, 0))
        seconds.append(r["seconds"])
        vals.append(v)
        if v > best_val:
            best_val, best_epoch, best_state = v, e, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    acc = evaluate(model, feats.batches(test, 0))
    log(f"  {backend} seed={seed} test {acc:.4f} (best val {best_val:.4f} at epoch {best_epoch}, "
        f"{statistics.median(seconds):.2f} s/epoch)")
    return {"seed": seed, "test_acc": acc, "best_val": best_val, "best_epoch": best_epoch,
            "val_acc": vals, "median_epoch_seconds": statistics.median(seconds)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["pyg", "dgl"], required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=None, help="override the 20 training epochs")
    p.add_argument("--toy", action="store_true", help="tiny synthetic graph, seconds")
    p.add_argument("--work", default=None, help=f"folder for the ingested store, shared by both "
                                                f"backends (default {DEFAULT_WORK}; --toy: temp)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--out", default=None, help="results JSON (default "
                                               "bench/results/dgl_parity_<backend>.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dict(TOY if args.toy else CONFIG)
    if args.epochs:
        cfg["epochs"] = args.epochs
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.toy and not (DATA / f"{cfg['dataset']}.npz").is_file():
        log(f"skipped: {DATA / (cfg['dataset'] + '.npz')} is absent (the real datasets live in "
            "../shared/data; run with --toy for the synthetic check)")
        return {"bench": "dgl_parity", "skipped": True}
    vers = versions(args.backend)  # fails early, with the fix, when the backend is missing
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dgl-parity-") as tmp:
        work = Path(args.work) if args.work else (Path(tmp) if args.toy else DEFAULT_WORK)
        path = prepare_store(cfg, work, args.toy)
        with Store(path, readonly=False) as store:
            for split in ("val", "test"):
                sample_plan(store, fanouts=cfg["eval_fanouts"], batch_size=cfg["eval_batch_size"],
                            epochs=1, seed=0, name=f"parity-{split}", split=split, overwrite=True,
                            verify=False)
            feats = InMemoryFeatures(store)
            val = PlanReader(store, "parity-val", check_graph=False)
            test = PlanReader(store, "parity-test", check_graph=False)
            log(f"{cfg['dataset']}: {feats.num_nodes} nodes x {feats.feat_dim} features, "
                f"{feats.num_classes} classes; backend {args.backend} {vers}")
            runs = [run_seed(store, feats, cfg, args.backend, s, val, test) for s in seeds]
    accs = [r["test_acc"] for r in runs]
    doc = {"bench": "dgl_parity", "backend": args.backend, "toy": args.toy, "config": cfg,
           "versions": vers, "threads": torch.get_num_threads(),
           "test_acc_mean": statistics.fmean(accs),
           "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
           "seconds": round(time.perf_counter() - t0, 1), "runs": runs,
           "command": " ".join(["python", "bench/dgl_parity.py",
                                *(argv if argv is not None else sys.argv[1:])])}
    print(f"{cfg['dataset']} {args.backend}: test accuracy {100 * doc['test_acc_mean']:.2f} ± "
          f"{100 * doc['test_acc_std']:.2f} % over seeds {seeds}")
    other = RESULTS / f"dgl_parity_{'dgl' if args.backend == 'pyg' else 'pyg'}.json"
    if not args.toy and other.is_file():
        o = json.loads(other.read_text())
        if o.get("config") == cfg and [r["seed"] for r in o["runs"]] == seeds:
            doc["difference_vs_" + o["backend"]] = doc["test_acc_mean"] - o["test_acc_mean"]
            print(f"  {o['backend']}: {100 * o['test_acc_mean']:.2f} ± "
                  f"{100 * o['test_acc_std']:.2f} %; {args.backend} - {o['backend']} = "
                  f"{100 * (doc['test_acc_mean'] - o['test_acc_mean']):+.2f} points")
    out = Path(args.out) if args.out else (None if args.toy else
                                           RESULTS / f"dgl_parity_{args.backend}.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("bench", "backend", "toy", "test_acc_mean",
                                          "test_acc_std", "seconds")}))
    return doc


if __name__ == "__main__":
    main()
