"""tools/crash_harness.py with a handful of kill points per component (ingest, sample,
pack, scene ingest, scene checkpoint): after every SIGKILL the store opens, verifies,
holds exactly the previous or the new commit, and the next writer leaves no orphan."""

import json
import subprocess
import sys

from helpers import REPO


def test_crash_harness_few_points(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "tools" / "crash_harness.py"), "--points", "4",
                        "--nodes", "3000", "--gaussians", "3000", "--seed", "1", "--quiet",
                        "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])["results"]
    assert [c["component"] for c in res] == ["ingest", "sample", "pack", "scene-ingest",
                                             "scene-checkpoint"]
    for c in res:
        assert c["points"] == 4 and c["failures"] == []
        assert sum(c["outcomes"].values()) == 4
        # Killed just before the catalog commit: the previous version; just after: the new
        # one (for the ingests the store is built aside, so the old store stays until the
        # swap).
        assert c["outcomes"].get("before", 0) >= 1, c
        if not c["component"].endswith("ingest"):
            assert c["outcomes"].get("after", 0) >= 1, c
    # killed before its commit, the checkpoint leaves block files for the next writer
    assert res[-1]["leftovers"] >= 1


def test_crash_harness_adversarial_modes(tmp_path):
    """--race (two ingests to one path) and --symlinks (every writer on linked data
    directories) at toy size: no broken store, nothing deleted outside the store."""
    r = subprocess.run([sys.executable, str(REPO / "tools" / "crash_harness.py"), "--race", "2",
                        "--symlinks", "--nodes", "3000", "--quiet", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = {c["component"]: c for c in json.loads(r.stdout.strip().splitlines()[-1])["results"]}
    assert res["racing-ingests"]["failures"] == [] and res["racing-ingests"]["points"] == 2
    links = res["symlinked-dirs"]
    assert links["failures"] == [] and links["deleted_outside"] == 0 and links["points"] == 30
    assert sum(links["outcomes"].values()) == 30
