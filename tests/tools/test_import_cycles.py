"""tools/import_cycles.py: the import graph of the library and its cycles."""

from __future__ import annotations

import importlib.util

from helpers import REPO

_spec = importlib.util.spec_from_file_location("import_cycles", REPO / "tools" / "import_cycles.py")
import_cycles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_cycles)


def _tree(root, files: dict[str, str]):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return import_cycles.cycles(import_cycles.import_graph(root))


def test_cycles_through_function_level_relative_and_sampler_imports(tmp_path):
    found = _tree(tmp_path, {
        "oocstore/__init__.py": "",
        "oocstore/a.py": "from . import b\n",
        "oocstore/b.py": "def f():\n    from .a import thing\n",   # a <-> b
        "oocstore/c.py": "from oocstore.samplers.s import g\n",
        "oocstore/sub/__init__.py": "",
        "oocstore/sub/d.py": "from ..c import x\nfrom typing import Any\n",
        "samplers/__init__.py": "",
        "samplers/s.py": "from oocstore.sub.d import y\n",          # c -> s -> d -> c
        "oocstore/e.py": "import oocstore.a\n",                      # no cycle
    })
    assert found == [["oocstore.a", "oocstore.b"],
                     ["oocstore.c", "oocstore.samplers.s", "oocstore.sub.d"]]


def test_no_cycles_in_an_acyclic_tree(tmp_path):
    assert _tree(tmp_path, {"oocstore/__init__.py": "from .a import x\n",
                            "oocstore/a.py": "import numpy\n", "samplers/__init__.py": ""}) == []


def test_the_cli_and_the_scene_modules_are_out_of_cycles():
    found = import_cycles.cycles(import_cycles.import_graph(REPO))
    tangled = {m for comp in found for m in comp}
    assert not tangled & {"oocstore.cli", "oocstore.cli.scene", "oocstore.gs.recipe",
                          "oocstore.gs.train", "oocstore.gs.scene", "oocstore.gs.writer",
                          "oocstore.integrations", "oocstore.integrations.pyg"}, found
