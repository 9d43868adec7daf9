"""Where ``oocstore.samplers`` comes from in a source checkout.

The offline samplers live in the repository's top-level ``samplers/`` folder. An install
(wheel or ``pip install -e``) maps that folder to ``oocstore.samplers`` (``package-dir`` in
``pyproject.toml``), so no generic top-level ``samplers`` package lands in site-packages.
A checkout used without installing (``PYTHONPATH=$PWD``, a git worktree) has no
``samplers`` folder inside the package: :func:`install` adds a finder that resolves that
one name to ``samplers/`` beside the package, and nothing else.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

NAME = "oocstore.samplers"


class _SamplersFinder(importlib.abc.MetaPathFinder):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname, path, target=None):
        if fullname != NAME:
            return None
        return importlib.util.spec_from_file_location(
            NAME, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)])


def install(package_dir: Path) -> None:
    """Resolve ``oocstore.samplers`` to ``samplers/`` beside ``package_dir`` when the
    package does not hold it itself (an installed copy does) and no finder does yet."""
    if (package_dir / "samplers" / "__init__.py").is_file():
        return
    folder = package_dir.parent / "samplers"
    if not (folder / "__init__.py").is_file():
        return
    if any(isinstance(f, _SamplersFinder) for f in sys.meta_path):
        return
    # First: an editable install of another checkout must not shadow this one's samplers.
    sys.meta_path.insert(0, _SamplersFinder(folder))
