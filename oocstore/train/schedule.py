"""Which plan epoch, and which batch order, each training epoch uses.

A plan holds ``K`` sampled epochs; training runs ``E`` epochs. Training epoch ``e`` uses
plan epoch ``e mod K``. Sampling fresh every epoch is the special case ``K = E`` (every
training epoch sees its own sample); DiskGNN samples ``K = 1`` and reuses it.

``reuse`` says what happens when a plan epoch comes round again (``e >= K``):

``"cycle"``
    The batches are replayed in their sampled order (the same sequence every ``K``
    epochs, which keeps the access sequence a packer laid out on disk).
``"shuffle"``
    The batch order of the replayed epoch is permuted, differently for every training
    epoch, deterministically from ``seed``. The batches themselves (seed groups and
    sampled neighbourhoods) stay as sampled.

The first pass over each plan epoch (``e < K``) is always in sampled order (the sampler
already shuffled the seeds of each epoch), so with ``K = E`` both choices are identical
to fresh sampling.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from ..errors import UsageError
from ..plan import PlanReader

Reuse = Literal["cycle", "shuffle"]

#: Salt of the batch-order permutation (keeps it independent of the sampler's draws).
_ORDER_SALT = 0xB47C0DE


def epoch_schedule(reader: PlanReader, train_epoch: int, *, reuse: Reuse = "cycle",
                   seed: int | None = None) -> tuple[int, np.ndarray]:
    """``(plan_epoch, batch_order)`` for ``train_epoch``: read batches
    ``batch_order[0], batch_order[1], ...`` of ``plan_epoch``. ``seed`` defaults to the
    plan's sampling seed."""
    if reuse not in get_args(Reuse):
        raise UsageError(f"reuse {reuse!r} is not one of {', '.join(get_args(Reuse))}")
    if isinstance(train_epoch, bool) or not isinstance(train_epoch, (int, np.integer)) \
            or train_epoch < 0:
        raise UsageError(f"training epoch {train_epoch!r} is not a non-negative integer")
    plan_epoch = int(train_epoch) % reader.num_epochs
    n = reader.num_batches(plan_epoch)
    if reuse == "shuffle" and train_epoch >= reader.num_epochs:
        s = reader.meta.seed if seed is None else int(seed)
        order = np.random.default_rng([s, int(train_epoch), _ORDER_SALT]).permutation(n)
    else:
        order = np.arange(n)
    return plan_epoch, order
