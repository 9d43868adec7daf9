"""A `segments` pack interrupted between its sub-packs: gc removes what it left, a new
pack of the name replaces it; a same-named pack made through the API is never
overwritten."""

from __future__ import annotations

import shutil

import pytest

import oocstore.pack
from oocstore.cli import main
from oocstore.errors import FormatError, StoreExistsError
from oocstore.hetero import pack_hetero
from oocstore.hetero.pack import PENDING_PREFIX, list_hetero_packs
from oocstore.hetero.schema import feat_name
from oocstore.pack import PackOptions, pack_plan
from oocstore.store import Store

BUDGET = 940 << 10


@pytest.fixture
def store(hstore, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(hstore, path)
    return path


def interrupted_pack(path, monkeypatch):
    """Pack 'train', stopped after its first sub-pack committed (as by a crash)."""
    calls = []

    def first_only(*a, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(kw["name"])
        return pack_plan(*a, **kw)

    monkeypatch.setattr(oocstore.pack, "pack_plan", first_only)
    with Store(path, readonly=False) as s, pytest.raises(KeyboardInterrupt):
        pack_hetero(s, "train", cpu_budget=BUDGET)
    monkeypatch.undo()
    return calls[0]


def pack_files(s, name):
    meta = s.get(f"pack/{name}")
    return [s.file_path(s.array_meta(a)) for a in meta["arrays"].values()]


def test_gc_removes_the_subpacks_of_an_interrupted_pack(store, monkeypatch, capsys):
    left = interrupted_pack(store, monkeypatch)
    assert left == "train.author"
    with Store(store) as s:
        assert "train" not in list_hetero_packs(s) and s.get("pack/train.author") is not None
        files = pack_files(s, left)
    assert files and all(f.exists() for f in files)
    assert main(["gc", str(store), "--dry-run"]) == 0
    assert "would remove pack 'train.author'" in capsys.readouterr().out
    with Store(store) as s:
        assert s.get("pack/train.author") is not None
    assert main(["gc", str(store)]) == 0
    assert "removed pack 'train.author'" in capsys.readouterr().out
    with Store(store) as s:
        assert s.get("pack/train.author") is None and not list(s.items(PENDING_PREFIX))
        assert not any(a.startswith("pack/train.") for a in s.arrays)
    assert not any(f.exists() for f in files)
    with Store(store, readonly=False) as s:  # and the name packs again
        assert set(pack_hetero(s, "train", cpu_budget=BUDGET)["types"]) == {"author", "paper"}


def test_a_new_pack_replaces_an_interrupted_one(store, monkeypatch):
    interrupted_pack(store, monkeypatch)
    with Store(store, readonly=False) as s:
        meta = pack_hetero(s, "train", cpu_budget=BUDGET)
        assert meta["types"]["author"]["pack"] == "train.author"
        assert not list(s.items(PENDING_PREFIX))
    assert main(["gc", str(store), "--quiet"]) == 0
    with Store(store) as s:  # a complete pack is not touched by gc
        assert {"train.author", "train.paper"} <= {k[5:] for k, _ in s.items("pack/")}
        assert "train" in list_hetero_packs(s)


def test_pack_refuses_to_overwrite_a_pack_made_through_the_api(store, digest, capsys):
    with Store(store, readonly=False) as s:
        pack_plan(s, "train.paper", name="mine.paper",
                  options=PackOptions(features=feat_name("paper"), cpu_cache=0))
    before = digest(store)
    with Store(store, readonly=False) as s, pytest.raises(StoreExistsError,
                                                         match=r"'mine\.paper'.*--name"):
        pack_hetero(s, "train", name="mine", cpu_budget=BUDGET)
    assert digest(store) == before
    rc = main(["pack", str(store), "--name", "mine", "--cpu-budget", str(BUDGET)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "oocstore rm" in err[0], err
    assert digest(store) == before
    with Store(store, readonly=False) as s:  # --overwrite does not make it a sub-pack either
        with pytest.raises(StoreExistsError, match="mine.paper"):
            pack_hetero(s, "train", name="mine", cpu_budget=BUDGET, overwrite=True)
    assert digest(store) == before


def test_gc_removes_only_the_pending_packs_own_subpacks(store):
    with Store(store, readonly=False) as s:
        pack_plan(s, "train.paper", name="mine.paper",
                  options=PackOptions(features=feat_name("paper"), cpu_cache=0))
        with s.transaction() as txn:  # a damaged pending entry naming another pack
            txn.put(PENDING_PREFIX + "train", {"subpacks": ["mine.paper", "train.paper"]})
    assert main(["gc", str(store), "--quiet"]) == 0
    with Store(store) as s:
        assert s.get("pack/mine.paper") is not None and not list(s.items(PENDING_PREFIX))


def test_gc_keeps_the_subpacks_a_committed_pack_reads(store):
    """A pending entry beside committed packs (damaged or crafted: a pack's commit deletes
    its own) names sub-packs of a complete pack of that name or of a pack whose name
    starts with it: gc removes none of them."""
    with Store(store, readonly=False) as s:
        pack_hetero(s, "train", cpu_budget=BUDGET)
        pack_hetero(s, "train", name="train.x", cpu_budget=BUDGET)
        with s.transaction() as txn:
            txn.put(PENDING_PREFIX + "train", {"subpacks": ["train.author", "train.x.paper"]})
    assert main(["gc", str(store), "--quiet"]) == 0
    with Store(store) as s:
        assert {"train.author", "train.paper", "train.x.author", "train.x.paper"} <= \
            {k[5:] for k, _ in s.items("pack/")}
        assert not list(s.items(PENDING_PREFIX))
        for name in ("train", "train.x"):  # both still load their sub-packs
            for t in ("author", "paper"):
                assert s.get(f"pack/{name}.{t}") is not None


@pytest.mark.parametrize("types", [["author", "paper"], "train.author", None])
def test_pack_refuses_a_committed_entry_whose_types_are_not_a_mapping(store, types, digest,
                                                                      capsys):
    """A committed ``hpack/<name>`` whose ``types`` is not a mapping (damaged or
    crafted) does not say which sub-packs are its own: replacing it is refused with one
    line naming the entry and the fix, not an AttributeError, and the store is left
    as it was."""
    with Store(store, readonly=False) as s:
        meta = pack_hetero(s, "train", cpu_budget=BUDGET)
        with s.transaction() as txn:
            txn.put("hpack/train", {**meta, "types": types})
    before = digest(store)
    with Store(store, readonly=False) as s, pytest.raises(
            FormatError, match=r"'hpack/train'.*types=.*not a mapping.*--name"):
        pack_hetero(s, "train", cpu_budget=BUDGET, overwrite=True)
    assert digest(store) == before
    rc = main(["pack", str(store), "--name", "train", "--cpu-budget", str(BUDGET),
               "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "hpack/train" in err[0], err
    assert digest(store) == before


def test_gc_quiet_prints_nothing_on_success(store, monkeypatch, capsys):
    """``gc --quiet`` removes an interrupted pack's sub-packs without a word."""
    left = interrupted_pack(store, monkeypatch)
    capsys.readouterr()
    assert main(["gc", str(store), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    with Store(store) as s:
        assert s.get(f"pack/{left}") is None and not list(s.items(PENDING_PREFIX))


@pytest.mark.parametrize("entry", [{"subpacks": 5}, {"subpacks": "train.author"},
                                   {"subpacks": [None, 3, "train./x", "train.a.b"]}, [1]])
def test_gc_and_pack_survive_a_malformed_pending_entry(store, monkeypatch, entry, digest,
                                                       capsys):
    """A pending entry that lists nothing readable: pack cannot tell the leftover
    sub-pack for its own and refuses (one line, store untouched) instead of a TypeError;
    gc removes no pack and drops the entry."""
    left = interrupted_pack(store, monkeypatch)
    with Store(store, readonly=False) as s, s.transaction() as txn:
        txn.put(PENDING_PREFIX + "train", entry)
        txn.put(PENDING_PREFIX + "other", entry)
    before = digest(store)
    with Store(store, readonly=False) as s, pytest.raises(StoreExistsError, match=left):
        pack_hetero(s, "train", cpu_budget=BUDGET)
    assert digest(store) == before
    assert main(["gc", str(store)]) == 0
    assert "removed pack" not in capsys.readouterr().out
    with Store(store) as s:
        assert s.get(f"pack/{left}") is not None and not list(s.items(PENDING_PREFIX))
