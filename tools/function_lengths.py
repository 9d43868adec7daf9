"""Print the longest functions of the library (``oocstore/`` and ``samplers/``).

    python tools/function_lengths.py             # the 15 longest; exit 1 when one is over 80
    python tools/function_lengths.py --most 40 --limit 60
    python tools/function_lengths.py --root DIR  # another checkout

A function's length is its lines from ``def`` (decorators not counted) to its last line,
docstring and comments included, nested functions inside it too (each nested one is also
listed on its own): ``end_lineno - lineno + 1`` of its ``ast`` node. One line a function:
``LINES path:line name``, longest first.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

#: Library functions are kept under this many lines (docs/ARCHITECTURE.md).
LIMIT = 80


def function_lengths(root: Path) -> list[tuple[int, str, int, str]]:
    """``(lines, path relative to root, first line, name)`` of every function and method
    under ``root/oocstore`` and ``root/samplers``, longest first."""
    out = []
    for top in ("oocstore", "samplers"):
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append((node.end_lineno - node.lineno + 1, rel, node.lineno, node.name))
    out.sort(key=lambda r: (-r[0], r[1], r[2]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--most", type=int, default=15, help="how many to print (default 15)")
    ap.add_argument("--limit", type=int, default=LIMIT,
                    help=f"exit 1 when a function has more lines than this (default {LIMIT})")
    args = ap.parse_args(argv)
    rows = function_lengths(Path(args.root))
    for lines, rel, lineno, name in rows[:args.most]:
        print(f"{lines:4d} {rel}:{lineno} {name}")
    over = [r for r in rows if r[0] > args.limit]
    print(f"{len(over)} function(s) over {args.limit} lines")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
