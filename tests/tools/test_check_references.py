"""tools/check_references.py: the modules, functions and files the library's docstrings
and comments name exist."""

from __future__ import annotations

import importlib.util

from helpers import REPO

_spec = importlib.util.spec_from_file_location("check_references",
                                               REPO / "tools" / "check_references.py")
check_references = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_references)


def test_the_library_names_only_what_exists():
    assert check_references.dangling(REPO) == []


def test_dangling_references_are_reported(tmp_path):
    (tmp_path / "oocstore" / "gs").mkdir(parents=True)
    (tmp_path / "samplers").mkdir()
    (tmp_path / "oocstore" / "gs" / "made_up.py").write_text(
        '"""Reads with :func:`missing_function` and ``oocstore.plan.NoSuchReader``;\n'
        "see ``gs/no_such_file.py`` and docs/NOWHERE.md. Fine: ``oocstore.plan.PlanReader``,\n"
        ':class:`~oocstore.store.Store`, :meth:`Store.refresh`, ``samplers.views.view_order``."""\n')
    found = check_references.dangling(tmp_path)
    assert found == ["oocstore/gs/made_up.py:1: oocstore.plan.NoSuchReader",
                     "oocstore/gs/made_up.py:1: :func:`missing_function`",
                     "oocstore/gs/made_up.py:2: docs/NOWHERE.md",
                     "oocstore/gs/made_up.py:2: gs/no_such_file.py"]
