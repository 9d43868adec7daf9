"""Link metrics against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from oocstore.train.link_metrics import auc, hits_at_k, link_metrics, mrr


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_hits_at_k_counts_positives_above_the_kth_negative():
    pos, neg = t(0.9, 0.5, 0.3, 0.7), t(0.8, 0.6, 0.4, 0.1)
    # 2nd highest negative 0.6: positives 0.9, 0.7 are above -> 2/4.
    assert hits_at_k(pos, neg, 2) == 0.5
    # 1st highest 0.8: only 0.9.
    assert hits_at_k(pos, neg, 1) == 0.25
    # A tie with the k-th negative is not a hit (strictly above, as OGB).
    assert hits_at_k(t(0.6), neg, 2) == 0.0
    assert hits_at_k(pos, neg, 10) == 1.0  # fewer negatives than k


def test_mrr_ranks_each_positive_among_its_own_negatives():
    pos = t(0.5, 0.2, 0.9)
    neg = torch.tensor([[0.6, 0.1, 0.7],    # 2 above -> rank 3
                        [0.2, 0.1, 0.0],    # 1 tie -> rank 1.5
                        [0.1, 0.2, 0.3]])   # rank 1
    assert mrr(pos, neg) == pytest.approx((1 / 3 + 1 / 1.5 + 1) / 3)


def test_auc_is_the_probability_a_positive_beats_a_negative():
    pos, neg = t(0.9, 0.4, 0.4), t(0.4, 0.1)
    # pairs: 0.9 beats both (2); 0.4 ties 0.4 (0.5) and beats 0.1 (1), twice -> 2 + 3 = 5 / 6.
    assert auc(pos, neg) == pytest.approx(5 / 6)
    assert auc(t(1, 2), t(3, 4)) == 0.0


def test_link_metrics_use_column_zero_as_the_shared_pool():
    pos = t(0.9, 0.1)
    neg = torch.tensor([[0.5, 0.95], [0.2, 0.0]])
    m = link_metrics(pos, neg)
    assert m["auc"] == pytest.approx(0.5)  # 0.9 beats 0.5 and 0.2; 0.1 beats neither: 2 of 4
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert m["hits@20"] == 1.0  # fewer than 20 negatives in the pool
