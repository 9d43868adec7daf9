"""The installed layout: every package is listed in pyproject.toml, and the top-level
``samplers/`` folder is the package ``oocstore.samplers`` (never a top-level ``samplers``
in site-packages)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import REPO


def _packages_on_disk() -> set[str]:
    names = set()
    for init in (REPO / "oocstore").rglob("__init__.py"):
        names.add(".".join(init.parent.relative_to(REPO).parts))
    for init in (REPO / "samplers").rglob("__init__.py"):
        names.add(".".join(("oocstore",) + init.parent.relative_to(REPO).parts))
    return names


def test_pyproject_lists_every_package():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(cfg["packages"]) == _packages_on_disk()
    assert cfg["package-dir"] == {"oocstore.samplers": "samplers"}


def test_samplers_import_from_the_checkout():
    import oocstore.samplers
    import oocstore.samplers.neighbor

    assert Path(oocstore.samplers.__file__).resolve() == REPO / "samplers" / "__init__.py"
    assert Path(oocstore.samplers.neighbor.__file__).resolve().parent == REPO / "samplers"


def _builds_offline() -> bool:
    """Whether this environment's setuptools builds a wheel without fetching anything
    (setuptools >= 70.1 has bdist_wheel built in; older ones need the wheel package)."""
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
    return version >= (70, 1) or (version >= (64, 0)
                                  and importlib.util.find_spec("wheel") is not None)


@pytest.mark.skipif(not _builds_offline(),
                    reason="building offline needs setuptools>=70.1 here (the dev extra has it)")
def test_install_has_no_top_level_samplers(tmp_path):
    """A non-editable install holds oocstore/samplers/ and no top-level samplers."""
    build = tmp_path / "src"
    # Copy only what a build reads, so the checkout's own build/ and egg-info stay untouched.
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard",
                            "--", "pyproject.toml", "README.md", "oocstore", "samplers"],
                           check=True, capture_output=True, text=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file() and rel.endswith((".py", ".toml", ".md")):
            (build / rel).parent.mkdir(parents=True, exist_ok=True)
            (build / rel).write_bytes((REPO / rel).read_bytes())
    target = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-index", "--target", str(target),
                          str(build)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (target / "oocstore" / "samplers" / "neighbor.py").is_file()
    assert (target / "oocstore" / "samplers" / "views.py").is_file()
    assert not (target / "samplers").exists()
    # The installed copy imports its own samplers, not a checkout's.
    probe = subprocess.run([sys.executable, "-c",
                            "import oocstore.samplers as s; print(s.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path,
                           env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).resolve() == target / "oocstore" / "samplers" / "__init__.py"
