"""`oocstore train` as people expect: validation every epoch, early stopping, the best
model saved, weight decay, a per-batch bar with an honest rate, options spelled out."""

import io
import re
import subprocess
import sys

import pytest
import torch

from helpers import REPO, cli_store_fixtures, exit_status, train_json, tree_bytes
from oocstore import Store
from oocstore.cli import main
from oocstore.train import GraphSAGE, evaluate
from oocstore.train.loop import InMemoryFeatures
from oocstore.plan import PlanReader
from oocstore.train.progress import BarProgress
from oocstore.train.selection import BestModel


store, fresh = cli_store_fixtures("train_cli",
                                  ingest="--nodes 2000 --feat-dim 16 --avg-degree 6",
                                  sample="--fanouts 4,4 --batch-size 256 --epochs 2",
                                  pack="--cpu-cache 16KiB --max-disk-blowup 32")




def one_line_error(capsys, *argv) -> str:
    assert exit_status(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_val_acc_every_epoch_out_of_core_equals_in_memory(store, capsys):
    ooc = train_json(capsys, store, "--epochs", "3", "--hidden", "16", "--cpu-budget", "8MiB")
    mem = train_json(capsys, store, "--epochs", "3", "--hidden", "16", "--in-memory")
    accs = [e["val_acc"] for e in ooc["epochs"]]
    assert len(accs) == 3 and all(0 <= a <= 1 for a in accs)
    assert [e["val_acc"] for e in mem["epochs"]] == pytest.approx(accs, abs=0.01)
    assert ooc["val_acc"] == accs[-1]  # no selection: the last model is reported
    assert accs[-1] > accs[0]  # it learns
    # Validation takes turns with training in the one budget: the peak stays where
    # training alone is held (budget + the 64 MiB overhead docs/BUDGETS.md allows).
    assert ooc["peak_rss_bytes"] - ooc["rss_before_training_bytes"] <= (8 << 20) + (64 << 20)


def test_best_model_tracks_the_first_best_epoch_and_stops_after_patience():
    model = torch.nn.Linear(2, 2)
    best = BestModel(patience=2)
    seq = [0.5, 0.7, 0.7, 0.6, 0.9]
    stops = []
    for epoch, acc in enumerate(seq):
        with torch.no_grad():
            model.weight.fill_(epoch)
        stops.append(best.update(epoch, acc, model))
    assert stops == [False, False, False, True, True]
    assert best.epoch == 1 and best.val_acc == 0.7
    assert torch.all(best.state["weight"] == 1)  # a copy, not the live weights
    assert BestModel(patience=None).update(0, 0.1, model) is False


def test_early_stop_and_save_model_report_the_best_epoch(fresh, tmp_path, capsys):
    # A learning rate too small to change any prediction: no epoch beats the first, so
    # patience 1 stops after epoch 1 and the model of epoch 0 is the result.
    out = tmp_path / "best.pt"
    s = train_json(capsys, fresh, "--epochs", "6", "--hidden", "16", "--lr", "1e-12",
                 "--early-stop", "1", "--save-model", str(out))
    assert [e["epoch"] for e in s["epochs"]] == [0, 1]
    assert s["early_stopped"] is True and s["best_epoch"] == 0
    assert s["model_file"] == str(out) and s["val_acc"] == s["epochs"][0]["val_acc"]
    state = torch.load(out, weights_only=True)
    with Store(fresh) as st:
        model = GraphSAGE(st.feature_dim, 16, st.num_classes, 2)
        model.load_state_dict(state)  # a plain state_dict of the CLI's model
        acc = evaluate(model, InMemoryFeatures(st).batches(PlanReader(st, "val-eval"), 0))
    assert acc == pytest.approx(s["val_acc"], abs=1e-12)


def test_save_model_learns_and_saves_the_best_not_the_last(fresh, tmp_path, capsys):
    out = tmp_path / "m.pt"
    s = train_json(capsys, fresh, "--epochs", "4", "--hidden", "16", "--lr", "0.3",
                 "--save-model", str(out), "--in-memory")
    accs = [e["val_acc"] for e in s["epochs"]]
    assert s["best_epoch"] == accs.index(max(accs)) and s["val_acc"] == max(accs)
    with Store(fresh) as st:
        model = GraphSAGE(st.feature_dim, 16, st.num_classes, 2)
        model.load_state_dict(torch.load(out, weights_only=True))
        acc = evaluate(model, InMemoryFeatures(st).batches(PlanReader(st, "val-eval"), 0))
    assert acc == pytest.approx(max(accs), abs=1e-12)


@pytest.mark.parametrize("argv, match", [
    (["--save-model", "{tmp}/exists.pt"], r"--save-model .*exists.pt: the file exists; give "
                                          r"--overwrite"),
    (["--save-model", "{tmp}/no/such/dir/m.pt"], r"directory .*no/such/dir does not exist"),
    (["--save-model", "{tmp}"], r"is a directory; give a file name"),
    (["--early-stop", "0"], r"--early-stop 0: give the number of epochs"),
    (["--weight-decay", "-0.1"], r"--weight-decay -0.1: give a finite value >= 0"),
    (["--cpu-budget", "-5MiB"], r"--cpu-budget: size '-5MiB' is negative"),
    (["--epoch", "2"], r"unrecognized arguments: --epoch 2"),
])
def test_refused_before_anything_is_written(fresh, tmp_path, capsys, argv, match):
    (tmp_path / "exists.pt").write_bytes(b"keep me")
    before = tree_bytes(tmp_path, skip=())
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    err = one_line_error(capsys, fresh, "--epochs", "1", "--hidden", "8", *argv)
    assert re.search(match, err), err
    assert tree_bytes(tmp_path, skip=()) == before  # store, model file: byte-identical


def test_overwrite_replaces_the_model_file(fresh, tmp_path, capsys):
    out = tmp_path / "m.pt"
    out.write_bytes(b"old")
    train_json(capsys, fresh, "--epochs", "1", "--hidden", "8", "--save-model", str(out),
             "--overwrite")
    assert set(torch.load(out, weights_only=True)) >= {"convs.0.lin_l.weight"}
    assert not list(tmp_path.glob(".m.pt*tmp"))


def test_weight_decay_reaches_the_optimizer(store, tmp_path, capsys):
    ck = tmp_path / "ck"
    a = train_json(capsys, store, "--epochs", "1", "--hidden", "16", "--checkpoint", str(ck),
                 "--weight-decay", "0.05")
    state = torch.load(ck / "checkpoint.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.05
    b = train_json(capsys, store, "--epochs", "1", "--hidden", "16")
    assert a["epochs"][0]["loss"] != b["epochs"][0]["loss"]


def test_resume_keeps_early_stopping_and_the_best_model(store, tmp_path, capsys):
    """An interrupted run resumed with the same flags ends like the uninterrupted one:
    the same epochs, the same best epoch, the same saved weights."""
    flags = ["--hidden", "16", "--lr", "1e-12", "--early-stop", "2", "--in-memory"]
    whole = train_json(capsys, store, "--epochs", "6", *flags, "--save-model",
                     str(tmp_path / "whole.pt"))
    ck = str(tmp_path / "ck")
    train_json(capsys, store, "--epochs", "2", *flags, "--checkpoint", ck)
    state = torch.load(tmp_path / "ck" / "checkpoint.pt", weights_only=True)
    assert state["best"]["epoch"] == 0 and state["best"]["stopped"] is False
    assert set(state["best"]["model"]) == set(state["model"])
    resumed = train_json(capsys, store, "--epochs", "6", *flags, "--checkpoint", ck, "--resume",
                       "--save-model", str(tmp_path / "resumed.pt"))
    for key in ("best_epoch", "early_stopped", "val_acc", "test_acc"):
        assert resumed[key] == whole[key]
    assert [e["epoch"] for e in resumed["epochs"]] == [e["epoch"] for e in whole["epochs"]]
    w = torch.load(tmp_path / "whole.pt", weights_only=True)
    r = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert all(torch.equal(w[k], r[k]) for k in w)
    # a run that stopped early does not train on when resumed
    again = train_json(capsys, store, "--epochs", "6", *flags, "--checkpoint", ck, "--resume")
    assert len(again["epochs"]) == len(whole["epochs"]) < 6


def test_bar_rate_counts_from_the_end_of_the_first_step():
    """The first step carries the setup (loader, warm-up): the rate leaves it out, and
    validation after the last step does not dilute it either."""
    now = [100.0]
    out = io.StringIO()
    bar = BarProgress(file=out, clock=lambda: now[0])
    bar.epoch_start(0, 1, 3)
    now[0] += 30.0  # a slow first batch
    bar.batch(100, 1.0)
    assert bar.rate() is None
    now[0] += 1.0
    bar.batch(100, 1.0)
    now[0] += 1.0
    bar.batch(50, 1.0)
    assert bar.rate() == pytest.approx(150 / 2.0)
    now[0] += 60.0  # validation
    bar.epoch_end({"epoch": 0, "val_acc": 0.5})
    assert bar.rate() == pytest.approx(150 / 2.0)
    assert "75 seeds/s, loss 1.0000, val acc 0.5000" in out.getvalue()
    bar.epoch_start(1, 2, 10, done=4)  # resumed mid-epoch: the bar starts at batch 4
    bar.batch(10, 1.0)
    assert bar.bar.n == 5
    bar.close()


def test_progress_shows_val_acc_and_a_closed_pipe_exits_quietly(store):
    proc = subprocess.Popen([sys.executable, "-m", "oocstore", "train", store, "--epochs", "2",
                             "--hidden", "8"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader went away (`| head -0`)
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "Exception ignored" not in err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "val acc 0." in err
    assert "seeds/s" in err


def test_gs_commands_need_options_spelled_out(tmp_path, capsys):
    assert exit_status(["gs-train", str(tmp_path), "--step", "3"]) == 2
    assert "unrecognized arguments: --step 3" in capsys.readouterr().err


@pytest.fixture(scope="module")
def one_epoch_checkpoint(store, tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck1")
    assert main(["train", store, "--epochs", "1", "--hidden", "16", "--in-memory",
                 "--checkpoint", str(ck), "--quiet"]) == 0
    return torch.load(ck / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("field, value", [("epoch", 99), ("val_acc", 1.5), ("stopped", 1),
                                          ("model", {"convs.0.lin_l.weight": torch.zeros(3)})])
def test_damaged_best_entry_is_refused_on_resume(store, one_epoch_checkpoint, tmp_path, capsys,
                                                 field, value):
    path = tmp_path / "ck" / "checkpoint.pt"
    path.parent.mkdir()
    state = dict(one_epoch_checkpoint, best=dict(one_epoch_checkpoint["best"], **{field: value}))
    torch.save(state, path)
    err = one_line_error(capsys, store, "--epochs", "2", "--hidden", "16", "--in-memory",
                         "--checkpoint", str(path.parent), "--resume")
    assert str(path) in err and "best" in err and "start a new run without --resume" in err


def test_resume_with_another_weight_decay_is_refused(store, one_epoch_checkpoint, tmp_path,
                                                     capsys):
    path = tmp_path / "ck" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save(one_epoch_checkpoint, path)  # trained without weight decay
    err = one_line_error(capsys, store, "--epochs", "2", "--hidden", "16", "--in-memory",
                         "--checkpoint", str(path.parent), "--resume", "--weight-decay", "0.01")
    assert str(path) in err and "resume with the same --weight-decay" in err
