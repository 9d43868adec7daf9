"""Run a process inside a cgroup-v1 memory cgroup whose limit covers the process *and* the
page cache it brings in (v1 charges page cache to the cgroup that first reads a page):
the closest this machine comes to a computer whose RAM is smaller than the data.

``MemCgroup(name, limit)`` makes ``/sys/fs/cgroup/memory/<name>``, sets
``memory.limit_in_bytes``; ``preexec`` (for ``subprocess.Popen(preexec_fn=...)``) moves
the child into it before it executes anything; ``stats()`` reads the high-water mark
(``memory.max_usage_in_bytes``), the number of times the limit was hit
(``memory.failcnt``: reclaim, not failure) and the OOM kills (``memory.oom_control``);
``remove()`` deletes it (its remaining page-cache charges move to the parent).

``unavailable()`` says why it cannot be used here (no v1 memory controller, not root),
or returns ``None``. ``python bench/_memcg.py LIMIT CMD...`` runs one command in a
fresh cgroup and prints its stats as JSON on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/memory")


def unavailable(root: Path = ROOT) -> str | None:
    """``None`` when memory cgroups can be made here, else the reason in one line."""
    if not (root / "memory.limit_in_bytes").is_file():
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        return (f"no cgroup-v1 memory controller at {root}"
                + (" (this machine has cgroup v2 only)" if v2.is_file() else ""))
    if os.geteuid() != 0:
        return f"making a memory cgroup under {root} needs root (running as uid {os.geteuid()})"
    if not os.access(root, os.W_OK):
        return f"{root} is not writable (read-only cgroup mount)"
    return None


class MemCgroup:
    def __init__(self, name: str, limit_bytes: int, root: Path = ROOT):
        why = unavailable(root)
        if why:
            raise RuntimeError(why)
        self.path = root / name
        if self.path.exists():  # left over from an interrupted run
            self.remove()
        self.path.mkdir()
        self.limit = int(limit_bytes)
        (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        self.limit = int((self.path / "memory.limit_in_bytes").read_text())  # page-rounded
        try:  # no swap here, but where there is, keep the limit a limit on RAM
            (self.path / "memory.swappiness").write_text("0")
        except OSError:
            pass

    def preexec(self) -> None:
        """Runs in the child between fork and exec: join the cgroup."""
        with open(self.path / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def read(self, name: str) -> int:
        """An integer control file, e.g. ``memory.max_usage_in_bytes``."""
        return int(self._read(name).split()[0])

    def reset(self) -> None:
        """Restart the high-water mark and the limit-hit count (between stages)."""
        for name in ("memory.max_usage_in_bytes", "memory.failcnt"):
            (self.path / name).write_text("0")

    def drop_cache(self) -> None:
        """Reclaim what the cgroup still holds (the last stage's page cache), so the next
        stage starts from what it needs itself."""
        try:
            (self.path / "memory.force_empty").write_text("0")
        except OSError:
            pass

    def stats(self) -> dict:
        oom = dict(line.split() for line in self._read("memory.oom_control").splitlines())
        stat = dict(line.split() for line in self._read("memory.stat").splitlines())
        return {"limit_bytes": self.limit,
                "max_usage_bytes": int(self._read("memory.max_usage_in_bytes")),
                "failcnt": int(self._read("memory.failcnt")),
                "oom_kills": int(oom.get("oom_kill", 0)),
                "under_oom": int(oom.get("under_oom", 0)),
                "cache_bytes_at_end": int(stat.get("total_cache", stat.get("cache", 0))),
                "rss_bytes_at_end": int(stat.get("total_rss", stat.get("rss", 0)))}

    def remove(self) -> None:
        for _ in range(50):
            try:
                procs = (self.path / "cgroup.procs").read_text().split()
            except FileNotFoundError:
                return
            if not procs:
                break
            time.sleep(0.1)  # a child still exiting
        self.drop_cache()
        self.path.rmdir()


def run_limited(cmd: list[str], limit_bytes: int, name: str, *, timeout: float | None = None
                ) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``cmd`` in a fresh cgroup of ``limit_bytes``; its result and the cgroup's stats
    (``killed_by_signal`` set when the child died of a signal, e.g. the OOM killer's 9)."""
    cg = MemCgroup(name, limit_bytes)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=cg.preexec)
        st = cg.stats()
    finally:
        cg.remove()
    st["killed_by_signal"] = -r.returncode if r.returncode < 0 else None
    st["oom_killed"] = bool(st["oom_kills"]) or r.returncode == -9
    return r, st


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python bench/_memcg.py LIMIT_BYTES CMD [ARGS...]", file=sys.stderr)
        return 2
    why = unavailable()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    r, st = run_limited(argv[1:], int(float(argv[0])), f"oocstore-memcg-{os.getpid()}")
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    print(json.dumps(st), file=sys.stderr)
    return r.returncode if r.returncode >= 0 else 128 - r.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
