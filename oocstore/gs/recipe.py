"""The training recipe: 3DGS / gsplat ``DefaultStrategy`` defaults and their schedules.

Values (each a ``gs-train`` flag):

* loss ``(1 - ssim_lambda) L1 + ssim_lambda (1 - SSIM)``, ``ssim_lambda = 0.2``;
* active SH degree ``min(i // sh_every, sh_degree)`` at 0-based step ``i``,
  ``sh_every = 1000``: higher coefficients get no gradient until their degree is on;
* position learning rate ``means_lr x scene_scale x (means_lr_final / means_lr) ^ (i / S)``
  (1.6e-4 -> 1.6e-6, exponential over the run of ``S`` steps); the other groups keep
  :class:`~oocstore.gs.adam.AdamConfig`'s constant rates;
* densification after step ``s`` (1-based count of steps done) when
  ``densify_from < s < densify_until`` and ``s % densify_every == 0`` (500, 15,000,
  100): gradient threshold 2e-4 on the screen-space means, clone when the largest scale is
  at most 0.01 x scene scale, split otherwise, prune opacity < 0.005;
* opacity reset (to at most ``2 x prune_opa``, moments zeroed) after step ``s`` when
  ``s % opacity_reset_every == 0`` and ``s < densify_until`` (3,000);
* pruning of Gaussians larger than 0.1 x scene scale only once ``s > opacity_reset_every``;
* ``random_background``: each step renders on a uniformly random colour (the target
  image keeps its own).

**Scaling with --steps.** The step counts above (``sh_every``, ``densify_from``,
``densify_until``, ``densify_every``, ``opacity_reset_every``) are 3DGS's for a
30,000-step run. A run of ``S < 30,000`` steps left at the defaults uses each of them
times ``S / 30,000``, rounded, at least 1 -- the same fractions of the run, as gsplat's
``steps_scaler`` -- except the opacity reset period, which stays 30 densification periods
(3DGS's 3000 / 100), so rounding never resets more often than that (e.g. 2,000 steps:
densify from 33 to 1,000 every 7, opacity reset every 210, SH degree up every 67). A
value given explicitly is used as given. ``S >= 30,000`` uses 3DGS's values.

The synthetic target (teacher/student scale tests) keeps the plain set-up unless told
otherwise: L1 loss, full SH degree, constant rates, no densification or reset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from oocstore.errors import UsageError

from .densify import DensifyConfig

#: Training modes of ``gs-train`` (here, not in the trainer, so the parser needs no torch).
MODE_NAMES = ("stream", "all-on-device", "naive-offload")

#: ``gs-train`` flags that set recipe values (attribute names of :class:`Recipe`).
RECIPE_FLAGS = ("ssim_lambda", "sh_every", "means_lr", "means_lr_final", "densify_from",
                "densify_until", "densify_every", "opacity_reset_every", "grow_grad2d",
                "grow_scale3d", "prune_opa", "prune_scale3d", "random_background")

REFERENCE_STEPS = 30_000
#: Step-valued fields scaled by ``steps / REFERENCE_STEPS`` when left at their defaults.
SCALED = ("sh_every", "densify_from", "densify_until", "densify_every", "opacity_reset_every")
#: Refinements per opacity reset in 3DGS (3000 / 100), kept by scaled schedules.
RESET_PER_REFINE = 30


@dataclass(frozen=True)
class Recipe:
    """Concrete training-recipe values for one run (see the module docstring).
    ``0`` turns a step-valued stage off (``sh_every = 0``: full degree from the start)."""

    ssim_lambda: float = 0.2
    sh_every: int = 1000
    means_lr: float = 1.6e-4
    means_lr_final: float = 1.6e-6
    densify_from: int = 500
    densify_until: int = 15_000
    densify_every: int = 100
    opacity_reset_every: int = 3000
    grow_grad2d: float = 2e-4
    grow_scale3d: float = 0.01
    prune_opa: float = 0.005
    prune_scale3d: float = 0.1
    random_background: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.ssim_lambda <= 1:
            raise UsageError(f"ssim_lambda={self.ssim_lambda} must lie in [0, 1]")
        for k in SCALED:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UsageError(f"{k}={v!r} must be a step count >= 0")
        if not (self.means_lr >= 0 and self.means_lr_final >= 0):
            raise UsageError(f"means_lr={self.means_lr} and means_lr_final="
                             f"{self.means_lr_final} must be >= 0")
        if self.means_lr > 0 and self.means_lr_final == 0:
            raise UsageError("means_lr_final=0 cannot end an exponential decay: give a "
                             "positive final rate (3DGS: 1.6e-6)")
        if not 0 < self.prune_opa < 0.5:
            raise UsageError(f"prune_opa={self.prune_opa} must lie in (0, 0.5) (the opacity "
                             "reset clamps to twice it)")
        self.densify  # validates the thresholds

    @property
    def densify(self) -> DensifyConfig:
        return DensifyConfig(grow_grad2d=self.grow_grad2d, grow_scale3d=self.grow_scale3d,
                             prune_opa=self.prune_opa, prune_scale3d=self.prune_scale3d)

    # -- schedules -----------------------------------------------------------------
    def sh_degree_at(self, i: int, sh_degree: int) -> int:
        """Active SH degree at 0-based step ``i``."""
        return sh_degree if not self.sh_every else min(i // self.sh_every, sh_degree)

    def means_lr_at(self, i: int, steps: int) -> float:
        """Position learning rate (before the scene scale) at 0-based step ``i`` of ``steps``."""
        if self.means_lr == 0:
            return 0.0
        return self.means_lr * (self.means_lr_final / self.means_lr) ** (i / max(steps, 1))

    def refine_after(self, s: int) -> bool:
        """Densify after the ``s``-th step (1-based)?"""
        return bool(self.densify_every and self.densify_from < s < self.densify_until
                    and s % self.densify_every == 0)

    def reset_after(self, s: int) -> bool:
        return bool(self.opacity_reset_every and s % self.opacity_reset_every == 0
                    and 0 < s < self.densify_until)

    def prune_large_after(self, s: int) -> bool:
        """Too-large pruning is on once the first opacity reset is behind (always when
        resets are off)."""
        return not self.opacity_reset_every or s > self.opacity_reset_every

    @property
    def reset_value(self) -> float:
        return 2 * self.prune_opa

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PHOTO = Recipe()
SYNTHETIC = Recipe(ssim_lambda=0.0, sh_every=0, means_lr_final=1.6e-4, densify_from=0,
                   densify_until=1 << 62, densify_every=0, opacity_reset_every=0)


def resolve(steps: int, *, synthetic: bool = False, **given) -> Recipe:
    """The recipe of a ``steps``-step run: the defaults of the target (photo or synthetic),
    the photo defaults' step counts scaled to ``steps`` (module docstring), then the
    values ``given`` explicitly (``None`` means not given)."""
    given = {k: v for k, v in given.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(Recipe)}
    if unknown:
        raise UsageError(f"unknown recipe values {sorted(unknown)}")
    base = SYNTHETIC if synthetic else PHOTO
    if not synthetic and steps < REFERENCE_STEPS:
        f = steps / REFERENCE_STEPS
        scaled = {k: max(1, int(math.floor(getattr(base, k) * f + 0.5))) for k in SCALED}
        # 3DGS refines 30 times per opacity reset (3000 = 30 x 100): rounding must not
        # break that for short runs (a reset every step would undo all training)
        scaled["opacity_reset_every"] = RESET_PER_REFINE * scaled["densify_every"]
        base = replace(base, **scaled)
    return replace(base, **given)
