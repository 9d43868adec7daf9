"""Adapters from oocstore batches to model libraries.

Importing this package never imports a model library: PyTorch Geometric is imported
inside the functions that need it (:func:`oocstore.integrations.pyg.require_pyg`), so
the store, samplers and loader work without it, and a missing optional dependency is
reported with the ``pip install`` line that fixes it.
"""

from __future__ import annotations

from ..errors import MissingDependencyError
from .pyg import PygBatch, PygLayer, require_pyg, to_pyg

__all__ = ["MissingDependencyError", "PygBatch", "PygLayer", "require_pyg", "to_pyg"]
