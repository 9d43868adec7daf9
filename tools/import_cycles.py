"""Print the import cycles among the library's modules (``oocstore/`` and ``samplers/``).

    python tools/import_cycles.py            # one line per cycle; exit 1 when there is one
    python tools/import_cycles.py --root DIR # another checkout

Every ``import`` / ``from ... import`` counts, at module level or inside a function: a
function-level import still ties the two modules together (each needs the other to work).
A cycle is a strongly connected component of more than one module. ``samplers/`` is the
package ``oocstore.samplers``; in an older checkout where it is imported as ``samplers``,
that name is kept.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``oocstore/`` and ``samplers/``."""
    out: dict[str, Path] = {}
    for top, prefix in (("oocstore", ()), ("samplers", ("oocstore",))):
        for path in sorted((root / top).rglob("*.py")):
            parts = prefix + path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(mod: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the library modules it imports."""
    files = module_names(root)
    known = set(files)
    alias = {n[len("oocstore."):]: n for n in known if n.startswith("oocstore.samplers")}

    def canon(name: str) -> str | None:
        name = alias.get(name, name)
        while name and name not in known:  # `from a.b import c` with c a name: a.b
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module)
                targets = [f"{base}.{a.name}" if base else a.name for a in node.names]
            for t in targets:
                dep = canon(t)
                if dep is not None and dep != mod:
                    graph[mod].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # recursion depth is bounded by the module count
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]),
                    help="checkout to read (default: this one)")
    args = ap.parse_args(argv)
    found = cycles(import_graph(Path(args.root)))
    for comp in found:
        print(" <-> ".join(comp))
    print(f"{len(found)} import cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
