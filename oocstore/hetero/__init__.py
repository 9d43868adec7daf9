"""Heterogeneous graphs out of core: typed node sets and features, one CSC per relation,
typed plans, one pack and one budget across node types, and R-GCN / relational
GraphSAGE training (``docs/HETERO.md``)."""

from .ingest import HeteroSource, NodeSource, build_hetero_store, read_ogb_dir
from .loader import HeteroBatch, HeteroLoader
from .pack import pack_hetero
from .plan import HeteroPlanReader
from .sampler import sample_hetero_plan
from .schema import HeteroSchema, NodeType, load_schema
from .synthetic import HeteroSpec, hetero_synthetic_source

__all__ = ["HeteroBatch", "HeteroLoader", "HeteroPlanReader", "HeteroSchema", "HeteroSource",
           "HeteroSpec", "NodeSource", "NodeType", "build_hetero_store", "hetero_synthetic_source",
           "load_schema", "pack_hetero", "read_ogb_dir", "sample_hetero_plan"]
