import json
import subprocess
import sys

from helpers import REPO


def _dump(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "dump_catalog.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_dump_catalog(small_store):
    r = _dump(str(small_store))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["meta"]["format_version"] == 1 and d["meta"]["version"] == 1
    assert d["array/features"]["file"] == "arrays/features.1.bin"
    assert d["graph"]["num_nodes"] == 2000 and "sums/features" in d
    r = _dump(str(small_store), "--prefix", "sums/", "--compact")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 7 and all(next(iter(x)).startswith("sums/") for x in lines)


def test_dump_catalog_not_a_store(tmp_path):
    r = _dump(str(tmp_path))
    assert r.returncode == 2 and "not an oocstore store" in r.stderr
