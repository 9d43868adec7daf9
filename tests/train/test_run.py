"""`oocstore train`: out of core vs in memory, JSON summary, budgets, checkpoints."""


import pytest
import torch

from helpers import cli_store_fixtures, train_json
from oocstore.cli import main
from oocstore.errors import UsageError
from oocstore.train.run import TrainConfig, _check_checkpoint_dir
from oocstore.train.selection import check_model_path


store, _ = cli_store_fixtures("train",
                                 ingest="--nodes 3000 --feat-dim 16 --avg-degree 8",
                                 sample="--fanouts 5,5 --batch-size 256 --epochs 2",
                                 pack="--cpu-cache 16KiB --max-disk-blowup 32")



def test_out_of_core_matches_in_memory(store, capsys):
    ooc = train_json(capsys, store, "--epochs", "3", "--hidden", "32", "--cpu-budget", "8MiB")
    mem = train_json(capsys, store, "--epochs", "3", "--hidden", "32", "--in-memory")
    for key in ("test_acc", "val_acc", "epochs", "bytes_read", "useful_bytes",
                "read_amplification", "hit_rate", "peak_rss_bytes", "peak_gpu_bytes", "budget"):
        assert key in ooc
    assert 0 <= ooc["test_acc"] <= 1 and ooc["test_acc"] > 0.6
    assert abs(ooc["test_acc"] - mem["test_acc"]) <= 0.01
    assert ooc["bytes_read"] > 0 and ooc["read_amplification"] < 1.1
    assert ooc["budget"]["cpu"] == 8 << 20 and ooc["peak_gpu_bytes"] is None
    assert [e["epoch"] for e in ooc["epochs"]] == [0, 1, 2]
    # Growth over the RSS training started with: the budget, the loader's fixed overhead
    # and the model's activations and autograd state (docs/BUDGETS.md: 64 MiB in all).
    assert ooc["peak_rss_bytes"] - ooc["rss_before_training_bytes"] <= (8 << 20) + (64 << 20)
    assert all(e["time_s"] > 0 and e["wait_s"] >= 0 for e in ooc["epochs"])


def test_budget_too_small_exits_within_seconds_naming_the_minimum(store, capsys):
    assert main(["train", store, "--epochs", "1", "--cpu-budget", "64KiB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget" in err[0] and "minimum needed is" in err[0]
    assert "raise --cpu-budget to at least" in err[0]


def test_a_budget_refusal_names_the_parameter_in_python_and_the_flag_in_the_cli(store, capsys):
    """One refusal, two readers: a Python caller (run_training, NodeLoader) reads the
    parameter it passes (``cpu_budget``), the command line's user the flag typed
    (``--cpu-budget``); the figures are the same."""
    from oocstore import Store
    from oocstore.budget import MemoryBudget
    from oocstore.errors import BudgetError
    from oocstore.loader import NodeLoader
    from oocstore.train.run import run_training

    with pytest.raises(BudgetError) as err:
        run_training(store, None, TrainConfig(epochs=1, cpu_budget=64 << 10))
    py = str(err.value)
    assert "raise cpu_budget to at least" in py and "--cpu-budget to" not in py, py
    with Store(store) as s, pytest.raises(BudgetError) as err:
        NodeLoader(s, budget=MemoryBudget(cpu=64 << 10))
    assert "raise cpu_budget to at least" in str(err.value), str(err.value)
    assert main(["train", store, "--epochs", "1", "--cpu-budget", "64KiB"]) == 2
    line = capsys.readouterr().err.strip()
    assert "raise --cpu-budget to at least" in line and "cpu_budget" not in line, line
    least = lambda text, name: text.split(f"raise {name} to at least ")[1].split(",")[0]  # noqa: E731
    assert least(py, "cpu_budget") == least(line, "--cpu-budget")


def test_checkpoint_and_resume_continue_the_run(store, tmp_path, capsys):
    ck = str(tmp_path / "ck")
    first = train_json(capsys, store, "--epochs", "2", "--hidden", "16", "--checkpoint", ck)
    assert (tmp_path / "ck" / "checkpoint.pt").exists()
    resumed = train_json(capsys, store, "--epochs", "3", "--hidden", "16", "--checkpoint", ck,
                       "--resume")
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2]
    assert resumed["epochs"][:2] == first["epochs"]
    state = torch.load(tmp_path / "ck" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and state["loader"]["epoch"] == 3


@pytest.mark.parametrize("argv, match", [
    (["--device", "cuda"], "no CUDA device"),
    (["--resume"], "--resume needs --checkpoint"),
    (["--plan", "nope"], "has no plan 'nope'"),
])
def test_bad_input_is_one_line(store, capsys, argv, match):
    if argv[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", store, "--epochs", "1", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


@pytest.mark.parametrize("kwargs, said", [
    (dict(epochs=0), "epochs=0: give 1 or more"),
    (dict(lr=-1.0), "lr=-1.0: give a finite learning rate"),
    (dict(weight_decay=-0.5), "weight_decay=-0.5: give a finite value >= 0"),
    (dict(early_stop=0), "early_stop=0: give the number of epochs"),
    (dict(resume=True), "resume=True needs checkpoint=DIR"),
    (dict(eval="all"), "eval='all': use one of"),
])
def test_a_python_caller_reads_the_parameter_it_passed(kwargs, said):
    """TrainConfig's errors name its parameters (the CLI writes its flags in instead,
    see test_bad_input_is_one_line)."""
    with pytest.raises(UsageError) as err:
        TrainConfig(**kwargs)
    assert said in str(err.value) and "--" not in str(err.value)


def test_model_and_checkpoint_paths_are_refused_by_parameter_name(tmp_path):
    (tmp_path / "exists.pt").write_bytes(b"")
    with pytest.raises(UsageError, match=r"^save_model='.*exists.pt': the file exists; give "
                                         r"overwrite=True"):
        check_model_path(tmp_path / "exists.pt", overwrite=False)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UsageError, match=r"^checkpoint='.*file': not a directory"):
        _check_checkpoint_dir(tmp_path / "file")


def test_dgl_backend_without_dgl_says_how_to_install(store, capsys):
    from oocstore.integrations import MissingDependencyError
    from oocstore.integrations.dgl import require_dgl

    try:
        require_dgl()
        pytest.skip("DGL is installed here")
    except MissingDependencyError:
        pass
    assert main(["train", store, "--epochs", "1", "--backend", "dgl"]) == 2
    err = capsys.readouterr().err
    assert "dgl" in err.lower() and "make test-dgl" in err
