"""tests/dgl run only in the DGL environment (``make test-dgl``): DGL 2.1 needs torch 2.2
and numpy<2, which the main environment does not have. Without DGL the whole directory
is skipped, with the command that runs it.

The check goes through :func:`~oocstore.integrations.dgl.require_dgl`, not a bare
``import dgl``: with ``tests/`` on sys.path this very folder imports as an empty
namespace package ``dgl`` where the real one is absent.
"""

from __future__ import annotations

import warnings

import pytest

from oocstore.integrations import MissingDependencyError
from oocstore.integrations.dgl import require_dgl

try:
    with warnings.catch_warnings():
        # DGL's import-time notes (backend, deprecations in its dependencies) are not
        # about oocstore; pytest turns warnings into errors.
        warnings.simplefilter("ignore")
        require_dgl()
    _MISSING = None
except MissingDependencyError as err:
    _MISSING = str(err)


class _SkippedModule(pytest.Module):
    """A test module of this folder, skipped (with the reason) without importing it."""

    def collect(self):
        pytest.skip(_MISSING, allow_module_level=True)


def pytest_pycollect_makemodule(module_path, parent):
    if _MISSING is not None:
        return _SkippedModule.from_parent(parent, path=module_path)
    return None
