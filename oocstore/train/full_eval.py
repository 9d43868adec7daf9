"""Exact accuracy of a training run's model on whole splits: ``oocstore train --eval full``.

Sampled evaluation (the default, ``--eval sampled``) classifies each validation / test
node from a sampled neighbourhood (the ``val-eval`` / ``test-eval`` plans), so its figure
varies with the fanouts and the seed. ``--eval full`` runs the model layer by layer over
every node with full neighbourhoods, out of core (:class:`oocstore.layerwise.LayerPass`, the
path of ``oocstore infer``), and compares the last layer's argmax with the labels of the
split's nodes chunk by chunk: nothing but the hidden states (temporary files, removed
afterwards) is written and no logits are kept. The figure equals the model's forward on
the whole graph in memory.

The pass runs on the CPU, on a copy of the model's current weights, within the run's
CPU budget: its chunks, the split's node ids and the labels it reads are counted in it
(:func:`check_full_eval` refuses a budget below the minimum before the run writes
anything). Out of core, the training loader lends its budget to the pass the way it
lends it to an evaluation loader, and re-opens on its next epoch. Under torchrun, rank 0
runs the pass (every rank holds the same weights) and the counts are shared.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..budget import BudgetAccountant
from ..checked_read import SCRATCH, CheckedRows
from ..errors import BudgetError, UsageError
from ..infer import check_weights_fit
from ..layerwise import LayerPass
from ..infer_models import LayerwiseModel, layerwise_from_module
from ..store import Store

#: ``--eval`` choices: sampled neighbourhoods (evaluation plans) or the full graph.
EVAL_MODES = ("sampled", "full")
#: Bytes per destination of the last layer's chunks for the comparison: the labels as
#: read (at most 8) and as int64, the predictions (int64) and the comparison's mask.
LABEL_BYTES = 32
_FIX = "restore the store or re-create it with `oocstore ingest --overwrite`"


def _split_ids(store: Store, splits: Iterable[str]) -> dict[str, np.ndarray]:
    return {s: np.sort(np.asarray(store.split(s), dtype=np.int64).reshape(-1)) for s in splits}


def _id_bytes(store: Store, splits: Iterable[str]) -> int:
    """Bytes the sorted node ids of ``splits`` take (and their sort's copy)."""
    return sum(2 * 8 * int(np.prod(store.array_meta(store.splits[s]).shape))
               for s in splits if s in store.splits)


def check_full_eval(store: Store, spec, cpu_budget: int | None,
                    splits: Iterable[str] = ("val", "test")) -> None:
    """Refuse ``--eval full`` where the pass cannot run: a store without a graph or
    labels, a model of another backend, a ``cpu_budget`` below the pass's minimum (the
    error names it). Reads the graph's ``indptr`` once; writes nothing."""
    from .models import build_from_spec

    if spec.backend != "pyg":
        raise UsageError(f"eval='full' runs the model's PyG layers over the whole graph; "
                         f"backend={spec.backend!r} builds another model: use backend='pyg' "
                         "or eval='sampled'")
    if not store.has_array("labels"):
        raise UsageError(f"eval='full': store {store.path} has no labels to compare with")
    with torch.device("meta"):  # sizes only: nothing allocated
        lm = LayerwiseModel(spec=spec, model=build_from_spec(spec), source=Path("--eval full"))
    splits = [s for s in splits if s in store.splits]
    try:
        with LayerPass(store, lm, cpu_budget=cpu_budget, extra_fixed=_extra(store, splits),
                       last_per_dst=LABEL_BYTES) as lp:
            lp.check_disk(work_dir_for(store), lp.disk_need(last_to_file=False),
                          "use eval='sampled'")
    except BudgetError as err:
        raise BudgetError(f"eval='full': {err}; or use eval='sampled'") from err


def _extra(store: Store, splits: Iterable[str]) -> int:
    return _id_bytes(store, splits) + SCRATCH  # the ids and the labels reader's buffer


def full_counts(store: Store, model: nn.Module | LayerwiseModel, splits: Iterable[str], *,
                cpu_budget: int | None = None, layer_batch: int | None = None,
                work_dir: str | os.PathLike | None = None,
                accountant: BudgetAccountant | None = None) -> dict[str, tuple[int, int]]:
    """``{split: (correct, nodes)}`` of ``model`` (a model built by
    :func:`~oocstore.train.models.build_from_spec`, or a :class:`LayerwiseModel`) on every
    node of each split, with full neighbourhoods, in one layer-wise pass within
    ``cpu_budget``. Hidden states go to a temporary directory under ``work_dir``
    (default: beside the store), removed afterwards. ``accountant``: where the pass
    charges what it holds (default: one of its own for ``cpu_budget``)."""
    lm = model if isinstance(model, LayerwiseModel) else layerwise_from_module(model)
    check_weights_fit(store, lm)
    splits = [s for s in splits if s in store.splits]
    ids = _split_ids(store, splits)
    counts = {s: [0, 0] for s in splits}
    labels = CheckedRows(store, "labels", fix=_FIX)

    def compare(lo: int, hi: int, logits: torch.Tensor) -> None:
        pred = logits.argmax(dim=1).numpy()
        y = labels.read(lo, hi).reshape(-1).astype(np.int64)
        for s, node_ids in ids.items():
            a, b = np.searchsorted(node_ids, [lo, hi])
            local = node_ids[a:b] - lo
            counts[s][0] += int(np.count_nonzero(pred[local] == y[local]))
            counts[s][1] += int(b - a)

    tmp = Path(tempfile.mkdtemp(prefix=".oocstore-eval-", dir=work_dir_for(store, work_dir)))
    try:
        with LayerPass(store, lm, cpu_budget=cpu_budget, layer_batch=layer_batch,
                       extra_fixed=_extra(store, splits), last_per_dst=LABEL_BYTES,
                       accountant=accountant) as lp:
            lp.run(tmp, last_chunk=compare)
    finally:
        labels.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {s: (c, n) for s, (c, n) in counts.items()}


def evaluate_full(store: Store | str | os.PathLike, model: nn.Module, split: str = "val", *,
                  cpu_budget: int | None = None, layer_batch: int | None = None,
                  work_dir: str | os.PathLike | None = None) -> float:
    """Accuracy in ``[0, 1]`` of ``model`` (built by :func:`~oocstore.train.models.
    build_from_spec`) on every node of ``split``, with full neighbourhoods, out of core
    within ``cpu_budget``: the figure ``train --eval full`` reports (:func:`full_counts`)."""
    owned = not isinstance(store, Store)
    st = Store(store) if owned else store
    try:
        if split not in st.splits:
            raise UsageError(f"store {st.path} has no {split!r} split (it has: "
                             f"{', '.join(sorted(st.splits)) or 'none'}): re-ingest with --split")
        correct, seen = full_counts(st, model, [split], cpu_budget=cpu_budget,
                                    layer_batch=layer_batch, work_dir=work_dir)[split]
    finally:
        if owned:
            st.close()
    if seen == 0:
        raise UsageError(f"split {split!r} of store {st.path} has no nodes")
    return correct / seen


def work_dir_for(store: Store, work_dir: str | os.PathLike | None = None) -> Path:
    """Where the pass keeps its hidden states: ``work_dir``, else the store's parent
    directory (the store's disk, not a RAM-backed /tmp), else the system's temporary
    directory when that parent cannot be written."""
    if work_dir is not None:
        return Path(work_dir)
    parent = Path(store.path).resolve().parent
    return parent if os.access(parent, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())


__all__ = ["EVAL_MODES", "check_full_eval", "evaluate_full", "full_counts", "work_dir_for"]
