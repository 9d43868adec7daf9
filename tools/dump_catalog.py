"""Print every key and value of a store's catalog as JSON (what docs/FORMAT.md shows).

    python tools/dump_catalog.py STORE            # one JSON object, keys sorted
    python tools/dump_catalog.py STORE --prefix array/
"""

from __future__ import annotations

import argparse
import json
import sys

from oocstore.errors import OocError
from oocstore.store.catalog import Catalog


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", metavar="STORE")
    ap.add_argument("--prefix", default="", help="only keys that start with this")
    ap.add_argument("--compact", action="store_true", help="one line per key instead of indented")
    args = ap.parse_args()
    try:
        cat = Catalog(args.store, readonly=True)
    except OocError as err:
        print(f"dump_catalog: error: {err}", file=sys.stderr)
        return 2
    try:
        entries = dict(cat.items(args.prefix))
    finally:
        cat.close()
    if args.compact:
        for key, value in entries.items():
            print(json.dumps({key: value}, sort_keys=True))
    else:
        print(json.dumps(entries, sort_keys=True, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
