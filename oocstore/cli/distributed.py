"""The CLI under ``torchrun``: one helper that joins the launcher's process group for
the length of a command (``pack`` and ``train`` use it)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def launched(device: str) -> Iterator:
    """Yields the launcher's :class:`~oocstore.distributed.LaunchInfo` inside its process
    group when this process is one of several started by ``torchrun`` (the group is left
    on exit if this call joined it), else ``None``."""
    from .. import distributed as dist

    info = dist.launch_info(os.environ)
    if info is None or info.world_size == 1:
        yield None
        return
    owned = dist.init_process_group(info, device)[1]
    try:
        yield info
    except BaseException:
        if owned:
            dist.destroy_process_group(wait_for_peers=False)
        raise
    if owned:
        dist.destroy_process_group()
