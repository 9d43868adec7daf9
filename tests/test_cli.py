import argparse
import json
import sys

import pytest

from oocstore.cli import build_parser, main
from oocstore.store import Store

from helpers import refused, run_oocstore, tree_bytes


def _commands(parser=None, prefix=()):
    """Every command path of the CLI (``()``, ``("ingest",)``, ``("ingest", "npz")``, ...)."""
    parser = parser or build_parser()
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))


COMMANDS = [c for c, _ in _commands()]


@pytest.mark.parametrize("cmd", COMMANDS, ids=[" ".join(c) or "oocstore" for c in COMMANDS])
def test_help_works_and_says_what_it_does(cmd, capsys):
    parser = dict(_commands())[cmd]
    with pytest.raises(SystemExit) as ei:
        main([*cmd, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: oocstore")
    assert parser.description and parser.description.split()[0] in out


def test_top_level_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("ingest", "inspect", "verify"):
        assert name in out


def test_existing_output_refused(capsys, small_store):
    refused(capsys, ["ingest", "synthetic", str(small_store), "--nodes", "50", "--quiet"],
            "already exists", "--overwrite")


def test_existing_non_store_never_replaced(capsys, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    refused(capsys, ["ingest", "synthetic", str(tmp_path / "mine"), "--nodes", "50",
                     "--overwrite", "--quiet"], "is not an oocstore store")
    assert (tmp_path / "mine" / "thesis.tex").exists()


@pytest.mark.parametrize("argv, match", [
    (["--split", "0.9,0.9,0.1"], "--split '0.9,0.9,0.1'"),
    (["--split", "a,b"], "e.g. --split 0.6,0.2,0.2"),
    (["--nodes", "abc"], "invalid int value: 'abc'"),
    (["--nodes", "1"], "--nodes 1: a graph needs at least 2 nodes"),
    (["--feat-dim", "0"], "--feat-dim 0"),
    (["--rmat", "0.5,0.5"], "--rmat '0.5,0.5'"),
    (["--rmat", "0.5,0.5,0.5,0.5"], "summing to 1"),
    (["--homophily", "2"], "--homophily 2"),
    (["--dtype", "int8"], "invalid choice: 'int8'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_ingest_options(capsys, tmp_path, argv, match):
    refused(capsys, ["ingest", "synthetic", str(tmp_path / "out"), "--quiet", *argv], match)
    assert not (tmp_path / "out").exists()


def test_missing_parent_dir(capsys, tmp_path):
    refused(capsys, ["ingest", "synthetic", str(tmp_path / "a" / "b"), "--quiet"],
            "does not exist; create it first")


@pytest.mark.parametrize("cmd", ["inspect", "verify"])
def test_nonexistent_or_non_store(capsys, tmp_path, cmd):
    refused(capsys, [cmd, str(tmp_path / "nope")], "does not exist", "oocstore ingest")
    refused(capsys, [cmd, str(tmp_path)], "is not an oocstore store")


def test_no_command(capsys):
    refused(capsys, [], "required")


def test_errors_in_a_real_process_have_no_traceback(tmp_path):
    r = run_oocstore("verify", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("oocstore: error: store ")
    r = run_oocstore("ingest", "synthetic", str(tmp_path / "o"), "--split", "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_ingest_inspect_json_and_overwrite(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["ingest", "synthetic", str(out), "--nodes", "500", "--feat-dim", "8",
                 "--avg-degree", "4", "--quiet"]) == 0
    assert main(["inspect", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    assert text.count("\n") == 1
    info = json.loads(text)
    assert info["num_nodes"] == 500 and info["feat_dim"] == 8 and info["version"] == 1
    assert info["source"]["seed"] == 0 and set(info["splits"]) == {"train", "val", "test"}
    assert main(["inspect", str(out)]) == 0
    human = capsys.readouterr().out
    assert "features: 500 x 8 float32" in human and "graph: 500 nodes" in human

    before = tree_bytes(out)
    assert main(["ingest", "synthetic", str(out), "--nodes", "600", "--feat-dim", "4",
                 "--seed", "3", "--overwrite"]) == 0
    printed = capsys.readouterr()
    assert "features: 600 x 4" in printed.out  # the summary after a non-quiet ingest
    with Store(out) as s:
        assert s.version == 1 and s.meta.source["seed"] == 3
        assert s.array("features").shape == (600, 4)
    assert tree_bytes(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no staging or old copy left


def test_ingest_imports_no_torch_or_numba(tmp_path):
    code = (
        "import sys\n"
        "from oocstore.cli import main\n"
        f"assert main(['ingest', 'synthetic', {str(tmp_path / 's')!r}, '--nodes', '200', "
        "'--quiet']) == 0\n"
        f"assert main(['verify', {str(tmp_path / 's')!r}, '--quiet']) == 0\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'numba', 'scipy', 'zarr', 'matplotlib', 'torch_geometric'})\n"
        "print(heavy)\n")
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_pack_memory_zero_is_refused_with_the_fix(tmp_path):
    from helpers import run_oocstore

    store = tmp_path / "s"
    assert run_oocstore("ingest", "synthetic", str(store), "--nodes", "500", "--feat-dim", "8",
                        "--quiet").returncode == 0
    assert run_oocstore("sample", str(store), "--fanouts", "3", "--batch-size", "100",
                        "--quiet").returncode == 0
    r = run_oocstore("pack", str(store), "--gpu-cache", "0", "--cpu-cache", "0",
                     "--pack-memory", "0", "--quiet")
    assert r.returncode != 0
    assert "--pack-memory 0" in r.stderr and "1GiB" in r.stderr and "Traceback" not in r.stderr
