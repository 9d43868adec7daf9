"""Gaussian-splatting scenes out of core.

Data side: :mod:`.layout` (the record of one Gaussian), :mod:`.scene` (the block store
of records; :mod:`.blocks` its row format and block geometry, :mod:`.writer` its
log-structured crash-safe writer), :mod:`.ingest` (scenes from ``.ply`` / ``.npz``,
tiling), :mod:`.ply` (3DGS ``.ply``),
:mod:`.cameras` (COLMAP text, ``.npz`` and generated cameras), :mod:`.synthetic` (random scenes for
tests and benchmarks). The view sampler lives in
``samplers/views.py``. Compute side: :mod:`.render`, :mod:`.cull`, :mod:`.adam`, :mod:`.densify`,
:mod:`.stream`, :mod:`.sizing`, :mod:`.train`. The scene commands are in
:mod:`oocstore.cli.scene`.
"""
