"""Fuzz ``oocstore train --resume`` with damaged and rewritten checkpoints.

Builds a small store, trains one epoch in memory with ``--checkpoint``, then for each
case damages the checkpoint one of three ways — flips 1-4 random bits, truncates it at
a random length, or replaces one entry anywhere in its tree (model, optimizer, loader,
random states, history, config) with a hostile value (None, 2**70, NaN, a string, a
container, a tensor of another shape) — and resumes from it the way ``train`` checks a
checkpoint before its first write. Each case must either load or be refused with
``FormatError`` naming the file; any other exception is a finding. With ``--train N``
the first N rewritten checkpoints that load are also resumed for a real epoch
(``oocstore train --resume``), which must exit 0 or 2.

    python tools/fuzz_checkpoints.py --cases 600 --seed 1 --train 30
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import io
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oocstore.cli import main as cli  # noqa: E402
from oocstore.errors import FormatError  # noqa: E402
from oocstore.ingest import build_store  # noqa: E402
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source  # noqa: E402
from oocstore.train.run import TrainConfig, _check_resume  # noqa: E402

#: What a rewritten entry becomes.
HOSTILE = [None, 1, -1, 2**70, float("nan"), "x", [], {}, [1, "a"], {"a": 1},
           torch.zeros(3), torch.zeros(2, 2, dtype=torch.uint8), torch.tensor(1.5)]

KINDS = ("flip", "truncate", "rewrite")


def _paths(obj: Any, prefix: tuple = ()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def make_checkpoint(root: Path) -> tuple[str, Path]:
    """A store with a training plan and a one-epoch checkpoint of it: (store, ck dir)."""
    store = root / "s"
    build_store(store, synthetic_source(SyntheticSpec(nodes=3000, feat_dim=16, avg_degree=8,
                                                      seed=0)), seed=0)
    assert cli(["sample", str(store), "--fanouts", "5,5", "--batch-size", "256", "--epochs",
                "2", "--quiet"]) == 0
    ck = root / "ck"
    assert cli(["train", str(store), "--epochs", "1", "--hidden", "16", "--in-memory",
                "--checkpoint", str(ck), "--quiet"]) == 0
    return str(store), ck


def fuzz_checkpoints(store: str, ck: Path, *, cases: int, seed: int = 0,
                     train: int = 0) -> dict[str, Any]:
    """Run ``cases`` damaged checkpoints (kinds in turn); returns the counts per kind and
    outcome, the findings (unexpected exceptions) and the exit codes of resumed runs."""
    path = ck / "checkpoint.pt"
    raw = path.read_bytes()
    state = torch.load(path, weights_only=True)
    every = [p for p in _paths(state) if p]
    cfg = TrainConfig(epochs=2, hidden=16, in_memory=True, checkpoint=str(ck), resume=True)
    rng = random.Random(seed)
    counts: collections.Counter = collections.Counter()
    findings: list[str] = []
    exits: collections.Counter = collections.Counter()
    try:
        for case in range(cases):
            kind = KINDS[case % 3]
            what = ""
            if kind == "flip":
                data = bytearray(raw)
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                path.write_bytes(bytes(data))
            elif kind == "truncate":
                path.write_bytes(raw[:rng.randrange(len(raw))])
            else:
                mutated = copy.deepcopy(state)
                where = rng.choice(every)
                parent = mutated
                for k in where[:-1]:
                    parent = parent[k]
                parent[where[-1]] = value = rng.choice(HOSTILE)
                what = f"{'/'.join(map(str, where))} = {value!r:.40}"
                torch.save(mutated, path)
            try:
                _check_resume(store, None, cfg, 0, 1)
            except FormatError as err:
                outcome = "refused" if str(path) in str(err) else "refused without the file name"
                if outcome != "refused":
                    findings.append(f"{kind} {what}: {err}")
                counts[f"{kind} {outcome}"] += 1
                continue
            except Exception as err:  # noqa: BLE001 - a finding
                findings.append(f"{kind} {what}: {type(err).__name__}: {err}")
                counts[f"{kind} other exception"] += 1
                continue
            counts[f"{kind} loaded"] += 1
            if kind == "rewrite" and sum(exits.values()) < train:
                try:
                    with contextlib.redirect_stdout(io.StringIO()):  # stdout: the JSON only
                        code = cli(["train", store, "--epochs", "2", "--hidden", "16",
                                    "--in-memory", "--checkpoint", str(ck), "--resume",
                                    "--quiet"])
                except Exception as err:  # noqa: BLE001 - a finding
                    findings.append(f"resumed {what}: {type(err).__name__}: {err}")
                    code = type(err).__name__
                exits[str(code)] += 1
    finally:
        path.write_bytes(raw)
    return {"cases": cases, "seed": seed, "counts": dict(sorted(counts.items())),
            "findings": findings, "resumed_exit_codes": dict(exits)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=0, metavar="N",
                    help="also resume training from the first N rewritten checkpoints that load")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            store, ck = make_checkpoint(Path(tmp))
        res = fuzz_checkpoints(store, ck, cases=args.cases, seed=args.seed, train=args.train)
    print(json.dumps(res, indent=1))
    return 1 if res["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
