"""Cache placement and the packer.

The names below load on first use (``from oocstore.pack import pack_plan``): the packer
pulls in the tiers and torch, which a command line that only builds its parser (or reads
the policy registry, :mod:`.policies`) should not pay for.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BASE": ".format", "CPU": ".format", "GPU": ".format", "SSD": ".format",
    "PackMeta": ".format", "PackOptions": ".options", "latest_plan": ".packer",
    "pack_plan": ".packer", "belady_misses": ".placement", "static_placement": ".placement",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
