"""Tiers (GPU / CPU / SSD / base-array fallback) and the reader that composes them."""

from .base import Tier
from .memory import MemoryTier
from .reader import TieredReader, list_packs, load_pack
from .ssd import BaseRowTier, SegmentTier

__all__ = ["BaseRowTier", "MemoryTier", "SegmentTier", "Tier", "TieredReader", "list_packs",
           "load_pack"]
