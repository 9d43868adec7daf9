"""Check that the modules, functions and files the library's docstrings and comments name
exist.

    python tools/check_references.py     # one line per dangling reference; exit 1 if any

Read: every ``.py`` under ``oocstore/`` and ``samplers/`` (docstrings, comments and
messages alike). A dotted name ``oocstore.x.y`` (or ``samplers.x.y``, the package
``oocstore.samplers``) is resolved by importing its longest module prefix and looking up
the rest as attributes (an attribute assigned in a class's methods, ``self.name = ...``,
counts). A path ``oocstore/x/y.py`` (or ``samplers/...``, ``docs/...``, ``bench/...``,
``tools/...``, ``tests/...``) must be a file of the checkout.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"(?<![\w./-])(?:oocstore|samplers)(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"(?<![\w./-])(?:oocstore|samplers|docs|bench|tools|tests)/[\w./-]*\w")
#: Other file names: ``gs/train.py``, ``tiers/base.py`` (relative to oocstore/ or the file).
PYFILE = re.compile(r"(?<![\w./-])(?:\w+/)+\w+\.py\b")
#: Sphinx cross-references; a leading dot is relative to the file's package, a bare name
#: is looked up in the file's own module.
ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|exc|obj):`~?([\w.]+)`")


def _lookup(name: str) -> bool:
    parts = name.split(".")
    if parts[0] == "samplers":
        parts = ["oocstore"] + parts
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if hasattr(obj, attr):
                obj = getattr(obj, attr)
            elif inspect.isclass(obj) and _assigned_in(obj, attr):
                return True  # an instance attribute; nothing further to resolve
            else:
                return False
        return True
    return False


def _assigned_in(cls: type, attr: str) -> bool:
    """Whether ``cls`` (or a base) declares ``attr`` (a dataclass field, an annotation)
    or one of its methods assigns ``self.<attr>``."""
    if any(attr in getattr(k, "__annotations__", {}) for k in cls.__mro__):
        return True
    for klass in cls.__mro__:
        try:
            tree = ast.parse(inspect.getsource(klass).lstrip())
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == attr
                    and isinstance(node.ctx, ast.Store)):
                return True
    return False


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "samplers":
        parts = ["oocstore"] + parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _role_targets(module: str, is_pkg: bool, target: str) -> list[str]:
    """The absolute dotted names a cross-reference made in ``module`` may stand for: as
    written (another package's name too), relative to the module, or, for a bare name, a
    member of one of the module's classes (a reference inside a class's docstring)."""
    if target.startswith("."):
        level = len(target) - len(target.lstrip("."))
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[: len(base) - (level - 1)]
        return [".".join(base + [target.lstrip(".")])]
    names = [f"{module}.{target}"]
    if "." in target:
        names.append(target)
    else:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return names
        names += [f"{module}.{k}.{target}" for k, v in vars(mod).items()
                  if inspect.isclass(v) and v.__module__ == module]
    return names


def _defined_anywhere(target: str) -> bool:
    """Whether ``target`` (``Name`` or ``Name.member``) names a class or function defined
    in any library module (Sphinx's search for a reference it cannot place)."""
    head, _, rest = target.partition(".")
    for mod in list(sys.modules.values()):
        if not getattr(mod, "__name__", "").startswith("oocstore"):
            continue
        obj = vars(mod).get(head)
        if obj is None or getattr(obj, "__module__", "") != mod.__name__:
            continue
        if not rest or hasattr(obj, rest) or (inspect.isclass(obj) and _assigned_in(obj, rest)):
            return True
    return False


def _resolves(names: list[str], cache: dict[str, bool]) -> bool:
    for name in names:
        if name not in cache:
            cache[name] = _lookup(name)
        if cache[name]:
            return True
    return False


def _file_exists(root: Path, path: Path, ref: str) -> bool:
    return any((base / ref).exists() for base in (root, root / "oocstore", path.parent,
                                                  path.parent.parent))


def dangling(root: Path = ROOT) -> list[str]:
    """``file:line: reference`` for every name or path that does not resolve."""
    out = []
    files = sorted((root / "oocstore").rglob("*.py")) + sorted((root / "samplers").rglob("*.py"))
    for path in files:  # every module imported first: references are looked up among them
        if path.name == "__main__.py":
            continue
        try:
            importlib.import_module(_module_name(root, path))
        except ImportError:
            pass
    seen: dict[str, bool] = {}
    for path in files:
        module = _module_name(root, path)
        for no, line in enumerate(path.read_text().splitlines(), 1):
            for m in DOTTED.finditer(line):
                name = m.group(0)
                if name not in seen:
                    seen[name] = _lookup(name)
                if not seen[name]:
                    out.append(f"{path.relative_to(root)}:{no}: {name}")
            for m in PATH.finditer(line):
                ref = m.group(0).rstrip(".")
                if not (root / ref).exists():
                    out.append(f"{path.relative_to(root)}:{no}: {ref}")
            for m in PYFILE.finditer(line):
                if not PATH.fullmatch(m.group(0)) and not _file_exists(root, path, m.group(0)):
                    out.append(f"{path.relative_to(root)}:{no}: {m.group(0)}")
            for m in ROLE.finditer(line):
                names = _role_targets(module, path.name == "__init__.py", m.group(1))
                if not _resolves(names, seen) and not (
                        m.group(1)[0] != "." and _defined_anywhere(m.group(1).lstrip("~"))):
                    out.append(f"{path.relative_to(root)}:{no}: {m.group(0)}")
    return out


def main() -> int:
    sys.path.insert(0, str(ROOT))
    found = dangling()
    for line in found:
        print(line)
    print(f"{len(found)} dangling reference(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
