"""The ``crdtsync`` command line.

Errors a user can cause (a bad config path, an invalid schema…) are printed as one
clear line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .exceptions import CrdtsyncError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crdtsync", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a scripted demo")
    stories = demo.add_subparsers(dest="story", required=True)
    offline = stories.add_parser("offline", help="create, edit and delete records offline")
    offline.add_argument("--store", help="SQLite file for the local store (default: temporary)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo" and args.story == "offline":
            from .demo import run_offline

            run_offline(sys.stdout, store=args.store)
    except CrdtsyncError as exc:
        print(f"crdtsync: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
