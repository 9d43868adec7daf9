"""The command line on heterogeneous stores: OGB-style ingest end to end, and every bad
input of the list refused with one line, exit status 2, nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from oocstore.cli import main
from oocstore.hetero import load_schema
from oocstore.store import Store


def ogb_dir(root, *, papers=300, authors=120):
    """A small OGB-style directory (paper / author / venue, venue without features)."""
    rng = np.random.default_rng(0)
    for sub in ("node-feat", "node-label", "edge_index", "split/paper"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "num-node-dict.json").write_text(json.dumps({"paper": papers, "author": authors,
                                                        "venue": 5}))
    np.save(root / "node-feat/paper.npy", rng.standard_normal((papers, 8)).astype(np.float32))
    np.save(root / "node-feat/author.npy", rng.standard_normal((authors, 4)).astype(np.float32))
    np.save(root / "node-label/paper.npy", rng.integers(0, 3, (papers, 1)))
    np.save(root / "edge_index/author___writes___paper.npy",
            np.stack([rng.integers(0, authors, 900), rng.integers(0, papers, 900)]))
    np.save(root / "edge_index/paper___cites___paper.npy",
            np.stack([rng.integers(0, papers, 1200), rng.integers(0, papers, 1200)]))
    np.save(root / "edge_index/paper___in___venue.npy",
            np.stack([np.arange(papers), np.arange(papers) % 5]))
    perm = rng.permutation(papers)
    for name, part in (("train", perm[:180]), ("val", perm[180:240]), ("test", perm[240:])):
        np.save(root / f"split/paper/{name}.npy", part)
    return root


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_ogb_dir_end_to_end(tmp_path, capsys):
    src = ogb_dir(tmp_path / "ogb")
    out = tmp_path / "s"
    rc, stdout, err = run(capsys, "ingest", "hetero-ogb", src, out, "--add-reverse")
    assert rc == 0, err
    with Store(out) as s:
        schema = load_schema(s)
        assert schema.node_types["venue"].count == 5 and not schema.node_types["venue"].has_features
        assert ("venue", "rev_in", "paper") in schema.edge_types
        assert np.array_equal(np.asarray(s.array("hetero/split/paper/val")),
                              np.sort(np.load(src / "split/paper/val.npy")))
    assert run(capsys, "sample", out, "--fanouts", "3,2", "--batch-size", "64")[0] == 0
    rc, stdout, err = run(capsys, "pack", out, "--cpu-budget", "400KiB", "--json")
    assert rc == 0, err
    meta = json.loads(stdout)
    assert meta["featureless_types"] == ["venue"] and meta["cpu_budget"] == 400 << 10
    rc, stdout, err = run(capsys, "train", out, "--epochs", "1", "--model", "rgcn", "--hidden",
                          "8", "--cpu-budget", "400KiB", "--json")
    assert rc == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["model"] == "rgcn" and set(summary["types"]) == {"paper", "author"}
    assert 0 <= summary["test_acc"] <= 1
    rc, stdout, _ = run(capsys, "inspect", out, "--json")
    info = json.loads(stdout)["hetero"]
    assert info["schema"]["target"] == "paper" and "train" in info["plans"]
    assert info["packs"] == ["train", "train-test", "train-val"]  # evaluation packs too


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    out = root / "s"
    assert main(["ingest", "hetero-ogb", str(ogb_dir(root / "ogb")), str(out), "--quiet"]) == 0
    return out


def _one_line_error(rc, err, *needles):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oocstore: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("mutate,needles", [
    (lambda d: np.save(d / "edge_index/paper___at___conference.npy", np.zeros((2, 3), np.int64)),
     ["conference", "does not exist", "paper___at___conference"]),
    (lambda d: np.save(d / "node-feat/author.npy", np.zeros((119, 4), np.float32)),
     ["author.npy", "119 rows", "120 nodes"]),
    (lambda d: np.save(d / "edge_index/author___writes___paper.npy", np.array([[0, 120], [1, 2]])),
     ["author___writes___paper.npy", "120", "outside 0..119"]),
    (lambda d: np.save(d / "edge_index/author___writes___paper.npy", np.zeros((3, 2), np.int64)),
     ["author___writes___paper.npy", "(2, E)"]),
    (lambda d: np.save(d / "split/paper/val.npy", np.array([0, 1, 2])),
     ["split 'val'", "disjoint"]),
])
def test_bad_source_is_refused_and_nothing_written(tmp_path, capsys, mutate, needles):
    src = ogb_dir(tmp_path / "ogb")
    mutate(src)
    out = tmp_path / "s"
    rc, _, err = run(capsys, "ingest", "hetero-ogb", src, out)
    _one_line_error(rc, err, *needles)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".s")]


def test_bad_target_on_ingest(tmp_path, capsys):
    src = ogb_dir(tmp_path / "ogb")
    rc, _, err = run(capsys, "ingest", "hetero-ogb", src, tmp_path / "s", "--target", "author")
    _one_line_error(rc, err, "'author' has no labels", "paper")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("argv,needles", [
    (["sample", "--fanouts", "3,2", "--batch-size", "8", "--target", "venue"],
     ["'venue' has no labels", "labelled types: paper"]),
    (["sample", "--fanouts", "3,2", "--batch-size", "8", "--target", "conference"],
     ["--target conference", "author, paper, venue"]),
    (["sample", "--fanouts", "writes=3,2;cites=2,2", "--batch-size", "8"],
     ["no fanouts for relation(s) paper___in___venue", "--fanouts"]),
    (["sample", "--fanouts", "writes=3,2;cites=2,2;in=1,1;reviews=1,1", "--batch-size", "8"],
     ["'reviews' is not a relation", "author___writes___paper"]),
    (["sample", "--fanouts", "writes=3,2;cites=2;in=1,1", "--batch-size", "8"],
     ["different numbers of layers"]),
    (["pack", "--plan", "nosuch", "--cpu-budget", "1MiB"], ["no heterogeneous plan 'nosuch'"]),
    (["train", "--epochs", "1", "--model", "gat"], ["--model 'gat'", "rgcn"]),
    (["train", "--epochs", "1", "--layers", "3"], ["--layers is not supported"]),
    (["pack", "--gpu-cache", "1MiB", "--cpu-budget", "1MiB"], ["--gpu-cache is not supported"]),
    (["sample", "--fanouts", "3,2", "--batch-size", "8", "--world-size", "2"],
     ["--world-size is not supported"]),
    (["sample", "--fanouts", "3,2", "--batch-size", "8", "--task", "link", "--neg-ratio", "1"],
     ["--task is not supported"]),
    (["train", "--epochs", "1", "--task", "link"], ["--task is not supported"]),
    (["train", "--epochs", "1", "--eval", "full"], ["--eval is not supported"]),
])
def test_bad_flags_leave_the_store_byte_identical(good, tmp_path, capsys, digest, argv, needles):
    store = tmp_path / "s"
    shutil.copytree(good, store)
    before = digest(store)
    rc, _, err = run(capsys, argv[0], store, *argv[1:])
    _one_line_error(rc, err, *needles)
    assert digest(store) == before


def test_hetero_model_on_a_homogeneous_store(tmp_path, capsys):
    out = tmp_path / "h"
    assert main(["ingest", "synthetic", str(out), "--nodes", "200", "--feat-dim", "4",
                 "--quiet"]) == 0
    rc, _, err = run(capsys, "train", out, "--epochs", "1", "--model", "rgcn")
    _one_line_error(rc, err, "one node type", "--model sage")


def test_add_reverse_refuses_a_relation_that_exists(tmp_path, capsys):
    src = ogb_dir(tmp_path / "ogb")
    np.save(src / "edge_index/paper___rev_cites___paper.npy", np.zeros((2, 1), np.int64))
    rc, _, err = run(capsys, "ingest", "hetero-ogb", src, tmp_path / "s", "--add-reverse")
    _one_line_error(rc, err, "--add-reverse", "paper___rev_cites___paper already exists")
    assert not (tmp_path / "s").exists()


def test_a_python_caller_reads_the_parameter_it_passed(tmp_path, capsys):
    """build_hetero_store's refusals name its parameters; `oocstore ingest hetero-*` writes
    the flags in (--add-reverse, --split)."""
    from oocstore.errors import UsageError
    from oocstore.hetero.ingest import build_hetero_store, read_ogb_dir

    src = ogb_dir(tmp_path / "ogb")
    np.save(src / "edge_index/paper___rev_cites___paper.npy", np.zeros((2, 1), np.int64))
    with pytest.raises(UsageError) as err:
        build_hetero_store(tmp_path / "s", read_ogb_dir(src), add_reverse=True)
    assert str(err.value) == ("add_reverse=True: relation paper___rev_cites___paper already "
                              "exists in the source: rename it or drop add_reverse")
    rc, _, err = run(capsys, "ingest", "hetero-ogb", src, tmp_path / "s", "--add-reverse")
    assert err.strip() == ("oocstore: error: --add-reverse: relation paper___rev_cites___paper "
                           "already exists in the source: rename it or drop --add-reverse")
    rc, _, err = run(capsys, "ingest", "hetero-synthetic", tmp_path / "s", "--papers", "100",
                     "--split", "0.001,0.5,0.4")
    _one_line_error(rc, err, "error: --split gives an empty training set for 100 nodes")
    assert not (tmp_path / "s").exists()


def test_non_finite_features_name_the_parameter_that_keeps_them(tmp_path, capsys):
    from oocstore.errors import SourceError
    from oocstore.hetero.ingest import build_hetero_store, read_ogb_dir

    src = ogb_dir(tmp_path / "ogb")
    feat = np.load(src / "node-feat/author.npy")
    feat[7, 1] = np.inf
    np.save(src / "node-feat/author.npy", feat)
    with pytest.raises(SourceError) as err:
        build_hetero_store(tmp_path / "s", read_ogb_dir(src))
    assert str(err.value).endswith("is not finite: clean the features or pass "
                                   "allow_nonfinite=True")
    rc, _, err = run(capsys, "ingest", "hetero-ogb", src, tmp_path / "s")
    _one_line_error(rc, err, "is not finite: clean the features or pass --allow-nonfinite")
    assert not (tmp_path / "s").exists()


def test_layout_on_a_homogeneous_store(tmp_path, capsys, digest):
    out = tmp_path / "h"
    assert main(["ingest", "synthetic", str(out), "--nodes", "200", "--feat-dim", "4",
                 "--quiet"]) == 0
    before = digest(out)
    rc, _, err = run(capsys, "pack", out, "--layout", "rows", "--cpu-budget", "1MiB")
    _one_line_error(rc, err, "--layout rows", "one node type")
    assert digest(out) == before


@pytest.mark.parametrize("craft,needles", [
    (lambda d: d["node_types"]["author"].update(count=121),
     ["hetero/node/author/feat", "(120, 4)", "(121, 4)", "damaged"]),
    (lambda d: d["node_types"]["paper"].update(count=299),
     ["hetero/node/paper/feat", "(300, 8)", "(299, 8)"]),
    (lambda d: d["edge_types"].update({"author___writes___paper": 1}),
     ["author___writes___paper/indices", "(1,)"]),
    (lambda d: d["node_types"].update({"a/../b": d["node_types"].pop("venue")}),
     ["'a/../b' is not a valid name", "damaged"]),
])
@pytest.mark.parametrize("argv", [["sample", "--fanouts", "3,2", "--batch-size", "8"],
                                  ["train", "--epochs", "1", "--in-memory"]])
def test_crafted_schema_is_refused_before_use(good, tmp_path, capsys, digest, craft, needles,
                                              argv):
    """Counts that disagree with the arrays (or a type name that is a path) are refused
    before the sampler or the readers index anything by them."""
    store = tmp_path / "s"
    shutil.copytree(good, store)
    with Store(store, readonly=False) as s:
        d = s.get("hetero")
        craft(d)
        with s.transaction() as txn:
            txn.put("hetero", d)
    before = digest(store)
    rc, _, err = run(capsys, argv[0], store, *argv[1:])
    _one_line_error(rc, err, *needles)
    assert digest(store) == before


@pytest.mark.parametrize("mutate,needles", [
    (lambda d: np.save(d / "edge_index/author___writes___paper.npy", np.array([[0., 1.], [1., 2.]])),
     ["author___writes___paper.npy", "float64", "integers"]),
    (lambda d: np.save(d / "node-label/paper.npy", np.full(300, np.nan)),
     ["node-label/paper.npy", "labels", "integers 0..C-1"]),
    (lambda d: np.save(d / "node-label/paper.npy", np.r_[10**12, np.zeros(299, np.int64)]),
     ["node-label/paper.npy", "reach 1000000000000", "at most 65536"]),
])
def test_bad_dtypes_are_refused(tmp_path, capsys, mutate, needles):
    src = ogb_dir(tmp_path / "ogb")
    mutate(src)
    rc, _, err = run(capsys, "ingest", "hetero-ogb", src, tmp_path / "s")
    _one_line_error(rc, err, *needles)
    assert not (tmp_path / "s").exists()


def test_a_count_too_large_for_memory_is_refused(tmp_path, capsys):
    """A mistyped count of a type without features crashed with a numpy allocation error
    while building the relation's CSC."""
    src = ogb_dir(tmp_path / "ogb")
    (src / "num-node-dict.json").write_text(json.dumps({"paper": 300, "author": 120,
                                                        "venue": 10**13}))
    rc, _, err = run(capsys, "ingest", "hetero-ogb", src, tmp_path / "s")
    _one_line_error(rc, err, "paper___in___venue", "10000000000000 'venue' nodes",
                    "num-node-dict.json")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("flags,needles", [
    (["--weight-decay", "-1"], ["weight-decay", "-1", ">= 0"]),
    (["--lr", "0"], ["--lr 0", "> 0"]),
    (["--lr", "nan"], ["--lr nan", "> 0"]),
    (["--dropout", "1.5"], ["--dropout 1.5", "[0, 1)"]),
])
def test_bad_optimizer_flags_are_refused_before_anything_is_written(hstore, tmp_path, capsys,
                                                                    digest, flags, needles):
    """Checked with the other options, not by Adam or dropout after the evaluation plans
    and packs were written (a ValueError traceback)."""
    store = tmp_path / "s"
    shutil.copytree(hstore, store)
    before = digest(store)
    rc, _, err = run(capsys, "train", store, "--epochs", "1", "--in-memory", *flags)
    _one_line_error(rc, err, *needles)
    assert digest(store) == before
