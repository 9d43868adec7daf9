"""A Ctrl-C while a checkpoint is written: the file is written whole, then the run stops."""

import os
import signal

import pytest
import torch

import oocstore.train.checkpoint as checkpoint


@pytest.fixture(autouse=True)
def python_sigint():
    """Python's own SIGINT handler during each test (whatever the test run had), put back
    after."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_a_ctrl_c_during_the_save_is_raised_once_the_checkpoint_is_in_place(tmp_path,
                                                                             monkeypatch):
    real = torch.save
    calls = []

    def save(obj, f):  # Ctrl-C arrives while torch writes the file
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        real(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"epoch": 3, "w": torch.arange(5)}, path)
    assert calls == [1]
    back = torch.load(path)
    assert back["epoch"] == 3 and torch.equal(back["w"], torch.arange(5))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_a_save_without_ctrl_c_raises_nothing_and_restores_the_handler(tmp_path):
    path = checkpoint.save_atomic({"epoch": 1}, tmp_path / "c.pt")
    assert torch.load(path)["epoch"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_stops_the_save_at_once_and_leaves_no_file(tmp_path, monkeypatch):
    def save(obj, f):  # the user presses Ctrl-C twice while the disk is slow
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the second Ctrl-C should have stopped the save")

    monkeypatch.setattr(checkpoint.torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"epoch": 1}, tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
