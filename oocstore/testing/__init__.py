"""Test suites shipped with oocstore for code that extends it (pytest needed).

:class:`TierConformance` (:mod:`.tiers`): the contract every cache tier keeps.
"""

from .tiers import TierConformance

__all__ = ["TierConformance"]
