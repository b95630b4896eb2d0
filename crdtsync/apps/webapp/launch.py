"""Running the reference app from the command line: one instance, or the two-user demo.

``crdtsync app`` calls :func:`run_app`; ``crdtsync demo`` (no story) calls
:func:`run_demo`. Both print the address(es) to open and run until SIGINT / SIGTERM
(or until ``stop`` is set, for tests), then close the apps, the clients (every change
is already on disk) and the demo's relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path
from typing import TextIO

from crdtsync.apps.demo import example_config
from crdtsync.client.facade import Client

from .server import AppServer


async def run_app(
    out: TextIO,
    *,
    url: str,
    token: str,
    user: str,
    store: str,
    config: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the app for ``user`` over a client of the relay at ``url``."""
    client = Client(url, token=token, store=store, schema=config)
    async with client, AppServer(client, user=user, host=host, port=port) as app:
        print(f"crdtsync app for {user}: {app.url}", file=out, flush=True)
        print(f"(relay {url}, local store {store}; Ctrl-C stops it)", file=out, flush=True)
        await _until_stopped(stop)


async def run_demo(out: TextIO, *, stop: asyncio.Event | None = None) -> None:
    """A relay on a temporary SQLite file, alice and bob with a few synced records, and
    an app for each; print both addresses and the conflict story to play."""
    from crdtsync_server.app import RelayServer
    from crdtsync_server.config import RelayConfig

    with tempfile.TemporaryDirectory(prefix="crdtsync-demo-") as tmp:
        config = RelayConfig.from_toml(
            example_config(), database=str(Path(tmp) / "relay.sqlite3"), port=0
        )
        async with RelayServer(config) as relay:
            clients = {
                user: Client(
                    relay.url,
                    token=relay.authority.issue(user),
                    store=str(Path(tmp) / f"{user}.sqlite3"),
                    schema=example_config(),
                )
                for user in ("alice", "bob")
            }
            alice, bob = clients["alice"], clients["bob"]
            async with alice, bob:
                await seed(alice, bob)
                async with (
                    AppServer(alice, user="alice") as alice_app,
                    AppServer(bob, user="bob") as bob_app,
                ):
                    print(
                        DEMO_TEXT.format(alice=alice_app.url, bob=bob_app.url, relay=relay.url),
                        file=out,
                        flush=True,
                    )
                    await _until_stopped(stop)


DEMO_TEXT = """\
crdtsync demo: a relay ({relay}) and two users, each with their own app and local store.

  alice: {alice}
  bob:   {bob}

Open both in two browser tabs, then play the conflict story:
  1. In alice's tab, tick "Work offline" and rename Acme (Accounts → Acme → Edit).
     Pending Changes lists the edit, old → new.
  2. In bob's tab, rename Acme too and save: it syncs at once.
  3. In alice's tab, untick "Work offline": a pop-up says Acme needs attention.
     Open it, pick mine, theirs or type a name, and save: it syncs to bob live.
  Also try: bob deletes Globex while alice edits it offline (unresolvable: dismiss),
  or a negative Employees count (refused at once, next to the field).

Ctrl-C stops everything (the demo's data lives in a temporary directory)."""


async def seed(alice: Client, bob: Client) -> None:
    """A few records both users start with (created by alice, synced to bob)."""
    acme = alice.create(
        "Account",
        {"Name": "Acme", "Industry": "Energy", "Employees": 120, "Website": "acme.example"},
    )
    alice.create("Account", {"Name": "Globex", "Industry": "Retail", "Employees": 45})
    alice.create("Account", {"Name": "Initech", "Industry": "Technology", "Employees": 300})
    alice.create(
        "Contact",
        {"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@acme.example", "Account": acme},
    )
    await alice.sync()
    await bob.sync()


async def _until_stopped(stop: asyncio.Event | None) -> None:
    """Wait for ``stop``, or for SIGINT / SIGTERM when there is none."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # not on every platform
                loop.add_signal_handler(signum, stop.set)
    await stop.wait()
