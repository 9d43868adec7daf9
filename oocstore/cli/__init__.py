"""The ``oocstore`` command line: a thin layer over the library.

One module per command group registers its subcommands on the parser
(:mod:`.ingest`, :mod:`.store`, :mod:`.sample`, :mod:`.pack`, :mod:`.train`, and
:mod:`.scene` for the Gaussian-splatting commands); :mod:`.common` holds what they share.
Every user error is an :class:`~oocstore.errors.OocError`; it is printed as one line
(``oocstore: error: ...``, with the flag behind any library parameter it names) and the
command exits with status 2, without a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

from ..errors import OocError
from . import hetero, infer, ingest, pack, sample, scene, store, train
from .common import Parser, error_line

log = logging.getLogger("oocstore")

#: The sources of ``oocstore ingest``, in the order ``--help`` lists them.
INGEST_SOURCES = (ingest.add_synthetic, ingest.add_npz, ingest.add_planetoid,
                  ingest.add_edgelist, ingest.add_arrays, hetero.add_hetero_ogb,
                  hetero.add_hetero_synthetic, scene.add_ingest_scene)

#: The other commands, in the order ``--help`` lists them (after ``ingest``).
COMMANDS = (scene.add_export_scene, store.add_inspect, store.add_verify, sample.add_sample,
            pack.add_pack, sample.add_plan_budget, train.add_train, infer.add_infer, store.add_gc,
            store.add_rm,
            scene.add_gs_train, scene.add_gs_render, scene.add_gs_lod)


def build_parser() -> Parser:
    from .. import __version__

    parser = Parser(prog="oocstore",
                    description="Out-of-core training data and feature store: ingest datasets "
                                "into a store, sample access plans, pack them, train from disk.")
    parser.add_argument("--version", action="version", version=f"oocstore {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is chosen (INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    kinds = ingest.add_ingest(sub)
    for add in INGEST_SOURCES:
        add(kinds)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="oocstore: %(message)s")
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe is reported here, not at interpreter exit
        return rc
    except BrokenPipeError:
        # Whoever read the output stopped early (`oocstore inspect STORE | head`): not an
        # error to report. Later flushes go nowhere; 141 is what a shell shows for SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OocError as err:
        print(error_line(err, args), file=sys.stderr)
        return 2
    except OSError as err:  # permissions, a file vanishing under us: one line, no traceback
        print(f"oocstore: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oocstore: interrupted; the store was left as it was before this command",
              file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
