"""The ``crdtsync`` command line.

Errors a user can cause (a bad config path, an invalid schema…) are printed as one
clear line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from crdtsync import __version__
from crdtsync.core.exceptions import CrdtsyncError

if TYPE_CHECKING:
    from crdtsync_server.auth import TokenAuthority


CONFIG_HELP = "the app's TOML configuration (default: the example CRM app)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crdtsync",
        description="Offline-first record replication: run the relay, issue tokens, "
        "administer records, try the demos.",
    )
    parser.add_argument("--version", action="version", version=f"crdtsync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="a relay and two users' apps to try in a browser, or a scripted story",
        description="With no story: start a relay and the reference app for alice and bob, "
        "and print both addresses.",
    )
    stories = demo.add_subparsers(dest="story", metavar="STORY")
    offline = stories.add_parser("offline", help="create, edit and delete records offline")
    offline.add_argument("--store", help="SQLite file for the local store (default: temporary)")
    stories.add_parser("sync", help="a relay and two users through every sync scenario")
    cluster = stories.add_parser(
        "cluster",
        help="three relays on PostgreSQL, two users on different ones",
        description="Creates a scratch database on the PostgreSQL server --db names (a "
        "role that may create databases is needed), runs three relays on it and two users "
        "on different relays, then drops it.",
    )
    cluster.add_argument(
        "--db", required=True, help="a PostgreSQL server, as a postgresql:// URL to connect to"
    )

    app = commands.add_parser("app", help="run the reference web app for one user")
    app.add_argument("--user", required=True, help="whose app it is")
    app.add_argument("--config", help=CONFIG_HELP)
    app.add_argument("--url", help="the relay (default: ws:// or wss:// [server] host:port)")
    app.add_argument(
        "--token",
        help="the user's token (visible to other local users in the process list: prefer "
        "--token-file or CRDTSYNC_TOKEN; default: signed with the relay's secret)",
    )
    app.add_argument("--token-file", help="read the user's token from this file")
    app.add_argument("--db", help="the relay's database, beside which its secret is kept")
    app.add_argument("--store", help="local SQLite store (default: crdtsync-app-USER.sqlite3)")
    app.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free)")

    serve = commands.add_parser("serve", help="run the relay server")
    serve.add_argument("--config", help=CONFIG_HELP)
    serve.add_argument("--db", help="database (overrides [server] database)")
    serve.add_argument("--host", help="interface to listen on (overrides [server] host)")
    serve.add_argument("--port", type=int, help="port (overrides [server] port; 0: any free)")

    admin = commands.add_parser("admin", help="administer records on a running relay")
    admin.add_argument("--config", help=CONFIG_HELP)
    admin.add_argument("--url", help="the relay (default: ws:// or wss:// [server] host:port)")
    admin.add_argument("--db", help="the relay's database, beside which its secret is kept")
    admin.add_argument("--as", dest="as_user", default="admin", help="the administrator's name")
    admin.add_argument("--private-key", metavar="PEM", help="sign with this key (RS256/ES256)")
    admin.add_argument(
        "--algorithm", choices=["HS256", "RS256", "ES256"], help="with --private-key: its kind"
    )
    actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION")
    share = actions.add_parser("share", help="share one record with a user")
    share.add_argument("record", help="the record's id")
    share.add_argument("user", help="who gets access")
    share.add_argument(
        "--access", choices=["read", "edit"], default="read", help="read (default) or edit"
    )
    for name, text, who in (
        ("unshare", "remove a user's share", "whose share goes"),
        ("set-owner", "change the owner", "the new owner"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("record", help="the record's id")
        action.add_argument("user", help=who)
    actions.add_parser("delete", help="delete a record").add_argument(
        "record", help="the record's id"
    )
    actions.add_parser("access", help="print who may read / edit a record").add_argument(
        "record", help="the record's id"
    )

    compact = commands.add_parser(
        "compact", help="drop the CRDT updates of old changes from the relay's log"
    )
    compact.add_argument("--config", help=CONFIG_HELP)
    compact.add_argument("--db", help="database (overrides [server] database)")
    horizon = compact.add_mutually_exclusive_group(required=True)
    horizon.add_argument("--older-than", metavar="AGE", help="changes older than this: 30d, 12h")
    horizon.add_argument("--through", type=int, metavar="SEQ", help="changes up to this version")

    backup = commands.add_parser(
        "backup", help="copy the relay's database consistently, while it runs"
    )
    backup.add_argument("output", help="the new file to write (never overwritten)")
    backup.add_argument("--config", help=CONFIG_HELP)
    backup.add_argument("--db", help="database (overrides [server] database)")

    restore = commands.add_parser(
        "restore", help="put a backup back as the database of a stopped relay"
    )
    restore.add_argument("backup", help="the backup file (its .secret beside it is restored too)")
    restore.add_argument("--config", help=CONFIG_HELP)
    restore.add_argument("--db", help="database to create (overrides [server] database)")

    token = commands.add_parser("token", help="print a signed token for a user")
    token.add_argument("--config", help=CONFIG_HELP)
    token.add_argument(
        "--db",
        help="the relay's database (overrides [server] database): without a configured "
        "secret, tokens are signed with the one the relay keeps beside it",
    )
    token.add_argument("--user", required=True, help="the user the token names")
    token.add_argument("--role", action="append", default=[], help="a role (repeatable)")
    token.add_argument(
        "--ttl", help="lifetime: 8h, 30m, 45s, 2d, 1h30m or seconds (default: no expiry)"
    )
    token.add_argument("--admin", action="store_true", help="an administrator token")
    token.add_argument(
        "--private-key",
        metavar="PEM",
        help="sign with this private key (needs --algorithm) instead of the relay's secret",
    )
    token.add_argument(
        "--algorithm",
        choices=["HS256", "RS256", "ES256"],
        help="HS256 (the default: the relay's secret) or, with --private-key, RS256 / ES256",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "config", "") is None:  # every command that takes one: the same default
        from .demo import example_config

        args.config = str(example_config())
    from crdtsync_server.errors import ConfigError, StorageError

    try:
        if args.command == "demo" and args.story == "offline":
            from .demo import run_offline

            run_offline(sys.stdout, store=args.store)
        elif args.command == "demo" and args.story == "cluster":
            import asyncio
            import logging

            from .demo import run_cluster

            logging.basicConfig(level=logging.ERROR)
            asyncio.run(run_cluster(sys.stdout, args.db))
        elif args.command == "demo" and args.story == "sync":
            import asyncio
            import logging

            from .demo import run_sync

            logging.basicConfig(level=logging.ERROR)
            asyncio.run(run_sync(sys.stdout))
        elif args.command == "demo":
            return _run_webapp(_demo_apps)
        elif args.command == "app":
            return _run_webapp(lambda: _app(args))
        elif args.command == "serve":
            return _serve(args)
        elif args.command == "token":
            return _token(args)
        elif args.command == "admin":
            return _admin(args)
        elif args.command == "compact":
            return _compact(args)
        elif args.command == "backup":
            return _backup(args)
        elif args.command == "restore":
            return _restore(args)
    except (CrdtsyncError, ConfigError, StorageError) as exc:
        print(f"crdtsync: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _fail(message: str) -> int:
    print(f"crdtsync: error: {message}", file=sys.stderr)
    return 2


def _authority(args: argparse.Namespace) -> TokenAuthority:
    """The authority that signs tokens: the relay's secret, or --private-key."""
    from crdtsync_server.auth import TokenAuthority
    from crdtsync_server.config import RelayConfig
    from crdtsync_server.errors import ConfigError

    if args.private_key is None:
        config = RelayConfig.from_toml(args.config, database=args.db)
        if config.token_algorithm != "HS256":
            raise ConfigError(
                f"this relay verifies {config.token_algorithm} tokens: sign with "
                f"--private-key PEM --algorithm {config.token_algorithm}"
            )
        return config.token_authority()
    return TokenAuthority.from_key_files(args.algorithm, private_key_path=args.private_key)


def _keys_mismatch(args: argparse.Namespace) -> bool:
    return (args.private_key is None) != (args.algorithm in (None, "HS256"))


_KEYS_MESSAGE = (
    "--private-key and --algorithm RS256|ES256 go together "
    "(without them the token is signed HS256 with the relay's secret)"
)


def _token(args: argparse.Namespace) -> int:
    from crdtsync_server.auth import parse_duration

    try:
        ttl = None if args.ttl is None else parse_duration(args.ttl)
    except ValueError as exc:
        return _fail(f"--ttl: {exc}")
    if _keys_mismatch(args):
        return _fail(_KEYS_MESSAGE)
    try:
        print(_authority(args).issue(args.user, args.role, ttl, admin=args.admin))
    except ValueError as exc:
        return _fail(str(exc))
    return 0


def _admin(args: argparse.Namespace) -> int:
    """Run one admin action against the running relay and print its result."""
    import asyncio
    import json

    from crdtsync_server.admin_client import AdminClient
    from crdtsync_server.config import RelayConfig
    from crdtsync_server.errors import AdminError
    from websockets.exceptions import InvalidHandshake, InvalidURI

    if _keys_mismatch(args):
        return _fail(_KEYS_MESSAGE)
    config = RelayConfig.from_toml(args.config, database=args.db)
    url = args.url or config.url
    token = _authority(args).issue(args.as_user, admin=True, ttl=300)

    async def run() -> object:
        async with AdminClient(url, token) as admin:
            if args.action == "share":
                return (await admin.share(args.record, args.user, args.access)).details
            if args.action == "unshare":
                return (await admin.unshare(args.record, args.user)).details
            if args.action == "set-owner":
                return (await admin.set_owner(args.record, args.user)).details
            if args.action == "delete":
                return (await admin.delete(args.record)).details
            return await admin.access(args.record)

    if not url.startswith(("ws://", "wss://")):
        return _fail(f"--url must start with ws:// or wss://, got {url!r}")
    try:
        result = asyncio.run(run())
    except AdminError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot reach the relay at {url}: {exc.strerror or exc}")
    except (InvalidHandshake, InvalidURI) as exc:
        return _fail(f"no crdtsync relay answers at {url}: {exc}")
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _compact(args: argparse.Namespace) -> int:
    """Compact the relay's change log (safe while the relay runs) and print what it did."""
    import json
    import time

    from crdtsync_server.auth import parse_duration
    from crdtsync_server.config import RelayConfig
    from crdtsync_server.storage import RelayStorage

    config = RelayConfig.from_toml(args.config, database=args.db)
    storage = RelayStorage(config.database, create=False)
    try:
        if args.older_than is not None:
            try:
                age = parse_duration(args.older_than)
            except ValueError as exc:
                return _fail(f"--older-than: {exc}")
            through = storage.seq_before(time.time() - age)
        else:
            through = min(args.through, storage.seq)
        dropped = storage.compact(through)
        result = {
            "updates_dropped": dropped,
            "compacted_through": storage.compacted_through(),
            "latest_version": storage.seq,
        }
    finally:
        storage.close()
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _backup(args: argparse.Namespace) -> int:
    """Back up the relay's database (and the secret kept beside it) while it runs."""
    from crdtsync_server.backup import back_up
    from crdtsync_server.config import RelayConfig

    config = RelayConfig.from_toml(args.config, database=args.db)
    copied = back_up(config, args.output)
    secret = f" and its secret to {copied.secret}" if copied.secret else ""
    print(f"backed up {config.database} (version {copied.version}) to {args.output}{secret}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    """Put a backup back as the database of a stopped relay."""
    from crdtsync_server.backup import restore
    from crdtsync_server.config import RelayConfig

    config = RelayConfig.from_toml(args.config, database=args.db)
    copied = restore(config, args.backup)
    secret = f" and its secret to {copied.secret}" if copied.secret else ""
    print(
        f"restored {args.backup} (version {copied.version}) to {copied.database}{secret}; "
        "replicas sync with it again from the start"
    )
    return 0


def _run_webapp(start: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run the reference app (or the demo) until Ctrl-C / SIGTERM."""
    import asyncio
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(start())
    except OSError as exc:
        return _fail(f"cannot start the app: {exc.strerror or exc}")
    return 0


async def _demo_apps() -> None:
    import logging

    from crdtsync.apps.webapp.launch import run_demo

    logging.getLogger("crdtsync.server").setLevel(logging.ERROR)

    await run_demo(sys.stdout)


async def _app(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    from crdtsync_server.config import RelayConfig
    from crdtsync_server.errors import ConfigError

    from crdtsync.apps.webapp.launch import run_app

    from .demo import example_config

    config_path = Path(args.config) if args.config else example_config()
    config = RelayConfig.from_toml(config_path, database=args.db)
    token = args.token or os.environ.get("CRDTSYNC_TOKEN") or None
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read --token-file {args.token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise ConfigError(f"--token-file {args.token_file} is empty")
    if token is None:
        if config.token_algorithm != "HS256":
            raise ConfigError(
                f"this relay verifies {config.token_algorithm} tokens: pass --token "
                "(crdtsync token --private-key PEM ...)"
            )
        token = config.token_authority().issue(args.user)
    await run_app(
        sys.stdout,
        url=args.url or config.url,
        token=token,
        user=args.user,
        store=args.store or f"crdtsync-app-{args.user}.sqlite3",
        config=config_path,
        port=args.port,
    )


#: Allocations between collections of the youngest generation in a relay process (the
#: interpreter's default is 700).
SERVE_GC_THRESHOLD = 50_000


def _tune_gc_for_serving() -> None:
    """A relay process keeps many long-lived objects (cached record documents and their
    indexes) and makes few reference cycles, so the cyclic collector's passes, each
    walking the young objects and, every so often, the whole heap, cost more than they
    free: collect less often (reference counting still frees everything else at once).
    Only the ``serve`` command does this: it owns its process."""
    import gc

    gc.collect()
    gc.freeze()  # what start-up made lives as long as the process
    gc.set_threshold(SERVE_GC_THRESHOLD, *gc.get_threshold()[1:])


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from crdtsync_server.app import RelayServer
    from crdtsync_server.config import RelayConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = RelayConfig.from_toml(args.config, database=args.db, host=args.host, port=args.port)
    _tune_gc_for_serving()
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
