"""train --task link samples its evaluation neighbourhoods once per run: the budget check
before training, the validation after each epoch and the test reuse them (the same
fixed-key batches, so the metrics are those of sampling them each time)."""

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


@pytest.mark.parametrize("in_memory", [False, True])
def test_each_evaluation_batch_is_sampled_once_over_two_epochs(link_template, monkeypatch,
                                                               in_memory):
    monkeypatch.setattr(link, "EVAL_BATCH", 16)  # several batches per held-out part
    with Store(link_template) as store:
        meta = link_plan(store, "link")
        split = _check_split(store, meta)
        sizes = {p: link._eval_nodes(split, p).size for p in ("val", "test")}
    expected = sum(-(-n // 16) for n in sizes.values())
    assert expected > 2
    calls = _count_samples(monkeypatch)
    cfg = LinkTrainConfig(epochs=2, hidden=16, in_memory=in_memory,
                          cpu_budget=None if in_memory else 1 << 20)
    summary = run_link_training(link_template, "link", cfg)
    assert len(calls) == expected and sum(calls) == sum(sizes.values())
    assert summary["epochs"][0]["val"] and summary["test"]


def test_the_metrics_are_those_of_sampling_each_evaluation(link_template, monkeypatch):
    """The run's metrics with the batches kept equal those of a run whose every
    evaluation samples its batches afresh."""
    cfg = LinkTrainConfig(epochs=2, hidden=16, cpu_budget=1 << 20)
    kept = run_link_training(link_template, "link", cfg)

    class Fresh(link.EvalSamples):
        def of(self, part):
            self._parts.pop(part, None)
            return super().of(part)

    monkeypatch.setattr(link, "EvalSamples", Fresh)
    calls = _count_samples(monkeypatch)
    fresh = run_link_training(link_template, "link", cfg)
    assert len(calls) == 5  # budget check 2, validation 2, test 1 (one batch per part)
    assert [e["val"] for e in kept["epochs"]] == [e["val"] for e in fresh["epochs"]]
    assert kept["test"] == fresh["test"]
