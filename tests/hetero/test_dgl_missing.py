"""Without DGL (the main environment), to_dgl and --backend dgl say how to get it, and
`train --backend dgl` writes nothing (no evaluation plan or pack) before refusing."""

from __future__ import annotations

import shutil
import sys

import pytest

from oocstore.cli import main
from oocstore.errors import OocError
from oocstore.hetero import HeteroLoader
from oocstore.hetero.models import build_hetero_model
from oocstore.hetero.schema import require_schema
from oocstore.integrations import MissingDependencyError
from oocstore.store import Store


@pytest.fixture
def no_dgl(monkeypatch):
    monkeypatch.setitem(sys.modules, "dgl", None)  # `import dgl` raises ImportError


def test_to_dgl_names_the_dgl_environment(hstore, no_dgl):
    with Store(hstore) as store, HeteroLoader(store, "train", in_memory=True,
                                              prefetch=False) as loader:
        batch = loader.load(0, 0)
        with pytest.raises(MissingDependencyError, match=r"tools/dgl_env\.sh.*torch 2\.2"):
            batch.to_dgl()
        with pytest.raises(MissingDependencyError, match="make test-dgl"):
            build_hetero_model("rgcn", require_schema(store), loader.plan.relations, hidden=8,
                               num_layers=2, backend="dgl")


def test_train_backend_dgl_without_dgl_writes_nothing(hstore, tmp_path, capsys, digest, no_dgl):
    store = tmp_path / "s"
    shutil.copytree(hstore, store)
    before = digest(store)
    rc = main(["train", str(store), "--model", "rgcn", "--backend", "dgl", "--epochs", "1",
               "--in-memory", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("oocstore: error: "), err
    assert "DGL is not installed" in err[0] and "tools/dgl_env.sh" in err[0]
    assert digest(store) == before  # the val/test plans are sampled only after the check


def test_unknown_backend_is_refused():
    from oocstore.hetero.train import HeteroTrainConfig

    with pytest.raises(OocError, match="backend='jax'"):
        HeteroTrainConfig(backend="jax")
