"""Offline samplers: they read a store's graph and write access plans (:mod:`oocstore.plan`).

The library core never imports this package; the composition roots (``oocstore/cli/``,
``oocstore/train/``) put samplers and stores together.
"""

from .neighbor import (SamplingJob, parse_fanouts, prepare_sampling, run_sampling,
                       sample_batches, sample_plan)

__all__ = ["SamplingJob", "parse_fanouts", "prepare_sampling", "run_sampling", "sample_batches",
           "sample_plan"]
