"""What a pack is asked to be: tier sizes, the disk-blowup cap, budgets, the CPU-tier
policy and how the rows are copied — checked once, when the options are made.

Errors name the parameter as a Python caller passes it (``window_bytes=0: ...``); the
command line writes its own flags instead (:func:`oocstore.cli.common.with_flags`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError
from .policies import POLICIES

#: Output rows assembled in memory per scan of the base array.
DEFAULT_WINDOW_BYTES = 256 << 20

#: How the batched copy gets rows of the base array into output windows (copy_rows).
COPY_STRATEGIES = ("auto", "buckets", "rescans")


@dataclass(frozen=True)
class PackOptions:
    gpu_cache: int = 0  # bytes of the GPU tier
    cpu_cache: int = 0  # bytes of the CPU tier
    max_disk_blowup: float = 4.0
    cpu_budget: int | None = None
    gpu_budget: int | None = None
    segment_batches: int | None = None  # None: the smallest that fits the blowup cap
    window_bytes: int = DEFAULT_WINDOW_BYTES
    policy: str = "static"  # CPU tier: a name in .policies.POLICIES
    copy: str = "auto"  # batched copy: "auto", "buckets" or "rescans" (see copy_rows)
    features: str = "features"  # the feature array packed (one per node type in a hetero store)

    def __post_init__(self) -> None:
        if self.gpu_cache < 0 or self.cpu_cache < 0:
            raise UsageError("cache sizes must be 0 or more bytes")
        if not (self.max_disk_blowup >= 0) or math.isinf(self.max_disk_blowup):
            raise UsageError(f"max_disk_blowup={self.max_disk_blowup}: give a finite number "
                             ">= 0 (e.g. 4: packed bytes at most 4x the feature bytes)")
        if self.segment_batches is not None and self.segment_batches < 1:
            raise UsageError(f"segment length {self.segment_batches}: give 1 or more batches")
        if self.policy not in POLICIES:
            raise UsageError(f"policy={self.policy!r}: use one of {', '.join(sorted(POLICIES))}")
        if self.copy not in COPY_STRATEGIES:
            raise UsageError(f"copy strategy {self.copy!r}: use one of {', '.join(COPY_STRATEGIES)}")
        if self.window_bytes < 1:
            raise UsageError(f"window_bytes={self.window_bytes}: give a positive size (e.g. 1GiB)")
