"""``oocstore train --eval full``: validation and test accuracy computed exactly over the
full graph (layer-wise, out of core, within the run's CPU budget) equal the saved model's
forward on the whole graph in memory; no evaluation plans are written; bad combinations
are refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import cli_store_fixtures, exit_status, train_json, tree_bytes
from oocstore import Store
from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.plan import list_plans
from oocstore.errors import UsageError
from oocstore.train import evaluate_full
from oocstore.train.full_eval import check_full_eval, full_counts
from oocstore.train.models import ModelSpec, build_from_spec, spec_of_state_dict

REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

store, fresh = cli_store_fixtures("eval_full",
                                  ingest="--nodes 1200 --feat-dim 12 --avg-degree 6",
                                  sample="--fanouts 3,3 --batch-size 200 --epochs 1",
                                  pack="--cpu-cache 16KiB --max-disk-blowup 32")


def in_memory_accuracy(store_path, model_file) -> dict[str, float]:
    """Accuracy of the saved model on every node of val and test: the model's forward
    over the whole graph as one block, every feature in memory."""
    state = torch.load(model_file, weights_only=True)
    spec = spec_of_state_dict(state, str(model_file))
    model = build_from_spec(spec)
    model.load_state_dict(state)
    model.eval()
    with Store(store_path) as s:
        indptr, indices = s.csc()
        x = torch.from_numpy(np.array(s.array("features"))).float()
        dst = torch.from_numpy(np.repeat(np.arange(s.num_nodes), np.diff(indptr)))
        ei = torch.stack([torch.from_numpy(np.asarray(indices, dtype=np.int64)), dst])
        with torch.no_grad():
            pred = model(x, [(ei, (s.num_nodes, s.num_nodes))] * spec.layers).argmax(1)
        y = torch.from_numpy(np.array(s.array("labels"), dtype=np.int64))
        return {k: int((pred[ids] == y[ids]).sum()) / len(ids)
                for k in ("val", "test")
                for ids in [torch.from_numpy(np.array(s.split(k), dtype=np.int64))]}


@pytest.mark.parametrize("model,extra", [("sage", []), ("gcn", ["--in-memory"]),
                                         ("gat", ["--heads", "2"])])
def test_full_accuracy_equals_in_memory_forward(fresh, tmp_path, capsys, model, extra):
    budget = ["--cpu-budget", "12MiB"] if "--in-memory" not in extra else []
    out = train_json(capsys, fresh, "--epochs", "2", "--hidden", "16", "--model", model,
                     "--eval", "full", "--save-model", str(tmp_path / "m.pt"), *budget,
                     *extra)
    assert out["eval"] == "full"
    assert [e["val_eval"] for e in out["epochs"]] == ["full", "full"]
    ref = in_memory_accuracy(fresh, tmp_path / "m.pt")
    # the saved model is the best validation epoch's: its val and test figures
    assert out["val_acc"] == pytest.approx(ref["val"], abs=1e-9)
    assert out["test_acc"] == pytest.approx(ref["test"], abs=1e-9)
    if budget:  # the pass runs in the run's budget (the loader lends it its buffers): the
        # peak stays where training alone is held (+ the 64 MiB docs/BUDGETS.md allows)
        assert out["peak_rss_bytes"] - out["rss_before_training_bytes"] <= (12 << 20) + (64 << 20)
    # nothing sampled for evaluation: no val-eval / test-eval plans were written
    with Store(fresh) as s:
        assert not {"val-eval", "test-eval"} & set(list_plans(s))


def test_default_stays_sampled(store, capsys):
    out = train_json(capsys, store, "--epochs", "1", "--hidden", "8", "--cpu-budget", "8MiB")
    assert out["eval"] == "sampled" and out["epochs"][0]["val_eval"] == "sampled"


def test_full_counts_within_budget_and_layer_batch(store, tmp_path):
    """The pass's chunks follow the budget and give the same counts at any chunking."""
    with Store(store) as s:
        torch.manual_seed(0)
        spec = ModelSpec("gat", s.feature_dim, 8, s.num_classes, 2, heads=2)
        model = build_from_spec(spec)
        acc = BudgetAccountant(MemoryBudget(cpu=7 << 20))
        a = full_counts(s, model, ["val", "test"], cpu_budget=7 << 20, work_dir=tmp_path,
                        accountant=acc)
        b = full_counts(s, model, ["val", "test"], layer_batch=50, work_dir=tmp_path)
        n_val = len(s.split("val"))
        assert evaluate_full(s, model, "test", layer_batch=300, work_dir=tmp_path) == \
            a["test"][0] / a["test"][1]
        with pytest.raises(UsageError, match="has no 'train2' split"):
            evaluate_full(s, model, "train2")
    assert a == b and a["val"][1] == n_val
    # the accountant's figures: the pass held at most the budget, and released it all
    assert 5 << 20 < acc.peak("cpu") <= 7 << 20 and acc.charged("cpu") == 0
    assert list(tmp_path.iterdir()) == []  # hidden states removed


@pytest.mark.parametrize("case", ["budget", "dgl", "bad_mode", "disk"])
def test_refused_before_anything_is_written(fresh, capsys, monkeypatch, case):
    argv = {"budget": ["--eval", "full", "--cpu-budget", "3MiB", "--model", "gat"],
            "dgl": ["--eval", "full", "--backend", "dgl"],
            "bad_mode": ["--eval", "exact"],
            "disk": ["--eval", "full", "--cpu-budget", "12MiB"]}[case]
    match = {"budget": "--eval full: --cpu-budget 3.00 MiB is below the .* gat inference "
                       "needs .* give --cpu-budget of at least .*; or use --eval sampled",
             "dgl": "--eval full runs the model's PyG layers .* use --backend pyg or --eval "
                    "sampled",
             "bad_mode": "invalid choice: 'exact'",
             "disk": "the layer-wise pass needs .* of disk for its hidden states .* 100 B are "
                     "free: free space there, or use --eval sampled"}[case]
    if case == "disk":
        import collections

        import oocstore.layerwise as layerwise

        usage = collections.namedtuple("usage", "total used free")
        monkeypatch.setattr(layerwise.shutil, "disk_usage", lambda p: usage(10**9, 0, 100))
    before = tree_bytes(Path(fresh))
    assert exit_status(["train", fresh, "--epochs", "1", "--hidden", "8", "--quiet",
                        *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    import re
    assert re.search(match, err[-1]), err
    if case != "bad_mode":
        assert len(err) == 1 and err[0].startswith("oocstore: error: ")
    assert tree_bytes(Path(fresh)) == before


@pytest.mark.skipif(not (REAL_DATA / "graphdata" / "dblp.npz").exists(),
                    reason=f"real data {REAL_DATA}/graphdata/dblp.npz not present: this test "
                           "needs the shared data folder beside the checkout")
def test_dblp_full_accuracy_equals_in_memory_forward(tmp_path, capsys):
    from oocstore.cli import main

    path = str(tmp_path / "dblp")
    assert main(["ingest", "npz", str(REAL_DATA / "graphdata" / "dblp.npz"), path,
                 "--trust-pickle", "--quiet"]) == 0
    assert main(["sample", path, "--fanouts", "5,5", "--batch-size", "256", "--epochs", "1",
                 "--quiet"]) == 0
    assert main(["pack", path, "--cpu-budget", "96MiB", "--quiet"]) == 0
    capsys.readouterr()
    out = train_json(capsys, path, "--epochs", "1", "--hidden", "32", "--eval", "full",
                     "--cpu-budget", "96MiB", "--save-model", str(tmp_path / "m.pt"))
    ref = in_memory_accuracy(path, tmp_path / "m.pt")
    assert out["val_acc"] == pytest.approx(ref["val"], abs=1e-9)
    assert out["test_acc"] == pytest.approx(ref["test"], abs=1e-9)
    assert out["val_acc"] > 0.5  # it learned (dblp: 4 classes)
    print(json.dumps({"val_acc": out["val_acc"], "test_acc": out["test_acc"]}))


def test_a_python_caller_reads_the_parameters_it_passed():
    """The refusal names ``eval`` and ``backend`` as passed in Python (the CLI writes
    ``--eval full ... --backend dgl`` in, see test_refused_before_anything_is_written)."""
    spec = ModelSpec("sage", 8, 8, 2, 2, None, 0.5, "dgl")
    with pytest.raises(UsageError, match=r"^eval='full' runs the model's PyG layers .* "
                                         r"backend='dgl' builds another model: use "
                                         r"backend='pyg' or eval='sampled'$"):
        check_full_eval(None, spec, None)
