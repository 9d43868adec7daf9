"""One pack and one budget across types, the typed loader, parity and learning."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from oocstore.budget import MemoryBudget
from oocstore.errors import BudgetError
from oocstore.hetero import HeteroLoader, HeteroPlanReader, pack_hetero
from oocstore.hetero.pack import loader_floor
from oocstore.hetero.schema import feat_name, require_schema
from oocstore.hetero.train import HeteroTrainConfig, run_hetero_training
from oocstore.store import Store

#: Per layout, the loader floor (rows ~610 KiB, segments ~860 KiB) plus about half of
#: the 144 KiB of features as cache.
BUDGETS = {"rows": 700 << 10, "segments": 940 << 10}


@pytest.fixture(scope="module", params=["segments", "rows"])
def packed(hstore, tmp_path_factory, request):
    path = tmp_path_factory.mktemp("packed") / "s"
    shutil.copytree(hstore, path)
    with Store(path, readonly=False) as s:
        meta = pack_hetero(s, "train", cpu_budget=BUDGETS[request.param], layout=request.param)
    return path, meta


def test_one_budget_split_across_types(packed):
    path, meta = packed
    budget = BUDGETS[meta["layout"]]
    with Store(path) as s:
        if meta["layout"] == "rows":
            r = HeteroPlanReader(s, "train")
            assert meta["min_working_set"] == sum(b for _, b in loader_floor(r, require_schema(s)))
            r.close()
        floor = meta["min_working_set"]
        cached = sum(t["cache_bytes"] for t in meta["types"].values())
        assert cached <= budget - floor and cached > 0.85 * (budget - floor)
        assert set(meta["types"]) == {"paper", "author"} and meta["featureless_types"] == ["field"]
        assert not any("field" in k for k in s.arrays if k.startswith(("hpack/", "pack/")))
        # both types get rows, and neither is cached whole
        assert all(0 < t["cached_rows"] < 1200 for t in meta["types"].values())
        for t in ("paper", "author"):
            if meta["layout"] == "rows":
                ids = np.asarray(s.array(f"hpack/train/{t}/ids"))
                rows = np.asarray(s.array(f"hpack/train/{t}/rows"))
            else:  # the homogeneous packer's pack of the type's own feature array
                sub = s.get(f"pack/train.{t}")
                assert sub["features"] == feat_name(t) and sub["plan"] == f"train.{t}"
                ids = np.asarray(s.array(f"pack/train.{t}/cpu_ids"))
                rows = np.asarray(s.array(f"pack/train.{t}/cpu_rows"))
                assert meta["types"][t]["expected_read_amplification"] < 2.0
            assert ids.size == meta["types"][t]["cached_rows"]
            assert np.array_equal(rows, np.asarray(s.array(feat_name(t)))[ids])


def test_loader_delivers_exact_features_and_expected_hits(packed):
    path, meta = packed
    with Store(path) as s:
        feats = {t: np.asarray(s.array(feat_name(t))) for t in ("paper", "author")}
        budget = BUDGETS[meta["layout"]]
        with HeteroLoader(s, "train", pack="train", budget=MemoryBudget(cpu=budget)) as ld:
            for epoch in range(ld.num_epochs):
                for b in ld.epoch(epoch):
                    for t, x in b.x_dict.items():
                        assert torch.equal(x, torch.from_numpy(feats[t][b.n_id[t].numpy()]))
            st = ld.stats()
            assert ld.accountant.peak("cpu") <= budget
            # Native AIO (O_DIRECT files) reads rows whose pages touch in one request, as the
            # pack predicts; the thread fallback reads each row's own pages.
            aio = {t: getattr(r, "base", None) is not None and r.base.use_aio
                   and r.base.reader.direct for t, r in ld.readers.items()}
        for t, e in meta["types"].items():  # the whole plan read once: as the pack predicted
            assert st[t]["rows"] == e["accesses"]
            assert st[t]["hit_rate"] == pytest.approx(e["expected_hit_rate"], abs=1e-6)
            if meta["layout"] == "rows" and aio[t]:
                assert st[t]["bytes_read"] == e["expected_bytes_read"]
            elif meta["layout"] == "rows":
                assert st[t]["bytes_read"] >= e["expected_bytes_read"]
            else:
                assert st[t]["read_amplification"] == pytest.approx(
                    e["expected_read_amplification"], rel=0.02)


def test_to_pyg_is_a_heterodata_batch(packed):
    path, _ = packed
    with Store(path) as s, HeteroLoader(s, "train", pack="train") as ld:
        b = ld.load(0, 0)
        d = b.to_pyg()
    assert d["paper"].batch_size == b.num_seeds == d["paper"].y.shape[0]
    assert d["paper"].x.shape[0] == d["paper"].num_nodes
    assert "x" not in d["field"] and d["field"].num_nodes > 0
    for et in d.edge_types:
        ei = d[et].edge_index
        if ei.numel():
            assert int(ei[0].max()) < d[et[0]].num_nodes and int(ei[1].max()) < d[et[2]].num_nodes


def test_budget_too_small_is_refused_before_writing(packed, digest):
    path, meta = packed
    before = digest(path)
    with Store(path, readonly=False) as s:
        with pytest.raises(BudgetError, match="before any cache"):
            pack_hetero(s, "train", name="tiny", cpu_budget=64 << 10, layout=meta["layout"])
    assert digest(path) == before


@pytest.mark.parametrize("model", ["hetero-sage", "rgcn"])
def test_out_of_core_matches_in_memory(packed, model):
    path, meta = packed
    cfg = dict(epochs=2, model=model, hidden=16, evaluate=False)
    ooc = run_hetero_training(str(path), "train", HeteroTrainConfig(
        cpu_budget=BUDGETS[meta["layout"]], **cfg))
    mem = run_hetero_training(str(path), "train", HeteroTrainConfig(in_memory=True, **cfg))
    assert [e["loss"] for e in ooc["epochs"]] == pytest.approx([e["loss"] for e in mem["epochs"]],
                                                               rel=1e-6)
    for k, v in ooc["state_dict"].items():
        assert torch.allclose(v, mem["state_dict"][k], atol=1e-6), k
    assert ooc["types"]["paper"]["bytes_read"] > 0 and mem["types"]["paper"]["bytes_read"] == 0


def test_model_learns_through_the_author_relation(packed):
    """Paper features alone give at most ~1 - 0.6 * 3/4 = 0.55 accuracy on 4 classes."""
    path, meta = packed
    out = run_hetero_training(str(path), "train", HeteroTrainConfig(
        epochs=6, model="hetero-sage", hidden=32, cpu_budget=BUDGETS[meta["layout"]]))
    assert out["test_acc"] > 0.75, out["test_acc"]


def _flip_byte(path, name, at=100):
    with Store(path) as s:
        f = s.path / s.array_meta(name).file
    with open(f, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("name", ["{pack}/paper/rows", "hplan/train/data",
                                  "hetero/node/paper/label"])
def test_damaged_pack_plan_or_labels_are_detected_by_the_loader(packed, tmp_path, name):
    from oocstore.errors import ChecksumError

    name = name.format(pack="hpack/train" if packed[1]["layout"] == "rows" else "pack/train.paper")
    name = name.replace("pack/train.paper/paper/rows", "pack/train.paper/cpu_rows")
    path = tmp_path / "s"
    shutil.copytree(packed[0], path)
    _flip_byte(path, name)
    with Store(path) as s, pytest.raises(ChecksumError):
        with HeteroLoader(s, "train", pack="train") as ld:
            for b in ld.epoch(0):
                pass


def test_damaged_relation_is_detected_before_sampling(packed, tmp_path, digest):
    from oocstore.errors import ChecksumError
    from oocstore.hetero.sampler import sample_hetero_plan

    path = tmp_path / "s"
    shutil.copytree(packed[0], path)
    _flip_byte(path, "hetero/edge/author___writes___paper/indices", at=8)
    before = digest(path)
    with Store(path, readonly=False) as s, pytest.raises(ChecksumError, match="writes"):
        sample_hetero_plan(s, fanouts="2,2", batch_size=50, name="again")
    assert digest(path) == before


def test_a_pack_of_a_resampled_plan_is_refused_with_the_fix(packed, tmp_path):
    from oocstore.errors import FormatError
    from oocstore.hetero.sampler import sample_hetero_plan

    path, meta = packed
    if meta["layout"] == "rows":
        pytest.skip("a rows pack holds rows per node: it serves any plan")
    copy = tmp_path / "s"
    shutil.copytree(path, copy)
    with Store(copy, readonly=False) as s:
        sample_hetero_plan(s, fanouts="4,3", batch_size=100, epochs=2, overwrite=True, seed=5)
    with Store(copy) as s, pytest.raises(FormatError, match="re-pack it with `oocstore pack"):
        HeteroLoader(s, "train", pack="train")


def test_segments_pack_holds_the_writer_lock_between_sub_packs(hstore, tmp_path, monkeypatch):
    """Another writer (a second ``pack`` of the same name) cannot commit between the
    sub-packs of one ``segments`` pack, so ``hpack/<name>`` names its own sub-packs."""
    import oocstore.pack as packmod
    from oocstore.errors import StoreLockedError

    path = tmp_path / "s"
    shutil.copytree(hstore, path)
    real, other = packmod.pack_plan, []

    def pack_plan(store, *args, **kw):
        meta = real(store, *args, **kw)
        with Store(path, readonly=False) as s2:
            try:
                with s2.transaction() as txn:
                    txn.put("meanwhile", 1)
                other.append("committed")
            except StoreLockedError:
                other.append("refused")
        return meta

    monkeypatch.setattr(packmod, "pack_plan", pack_plan)
    with Store(path, readonly=False) as s:
        meta = pack_hetero(s, "train", cpu_budget=8 << 20, layout="segments")
    assert len(other) == len(meta["types"]) >= 2 and set(other) == {"refused"}


def test_a_crash_between_sub_packs_leaves_no_mixed_pack(hstore, tmp_path, monkeypatch):
    """Re-packing with overwrite and crashing after the first sub-pack: no ``hpack`` entry
    names a mix of old and new sub-packs; the next pack of that name rebuilds it."""
    import oocstore.pack as packmod

    path = tmp_path / "s"
    shutil.copytree(hstore, path)
    with Store(path, readonly=False) as s:
        pack_hetero(s, "train", cpu_budget=BUDGETS["segments"], layout="segments")
    real, calls = packmod.pack_plan, []

    def crash_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("crash between sub-packs")
        return real(*args, **kw)

    monkeypatch.setattr(packmod, "pack_plan", crash_second)
    with Store(path, readonly=False) as s, pytest.raises(KeyboardInterrupt):
        pack_hetero(s, "train", cpu_budget=2 << 20, layout="segments", overwrite=True)
    monkeypatch.setattr(packmod, "pack_plan", real)
    with Store(path, readonly=False) as s:
        assert s.get("hpack/train") is None
        meta = pack_hetero(s, "train", cpu_budget=2 << 20, layout="segments")
        for t, m in meta["types"].items():
            assert s.get(f"pack/{m['pack']}")["cpu_rows"] == m["cached_rows"]
