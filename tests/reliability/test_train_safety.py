"""`oocstore train` under hostile checkpoints, refusals, interrupts and a second writer.

* A checkpoint is loaded without running code (``weights_only=True``): a crafted pickle
  is refused with one line naming the file, and what its ``__reduce__`` asked for never
  happens; malformed checkpoints are one-line errors too.
* Resuming repeats the uninterrupted run loss for loss (random states are saved).
* A refused run writes nothing (store byte-identical, catalog entries identical); an
  evaluation pack an earlier run made that the budget cannot hold is re-packed.
* The interrupt message lists what the command committed (or says it left the store as
  it was only when that is true).
* A second ``train`` that needs evaluation plans waits for the writer holding the store
  and then uses what it committed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.cli import main
from oocstore.errors import StoreLockedError
from oocstore.pack.packer import PackOptions, plan_layout
from oocstore.plan import PlanReader, list_plans, plan_key
from oocstore.store import Store
from oocstore.tiers.reader import list_packs
from oocstore.train.run import TrainConfig, run_training

from helpers import REPO, load_tool, tree_bytes


NODES, DIM = 3000, 16


def _build(path: Path, blowup: str, split=(0.6, 0.2, 0.2)) -> Path:
    spec = SyntheticSpec(nodes=NODES, feat_dim=DIM, avg_degree=8, seed=0)
    build_store(path, synthetic_source(spec), split_fractions=split, seed=0)
    assert main(["sample", str(path), "--fanouts", "5,5", "--batch-size", "256", "--epochs", "2",
                 "--quiet"]) == 0
    assert main(["pack", str(path), "--cpu-cache", "16KiB", "--max-disk-blowup", blowup,
                 "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Plan ``train`` packed (16 KiB CPU cache); no evaluation plans yet."""
    return _build(tmp_path_factory.mktemp("train-safety") / "s", "32")


@pytest.fixture(scope="module")
def unpacked_template(tmp_path_factory):
    """Pack ``train`` with a blowup cap of 0 (every row read from the base array), on a
    store whose validation split is three times the training split: its loader needs
    less memory than the evaluation packs (cap 1, more batches), so the training pack's
    minimum is refused at evaluation."""
    return _build(tmp_path_factory.mktemp("train-safety-unpacked") / "s", "0",
                  split=(0.2, 0.6, 0.2))


@pytest.fixture
def store(template, tmp_path):
    return str(shutil.copytree(template, tmp_path / "s"))


def snapshot(path) -> tuple[dict, dict]:
    """Every data file's bytes, and every catalog entry."""
    with Store(path) as s:
        entries = dict(s.catalog.items(""))
    return tree_bytes(Path(path)), entries


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("oocstore: error: "), err
    return err[0]


# -- checkpoints ----------------------------------------------------------------------------

class _Marker:
    """Unpickling it creates ``path`` (a shell command in the attack this stands for)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _good_checkpoint(store, ck: Path) -> dict:
    assert main(["train", store, "--epochs", "1", "--hidden", "16", "--in-memory",
                 "--checkpoint", str(ck), "--quiet"]) == 0
    return torch.load(ck / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("how", ["zip", "legacy"])
def test_crafted_checkpoint_is_refused_and_runs_nothing(store, tmp_path, capsys, how):
    ck = tmp_path / "ck"
    state = _good_checkpoint(store, ck)
    marker = tmp_path / "ran"
    state["config"] = _Marker(marker)
    # torch.load reads both its zip format and the legacy (bare pickle) one.
    torch.save(state, ck / "checkpoint.pt", _use_new_zipfile_serialization=how == "zip")
    before = snapshot(store)
    line = one_line_error(capsys, ["train", store, "--epochs", "2", "--hidden", "16",
                                   "--in-memory", "--checkpoint", str(ck), "--resume"])
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert str(ck / "checkpoint.pt") in line and "could run code" in line
    assert snapshot(store) == before


def _truncated(state, path):
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("damage, match", [
    ("list", r"holds a list, not a dict"),
    ("no-model", r"entry 'model' is missing"),
    ("epoch-str", r"entry 'epoch' is a str"),
    ("history", r"epoch 1 does not match its 0 history entries"),
    ("truncated", r"cannot be read .*truncated or damaged"),
    ("garbage", r"cannot be read"),
    ("rng", r"random state is malformed"),
    ("loader", r"loader state lacks a valid epoch"),
    ("hidden", r"does not fit this model .*--hidden"),
    # found by the fuzzer: each failed later, in training, with a traceback
    ("has_gauss", r"random state is malformed"),
    ("numpy-tensor", r"random state is malformed"),
    ("step", r"optimizer state 'step' of parameter 0 is -1"),
    ("eps", r"optimizer setting 'eps' is 1180591620717411303424"),
    ("betas", r"optimizer setting 'betas' is \(1.0, 0.999\)"),
    ("moment", r"optimizer state 'exp_avg' of parameter 2 is a torch.float32 tensor of shape"),
])
def test_malformed_checkpoint_is_one_line_naming_the_file(store, tmp_path, capsys, damage,
                                                          match):
    ck = tmp_path / "ck"
    state = _good_checkpoint(store, ck)
    path = ck / "checkpoint.pt"
    if damage == "list":
        torch.save([1, 2], path)
    elif damage == "no-model":
        del state["model"]
        torch.save(state, path)
    elif damage == "epoch-str":
        state["epoch"] = "1"
        torch.save(state, path)
    elif damage == "history":
        state["history"] = []
        torch.save(state, path)
    elif damage == "truncated":
        _truncated(state, path)
    elif damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif damage == "rng":
        state["rng"]["numpy"]["keys"] = torch.zeros(5, dtype=torch.int64)
        torch.save(state, path)
    elif damage == "loader":
        state["loader"] = {"epoch": "x"}
        torch.save(state, path)
    elif damage in ("has_gauss", "numpy-tensor"):
        state["rng"]["numpy"] = torch.zeros(3) if damage == "numpy-tensor" else \
            {**state["rng"]["numpy"], "has_gauss": 2**70}
        torch.save(state, path)
    elif damage in ("step", "moment"):
        state["optimizer"]["state"][0 if damage == "step" else 2].update(
            {"step": -1} if damage == "step" else {"exp_avg": torch.zeros(3)})
        torch.save(state, path)
    elif damage in ("eps", "betas"):
        state["optimizer"]["param_groups"][0].update(
            {"eps": 2**70} if damage == "eps" else {"betas": (1.0, 0.999)})
        torch.save(state, path)
    hidden = "32" if damage == "hidden" else "16"
    for name in ("val-eval", "test-eval"):  # a resumed run would sample them again
        assert main(["rm", store, "--plan", name]) == 0
    before = snapshot(store)
    line = one_line_error(capsys, ["train", store, "--epochs", "2", "--hidden", hidden,
                                   "--in-memory", "--checkpoint", str(ck), "--resume"])
    assert str(path) in line and re.search(match, line), line
    assert snapshot(store) == before  # refused before anything was written


def _losses(capsys, argv) -> list[float]:
    assert main(["train", *argv, "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return [e["loss"] for e in summary["epochs"]], summary


@pytest.mark.parametrize("mode", [["--cpu-budget", "8MiB"], ["--in-memory"]],
                         ids=["out-of-core", "in-memory"])
def test_resume_repeats_the_uninterrupted_run_loss_for_loss(store, tmp_path, capsys, mode):
    common = [store, "--hidden", "16", "--dropout", "0.5", *mode]
    straight, full = _losses(capsys, [*common, "--epochs", "3", "--checkpoint",
                                      str(tmp_path / "a")])
    _losses(capsys, [*common, "--epochs", "1", "--checkpoint", str(tmp_path / "b")])
    resumed, summary = _losses(capsys, [*common, "--epochs", "3", "--checkpoint",
                                        str(tmp_path / "b"), "--resume"])
    assert len(straight) == 3 and resumed == straight  # exact, not approximately
    assert summary["test_acc"] == full["test_acc"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_no_unsafe_deserialisation_in_the_project():
    """Every torch.load passes weights_only=True; no bare pickle.load / np.load of
    pickles (ingest's allow-list unpickler is the one reader of pickles)."""
    offenders = []
    for root in ("oocstore", "samplers", "tools", "bench"):
        for path in (REPO / root).rglob("*.py"):
            text = path.read_text()
            for m in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
                if "weights_only=True" not in m.group(0):
                    offenders.append(f"{path}: {m.group(0)[:60]}")
            for m in re.finditer(r"np\.load\(([^()]|\([^()]*\))*\)", text):
                if "allow_pickle=True" in m.group(0):
                    offenders.append(f"{path}: {m.group(0)[:60]}")
            if re.search(r"pickle\.loads?\(", text):
                offenders.append(f"{path}: pickle.load")
    assert not offenders, offenders


# -- refusals write nothing -------------------------------------------------------------------

def train_pack_cpu_minimum(path) -> int:
    """The CPU budget the training pack needs (the loader's own up-front check)."""
    with Store(path) as s:
        return int(list_packs(s)["train"].min_working_set["cpu"])


@pytest.mark.parametrize("which, below_train, match", [
    # offsets from the training pack's minimum: far below and just below
    ("packed", 300 << 10, r"too small for pack 'train'"),
    ("packed", 1 << 10, r"too small for pack 'train'"),
])
def test_refused_run_leaves_the_store_byte_identical(template, unpacked_template, tmp_path,
                                                     capsys, which, below_train, match):
    src = template if which == "packed" else unpacked_template
    path = str(shutil.copytree(src, tmp_path / "s"))
    budget = str(train_pack_cpu_minimum(path) - below_train)
    before = snapshot(path)
    line = one_line_error(capsys, ["train", path, "--epochs", "1", "--hidden", "16",
                                   "--cpu-budget", budget])
    assert re.search(match, line) and "raise --cpu-budget to at least" in line, line
    assert snapshot(path) == before  # no plan, no pack, no new version, no file


def test_training_at_its_packs_minimum_evaluates_inside_it(unpacked_template, tmp_path, capsys):
    """A budget of exactly the training pack's minimum (too little for the evaluation
    packs' segments as the packer would choose them) trains and evaluates: the
    evaluation packs are laid out to fit it (one-batch segments, or none, or smaller
    batches) instead of the run being refused."""
    from oocstore.pack.packer import loader_floor

    path = str(shutil.copytree(unpacked_template, tmp_path / "s"))
    budget = train_pack_cpu_minimum(path)
    assert main(["train", path, "--epochs", "1", "--hidden", "16", "--cpu-budget", str(budget),
                 "--quiet"]) == 0, capsys.readouterr().err
    with Store(path) as s:
        packs = list_packs(s)
    for name in ("val-eval", "test-eval"):
        assert loader_floor(packs[name].min_working_set) <= budget


def test_eval_pack_the_budget_cannot_hold_is_repacked(unpacked_template, tmp_path, capsys):
    """Evaluation packs made beside a training pack with a larger CPU cache are re-packed
    to fit the budget of a later run, not reused (which failed it after training)."""
    store = str(shutil.copytree(unpacked_template, tmp_path / "s"))

    def pack(cache):
        assert main(["pack", store, "--plan", "train", "--cpu-cache", cache,
                     "--max-disk-blowup", "32", "--overwrite", "--quiet"]) == 0

    def eval_packs():
        with Store(store) as s:
            return {n: p for n, p in list_packs(s).items() if n.endswith("-eval")}

    pack("128KiB")
    assert main(["train", store, "--epochs", "1", "--hidden", "16", "--quiet"]) == 0
    assert {n: p.cpu_rows for n, p in eval_packs().items()} == {"val-eval": 2048,
                                                                 "test-eval": 2048}
    pack("0")  # re-packed to fit a tighter budget; the evaluation plans are unchanged
    capsys.readouterr()
    # room for the training pack and for each evaluation pack without its CPU cache, and
    # 19 KiB more: less than the evaluation packs' 128 KiB caches
    with Store(store) as s:
        floors = [plan_layout(s, PlanReader(s, name), PackOptions(max_disk_blowup=32))
                  .min_working_set["cpu"] for name in ("val-eval", "test-eval")]
    budget = max(train_pack_cpu_minimum(store), *floors) + (19 << 10)
    assert any(p.min_working_set["cpu"] > budget for p in eval_packs().values())
    assert main(["train", store, "--epochs", "1", "--hidden", "16", "--cpu-budget",
                 str(budget), "--quiet"]) == 0, capsys.readouterr().err
    assert all(p.min_working_set["cpu"] <= budget for p in eval_packs().values())


# -- interrupts ---------------------------------------------------------------------------

def _default_sigint() -> None:
    # A child inherits an ignored SIGINT (a test run whose process ignores it: then the
    # child's Python installs no KeyboardInterrupt handler); start it as a shell would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(*args):
    # faulthandler on: a child that does not stop dumps its threads' stacks (see _hung)
    return subprocess.Popen([sys.executable, "-m", "oocstore", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                            preexec_fn=_default_sigint)


def _hung(proc, err_so_far: str = "") -> str:
    """A child that did not exit in time: its threads' stacks (SIGABRT makes faulthandler
    print them), then it is killed; returns what it wrote to stderr."""
    proc.send_signal(signal.SIGABRT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return f"the child did not exit within 60 s of SIGINT; its stderr:\n{err_so_far}{err or ''}"


class _Stderr:
    """The lines a child writes to stderr, collected by a thread as they come."""

    def __init__(self, proc):
        import threading

        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc):
        for line in proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, proc, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)

    def text(self) -> str:
        """Everything, once the child closed stderr; closes the child's pipes."""
        self._thread.join(timeout=60)
        self._proc.stderr.close()
        self._proc.stdout.close()
        return "".join(self.lines)


def test_interrupt_after_commits_lists_them(store, tmp_path):
    ck = tmp_path / "ck"
    proc = _spawn("train", store, "--epochs", "100000", "--hidden", "16", "--in-memory",
                  "--checkpoint", str(ck), "--quiet")
    deadline = time.monotonic() + 120
    while not (ck / "checkpoint.pt").exists():  # evaluation plans come before epoch 1
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(_hung(proc))
    assert proc.returncode == 130, err
    assert "left as it was before this command" not in err
    assert "committed plan 'val-eval', plan 'test-eval'" in err, err
    assert "a checkpoint after epoch" in err and str(ck / "checkpoint.pt") in err
    with Store(store) as s:
        assert {"val-eval", "test-eval"} <= set(list_plans(s))


def test_interrupt_while_waiting_for_the_writer_says_nothing_was_written(store):
    with Store(store, readonly=False) as s, s.writer_lock():
        before = dict(s.catalog.items(""))
        proc = _spawn("train", store, "--epochs", "1", "--hidden", "16", "--quiet")
        stderr = _Stderr(proc)
        stderr.wait_for("waiting", proc)  # found no evaluation plans, waits for the lock
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            time.sleep(5)
            proc.kill()
            pytest.fail("the child did not exit within 60 s of SIGINT; its stderr:\n"
                        + stderr.text())
        err = stderr.text()
        assert dict(s.catalog.items("")) == before
    assert proc.returncode == 130, err
    assert "interrupted; the store was left as it was before this command" in err


def test_failure_after_commits_lists_them(store, capsys, monkeypatch):
    """A failure after the first commits (here the disk filling up while the second
    evaluation pack is written) says which commits the store keeps."""
    import oocstore.train.prepare as prepare
    from oocstore.errors import DiskFullError

    real, calls = prepare.pack_plan, []

    def pack_plan(store_, member, **kw):
        calls.append(member)
        if len(calls) == 2:
            raise DiskFullError(f"disk full writing pack {member!r} (test)")
        return real(store_, member, **kw)

    monkeypatch.setattr(prepare, "pack_plan", pack_plan)
    assert main(["train", store, "--epochs", "1", "--hidden", "16", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "disk full writing pack 'test-eval'" in err[0], err
    assert err[1] == (f"oocstore: before it stopped, this command committed plan 'val-eval', "
                      f"plan 'test-eval', pack 'val-eval' to {store} (kept: later runs reuse "
                      "them; `oocstore rm` removes them); the rest of the store is as it was "
                      "before")
    with Store(store) as s:
        assert set(list_packs(s)) == {"train", "val-eval"}
        assert {"val-eval", "test-eval"} <= set(list_plans(s))


@pytest.mark.parametrize("where", ["file", "parent-file"])
def test_unusable_checkpoint_dir_is_refused_before_any_write(store, tmp_path, capsys, where):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    ck = blocker if where == "file" else blocker / "ck"
    before = snapshot(store)
    line = one_line_error(capsys, ["train", store, "--epochs", "1", "--hidden", "16",
                                   "--checkpoint", str(ck)])
    assert f"--checkpoint {ck}" in line and "directory" in line
    assert snapshot(store) == before


def test_write_log_counts_a_commit_interrupted_before_it_was_recorded(store):
    from oocstore.train.prepare import WriteLog

    writes = WriteLog(store)
    writes.begin("plan 'x'", plan_key("x"), None)
    assert writes.settled() == []  # not in the store: not claimed
    with Store(store, readonly=False) as s:
        before = s.get(plan_key("train"))
        writes.begin("plan 'train' again", plan_key("train"), before)
        with s.transaction() as txn:
            txn.put(plan_key("train"), {**before, "seed": 99})
    assert writes.settled() == ["plan 'train' again"]  # committed, then interrupted


# -- a second writer ----------------------------------------------------------------------

def test_train_waits_for_the_writer_and_uses_what_it_committed(store, tmp_path):
    """While another command holds the store and commits the evaluation plan train needs,
    train waits (saying so), then trains on the latest commit — no stale snapshot."""
    from oocstore.samplers.neighbor import sample_plan

    with Store(store, readonly=False) as s, s.writer_lock():
        proc = _spawn("train", store, "--epochs", "1", "--hidden", "16", "--json", "--quiet")
        stderr = _Stderr(proc)
        stderr.wait_for("being written by another command: waiting", proc)
        sample_plan(s, fanouts="5,5", batch_size=256, epochs=1, split="test", name="test-eval")
        committed = s.get(plan_key("test-eval"))
    out = proc.stdout.read()
    proc.wait(timeout=120)
    err = stderr.text()
    assert proc.returncode == 0, err
    assert 0 <= json.loads(out.strip().splitlines()[-1])["test_acc"] <= 1
    with Store(store) as s:
        assert s.get(plan_key("test-eval")) == committed  # reused, not re-sampled
        assert {"val-eval", "test-eval"} <= set(list_packs(s))


def test_train_that_cannot_get_the_lock_says_the_store_is_being_written(store):
    with Store(store, readonly=False) as s, s.writer_lock():
        before = dict(s.catalog.items(""))
        cfg = TrainConfig(epochs=1, hidden=16, writer_wait=0.3)
        with pytest.raises(StoreLockedError, match="is being written by another process"):
            run_training(store, None, cfg)
        assert dict(s.catalog.items("")) == before


def test_two_trains_at_once_both_succeed(store):
    procs = [_spawn("train", store, "--epochs", "1", "--hidden", "16", "--quiet")
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    with Store(store) as s:
        assert {"val-eval", "test-eval"} <= set(list_plans(s))


def test_writer_lock_spans_transactions_and_makes_others_wait(store):
    with Store(store, readonly=False) as a, Store(store, readonly=False) as b:
        with a.writer_lock():
            with a.transaction() as txn:
                txn.put("test/one", 1)
            with a.transaction() as txn:  # still held: no other writer in between
                txn.put("test/two", 2)
            with pytest.raises(StoreLockedError):
                with b.transaction():
                    pass
        t0 = time.monotonic()
        with b.writer_lock(wait=5):
            assert b.get("test/one") == 1 and b.get("test/two") == 2
        assert time.monotonic() - t0 < 5


def test_evaluation_plans_sampled_in_memory_equal_sampled_ones(store):
    """The plans train checks in memory and then commits are the sampler's own records."""
    import numpy as np

    from oocstore.plan import PlanReader

    assert main(["train", store, "--epochs", "1", "--hidden", "16", "--in-memory",
                 "--quiet"]) == 0
    assert main(["sample", store, "--split", "val", "--epochs", "1", "--fanouts", "5,5",
                 "--batch-size", "256", "--seed", "0", "--name", "direct", "--quiet"]) == 0
    with Store(store) as s:
        a, b = PlanReader(s, "val-eval"), PlanReader(s, "direct")
        for role in ("data", "index", "counts"):
            assert np.array_equal(s.array(a.meta.arrays[role]), s.array(b.meta.arrays[role]))
        assert a.meta.stats == b.meta.stats and a.meta.batches_per_epoch == b.meta.batches_per_epoch


# -- hostile checkpoints under fuzz ----------------------------------------------------------

def test_fuzzed_checkpoints_load_or_are_refused_with_format_error(store, tmp_path):
    """Random bit flips, truncations and entries rewritten at any depth
    (tools/fuzz_checkpoints.py): resuming either works or is refused with FormatError
    naming the file — never another exception — and what loads also trains."""
    fuzz = load_tool("fuzz_checkpoints")
    ck = tmp_path / "ck"
    _good_checkpoint(store, ck)
    res = fuzz.fuzz_checkpoints(store, ck, cases=90, seed=0, train=4)
    assert res["findings"] == []
    counts = res["counts"]
    assert sum(counts.values()) == 90 and counts["truncate refused"] == 30
    assert counts.get("rewrite refused", 0) and counts.get("rewrite loaded", 0)
    assert res["resumed_exit_codes"] == {"0": 4}
