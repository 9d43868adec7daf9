"""train --task link without a CPU budget samples its evaluation neighbourhoods once per
run: the validation after each epoch and the test reuse them (the same fixed-key batches,
so the metrics are those of sampling them each time). A budgeted run keeps none."""

from __future__ import annotations

import pytest

import oocstore.samplers.neighbor as neighbor
from oocstore.store import Store
from oocstore.train import link
from oocstore.train.link import LinkTrainConfig, _check_split, link_plan, run_link_training


def _count_samples(monkeypatch) -> list[int]:
    calls: list[int] = []
    orig = neighbor.sample_batches

    def counting(*args, **kw):
        calls.append(len(args[2]))  # the seeds of one evaluation batch
        return orig(*args, **kw)

    monkeypatch.setattr(neighbor, "sample_batches", counting)
    return calls


@pytest.mark.parametrize("in_memory,cpu_budget", [(False, None), (True, None), (False, 1 << 20)])
def test_evaluation_batches_are_kept_only_without_a_budget(link_template, monkeypatch,
                                                           in_memory, cpu_budget):
    """Without a CPU budget each evaluation batch is sampled once over two epochs; a
    budgeted run keeps none (their blocks are not in its budget) and samples each
    evaluation's batches again: the budget check, two validations, the test."""
    monkeypatch.setattr(link, "EVAL_BATCH", 16)  # several batches per held-out part
    with Store(link_template) as store:
        meta = link_plan(store, "link")
        split = _check_split(store, meta)
        sizes = {p: link._eval_nodes(split, p).size for p in ("val", "test")}
    nb = {p: -(-n // 16) for p, n in sizes.items()}
    assert sum(nb.values()) > 2
    calls = _count_samples(monkeypatch)
    cfg = LinkTrainConfig(epochs=2, hidden=16, in_memory=in_memory, cpu_budget=cpu_budget)
    summary = run_link_training(link_template, "link", cfg)
    if cpu_budget is None:
        assert len(calls) == sum(nb.values()) and sum(calls) == sum(sizes.values())
    else:
        assert len(calls) == 3 * nb["val"] + 2 * nb["test"]
    assert summary["epochs"][0]["val"] and summary["test"]


def test_the_metrics_are_those_of_sampling_each_evaluation(link_template, monkeypatch):
    """The run's metrics with the batches kept equal those of a run whose every
    evaluation samples its batches afresh."""
    cfg = LinkTrainConfig(epochs=2, hidden=16)
    kept = run_link_training(link_template, "link", cfg)

    class Fresh(link.EvalSamples):
        def of(self, part):
            self._parts.pop(part, None)
            return super().of(part)

    monkeypatch.setattr(link, "EvalSamples", Fresh)
    calls = _count_samples(monkeypatch)
    fresh = run_link_training(link_template, "link", cfg)
    assert len(calls) == 3  # validation 2, test 1 (one batch per part; no budget check)
    assert [e["val"] for e in kept["epochs"]] == [e["val"] for e in fresh["epochs"]]
    assert kept["test"] == fresh["test"]
