"""Byte sizes: parse ``"512MiB"`` / ``"8GiB"`` / ``"1048576"`` and format them back.

Only binary units are accepted. ``"8GB"`` is refused with a hint, because a budget that
is silently 7 % smaller than the user believes is the kind of surprise budgets exist to
prevent.
"""

from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_BY_UPPER = {u.upper(): u for u in _UNITS}  # binary units are unambiguous in any case
_DECIMAL = {"KB", "MB", "GB", "TB", "K", "M", "G", "T"}  # compared upper-cased
_PATTERN = re.compile(r"^\s*(-?)([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: str | int, *, what: str = "size") -> int:
    """Return the number of bytes in ``value`` (an int, ``"1048576"``, ``"1.5GiB"``)."""
    if isinstance(value, bool):
        raise UsageError(f"{what} {value!r} is not a size: give bytes or a binary unit such as 512MiB")
    if isinstance(value, int):
        if value < 0:
            raise UsageError(f"{what} {value} is negative: give 0 or more bytes")
        return value
    match = _PATTERN.match(str(value))
    if not match:
        raise UsageError(
            f"{what} {value!r} is not a size: give a byte count or a binary unit "
            "(e.g. 1048576, 512MiB, 8GiB)"
        )
    sign, number, unit = match.groups()
    if sign:
        raise UsageError(f"{what} {value!r} is negative: give 0 or more bytes")
    if unit.upper() in _DECIMAL:
        binary = unit[0].upper() + "iB"
        raise UsageError(
            f"{what} {value!r} uses a decimal unit: write {number}{binary} "
            "(oocstore accepts binary units only: KiB, MiB, GiB, TiB)"
        )
    if unit.upper() not in _BY_UPPER:
        raise UsageError(f"{what} {value!r} has an unknown unit {unit!r}: use B, KiB, MiB, GiB or TiB")
    unit = _BY_UPPER[unit.upper()]
    nbytes = float(number) * _UNITS[unit]
    if unit in ("", "B") and "." in number:
        raise UsageError(f"{what} {value!r} is a fractional byte count: give a whole number of bytes")
    return int(nbytes)


def format_size(nbytes: int | float) -> str:
    """Format a byte count with the largest binary unit that keeps it >= 1 (``1.5 GiB``)."""
    nbytes = float(nbytes)
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _UNITS[unit]
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} B"
