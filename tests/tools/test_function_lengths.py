"""tools/function_lengths.py: the library's functions by length."""

from __future__ import annotations

import importlib.util

from helpers import REPO

_spec = importlib.util.spec_from_file_location("function_lengths",
                                               REPO / "tools" / "function_lengths.py")
function_lengths = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(function_lengths)


def test_lengths_count_from_def_to_the_last_line_nested_ones_too(tmp_path):
    (tmp_path / "oocstore").mkdir()
    (tmp_path / "samplers").mkdir()
    (tmp_path / "oocstore" / "a.py").write_text(
        "@staticmethod\n"          # decorators are not counted
        "def f():\n"               # 2
        '    """doc"""\n'
        "    def g():\n"           # 4: nested, 2 lines
        "        return 1\n"
        "    return g\n")          # 6
    (tmp_path / "samplers" / "s.py").write_text(
        "class C:\n    async def m(self):\n        pass\n")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "t.py").write_text("def not_the_library():\n" + "    x = 1\n" * 200)
    rows = function_lengths.function_lengths(tmp_path)
    assert rows == [(5, "oocstore/a.py", 2, "f"), (2, "oocstore/a.py", 4, "g"),
                    (2, "samplers/s.py", 2, "m")]


def test_exit_status_says_whether_one_is_over_the_limit(tmp_path, capsys):
    (tmp_path / "oocstore").mkdir()
    (tmp_path / "oocstore" / "a.py").write_text("def f():\n" + "    x = 1\n" * 9)  # 10 lines
    assert function_lengths.main(["--root", str(tmp_path), "--limit", "10"]) == 0
    assert function_lengths.main(["--root", str(tmp_path), "--limit", "9"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["  10 oocstore/a.py:1 f", "1 function(s) over 9 lines"]
