"""Visibility-masked Adam on Gaussian rows, with 3DGS's per-group learning rates.

A training step renders one view; only the Gaussians it rendered (``radii > 0``) take an
Adam step. Rows outside the mask keep their parameters **and** both moments unchanged
(plain Adam would decay their moments and keep moving them with stale momentum), so a
Gaussian's state depends only on the steps that saw it, which is what lets a streamer
leave invisible rows on the CPU or SSD tier without changing the result.

Step counts are **global**: the bias correction of step ``t`` (1-based, the training
step) is ``1 - beta^t`` for every updated row, as gsplat's ``SelectiveAdam`` does; no
per-row counter is stored in the record. Every mode (all-on-device, naive offload,
stream) and the in-memory oracle call :func:`masked_adam_` with the same ``t``.

Learning rates per parameter group follow 3DGS / gsplat's defaults: means 1.6e-4 times
the scene scale, log-scales 5e-3, quaternions 1e-3, opacity logits 5e-2, SH DC 2.5e-3,
higher SH 2.5e-3 / 20. They are expanded to one rate per parameter column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oocstore.errors import UsageError

from .layout import LOG_SCALES, MEANS, OPACITY, QUATS, SH_START, param_width


@dataclass(frozen=True)
class AdamConfig:
    """Learning rates per group (``means`` is multiplied by the scene scale), betas, eps."""

    means: float = 1.6e-4
    log_scales: float = 5e-3
    quats: float = 1e-3
    opacity: float = 5e-2
    sh_dc: float = 2.5e-3
    sh_rest: float = 2.5e-3 / 20
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-15

    def __post_init__(self) -> None:
        for name in ("means", "log_scales", "quats", "opacity", "sh_dc", "sh_rest"):
            v = getattr(self, name)
            if not v >= 0:
                raise UsageError(f"learning rate {name}={v!r} must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UsageError(f"Adam betas ({self.beta1}, {self.beta2}) must lie in [0, 1)")

    def column_lrs(self, sh_degree: int, scene_scale: float = 1.0, *,
                   device: torch.device | str = "cpu", dtype=torch.float32) -> torch.Tensor:
        """One learning rate per parameter column: [P]."""
        lr = torch.empty(param_width(sh_degree), dtype=dtype, device=device)
        lr[MEANS] = self.means * scene_scale
        lr[QUATS] = self.quats
        lr[LOG_SCALES] = self.log_scales
        lr[OPACITY] = self.opacity
        lr[SH_START:SH_START + 3] = self.sh_dc
        lr[SH_START + 3:] = self.sh_rest
        return lr


@torch.no_grad()
def masked_adam_(params: torch.Tensor,  # [M, P], updated in place
                 exp_avg: torch.Tensor,  # [M, P], updated in place
                 exp_avg_sq: torch.Tensor,  # [M, P], updated in place
                 grad: torch.Tensor,  # [M, P]
                 mask: torch.Tensor,  # [M] bool: rows that take a step
                 lr: torch.Tensor,  # [P] per-column learning rates
                 step: int,  # global step, 1-based
                 cfg: AdamConfig) -> int:
    """One Adam step on the rows where ``mask`` holds; returns how many rows stepped."""
    rows = torch.nonzero(mask)[:, 0]
    return adam_rows_(params, exp_avg, exp_avg_sq, rows, grad.index_select(0, rows), lr, step,
                      cfg)


@torch.no_grad()
def adam_rows_(params: torch.Tensor,  # [T, P] table (a column view is fine), updated in place
               exp_avg: torch.Tensor,  # [T, P], updated in place
               exp_avg_sq: torch.Tensor,  # [T, P], updated in place
               rows: torch.Tensor,  # [R] int64 rows of the tables that take a step
               grad: torch.Tensor,  # [R, P] their gradients
               lr: torch.Tensor,  # [P] per-column learning rates
               step: int,  # global step, 1-based
               cfg: AdamConfig) -> int:
    """One Adam step on ``rows`` of the tables, with their gradients ``grad``; returns
    ``len(rows)``. The same arithmetic as :func:`masked_adam_` (which calls it), so a store
    that keeps the moments in its own tables (device slots, or host memory for a CPU
    optimizer) updates them to the same bits as the in-memory oracle."""
    if step < 1:
        raise UsageError(f"Adam step {step} must be >= 1 (steps count from 1)")
    if rows.numel() == 0:
        return 0
    g = grad
    m = exp_avg.index_select(0, rows).mul_(cfg.beta1).add_(g, alpha=1 - cfg.beta1)
    v = exp_avg_sq.index_select(0, rows).mul_(cfg.beta2).addcmul_(g, g, value=1 - cfg.beta2)
    bc1 = 1 - cfg.beta1 ** step
    bc2 = 1 - cfg.beta2 ** step
    denom = (v / bc2).sqrt_().add_(cfg.eps)
    p = params.index_select(0, rows).addcdiv_(m * (lr / bc1), denom, value=-1.0)
    params.index_copy_(0, rows, p)
    exp_avg.index_copy_(0, rows, m)
    exp_avg_sq.index_copy_(0, rows, v)
    return int(rows.numel())
