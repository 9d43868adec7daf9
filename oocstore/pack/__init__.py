"""Cache placement and the packer."""

from .format import BASE, CPU, GPU, SSD, PackMeta
from .packer import PackOptions, latest_plan, pack_plan
from .placement import belady_misses, static_placement

__all__ = ["BASE", "CPU", "GPU", "SSD", "PackMeta", "PackOptions", "belady_misses",
           "latest_plan", "pack_plan", "static_placement"]
