"""Planetoid citation graphs (Cora, CiteSeer, PubMed) from the ``ind.<name>.*`` files, with
the standard split.

The files (pickles, read with :func:`~oocstore.ingest.common.load_pickle`'s allow-list):

- ``allx`` / ``ally``: features and one-hot labels of nodes ``0 .. A-1`` (A = rows of allx);
- ``tx`` / ``ty``: features and one-hot labels of the test nodes, row ``i`` belonging to
  node ``test.index[i]`` (``test.index`` is a text file, one id per line, not sorted);
- ``y``: one-hot labels of the training nodes ``0 .. len(y)-1`` (only its length is used;
  ``x`` repeats rows of ``allx`` and is not read);
- ``graph``: a dict ``node -> [neighbours]``.

The node ids are ``0 .. A + (max(test.index) - min(test.index))``. Test ids must start
right after ``allx`` (``min(test.index) == A``). CiteSeer has isolated nodes whose ids
lie inside the test range but not in ``test.index``: they get an all-zero feature row and
an all-zero one-hot label, i.e. label 0 (the argmax of a zero row), and belong to no
split — the convention of the original GCN code and of PyG's Planetoid loader.

Splits (the standard Planetoid split): ``train = 0 .. len(y)-1``,
``val = len(y) .. len(y)+499``, ``test = sorted(test.index)``. The graph is undirected:
``build_store`` symmetrises it and drops duplicate edges and self-loops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import SourceError
from .common import GraphSource, iter_blocks, load_pickle

#: Size of the validation split of the standard Planetoid split.
VAL_SIZE = 500

_PICKLED = ("y", "tx", "ty", "allx", "ally", "graph")


def planetoid_source(directory: str | Path, name: str) -> GraphSource:
    directory = Path(directory)
    prefix = _prefix(directory, name)
    paths = {s: directory / f"ind.{prefix}.{s}" for s in (*_PICKLED, "test.index")}
    for p in paths.values():
        if not p.is_file():
            raise SourceError(
                f"Planetoid file {p} is missing: {directory} must hold "
                f"ind.{prefix}.{{x,y,tx,ty,allx,ally,graph,test.index}} (the data/ folder of "
                "github.com/kimiyoung/planetoid); check DIR and NAME")
    obj = {}
    for s in _PICKLED:
        with open(paths[s], "rb") as f:
            obj[s] = load_pickle(f, paths[s])
    test_index = _read_test_index(paths["test.index"])

    allx = _sparse(obj["allx"], paths["allx"])
    tx = _sparse(obj["tx"], paths["tx"])
    ally = _onehot(obj["ally"], paths["ally"])
    ty = _onehot(obj["ty"], paths["ty"])
    y = _onehot(obj["y"], paths["y"])
    a = allx.shape[0]
    _same(ally.shape[0], a, paths["ally"], paths["allx"], "rows")
    _same(tx.shape[0], test_index.size, paths["tx"], paths["test.index"], "rows / ids")
    _same(ty.shape[0], test_index.size, paths["ty"], paths["test.index"], "rows / ids")
    _same(tx.shape[1], allx.shape[1], paths["tx"], paths["allx"], "feature columns")
    _same(ty.shape[1], ally.shape[1], paths["ty"], paths["ally"], "label columns")
    if test_index.size == 0:
        raise SourceError(f"{paths['test.index']} lists no test nodes: the file is empty or "
                          "truncated; re-download it")
    lo, hi = int(test_index.min()), int(test_index.max())
    if lo != a:
        raise SourceError(f"{paths['test.index']}: the smallest test id is {lo}, but the test "
                          f"nodes must follow the {a} rows of {paths['allx'].name} (ids from {a}): "
                          "the files do not belong together; re-download them")
    if np.unique(test_index).size != test_index.size:
        raise SourceError(f"{paths['test.index']} lists a node twice: re-download it")
    n_train = y.shape[0]
    if n_train + VAL_SIZE > a:
        raise SourceError(f"{paths['y']} has {n_train} training rows; with {VAL_SIZE} validation "
                          f"nodes that exceeds the {a} rows of {paths['allx'].name}: the files "
                          "do not belong together; re-download them")

    # Row i of tx / ty belongs to node test_index[i]; ids of the test range that are
    # missing from test.index (CiteSeer's isolated nodes) keep zero rows.
    span = hi - lo + 1
    if span - test_index.size > a + test_index.size:
        # Checked before anything of that size is allocated: a damaged or hostile
        # test.index (an id like 10^15) must not ask for petabytes.
        raise SourceError(f"{paths['test.index']}: the test ids span {lo}..{hi}, leaving "
                          f"{span - test_index.size} ids without a row, more than the "
                          f"{a + test_index.size} nodes the files describe: the file is damaged "
                          "or does not belong to these files; re-download it")
    rows = test_index - lo
    txc = tx.tocoo()
    tx_full = sp.csr_matrix((txc.data, (rows[txc.row], txc.col)), shape=(span, tx.shape[1]))
    ty_full = np.zeros((span, ty.shape[1]), dtype=ty.dtype)
    ty_full[rows] = ty
    features = sp.vstack([allx, tx_full], format="csr")
    labels = np.concatenate([ally.argmax(axis=1), ty_full.argmax(axis=1)]).astype(np.int64)
    num_nodes = a + span

    src, dst = _edges(obj["graph"], paths["graph"])
    splits = {"train": np.arange(n_train, dtype=np.int64),
              "val": np.arange(n_train, n_train + VAL_SIZE, dtype=np.int64),
              "test": np.sort(test_index).astype(np.int64)}
    return GraphSource(
        num_nodes=num_nodes, src=src, dst=dst, directed=False,
        features=iter_blocks(features), feat_dim=int(features.shape[1]), labels=labels,
        splits=splits,
        source={"kind": "planetoid", "path": str(directory.resolve()), "name": prefix,
                "isolated_test_range_nodes": int(span - test_index.size)},
        where=f"{directory}/ind.{prefix}.*")


def _prefix(directory: Path, name: str) -> str:
    """``name`` as given, or lower-cased when only that exists (PyG spells it ``Cora``)."""
    if not (directory / f"ind.{name}.y").exists() and (directory / f"ind.{name.lower()}.y").exists():
        return name.lower()
    return name


def _read_test_index(path: Path) -> np.ndarray:
    text = path.read_text(encoding="ascii", errors="replace")
    ids = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            ids.append(int(line))
        except ValueError:
            raise SourceError(f"{path}, line {lineno}: {line[:40]!r} is not a node id: the file "
                              "must hold one integer per line; re-download it") from None
    out = np.asarray(ids, dtype=np.int64)
    if out.size and out.min() < 0:
        raise SourceError(f"{path}: node id {int(out.min())} is negative; re-download the file")
    return out


def _sparse(obj, path: Path) -> sp.csr_matrix:
    if sp.issparse(obj):
        out = sp.csr_matrix(obj)
    elif isinstance(obj, np.ndarray) and obj.ndim == 2:
        out = sp.csr_matrix(obj)
    else:
        raise SourceError(f"{path} holds {type(obj).__name__} "
                          f"{getattr(obj, 'shape', '')}, expected a 2-D feature matrix")
    return out


def _onehot(obj, path: Path) -> np.ndarray:
    if sp.issparse(obj):
        obj = obj.toarray()
    if not isinstance(obj, np.ndarray) or obj.ndim != 2:
        raise SourceError(f"{path} holds {type(obj).__name__} {getattr(obj, 'shape', '')}, "
                          "expected a 2-D one-hot label matrix")
    return obj


def _same(got: int, want: int, path: Path, other: Path, what: str) -> None:
    if got != want:
        raise SourceError(f"{path} has {got} {what} but {other.name} has {want}: the files do "
                          "not belong together (or one is truncated); re-download them")


def _edges(graph, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not hasattr(graph, "items"):
        raise SourceError(f"{path} holds {type(graph).__name__}, expected a dict "
                          "node -> list of neighbours")
    try:
        keys = np.fromiter(graph.keys(), dtype=np.int64, count=len(graph))
        lens = np.fromiter((len(v) for v in graph.values()), dtype=np.int64, count=len(graph))
        dst = np.fromiter((u for v in graph.values() for u in v), dtype=np.int64,
                          count=int(lens.sum()))
    except (TypeError, ValueError, OverflowError) as err:
        raise SourceError(f"{path}: the adjacency dict holds a non-integer node id ({err}); "
                          "re-download the file") from err
    return np.repeat(keys, lens), dst
