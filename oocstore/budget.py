"""Memory budgets as hard limits, and the accountant every buffer is charged to.

A :class:`MemoryBudget` gives byte limits per tier (``gpu``, ``cpu``, ``disk``; ``None``
means unlimited). Components ask a :class:`BudgetAccountant` for a :class:`Charge`
*before* allocating; a charge that would exceed the budget raises
:class:`~oocstore.errors.BudgetError` with the numbers and the fix, up front, instead
of an out-of-memory crash mid-epoch. Charges are released explicitly (or by leaving a
``with`` block), so the accountant's ``charged`` is the live sum and ``peak`` its
high-water mark.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from .errors import BudgetError, UsageError
from .units import format_size, parse_size

Tier = Literal["gpu", "cpu", "disk"]
TIERS: tuple[Tier, ...] = ("gpu", "cpu", "disk")


@dataclass(frozen=True)
class MemoryBudget:
    """Byte limits per tier; ``None`` is unlimited. Accepts sizes as ints or strings
    (``MemoryBudget(cpu="4GiB", gpu="512MiB")``)."""

    gpu: int | None = None
    cpu: int | None = None
    disk: int | None = None

    def __post_init__(self) -> None:
        for tier in TIERS:
            value = getattr(self, tier)
            if value is not None:
                object.__setattr__(self, tier, parse_size(value, what=f"{tier} budget"))

    def limit(self, tier: Tier) -> int | None:
        if tier not in TIERS:
            raise UsageError(f"unknown tier {tier!r}: use one of {', '.join(TIERS)}")
        return getattr(self, tier)

    def to_dict(self) -> dict[str, int | None]:
        return {t: getattr(self, t) for t in TIERS}

    def __str__(self) -> str:
        parts = [f"{t}={format_size(v) if v is not None else 'unlimited'}"
                 for t in TIERS if (v := getattr(self, t)) is not None or t != "disk"]
        return "MemoryBudget(" + ", ".join(parts) + ")"


class Charge:
    """Bytes held against one tier until :meth:`release` (idempotent)."""

    def __init__(self, accountant: "BudgetAccountant", tier: Tier, nbytes: int, what: str):
        self.accountant, self.tier, self.nbytes, self.what = accountant, tier, nbytes, what
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.accountant._release(self)

    def __enter__(self) -> "Charge":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Charge({self.tier}, {format_size(self.nbytes)}, {self.what!r})"


class BudgetAccountant:
    """Thread-safe ledger of what is charged to each tier of one budget."""

    def __init__(self, budget: MemoryBudget):
        self.budget = budget
        self._lock = threading.Lock()
        self._charged = {t: 0 for t in TIERS}
        self._peak = {t: 0 for t in TIERS}
        self._holders: dict[Tier, list[Charge]] = {t: [] for t in TIERS}

    def charge(self, tier: Tier, nbytes: int, what: str, *, fix: str | None = None) -> Charge:
        """Reserve ``nbytes`` of ``tier`` for ``what`` or raise :class:`BudgetError`."""
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"cannot charge a negative size {nbytes} for {what}")
        limit = self.budget.limit(tier)
        with self._lock:
            after = self._charged[tier] + nbytes
            if limit is not None and after > limit:
                held = ", ".join(f"{c.what} {format_size(c.nbytes)}" for c in self._holders[tier])
                raise BudgetError(
                    f"{tier} budget {format_size(limit)} is too small: {what} needs "
                    f"{format_size(nbytes)} on top of {format_size(self._charged[tier])} already "
                    f"held ({held or 'nothing'}), {format_size(after)} in all; "
                    + (fix or f"raise the {tier} budget to at least {format_size(after)}"))
            self._charged[tier] = after
            self._peak[tier] = max(self._peak[tier], after)
            c = Charge(self, tier, nbytes, what)
            self._holders[tier].append(c)
            return c

    def fits(self, tier: Tier, nbytes: int) -> bool:
        limit = self.budget.limit(tier)
        with self._lock:
            return limit is None or self._charged[tier] + nbytes <= limit

    def available(self, tier: Tier) -> int | None:
        limit = self.budget.limit(tier)
        with self._lock:
            return None if limit is None else limit - self._charged[tier]

    def charged(self, tier: Tier) -> int:
        with self._lock:
            return self._charged[tier]

    def peak(self, tier: Tier) -> int:
        with self._lock:
            return self._peak[tier]

    def _release(self, c: Charge) -> None:
        with self._lock:
            self._charged[c.tier] -= c.nbytes
            self._holders[c.tier].remove(c)

    def summary(self) -> dict[str, dict[str, int | None]]:
        with self._lock:
            return {t: {"limit": self.budget.limit(t), "charged": self._charged[t],
                        "peak": self._peak[t]} for t in TIERS}
