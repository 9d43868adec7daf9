"""Gaussian-splatting scenes out of core.

Data side: :mod:`.layout` (the record of one Gaussian), :mod:`.scene` (the block store
of records, with log-structured crash-safe write-back), :mod:`.ply` (3DGS ``.ply``),
:mod:`.cameras` (COLMAP text, ``.npz`` and generated cameras), :mod:`.cli` (``oocstore
ingest scene`` and ``oocstore export-scene``). The view sampler lives in
``samplers/views.py``. Compute side: :mod:`.render`, :mod:`.adam`, :mod:`.densify`,
:mod:`.stream`, :mod:`.train`.
"""
