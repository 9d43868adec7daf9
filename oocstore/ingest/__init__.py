"""Ingest: one module per source format, all funnelled through :func:`build_store`."""

from .common import GraphSource, build_store, parse_split, random_splits

__all__ = ["GraphSource", "build_store", "parse_split", "random_splits"]
