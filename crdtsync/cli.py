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
    stories.add_parser("sync", help="a relay and two users through every sync scenario")

    serve = commands.add_parser("serve", help="run the relay server")
    serve.add_argument("--config", required=True, help="the app's TOML configuration")
    serve.add_argument("--db", help="database (overrides [server] database)")
    serve.add_argument("--host", help="interface to listen on (overrides [server] host)")
    serve.add_argument("--port", type=int, help="port (overrides [server] port; 0: any free)")

    token = commands.add_parser("token", help="print a signed token for a user")
    token.add_argument("--config", required=True, help="the app's TOML configuration")
    token.add_argument("--user", required=True, help="the user the token names")
    token.add_argument("--role", action="append", default=[], help="a role (repeatable)")
    token.add_argument("--ttl", type=float, help="lifetime in seconds (default: no expiry)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from crdtsync_server.policy import ConfigError
    from crdtsync_server.storage import StorageError

    try:
        if args.command == "demo" and args.story == "offline":
            from .demo import run_offline

            run_offline(sys.stdout, store=args.store)
        elif args.command == "demo" and args.story == "sync":
            import asyncio
            import logging

            from .demo import run_sync

            logging.basicConfig(level=logging.ERROR)
            asyncio.run(run_sync(sys.stdout))
        elif args.command == "serve":
            return _serve(args)
        elif args.command == "token":
            from crdtsync_server.auth import TokenAuthority
            from crdtsync_server.config import RelayConfig

            config = RelayConfig.from_toml(args.config)
            print(TokenAuthority(config.secret).issue(args.user, args.role, args.ttl))
    except (CrdtsyncError, ConfigError, StorageError) as exc:
        print(f"crdtsync: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from crdtsync_server.app import RelayServer
    from crdtsync_server.config import RelayConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = RelayConfig.from_toml(args.config, database=args.db, host=args.host, port=args.port)
    try:
        asyncio.run(RelayServer(config).serve_forever())
    except OSError as exc:
        print(
            f"crdtsync: error: cannot listen on {config.host}:{config.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
