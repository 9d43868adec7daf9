"""What every command module of the CLI shares: the parser class, the progress bar, size
arguments, the arguments several commands take, and the names of the flags behind the
library's parameters.
"""

from __future__ import annotations

import argparse
import re
import sys
from contextlib import contextmanager
from typing import Iterator

from ..errors import OocError

#: A value that looks like a negative size (``-5MiB``): a value, not an option.
_NEGATIVE_VALUE = re.compile(r"^-[0-9.]+[A-Za-z]*$")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the value and pointing at --help,
    options must be spelled out (``--epoch`` is not taken for ``--epochs``), and a
    negative size reaches its option's check instead of reading as an unknown option."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _parse_optional(self, arg_string):  # argparse's hook: is this token an option?
        if _NEGATIVE_VALUE.match(arg_string):
            return None
        return super()._parse_optional(arg_string)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


@contextmanager
def progress(args, total: int | None, desc: str, unit: str = "row") -> Iterator:
    """A tqdm bar on stderr (silenced by --quiet); yields an ``update(n)`` callable."""
    if getattr(args, "quiet", False):
        yield lambda n: None
        return
    from tqdm import tqdm

    bar = None

    def update(n: int) -> None:
        # Created on the first update, so errors raised while checking the input stay
        # one clean line on stderr.
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B",
                       dynamic_ncols=True, file=sys.stderr)
        bar.update(n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def size(value: str) -> int:
    """argparse ``type`` of a size option (``512MiB``, ``2GiB``, ``0``)."""
    from ..units import parse_size

    try:
        return parse_size(value)
    except OocError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# -- arguments several commands take ---------------------------------------------------

def command(sub, name: str, func, help: str, **kwargs) -> argparse.ArgumentParser:
    """Register subcommand ``name`` on ``sub`` to run ``func(args)``. Its ``--help``
    description is ``func``'s docstring unless ``kwargs`` give one: what the command
    does is written once, where it is done (argparse reflows it)."""
    kwargs.setdefault("description", func.__doc__)
    p = sub.add_parser(name, help=help, **kwargs)
    p.set_defaults(func=func, parser=p)  # parser: the flags behind the library's parameters
    return p


def add_flag(p, flag: str, help: str) -> None:
    """A boolean option (``--quiet``, ``--json``, ``--overwrite``, ...)."""
    p.add_argument(flag, action="store_true", help=help)


def add_store(p, dest: str = "store", help: str | None = None) -> None:
    """The positional STORE (or SCENE) every command but ingest starts with."""
    p.add_argument(dest, metavar=dest.upper(), help=help)


def add_seed(p, help: str | None = None) -> None:
    p.add_argument("--seed", type=int, default=0, help=help)


def add_device(p, help: str | None = None) -> None:
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help=help)


def add_budgets(p, cpu_help: str, gpu_help: str, *, cpu_required: bool = False) -> None:
    """``--cpu-budget`` / ``--gpu-budget``, parsed as sizes."""
    p.add_argument("--cpu-budget", type=size, required=cpu_required, default=None,
                   metavar="SIZE", help=cpu_help)
    p.add_argument("--gpu-budget", type=size, default=None, metavar="SIZE", help=gpu_help)


# -- library parameters and the flags that set them ------------------------------------

def flag_names(parser: argparse.ArgumentParser | None) -> dict[str, tuple[str, bool]]:
    """Parameter name (argparse ``dest``) -> (the long flag that sets it, whether the flag
    takes a value), for every option of ``parser`` (the subcommand that ran)."""
    if parser is None:
        return {}
    flags = {a.dest: (max(a.option_strings, key=len), a.nargs != 0) for a in parser._actions
             if a.option_strings and a.dest not in ("help", "func", "param_aliases")}
    # A library parameter whose name differs from its flag's dest (``window_bytes`` is set
    # by ``--pack-memory``), declared by the command with ``param_aliases``.
    for param, dest in (parser.get_default("param_aliases") or {}).items():
        if dest in flags:
            flags[param] = flags[dest]
    return flags


#: A ``name=value`` in a message: the value is a quoted string or runs to the next
#: space or punctuation.
_VALUE = r"""(?:'[^']*'|"[^"]*"|[^\s,;:()]+)"""
#: What may not touch a parameter name on either side: a name inside a longer word, a
#: path component (``/data/batch_size=3/x``, ``/tmp/cpu_budget``), a quoted string, a
#: file name (``cpu_budget.md``; a sentence's full stop is fine) or the value of
#: another ``name=value`` is not the parameter.
_BEFORE = r"""(?<![\w./\\'"=-])"""
_AFTER = r"""(?![\w/\\'"=-]|\.\w)"""


def with_flags(message: str, flags: dict[str, tuple[str, bool]]) -> str:
    """``message`` as the command line's user reads it: each ``name=value`` naming one of
    the command's options is written the way it was typed.

    The library's errors name a parameter the way a Python caller passes it
    (``frames=0 must be at least 1``, ``pass allow_eval_split=True``, ``lower
    world_size``); a user of the command line typed a flag, so those read ``--frames 0
    must be at least 1``, ``pass --allow-eval-split`` and ``lower --world-size``. A bare
    name is replaced only when it has an underscore (``split`` may be a plain word);
    other ``name=value`` spellings are left as they are. One pass, so a value just
    written (``--name cpu_budget``) is not read again as a name."""
    def spell(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        flag, takes_value = flags[name]
        if value is None:
            return flag if "_" in name else name
        if not takes_value:
            return flag if value == "True" else m.group(0)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        return f"{flag} {value}"

    if not flags:
        return message
    names = "|".join(re.escape(n) for n in sorted(flags, key=len, reverse=True))
    return re.sub(rf"{_BEFORE}({names})(?:=({_VALUE}))?{_AFTER}", spell, message)


def error_line(err: BaseException, args: argparse.Namespace) -> str:
    """The one line a refused command prints for a library error: its message with the
    subcommand's flags written in (:func:`with_flags`)."""
    return f"oocstore: error: {with_flags(str(err), flag_names(getattr(args, 'parser', None)))}"
