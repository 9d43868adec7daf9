"""One rank of the data-parallel test (launched by ``torchrun`` from ``test_ddp.py``).

Usage: ``torchrun --standalone --nproc-per-node 2 ddp_worker.py STORE OUT``. Every rank,
in the launcher's gloo process group:

1. packs its own shard through ``oocstore pack`` (ranks take turns on the store);
2. trains GraphSAGE under DDP for two epochs through its own ``NodeLoader``, recording
   the seeds of every batch and, after every optimizer step, whether its parameters
   equal rank 0's (exactly);
3. runs ``oocstore train --json`` (the CLI under torchrun) with a checkpoint, then
   resumes it for one more epoch, capturing what it prints.

Each rank writes ``OUT/rank<r>.json``; the test checks them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

import torch
import torch.distributed as tdist


class CheckedAdam(torch.optim.Adam):
    """Adam that, after each step, compares this rank's parameters with rank 0's."""

    def __init__(self, params, lr, log):
        super().__init__(params, lr=lr)
        self.log = log

    def step(self, closure=None):
        out = super().step(closure)
        flat = torch.cat([p.detach().reshape(-1) for g in self.param_groups for p in g["params"]])
        ref = flat.clone()
        tdist.broadcast(ref, src=0)
        self.log.append(float((flat - ref).abs().max()))
        return out


def main(store_path: str, out: str) -> None:
    from oocstore.cli import main as cli
    from oocstore.loader import NodeLoader
    from oocstore.store import Store
    from oocstore.train.loop import ddp_model, train_epoch
    from oocstore.train.model import GraphSAGE

    tdist.init_process_group("gloo")
    rank = tdist.get_rank()
    result: dict = {"rank": rank, "world_size": tdist.get_world_size()}

    assert cli(["pack", store_path, "--cpu-cache", "16KiB", "--max-disk-blowup", "32",
                "--quiet"]) == 0
    tdist.barrier()

    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    with Store(store_path) as store:
        loader = NodeLoader(store, "train")  # rank and world size from torch.distributed
        model = GraphSAGE(16, 16, 8, 2, dropout=0.5)
        ddp = ddp_model(model)
        diffs: list[float] = []
        opt = CheckedAdam(model.parameters(), 0.01, diffs)
        seeds: list[list[list[int]]] = []
        losses = []
        with loader:
            result["plan"] = loader.plan_name
            for epoch in range(2):
                loader.set_epoch(epoch)
                seen: list[list[int]] = []

                def triples():
                    for b in loader:
                        seen.append([int(s) for s in b.seeds])
                        yield b.sample, b.x, b.y

                losses.append(train_epoch(ddp, opt, triples(), "cpu")["loss"])
                seeds.append(seen)
        result.update(seeds=seeds, param_diffs=diffs, losses=losses)
    tdist.barrier()

    argv = ["train", store_path, "--hidden", "32", "--lr", "0.01", "--cpu-budget", "8MiB",
            "--checkpoint", os.path.join(out, "ck"), "--json", "--quiet"]
    for key, extra in (("train", ["--epochs", "3"]), ("resume", ["--epochs", "4", "--resume"])):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = cli(argv + extra)
        result.update({f"{key}_exit": code, f"{key}_stdout": buf.getvalue()})
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    from oocstore.distributed import destroy_process_group
    destroy_process_group()  # meets the peer at a barrier first (gloo aborts otherwise)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
