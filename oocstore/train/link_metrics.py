"""Link-prediction metrics over fixed negatives (conventions of the OGB link-prediction
evaluators, so numbers compare with published ones measured the same way).

``hits_at_k(pos, neg, k)``
    The fraction of positive scores strictly above the ``k``-th highest negative score
    (ogbl-collab / ogbl-ddi: every positive against one shared pool of negatives); 1.0
    when there are fewer than ``k`` negatives, as OGB returns.

``mrr(pos, neg)``
    Mean reciprocal rank of each positive among its own row of negatives (ogbl-citation2),
    ties counted half: rank = 1 + #(neg > pos) + #(neg == pos) / 2.

``auc(pos, neg)``
    Area under the ROC curve: the probability that a random positive scores above a
    random negative, ties counted half (the Mann-Whitney U statistic).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UsageError

#: The K of Hits@K reported by ``oocstore train --task link``.
HITS_KS = (20, 50, 100)


def _check(pos: torch.Tensor, neg: torch.Tensor) -> None:
    if pos.numel() == 0:
        raise UsageError("link metrics need at least one positive score")


def hits_at_k(pos: torch.Tensor,  # [P] scores of positives
              neg: torch.Tensor,  # [N] scores of the shared negative pool
              k: int) -> float:
    _check(pos, neg)
    neg = neg.reshape(-1)
    if neg.numel() < k:
        return 1.0
    kth = torch.topk(neg, k).values[-1]
    return float((pos > kth).float().mean())


def mrr(pos: torch.Tensor,  # [P]
        neg: torch.Tensor,  # [P, M] each positive's own negatives
        ) -> float:
    _check(pos, neg)
    p = pos.reshape(-1, 1)
    above = (neg > p).sum(dim=1).double()
    ties = (neg == p).sum(dim=1).double()
    return float((1.0 / (1.0 + above + ties / 2)).mean())


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    _check(pos, neg)
    p = pos.reshape(-1).double().numpy()
    n = neg.reshape(-1).double().numpy()
    if n.size == 0:
        raise UsageError("AUC needs at least one negative score")
    scores = np.concatenate([p, n])
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = np.arange(1, scores.size + 1)
    # Average ranks over ties.
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    for s, e in zip(starts, ends):
        if e - s > 1:
            ranks[order[s:e]] = (s + 1 + e) / 2
    u = ranks[:p.size].sum() - p.size * (p.size + 1) / 2
    return float(u / (p.size * n.size))


def link_metrics(pos: torch.Tensor,  # [P]
                 neg: torch.Tensor,  # [P, M]; column 0 is the shared pool of Hits@K and AUC
                 ) -> dict[str, float]:
    """Every metric of a held-out part (see :mod:`oocstore.linksplit` for which negatives
    each uses)."""
    pos, neg = pos.detach().cpu().float(), neg.detach().cpu().float()
    pool = neg[:, 0]
    out = {f"hits@{k}": hits_at_k(pos, pool, k) for k in HITS_KS}
    out["mrr"] = mrr(pos, neg)
    out["auc"] = auc(pos, pool)
    return out
