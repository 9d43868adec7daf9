"""The README's command sequences run as written, in order, on a fresh directory.

Every ```bash block of README.md (and the ```python blocks of the sections that run) is
extracted at collection time and run in README order, one test per command, in one
shared working directory, at toy size. Commands are not copied here: the README is the
only source, so a README change that breaks a sequence breaks this test. What is
changed, and why, is all in the tables below:

* :data:`TOY` maps an option's value to a toy one (``--nodes 1000000`` -> 2000), and
  :data:`TOY_DATA` a large shared dataset to a small one of the same format;
* :data:`SKIP_SECTIONS` names README sections (``## ...``) not run here, with the reason;
* :func:`skip_reason` skips a command that needs what this machine may lack (CUDA, DGL,
  several processes, ``../shared/data``), or is too costly for a test, with the reason;
* :data:`FIXTURE_FILES` writes the input files a README line assumes the reader has;
* ``[--flag]`` (optional parts) run with the flag; ``# ...`` comments are dropped.

``oocstore`` commands run in this process (``oocstore.cli.main``), which keeps the whole
sequence within about a minute on two cores; each must exit with status 0.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO

README = REPO / "README.md"
#: Real third-party data beside the checkout; absent in a fresh clone.
REAL_DATA = REPO.parent / "shared" / "data"

#: Toy values: option -> function of the README's value (a string) to the value run here.
TOY = {
    "--nodes": lambda v: "2000",                       # 10^6 nodes -> 2,000
    "--feat-dim": lambda v: str(min(int(v), 16)),      # 128 -> 16 features
    "--epochs": lambda v: str(math.ceil(int(v) / 5)),  # 4 -> 1, 10 -> 2, 20 -> 4 (ratios kept)
    "--batch-size": lambda v: str(max(1, int(v) // 8)),  # 1024 -> 128, 4096 -> 512
}

#: README sections (the ``## `` heading; ``###`` subsections belong to it) not run here.
SKIP_SECTIONS = {
    "Gaussian-splatting scenes": "scene ingest and gs-train from photographs take minutes at "
                                 "any useful size; tests/gs runs the code behind these commands",
}

#: Sources under ../shared/data too large for a test, and a smaller one of the same format
#: run instead (coauthor_cs: 18,333 x 6,805 dense features, 0.5 GB once ingested).
TOY_DATA = {"graphdata/coauthor_cs.npz": "graphdata/cora_ml.npz"}


def _fixture_arrays(cwd: Path) -> None:
    import zarr

    rng = np.random.default_rng(0)
    n = 300
    np.save(cwd / "ei.npy", rng.integers(0, n, size=(2, 4 * n)).astype(np.int64))
    np.save(cwd / "y.npy", rng.integers(0, 4, size=n).astype(np.int64))
    z = zarr.create_array(store=str(cwd / "feats.zarr"), shape=(n, 8), chunks=(100, 8),
                          dtype="float32")
    z[:] = rng.standard_normal((n, 8)).astype(np.float32)


#: Input files a README line assumes the reader has: name -> writer of a toy one.
FIXTURE_FILES = {"ei.npy": _fixture_arrays, "feats.zarr": _fixture_arrays,
                 "y.npy": _fixture_arrays}


@dataclass(frozen=True)
class Command:
    section: str
    index: int
    kind: str  # "bash" or "python"
    text: str  # the command line (comment dropped) or the python block

    @property
    def id(self) -> str:
        head = self.text.splitlines()[0] if self.kind == "python" else self.text
        return f"{self.index:02d}-{head[:60]}"


def extract(markdown: str) -> list[Command]:
    """The README's commands in order: one per line of a ```bash block (comments and
    blank lines dropped), one per ```python block."""
    out: list[Command] = []
    section = ""
    lang = None
    block: list[str] = []
    for line in markdown.splitlines():
        if lang is None:
            if line.startswith("## "):
                section = line[3:].strip()
            m = re.match(r"^```(\w+)\s*$", line)
            if m:
                lang, block = m.group(1), []
            continue
        if line.startswith("```"):
            if lang == "bash":
                for cmd in _join_continued(block):
                    words = shlex.split(cmd, comments=True)
                    if words:
                        out.append(Command(section, len(out), "bash", shlex.join(words)))
            elif lang == "python":
                out.append(Command(section, len(out), "python", "\n".join(block)))
            lang = None
            continue
        block.append(line)
    return out


def _join_continued(lines: list[str]) -> list[str]:
    """Shell lines with ``\\`` continuations joined into one command each."""
    out: list[str] = []
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            out.append(pending + line)
            pending = ""
    return out + ([pending] if pending else [])


def toy_argv(words: list[str]) -> list[str]:
    """``words`` with optional ``[--flag]`` parts kept, :data:`TOY` values applied and
    ``../shared/data`` made absolute."""
    argv = [w[1:-1] if w.startswith("[") and w.endswith("]") else w for w in words]
    for i, w in enumerate(argv[:-1]):
        if w in TOY:
            argv[i + 1] = TOY[w](argv[i + 1])
    return [str(REAL_DATA / _toy_data(w[len("../shared/data/"):]))
            if w.startswith("../shared/data/") else w for w in argv]


def _toy_data(rel: str) -> str:
    return TOY_DATA.get(rel, rel)


def skip_reason(cmd: Command) -> str | None:
    if cmd.section in SKIP_SECTIONS:
        return SKIP_SECTIONS[cmd.section]
    if cmd.kind == "python":
        return None
    words = shlex.split(cmd.text)
    prog = words[0]
    if prog == "make":
        return "builds a virtual environment and runs the whole suite (the CI runs make test)"
    if prog == "torchrun":
        n = words[words.index("--nproc-per-node") + 1] if "--nproc-per-node" in words else "1"
        if n != "1":
            return (f"torchrun with {n} processes: tests/distributed/test_ddp.py runs DDP "
                    "training on plan shards")
    if "--device" in words and words[words.index("--device") + 1] == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "needs a CUDA device"
    if "--backend" in words and words[words.index("--backend") + 1] == "dgl":
        return "needs the DGL environment (make test-dgl)"
    for w in words:
        if w.startswith("../shared/data/"):
            rel = _toy_data(w[len("../shared/data/"):])
            if not (REAL_DATA / rel).exists():
                return (f"{REAL_DATA / rel} is not present (the shared data folder beside "
                        "the checkout)")
    return None


COMMANDS = extract(README.read_text())


def test_the_readme_has_command_sequences():
    """The extractor finds the README's sequences (a README reorganised past it would
    otherwise run nothing and pass)."""
    sections = {c.section for c in COMMANDS}
    assert {"Using the command line", "Reliability"} <= sections
    runnable = [c for c in COMMANDS if c.kind == "bash" and skip_reason(c) is None]
    assert any(c.text.startswith("oocstore ingest synthetic OUT") for c in runnable)
    assert sum(c.text.startswith("oocstore train") for c in runnable) >= 2


def test_extract_and_toy_argv():
    md = textwrap.dedent("""\
        ## A
        ```bash
        oocstore sample OUT --epochs 10 --batch-size 1024  # a comment
        oocstore inspect OUT [--json]
        oocstore train OUT \\
            --epochs 5
        ```
        ```python
        x = 1
        ```
        """)
    cmds = extract(md)
    assert [(c.section, c.kind) for c in cmds] == [("A", "bash")] * 3 + [("A", "python")]
    assert toy_argv(shlex.split(cmds[0].text)) == ["oocstore", "sample", "OUT", "--epochs", "2",
                                                   "--batch-size", "128"]
    assert toy_argv(shlex.split(cmds[1].text)) == ["oocstore", "inspect", "OUT", "--json"]
    assert toy_argv(shlex.split(cmds[2].text)) == ["oocstore", "train", "OUT", "--epochs", "1"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def failed():
    return []


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.id)
def test_readme_command(cmd: Command, workdir: Path, failed: list, monkeypatch, capsys):
    reason = skip_reason(cmd)
    if reason:
        pytest.skip(reason)
    if failed:
        pytest.skip(f"an earlier README command failed: {failed[0]}")
    monkeypatch.chdir(workdir)
    try:
        if cmd.kind == "python":
            exec(compile(cmd.text, f"README.md ({cmd.section})", "exec"), {"__name__": "readme"})
            return
        argv = toy_argv(shlex.split(cmd.text))
        for w in argv:
            if w in FIXTURE_FILES and not (workdir / w).exists():
                FIXTURE_FILES[w](workdir)
        assert argv[0] == "oocstore", f"no rule to run {argv[0]!r} (README: {cmd.text})"
        from oocstore.cli import main

        monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                            if k not in ("RANK", "WORLD_SIZE")})
        rc = main(argv[1:])
        out = capsys.readouterr()
        assert rc == 0, f"`{shlex.join(argv)}` exited {rc}: {out.err.strip()[-500:]}"
    except BaseException:
        failed.append(cmd.text.splitlines()[0])
        raise
