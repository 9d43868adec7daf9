"""Names the scene trainer reads from its command line's definition.

The scene commands themselves are in :mod:`oocstore.cli.scene`; the names live in
:mod:`oocstore.gs.recipe` (no CLI code, so the trainer and the CLI do not import each
other) and are re-exported here for callers of the old location.
"""

from .recipe import MODE_NAMES, RECIPE_FLAGS

__all__ = ["MODE_NAMES", "RECIPE_FLAGS"]
